//! Configuration of the trainer service: every flag is also a `SENTIFLOW_…` environment variable.

use std::path::PathBuf;

use clap::Parser;
use sentiflow_common::config::{KafkaArgs, RedisArgs, TelemetryArgs};

use crate::dataset::LabelWeights;
use crate::gate::GatePolicy;

/// Longest retention a compaction takes (100 years): "now minus the retention" must stay a date.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// `reviews.clean` + `labels.feedback` → durable curation segments → dataset snapshots; `retrain.requests` →
/// snapshot → train → gate → promote or reject on `models.updates`; bad input → `reviews.dlq`.
#[derive(Parser, Clone, Debug)]
#[command(name = "sentiflow-trainer", version, about, long_about = None)]
pub struct TrainerConfig {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis connection (the model registry).
    #[command(flatten)]
    pub redis: RedisArgs,

    /// HTTP endpoints, logs and shutdown.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Consumer group id; replicas of the trainer share it and split the partitions.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_GROUP_ID",
        default_value = "sentiflow-trainer"
    )]
    pub group_id: String,

    /// Data directory: segments go to `<data-dir>/curation/segments`, snapshots to `<data-dir>/snapshots`.
    #[arg(long, env = "SENTIFLOW_DATA_DIR", default_value = "data/local")]
    pub data_dir: PathBuf,

    /// Largest accepted message in bytes; larger ones go to the dead-letter topic (`oversize`). Twice
    /// ingest's default raw limit: a clean event is its raw event plus a few hundred bytes of
    /// provenance, so a review ingest accepted is never refused here.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_MAX_PAYLOAD_BYTES",
        default_value_t = 131_072
    )]
    pub max_payload_bytes: usize,

    /// Consumed messages (dead letters included) after which the open segment is written and closed.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_SEGMENT_MAX_MESSAGES",
        default_value_t = 10_000
    )]
    pub segment_max_messages: usize,

    /// Longest a segment stays open after its first message, milliseconds: offsets are committed only once
    /// the segment holding them is on disk, so this bounds how much a crash makes the trainer re-read.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_SEGMENT_MAX_AGE_MS",
        default_value_t = 30_000
    )]
    pub segment_max_age_ms: u64,

    /// Build a snapshot whenever this many records were curated since the last one (off when unset).
    #[arg(long, env = "SENTIFLOW_TRAINER_SNAPSHOT_EVERY_ROWS")]
    pub snapshot_every_rows: Option<u64>,

    /// Build a snapshot when this long passed since the last one and new records arrived, milliseconds
    /// (checked when a segment closes; off when unset).
    #[arg(long, env = "SENTIFLOW_TRAINER_SNAPSHOT_EVERY_MS")]
    pub snapshot_every_ms: Option<u64>,

    /// Compact the curation segments after this many more were written (0: never): the segments
    /// written since, and earlier compactions' outputs from the newest while each holds at most twice
    /// the records taken (tiered, so old records are not rewritten every time), and every segment once
    /// a day when --curation-retention-days is set. Compaction keeps, per review, the records a snapshot can still
    /// depend on (latest event, strongest label, latest human label), so snapshots stay the same while
    /// the segment count and re-read copies do not grow.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_COMPACT_AFTER_SEGMENTS",
        default_value_t = 64
    )]
    pub compact_after_segments: u32,

    /// In the daily full compaction, move reviews nothing arrived about (review event or human label,
    /// by event time) for this many days, and human labels that old for reviews never seen, to
    /// `curation/archive/` (never deleted); later snapshots hold them only through the champion's
    /// snapshot (off when unset; 1 to 36500).
    #[arg(long, env = "SENTIFLOW_TRAINER_CURATION_RETENTION_DAYS")]
    pub curation_retention_days: Option<u32>,

    /// Before a retrain snapshot, how long curation may keep reading to reach where `reviews.clean`
    /// and `labels.feedback` ended when the retrain started, milliseconds (the snapshot then holds what
    /// it has read, and the log and `sentiflow_trainer_retrain_catch_ups_total` say so).
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_RETRAIN_CATCH_UP_MS",
        default_value_t = 30_000
    )]
    pub retrain_catch_up_ms: u64,

    /// Do not consume `retrain.requests` (curation only; ONNX Runtime and the lexicon are then not needed).
    #[arg(long, env = "SENTIFLOW_TRAINER_NO_RETRAIN")]
    pub no_retrain: bool,

    /// Consumer group of the retrain loop (its own group: requests are not split with curation).
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_RETRAIN_GROUP_ID",
        default_value = "sentiflow-trainer-retrain"
    )]
    pub retrain_group_id: String,

    /// Registry name the retrain loop trains, gates and promotes; requests for another model fail.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_MODEL_NAME",
        default_value = "sentiment-hashed"
    )]
    pub model_name: String,

    /// Registry name of the encoder family: retrain requests of that family train it (fine-tuned on a
    /// usable CUDA GPU, else a head on the frozen int8 encoder, saying why), gate it against its own
    /// champion and promote it.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_ENCODER_MODEL_NAME",
        default_value = "sentiment-encoder"
    )]
    pub encoder_model_name: String,

    /// ONNX Runtime shared library, used to score the champion on the gate set (default:
    /// `ORT_DYLIB_PATH`, else the one infra/setup.sh installed).
    #[arg(long, env = "SENTIFLOW_ORT_DYLIB")]
    pub ort_dylib: Option<PathBuf>,

    /// Promotion gate of the retrain loop.
    #[command(flatten)]
    pub gate: GatePolicy,

    /// Training weight of human labels and the class balance in the retrain loop.
    #[command(flatten)]
    pub label_weights: LabelWeights,
}

/// A configuration that cannot work, caught at start-up instead of at the first message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// Flag name.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

impl TrainerConfig {
    /// Settings for tests and in-process runs: local Kafka and Redis, an ephemeral HTTP port.
    pub fn local(kafka: KafkaArgs, redis: RedisArgs, data_dir: PathBuf) -> Self {
        let kafka_prefix = kafka.topic_prefix.clone();
        Self {
            group_id: format!("{}-trainer", kafka.topic_prefix),
            kafka,
            redis,
            telemetry: TelemetryArgs::ephemeral(),
            data_dir,
            max_payload_bytes: 131_072,
            segment_max_messages: 10_000,
            segment_max_age_ms: 30_000,
            snapshot_every_rows: None,
            snapshot_every_ms: None,
            compact_after_segments: 64,
            curation_retention_days: None,
            retrain_catch_up_ms: 30_000,
            no_retrain: false,
            retrain_group_id: format!("{}-trainer-retrain", kafka_prefix),
            model_name: "sentiment-hashed".to_owned(),
            encoder_model_name: "sentiment-encoder".to_owned(),
            ort_dylib: None,
            gate: GatePolicy::default(),
            label_weights: LabelWeights::default(),
        }
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.segment_max_messages == 0 {
            return invalid("--segment-max-messages", "must be at least 1");
        }
        if self.segment_max_age_ms == 0 {
            return invalid("--segment-max-age-ms", "must be at least 1");
        }
        if self.max_payload_bytes < 256 {
            return invalid("--max-payload-bytes", "must be at least 256 bytes");
        }
        if self.snapshot_every_rows == Some(0) {
            return invalid("--snapshot-every-rows", "must be at least 1 when set");
        }
        if self.retrain_group_id == self.group_id {
            return invalid(
                "--retrain-group-id",
                "must differ from --group-id (the retrain loop has its own consumer group)",
            );
        }
        if !(self.gate.epsilon.is_finite() && self.gate.max_recall_drop.is_finite()) {
            return invalid(
                "--gate-epsilon",
                "the gate thresholds must be finite numbers",
            );
        }
        if let Err(reason) = self.label_weights.validate() {
            return Err(ConfigError::Invalid {
                name: "--human-label-weight",
                reason,
            });
        }
        if self.retrain_catch_up_ms == 0 {
            return invalid("--retrain-catch-up-ms", "must be at least 1");
        }
        if let Some(days) = self.curation_retention_days
            && !(1..=MAX_RETENTION_DAYS).contains(&days)
        {
            return invalid(
                "--curation-retention-days",
                "must be between 1 and 36500 (100 years) when set (leave it unset to keep everything)",
            );
        }
        if self.snapshot_every_ms == Some(0) {
            return invalid("--snapshot-every-ms", "must be at least 1 when set");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrainerConfig {
        TrainerConfig::local(
            KafkaArgs::local("127.0.0.1:9092", "t"),
            RedisArgs::local("redis://127.0.0.1:6379/", "t"),
            PathBuf::from("data/test"),
        )
    }

    #[test]
    fn a_zero_catch_up_deadline_is_refused_naming_the_flag() {
        assert!(config().validate().is_ok());
        let mut zero = config();
        zero.retrain_catch_up_ms = 0;
        let error = zero.validate().unwrap_err().to_string();
        assert!(error.contains("--retrain-catch-up-ms"), "{error}");
    }

    #[test]
    fn a_zero_day_retention_is_refused_naming_the_flag() {
        let mut zero = config();
        zero.curation_retention_days = Some(0);
        let error = zero.validate().unwrap_err().to_string();
        assert!(error.contains("--curation-retention-days"), "{error}");
        zero.curation_retention_days = Some(u32::MAX);
        let error = zero.validate().unwrap_err().to_string();
        assert!(error.contains("36500"), "{error}");
        zero.curation_retention_days = Some(MAX_RETENTION_DAYS);
        assert!(zero.validate().is_ok());
        zero.curation_retention_days = Some(30);
        assert!(zero.validate().is_ok());
    }
}
