//! Configuration of the inference service: every flag is also a `SENTIFLOW_…` environment variable,
//! and impossible combinations are refused at start-up rather than discovered under load.

use std::path::PathBuf;

use clap::Parser;
use sentiflow_common::api_keys::ApiAuthArgs;
use sentiflow_common::config::{KafkaArgs, RedisArgs, TelemetryArgs};
use sentiflow_model::runtime::DeviceRequest;

pub use crate::family::FamilyArg;

/// Which execution provider to ask ONNX Runtime for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// CUDA when a usable GPU proves itself in a warm-up run, otherwise CPU (with a warning saying why).
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA or refuse to start.
    Cuda,
}

impl From<DeviceArg> for DeviceRequest {
    fn from(device: DeviceArg) -> Self {
        match device {
            DeviceArg::Auto => DeviceRequest::Auto,
            DeviceArg::Cpu => DeviceRequest::Cpu,
            DeviceArg::Cuda => DeviceRequest::Cuda,
        }
    }
}

/// `reviews.clean` → ONNX Runtime → `predictions` + `alerts.negative`; `POST /v1/predict`; hot swap on
/// `models.updates`.
#[derive(Parser, Clone, Debug)]
#[command(name = "sentiflow-infer", version, about, long_about = None)]
pub struct InferConfig {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis connection (the model registry's aliases and records).
    #[command(flatten)]
    pub redis: RedisArgs,

    /// HTTP endpoints, logs and shutdown.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// API keys of the request API.
    #[command(flatten)]
    pub api_auth: ApiAuthArgs,

    /// Consumer group id; replicas of infer share it and split the partitions of `reviews.clean`.
    #[arg(
        long,
        env = "SENTIFLOW_INFER_GROUP_ID",
        default_value = "sentiflow-infer"
    )]
    pub group_id: String,

    /// Data directory; model artifacts live in `<data-dir>/models/<name>/<version>/`.
    #[arg(long, env = "SENTIFLOW_DATA_DIR", default_value = "data/local")]
    pub data_dir: PathBuf,

    /// Registry name of the hashed-family model, the CPU tier (its `champion` alias is served unless
    /// `--family` picks the encoder).
    #[arg(
        long,
        env = "SENTIFLOW_INFER_MODEL_NAME",
        default_value = "sentiment-hashed"
    )]
    pub model_name: String,

    /// Registry name of the encoder-family model, the GPU tier.
    #[arg(
        long,
        env = "SENTIFLOW_INFER_ENCODER_MODEL_NAME",
        default_value = "sentiment-encoder"
    )]
    pub encoder_model_name: String,

    /// Family to serve: auto serves the encoder champion when the CUDA execution provider really came
    /// up and an encoder champion exists, else the hashed champion; encoder without an encoder
    /// champion serves the hashed one and says why (`/healthz` `family_reason`).
    #[arg(long, env = "SENTIFLOW_INFER_FAMILY", value_enum, default_value_t = FamilyArg::Auto)]
    pub family: FamilyArg,

    /// Execution provider.
    #[arg(long, env = "SENTIFLOW_INFER_DEVICE", value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// ONNX Runtime shared library (default: `ORT_DYLIB_PATH`, else the one infra/setup.sh installed).
    #[arg(long, env = "SENTIFLOW_ORT_DYLIB")]
    pub ort_dylib: Option<PathBuf>,

    /// Inference worker threads; each owns one ONNX Runtime session of the served model.
    #[arg(long, env = "SENTIFLOW_INFER_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Intra-op threads of each session (1 keeps one core per worker).
    #[arg(long, env = "SENTIFLOW_INFER_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,

    /// A micro-batch closes when it holds this many reviews…
    #[arg(long, env = "SENTIFLOW_INFER_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,

    /// …or this many milliseconds after its first review arrived, whichever comes first.
    #[arg(long, env = "SENTIFLOW_INFER_BATCH_WAIT_MS", default_value_t = 5)]
    pub batch_wait_ms: u64,

    /// Batches allowed between consuming and storing offsets. When full, consumption waits for a
    /// slot (the client's bounded fetch queue holds what arrives meanwhile).
    #[arg(long, env = "SENTIFLOW_INFER_MAX_QUEUED_BATCHES", default_value_t = 32)]
    pub max_queued_batches: usize,

    /// If no queue slot frees up within this many milliseconds (a stalled pipeline, not a busy one),
    /// the assigned partitions are paused until half of the queue is free, so consumer lag rather than
    /// memory absorbs the overload.
    #[arg(long, env = "SENTIFLOW_INFER_PAUSE_AFTER_MS", default_value_t = 500)]
    pub pause_after_ms: u64,

    /// Negative predictions at or above this confidence also go to `alerts.negative`.
    #[arg(long, env = "SENTIFLOW_INFER_ALERT_THRESHOLD", default_value_t = 0.8)]
    pub alert_threshold: f64,

    /// How often the registry is re-read to catch a `models.updates` event that was missed, seconds.
    #[arg(long, env = "SENTIFLOW_INFER_REGISTRY_POLL_SECS", default_value_t = 30)]
    pub registry_poll_secs: u64,

    /// Fraction of reviews also scored by the registered challenger (0 disables shadow scoring); the
    /// served result never changes, agreement goes to metrics and `predictions.shadow`.
    #[arg(long, env = "SENTIFLOW_INFER_SHADOW_FRACTION", default_value_t = 0.0)]
    pub shadow_fraction: f64,

    /// Most texts in one `POST /v1/predict` request.
    #[arg(long, env = "SENTIFLOW_INFER_HTTP_MAX_TEXTS", default_value_t = 256)]
    pub http_max_texts: usize,

    /// Longest text accepted by `POST /v1/predict`, in bytes of UTF-8.
    #[arg(
        long,
        env = "SENTIFLOW_INFER_HTTP_MAX_TEXT_BYTES",
        default_value_t = 5_000
    )]
    pub http_max_text_bytes: usize,

    /// Most `POST /v1/predict` requests scored or waiting for a session at once; one more is answered
    /// 503 `overloaded` (with `Retry-After`) before its body is read, so a burst cannot queue without
    /// bound or starve the Kafka path of sessions.
    #[arg(
        long,
        env = "SENTIFLOW_INFER_HTTP_MAX_CONCURRENT",
        default_value_t = 16
    )]
    pub http_max_concurrent: usize,

    /// Most texts in one model run of `POST /v1/predict` requests: requests that arrive while every
    /// session is busy are scored together, up to this many texts, and each gets its own rows (a
    /// request that finds a session free runs at once; a larger request runs alone). 1 scores each
    /// request on its own.
    #[arg(long, env = "SENTIFLOW_INFER_HTTP_BATCH_TEXTS", default_value_t = 256)]
    pub http_batch_texts: usize,
}

/// A configuration that cannot work, caught at start-up instead of at the first message.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    /// Flag name.
    pub name: &'static str,
    /// Why it is rejected.
    pub reason: String,
}

impl InferConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.workers == 0 || self.workers > 64 {
            return invalid("--workers", "must be between 1 and 64");
        }
        if self.intra_threads == 0 {
            return invalid("--intra-threads", "must be at least 1");
        }
        if self.max_batch == 0 || self.max_batch > 4096 {
            return invalid("--max-batch", "must be between 1 and 4096");
        }
        if self.max_queued_batches < 2 {
            return invalid(
                "--max-queued-batches",
                "must be at least 2 (one being scored, one being published)",
            );
        }
        if !(0.0..=1.0).contains(&self.alert_threshold) {
            return invalid("--alert-threshold", "must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.shadow_fraction) {
            return invalid("--shadow-fraction", "must be in [0, 1]");
        }
        if self.http_max_texts == 0 {
            return invalid("--http-max-texts", "must be at least 1");
        }
        if self.http_max_text_bytes == 0 {
            return invalid("--http-max-text-bytes", "must be at least 1");
        }
        if self.http_max_concurrent == 0 {
            return invalid("--http-max-concurrent", "must be at least 1");
        }
        if self.http_batch_texts == 0 || self.http_batch_texts > 4096 {
            return invalid("--http-batch-texts", "must be between 1 and 4096");
        }
        if self.registry_poll_secs == 0 {
            return invalid("--registry-poll-secs", "must be at least 1");
        }
        if self.model_name.trim().is_empty() {
            return invalid("--model-name", "must not be empty");
        }
        if self.encoder_model_name.trim().is_empty() {
            return invalid("--encoder-model-name", "must not be empty");
        }
        // The drain must end before the group's session timeout (45 s) or we drop out mid-rebalance.
        if self.telemetry.drain_timeout_ms >= 45_000 {
            return invalid(
                "--drain-timeout-ms",
                "must be below the consumer session timeout (45000 ms)",
            );
        }
        Ok(())
    }

    /// Where model artifacts live.
    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> InferConfig {
        let mut all = vec!["sentiflow-infer"];
        all.extend_from_slice(args);
        InferConfig::try_parse_from(all).expect("parses")
    }

    #[test]
    fn defaults_are_valid_and_impossible_settings_are_refused_by_name() {
        config(&[]).validate().expect("defaults work");
        for (args, flag) in [
            (vec!["--workers", "0"], "--workers"),
            (vec!["--max-batch", "0"], "--max-batch"),
            (vec!["--max-queued-batches", "1"], "--max-queued-batches"),
            (vec!["--alert-threshold", "1.5"], "--alert-threshold"),
            (vec!["--shadow-fraction=-0.1"], "--shadow-fraction"),
            (vec!["--http-max-texts", "0"], "--http-max-texts"),
            (vec!["--http-max-concurrent", "0"], "--http-max-concurrent"),
            (vec!["--http-batch-texts", "0"], "--http-batch-texts"),
            (vec!["--http-batch-texts", "4097"], "--http-batch-texts"),
            (vec!["--drain-timeout-ms", "60000"], "--drain-timeout-ms"),
        ] {
            let error = config(&args).validate().expect_err("refused");
            assert_eq!(error.name, flag, "{args:?}");
        }
    }

    #[test]
    fn device_flag_maps_to_the_runtime_request() {
        assert_eq!(config(&[]).device, DeviceArg::Auto);
        assert_eq!(
            DeviceRequest::from(config(&["--device", "cuda"]).device),
            DeviceRequest::Cuda
        );
        assert!(InferConfig::try_parse_from(["sentiflow-infer", "--device", "tpu"]).is_err());
    }
}
