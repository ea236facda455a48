//! Snapshots from curated segments: every closed segment is read, re-read copies are removed, a human label
//! overrides a source or weak label of the same review, unlabelled reviews are counted and kept out, and
//! the result becomes an immutable snapshot whose manifest records the offsets it was cut from. Compaction
//! folds the segments into one that keeps only the records a snapshot can still depend on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use sentiflow_common::events::{LabelProvenance, SourceCoordinate};
use serde::{Deserialize, Serialize};

use crate::dataset::{
    DatasetError, DatasetRow, Manifest, Origin, SnapshotStore, Split, label_rank, merge_labels,
};
use crate::segment::{CurationRecord, RecordKind, SegmentMeta, SegmentStore};

/// Which reviews a snapshot takes (the retrain loop narrows the time range of a request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurateOptions {
    /// Only reviews written at or after this time.
    pub data_from: Option<DateTime<Utc>>,
    /// Only reviews written at or before this time.
    pub data_to: Option<DateTime<Utc>>,
    /// A snapshot whose training and validation rows join the curated ones: the retrain loop passes its
    /// champion's, so a retrain learns the new data without forgetting what the champion learned from.
    /// Its test rows stay out, so the new snapshot's test split (what the gate scores both models on)
    /// is the curated, recent data alone. A curated row wins over a base row with the same review id
    /// or the same text.
    pub base_snapshot: Option<String>,
}

/// What curation kept out of a snapshot, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurationCounts {
    /// Segments read.
    pub segments: u64,
    /// Records read (reviews and human labels, re-read copies included).
    pub records: u64,
    /// Copies of a message already read (same topic, partition and offset: redelivery after a crash).
    pub redelivered: u64,
    /// Distinct reviews seen.
    pub reviews: u64,
    /// Reviews with no label of any kind (kept out).
    pub unlabelled: u64,
    /// Reviews whose language ingest did not allow (kept out).
    pub language_excluded: u64,
    /// Reviews written outside the requested time range (kept out).
    pub outside_time_range: u64,
    /// Human labels applied.
    pub human_labels: u64,
    /// Human labels for a review the segments do not hold (kept out until the review arrives).
    pub feedback_without_review: u64,
    /// Messages dead-lettered instead of curated (from the segments' metadata).
    pub dead_lettered: u64,
    /// Records compactions left out of the segments before this snapshot (superseded, re-read or
    /// expired; see [`compact_records`]), so `records`, `redelivered`, `human_labels` and
    /// `feedback_without_review` count what is left.
    #[serde(default)]
    pub compacted_away: u64,
    /// Rows taken from the base snapshot.
    pub base_rows: u64,
    /// Base snapshot rows left out because a curated row has their review id or text.
    pub base_replaced: u64,
}

/// A snapshot built from the curated segments.
#[derive(Debug, Clone)]
pub struct CuratedSnapshot {
    /// The snapshot's manifest (its id, rows, classes, offsets, checksums).
    pub manifest: Manifest,
    /// What was read and kept out.
    pub counts: CurationCounts,
}

/// Training rows from curated records, with the counts of what was kept out; rows ordered by review id.
///
/// Rules: records with the same coordinate are one message read twice (the first copy counts); for each
/// review id the latest labelled review and every human label go through [`merge_labels`], so a human label
/// wins over source and weak labels and the latest human label (by event time) wins over earlier ones;
/// reviews without any label, in a language ingest did not allow, or outside the time range are kept out.
pub fn curate_rows(
    records: impl IntoIterator<Item = CurationRecord>,
    options: &CurateOptions,
) -> (Vec<DatasetRow>, CurationCounts) {
    let mut counts = CurationCounts::default();
    let mut seen = FirstCopies::default();
    let mut reviews: Vec<CurationRecord> = Vec::new();
    let mut feedback: Vec<CurationRecord> = Vec::new();
    for record in records {
        counts.records += 1;
        if !seen.first(&record.coordinate) {
            counts.redelivered += 1;
            continue;
        }
        match record.kind {
            RecordKind::Review => reviews.push(record),
            RecordKind::Feedback => feedback.push(record),
        }
    }
    // Event time (when ingest cleaned it) first: a review id is a Kafka key, so its events sit in one
    // partition while the partition count stays, but after `reviews.clean` gains partitions an edit
    // can land in a partition numbered below the original's. Exact ties fall to the position. The
    // price: two events of one review cleaned within an ingest clock's skew of each other (a clock
    // stepped back, a rebalance to a host whose clock lags) are ordered by those clocks, not by
    // the log. A total order is required (a mixed rule is not transitive). `compact_records`
    // orders the same way.
    reviews.sort_by(|a, b| {
        (a.event_time, position(&a.coordinate)).cmp(&(b.event_time, position(&b.coordinate)))
    });
    feedback.sort_by(|a, b| {
        (a.event_time, position(&a.coordinate)).cmp(&(b.event_time, position(&b.coordinate)))
    });

    // The latest event of each review decides its text, time, source and language flag.
    let mut latest: BTreeMap<&str, &CurationRecord> = BTreeMap::new();
    for review in &reviews {
        latest.insert(&review.review_id, review);
    }
    counts.reviews = latest.len() as u64;
    let mut admitted: BTreeMap<&str, &CurationRecord> = BTreeMap::new();
    for (id, review) in &latest {
        let in_range = options
            .data_from
            .is_none_or(|from| review.created_at >= from)
            && options.data_to.is_none_or(|to| review.created_at <= to);
        if !in_range {
            counts.outside_time_range += 1;
        } else if !review.lang_allowed {
            counts.language_excluded += 1;
        } else {
            admitted.insert(id, review);
        }
    }

    let as_row = |review: &CurationRecord, label, provenance, confidence| DatasetRow {
        review_id: review.review_id.clone(),
        text: review.text.clone(),
        label,
        provenance,
        confidence,
        created_at: review.created_at,
        source: review.source.clone(),
    };
    let mut candidates = Vec::new();
    for review in &reviews {
        let Some(current) = admitted.get(review.review_id.as_str()) else {
            continue;
        };
        if let (Some(label), Some(provenance)) = (review.label, review.provenance) {
            candidates.push(as_row(current, label, provenance, review.confidence));
        }
    }
    for label in &feedback {
        match (admitted.get(label.review_id.as_str()), label.label) {
            (Some(review), Some(sentiment)) => {
                counts.human_labels += 1;
                candidates.push(as_row(review, sentiment, LabelProvenance::Human, 1.0));
            }
            _ if latest.contains_key(label.review_id.as_str()) => {}
            _ => counts.feedback_without_review += 1,
        }
    }
    let rows = merge_labels(candidates);
    counts.unlabelled = (admitted.len() - rows.len()) as u64;
    (rows, counts)
}

/// Recognises the copies a re-read after a crash creates: the same topic, partition and offset again.
#[derive(Default)]
struct FirstCopies(BTreeSet<(String, i32, i64)>);

impl FirstCopies {
    /// True the first time a coordinate is seen.
    fn first(&mut self, coordinate: &SourceCoordinate) -> bool {
        self.0.insert((
            coordinate.topic.clone(),
            coordinate.partition,
            coordinate.offset,
        ))
    }
}

/// A coordinate as a sortable tuple.
fn position(coordinate: &SourceCoordinate) -> (&str, i32, i64) {
    (&coordinate.topic, coordinate.partition, coordinate.offset)
}

/// Builds an immutable snapshot from every closed segment (what issue 6's retrain loop and
/// `sentiflow dataset snapshot` call). The manifest's origin lists the offset range of every partition
/// the segments account for, dead-lettered messages included.
pub fn curate_snapshot(
    segments: &SegmentStore,
    snapshots: &SnapshotStore,
    options: &CurateOptions,
) -> Result<CuratedSnapshot, DatasetError> {
    let loaded = {
        let lock = segments.lock()?;
        segments.load(&lock)?
    };
    let combined = loaded.combined();
    let segment_count = loaded.metas.len() as u64;
    let (mut rows, mut counts) = curate_rows(loaded.records, options);
    counts.segments = segment_count;
    counts.dead_lettered = combined.dead_lettered;
    counts.compacted_away = combined.compacted_away;
    if let Some(base) = &options.base_snapshot {
        let ids: BTreeSet<String> = rows.iter().map(|row| row.review_id.clone()).collect();
        let texts: BTreeSet<String> = rows.iter().map(|row| row.text.clone()).collect();
        for split in [Split::Train, Split::Validation] {
            for row in snapshots.read(base, split)? {
                let in_range = options.data_from.is_none_or(|from| row.created_at >= from)
                    && options.data_to.is_none_or(|to| row.created_at <= to);
                if !in_range {
                    counts.outside_time_range += 1;
                } else if ids.contains(&row.review_id) || texts.contains(&row.text) {
                    counts.base_replaced += 1;
                } else {
                    counts.base_rows += 1;
                    rows.push(row);
                }
            }
        }
        rows.sort_by(|a, b| a.review_id.cmp(&b.review_id));
    }
    let manifest = snapshots.write(
        &rows,
        Origin::Topics {
            offsets: combined.offsets,
            base_snapshot: options.base_snapshot.clone(),
        },
    )?;
    tracing::info!(
        snapshot = %manifest.snapshot_id,
        rows = manifest.rows,
        segments = counts.segments,
        redelivered = counts.redelivered,
        unlabelled = counts.unlabelled,
        human_labels = counts.human_labels,
        base_snapshot = ?options.base_snapshot,
        base_rows = counts.base_rows,
        "snapshot curated"
    );
    Ok(CuratedSnapshot { manifest, counts })
}

/// Records a compaction left out, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactedAway {
    /// Copies of a record already kept (same topic, partition and offset).
    pub redelivered: u64,
    /// Review events and human labels a later or stronger one of the same review overrides.
    pub superseded: u64,
    /// Records of reviews nothing arrived about within the retention window (moved to the archive).
    pub expired: u64,
}

impl CompactedAway {
    /// All records left out.
    pub fn total(&self) -> u64 {
        self.redelivered + self.superseded + self.expired
    }
}

/// The records [`curate_rows`] still depends on, with what was left out: for each review id its latest
/// review event (text, time, language, source), its review event with the strongest label (the latest
/// among equals) and its latest human label. [`curate_rows`] makes the same rows of the compacted
/// records as of the originals, also after more records are appended to either (every choice above
/// is a maximum by a fixed order, so re-read copies and later arrivals fold in the same way).
///
/// With `expire_before`, a review whose kept records all have an event time before it (for a review
/// event, when ingest cleaned it; for a human label, the time its event carries) is moved out whole into
/// the third list, and so is a human label for a review never seen that is as old.
pub fn compact_records(
    records: impl IntoIterator<Item = CurationRecord>,
    expire_before: Option<DateTime<Utc>>,
) -> (Vec<CurationRecord>, Vec<CurationRecord>, CompactedAway) {
    /// The records one review keeps.
    #[derive(Default)]
    struct Kept {
        latest: Option<CurationRecord>,
        strongest_label: Option<CurationRecord>,
        human: Option<CurationRecord>,
    }
    /// Keeps `record` in `slot` when the slot is empty or `outranks(record, kept)`.
    fn keep_if(
        slot: &mut Option<CurationRecord>,
        record: &CurationRecord,
        outranks: impl Fn(&CurationRecord, &CurationRecord) -> bool,
    ) {
        if slot.as_ref().is_none_or(|kept| outranks(record, kept)) {
            *slot = Some(record.clone());
        }
    }
    // The same order as `curate_rows`: event time, then position.
    let later = |a: &CurationRecord, b: &CurationRecord| {
        (a.event_time, position(&a.coordinate)) > (b.event_time, position(&b.coordinate))
    };
    let stronger = |a: &CurationRecord, b: &CurationRecord| {
        (
            a.provenance.map(label_rank),
            a.event_time,
            position(&a.coordinate),
        ) > (
            b.provenance.map(label_rank),
            b.event_time,
            position(&b.coordinate),
        )
    };
    let newer = |a: &CurationRecord, b: &CurationRecord| {
        (a.event_time, position(&a.coordinate)) > (b.event_time, position(&b.coordinate))
    };

    let mut away = CompactedAway::default();
    let mut seen = FirstCopies::default();
    let mut unique = 0u64;
    let mut by_review: BTreeMap<String, Kept> = BTreeMap::new();
    for record in records {
        if !seen.first(&record.coordinate) {
            away.redelivered += 1;
            continue;
        }
        unique += 1;
        let kept = by_review.entry(record.review_id.clone()).or_default();
        match record.kind {
            RecordKind::Review => {
                if record.label.is_some() && record.provenance.is_some() {
                    keep_if(&mut kept.strongest_label, &record, stronger);
                }
                keep_if(&mut kept.latest, &record, later);
            }
            RecordKind::Feedback if record.label.is_some() => {
                keep_if(&mut kept.human, &record, newer);
            }
            RecordKind::Feedback => {}
        }
    }

    let mut compacted = Vec::new();
    let mut expired = Vec::new();
    for kept in by_review.into_values() {
        let mut records: Vec<CurationRecord> = [kept.latest, kept.strongest_label, kept.human]
            .into_iter()
            .flatten()
            .collect();
        records.dedup_by(|a, b| a.coordinate == b.coordinate);
        let last_arrival = records.iter().map(|record| record.event_time).max();
        if let (Some(cutoff), Some(last)) = (expire_before, last_arrival)
            && last < cutoff
        {
            away.expired += records.len() as u64;
            expired.extend(records);
            continue;
        }
        compacted.extend(records);
    }
    away.superseded = unique - away.expired - compacted.len() as u64;
    for records in [&mut compacted, &mut expired] {
        records.sort_by(|a, b| position(&a.coordinate).cmp(&position(&b.coordinate)));
    }
    (compacted, expired, away)
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionReport {
    /// Whether it folded every segment (and applied the retention cutoff, if any), or only the newest
    /// tier ([`CompactionScope::Tiered`]).
    pub full: bool,
    /// Segment files folded (0 when there was nothing to do).
    pub segments_in: u64,
    /// Segment files left as they were (older tiers of a tiered compaction).
    pub segments_untouched: u64,
    /// Records they held.
    pub records_in: u64,
    /// Records the compacted segment holds.
    pub records_out: u64,
    /// What was left out, by why.
    pub away: CompactedAway,
    /// The compacted segment, when one was written.
    pub segment_id: Option<String>,
    /// The archive segment holding the expired records, when any expired.
    pub archive_segment_id: Option<String>,
    /// Segments of an earlier compaction a crash had left behind, removed.
    pub leftovers_removed: u64,
}

/// Which segments a compaction folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionScope {
    /// Every segment, with the retention cutoff applied (`sentiflow dataset compact`).
    All,
    /// The newest tier ([`tier_to_fold`]): every segment the consumer wrote since the last
    /// compaction, and a compaction's earlier output only once the segments newer than it hold at
    /// least half as many records, so a record is rewritten about log2(records / segment) times in
    /// its life instead of at every compaction, and each kept output holds more than twice the next
    /// newer one, so their number stays logarithmic. Expiry needs every segment (a review's newer
    /// records may lie in a segment the tier leaves out), so with a retention cutoff the compaction is
    /// full when the oldest segment (after a full compaction: about its time) is older than
    /// `full_after`.
    Tiered {
        /// Age of the oldest segment from which a compaction with a retention cutoff is full.
        full_after: chrono::Duration,
    },
}

/// The segments a tiered compaction folds, by index: every segment the consumer wrote (not a
/// compaction's output), then compaction outputs from the newest, each as long as it holds at most
/// twice the records taken so far (a segment with no records, only dead letters, counts as one).
/// `segments` are (records, whether it is a compaction's output), in name order. The chosen set need
/// not be contiguous: folding any subset is sound (see [`compact_segments`]).
pub fn tier_to_fold(segments: &[(u64, bool)]) -> Vec<usize> {
    let mut fold: Vec<usize> = (0..segments.len())
        .filter(|&index| !segments[index].1)
        .collect();
    let mut taken: u64 = fold.iter().map(|&index| segments[index].0.max(1)).sum();
    for index in (0..segments.len()).rev() {
        let (rows, output) = segments[index];
        if !output {
            continue;
        }
        if rows.max(1) > taken.saturating_mul(2) {
            break;
        }
        taken += rows.max(1);
        fold.push(index);
    }
    fold.sort_unstable();
    fold
}

/// Folds closed segments into one (see [`compact_records`]) under the directory's lock so no snapshot
/// reads half of it: every segment, or the newest tier ([`CompactionScope`]). Expired records go to
/// the archive ([`SegmentStore::archive`]), never deleted, and only in a full compaction. Nothing is
/// written when a single segment would come out unchanged. Offsets and dead-letter counts of every
/// input carry over, so a snapshot's manifest is unchanged. (Folding any subset of segments is sound:
/// every record [`compact_records`] keeps is a maximum by a fixed order, and the maximum of a union is
/// the maximum of the parts' maxima.)
pub fn compact_segments(
    segments: &SegmentStore,
    expire_before: Option<DateTime<Utc>>,
    scope: CompactionScope,
) -> Result<CompactionReport, DatasetError> {
    let lock = segments.lock_for_writing()?;
    let (listed, leftovers_removed) = segments.list_metas(&lock)?;
    let full = match scope {
        CompactionScope::All => true,
        CompactionScope::Tiered { full_after, .. } => {
            expire_before.is_some()
                && listed
                    .first()
                    .is_some_and(|(_, oldest)| Utc::now() - oldest.created_at >= full_after)
        }
    };
    let chosen: Vec<(PathBuf, SegmentMeta)> = if full {
        listed.clone()
    } else {
        let sizes: Vec<(u64, bool)> = listed
            .iter()
            .map(|(_, meta)| (meta.rows, !meta.replaces.is_empty()))
            .collect();
        tier_to_fold(&sizes)
            .into_iter()
            .map(|index| listed[index].clone())
            .collect()
    };
    let full = chosen.len() == listed.len();
    let expire_before = expire_before.filter(|_| full);
    let loaded = segments.load_listed(&chosen)?;
    let mut report = CompactionReport {
        full,
        segments_in: loaded.metas.len() as u64,
        segments_untouched: (listed.len() - chosen.len()) as u64,
        records_in: loaded.records.len() as u64,
        leftovers_removed: leftovers_removed as u64,
        ..CompactionReport::default()
    };
    let mut contents = loaded.combined();
    let (records, expired, away) = compact_records(loaded.records, expire_before);
    report.records_out = records.len() as u64;
    report.away = away;
    if loaded.metas.len() < 2 && away.total() == 0 {
        report.segments_in = 0;
        return Ok(report);
    }
    contents.compacted_away += away.total();
    let (meta, archive) = segments.replace(&lock, &loaded.paths, &records, &expired, contents)?;
    tracing::info!(
        segment = %meta.segment_id,
        full,
        segments_in = report.segments_in,
        segments_untouched = report.segments_untouched,
        records_in = report.records_in,
        records_out = report.records_out,
        redelivered = away.redelivered,
        superseded = away.superseded,
        expired = away.expired,
        archive = ?archive.as_ref().map(|archive| &archive.segment_id),
        "segments compacted"
    );
    report.segment_id = Some(meta.segment_id);
    report.archive_segment_id = archive.map(|archive| archive.segment_id);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use sentiflow_common::events::Sentiment;

    use std::path::PathBuf;

    use super::*;
    use crate::dataset::{OffsetRange, Split};

    fn review(
        id: &str,
        label: Option<(Sentiment, LabelProvenance)>,
        partition: i32,
        offset: i64,
    ) -> CurationRecord {
        let time = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).single().unwrap();
        CurationRecord {
            kind: RecordKind::Review,
            event_id: format!("e-{id}-{offset}"),
            event_time: time,
            review_id: id.to_owned(),
            text: format!("text of {id}"),
            source: "unit".to_owned(),
            created_at: time,
            label: label.map(|(label, _)| label),
            provenance: label.map(|(_, provenance)| provenance),
            confidence: 0.6,
            lang_allowed: true,
            coordinate: SourceCoordinate {
                topic: "t.reviews.clean".to_owned(),
                partition,
                offset,
            },
        }
    }

    fn human(id: &str, label: Sentiment, minute: u32, offset: i64) -> CurationRecord {
        let time = Utc
            .with_ymd_and_hms(2026, 3, 5, 0, minute, 0)
            .single()
            .unwrap();
        CurationRecord {
            kind: RecordKind::Feedback,
            event_id: format!("f-{id}-{offset}"),
            event_time: time,
            review_id: id.to_owned(),
            text: String::new(),
            source: String::new(),
            created_at: time,
            label: Some(label),
            provenance: Some(LabelProvenance::Human),
            confidence: 1.0,
            lang_allowed: true,
            coordinate: SourceCoordinate {
                topic: "t.labels.feedback".to_owned(),
                partition: 0,
                offset,
            },
        }
    }

    #[test]
    fn human_labels_win_duplicates_go_and_unlabelled_are_counted() {
        use LabelProvenance::{SourceLabel, WeakLexicon};
        use Sentiment::{Negative, Neutral, Positive};
        let mut foreign = review("lang", Some((Positive, SourceLabel)), 1, 9);
        foreign.lang_allowed = false;
        let records = vec![
            // The human label arrives before its review.
            human("w", Negative, 1, 0),
            review("w", Some((Positive, WeakLexicon)), 0, 0),
            review("s", Some((Neutral, SourceLabel)), 0, 1),
            review("s", Some((Neutral, SourceLabel)), 0, 1), // redelivered copy
            review("u", None, 1, 0),
            human("u", Positive, 2, 1), // makes an unlabelled review trainable
            review("n", None, 1, 1),    // stays unlabelled
            human("s", Negative, 3, 2),
            human("s", Positive, 5, 3), // the latest human label wins
            human("ghost", Neutral, 4, 4),
            foreign,
        ];
        let (rows, counts) = curate_rows(records, &CurateOptions::default());
        let view: Vec<(&str, Sentiment, LabelProvenance)> = rows
            .iter()
            .map(|row| (row.review_id.as_str(), row.label, row.provenance))
            .collect();
        assert_eq!(
            view,
            vec![
                ("s", Positive, LabelProvenance::Human),
                ("u", Positive, LabelProvenance::Human),
                ("w", Negative, LabelProvenance::Human),
            ]
        );
        assert!(
            rows.iter()
                .all(|row| row.text == format!("text of {}", row.review_id))
        );
        assert_eq!(
            counts,
            CurationCounts {
                segments: 0,
                records: 11,
                redelivered: 1,
                reviews: 5,
                unlabelled: 1,
                language_excluded: 1,
                outside_time_range: 0,
                human_labels: 4,
                feedback_without_review: 1,
                dead_lettered: 0,
                compacted_away: 0,
                base_rows: 0,
                base_replaced: 0,
            }
        );
    }

    #[test]
    fn an_edit_in_a_lower_numbered_partition_is_still_the_latest() {
        use LabelProvenance::SourceLabel;
        use Sentiment::{Negative, Positive};
        // `reviews.clean` gained partitions between the two events of review "r": the edit
        // (cleaned a minute later) hashes to partition 0, below the original's partition 2.
        let mut original = review("r", Some((Positive, SourceLabel)), 2, 10);
        original.text = "the original".to_owned();
        let mut edit = review("r", Some((Negative, SourceLabel)), 0, 3);
        edit.text = "the edit".to_owned();
        edit.event_time = original.event_time + chrono::Duration::minutes(1);
        for records in [
            vec![original.clone(), edit.clone()],
            vec![edit.clone(), original.clone()],
        ] {
            let (rows, _) = curate_rows(records.clone(), &CurateOptions::default());
            let view: Vec<(&str, Sentiment)> = rows
                .iter()
                .map(|row| (row.text.as_str(), row.label))
                .collect();
            assert_eq!(view, [("the edit", Negative)]);
            let (kept, _, away) = compact_records(records, None);
            assert_eq!(kept, [edit.clone()], "the original is superseded");
            assert_eq!(away.total(), 1);
        }
    }

    #[test]
    fn time_range_filters_by_review_time() {
        let mut old = review(
            "old",
            Some((Sentiment::Negative, LabelProvenance::SourceLabel)),
            0,
            0,
        );
        old.created_at = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).single().unwrap();
        let new = review(
            "new",
            Some((Sentiment::Negative, LabelProvenance::SourceLabel)),
            0,
            1,
        );
        let options = CurateOptions {
            data_from: Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().unwrap()),
            data_to: None,
            base_snapshot: None,
        };
        let (rows, counts) = curate_rows(vec![old, new], &options);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].review_id, "new");
        assert_eq!(counts.outside_time_range, 1);
    }

    #[test]
    fn snapshot_from_segments_records_offsets_and_survives_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentStore::in_data_dir(dir.path());
        let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
        let labelled: Vec<CurationRecord> = (0..90)
            .map(|index| {
                review(
                    &format!("r{index}"),
                    Some((
                        Sentiment::from_index(index % 3).unwrap(),
                        LabelProvenance::SourceLabel,
                    )),
                    0,
                    index as i64,
                )
            })
            .collect();
        let ranges = |records: &[CurationRecord]| {
            let mut tracker = crate::segment::OffsetTracker::default();
            for record in records {
                let c = &record.coordinate;
                tracker.add(&c.topic, c.partition, c.offset);
            }
            tracker.ranges()
        };
        segments
            .write(&labelled[..60], ranges(&labelled[..60]), 0)
            .unwrap();
        // A crash after writing, before storing offsets: 40..90 are read again into the next segment.
        segments
            .write(&labelled[40..], ranges(&labelled[40..]), 2)
            .unwrap();
        let curated = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        assert_eq!(curated.manifest.rows, 90);
        assert_eq!(curated.counts.redelivered, 20);
        assert_eq!(curated.counts.segments, 2);
        assert_eq!(curated.counts.dead_lettered, 2);
        assert_eq!(
            curated.manifest.origin,
            Origin::Topics {
                offsets: vec![OffsetRange {
                    topic: "t.reviews.clean".into(),
                    partition: 0,
                    min_offset: 0,
                    max_offset: 89,
                }],
                base_snapshot: None,
            }
        );
        let mut ids = BTreeSet::new();
        for split in Split::ALL {
            for row in snapshots
                .read(&curated.manifest.snapshot_id, split)
                .unwrap()
            {
                assert!(ids.insert(row.review_id), "no duplicate rows");
            }
        }
        assert_eq!(ids.len(), 90);
    }

    #[test]
    fn a_base_snapshot_adds_its_training_rows_and_curated_rows_win() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentStore::in_data_dir(dir.path());
        let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
        let time = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).single().unwrap();
        let row = |id: String, text: String, label: Sentiment| DatasetRow {
            review_id: id,
            text,
            label,
            provenance: LabelProvenance::SourceLabel,
            confidence: 1.0,
            created_at: time,
            source: "base".to_owned(),
        };
        // The champion's snapshot: 300 rows in all three splits.
        let base_rows: Vec<DatasetRow> = (0..300)
            .map(|i| {
                row(
                    format!("b{i}"),
                    format!("base text {i}"),
                    Sentiment::from_index(i % 3).unwrap(),
                )
            })
            .collect();
        let base = snapshots
            .write(
                &base_rows,
                Origin::File {
                    path: "base.jsonl".to_owned(),
                    sha256: "0".repeat(64),
                },
            )
            .unwrap();
        // Curated: 30 new reviews, one relabelling a base review (same id), one repeating a base text.
        let mut curated: Vec<CurationRecord> = (0..30)
            .map(|i| {
                review(
                    &format!("c{i}"),
                    Some((
                        Sentiment::from_index(i % 3).unwrap(),
                        LabelProvenance::SourceLabel,
                    )),
                    0,
                    i as i64,
                )
            })
            .collect();
        curated.push(review(
            "b0",
            Some((Sentiment::Positive, LabelProvenance::SourceLabel)),
            0,
            30,
        ));
        let mut same_text = review(
            "c-copy",
            Some((Sentiment::Neutral, LabelProvenance::SourceLabel)),
            0,
            31,
        );
        same_text.text = "base text 1".to_owned();
        curated.push(same_text);
        let ranges = {
            let mut tracker = crate::segment::OffsetTracker::default();
            for record in &curated {
                let c = &record.coordinate;
                tracker.add(&c.topic, c.partition, c.offset);
            }
            tracker.ranges()
        };
        segments.write(&curated, ranges, 0).unwrap();

        let options = CurateOptions {
            base_snapshot: Some(base.snapshot_id.clone()),
            ..CurateOptions::default()
        };
        let merged = curate_snapshot(&segments, &snapshots, &options).unwrap();
        let base_test = base_rows
            .iter()
            .filter(|r| Split::of(&r.review_id) == Split::Test)
            .count() as u64;
        let replaced = [&base_rows[0], &base_rows[1]]
            .iter()
            .filter(|r| Split::of(&r.review_id) != Split::Test)
            .count() as u64;
        assert_eq!(merged.counts.base_replaced, replaced);
        assert_eq!(merged.counts.base_rows, 300 - base_test - replaced);
        assert_eq!(merged.manifest.rows, 32 + merged.counts.base_rows);
        assert_eq!(
            merged.manifest.origin,
            Origin::Topics {
                offsets: vec![OffsetRange {
                    topic: "t.reviews.clean".into(),
                    partition: 0,
                    min_offset: 0,
                    max_offset: 31,
                }],
                base_snapshot: Some(base.snapshot_id.clone()),
            }
        );
        let mut by_id = BTreeMap::new();
        for split in Split::ALL {
            for row in snapshots.read(&merged.manifest.snapshot_id, split).unwrap() {
                assert_eq!(Split::of(&row.review_id), split);
                if split == Split::Test {
                    assert_eq!(row.source, "unit", "the base's test rows stay out: {row:?}");
                }
                assert!(by_id.insert(row.review_id.clone(), row).is_none());
            }
        }
        // The curated label wins for the same review id; the curated row wins for the same text.
        assert_eq!(by_id["b0"].label, Sentiment::Positive);
        assert_eq!(by_id["b0"].source, "unit");
        assert!(!by_id.contains_key("b1"));
        assert_eq!(by_id["c-copy"].text, "base text 1");

        // A time range applies to the base rows too.
        let later = CurateOptions {
            data_from: None,
            data_to: Some(time - chrono::Duration::days(1)),
            base_snapshot: Some(base.snapshot_id),
        };
        assert!(matches!(
            curate_snapshot(&segments, &snapshots, &later),
            Err(DatasetError::Empty)
        ));
    }

    /// A small seeded generator (xorshift64*), so the compaction cases are the same on every run.
    struct Cases(u64);

    impl Cases {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
        }
    }

    /// Review events, human labels and re-read copies of a few reviews in arrival order: offsets grow
    /// per partition, label times and review times do not follow arrival.
    fn random_records(cases: &mut Cases) -> Vec<CurationRecord> {
        let start = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().unwrap();
        let minutes =
            |cases: &mut Cases| start + chrono::Duration::minutes(cases.below(600) as i64);
        let reviews = 1 + cases.below(6);
        let mut next_offset = [0i64; 3];
        let mut records: Vec<CurationRecord> = Vec::new();
        for n in 0..(5 + cases.below(40)) {
            if !records.is_empty() && cases.below(8) == 0 {
                let copy = records[cases.below(records.len() as u64) as usize].clone();
                records.push(copy);
                continue;
            }
            let id_index = cases.below(reviews + 1);
            let id = format!("r{id_index}");
            let record = if cases.below(3) == 0 {
                let mut label = human(
                    &id,
                    Sentiment::from_index(cases.below(3) as usize).unwrap(),
                    0,
                    0,
                );
                label.event_time = minutes(cases);
                label.created_at = label.event_time;
                label.coordinate.offset = next_offset[2];
                next_offset[2] += 1;
                label
            } else {
                let partition = (id_index % 2) as usize;
                let label = match cases.below(5) {
                    0 => None,
                    1 => Some(LabelProvenance::WeakLexicon),
                    2 => Some(LabelProvenance::SourceRating),
                    3 => Some(LabelProvenance::SourceLabel),
                    _ => Some(LabelProvenance::Human),
                }
                .map(|provenance| {
                    (
                        Sentiment::from_index(cases.below(3) as usize).unwrap(),
                        provenance,
                    )
                });
                let mut event = review(&id, label, partition as i32, next_offset[partition]);
                next_offset[partition] += 1;
                event.text = format!("text of {id}, version {n}");
                event.created_at = minutes(cases);
                event.event_time = minutes(cases);
                event.lang_allowed = cases.below(6) != 0;
                event
            };
            records.push(record);
        }
        records
    }

    #[test]
    fn compacted_records_curate_into_the_same_rows_also_with_later_records() {
        let mut cases = Cases(0x5EED_CAFE);
        let window = CurateOptions {
            data_from: Utc.with_ymd_and_hms(2026, 3, 1, 2, 0, 0).single(),
            data_to: Utc.with_ymd_and_hms(2026, 3, 1, 7, 0, 0).single(),
            base_snapshot: None,
        };
        let mut folded = 0;
        for case in 0..500 {
            let records = random_records(&mut cases);
            let cut = cases.below(records.len() as u64 + 1) as usize;
            let (compacted, expired, away) = compact_records(records[..cut].to_vec(), None);
            assert!(expired.is_empty());
            assert_eq!(away.expired, 0);
            assert_eq!(compacted.len() as u64 + away.total(), cut as u64);
            folded += away.total();
            let mut later = compacted.clone();
            later.extend_from_slice(&records[cut..]);
            // Compacting again, after the later records, changes nothing either.
            let (twice, _, _) = compact_records(later.clone(), None);
            // Nor does folding any subset of segments (a tiered compaction folds the newest ones; the
            // folded segment is named, so read, after the others).
            let chunks: Vec<&[CurationRecord]> =
                records.chunks(1 + cases.below(8) as usize).collect();
            let chosen: Vec<bool> = chunks.iter().map(|_| cases.below(2) == 0).collect();
            let folded_part: Vec<CurationRecord> = chunks
                .iter()
                .zip(&chosen)
                .filter(|(_, chosen)| **chosen)
                .flat_map(|(chunk, _)| chunk.iter().cloned())
                .collect();
            let mut subset: Vec<CurationRecord> = chunks
                .iter()
                .zip(&chosen)
                .filter(|(_, chosen)| !**chosen)
                .flat_map(|(chunk, _)| chunk.iter().cloned())
                .collect();
            subset.extend(compact_records(folded_part, None).0);
            for options in [CurateOptions::default(), window.clone()] {
                let (expected, expected_counts) = curate_rows(records.clone(), &options);
                for candidate in [&later, &twice, &subset] {
                    let (rows, counts) = curate_rows(candidate.clone(), &options);
                    assert_eq!(rows, expected, "case {case}, cut {cut}, {options:?}");
                    let kept_out = |counts: &CurationCounts| {
                        (
                            counts.reviews,
                            counts.unlabelled,
                            counts.language_excluded,
                            counts.outside_time_range,
                        )
                    };
                    assert_eq!(kept_out(&counts), kept_out(&expected_counts), "case {case}");
                }
            }
        }
        assert!(folded > 1000, "the cases exercise folding: {folded}");
    }

    #[test]
    fn a_review_expires_whole_once_nothing_about_it_arrived_in_the_window() {
        use LabelProvenance::SourceLabel;
        use Sentiment::{Negative, Positive};
        let at = |hour| {
            Utc.with_ymd_and_hms(2026, 3, 4, hour, 0, 0)
                .single()
                .unwrap()
        };
        let arrived = |mut record: CurationRecord, hour| {
            record.event_time = at(hour);
            record
        };
        let records = vec![
            arrived(review("old", Some((Positive, SourceLabel)), 0, 0), 1),
            arrived(human("old", Negative, 0, 0), 2),
            arrived(review("relabelled", Some((Positive, SourceLabel)), 0, 1), 1),
            arrived(human("relabelled", Negative, 0, 1), 9),
            arrived(review("new", None, 1, 0), 8),
            arrived(human("ghost-old", Negative, 0, 2), 3),
            arrived(human("ghost-new", Negative, 0, 3), 10),
        ];
        let (kept, expired, away) = compact_records(records, Some(at(5)));
        let ids = |records: &[CurationRecord]| -> Vec<String> {
            records
                .iter()
                .map(|record| record.review_id.clone())
                .collect()
        };
        assert_eq!(ids(&kept), ["relabelled", "ghost-new", "relabelled", "new"]);
        assert_eq!(ids(&expired), ["old", "ghost-old", "old"]);
        assert_eq!(
            away,
            CompactedAway {
                redelivered: 0,
                superseded: 0,
                expired: 3
            }
        );
    }

    #[test]
    fn compaction_folds_segments_into_one_that_snapshots_the_same_and_survives_a_crash() {
        use LabelProvenance::{SourceLabel, WeakLexicon};
        use Sentiment::{Negative, Neutral, Positive};
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentStore::in_data_dir(dir.path());
        let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
        let write = |records: &[CurationRecord], dead_lettered| {
            let mut tracker = crate::segment::OffsetTracker::default();
            for record in records {
                let c = &record.coordinate;
                tracker.add(&c.topic, c.partition, c.offset);
            }
            segments
                .write(records, tracker.ranges(), dead_lettered)
                .unwrap()
        };
        let mut first: Vec<CurationRecord> = (0..30)
            .map(|index| {
                let class = Sentiment::from_index(index % 3).unwrap();
                review(
                    &format!("r{index:02}"),
                    Some((class, WeakLexicon)),
                    0,
                    index as i64,
                )
            })
            .collect();
        first.push(human("r00", Neutral, 1, 0));
        write(&first, 1);
        // Edits of ten reviews (the later text wins), a stronger label for five, re-read copies.
        let mut second: Vec<CurationRecord> = (0..10)
            .map(|index| {
                let mut edit = review(&format!("r{index:02}"), None, 0, 30 + index as i64);
                edit.text = format!("edited text of r{index:02}");
                edit
            })
            .collect();
        second.extend((10..15).map(|index| {
            review(
                &format!("r{index:02}"),
                Some((Positive, SourceLabel)),
                0,
                40 + index as i64,
            )
        }));
        second.extend(first[25..30].iter().cloned());
        second.push(human("r00", Negative, 2, 1));
        write(&second, 0);
        write(&[], 2);
        let before = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        let before_segments = segments.list().unwrap();
        let kept = dir.path().join("kept");
        std::fs::create_dir_all(&kept).unwrap();
        for path in &before_segments {
            std::fs::copy(path, kept.join(path.file_name().unwrap())).unwrap();
        }

        let report = compact_segments(&segments, None, CompactionScope::All).unwrap();
        assert_eq!(report.segments_in, 3);
        assert_eq!(report.records_in, 52);
        assert_eq!(
            report.away,
            CompactedAway {
                redelivered: 5,
                superseded: 6,
                expired: 0
            },
            "r00's first human label and r10..r14's weak-labelled events are superseded; an edit \
             without a label keeps the labelled event beside it"
        );
        assert_eq!(report.records_out, 41);
        assert_eq!(segments.list().unwrap().len(), 1);
        let after = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        let rows = |manifest: &Manifest| -> Vec<DatasetRow> {
            Split::ALL
                .into_iter()
                .flat_map(|split| snapshots.read(&manifest.snapshot_id, split).unwrap())
                .collect()
        };
        assert_eq!(rows(&after.manifest), rows(&before.manifest));
        assert_eq!(after.manifest.origin, before.manifest.origin);
        assert_eq!(after.counts.dead_lettered, 3);
        assert_eq!(after.counts.compacted_away, 11);
        assert_eq!(after.counts.redelivered, 0);
        let edited = rows(&after.manifest)
            .into_iter()
            .find(|row| row.review_id == "r03")
            .unwrap();
        assert_eq!(edited.text, "edited text of r03");

        // A crash after the compacted segment was written, before its inputs were removed: the next
        // load skips and removes them, so nothing is counted twice.
        for path in &before_segments {
            std::fs::copy(kept.join(path.file_name().unwrap()), path).unwrap();
        }
        assert_eq!(segments.list().unwrap().len(), 4);
        let recovered = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        assert_eq!(rows(&recovered.manifest), rows(&before.manifest));
        assert_eq!(recovered.counts.redelivered, 0);
        assert_eq!(
            segments.list().unwrap().len(),
            1,
            "the leftovers were removed"
        );

        // One segment with nothing to fold is left as it is.
        let again = compact_segments(&segments, None, CompactionScope::All).unwrap();
        assert_eq!((again.segments_in, again.segment_id), (0, None));
        write(&second[..3], 0);
        let more = compact_segments(&segments, None, CompactionScope::All).unwrap();
        assert_eq!((more.segments_in, more.away.redelivered), (2, 3));
        assert_eq!(segments.list().unwrap().len(), 1);

        // Retention moves what expired into the archive, whole; nothing is deleted.
        let expired = compact_segments(
            &segments,
            Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).single(),
            CompactionScope::All,
        )
        .unwrap();
        assert_eq!(
            (
                expired.records_in,
                expired.records_out,
                expired.away.expired
            ),
            (41, 0, 41)
        );
        let archive = segments.archive();
        let archived: Vec<PathBuf> = archive.list().unwrap();
        assert_eq!(archived.len(), 1);
        let (_, archived) = archive.read(&archived[0]).unwrap();
        assert_eq!(archived.len(), 41);
        assert!(matches!(
            curate_snapshot(&segments, &snapshots, &CurateOptions::default()),
            Err(DatasetError::Empty)
        ));
    }

    #[test]
    fn the_tier_holds_every_fresh_segment_and_outputs_the_newer_ones_caught_up_with() {
        const OUT: bool = true;
        const NEW: bool = false;
        for (segments, fold) in [
            (&[][..], &[][..]),
            (&[(5, NEW)][..], &[0][..]),
            (
                &[(1000, OUT), (10, NEW), (10, NEW), (10, NEW)][..],
                &[1, 2, 3][..],
            ),
            (
                &[(1000, OUT), (60, OUT), (10, NEW), (20, NEW)][..],
                &[1, 2, 3][..],
            ),
            (
                &[(1000, OUT), (61, OUT), (10, NEW), (20, NEW)][..],
                &[2, 3][..],
            ),
            (
                &[(100, OUT), (10, NEW), (60, OUT), (20, NEW)][..],
                &[0, 1, 2, 3][..],
            ),
            (
                &[(200, OUT), (10, NEW), (60, OUT), (20, NEW)][..],
                &[1, 2, 3][..],
            ),
            (&[(1000, OUT), (0, NEW), (0, NEW)][..], &[1, 2][..]),
            // A segment the consumer closed while a compaction ran sorts before its output: still
            // fresh, still folded; the output stays until the newer segments catch up with it.
            (
                &[(9000, OUT), (3, NEW), (5000, OUT), (40, NEW)][..],
                &[1, 3][..],
            ),
            (&[(30, OUT), (10, NEW), (10, NEW)][..], &[0, 1, 2][..]),
        ] {
            assert_eq!(tier_to_fold(segments), fold, "{segments:?}");
        }
        // The service's rhythm over 300 compactions of 64 fresh segments each, with steady, halving
        // (down to 1 record a segment), slowly declining, bursty and growing traffic, and a segment
        // closed during every compaction: the number of outputs stays logarithmic and a record is rewritten
        // a logarithmic number of times.
        let mut cases = Cases(0x007E_12ED);
        for pattern in ["steady", "halving", "declining", "bursty", "growing"] {
            let mut segments: Vec<(u64, bool)> = Vec::new();
            let (mut written, mut rewritten) = (0u64, 0u64);
            for round in 0..300u64 {
                for _ in 0..64 {
                    let rows = match pattern {
                        "steady" => 100,
                        "halving" => (10_000 >> round.min(40)).max(1),
                        "declining" => 10_000 - 33 * round,
                        "bursty" => {
                            if cases.below(10) == 0 {
                                5_000
                            } else {
                                1 + cases.below(20)
                            }
                        }
                        _ => 1 + round,
                    };
                    written += rows;
                    segments.push((rows, false));
                }
                let fold = tier_to_fold(&segments);
                let folded: u64 = fold.iter().map(|&index| segments[index].0).sum();
                rewritten += folded;
                let mut next: Vec<(u64, bool)> = (0..segments.len())
                    .filter(|index| !fold.contains(index))
                    .map(|index| segments[index])
                    .collect();
                next.push((3, false));
                written += 3;
                next.push((folded, true));
                segments = next;
            }
            let bound = 2 + (written as f64).log2().ceil() as u64;
            let outputs = segments.iter().filter(|(_, output)| *output).count() as u64;
            assert!(
                outputs <= bound,
                "{pattern}: {outputs} outputs: {segments:?}"
            );
            assert!(
                rewritten <= written * bound,
                "{pattern}: {rewritten} rewritten for {written} written"
            );
        }
    }

    #[test]
    fn a_tiered_compaction_folds_the_newest_segments_and_expires_only_when_full() {
        use LabelProvenance::SourceLabel;
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentStore::in_data_dir(dir.path());
        let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
        let mut offset = 0;
        let mut write = |count: usize, edit: bool| {
            let records: Vec<CurationRecord> = (0..count)
                .map(|index| {
                    let class = Sentiment::from_index(index % 3).unwrap();
                    let mut record = review(
                        &format!("r{index:03}"),
                        Some((class, SourceLabel)),
                        0,
                        offset,
                    );
                    if edit {
                        record.text = format!("edit {offset} of r{index:03}");
                    }
                    offset += 1;
                    record
                })
                .collect();
            let mut tracker = crate::segment::OffsetTracker::default();
            for record in &records {
                tracker.add("t.reviews.clean", 0, record.coordinate.offset);
            }
            segments.write(&records, tracker.ranges(), 0).unwrap()
        };
        // An earlier compaction's output of 100 records, then three fresh segments of 10 edits.
        write(50, false);
        write(100, false);
        compact_segments(&segments, None, CompactionScope::All).unwrap();
        let fresh: Vec<_> = (0..3).map(|_| write(10, true)).collect();
        let before = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        let rows = |manifest: &Manifest| -> Vec<DatasetRow> {
            Split::ALL
                .into_iter()
                .flat_map(|split| snapshots.read(&manifest.snapshot_id, split).unwrap())
                .collect()
        };
        let listed = segments.list().unwrap();
        let big_path = listed
            .iter()
            .find(|path| {
                !fresh
                    .iter()
                    .any(|meta| path.ends_with(format!("{}.parquet", meta.segment_id)))
            })
            .unwrap()
            .clone();
        let big_bytes = std::fs::read(&big_path).unwrap();
        let kept = dir.path().join("kept");
        std::fs::create_dir_all(&kept).unwrap();
        for path in &listed {
            std::fs::copy(path, kept.join(path.file_name().unwrap())).unwrap();
        }

        let daily = CompactionScope::Tiered {
            full_after: chrono::Duration::days(1),
        };
        // Records of 2026 are long past a cutoff in 2030, but the oldest segment is young: the tier is
        // folded without expiry.
        let far = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).single();
        let tiered = compact_segments(&segments, far, daily).unwrap();
        assert!(!tiered.full);
        assert_eq!(
            (
                tiered.segments_in,
                tiered.segments_untouched,
                tiered.records_in
            ),
            (3, 1, 30)
        );
        assert_eq!(tiered.away.superseded, 20, "r000..r009 edited three times");
        assert_eq!(tiered.away.expired, 0);
        assert_eq!(segments.list().unwrap().len(), 2);
        assert_eq!(
            std::fs::read(&big_path).unwrap(),
            big_bytes,
            "the old tier is untouched"
        );
        let after = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        assert_eq!(rows(&after.manifest), rows(&before.manifest));
        assert_eq!(after.manifest.origin, before.manifest.origin);

        // A crash after the tier's output was written, before its inputs were removed: the next load
        // removes exactly those inputs, never the untouched older segment.
        for path in &listed {
            std::fs::copy(kept.join(path.file_name().unwrap()), path).unwrap();
        }
        assert_eq!(segments.list().unwrap().len(), 5);
        let recovered = curate_snapshot(&segments, &snapshots, &CurateOptions::default()).unwrap();
        assert_eq!(rows(&recovered.manifest), rows(&before.manifest));
        assert_eq!(recovered.counts.redelivered, 0);
        assert_eq!(segments.list().unwrap().len(), 2);
        assert_eq!(std::fs::read(&big_path).unwrap(), big_bytes);

        // Once the oldest segment is older than `full_after`, the compaction is full and expires.
        let full = compact_segments(
            &segments,
            far,
            CompactionScope::Tiered {
                full_after: chrono::Duration::zero(),
            },
        )
        .unwrap();
        assert!(full.full);
        assert_eq!((full.segments_in, full.records_in), (2, 110));
        assert_eq!(full.away.expired, 100);
        assert!(segments.list().unwrap().len() <= 1);
    }
}
