//! Measures the curation path offline: durable segment writes (fsync + rename) and building a snapshot
//! from the segments. `cargo run --release -p sentiflow-trainer --example curation_bench [rows]`.
#![allow(clippy::print_stdout)] // a measurement's report belongs on stdout

use std::time::Instant;

use chrono::{TimeZone, Utc};
use sentiflow_common::events::{LabelProvenance, Sentiment, SourceCoordinate};
use sentiflow_trainer::dataset::SnapshotStore;
use sentiflow_trainer::segment::{CurationRecord, OffsetTracker, RecordKind, SegmentStore};
use sentiflow_trainer::{CurateOptions, curate_snapshot};

fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(200_000);
    let per_segment = 10_000;
    let dir = tempfile::tempdir()?;
    let segments = SegmentStore::in_data_dir(dir.path());
    let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
    let time = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid time");
    let records: Vec<CurationRecord> = (0..rows)
        .map(|index| CurationRecord {
            kind: RecordKind::Review,
            event_id: format!("event-{index}"),
            event_time: time,
            review_id: format!("review-{index}"),
            text: format!(
                "review {index}: the flight was late again and nobody at the desk could tell us why"
            ),
            source: "bench".to_owned(),
            created_at: time,
            label: Sentiment::from_index(index % 3),
            provenance: Some(LabelProvenance::SourceLabel),
            confidence: 1.0,
            lang_allowed: true,
            coordinate: SourceCoordinate {
                topic: "reviews.clean".to_owned(),
                partition: (index % 3) as i32,
                offset: (index / 3) as i64,
            },
        })
        .collect();
    let started = Instant::now();
    for chunk in records.chunks(per_segment) {
        let mut tracker = OffsetTracker::default();
        for record in chunk {
            let c = &record.coordinate;
            tracker.add(&c.topic, c.partition, c.offset);
        }
        segments.write(chunk, tracker.ranges(), 0)?;
    }
    let write = started.elapsed().as_secs_f64();
    let count = rows.div_ceil(per_segment);
    println!(
        "segments: {count} × {per_segment} records written durably in {write:.2} s ({:.1} ms a segment, {:.0} records/s)",
        write * 1000.0 / count as f64,
        rows as f64 / write
    );
    let started = Instant::now();
    let curated = curate_snapshot(&segments, &snapshots, &CurateOptions::default())?;
    let snapshot = started.elapsed().as_secs_f64();
    println!(
        "snapshot: {} rows from {} segments in {snapshot:.2} s ({:.0} rows/s)",
        curated.manifest.rows,
        curated.counts.segments,
        rows as f64 / snapshot
    );
    Ok(())
}
