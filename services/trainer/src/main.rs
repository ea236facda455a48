//! `sentiflow-trainer`: the trainer service as its own binary (production: one container per service).

use clap::Parser;
use sentiflow_trainer::TrainerConfig;

fn main() -> anyhow::Result<()> {
    let config = TrainerConfig::parse();
    sentiflow_common::telemetry::init_tracing(&config.telemetry);
    tracing::info!(?config, "starting sentiflow-trainer");
    // Not `#[tokio::main]`: dropping its runtime would wait for a training job still running.
    sentiflow_common::shutdown::block_on_then_exit(async {
        let shutdown = sentiflow_common::shutdown::shutdown_on_signals();
        sentiflow_trainer::run(config, shutdown).await
    })?;
    Ok(())
}
