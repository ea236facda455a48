//! Snapshots from curated segments: every closed segment is read, re-read copies are removed, a human label
//! overrides a source or weak label of the same review, unlabelled reviews are counted and kept out, and
//! the result becomes an immutable snapshot whose manifest records the offsets it was cut from.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sentiflow_common::events::{LabelProvenance, SourceCoordinate};
use serde::{Deserialize, Serialize};

use crate::dataset::{
    DatasetError, DatasetRow, Manifest, OffsetRange, Origin, SnapshotStore, Split, merge_labels,
};
use crate::segment::{CurationRecord, RecordKind, SegmentStore, merge_ranges};

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
    let mut seen: BTreeSet<(String, i32, i64)> = BTreeSet::new();
    let mut reviews: Vec<CurationRecord> = Vec::new();
    let mut feedback: Vec<CurationRecord> = Vec::new();
    for record in records {
        counts.records += 1;
        let coordinate = &record.coordinate;
        if !seen.insert((
            coordinate.topic.clone(),
            coordinate.partition,
            coordinate.offset,
        )) {
            counts.redelivered += 1;
            continue;
        }
        match record.kind {
            RecordKind::Review => reviews.push(record),
            RecordKind::Feedback => feedback.push(record),
        }
    }
    // A review id is a Kafka key, so its events sit in one partition: offset order is arrival order.
    reviews.sort_by(|a, b| position(&a.coordinate).cmp(&position(&b.coordinate)));
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
    let mut records = Vec::new();
    let mut ranges: Vec<OffsetRange> = Vec::new();
    let mut segment_count = 0;
    let mut dead_lettered = 0;
    for path in segments.list()? {
        let (meta, mut segment_records) = segments.read(&path)?;
        segment_count += 1;
        dead_lettered += meta.dead_lettered;
        ranges.extend(meta.offsets);
        records.append(&mut segment_records);
    }
    let (mut rows, mut counts) = curate_rows(records, options);
    counts.segments = segment_count;
    counts.dead_lettered = dead_lettered;
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
            offsets: merge_ranges(&ranges),
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use sentiflow_common::events::Sentiment;

    use super::*;
    use crate::dataset::Split;

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
                base_rows: 0,
                base_replaced: 0,
            }
        );
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
}
