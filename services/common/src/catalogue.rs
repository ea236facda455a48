//! The topic catalogue (`schemas/topics.json`): logical topic names, keys, schemas, partitions and
//! retention, read by `sentiflow up` to create topics and by services to name them.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::schema::EventSchema;

/// Logical topic names, as listed in the catalogue.
pub mod topics {
    /// Raw reviews from external producers.
    pub const REVIEWS_RAW: &str = "reviews.raw";
    /// Cleaned, redacted, deduplicated reviews.
    pub const REVIEWS_CLEAN: &str = "reviews.clean";
    /// Dead letters from any service.
    pub const REVIEWS_DLQ: &str = "reviews.dlq";
    /// Human labels.
    pub const LABELS_FEEDBACK: &str = "labels.feedback";
    /// Champion predictions.
    pub const PREDICTIONS: &str = "predictions";
    /// Challenger (shadow) predictions.
    pub const PREDICTIONS_SHADOW: &str = "predictions.shadow";
    /// Confident negative predictions for human review.
    pub const ALERTS_NEGATIVE: &str = "alerts.negative";
    /// Drift reports.
    pub const DRIFT_REPORTS: &str = "drift.reports";
    /// Retrain requests.
    pub const RETRAIN_REQUESTS: &str = "retrain.requests";
    /// Model registry changes.
    pub const MODELS_UPDATES: &str = "models.updates";

    /// Every logical topic, in catalogue order.
    pub const ALL: [&str; 10] = [
        REVIEWS_RAW,
        REVIEWS_CLEAN,
        REVIEWS_DLQ,
        LABELS_FEEDBACK,
        PREDICTIONS,
        PREDICTIONS_SHADOW,
        ALERTS_NEGATIVE,
        DRIFT_REPORTS,
        RETRAIN_REQUESTS,
        MODELS_UPDATES,
    ];
}

/// Catalogue format version this code reads.
pub const CATALOGUE_VERSION: u32 = 1;

/// Text of `schemas/topics.json`, embedded at compile time.
pub const EMBEDDED_CATALOGUE: &str = include_str!("../../../schemas/topics.json");

/// Longest legal Kafka topic name.
const MAX_TOPIC_NAME_LEN: usize = 249;

/// The physical topic name for `logical` under `prefix`: `logical` when the prefix is empty,
/// otherwise `"{prefix}.{logical}"` (tests use random prefixes so runs never share topics).
#[must_use]
pub fn physical_name(prefix: &str, logical: &str) -> String {
    if prefix.is_empty() {
        logical.to_owned()
    } else {
        format!("{prefix}.{logical}")
    }
}

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Delete segments older than the retention.
    #[serde(rename = "delete")]
    Delete,
    /// Keep the latest value per key.
    #[serde(rename = "compact")]
    Compact,
    /// Compact, and also delete by retention.
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl CleanupPolicy {
    /// The value of Kafka's `cleanup.policy` topic config.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One topic of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// Logical name, e.g. `reviews.raw` (see [`physical_name`] for the real topic).
    pub name: String,
    /// Event field used as the message key, e.g. `review_id` or `model.version`.
    pub key: String,
    /// Schema file in `schemas/` every message follows, e.g. `review.schema.json`.
    pub schema: String,
    /// Number of partitions to create.
    pub partitions: i32,
    /// Replication factor to create with.
    pub replication_factor: i32,
    /// Kafka `retention.ms` (-1: keep forever).
    pub retention_ms: i64,
    /// Kafka `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// Who writes the topic (documentation).
    pub producers: Vec<String>,
    /// Who reads the topic (documentation).
    pub consumers: Vec<String>,
    /// What the topic carries.
    pub description: String,
}

impl TopicSpec {
    /// The schema messages on this topic follow (`None` only for a catalogue that skipped
    /// validation; [`Catalogue::validate`] rejects unknown schemas).
    #[must_use]
    pub fn event_schema(&self) -> Option<EventSchema> {
        EventSchema::from_file_name(&self.schema)
    }

    /// The physical topic name under `prefix`.
    #[must_use]
    pub fn physical_name(&self, prefix: &str) -> String {
        physical_name(prefix, &self.name)
    }
}

/// The whole catalogue (`schemas/topics.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    /// Catalogue format version; [`CATALOGUE_VERSION`].
    pub version: u32,
    /// Every topic.
    pub topics: Vec<TopicSpec>,
}

/// Why a catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The file could not be read.
    #[error("cannot read topic catalogue {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not a catalogue (bad JSON, missing field, unknown cleanup policy...).
    #[error("topic catalogue is malformed: {0}")]
    Parse(#[from] serde_json::Error),
    /// A version this code does not understand.
    #[error("topic catalogue version {found} is not supported (expected {CATALOGUE_VERSION})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
    },
    /// Two topics share a name.
    #[error("topic {0:?} is listed twice")]
    DuplicateTopic(String),
    /// A name Kafka would refuse.
    #[error("topic name {0:?} is not a legal Kafka topic name")]
    IllegalName(String),
    /// A topic without partitions.
    #[error("topic {topic:?} has {partitions} partitions (need at least 1)")]
    NoPartitions {
        /// The topic.
        topic: String,
        /// Partitions in the file.
        partitions: i32,
    },
    /// A replication factor below 1.
    #[error("topic {topic:?} has replication factor {replication_factor} (need at least 1)")]
    BadReplication {
        /// The topic.
        topic: String,
        /// Replication factor in the file.
        replication_factor: i32,
    },
    /// A retention that is neither positive nor -1.
    #[error("topic {topic:?} has retention_ms {retention_ms} (need > 0, or -1 for unlimited)")]
    BadRetention {
        /// The topic.
        topic: String,
        /// Retention in the file.
        retention_ms: i64,
    },
    /// A schema file that is not one of the event schemas.
    #[error("topic {topic:?} names unknown schema {schema:?}")]
    UnknownSchema {
        /// The topic.
        topic: String,
        /// Schema file in the file.
        schema: String,
    },
    /// A topic without a key field.
    #[error("topic {0:?} has an empty key")]
    EmptyKey(String),
}

/// The embedded catalogue, parsed once.
static EMBEDDED: LazyLock<Catalogue> = LazyLock::new(|| {
    Catalogue::from_json_str(EMBEDDED_CATALOGUE)
        .expect("embedded schemas/topics.json is valid (checked by the crate's tests)")
});

impl Catalogue {
    /// The catalogue compiled into the binary from `schemas/topics.json`.
    ///
    /// # Panics
    /// If the embedded file is invalid, which the crate's tests rule out.
    #[must_use]
    pub fn embedded() -> &'static Catalogue {
        &EMBEDDED
    }

    /// Reads and validates a catalogue file (e.g. an operator's override of the embedded one).
    ///
    /// # Errors
    /// [`CatalogueError`] when the file cannot be read, parsed or fails validation.
    pub fn load(path: impl AsRef<Path>) -> Result<Catalogue, CatalogueError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Io {
            path: path.to_owned(),
            source,
        })?;
        Catalogue::from_json_str(&text)
    }

    /// Parses and validates catalogue JSON.
    ///
    /// # Errors
    /// [`CatalogueError`] when the text is malformed or fails validation.
    pub fn from_json_str(text: &str) -> Result<Catalogue, CatalogueError> {
        let catalogue: Catalogue = serde_json::from_str(text)?;
        catalogue.validate()?;
        Ok(catalogue)
    }

    /// Checks the version, unique and legal names, partitions, replication, retention, keys and
    /// that every schema is one of [`EventSchema::ALL`].
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        if self.version != CATALOGUE_VERSION {
            return Err(CatalogueError::UnsupportedVersion {
                found: self.version,
            });
        }
        let mut seen = HashSet::new();
        for topic in &self.topics {
            if !seen.insert(topic.name.as_str()) {
                return Err(CatalogueError::DuplicateTopic(topic.name.clone()));
            }
            if !is_legal_topic_name(&topic.name) {
                return Err(CatalogueError::IllegalName(topic.name.clone()));
            }
            if topic.partitions < 1 {
                return Err(CatalogueError::NoPartitions {
                    topic: topic.name.clone(),
                    partitions: topic.partitions,
                });
            }
            if topic.replication_factor < 1 {
                return Err(CatalogueError::BadReplication {
                    topic: topic.name.clone(),
                    replication_factor: topic.replication_factor,
                });
            }
            if topic.retention_ms != -1 && topic.retention_ms <= 0 {
                return Err(CatalogueError::BadRetention {
                    topic: topic.name.clone(),
                    retention_ms: topic.retention_ms,
                });
            }
            if topic.event_schema().is_none() {
                return Err(CatalogueError::UnknownSchema {
                    topic: topic.name.clone(),
                    schema: topic.schema.clone(),
                });
            }
            if topic.key.trim().is_empty() {
                return Err(CatalogueError::EmptyKey(topic.name.clone()));
            }
        }
        Ok(())
    }

    /// The topic with logical name `logical`.
    #[must_use]
    pub fn get(&self, logical: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|topic| topic.name == logical)
    }
}

/// Whether Kafka accepts `name` as a topic name (1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`).
fn is_legal_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_names() {
        assert_eq!(physical_name("", topics::REVIEWS_RAW), "reviews.raw");
        assert_eq!(
            physical_name("t1a2", topics::REVIEWS_RAW),
            "t1a2.reviews.raw"
        );
        let spec = Catalogue::embedded()
            .get(topics::PREDICTIONS)
            .expect("predictions");
        assert_eq!(spec.physical_name("x"), "x.predictions");
    }

    #[test]
    fn embedded_lists_exactly_the_logical_topics() {
        let catalogue = Catalogue::embedded();
        let names: Vec<&str> = catalogue.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, topics::ALL);
        assert!(catalogue.get("nope").is_none());
    }

    /// A one-topic catalogue whose topic is edited by `edit`.
    fn with_topic(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Catalogue, CatalogueError> {
        let mut value = serde_json::json!({
            "version": 1,
            "topics": [{
                "name": "reviews.raw", "key": "review_id", "schema": "review.schema.json",
                "partitions": 3, "replication_factor": 1, "retention_ms": 1000,
                "cleanup_policy": "delete", "producers": [], "consumers": [], "description": ""
            }]
        });
        edit(&mut value["topics"][0]);
        Catalogue::from_json_str(&value.to_string())
    }

    #[test]
    fn validation_rejects_bad_topics() {
        with_topic(|_| {}).expect("baseline is valid");
        /// A named edit of the topic and the error variant it must produce.
        type Case = (&'static str, fn(&mut serde_json::Value), &'static str);
        let cases: [Case; 8] = [
            (
                "zero partitions",
                |t| t["partitions"] = 0.into(),
                "NoPartitions",
            ),
            (
                "replication",
                |t| t["replication_factor"] = 0.into(),
                "BadReplication",
            ),
            (
                "retention",
                |t| t["retention_ms"] = 0.into(),
                "BadRetention",
            ),
            ("policy", |t| t["cleanup_policy"] = "shred".into(), "Parse"),
            (
                "schema",
                |t| t["schema"] = "x.schema.json".into(),
                "UnknownSchema",
            ),
            ("name", |t| t["name"] = "bad name".into(), "IllegalName"),
            ("key", |t| t["key"] = "".into(), "EmptyKey"),
            (
                "missing",
                |t| _ = t.as_object_mut().map(|o| o.remove("key")),
                "Parse",
            ),
        ];
        for (what, edit, variant) in cases {
            let err = with_topic(edit).expect_err(what);
            assert!(format!("{err:?}").starts_with(variant), "{what}: {err:?}");
        }
        with_topic(|t| t["retention_ms"] = (-1).into()).expect("-1 is unlimited");
        with_topic(|t| t["cleanup_policy"] = "compact,delete".into()).expect("compact,delete");
    }

    #[test]
    fn validation_rejects_duplicates_and_versions() {
        let mut catalogue = Catalogue::embedded().clone();
        catalogue.topics.push(catalogue.topics[0].clone());
        assert!(matches!(
            catalogue.validate(),
            Err(CatalogueError::DuplicateTopic(name)) if name == "reviews.raw"
        ));
        let mut catalogue = Catalogue::embedded().clone();
        catalogue.version = 2;
        assert!(matches!(
            catalogue.validate(),
            Err(CatalogueError::UnsupportedVersion { found: 2 })
        ));
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("topics.json");
        std::fs::write(&path, EMBEDDED_CATALOGUE).expect("write");
        assert_eq!(
            &Catalogue::load(&path).expect("load"),
            Catalogue::embedded()
        );
        let err = Catalogue::load(dir.path().join("missing.json")).expect_err("missing");
        assert!(matches!(err, CatalogueError::Io { .. }), "{err:?}");
    }

    #[test]
    fn legal_names() {
        assert!(is_legal_topic_name("a.b_c-D9"));
        assert!(!is_legal_topic_name(""));
        assert!(!is_legal_topic_name(".."));
        assert!(!is_legal_topic_name(&"a".repeat(250)));
        assert!(!is_legal_topic_name("é"));
    }
}
