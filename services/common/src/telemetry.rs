//! Logs (tracing), metrics (the `metrics` facade with the Prometheus exporter) and the HTTP endpoints every
//! service serves: `/healthz` (liveness + facts), `/readyz` (503 while a required check fails), `/metrics`.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryArgs};
use crate::health::Health;

/// Histogram buckets for latencies in seconds: 100 µs .. 30 s. Kept in one place so every service's
/// histograms aggregate together in Prometheus.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets for whole training runs in seconds (the trainer's retrain loop): 1 s .. 1 h.
pub const TRAINING_BUCKETS_SECONDS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Buckets for batch sizes (rows per batch).
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// Installs the global tracing subscriber once; later calls (several services in one process) are no-ops.
pub fn init_tracing(args: &TelemetryArgs) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|_| args.log_filter == "info")
        .and_then(|value| EnvFilter::try_new(value).ok())
        .or_else(|| EnvFilter::try_new(&args.log_filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Logs go to stderr so a CLI's report on stdout stays clean; colours only on a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                LATENCY_BUCKETS_SECONDS,
            )
            .and_then(|builder| {
                builder
                    .set_buckets_for_metric(Matcher::Suffix("_rows".to_owned()), BATCH_SIZE_BUCKETS)
            })
            .and_then(|builder| {
                // Requests merged into one model run of infer's HTTP path: a size, like a batch's.
                builder.set_buckets_for_metric(
                    Matcher::Full("sentiflow_infer_http_run_requests".to_owned()),
                    BATCH_SIZE_BUCKETS,
                )
            })
            .and_then(|builder| {
                // A full-name match wins over the `_seconds` suffix.
                builder.set_buckets_for_metric(
                    Matcher::Full("sentiflow_trainer_retrain_seconds".to_owned()),
                    TRAINING_BUCKETS_SECONDS,
                )
            })
            .expect("static bucket lists are non-empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (an embedding program's own): still render ours for /metrics.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

#[derive(Clone)]
struct HttpState {
    health: Health,
    prometheus: &'static PrometheusHandle,
}

/// Starts the service's HTTP server with the standard endpoints merged with `extra` routes.
/// Returns the bound address (useful with port 0) and the server task, which stops on `shutdown`.
pub async fn serve_http(
    addr: SocketAddr,
    health: Health,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let state = HttpState {
        health,
        prometheus: prometheus(),
    };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
        .merge(extra)
        .fallback(not_found);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "http endpoints: /healthz /readyz /metrics");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "http server failed");
        }
    });
    Ok((bound, task))
}

async fn healthz(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(state.health.snapshot())
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let status = if state.health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(state.health.snapshot())).into_response()
}

async fn render_metrics(State(state): State<HttpState>) -> Response {
    state.prometheus.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not_found", "message": "no such endpoint"})),
    )
        .into_response()
}
