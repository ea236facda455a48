//! Serde types for every sentiflow event (one per schema in `schemas/`), with the [`Event`] trait
//! that gives producers a uniform id, time, Kafka key and validated decoding.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::schema::{EventSchema, SchemaRegistry, SchemaViolation};

/// Version of the event contract written by this code; every event carries it as `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest `reason` a dead letter may carry, in characters (the schema's `maxLength`).
pub const MAX_DEAD_LETTER_REASON_CHARS: usize = 4096;

/// Most bytes of the original value a dead letter carries. Base64 adds a third, so without a cap a
/// rejected message near the broker's 1 MB limit would make a dead letter the broker refuses, and the
/// service would retry it forever; larger values keep this prefix and the whole value's sha256.
pub const MAX_DEAD_LETTER_VALUE_BYTES: usize = 256 * 1024;

/// Most bytes of the original key a dead letter carries (in the payload and as its own key).
pub const MAX_DEAD_LETTER_KEY_BYTES: usize = 16 * 1024;

/// Free-form producer metadata of a review (at most 32 keys of scalar values, per the schema).
pub type Metadata = Map<String, Value>;

/// A fresh event id: a UUID v7 string, so ids sort roughly by creation time.
#[must_use]
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A string that is not one of an enum's wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {expected})")]
pub struct UnknownVariant {
    /// Name of the enum, e.g. `sentiment`.
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted wire names, comma-separated.
    pub expected: String,
}

/// Defines a fieldless enum whose wire form is a fixed string per variant, with `ALL`, `as_str`,
/// `Display`, `FromStr` and serde all agreeing on those strings.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            /// Every variant, in wire order.
            pub const ALL: [$name; [$($wire),+].len()] = [$($name::$variant),+];

            /// The wire name of the variant.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(UnknownVariant {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: [$($wire),+].join(", "),
                    }),
                }
            }
        }
    };
}

wire_enum! {
    /// Sentiment class; also the model's output order (negative = 0, neutral = 1, positive = 2).
    Sentiment("sentiment") {
        /// Negative sentiment (index 0).
        Negative = "negative",
        /// Neutral sentiment (index 1).
        Neutral = "neutral",
        /// Positive sentiment (index 2).
        Positive = "positive",
    }
}

impl Sentiment {
    /// Class index in model outputs and confusion matrices: 0, 1, 2.
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Sentiment::Negative => 0,
            Sentiment::Neutral => 1,
            Sentiment::Positive => 2,
        }
    }

    /// The class with model output index `index`, if it is 0, 1 or 2.
    #[must_use]
    pub const fn from_index(index: usize) -> Option<Sentiment> {
        match index {
            0 => Some(Sentiment::Negative),
            1 => Some(Sentiment::Neutral),
            2 => Some(Sentiment::Positive),
            _ => None,
        }
    }
}

wire_enum! {
    /// Where a training label comes from.
    LabelProvenance("label provenance") {
        /// The source shipped a label with the review.
        SourceLabel = "source_label",
        /// Derived from the review's star rating.
        SourceRating = "source_rating",
        /// Derived from a sentiment lexicon rule (weak supervision).
        WeakLexicon = "weak_lexicon",
        /// Given by a human reviewer (labels.feedback).
        Human = "human",
    }
}

wire_enum! {
    /// Model family (see the design: CPU tier and GPU tier behind one interface).
    ModelFamily("model family") {
        /// Hashed n-gram embedding bag; trains and serves fast on CPU.
        Hashed = "hashed",
        /// Fine-tuned MiniLM encoder; the GPU tier.
        Encoder = "encoder",
    }
}

wire_enum! {
    /// Device that really ran inference or training.
    Device("device") {
        /// CPU execution.
        Cpu = "cpu",
        /// NVIDIA GPU through CUDA.
        Cuda = "cuda",
    }
}

wire_enum! {
    /// Status of a drift signal or window.
    DriftStatus("drift status") {
        /// Within expectations.
        Ok = "ok",
        /// Above the warn threshold.
        Warn = "warn",
        /// Above the drift threshold.
        Drift = "drift",
    }
}

wire_enum! {
    /// How a drift window is bounded.
    WindowKind("window kind") {
        /// A fixed number of events.
        Count = "count",
        /// A fixed span of event time.
        Time = "time",
        /// Closed early by the sequential class-mix scan's alarm.
        Scan = "scan",
    }
}

wire_enum! {
    /// Who asked for a retrain.
    RequestedBy("requester") {
        /// The drift service, after confirmed drift.
        Drift = "drift",
        /// A human operator (CLI).
        Operator = "operator",
    }
}

wire_enum! {
    /// Device a retrain should use.
    DeviceWanted("wanted device") {
        /// GPU when one is really usable, else CPU.
        Auto = "auto",
        /// CPU only.
        Cpu = "cpu",
        /// GPU required.
        Cuda = "cuda",
    }
}

wire_enum! {
    /// What happened in the model registry.
    UpdateAction("update action") {
        /// A new version was registered.
        Registered = "registered",
        /// A version was promoted to an alias.
        Promoted = "promoted",
        /// An alias was moved back to an earlier version.
        RolledBack = "rolled_back",
        /// A candidate failed the promotion gate.
        Rejected = "rejected",
        Serving = "serving",
        LoadFailed = "load_failed",
    }
}

wire_enum! {
    /// Registry alias pointing at a model version.
    ModelAlias("model alias") {
        /// The version serving traffic.
        Champion = "champion",
        /// The version scored in shadow.
        Challenger = "challenger",
    }
}

/// Where a Kafka message was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceCoordinate {
    /// Physical topic name the message was read from.
    pub topic: String,
    /// Partition (Kafka's `i32`; never negative in an event).
    pub partition: i32,
    /// Offset within the partition (Kafka's `i64`; never negative in an event).
    pub offset: i64,
}

/// One model version in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    /// Registered model name (one per family).
    pub name: String,
    /// Version within the name, assigned by the registry.
    pub version: String,
    /// Family of the model.
    pub family: ModelFamily,
}

/// Class probabilities of one prediction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probabilities {
    /// Probability of the negative class.
    pub negative: f64,
    /// Probability of the neutral class.
    pub neutral: f64,
    /// Probability of the positive class.
    pub positive: f64,
}

impl Probabilities {
    /// From a model output row in class-index order (negative, neutral, positive).
    #[must_use]
    pub const fn from_array(p: [f64; 3]) -> Probabilities {
        Probabilities {
            negative: p[0],
            neutral: p[1],
            positive: p[2],
        }
    }

    /// As an array in class-index order.
    #[must_use]
    pub const fn to_array(self) -> [f64; 3] {
        [self.negative, self.neutral, self.positive]
    }

    /// Probability of `label`.
    #[must_use]
    pub const fn get(self, label: Sentiment) -> f64 {
        match label {
            Sentiment::Negative => self.negative,
            Sentiment::Neutral => self.neutral,
            Sentiment::Positive => self.positive,
        }
    }

    /// The most probable class and its probability (ties go to the lower index).
    #[must_use]
    pub fn argmax(self) -> (Sentiment, f64) {
        let mut best = (Sentiment::Negative, self.negative);
        for label in [Sentiment::Neutral, Sentiment::Positive] {
            if self.get(label) > best.1 {
                best = (label, self.get(label));
            }
        }
        best
    }
}

/// A training label with its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelInfo {
    /// The sentiment label.
    pub label: Sentiment,
    /// Where the label comes from.
    pub provenance: LabelProvenance,
    /// How much the label can be trusted, in [0, 1].
    pub confidence: f64,
}

/// Counts of PII spans replaced in a clean text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Redactions {
    /// E-mail addresses redacted.
    pub emails: u32,
    /// Phone numbers redacted.
    pub phones: u32,
    /// Payment card numbers redacted.
    pub cards: u32,
}

impl Redactions {
    /// Total number of redactions.
    #[must_use]
    pub const fn total(self) -> u64 {
        self.emails as u64 + self.phones as u64 + self.cards as u64
    }
}

/// A raw review from an external producer (`reviews.raw`, schema `review.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawReview {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this message, chosen by the producer.
    pub event_id: String,
    /// When the producer published it.
    pub event_time: DateTime<Utc>,
    /// Id of the review at its source; the Kafka key.
    pub review_id: String,
    /// Platform the review comes from, e.g. `twitter`.
    pub source: String,
    /// Author as given by the source (may be empty); hashed by ingest, never forwarded.
    pub author: String,
    /// Review text, 1..=10000 characters.
    pub text: String,
    /// When the review was written at its source.
    pub created_at: DateTime<Utc>,
    /// Optional star rating 1..=5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<u8>,
    /// Optional label supplied by the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Sentiment>,
    /// Optional language hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Optional producer metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// A cleaned, redacted, deduplicated review (`reviews.clean`, schema `clean_review.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanReview {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this clean event.
    pub event_id: String,
    /// When ingest produced it.
    pub event_time: DateTime<Utc>,
    /// `event_id` of the raw event it was derived from.
    pub source_event_id: String,
    /// Id of the review at its source; the Kafka key.
    pub review_id: String,
    /// Platform the review comes from.
    pub source: String,
    /// Keyed hash of the author, 64 lowercase hex chars.
    pub author_hash: String,
    /// Normalised, PII-redacted text.
    pub text: String,
    /// SHA-256 of `text`, 64 lowercase hex chars; the dedupe key.
    pub text_hash: String,
    /// When the review was written at its source.
    pub created_at: DateTime<Utc>,
    /// Detected language code, `und` when unknown.
    pub lang: String,
    /// Confidence of the language detection in [0, 1].
    pub lang_confidence: f64,
    /// Whether the language is one the models support.
    pub lang_allowed: bool,
    /// Training label with provenance, or `None` (JSON null) when unlabelled.
    pub label: Option<LabelInfo>,
    /// PII spans replaced in `text`.
    pub redactions: Redactions,
    /// Version of the normaliser that produced `text`.
    pub normalizer_version: String,
    /// Where the raw event was read.
    pub source_offset: SourceCoordinate,
    /// Optional producer metadata passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Optional star rating 1..=5 from the raw event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<u8>,
}

/// A message rejected for a permanent reason (`reviews.dlq`, schema `dead_letter.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this dead letter.
    pub event_id: String,
    /// When the message was dead-lettered.
    pub event_time: DateTime<Utc>,
    /// Service that rejected the message.
    pub service: String,
    /// Machine-readable error class in snake_case (`invalid_json`, `schema_violation`, ...).
    pub error_kind: String,
    /// Human-readable explanation.
    pub reason: String,
    /// Where the rejected message was read.
    pub source: SourceCoordinate,
    /// Original key, standard base64; `None` (JSON null) when it had none.
    pub original_key_b64: Option<String>,
    /// Exact original value bytes, standard base64 (only the first [`MAX_DEAD_LETTER_VALUE_BYTES`]
    /// when `original_truncated`).
    pub original_value_b64: String,
    /// Size of the whole original value in bytes.
    pub original_size_bytes: u64,
    /// True when the value (or key) was longer than a dead letter carries and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub original_truncated: bool,
    /// Hex sha256 of the whole original value, present when it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_sha256: Option<String>,
}

impl DeadLetter {
    /// A dead letter for the message at `source`, with a fresh id and the current time. `key` and
    /// `value` are the message's raw bytes (pass `&[]` for a null value); `reason` is cut to
    /// [`MAX_DEAD_LETTER_REASON_CHARS`], the value to [`MAX_DEAD_LETTER_VALUE_BYTES`] and the key to
    /// [`MAX_DEAD_LETTER_KEY_BYTES`] (`original_truncated`, with the whole value's sha256). `error_kind`
    /// should be snake_case (`^[a-z][a-z0-9_]*$`).
    #[must_use]
    pub fn new(
        service: impl Into<String>,
        error_kind: impl Into<String>,
        reason: impl Into<String>,
        source: SourceCoordinate,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> DeadLetter {
        let mut reason = reason.into();
        if let Some((end, _)) = reason.char_indices().nth(MAX_DEAD_LETTER_REASON_CHARS) {
            reason.truncate(end);
        }
        let kept_key = key.map(|key| &key[..key.len().min(MAX_DEAD_LETTER_KEY_BYTES)]);
        let kept_value = &value[..value.len().min(MAX_DEAD_LETTER_VALUE_BYTES)];
        let truncated = kept_value.len() < value.len()
            || key.is_some_and(|key| key.len() > MAX_DEAD_LETTER_KEY_BYTES);
        DeadLetter {
            schema_version: SCHEMA_VERSION,
            event_id: new_event_id(),
            event_time: Utc::now(),
            service: service.into(),
            error_kind: error_kind.into(),
            reason,
            source,
            original_key_b64: kept_key.map(|key| BASE64.encode(key)),
            original_value_b64: BASE64.encode(kept_value),
            original_size_bytes: value.len() as u64,
            original_truncated: truncated,
            original_sha256: truncated.then(|| hex::encode(Sha256::digest(value))),
        }
    }

    /// The original key bytes, if the message had a key.
    ///
    /// # Errors
    /// When `original_key_b64` is not valid standard base64.
    pub fn original_key(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        self.original_key_b64
            .as_deref()
            .map(|key| BASE64.decode(key))
            .transpose()
    }

    /// The original value bytes (for inspection or replay), or their first
    /// [`MAX_DEAD_LETTER_VALUE_BYTES`] when `original_truncated`: check it before replaying.
    ///
    /// # Errors
    /// When `original_value_b64` is not valid standard base64.
    pub fn original_value(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.original_value_b64)
    }
}

/// A human label for an earlier review (`labels.feedback`, schema `label_feedback.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelFeedback {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this event.
    pub event_id: String,
    /// When the label was given.
    pub event_time: DateTime<Utc>,
    /// Review being labelled; the Kafka key.
    pub review_id: String,
    /// The label assigned.
    pub label: Sentiment,
    /// Who labelled it.
    pub reviewer: String,
    /// Optional note, at most 2000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A sentiment prediction (`predictions` / `predictions.shadow`, schema `prediction.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this prediction.
    pub event_id: String,
    /// When the prediction was made.
    pub event_time: DateTime<Utc>,
    /// `event_id` of the clean review (or synchronous request) scored.
    pub source_event_id: String,
    /// Id of the review; the Kafka key.
    pub review_id: String,
    /// Predicted class.
    pub label: Sentiment,
    /// Class probabilities.
    pub probabilities: Probabilities,
    /// Probability of the predicted class.
    pub confidence: f64,
    /// Model version that predicted.
    pub model: ModelRef,
    /// Device that really ran the inference.
    pub device: Device,
    /// Model run time of the batch, in milliseconds.
    pub inference_latency_ms: f64,
    /// When the review was written at its source.
    pub created_at: DateTime<Utc>,
    /// Length of the clean text in characters.
    pub text_length: u64,
    /// Optional share of out-of-vocabulary tokens in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oov_rate: Option<f64>,
    /// Optional language of the review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
}

/// A confident negative prediction for human review (`alerts.negative`, `negative_alert.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NegativeAlert {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this alert.
    pub event_id: String,
    /// When the alert was raised.
    pub event_time: DateTime<Utc>,
    /// Id of the review; the Kafka key.
    pub review_id: String,
    /// `event_id` of the prediction that raised it.
    pub source_event_id: String,
    /// Probability of the negative class.
    pub confidence: f64,
    /// Threshold in force.
    pub threshold: f64,
    /// Model version that predicted.
    pub model: ModelRef,
    /// Device that really ran the inference.
    pub device: Device,
    /// The redacted clean text, for the human reviewer.
    pub text: String,
    /// Platform the review comes from.
    pub source: String,
    /// When the review was written at its source.
    pub created_at: DateTime<Utc>,
}

/// The window a drift report covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    /// Count- or time-bounded.
    pub kind: WindowKind,
    /// Window start (inclusive).
    pub start: DateTime<Utc>,
    /// Window end (exclusive).
    pub end: DateTime<Utc>,
    /// Number of events in the window.
    pub events: u64,
}

/// One drift signal of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Signal name, e.g. `label_distribution_psi`.
    pub name: String,
    /// Value of the statistic (effect size); must be finite (NaN would serialise as null).
    pub statistic: f64,
    /// Statistic at or above which the signal warns.
    pub warn_threshold: f64,
    /// Statistic at or above which the signal reports drift.
    pub drift_threshold: f64,
    /// p-value of the test where one exists (JSON null otherwise).
    pub p_value: Option<f64>,
    /// Status of this signal.
    pub status: DriftStatus,
    /// Optional human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Drift signals for one window of one model version (`drift.reports`, `drift_report.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this event.
    pub event_id: String,
    /// When the report was computed.
    pub event_time: DateTime<Utc>,
    /// Id of the report, referenced by retrain requests.
    pub report_id: String,
    /// Model version analysed; its version is the Kafka key.
    pub model: ModelRef,
    /// The window covered.
    pub window: Window,
    /// Every signal computed.
    pub signals: Vec<Signal>,
    /// Overall status (worst signal).
    pub status: DriftStatus,
    /// Whether drift is confirmed after persistence/hysteresis.
    pub confirmed: bool,
    /// Consecutive drift windows including this one.
    pub consecutive_drift_windows: u32,
    /// Whether retrain requests are muted (cooldown or operator).
    pub muted: bool,
}

/// A request to retrain (`retrain.requests`, schema `retrain_request.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrainRequest {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this event.
    pub event_id: String,
    /// When the request was made.
    pub event_time: DateTime<Utc>,
    /// Id of the request; trainer deduplicates on it.
    pub request_id: String,
    /// Why a retrain is requested.
    pub reason: String,
    /// Drift service or operator.
    pub requested_by: RequestedBy,
    /// Triggering drift report (JSON null for operator requests).
    pub report_id: Option<String>,
    /// Serving model version to replace; its version is the Kafka key.
    pub model: ModelRef,
    /// Family to train.
    pub family: ModelFamily,
    /// Earliest review time to train on (JSON null: unbounded).
    pub data_from: Option<DateTime<Utc>>,
    /// Latest review time to train on (JSON null: unbounded).
    pub data_to: Option<DateTime<Utc>>,
    /// Device to train on.
    pub device_wanted: DeviceWanted,
}

/// The promotion gate's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Whether the candidate may be promoted.
    pub passed: bool,
    /// Human-readable explanation.
    pub reason: String,
    /// Candidate's macro-F1.
    pub challenger_macro_f1: f64,
    /// Champion's macro-F1 on the same set (JSON null when there is no champion).
    pub champion_macro_f1: Option<f64>,
    /// Minimum macro-F1 improvement required.
    pub epsilon: f64,
    /// Largest per-class recall drop tolerated.
    pub max_recall_drop: f64,
}

/// A model registry change (`models.updates`, schema `model_update.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    /// Contract version; [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this event.
    pub event_id: String,
    /// When the registry changed.
    pub event_time: DateTime<Utc>,
    /// What happened.
    pub action: UpdateAction,
    /// Model version concerned; its name is the Kafka key.
    pub model: ModelRef,
    /// Version that held the alias before (JSON null when none).
    pub previous_version: Option<String>,
    /// Alias now pointing at the model (JSON null when none).
    pub alias: Option<ModelAlias>,
    /// Where the ONNX artifact lives.
    pub artifact_uri: String,
    /// SHA-256 of the artifact, 64 lowercase hex chars.
    pub sha256: String,
    /// Featurizer version the model expects.
    pub featurizer_version: String,
    /// Evaluation metrics by name (sorted for stable output).
    pub metrics: BTreeMap<String, f64>,
    /// Gate decision (JSON null when no gate ran).
    pub gate: Option<GateDecision>,
    /// Which instance and why, for `serving` / `load_failed` (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A payload could not be turned into an event; `kind()` is a ready-made dead-letter `error_kind`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The JSON does not follow the event's schema.
    #[error(transparent)]
    Schema(#[from] SchemaViolation),
    /// Valid against the schema but not representable by the Rust type (e.g. `1.0` for an integer).
    #[error("event does not fit its type: {0}")]
    Shape(#[source] serde_json::Error),
}

impl DecodeError {
    /// snake_case error class for [`DeadLetter::error_kind`].
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Schema(_) => "schema_violation",
            DecodeError::Shape(_) => "invalid_event",
        }
    }
}

/// Common behaviour of every event: schema, identity, time and Kafka key.
pub trait Event: Serialize + DeserializeOwned {
    /// Schema the event follows.
    const SCHEMA: EventSchema;

    /// Unique id of the event.
    fn event_id(&self) -> &str;

    /// When the event was produced.
    fn event_time(&self) -> DateTime<Utc>;

    /// Kafka message key per the catalogue (review id, model name or version, ...).
    fn key(&self) -> &str;

    /// JSON bytes of the event, as published.
    ///
    /// # Errors
    /// Only if serialisation fails, which these types rule out in practice.
    fn to_json_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Checks the event against its schema (producers call this in tests and debug builds).
    ///
    /// # Errors
    /// [`DecodeError::Shape`] if it cannot be serialised, [`DecodeError::Schema`] if invalid.
    fn validate(&self) -> Result<(), DecodeError> {
        let value = serde_json::to_value(self).map_err(DecodeError::Shape)?;
        SchemaRegistry::global().validate(Self::SCHEMA, &value)?;
        Ok(())
    }

    /// Parses `bytes`, validates them against the schema, then deserialises.
    ///
    /// # Errors
    /// [`DecodeError`] saying which step failed; see [`DecodeError::kind`].
    fn decode_validated(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
        SchemaRegistry::global().validate(Self::SCHEMA, &value)?;
        serde_json::from_value(value).map_err(DecodeError::Shape)
    }
}

/// Implements [`Event`] for a type whose key is `$key` (an expression over `self`).
macro_rules! impl_event {
    ($ty:ty, $schema:expr, |$this:ident| $key:expr) => {
        impl Event for $ty {
            const SCHEMA: EventSchema = $schema;

            fn event_id(&self) -> &str {
                &self.event_id
            }

            fn event_time(&self) -> DateTime<Utc> {
                self.event_time
            }

            fn key(&self) -> &str {
                let $this = self;
                $key
            }
        }
    };
}

impl_event!(RawReview, EventSchema::Review, |e| &e.review_id);
impl_event!(CleanReview, EventSchema::CleanReview, |e| &e.review_id);
// The DLQ is keyed by the original key; as text that is its base64, or the dead letter's own id
// when the original message had no key.
impl_event!(DeadLetter, EventSchema::DeadLetter, |e| e
    .original_key_b64
    .as_deref()
    .unwrap_or(&e.event_id));
impl_event!(LabelFeedback, EventSchema::LabelFeedback, |e| &e.review_id);
impl_event!(Prediction, EventSchema::Prediction, |e| &e.review_id);
impl_event!(NegativeAlert, EventSchema::NegativeAlert, |e| &e.review_id);
impl_event!(DriftReport, EventSchema::DriftReport, |e| &e.model.version);
impl_event!(RetrainRequest, EventSchema::RetrainRequest, |e| &e
    .model
    .version);
impl_event!(ModelUpdate, EventSchema::ModelUpdate, |e| &e.model.name);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_order_names_and_parsing() {
        assert_eq!(
            Sentiment::ALL,
            [Sentiment::Negative, Sentiment::Neutral, Sentiment::Positive]
        );
        for (i, s) in Sentiment::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Sentiment::from_index(i), Some(s));
            assert_eq!(s.as_str().parse::<Sentiment>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(
                serde_json::to_value(s).expect("serialise"),
                Value::String(s.as_str().to_owned())
            );
        }
        assert_eq!(Sentiment::from_index(3), None);
        let err = "Negative".parse::<Sentiment>().expect_err("case matters");
        assert_eq!(
            err.to_string(),
            "unknown sentiment \"Negative\" (expected one of: negative, neutral, positive)"
        );
    }

    #[test]
    fn wire_names_match_serde_for_every_enum() {
        fn check<T>(all: &[T])
        where
            T: Copy + fmt::Display + FromStr + Serialize + PartialEq + fmt::Debug,
            <T as FromStr>::Err: fmt::Debug,
        {
            for v in all {
                let wire = serde_json::to_value(v).expect("serialise");
                assert_eq!(wire, Value::String(v.to_string()));
                assert_eq!(v.to_string().parse::<T>().expect("parse"), *v);
            }
        }
        check(&Sentiment::ALL);
        check(&LabelProvenance::ALL);
        check(&ModelFamily::ALL);
        check(&Device::ALL);
        check(&DriftStatus::ALL);
        check(&WindowKind::ALL);
        check(&RequestedBy::ALL);
        check(&DeviceWanted::ALL);
        check(&UpdateAction::ALL);
        check(&ModelAlias::ALL);
        assert_eq!(UpdateAction::RolledBack.as_str(), "rolled_back");
        assert_eq!(LabelProvenance::WeakLexicon.as_str(), "weak_lexicon");
    }

    #[test]
    fn probabilities_helpers() {
        let p = Probabilities::from_array([0.2, 0.5, 0.3]);
        assert_eq!(p.to_array(), [0.2, 0.5, 0.3]);
        assert_eq!(p.get(Sentiment::Positive), 0.3);
        assert_eq!(p.argmax(), (Sentiment::Neutral, 0.5));
        let tie = Probabilities::from_array([0.4, 0.4, 0.2]);
        assert_eq!(tie.argmax().0, Sentiment::Negative);
    }

    #[test]
    fn event_ids_are_uuid_v7() {
        let a = new_event_id();
        let parsed = uuid::Uuid::parse_str(&a).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert_ne!(a, new_event_id());
    }

    #[test]
    fn dead_letter_keeps_exact_bytes() {
        let source = SourceCoordinate {
            topic: "t.reviews.raw".to_owned(),
            partition: 2,
            offset: 41,
        };
        let value = [0xff_u8, 0x00, b'{', 0xfe];
        let dl = DeadLetter::new(
            "ingest",
            "invalid_json",
            "x".repeat(5000),
            source.clone(),
            Some(b"r-1"),
            &value,
        );
        assert_eq!(dl.schema_version, SCHEMA_VERSION);
        assert_eq!(dl.original_value().expect("b64"), value);
        assert_eq!(dl.original_key().expect("b64"), Some(b"r-1".to_vec()));
        assert_eq!(dl.original_size_bytes, 4);
        assert_eq!(dl.reason.chars().count(), MAX_DEAD_LETTER_REASON_CHARS);
        assert_eq!(dl.key(), "ci0x");
        assert_eq!(dl.source, source);
        dl.validate().expect("valid dead letter");

        let keyless = DeadLetter::new("infer", "oversize", "é".repeat(4097), source, None, &[]);
        assert_eq!(keyless.original_key().expect("b64"), None);
        assert_eq!(keyless.key(), keyless.event_id);
        assert_eq!(keyless.original_value_b64, "");
        assert!(keyless.reason.ends_with('é'));
        keyless.validate().expect("valid keyless dead letter");
    }

    #[test]
    fn dead_letter_of_a_huge_message_keeps_a_prefix_and_the_whole_values_sha256() {
        let source = SourceCoordinate {
            topic: "t.reviews.raw".to_owned(),
            partition: 0,
            offset: 7,
        };
        let value: Vec<u8> = (0..900_000_u32).map(|i| (i % 251) as u8).collect();
        let key = vec![b'k'; MAX_DEAD_LETTER_KEY_BYTES + 1];
        let letter = DeadLetter::new("ingest", "oversize", "too big", source, Some(&key), &value);
        assert!(letter.original_truncated);
        assert_eq!(letter.original_size_bytes, 900_000);
        assert_eq!(
            letter.original_value().expect("b64"),
            value[..MAX_DEAD_LETTER_VALUE_BYTES]
        );
        assert_eq!(
            letter.original_key().expect("b64").expect("key").len(),
            MAX_DEAD_LETTER_KEY_BYTES
        );
        assert_eq!(
            letter.original_sha256.as_deref(),
            Some(hex::encode(Sha256::digest(&value)).as_str())
        );
        letter.validate().expect("valid truncated dead letter");
        let encoded = serde_json::to_vec(&letter).expect("serialises");
        assert!(
            encoded.len() < 400 * 1024,
            "well under the broker's 1 MB default: {} bytes",
            encoded.len()
        );

        let small = DeadLetter::new(
            "ingest",
            "oversize",
            "r",
            letter.source.clone(),
            None,
            b"{}",
        );
        let small_json = serde_json::to_value(&small).expect("serialises");
        assert!(!small.original_truncated);
        assert!(small_json.get("original_truncated").is_none());
        assert!(small_json.get("original_sha256").is_none());
    }

    #[test]
    fn decode_errors_name_their_kind() {
        let json = RawReview::decode_validated(b"{not json").expect_err("bad json");
        assert_eq!(json.kind(), "invalid_json");
        let schema = RawReview::decode_validated(b"{}").expect_err("missing fields");
        assert_eq!(schema.kind(), "schema_violation");
        // 1.0 is an integer to JSON Schema but not to serde's u8.
        let shape = RawReview::decode_validated(
            br#"{"schema_version":1,"event_id":"e","event_time":"2024-01-01T00:00:00Z",
                "review_id":"r","source":"s","author":"","text":"t",
                "created_at":"2024-01-01T00:00:00Z","rating":1.0}"#,
        )
        .expect_err("float rating");
        assert_eq!(shape.kind(), "invalid_event");
    }
}
