//! `sentiflow`: the project's command line (see `sentiflow --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match sentiflow::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(usage) => {
            // `status` is read by scripts as 0 ready / 1 degraded / 2 down: a usage error must not
            // pass for "down" (clap's 2), so it gets status's "could not ask".
            let asked_status = std::env::args().nth(1).as_deref() == Some("status");
            if asked_status && usage.use_stderr() {
                let _ = usage.print();
                return std::process::ExitCode::from(sentiflow::status::EXIT_UNKNOWN);
            }
            usage.exit();
        }
    };
    // Not `#[tokio::main]`: after `up` drains, dropping its runtime would wait for a training job
    // of the embedded trainer still running.
    match sentiflow_common::shutdown::block_on_then_exit(sentiflow::cli::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<sentiflow::status::ExitStatus>() {
            // A command that ran and reports a finding (`status`) chooses its exit status and says
            // what it found, which is not an error of the command.
            Some(exit) => {
                eprintln!("{}", exit.message);
                std::process::ExitCode::from(exit.code)
            }
            None => {
                eprintln!("error: {error:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
