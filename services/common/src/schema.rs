//! JSON Schema validation of sentiflow events: the schema files of `schemas/` embedded at compile
//! time, compiled once (offline, with format assertion on) and shared by every caller.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;

/// Most errors a [`SchemaViolation`] keeps; the rest are only counted as "more".
pub const MAX_REPORTED_ERRORS: usize = 10;

/// Longest message kept per error, in characters (unknown property names come from the input).
const MAX_MESSAGE_CHARS: usize = 300;

/// Base URI every schema `$id` lives under; relative `$ref`s resolve against it.
pub const SCHEMA_BASE_URI: &str = "https://sentiflow.dev/schemas/";

/// File name of the shared definitions referenced by every event schema.
pub const COMMON_SCHEMA_FILE: &str = "common.schema.json";

/// Text of `schemas/common.schema.json`.
pub const COMMON_SCHEMA_SOURCE: &str = include_str!("../../../schemas/common.schema.json");

/// One event schema of the contract; each topic in the catalogue names one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventSchema {
    /// `review.schema.json`: raw reviews on `reviews.raw`.
    Review,
    /// `clean_review.schema.json`: cleaned reviews on `reviews.clean`.
    CleanReview,
    /// `dead_letter.schema.json`: rejected messages on `reviews.dlq`.
    DeadLetter,
    /// `label_feedback.schema.json`: human labels on `labels.feedback`.
    LabelFeedback,
    /// `prediction.schema.json`: predictions on `predictions` and `predictions.shadow`.
    Prediction,
    /// `negative_alert.schema.json`: alerts on `alerts.negative`.
    NegativeAlert,
    /// `drift_report.schema.json`: reports on `drift.reports`.
    DriftReport,
    /// `retrain_request.schema.json`: requests on `retrain.requests`.
    RetrainRequest,
    /// `model_update.schema.json`: registry changes on `models.updates`.
    ModelUpdate,
}

impl EventSchema {
    /// Every event schema, in catalogue order.
    pub const ALL: [EventSchema; 9] = [
        EventSchema::Review,
        EventSchema::CleanReview,
        EventSchema::DeadLetter,
        EventSchema::LabelFeedback,
        EventSchema::Prediction,
        EventSchema::NegativeAlert,
        EventSchema::DriftReport,
        EventSchema::RetrainRequest,
        EventSchema::ModelUpdate,
    ];

    /// File name of the schema in `schemas/`, as topics.json names it.
    #[must_use]
    pub const fn file_name(self) -> &'static str {
        match self {
            EventSchema::Review => "review.schema.json",
            EventSchema::CleanReview => "clean_review.schema.json",
            EventSchema::DeadLetter => "dead_letter.schema.json",
            EventSchema::LabelFeedback => "label_feedback.schema.json",
            EventSchema::Prediction => "prediction.schema.json",
            EventSchema::NegativeAlert => "negative_alert.schema.json",
            EventSchema::DriftReport => "drift_report.schema.json",
            EventSchema::RetrainRequest => "retrain_request.schema.json",
            EventSchema::ModelUpdate => "model_update.schema.json",
        }
    }

    /// Short name of the event (the file name without `.schema.json`), e.g. `clean_review`.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.file_name()
            .strip_suffix(".schema.json")
            .unwrap_or(self.file_name())
    }

    /// The schema's text, embedded from `schemas/` at compile time.
    #[must_use]
    pub const fn source(self) -> &'static str {
        match self {
            EventSchema::Review => include_str!("../../../schemas/review.schema.json"),
            EventSchema::CleanReview => include_str!("../../../schemas/clean_review.schema.json"),
            EventSchema::DeadLetter => include_str!("../../../schemas/dead_letter.schema.json"),
            EventSchema::LabelFeedback => {
                include_str!("../../../schemas/label_feedback.schema.json")
            }
            EventSchema::Prediction => include_str!("../../../schemas/prediction.schema.json"),
            EventSchema::NegativeAlert => {
                include_str!("../../../schemas/negative_alert.schema.json")
            }
            EventSchema::DriftReport => include_str!("../../../schemas/drift_report.schema.json"),
            EventSchema::RetrainRequest => {
                include_str!("../../../schemas/retrain_request.schema.json")
            }
            EventSchema::ModelUpdate => include_str!("../../../schemas/model_update.schema.json"),
        }
    }

    /// The schema's `$id`, e.g. `https://sentiflow.dev/schemas/review.schema.json`.
    #[must_use]
    pub fn id(self) -> String {
        format!("{SCHEMA_BASE_URI}{}", self.file_name())
    }

    /// The schema whose file name is `file_name`, if any.
    #[must_use]
    pub fn from_file_name(file_name: &str) -> Option<EventSchema> {
        EventSchema::ALL
            .into_iter()
            .find(|schema| schema.file_name() == file_name)
    }

    /// Position of the schema in [`EventSchema::ALL`].
    const fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

impl FromStr for EventSchema {
    type Err = UnknownSchema;

    /// Accepts a file name (`review.schema.json`) or a short name (`review`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventSchema::ALL
            .into_iter()
            .find(|schema| schema.file_name() == s || schema.name() == s)
            .ok_or_else(|| UnknownSchema(s.to_owned()))
    }
}

/// A name that is not one of the event schemas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event schema {0:?}")]
pub struct UnknownSchema(pub String);

/// An event failed validation against its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{schema} violated: {}{}", .errors.join("; "), if *.more { "; (more errors omitted)" } else { "" })]
pub struct SchemaViolation {
    /// Schema the event was checked against.
    pub schema: EventSchema,
    /// Up to [`MAX_REPORTED_ERRORS`] errors, each "at /json/pointer: message" (values masked).
    pub errors: Vec<String>,
    /// Whether there were more errors than the ones kept.
    pub more: bool,
}

/// The embedded schemas could not be compiled (a bug in `schemas/`, caught by tests).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema file is not valid JSON.
    #[error("{file} is not valid JSON: {source}")]
    Json {
        /// File that failed to parse.
        file: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The registry of shared definitions could not be built.
    #[error("cannot register {file}: {message}")]
    Registry {
        /// File that failed to register.
        file: &'static str,
        /// The referencing library's error text.
        message: String,
    },
    /// A schema did not compile (invalid keyword, unresolvable `$ref`).
    #[error("{file} does not compile: {message}")]
    Compile {
        /// File that failed to compile.
        file: &'static str,
        /// The compiler's error text.
        message: String,
    },
}

/// Compiled validators for every [`EventSchema`]; build once and share (see [`SchemaRegistry::global`]).
pub struct SchemaRegistry {
    /// One compiled validator per schema, indexed by [`EventSchema::slot`].
    validators: Vec<Validator>,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("schemas", &EventSchema::ALL)
            .finish()
    }
}

/// The process-wide registry, compiled on first use.
static GLOBAL: LazyLock<SchemaRegistry> = LazyLock::new(|| {
    SchemaRegistry::new().expect("embedded schemas compile (checked by the crate's tests)")
});

impl SchemaRegistry {
    /// Compiles every embedded schema. Never touches the network or the file system: `$ref`s to
    /// `common.schema.json` resolve from the embedded copy, and `format` is asserted (so a bad
    /// `date-time` is rejected, not just annotated).
    ///
    /// # Errors
    /// [`SchemaError`] when an embedded schema is broken.
    pub fn new() -> Result<SchemaRegistry, SchemaError> {
        let common = parse(COMMON_SCHEMA_FILE, COMMON_SCHEMA_SOURCE)?;
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(format!("{SCHEMA_BASE_URI}{COMMON_SCHEMA_FILE}"), common)
            .and_then(|builder| builder.prepare())
            .map_err(|e| SchemaError::Registry {
                file: COMMON_SCHEMA_FILE,
                message: e.to_string(),
            })?;
        let mut validators = Vec::with_capacity(EventSchema::ALL.len());
        for schema in EventSchema::ALL {
            let file = schema.file_name();
            let document = parse(file, schema.source())?;
            let validator = jsonschema::options()
                .with_draft(Draft::Draft202012)
                .with_registry(&registry)
                .should_validate_formats(true)
                .should_ignore_unknown_formats(false)
                .offline()
                .build(&document)
                .map_err(|e| SchemaError::Compile {
                    file,
                    message: e.to_string(),
                })?;
            validators.push(validator);
        }
        Ok(SchemaRegistry { validators })
    }

    /// The shared registry, compiled on first use.
    ///
    /// # Panics
    /// If the embedded schemas do not compile, which the crate's tests rule out.
    #[must_use]
    pub fn global() -> &'static SchemaRegistry {
        &GLOBAL
    }

    /// Validates `value` against `schema`.
    ///
    /// # Errors
    /// [`SchemaViolation`] with up to [`MAX_REPORTED_ERRORS`] "at /path: message" entries. Messages
    /// mask instance values, so review text never ends up in logs or dead letters.
    pub fn validate(&self, schema: EventSchema, value: &Value) -> Result<(), SchemaViolation> {
        let validator = &self.validators[schema.slot()];
        if validator.is_valid(value) {
            return Ok(());
        }
        let mut errors = Vec::new();
        let mut more = false;
        for error in validator.iter_errors(value) {
            if errors.len() == MAX_REPORTED_ERRORS {
                more = true;
                break;
            }
            let path = error.instance_path().as_str();
            let path = if path.is_empty() { "/" } else { path };
            let message = truncate_chars(&error.masked().to_string(), MAX_MESSAGE_CHARS);
            errors.push(format!("at {path}: {message}"));
        }
        if errors.is_empty() {
            // is_valid and iter_errors disagree only on a library bug; still reject.
            errors.push("at /: invalid".to_owned());
        }
        Err(SchemaViolation {
            schema,
            errors,
            more,
        })
    }

    /// Whether `value` is valid against `schema` (cheaper than [`SchemaRegistry::validate`]).
    #[must_use]
    pub fn is_valid(&self, schema: EventSchema, value: &Value) -> bool {
        self.validators[schema.slot()].is_valid(value)
    }
}

/// Parses an embedded schema file.
fn parse(file: &'static str, source: &str) -> Result<Value, SchemaError> {
    serde_json::from_str(source).map_err(|source| SchemaError::Json { file, source })
}

/// `text` cut to at most `max` characters, with "…" when cut.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_compiles_and_names_round_trip() {
        let registry = SchemaRegistry::new().expect("schemas compile");
        assert!(!format!("{registry:?}").is_empty());
        for schema in EventSchema::ALL {
            assert_eq!(
                EventSchema::from_file_name(schema.file_name()),
                Some(schema)
            );
            assert_eq!(schema.name().parse::<EventSchema>(), Ok(schema));
            assert_eq!(schema.file_name().parse::<EventSchema>(), Ok(schema));
            let document: Value = serde_json::from_str(schema.source()).expect("json");
            assert_eq!(document["$id"], json!(schema.id()), "{schema}");
            assert_eq!(
                document["$schema"],
                json!("https://json-schema.org/draft/2020-12/schema")
            );
        }
        assert!("nope".parse::<EventSchema>().is_err());
    }

    #[test]
    fn slots_match_all_order() {
        for (i, schema) in EventSchema::ALL.into_iter().enumerate() {
            assert_eq!(schema.slot(), i);
        }
    }

    #[test]
    fn format_is_asserted_not_just_annotated() {
        let registry = SchemaRegistry::global();
        let mut review = json!({
            "schema_version": 1,
            "event_id": "e1",
            "event_time": "2024-05-01T12:00:00Z",
            "review_id": "r1",
            "source": "twitter",
            "author": "",
            "text": "fine",
            "created_at": "2024-02-29T23:59:59.5+02:00"
        });
        registry
            .validate(EventSchema::Review, &review)
            .expect("valid review");
        // Matches the pattern but is not a real date: only the format check catches it.
        review["created_at"] = json!("2023-02-30T10:00:00Z");
        let violation = registry
            .validate(EventSchema::Review, &review)
            .expect_err("bad date rejected");
        assert_eq!(violation.errors.len(), 1, "{violation}");
        assert!(
            violation.errors[0].starts_with("at /created_at: "),
            "{violation}"
        );
    }

    #[test]
    fn errors_are_capped_masked_and_pathed() {
        let registry = SchemaRegistry::global();
        let secret = "my secret text ".repeat(700);
        let value = json!({
            "schema_version": 2,
            "event_id": "",
            "event_time": "yesterday",
            "review_id": 5,
            "source": "",
            "author": 7,
            "text": secret,
            "created_at": "no",
            "rating": 9,
            "label": "angry",
            "lang": "ENGLISH",
            "x1": 1, "x2": 2
        });
        let violation = registry
            .validate(EventSchema::Review, &value)
            .expect_err("invalid");
        assert_eq!(violation.errors.len(), MAX_REPORTED_ERRORS);
        assert!(violation.more);
        let text = violation.to_string();
        assert!(!text.contains("my secret text"), "{text}");
        assert!(
            text.starts_with("review.schema.json violated: at /"),
            "{text}"
        );
        assert!(violation.errors.iter().all(|e| e.chars().count() < 400));
    }

    #[test]
    fn root_errors_use_slash() {
        let violation = SchemaRegistry::global()
            .validate(EventSchema::LabelFeedback, &json!([]))
            .expect_err("not an object");
        assert!(violation.errors[0].starts_with("at /: "), "{violation}");
    }

    #[test]
    fn truncate_chars_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("hé", 2), "hé");
    }
}
