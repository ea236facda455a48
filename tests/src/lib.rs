//! Test harness for the integration and end-to-end tests: one real Kafka broker per test binary (or the
//! one named by `SENTIFLOW_TEST_KAFKA_BROKERS`), a real Redis per test, random topic prefixes, and helpers
//! that read topics back with exact counts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sentiflow::local::{KafkaOptions, KafkaServer, RedisOptions, RedisServer};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::Catalogue;
use sentiflow_common::config::KafkaArgs;

/// The broker shared by every test of one test binary.
#[derive(Debug)]
pub struct SharedKafka {
    /// Bootstrap servers.
    pub brokers: String,
    /// Keeps our own broker alive for the life of the process (None when reusing an external one).
    _server: Option<KafkaServer>,
}

/// Starts (once per process) or reuses the test broker.
pub fn kafka() -> &'static SharedKafka {
    static KAFKA: OnceLock<SharedKafka> = OnceLock::new();
    KAFKA.get_or_init(|| {
        init_logs();
        if let Ok(brokers) = std::env::var("SENTIFLOW_TEST_KAFKA_BROKERS") {
            return SharedKafka { brokers, _server: None };
        }
        let cache = CacheDir::from_env().expect("cache dir");
        let libs = cache.require(cache.kafka_libs(), "Apache Kafka jars").expect("run infra/setup.sh first");
        let data_dir = scratch_dir("kafka");
        let started = Instant::now();
        let server = KafkaServer::start(KafkaOptions {
            libs_dir: libs,
            log4j_config: Some(cache.kafka_log4j_config()).filter(|path| path.exists()),
            data_dir,
            port: None,
            heap_mb: 512,
            num_partitions: 3,
        })
        .expect("start the test Kafka broker");
        tracing::info!(brokers = %server.bootstrap_servers(), elapsed_ms = started.elapsed().as_millis() as u64, "test broker up");
        SharedKafka { brokers: server.bootstrap_servers(), _server: Some(server) }
    })
}

/// A fresh Redis on a free port, owned by the calling test (dropped = stopped).
pub fn redis() -> RedisServer {
    init_logs();
    RedisServer::start(RedisOptions {
        data_dir: scratch_dir("redis"),
        port: None,
        password: None,
        persistence: false,
    })
    .expect("start a test Redis (is redis-server installed? run infra/setup.sh)")
}

/// [`redis`] with append-only persistence: what it held survives [`RedisServer::restart`].
pub fn persistent_redis() -> RedisServer {
    init_logs();
    RedisServer::start(RedisOptions {
        data_dir: scratch_dir("redis"),
        port: None,
        password: None,
        persistence: true,
    })
    .expect("start a test Redis (is redis-server installed? run infra/setup.sh)")
}

/// A directory under the system temp dir for one server; stale ones of dead test processes are removed.
fn scratch_dir(kind: &str) -> PathBuf {
    let root = std::env::temp_dir().join("sentiflow-tests");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .split('-')
                .nth(1)
                .and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!(
        "{kind}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Logs of the code under test, at `SENTIFLOW_TEST_LOG` (default warn), to the test's captured output.
pub fn init_logs() {
    let filter = std::env::var("SENTIFLOW_TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A random topic prefix so concurrent tests and runs never share topics.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Kafka settings for the shared broker under a fresh prefix, with every catalogue topic created.
pub async fn kafka_with_topics() -> KafkaArgs {
    let args = KafkaArgs::local(kafka().brokers.clone(), unique_prefix());
    sentiflow_common::kafka::ensure_topics(&args, Catalogue::embedded(), Some(1))
        .await
        .expect("create topics");
    args
}

/// A broker of one test's own, for tests that stop it (the shared one must stay up for the others),
/// with every catalogue topic created under a fresh prefix.
#[derive(Debug)]
pub struct OwnBroker {
    options: KafkaOptions,
    server: Option<KafkaServer>,
    /// Settings for clients of this broker.
    pub kafka: KafkaArgs,
    _data: tempfile::TempDir,
}

impl OwnBroker {
    /// Starts the broker (3 partitions per topic) and creates the topics.
    pub async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let cache = CacheDir::from_env().expect("cache dir");
        let options = KafkaOptions {
            num_partitions: 3,
            ..KafkaOptions::from_cache(&cache, data.path().join("kafka")).expect("Kafka jars")
        };
        let server = Self::spawn(options.clone()).await;
        let kafka = KafkaArgs::local(server.bootstrap_servers(), unique_prefix());
        sentiflow_common::kafka::ensure_topics(&kafka, Catalogue::embedded(), Some(1))
            .await
            .expect("create topics");
        Self {
            options,
            server: Some(server),
            kafka,
            _data: data,
        }
    }

    async fn spawn(options: KafkaOptions) -> KafkaServer {
        tokio::task::spawn_blocking(move || KafkaServer::start(options))
            .await
            .expect("join")
            .expect("the broker starts")
    }

    /// Stops the broker (a controlled shutdown).
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            tokio::task::spawn_blocking(move || server.stop().expect("the broker stops"))
                .await
                .expect("join");
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.server = Some(Self::spawn(self.options.clone()).await);
    }

    /// Starts it again and waits (90 s at most) for `queued`, a producer that queued messages during
    /// the outage, to have every one acknowledged.
    pub async fn restart_and_await(&mut self, queued: tokio::task::JoinHandle<()>) {
        self.restart().await;
        tokio::time::timeout(Duration::from_secs(90), queued)
            .await
            .expect("the queued messages are acknowledged once the broker is back")
            .expect("the queueing producer task");
    }
}

/// `kafka` for a test's own producer that must outlast a broker outage: its messages wait in the
/// queue for 5 minutes instead of the services' 60 s.
pub fn patient(kafka: &KafkaArgs) -> KafkaArgs {
    let mut patient = kafka.clone();
    patient.options.push(
        "message.timeout.ms=300000"
            .parse()
            .expect("a librdkafka property"),
    );
    patient
}

/// Asserts that consumer group `group` commits offsets summing to `total` over the partitions of
/// `topic` within 30 s (so a broker outage after that redelivers nothing).
pub async fn assert_committed(brokers: &str, group: &str, topic: &str, total: i64) {
    let committed =
        committed_eventually(brokers, group, topic, total, Duration::from_secs(30)).await;
    assert_eq!(
        committed,
        Ok(()),
        "the offsets before the outage are committed"
    );
}

/// Waits until consumer group `group` has committed offsets summing to `total` over the partitions
/// of `topic`; `Err` with the last sum seen when `timeout` passes first.
pub async fn committed_eventually(
    brokers: &str,
    group: &str,
    topic: &str,
    total: i64,
    timeout: Duration,
) -> Result<(), Option<i64>> {
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let deadline = Instant::now() + timeout;
        loop {
            let committed = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()
                .and_then(|metadata| {
                    let mut partitions = TopicPartitionList::new();
                    for partition in metadata.topics().first()?.partitions() {
                        partitions.add_partition(&topic, partition.id());
                    }
                    consumer
                        .committed_offsets(partitions, Duration::from_secs(5))
                        .ok()
                })
                .map(|offsets| {
                    offsets
                        .elements()
                        .iter()
                        .filter_map(|element| match element.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        })
                        .sum::<i64>()
                });
            if committed == Some(total) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(committed);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("join")
}

/// The W3C trace id a message carries in its `traceparent` header, if a valid one.
pub fn trace_id_of(message: &OwnedMessage) -> Option<String> {
    sentiflow_common::trace::of_message(message).map(|(context, _)| context.trace_id())
}

/// The value of header `name` of a message, as text.
pub fn header_of(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers as _;
    message.headers()?.iter().find_map(|header| {
        (header.key == name)
            .then(|| String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned())
    })
}

/// Reads `topic` from the beginning until `expected` messages arrived, then keeps listening for `settle`
/// to catch extras; panics when fewer than `expected` arrive within `timeout`.
pub async fn read_exactly(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<OwnedMessage> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("reader consumer");
        let deadline = Instant::now() + timeout;
        // Just after a topic is created its metadata can list no partitions yet (leader not
        // elected): assigning from that would read nothing however long we wait.
        let partitions = loop {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("topic metadata");
            let listed = &metadata.topics()[0];
            if listed.error().is_none() && !listed.partitions().is_empty() {
                break listed.partitions().len();
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: no partitions listed within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&topic, partition as i32, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let mut messages = Vec::new();
        let mut settle_until: Option<Instant> = None;
        loop {
            if messages.len() >= expected && settle_until.is_none() {
                settle_until = Some(Instant::now() + settle);
            }
            if settle_until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
            if settle_until.is_none() && Instant::now() >= deadline {
                panic!(
                    "{topic}: only {} of {expected} messages within {timeout:?}",
                    messages.len()
                );
            }
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                messages.push(message.detach());
            }
        }
        messages
    })
    .await
    .expect("reader thread")
}

/// Parses every message payload as JSON.
pub fn json_payloads(messages: &[OwnedMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|message| {
            serde_json::from_slice(message.payload().expect("payload")).expect("JSON payload")
        })
        .collect()
}

/// Counts values of one string field.
pub fn count_by(values: &[serde_json::Value], field: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in values {
        *counts
            .entry(value[field].as_str().unwrap_or("<missing>").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// A minimal HTTP/1.0 GET (no client library needed for probing our own endpoints): (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Like [`eventually`] for a condition that has to await (a Redis read, an HTTP call).
pub async fn eventually_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET path` on `addr` until it answers `status`; false when `timeout` passes first.
pub async fn status_eventually(
    addr: std::net::SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
) -> bool {
    eventually_async(timeout, || async move {
        http_get(addr, path)
            .await
            .is_ok_and(|(answered, _)| answered == status)
    })
    .await
}

/// Polls `addr`'s `/healthz` until its `status` is `status` (`ready`, `degraded`, `not_ready`) and its
/// check `check` has `ok == check_ok`, with `/readyz` answering accordingly (200 unless `not_ready`);
/// false when `timeout` passes first.
pub async fn health_eventually(
    addr: std::net::SocketAddr,
    status: &str,
    check: &str,
    check_ok: bool,
    timeout: Duration,
) -> bool {
    let ready_status = if status == "not_ready" { 503 } else { 200 };
    eventually_async(timeout, || async move {
        let Ok((_, body)) = http_get(addr, "/healthz").await else {
            return false;
        };
        let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        health["status"] == status
            && health["checks"][check]["ok"].as_bool() == Some(check_ok)
            && http_get(addr, "/readyz")
                .await
                .is_ok_and(|(answered, _)| answered == ready_status)
    })
    .await
}

/// Starts `redis` again (same port and data) and waits until the service at `addr` has seen it:
/// its redis check ok and its status `ready`. Panics after 30 s.
pub async fn restart_redis_and_await_ready(redis: &mut RedisServer, addr: std::net::SocketAddr) {
    redis.restart().expect("restart the test Redis");
    assert!(
        health_eventually(addr, "ready", "redis", true, Duration::from_secs(30)).await,
        "ready, not degraded, once Redis is back"
    );
}

/// The value of the series written exactly as `series` (name and labels) in a Prometheus text page;
/// 0 when absent.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// How much each of `series` grew between two scrapes (the counters are process-wide: compare growth).
pub fn metric_growth(before: &str, after: &str, series: &[&str]) -> Vec<f64> {
    series
        .iter()
        .map(|series| metric_value(after, series) - metric_value(before, series))
        .collect()
}

/// Polls `addr`'s `/metrics` until one line is exactly `line`; false when `timeout` passes first.
pub async fn metric_line_eventually(
    addr: std::net::SocketAddr,
    line: &str,
    timeout: Duration,
) -> bool {
    eventually_async(timeout, || async {
        http_get(addr, "/metrics")
            .await
            .is_ok_and(|(_, metrics)| metrics.lines().any(|candidate| candidate == line))
    })
    .await
}

/// A minimal HTTP/1.0 POST of a JSON body: (status, body).
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    http_post_with_headers(addr, path, &[], body)
        .await
        .map(|(status, _head, body)| (status, body))
}

/// [`http_post`] with extra request headers; answers (status, status line and headers, body).
pub async fn http_post_with_headers(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    // A server may answer (413) before reading a large body and close: that is not a client error.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(head, body)| (head.to_owned(), body.to_owned()))
        .unwrap_or_default();
    Ok((status, head, body))
}

/// Path of a file in `../shared/data` (tests may read it directly).
pub fn shared_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(name)
}

/// Checks a registered version directory's card files: every file the record lists (for a hashed
/// model also `seen_features.bin`) exists with its sha256, both chart PNGs are named in `card.json`
/// (with their checksum and size) and decode to real pictures, and every link of `card.md` is relative
/// and resolves to a file next to it.
pub fn assert_card_files(
    version_dir: &std::path::Path,
    record: &sentiflow_trainer::registry::ModelRecord,
) {
    use sha2::Digest as _;
    let sha256 = |name: &str| {
        let bytes = std::fs::read(version_dir.join(name))
            .unwrap_or_else(|error| panic!("{}/{name}: {error}", version_dir.display()));
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let listed: Vec<&str> = record.files.keys().map(String::as_str).collect();
    let mut expected = vec![
        "card.json",
        "card.md",
        "confusion_matrix.png",
        "training_curve.png",
    ];
    if record.family == sentiflow_common::events::ModelFamily::Hashed {
        // The training split's feature ids, behind serving's OOV rate.
        expected.push(sentiflow_model::seen::SEEN_FEATURES_FILE);
        expected.sort_unstable();
    }
    assert_eq!(listed, expected, "files recorded with their sha256");
    for (name, expected) in &record.files {
        assert_eq!(&sha256(name), expected, "{name}: recorded sha256");
    }

    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_dir.join("card.json")).unwrap()).unwrap();
    let written = &card["charts"]["written"];
    for key in ["confusion_matrix", "training_curve"] {
        let chart = &written[key];
        let name = chart["file"]
            .as_str()
            .unwrap_or_else(|| panic!("card.json charts: {card:#}"));
        assert_eq!(chart["sha256"].as_str().unwrap(), sha256(name), "{name}");
        let (width, height, colours) = decode_png(&std::fs::read(version_dir.join(name)).unwrap());
        assert_eq!(
            (u64::from(width), u64::from(height)),
            (
                chart["width"].as_u64().unwrap(),
                chart["height"].as_u64().unwrap()
            )
        );
        assert!(colours > 50, "{name}: only {colours} distinct colours");
    }

    let markdown = std::fs::read_to_string(version_dir.join("card.md")).unwrap();
    let links: Vec<&str> = markdown
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .collect();
    assert_eq!(
        links,
        ["confusion_matrix.png", "training_curve.png"],
        "{markdown}"
    );
    for link in links {
        assert!(
            !link.contains('/') && !link.contains(':'),
            "relative link: {link}"
        );
        assert!(version_dir.join(link).is_file(), "{link} resolves");
    }
}

/// Decodes a PNG (checking its chunk CRCs): (width, height, number of distinct colours).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, usize) {
    let image = sentiflow_trainer::charts::png::decode_rgb(bytes).expect("a PNG");
    (image.width, image.height, image.distinct_colours())
}

/// A `reviews.clean` event as ingest writes it: the text cleaned by this build's normaliser, except
/// every tenth review, which claims an older normaliser and keeps its raw text (infer cleans those
/// again instead of taking its fast path).
pub fn clean_review(index: usize, text: &str) -> sentiflow_common::events::CleanReview {
    let now = chrono::Utc::now();
    let (text, normalizer_version) = if index.is_multiple_of(10) {
        (text.to_owned(), "norm-v0".to_owned())
    } else {
        (
            sentiflow_model::clean(text).text,
            sentiflow_model::text::NORMALIZER_VERSION.to_owned(),
        )
    };
    sentiflow_common::events::CleanReview {
        schema_version: sentiflow_common::events::SCHEMA_VERSION,
        event_id: format!("clean-{index}-{}", uuid::Uuid::new_v4().simple()),
        event_time: now,
        source_event_id: format!("raw-{index}"),
        review_id: format!("review-{index}"),
        source: "airline".to_owned(),
        author_hash: "a".repeat(64),
        text,
        text_hash: "0".repeat(64),
        created_at: now - chrono::Duration::minutes(5),
        lang: "en".to_owned(),
        lang_confidence: 0.9,
        lang_allowed: true,
        label: None::<sentiflow_common::events::LabelInfo>,
        redactions: sentiflow_common::events::Redactions {
            emails: 0,
            phones: 0,
            cards: 0,
        },
        normalizer_version,
        source_offset: sentiflow_common::events::SourceCoordinate {
            topic: "reviews.raw".to_owned(),
            partition: 0,
            offset: index as i64,
        },
        metadata: None,
        rating: None,
    }
}

/// Publishes payloads to `reviews.clean` (keyed) and waits for every acknowledgement.
pub async fn publish_clean(kafka: &KafkaArgs, messages: &[(String, Vec<u8>)]) {
    let producer = sentiflow_common::kafka::ResilientProducer::new(kafka, "test").unwrap();
    let topic = kafka.topic(sentiflow_common::catalogue::topics::REVIEWS_CLEAN);
    let mut acks = Vec::new();
    for (key, payload) in messages {
        acks.push(
            producer
                .enqueue(&topic, Some(key.as_bytes()), payload, None)
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        sentiflow_common::kafka::await_delivery(ack).await.unwrap();
    }
}
