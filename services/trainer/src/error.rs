//! Why a consumed message was rejected (the kind string is the dead-letter `error_kind` and the metric
//! label), and the errors that stop the trainer service.

use sentiflow_common::events::DecodeError;

/// A permanent problem with one consumed message: it goes to the dead-letter topic, never retried.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Kafka message without a value (a tombstone).
    #[error("message has no payload")]
    EmptyPayload,
    /// Larger than `--max-payload-bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// Payload size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Not JSON, not valid against the topic's schema, or not representable.
    #[error("{topic}: {source}")]
    Decode {
        /// Logical topic whose schema applied.
        topic: &'static str,
        /// What failed.
        source: DecodeError,
    },
}

impl Rejection {
    /// Stable snake_case name: dead-letter `error_kind` and metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::Oversize { .. } => "oversize",
            Self::Decode { source, .. } => source.kind(),
        }
    }
}

/// Errors that stop the service (configuration, start-up); transient runtime errors are retried instead.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis client could not be created.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The data directory is unusable.
    #[error("data directory: {0}")]
    Dataset(#[from] crate::dataset::DatasetError),
    /// The HTTP endpoint could not bind.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    /// ONNX Runtime or the lexicon the retrain loop needs could not be loaded.
    #[error("retrain loop: {0} (or run with --no-retrain)")]
    Runtime(String),
}

impl TrainerError {
    /// Stable kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Kafka(_) => "kafka",
            Self::Redis(_) => "redis",
            Self::Dataset(error) => error.kind(),
            Self::Http(_) => "http",
            Self::Runtime(_) => "runtime",
        }
    }
}
