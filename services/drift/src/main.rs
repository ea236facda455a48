//! `sentiflow-drift`: the drift service as its own binary (production: one container per service).

use clap::Parser;
use sentiflow_drift::DriftConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = DriftConfig::parse();
    sentiflow_common::telemetry::init_tracing(&config.telemetry);
    tracing::info!(?config, "starting sentiflow-drift");
    let shutdown = sentiflow_common::shutdown::shutdown_on_signals();
    sentiflow_drift::run(config, shutdown).await?;
    Ok(())
}
