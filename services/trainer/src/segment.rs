//! Curation segments: append-only Parquet files of the records the trainer consumed from `reviews.clean`
//! and `labels.feedback`, each made durable (temp file, fsync, rename, directory fsync) before the Kafka
//! offsets it accounts for are stored, and each recording those offset ranges in its Parquet metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, TimeZone, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sentiflow_common::events::{
    CleanReview, LabelFeedback, LabelProvenance, Sentiment, SourceCoordinate,
};
use serde::{Deserialize, Serialize};

use crate::dataset::{DatasetError, OffsetRange, format_error, io_error};

/// Key of the segment's own metadata (JSON [`SegmentMeta`]) in the Parquet footer.
pub const SEGMENT_META_KEY: &str = "sentiflow.segment";

/// Layout version of segment files written by this code.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

/// Which topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A cleaned review (`reviews.clean`), labelled or not.
    Review,
    /// A human label (`labels.feedback`).
    Feedback,
}

impl RecordKind {
    /// Column value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Review => "review",
            RecordKind::Feedback => "feedback",
        }
    }

    fn parse(value: &str) -> Option<RecordKind> {
        match value {
            "review" => Some(RecordKind::Review),
            "feedback" => Some(RecordKind::Feedback),
            _ => None,
        }
    }
}

/// One consumed event as the trainer keeps it: what training needs plus where it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurationRecord {
    /// Review or human label.
    pub kind: RecordKind,
    /// Event id of the consumed event.
    pub event_id: String,
    /// Event time of the consumed event (orders human labels: the latest wins).
    pub event_time: DateTime<Utc>,
    /// The review the record is about.
    pub review_id: String,
    /// Clean, redacted text (empty for feedback: the review brings it).
    pub text: String,
    /// Source platform of the review (empty for feedback).
    pub source: String,
    /// When the review was written (the label time for feedback).
    pub created_at: DateTime<Utc>,
    /// The label, if any (reviews may be unlabelled).
    pub label: Option<Sentiment>,
    /// Where the label came from (`human` for feedback).
    pub provenance: Option<LabelProvenance>,
    /// Confidence of the label (0 when unlabelled, 1 for human labels).
    pub confidence: f32,
    /// Whether ingest found the review's language allowed (always true for feedback).
    pub lang_allowed: bool,
    /// Topic, partition and offset the event was read from.
    pub coordinate: SourceCoordinate,
}

impl CurationRecord {
    /// The record of a clean review.
    pub fn from_review(review: &CleanReview, coordinate: SourceCoordinate) -> CurationRecord {
        CurationRecord {
            kind: RecordKind::Review,
            event_id: review.event_id.clone(),
            event_time: review.event_time,
            review_id: review.review_id.clone(),
            text: review.text.clone(),
            source: review.source.clone(),
            created_at: review.created_at,
            label: review.label.map(|label| label.label),
            provenance: review.label.map(|label| label.provenance),
            confidence: review.label.map_or(0.0, |label| label.confidence as f32),
            lang_allowed: review.lang_allowed,
            coordinate,
        }
    }

    /// The record of a human label.
    pub fn from_feedback(feedback: &LabelFeedback, coordinate: SourceCoordinate) -> CurationRecord {
        CurationRecord {
            kind: RecordKind::Feedback,
            event_id: feedback.event_id.clone(),
            event_time: feedback.event_time,
            review_id: feedback.review_id.clone(),
            text: String::new(),
            source: String::new(),
            created_at: feedback.event_time,
            label: Some(feedback.label),
            provenance: Some(LabelProvenance::Human),
            confidence: 1.0,
            lang_allowed: true,
            coordinate,
        }
    }
}

/// What a segment holds, stored in its Parquet footer under [`SEGMENT_META_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// [`SEGMENT_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Segment id (the file name without `.parquet`).
    pub segment_id: String,
    /// When the segment was closed.
    pub created_at: DateTime<Utc>,
    /// Records in the file.
    pub rows: u64,
    /// Messages consumed without a record because they went to the dead-letter topic.
    pub dead_lettered: u64,
    /// Offsets of every message the segment accounts for (records and dead letters), per partition.
    pub offsets: Vec<OffsetRange>,
    /// Segments this one replaces (a compaction's inputs). Any of them a crash left behind is skipped
    /// and removed the next time the segments are loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
    /// Records compactions left out of this segment's inputs so far (superseded, re-read or expired).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compacted_away: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Every complete segment at one moment, read under the store's lock.
#[derive(Debug, Default)]
pub struct LoadedSegments {
    /// Paths of the segments read, oldest name first.
    pub paths: Vec<PathBuf>,
    /// Their metadata, in the same order.
    pub metas: Vec<SegmentMeta>,
    /// Their records, segment after segment.
    pub records: Vec<CurationRecord>,
    /// Segments a finished compaction had replaced but a crash left behind: skipped and removed.
    pub leftovers_removed: usize,
}

impl LoadedSegments {
    /// What the loaded segments account for together, as one segment replacing them would record it:
    /// merged offset ranges, summed dead letters and compacted-away records, their ids.
    pub fn combined(&self) -> SegmentContents {
        SegmentContents {
            offsets: merge_ranges(self.metas.iter().flat_map(|meta| &meta.offsets)),
            dead_lettered: self.metas.iter().map(|meta| meta.dead_lettered).sum(),
            replaces: self
                .metas
                .iter()
                .map(|meta| meta.segment_id.clone())
                .collect(),
            compacted_away: self.metas.iter().map(|meta| meta.compacted_away).sum(),
        }
    }
}

/// A segment as read: its path, metadata and what was read of its records (all, or nothing: `()`).
type ReadSegment<T> = (PathBuf, SegmentMeta, T);

/// Exclusive hold on a segment directory (an advisory lock on `<dir>/.lock`, across processes too):
/// loading every segment and replacing segments by their compaction never interleave. Writing a new
/// segment needs no lock: it appears by an atomic rename. Released when dropped.
#[derive(Debug)]
pub struct SegmentLock {
    _file: Option<File>,
}

/// Longest [`SegmentStore::lock`] waits for another holder before it gives up with an error.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The fields of a segment's metadata that its writer chooses (the rest are set when it is written).
#[derive(Debug, Clone, Default)]
pub struct SegmentContents {
    /// Offsets of every message the segment accounts for.
    pub offsets: Vec<OffsetRange>,
    /// Messages dead-lettered instead of kept.
    pub dead_lettered: u64,
    /// Segments it replaces (compaction).
    pub replaces: Vec<String>,
    /// Records compactions left out so far.
    pub compacted_away: u64,
}

/// Tracks the offset range of every partition consumed into one segment.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// (topic, partition) → (smallest, largest) offset seen.
    ranges: BTreeMap<(String, i32), (i64, i64)>,
}

impl OffsetTracker {
    /// Notes one consumed message.
    pub fn add(&mut self, topic: &str, partition: i32, offset: i64) {
        match self.ranges.get_mut(&(topic.to_owned(), partition)) {
            Some(range) => {
                range.0 = range.0.min(offset);
                range.1 = range.1.max(offset);
            }
            None => {
                self.ranges
                    .insert((topic.to_owned(), partition), (offset, offset));
            }
        }
    }

    /// True when nothing was consumed.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, ordered by topic and partition.
    pub fn ranges(&self) -> Vec<OffsetRange> {
        self.ranges
            .iter()
            .map(
                |((topic, partition), (min_offset, max_offset))| OffsetRange {
                    topic: topic.clone(),
                    partition: *partition,
                    min_offset: *min_offset,
                    max_offset: *max_offset,
                },
            )
            .collect()
    }
}

/// Merges offset ranges per topic partition (smallest min, largest max).
pub fn merge_ranges<'a>(ranges: impl IntoIterator<Item = &'a OffsetRange>) -> Vec<OffsetRange> {
    let mut tracker = OffsetTracker::default();
    for range in ranges {
        tracker.add(&range.topic, range.partition, range.min_offset);
        tracker.add(&range.topic, range.partition, range.max_offset);
    }
    tracker.ranges()
}

fn segment_schema() -> Arc<Schema> {
    let time = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_time", time(), false),
        Field::new("review_id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("created_at", time(), false),
        Field::new("label", DataType::Utf8, true),
        Field::new("provenance", DataType::Utf8, true),
        Field::new("confidence", DataType::Float32, false),
        Field::new("lang_allowed", DataType::Boolean, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
    ]))
}

fn to_batch(records: &[CurationRecord]) -> RecordBatch {
    let strings = |get: &dyn Fn(&CurationRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(get)))
    };
    let times = |get: &dyn Fn(&CurationRecord) -> DateTime<Utc>| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(
                records.iter().map(|record| get(record).timestamp_millis()),
            )
            .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|record| record.kind.as_str()),
        strings(&|record| &record.event_id),
        times(&|record| record.event_time),
        strings(&|record| &record.review_id),
        strings(&|record| &record.text),
        strings(&|record| &record.source),
        times(&|record| record.created_at),
        Arc::new(StringArray::from_iter(
            records
                .iter()
                .map(|record| record.label.map(Sentiment::as_str)),
        )),
        Arc::new(StringArray::from_iter(
            records
                .iter()
                .map(|record| record.provenance.map(LabelProvenance::as_str)),
        )),
        Arc::new(Float32Array::from_iter_values(
            records.iter().map(|record| record.confidence),
        )),
        Arc::new(BooleanArray::from_iter(
            records.iter().map(|record| Some(record.lang_allowed)),
        )),
        strings(&|record| &record.coordinate.topic),
        Arc::new(Int32Array::from_iter_values(
            records.iter().map(|record| record.coordinate.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|record| record.coordinate.offset),
        )),
    ];
    RecordBatch::try_new(segment_schema(), columns).expect("columns match the segment schema")
}

/// The segment directory: `<data dir>/curation/segments/seg-<time>-<id>.parquet`.
#[derive(Debug, Clone)]
pub struct SegmentStore {
    /// Directory of the segment files (created on first write).
    dir: PathBuf,
}

impl SegmentStore {
    /// A store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SegmentStore {
        SegmentStore { dir: dir.into() }
    }

    /// The store of a data directory: `<data_dir>/curation/segments`.
    pub fn in_data_dir(data_dir: &Path) -> SegmentStore {
        SegmentStore::new(data_dir.join("curation").join("segments"))
    }

    /// The segment directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one segment durably: the bytes go to a temp file that is fsynced, renamed into place, and
    /// the directory is fsynced, so once this returns the segment survives a crash or power loss.
    /// A segment may hold no record (every message of it was dead-lettered); it still records offsets.
    pub fn write(
        &self,
        records: &[CurationRecord],
        offsets: Vec<OffsetRange>,
        dead_lettered: u64,
    ) -> Result<SegmentMeta, DatasetError> {
        self.write_contents(
            records,
            SegmentContents {
                offsets,
                dead_lettered,
                ..SegmentContents::default()
            },
        )
    }

    /// Takes the directory's lock for reading every segment, waiting while another reader or compactor
    /// holds it, at most [`LOCK_WAIT`]. A directory that does not exist yet is not created (there is
    /// nothing to guard), and one whose lock file cannot be opened for writing (read-only data, another
    /// user's file) is read without the lock: a reader may then see a compaction's inputs and its output
    /// together, which loading resolves (the output names its inputs).
    pub fn lock(&self) -> Result<SegmentLock, DatasetError> {
        self.take_lock(false)
    }

    /// Takes the directory's lock for replacing segments (compaction): as [`SegmentStore::lock`], but a
    /// lock file that cannot be opened for writing is an error, never a reason to go on without it.
    pub fn lock_for_writing(&self) -> Result<SegmentLock, DatasetError> {
        self.take_lock(true)
    }

    fn take_lock(&self, writing: bool) -> Result<SegmentLock, DatasetError> {
        if writing {
            std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        }
        let path = self.dir.join(".lock");
        // Opened for writing: on NFS and CIFS an exclusive flock needs a writable descriptor.
        let file = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(error)
                if !writing
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                    ) =>
            {
                tracing::debug!(%error, path = %path.display(), "segments read without a lock");
                return Ok(SegmentLock { _file: None });
            }
            Err(error) => return Err(io_error(&path)(error)),
        };
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(SegmentLock { _file: Some(file) }),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io_error(&path)(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "another process held the segment lock for {} s (a stuck `sentiflow dataset compact`?)",
                            LOCK_WAIT.as_secs()
                        ),
                    )));
                }
                Err(std::fs::TryLockError::Error(error)) => return Err(io_error(&path)(error)),
            }
        }
    }

    /// Reads every complete segment. A segment that a later one replaces (a compaction a crash
    /// interrupted before it removed its inputs) is skipped and removed, so no record is read twice.
    pub fn load(&self, _lock: &SegmentLock) -> Result<LoadedSegments, DatasetError> {
        let mut read = Vec::new();
        for path in self.list()? {
            let (meta, records) = self.read(&path)?;
            read.push((path, meta, records));
        }
        let (read, leftovers_removed) = self.drop_replaced(read)?;
        let mut loaded = LoadedSegments {
            leftovers_removed,
            ..LoadedSegments::default()
        };
        for (path, meta, mut records) in read {
            loaded.paths.push(path);
            loaded.metas.push(meta);
            loaded.records.append(&mut records);
        }
        Ok(loaded)
    }

    /// The path and metadata (from the file's footer, records unread) of every complete segment,
    /// oldest name first; segments a later one replaces are skipped and removed, as by
    /// [`SegmentStore::load`]. Returns how many were removed too.
    pub fn list_metas(
        &self,
        _lock: &SegmentLock,
    ) -> Result<(Vec<(PathBuf, SegmentMeta)>, usize), DatasetError> {
        let mut listed = Vec::new();
        for path in self.list()? {
            let meta = read_segment_meta(&path)?;
            listed.push((path, meta, ()));
        }
        let (listed, removed) = self.drop_replaced(listed)?;
        let listed = listed
            .into_iter()
            .map(|(path, meta, ())| (path, meta))
            .collect();
        Ok((listed, removed))
    }

    /// Removes, from what was read and from disk, the segments a later one names as replaced (what a
    /// crash between a compaction's write and its removal of the inputs left); returns the rest and
    /// how many went.
    fn drop_replaced<T>(
        &self,
        read: Vec<ReadSegment<T>>,
    ) -> Result<(Vec<ReadSegment<T>>, usize), DatasetError> {
        let replaced: BTreeSet<String> = read
            .iter()
            .flat_map(|(_, meta, _)| meta.replaces.iter().cloned())
            .collect();
        let (leftovers, kept): (Vec<_>, Vec<_>) = read
            .into_iter()
            .partition(|(_, meta, _)| replaced.contains(&meta.segment_id));
        if !leftovers.is_empty() {
            let paths: Vec<PathBuf> = leftovers.into_iter().map(|(path, _, _)| path).collect();
            self.remove(&paths)?;
            tracing::info!(
                removed = paths.len(),
                "removed segments a compaction had replaced before a crash interrupted it"
            );
            return Ok((kept, paths.len()));
        }
        Ok((kept, 0))
    }

    /// Reads the records of segments [`SegmentStore::list_metas`] listed (under the same lock).
    pub fn load_listed(
        &self,
        listed: &[(PathBuf, SegmentMeta)],
    ) -> Result<LoadedSegments, DatasetError> {
        let mut loaded = LoadedSegments::default();
        for (path, _) in listed {
            let (meta, mut records) = self.read(path)?;
            loaded.paths.push(path.clone());
            loaded.metas.push(meta);
            loaded.records.append(&mut records);
        }
        Ok(loaded)
    }

    /// Writes `records` as one segment that replaces the segments at `inputs`, then removes those (a
    /// crash in between leaves both: [`SegmentStore::load`] then skips and removes the inputs). Records
    /// moved out (`archived`, when any) are first written as a segment of [`SegmentStore::archive`].
    pub fn replace(
        &self,
        _lock: &SegmentLock,
        inputs: &[PathBuf],
        records: &[CurationRecord],
        archived: &[CurationRecord],
        contents: SegmentContents,
    ) -> Result<(SegmentMeta, Option<SegmentMeta>), DatasetError> {
        let archive = if archived.is_empty() {
            None
        } else {
            Some(
                self.archive()
                    .write_contents(archived, SegmentContents::default())?,
            )
        };
        let meta = self.write_contents(records, contents)?;
        self.remove(inputs)?;
        Ok((meta, archive))
    }

    /// Where records that passed the retention window go: `<dir>/../archive`, in the segment format (a
    /// file moved back into the segment directory is read again like any segment). Never read here.
    pub fn archive(&self) -> SegmentStore {
        let parent = self.dir.parent().unwrap_or(&self.dir);
        SegmentStore::new(parent.join("archive"))
    }

    /// Removes segment files (already gone is fine) and makes the removal durable.
    fn remove(&self, paths: &[PathBuf]) -> Result<(), DatasetError> {
        for path in paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(path)(error)),
            }
        }
        crate::durable::sync_dir(&self.dir).map_err(io_error(&self.dir))
    }

    fn write_contents(
        &self,
        records: &[CurationRecord],
        contents: SegmentContents,
    ) -> Result<SegmentMeta, DatasetError> {
        std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let created_at = Utc::now();
        let segment_id = format!(
            "seg-{}-{}",
            created_at.format("%Y%m%dT%H%M%S%3fZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let meta = SegmentMeta {
            format_version: SEGMENT_FORMAT_VERSION,
            segment_id: segment_id.clone(),
            created_at,
            rows: records.len() as u64,
            dead_lettered: contents.dead_lettered,
            offsets: contents.offsets,
            replaces: contents.replaces,
            compacted_away: contents.compacted_away,
        };
        let target = self.dir.join(format!("{segment_id}.parquet"));
        let staging = self.dir.join(format!(".tmp-{segment_id}.parquet"));
        let bytes = encode(records, &meta).map_err(|error| format_error(&target, error))?;
        let written = (|| {
            let mut file = File::create(&staging)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&staging, &target)?;
            crate::durable::sync_dir(&self.dir)
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&staging);
            return Err(io_error(&target)(error));
        }
        Ok(meta)
    }

    /// Paths of every complete segment, oldest first (temp files of interrupted writes are skipped).
    pub fn list(&self) -> Result<Vec<PathBuf>, DatasetError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(&self.dir)(error)),
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("seg-") && name.ends_with(".parquet"))
            })
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Removes temp files left by writes a crash interrupted; returns how many.
    pub fn remove_stale_temp_files(&self) -> Result<usize, DatasetError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io_error(&self.dir)(error)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Reads one segment: its metadata and records.
    pub fn read(&self, path: &Path) -> Result<(SegmentMeta, Vec<CurationRecord>), DatasetError> {
        read_segment(path)
    }
}

fn encode(records: &[CurationRecord], meta: &SegmentMeta) -> Result<Vec<u8>, String> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_created_by("sentiflow-trainer".to_owned())
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SEGMENT_META_KEY.to_owned(),
            serde_json::to_string(meta).expect("segment metadata serialises"),
        )]))
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, segment_schema(), Some(properties))
        .map_err(|error| error.to_string())?;
    for chunk in records.chunks(8192) {
        writer
            .write(&to_batch(chunk))
            .map_err(|error| error.to_string())?;
    }
    writer.close().map_err(|error| error.to_string())?;
    Ok(bytes)
}

/// A segment's metadata, read from its footer alone.
fn read_segment_meta(path: &Path) -> Result<SegmentMeta, DatasetError> {
    open_segment(path).map(|(meta, _)| meta)
}

fn read_segment(path: &Path) -> Result<(SegmentMeta, Vec<CurationRecord>), DatasetError> {
    let (meta, builder) = open_segment(path)?;
    let reader = builder.build().map_err(|error| format_error(path, error))?;
    let mut records = Vec::with_capacity(meta.rows as usize);
    for batch in reader {
        let batch = batch.map_err(|error| format_error(path, error))?;
        decode_batch(path, &batch, &mut records)?;
    }
    if records.len() as u64 != meta.rows {
        return Err(format_error(
            path,
            format!(
                "{} records but the metadata says {}",
                records.len(),
                meta.rows
            ),
        ));
    }
    Ok((meta, records))
}

/// Opens a segment: its checked metadata and a reader builder for its records.
fn open_segment(
    path: &Path,
) -> Result<(SegmentMeta, ParquetRecordBatchReaderBuilder<File>), DatasetError> {
    let file = File::open(path).map_err(io_error(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| format_error(path, error))?;
    let meta_json = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|pair| pair.key == SEGMENT_META_KEY))
        .and_then(|pair| pair.value.clone())
        .ok_or_else(|| format_error(path, format!("no {SEGMENT_META_KEY} metadata")))?;
    let meta: SegmentMeta = serde_json::from_str(&meta_json)
        .map_err(|error| format_error(path, format!("segment metadata: {error}")))?;
    if meta.format_version != SEGMENT_FORMAT_VERSION {
        return Err(format_error(
            path,
            format!(
                "segment format version {} (this build reads {SEGMENT_FORMAT_VERSION})",
                meta.format_version
            ),
        ));
    }
    Ok((meta, builder))
}

fn column<'a, T: 'static>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, DatasetError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format_error(path, format!("missing column {name}")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format_error(path, format!("column {name} has the wrong type")))
}

fn decode_batch(
    path: &Path,
    batch: &RecordBatch,
    records: &mut Vec<CurationRecord>,
) -> Result<(), DatasetError> {
    let kinds = column::<StringArray>(path, batch, "kind")?;
    let event_ids = column::<StringArray>(path, batch, "event_id")?;
    let event_times = column::<TimestampMillisecondArray>(path, batch, "event_time")?;
    let review_ids = column::<StringArray>(path, batch, "review_id")?;
    let texts = column::<StringArray>(path, batch, "text")?;
    let sources = column::<StringArray>(path, batch, "source")?;
    let created = column::<TimestampMillisecondArray>(path, batch, "created_at")?;
    let labels = column::<StringArray>(path, batch, "label")?;
    let provenances = column::<StringArray>(path, batch, "provenance")?;
    let confidences = column::<Float32Array>(path, batch, "confidence")?;
    let lang_allowed = column::<BooleanArray>(path, batch, "lang_allowed")?;
    let topics = column::<StringArray>(path, batch, "topic")?;
    let partitions = column::<Int32Array>(path, batch, "partition")?;
    let offsets = column::<Int64Array>(path, batch, "offset")?;
    let time = |millis: i64, index: usize| {
        Utc.timestamp_millis_opt(millis)
            .single()
            .ok_or_else(|| format_error(path, format!("row {index}: bad timestamp")))
    };
    for index in 0..batch.num_rows() {
        let bad = |what: String| format_error(path, format!("row {index}: {what}"));
        let kind = RecordKind::parse(kinds.value(index))
            .ok_or_else(|| bad(format!("unknown kind {:?}", kinds.value(index))))?;
        let label = if labels.is_null(index) {
            None
        } else {
            Some(
                labels
                    .value(index)
                    .parse::<Sentiment>()
                    .map_err(|error| bad(error.to_string()))?,
            )
        };
        let provenance = if provenances.is_null(index) {
            None
        } else {
            Some(
                provenances
                    .value(index)
                    .parse::<LabelProvenance>()
                    .map_err(|error| bad(error.to_string()))?,
            )
        };
        records.push(CurationRecord {
            kind,
            event_id: event_ids.value(index).to_owned(),
            event_time: time(event_times.value(index), index)?,
            review_id: review_ids.value(index).to_owned(),
            text: texts.value(index).to_owned(),
            source: sources.value(index).to_owned(),
            created_at: time(created.value(index), index)?,
            label,
            provenance,
            confidence: confidences.value(index),
            lang_allowed: lang_allowed.value(index),
            coordinate: SourceCoordinate {
                topic: topics.value(index).to_owned(),
                partition: partitions.value(index),
                offset: offsets.value(index),
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        kind: RecordKind,
        id: &str,
        label: Option<(Sentiment, LabelProvenance)>,
        offset: i64,
    ) -> CurationRecord {
        let time = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).single().unwrap();
        CurationRecord {
            kind,
            event_id: format!("e-{id}-{offset}"),
            event_time: time,
            review_id: id.to_owned(),
            text: if kind == RecordKind::Review {
                format!("text of {id}")
            } else {
                String::new()
            },
            source: "unit".to_owned(),
            created_at: time,
            label: label.map(|(label, _)| label),
            provenance: label.map(|(_, provenance)| provenance),
            confidence: 0.75,
            lang_allowed: offset % 7 != 3,
            coordinate: SourceCoordinate {
                topic: "t.reviews.clean".to_owned(),
                partition: (offset % 3) as i32,
                offset,
            },
        }
    }

    #[test]
    fn segments_round_trip_with_their_offset_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::new(dir.path().join("segments"));
        let records: Vec<CurationRecord> = (0..50)
            .map(|offset| {
                let label = match offset % 3 {
                    0 => None,
                    1 => Some((Sentiment::Positive, LabelProvenance::WeakLexicon)),
                    _ => Some((Sentiment::Negative, LabelProvenance::Human)),
                };
                let kind = if offset % 3 == 2 {
                    RecordKind::Feedback
                } else {
                    RecordKind::Review
                };
                record(kind, &format!("r{offset}"), label, offset)
            })
            .collect();
        let mut tracker = OffsetTracker::default();
        for record in &records {
            tracker.add(
                &record.coordinate.topic,
                record.coordinate.partition,
                record.coordinate.offset,
            );
        }
        // A dead-lettered message is accounted for without a record.
        tracker.add("t.labels.feedback", 0, 9);
        let meta = store.write(&records, tracker.ranges(), 1).unwrap();
        assert_eq!(meta.rows, 50);
        assert_eq!(meta.offsets.len(), 4);
        assert_eq!(
            meta.offsets[0],
            OffsetRange {
                topic: "t.labels.feedback".into(),
                partition: 0,
                min_offset: 9,
                max_offset: 9
            }
        );
        assert_eq!(
            (meta.offsets[1].min_offset, meta.offsets[1].max_offset),
            (0, 48)
        );
        let paths = store.list().unwrap();
        assert_eq!(paths.len(), 1);
        assert!(
            paths[0]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&meta.segment_id)
        );
        let (read_meta, read_records) = store.read(&paths[0]).unwrap();
        assert_eq!(read_meta, meta);
        assert_eq!(read_records, records);

        // An empty segment (everything dead-lettered) still records its offsets.
        let mut tracker = OffsetTracker::default();
        tracker.add("t.reviews.clean", 2, 77);
        let empty = store.write(&[], tracker.ranges(), 1).unwrap();
        let paths = store.list().unwrap();
        assert_eq!(paths.len(), 2);
        let (read_meta, read_records) = store.read(&paths[1]).unwrap();
        assert_eq!(read_meta, empty);
        assert!(read_records.is_empty());
    }

    #[test]
    fn temp_files_are_ignored_and_cleaned_and_corrupt_segments_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::new(dir.path());
        assert!(store.list().unwrap().is_empty(), "a missing dir is empty");
        std::fs::write(dir.path().join(".tmp-seg-x.parquet"), b"half written").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(store.remove_stale_temp_files().unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let records = vec![record(
            RecordKind::Review,
            "a",
            Some((Sentiment::Neutral, LabelProvenance::SourceLabel)),
            0,
        )];
        store.write(&records, Vec::new(), 0).unwrap();
        let path = store.list().unwrap().remove(0);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let error = store.read(&path).unwrap_err();
        assert_eq!(error.kind(), "format", "{error}");
    }

    #[test]
    fn merged_ranges_span_every_segment() {
        let range = |partition, min_offset, max_offset| OffsetRange {
            topic: "t".into(),
            partition,
            min_offset,
            max_offset,
        };
        let merged = merge_ranges(&[range(0, 10, 19), range(1, 0, 4), range(0, 0, 9)]);
        assert_eq!(merged, vec![range(0, 0, 19), range(1, 0, 4)]);
    }
}
