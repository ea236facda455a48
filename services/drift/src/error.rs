//! Errors of the drift service: fatal start-up errors and the failures of Redis/Kafka operations that
//! callers retry; `kind()` is the metric label.

/// Errors of the drift service and its operator actions.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Kafka client creation or a produce failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Redis command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The HTTP endpoint could not bind.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    /// An event we built does not follow its schema (a bug).
    #[error("event: {0}")]
    Event(#[from] sentiflow_common::events::DecodeError),
}

impl DriftError {
    /// Stable snake_case name: metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Kafka(_) => "kafka",
            Self::Redis(_) => "redis",
            Self::Http(_) => "http",
            Self::Event(_) => "event",
        }
    }
}
