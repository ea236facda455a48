//! `sentiflow-infer`: the inference service as its own binary (production: one container per service).

use clap::Parser;
use sentiflow_infer::InferConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = InferConfig::parse();
    sentiflow_common::telemetry::init_tracing(&config.telemetry);
    tracing::info!(?config, "starting sentiflow-infer");
    let shutdown = sentiflow_common::shutdown::shutdown_on_signals();
    sentiflow_infer::run(config, shutdown).await?;
    Ok(())
}
