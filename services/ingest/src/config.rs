//! Configuration of the ingest service: every flag is also a `SENTIFLOW_…` environment variable.

use std::path::PathBuf;

use clap::Parser;
use sentiflow_common::api_keys::ApiAuthArgs;
use sentiflow_common::config::{KafkaArgs, RedisArgs, Secret, TelemetryArgs};

/// Largest `--max-payload-bytes`: a clean event carries its raw event's fields plus the cleaned
/// text (at most 10,000 characters), and must fit the producer's `message.max.bytes` (1,000,000);
/// one that does not is refused by librdkafka on every retry and stalls its partition.
pub const MAX_PAYLOAD_BYTES: usize = 524_288;

/// What to do with a review whose detected language is not in `--lang-allow`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LangPolicy {
    /// Pass it on to `reviews.clean` with `lang_allowed: false` (consumers decide).
    Mark,
    /// Send it to the dead-letter topic with error kind `language_not_allowed`.
    Dlq,
}

/// `reviews.raw` → validate, clean, redact, dedupe, label → `reviews.clean`; bad input → `reviews.dlq`.
#[derive(Parser, Clone, Debug)]
#[command(name = "sentiflow-ingest", version, about, long_about = None)]
pub struct IngestConfig {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis connection (dedupe keys).
    #[command(flatten)]
    pub redis: RedisArgs,

    /// HTTP endpoints, logs and shutdown.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// API keys of the request API.
    #[command(flatten)]
    pub api_auth: ApiAuthArgs,

    /// Consumer group id; replicas of ingest share it and split the partitions.
    #[arg(
        long,
        env = "SENTIFLOW_INGEST_GROUP_ID",
        default_value = "sentiflow-ingest"
    )]
    pub group_id: String,

    /// Largest accepted message in bytes (256 to 524288); larger ones go to the dead-letter topic
    /// (`oversize`); over HTTP a larger review makes its request 422 `invalid_reviews`.
    #[arg(
        long,
        env = "SENTIFLOW_INGEST_MAX_PAYLOAD_BYTES",
        default_value_t = 65_536
    )]
    pub max_payload_bytes: usize,

    /// Most messages processed as one batch (one Redis round trip, one wait for broker acks).
    #[arg(long, env = "SENTIFLOW_INGEST_MAX_BATCH", default_value_t = 500)]
    pub max_batch: usize,

    /// Longest wait for a batch to fill once its first message arrived, milliseconds.
    #[arg(long, env = "SENTIFLOW_INGEST_BATCH_WAIT_MS", default_value_t = 20)]
    pub batch_wait_ms: u64,

    /// How long dedupe keys (event id, text fingerprint) live in Redis, seconds.
    #[arg(long, env = "SENTIFLOW_INGEST_DEDUPE_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub dedupe_ttl_secs: u64,

    /// Also drop reviews whose normalised text was already seen (retweets, copy-paste spam).
    #[arg(long, env = "SENTIFLOW_INGEST_DEDUPE_TEXT", default_value_t = true, action = clap::ArgAction::Set)]
    pub dedupe_text: bool,

    /// Key of the HMAC that replaces author ids (required; keep it secret and stable, or hashes change).
    #[arg(long, env = "SENTIFLOW_AUTHOR_HASH_KEY", hide_env_values = true)]
    pub author_hash_key: Secret,

    /// Allowed languages (ISO 639-1, comma-separated); empty allows all. Undetectable text is allowed.
    #[arg(
        long,
        env = "SENTIFLOW_INGEST_LANG_ALLOW",
        value_delimiter = ',',
        default_value = "en"
    )]
    pub lang_allow: Vec<String>,

    /// What happens to reviews in other languages.
    #[arg(long, env = "SENTIFLOW_INGEST_LANG_POLICY", value_enum, default_value_t = LangPolicy::Mark)]
    pub lang_policy: LangPolicy,

    /// Smallest |VADER compound| that yields a weak positive/negative label for unlabelled reviews.
    #[arg(
        long,
        env = "SENTIFLOW_INGEST_WEAK_LABEL_THRESHOLD",
        default_value_t = 0.5
    )]
    pub weak_label_threshold: f64,

    /// VADER lexicon file (default: the one infra/setup.sh installed in the cache).
    #[arg(long, env = "SENTIFLOW_LEXICON_PATH")]
    pub lexicon_path: Option<PathBuf>,

    /// Most reviews in one `POST /v1/reviews` request (each at most `--max-payload-bytes`).
    #[arg(long, env = "SENTIFLOW_INGEST_HTTP_MAX_REVIEWS", default_value_t = 500)]
    pub http_max_reviews: usize,

    /// Most `POST /v1/reviews` requests in flight; one more is answered 503 `overloaded` at once.
    #[arg(
        long,
        env = "SENTIFLOW_INGEST_HTTP_MAX_CONCURRENT",
        default_value_t = 16
    )]
    pub http_max_concurrent: usize,
}

/// A configuration that cannot work, caught at start-up instead of at the first message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A numeric setting out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// Flag name.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

impl IngestConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.author_hash_key.expose().len() < 16 {
            return invalid(
                "--author-hash-key",
                "must be at least 16 characters (it keys the author HMAC)",
            );
        }
        if self.max_batch == 0 {
            return invalid("--max-batch", "must be at least 1");
        }
        if !(256..=MAX_PAYLOAD_BYTES).contains(&self.max_payload_bytes) {
            return invalid(
                "--max-payload-bytes",
                "must be between 256 and 524288 bytes (a review's clean event, a little larger, must fit the producer's 1,000,000-byte message limit)",
            );
        }
        if self.http_max_reviews == 0 || self.http_max_reviews > 10_000 {
            return invalid("--http-max-reviews", "must be between 1 and 10000");
        }
        if self.http_max_concurrent == 0 {
            return invalid("--http-max-concurrent", "must be at least 1");
        }
        if !(self.weak_label_threshold > 0.0 && self.weak_label_threshold <= 1.0) {
            return invalid("--weak-label-threshold", "must be in (0, 1]");
        }
        if self.dedupe_ttl_secs == 0 {
            return invalid("--dedupe-ttl-secs", "must be at least 1");
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
