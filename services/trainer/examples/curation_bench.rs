//! Measures the curation path offline: durable segment writes (fsync + rename), a snapshot from many
//! segments, compacting them, and the same snapshot from the compacted segment; then the service's
//! rhythm (a compaction every 64 segments while they are written) with full against tiered compactions.
//! `cargo run --release -p sentiflow-trainer --example curation_bench [rows] [records per segment]`.
#![allow(clippy::print_stdout)] // a measurement's report belongs on stdout

use std::time::Instant;

use chrono::{TimeZone, Utc};
use sentiflow_common::events::{LabelProvenance, Sentiment, SourceCoordinate};
use sentiflow_trainer::curation::{CompactionScope, compact_segments};
use sentiflow_trainer::dataset::SnapshotStore;
use sentiflow_trainer::segment::{CurationRecord, OffsetTracker, RecordKind, SegmentStore};
use sentiflow_trainer::{CurateOptions, curate_snapshot};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut number = |default: usize| -> anyhow::Result<usize> {
        Ok(args
            .next()
            .map(|arg| arg.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let rows = number(200_000)?;
    let per_segment = number(10_000)?.max(1);
    let dir = tempfile::tempdir()?;
    let segments = SegmentStore::in_data_dir(dir.path());
    let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
    let time = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid time");
    // One record in ten edits an earlier review (a later event with a new text and its source label):
    // what a platform's edits would bring.
    let distinct = rows - rows / 10;
    let records: Vec<CurationRecord> = (0..rows)
        .map(|index| {
            let edit = index >= distinct;
            let review = if edit { index - distinct } else { index };
            CurationRecord {
                kind: RecordKind::Review,
                event_id: format!("event-{index}"),
                event_time: time,
                review_id: format!("review-{review}"),
                text: format!(
                    "review {review}: the flight was late again and nobody at the desk could tell us why{}",
                    if edit { " (edited)" } else { "" }
                ),
                source: "bench".to_owned(),
                created_at: time,
                label: Sentiment::from_index(review % 3),
                provenance: Some(LabelProvenance::SourceLabel),
                confidence: 1.0,
                lang_allowed: true,
                coordinate: SourceCoordinate {
                    topic: "reviews.clean".to_owned(),
                    partition: (review % 3) as i32,
                    offset: index as i64,
                },
            }
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
    let before = curate_snapshot(&segments, &snapshots, &CurateOptions::default())?;
    let from_segments = started.elapsed().as_secs_f64();
    println!(
        "snapshot: {} rows from {} segments in {from_segments:.2} s ({:.0} records/s)",
        before.manifest.rows,
        before.counts.segments,
        rows as f64 / from_segments
    );
    let started = Instant::now();
    let report = compact_segments(&segments, None, CompactionScope::All)?;
    let compaction = started.elapsed().as_secs_f64();
    println!(
        "compaction: {} segments, {} records → 1 segment, {} records ({} superseded) in {compaction:.2} s",
        report.segments_in, report.records_in, report.records_out, report.away.superseded
    );
    let started = Instant::now();
    let after = curate_snapshot(&segments, &snapshots, &CurateOptions::default())?;
    let from_compacted = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        after
            .manifest
            .files
            .iter()
            .map(|file| &file.sha256)
            .collect::<Vec<_>>()
            == before
                .manifest
                .files
                .iter()
                .map(|file| &file.sha256)
                .collect::<Vec<_>>(),
        "the snapshot after compaction differs"
    );
    println!(
        "snapshot: {} rows from the compacted segment in {from_compacted:.2} s ({:.2}× the time from {} segments; same files)",
        after.manifest.rows,
        from_compacted / from_segments,
        before.counts.segments
    );

    // The service's rhythm: a compaction after every 64 segments written, full against tiered.
    let files = |manifest: &sentiflow_trainer::dataset::Manifest| -> Vec<String> {
        manifest
            .files
            .iter()
            .map(|file| file.sha256.clone())
            .collect()
    };
    let mut results = Vec::new();
    for (label, scope) in [
        ("full (every segment)", CompactionScope::All),
        (
            "tiered (the service)",
            CompactionScope::Tiered {
                full_after: chrono::Duration::days(1),
            },
        ),
    ] {
        let dir = tempfile::tempdir()?;
        let segments = SegmentStore::in_data_dir(dir.path());
        let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
        let (mut rewritten, mut compactions, mut seconds) = (0u64, 0u64, 0.0);
        for (index, chunk) in records.chunks(per_segment).enumerate() {
            let mut tracker = OffsetTracker::default();
            for record in chunk {
                let c = &record.coordinate;
                tracker.add(&c.topic, c.partition, c.offset);
            }
            segments.write(chunk, tracker.ranges(), 0)?;
            if (index + 1) % 64 == 0 {
                let started = Instant::now();
                let report = compact_segments(&segments, None, scope)?;
                seconds += started.elapsed().as_secs_f64();
                rewritten += report.records_in;
                compactions += 1;
            }
        }
        let left = segments.list()?.len();
        let snapshot = curate_snapshot(&segments, &snapshots, &CurateOptions::default())?;
        anyhow::ensure!(
            files(&snapshot.manifest) == files(&before.manifest),
            "the snapshot after {label} compactions differs"
        );
        results.push((label, compactions, rewritten, seconds, left));
    }
    let (_, _, full_rewritten, full_seconds, _) = results[0];
    println!(
        "| compactions every 64 segments of {per_segment} | compactions | records read and rewritten | seconds | ratio (time) | segments left |"
    );
    for (label, compactions, rewritten, seconds, left) in &results {
        println!(
            "| {label:<28} | {compactions:>11} | {rewritten:>25} | {seconds:>7.2} | {:>11.2}× | {left:>13} |",
            seconds / full_seconds
        );
    }
    println!(
        "(same snapshot files either way; tiered rewrote {:.2}× the records full did)",
        results[1].2 as f64 / full_rewritten as f64
    );
    Ok(())
}
