//! `sentiflow-ingest`: the ingest service as its own binary (production: one container per service).

use clap::Parser;
use sentiflow_ingest::IngestConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IngestConfig::parse();
    sentiflow_common::telemetry::init_tracing(&config.telemetry);
    tracing::info!(?config, "starting sentiflow-ingest");
    let shutdown = sentiflow_common::shutdown::shutdown_on_signals();
    sentiflow_ingest::run(config, shutdown).await?;
    Ok(())
}
