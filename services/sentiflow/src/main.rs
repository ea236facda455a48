//! `sentiflow`: the project's command line (see `sentiflow --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sentiflow::cli::Cli::parse();
    // Not `#[tokio::main]`: after `up` drains, dropping its runtime would wait for a training job
    // of the embedded trainer still running.
    match sentiflow_common::shutdown::block_on_then_exit(sentiflow::cli::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // A command that ran and reports a finding (`status`) chooses its exit status.
            match error.downcast_ref::<sentiflow::status::ExitStatus>() {
                Some(exit) => std::process::ExitCode::from(exit.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
