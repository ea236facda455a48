//! Errors of the inference service: fatal start-up errors, and the kinds of per-message and per-model
//! problems that double as metric labels and dead-letter `error_kind`s.

/// Errors that stop the service (configuration, start-up); runtime errors are retried or reported.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `--device cuda` without a usable CUDA execution provider.
    #[error("--device cuda was requested but CUDA cannot be used: {0}")]
    CudaUnavailable(String),
    /// ONNX Runtime could not be found or initialised.
    #[error("onnx runtime: {0}")]
    Runtime(String),
    /// Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis client could not be created.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The HTTP endpoint could not bind.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    /// The API keys file cannot be used.
    #[error(transparent)]
    ApiKeys(#[from] sentiflow_common::api_keys::ApiKeysError),
}

/// Why one consumed message produced no prediction (it goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Kafka message without a value (a tombstone) or with an empty one.
    #[error("message has no payload")]
    EmptyPayload,
    /// Not a valid `reviews.clean` event (JSON, schema, shape).
    #[error("not a valid clean review ({kind}): {reason}")]
    InvalidEvent {
        /// The decode step that failed (`invalid_json`, `schema_violation`, `invalid_event`).
        kind: &'static str,
        /// Details.
        reason: String,
    },
    /// The served encoder's tokenizer finds no token in the text (nothing but `[CLS]` and `[SEP]`):
    /// there is nothing to score, and a prediction from the bias alone would be made up.
    #[error(
        "the text has no token for the {model} model (it cleans to nothing the WordPiece vocabulary covers)"
    )]
    NoTokens {
        /// The served model (`name version`).
        model: String,
    },
}

impl Rejection {
    /// Stable snake_case name: dead-letter `error_kind` and metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::InvalidEvent { kind, .. } => kind,
            Self::NoTokens { .. } => "no_tokens",
        }
    }
}

/// Why a model could not be served (swap refused, old model kept); the kind is a metric label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The registry has no such version or could not be read.
    #[error("registry: {0}")]
    Registry(String),
    /// The artifact's bytes do not match the recorded sha256.
    #[error("checksum: {0}")]
    Checksum(String),
    /// The model needs a featurizer or family this build does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// ONNX Runtime refused the file or the warm-up failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// `--device cuda` and the model cannot run on CUDA.
    #[error("cuda: {0}")]
    Cuda(String),
}

impl LoadError {
    /// Stable snake_case name: metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Registry(_) => "registry",
            Self::Checksum(_) => "checksum",
            Self::Unsupported(_) => "unsupported",
            Self::Runtime(_) => "runtime",
            Self::Cuda(_) => "cuda",
        }
    }
}
