//! Why a raw message was rejected. The kind string is the dead-letter `error_kind` and the metric label.

/// A permanent problem with one input message: it goes to the dead-letter topic, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// Bytes are not UTF-8.
    #[error("payload is not valid UTF-8: {0}")]
    InvalidUtf8(String),
    /// Not parseable as JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// A `schema_version` this service does not implement.
    #[error("unknown schema_version {0}; this ingest implements version 1")]
    UnknownSchemaVersion(String),
    /// JSON that violates `schemas/review.schema.json`.
    #[error("schema violation: {0}")]
    SchemaViolation(String),
    /// Nothing readable left after cleaning (only URLs, mentions, punctuation or whitespace).
    #[error("text is empty after cleaning")]
    EmptyAfterCleaning,
    /// Cleaning lengthened the text past what a clean review may hold (placeholders are longer than
    /// what they replace: `@a` → `@user`, `a@b.cd` → `<email>`).
    #[error(
        "text is {chars} characters after cleaning (mentions, addresses and links become placeholders); a clean review holds at most {limit}"
    )]
    TooLongAfterCleaning {
        /// Characters (Unicode code points) of the cleaned text.
        chars: usize,
        /// The clean review schema's limit.
        limit: usize,
    },
    /// Language outside `--lang-allow` under `--lang-policy dlq`.
    #[error("language {lang} is not in the allow-list {allowed:?}")]
    LanguageNotAllowed {
        /// Detected language.
        lang: String,
        /// The allow-list.
        allowed: Vec<String>,
    },
}

impl Rejection {
    /// Stable snake_case name: dead-letter `error_kind` and metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::Oversize { .. } => "oversize",
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::NotJson(_) => "invalid_json",
            Self::UnknownSchemaVersion(_) => "unknown_schema_version",
            Self::SchemaViolation(_) => "schema_violation",
            Self::EmptyAfterCleaning => "empty_after_cleaning",
            Self::TooLongAfterCleaning { .. } => "too_long_after_cleaning",
            Self::LanguageNotAllowed { .. } => "language_not_allowed",
        }
    }
}

/// Errors that stop the service (configuration, start-up); transient runtime errors are retried instead.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis client could not be created.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The lexicon could not be loaded.
    #[error("lexicon: {0}")]
    Lexicon(String),
    /// The HTTP endpoint could not bind.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    /// The API keys file cannot be used.
    #[error(transparent)]
    ApiKeys(#[from] sentiflow_common::api_keys::ApiKeysError),
}
