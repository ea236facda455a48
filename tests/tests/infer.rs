//! The inference service against a real Kafka broker, a real Redis registry and ONNX Runtime with two
//! real trained models: exact prediction counts that match offline scoring, dead letters, hot swap under
//! load (promote, then roll back), refusal of a corrupted artifact, the HTTP API and device honesty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::Message as _;
use sentiflow::corpus::CorpusFormat;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, RedisArgs, TelemetryArgs};
use sentiflow_common::events::{Event as _, ModelAlias, ModelFamily, UpdateAction};
use sentiflow_common::schema::{EventSchema, SchemaRegistry};
use sentiflow_common::store::RedisStore;
use sentiflow_infer::InferConfig;
use sentiflow_infer::config::DeviceArg;
use sentiflow_model::featurize::FeaturizerConfig;
use sentiflow_model::runtime::{DeviceRequest, LoadedModel};
use sentiflow_model::seen::{SEEN_FEATURES_FILE, SeenFeatures};
use sentiflow_model::train::TrainConfig;
use sentiflow_trainer::dataset::LabelWeights;
use sentiflow_trainer::dataset::SnapshotStore;
use sentiflow_trainer::gate::GatePolicy;
use sentiflow_trainer::pipeline::{self, TrainDevice, TrainRequest};
use sentiflow_trainer::registry::{NewModel, Registry};

const MODEL: &str = "sentiment-hashed";
/// Alert threshold of the tests (the small test models are less confident than a production one).
const ALERT_THRESHOLD: f64 = 0.5;

/// ONNX bytes of two genuinely different trained models, registered as `v1` and `v2` in every test.
struct TrainedModels {
    v1: Vec<u8>,
    v2: Vec<u8>,
    /// v1's `seen_features.bin` as the trainer wrote it (v2 is registered without one).
    v1_seen: Vec<u8>,
}

/// Trains both models once per test binary on a slice of the airline corpus (own runtime and Redis on
/// a separate thread, because each test has its own runtime).
fn trained_models() -> &'static TrainedModels {
    static MODELS: OnceLock<TrainedModels> = OnceLock::new();
    MODELS.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let redis_server = sentiflow_tests::redis();
                let dir = tempfile::tempdir().unwrap();
                let store = SnapshotStore::new(dir.path().join("snapshots"));
                let slice = dir.path().join("airline_slice.jsonl");
                let records = sentiflow::corpus::read_records(
                    &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
                    CorpusFormat::Airline,
                    Some(3000),
                )
                .unwrap();
                let lines: Vec<String> = records
                    .iter()
                    .map(|record| String::from_utf8(record.payload.clone()).unwrap())
                    .collect();
                std::fs::write(&slice, lines.join("\n")).unwrap();
                let manifest =
                    sentiflow::dataset::import(&store, &[slice], CorpusFormat::Events).unwrap();
                let redis =
                    RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), "infer-train"))
                        .unwrap();
                let registry = Registry::new(dir.path().join("models"), redis);
                let ort = sentiflow::train::ort_environment().expect("run infra/setup.sh");
                let lexicon = sentiflow::train::lexicon().unwrap();
                let mut artifacts = Vec::new();
                let mut seen = Vec::new();
                for (seed, dim) in [(7, 16), (8, 8)] {
                    let outcome = pipeline::train_and_register(
                        &store,
                        &registry,
                        lexicon.clone(),
                        &ort,
                        &TrainRequest {
                            snapshot_id: manifest.snapshot_id.clone(),
                            model_name: MODEL.to_owned(),
                            featurizer: FeaturizerConfig {
                                buckets: 1 << 15,
                                ..FeaturizerConfig::default()
                            },
                            train: TrainConfig {
                                seed,
                                epochs: 6,
                                learning_rate: 0.05,
                                dim,
                                ..TrainConfig::default()
                            },
                            burn: Default::default(),
                            device: TrainDevice::Cpu,
                            gate: GatePolicy::default(),
                            label_weights: LabelWeights::default(),
                        },
                    )
                    .await
                    .unwrap();
                    artifacts.push(std::fs::read(&outcome.record.artifact_uri).unwrap());
                    seen.push(
                        registry
                            .load_file_verified(&outcome.record, SEEN_FEATURES_FILE)
                            .await
                            .unwrap()
                            .expect("the trainer registers the seen features"),
                    );
                }
                TrainedModels {
                    v2: artifacts.pop().unwrap(),
                    v1: artifacts.pop().unwrap(),
                    v1_seen: seen.swap_remove(0),
                }
            })
        })
        .join()
        .unwrap()
    })
}

/// A registry under `data_dir` holding `v1` and `v2` (no champion yet).
async fn registry_with_models(redis_url: &str, prefix: &str, data_dir: &Path) -> Registry {
    let models = trained_models();
    let store = RedisStore::connect_lazy(&RedisArgs::local(redis_url, prefix)).unwrap();
    let registry = Registry::new(data_dir.join("models"), store);
    for (version, onnx) in [("v1", &models.v1), ("v2", &models.v2)] {
        // v1 with its seen features (predictions carry an OOV rate), v2 without (they carry none).
        let files = if version == "v1" {
            vec![(SEEN_FEATURES_FILE.to_owned(), models.v1_seen.clone())]
        } else {
            Vec::new()
        };
        registry
            .register(NewModel {
                name: MODEL.to_owned(),
                version: Some(version.to_owned()),
                family: ModelFamily::Hashed,
                onnx: onnx.clone(),
                featurizer_version: sentiflow_model::featurize::FEATURIZER_VERSION.to_owned(),
                snapshot_id: "airline-slice".to_owned(),
                trained_on: "cpu".to_owned(),
                metrics: BTreeMap::new(),
                gate: None,
                files,
            })
            .await
            .unwrap();
    }
    registry
}

fn infer_config(kafka: &KafkaArgs, redis_url: &str, prefix: &str, data_dir: &Path) -> InferConfig {
    InferConfig {
        kafka: kafka.clone(),
        redis: RedisArgs::local(redis_url, prefix),
        telemetry: TelemetryArgs::ephemeral(),
        api_auth: Default::default(),
        group_id: format!("infer-{}", uuid::Uuid::new_v4().simple()),
        data_dir: data_dir.to_path_buf(),
        model_name: MODEL.to_owned(),
        device: DeviceArg::Auto,
        ort_dylib: None,
        workers: 2,
        intra_threads: 1,
        max_batch: 64,
        batch_wait_ms: 5,
        max_queued_batches: 3,
        // 0: every full queue pauses the partitions, so the pause/resume path runs under load.
        pause_after_ms: 0,
        alert_threshold: ALERT_THRESHOLD,
        registry_poll_secs: 30,
        shadow_fraction: 0.0,
        http_max_texts: 8,
        http_max_text_bytes: 500,
        http_max_concurrent: 16,
        http_batch_texts: 256,
        encoder_model_name: "sentiment-encoder".to_owned(),
        family: sentiflow_infer::config::FamilyArg::Auto,
    }
}

/// Review texts from the airline corpus.
fn texts(count: usize) -> Vec<String> {
    sentiflow::corpus::read_records(
        &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
        CorpusFormat::Airline,
        Some(count + 3000),
    )
    .unwrap()
    .into_iter()
    .skip(3000) // not the rows the models were trained on
    .map(|record| {
        let raw: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        raw["text"].as_str().unwrap().to_owned()
    })
    .collect()
}

fn review_messages(texts: &[String], offset: usize) -> Vec<(String, Vec<u8>)> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let review = sentiflow_tests::clean_review(offset + index, text);
            (review.review_id.clone(), review.to_json_vec().unwrap())
        })
        .collect()
}

/// Promotes `version` in the registry and announces it like `sentiflow models promote` does.
async fn promote(kafka: &KafkaArgs, registry: &Registry, version: &str) {
    let previous = registry.promote(MODEL, version).await.unwrap();
    let record = registry.get(MODEL, version).await.unwrap();
    sentiflow::models::announce(
        kafka,
        &record.update_event(UpdateAction::Promoted, previous, Some(ModelAlias::Champion)),
    )
    .await
    .unwrap();
}

/// Waits until infer's slot serves `version`.
async fn wait_serving(running: &sentiflow_infer::Running, version: &str) {
    let slot = running.slot.clone();
    assert!(
        sentiflow_tests::eventually(Duration::from_secs(60), || {
            slot.current()
                .is_some_and(|model| model.model_ref().version == version)
        })
        .await,
        "infer did not start serving {version}"
    );
}

/// Offline probabilities of one text through ONNX Runtime with the featurizer the model names.
fn offline_probabilities(onnx: &[u8], texts: &[String]) -> Vec<[f32; 3]> {
    let env = sentiflow::train::ort_environment().unwrap();
    let mut model = LoadedModel::load(&env, onnx, DeviceRequest::Cpu, 1).unwrap();
    let featurizer = pipeline::featurizer_for(model.metadata()).unwrap();
    texts
        .iter()
        .map(|text| {
            let (ids, rows, cols) = featurizer.batch_padded(&[text]);
            model.predict(&ids, rows, cols).unwrap()[0]
        })
        .collect()
}

/// Each text's share of feature ids outside the model's training features (what infer reports).
fn offline_oov_rates(onnx: &[u8], seen: &[u8], texts: &[String]) -> Vec<Option<f64>> {
    let env = sentiflow::train::ort_environment().unwrap();
    let model = LoadedModel::load(&env, onnx, DeviceRequest::Cpu, 1).unwrap();
    let featurizer = pipeline::featurizer_for(model.metadata()).unwrap();
    let seen = SeenFeatures::from_bytes(seen, featurizer.config().buckets).unwrap();
    assert!(
        seen.count() > 1000,
        "the training split's features are marked"
    );
    texts
        .iter()
        .map(|text| seen.unseen_share(&featurizer.featurize(text)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predictions_match_offline_scoring_with_alerts_and_dead_letters() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf1", dir.path()).await;
    registry.promote(MODEL, "v1").await.unwrap();

    let texts = texts(300);
    let mut messages = review_messages(&texts, 0);
    let malformed: Vec<(String, Vec<u8>)> = vec![
        ("bad-1".to_owned(), b"not json".to_vec()),
        (
            "bad-2".to_owned(),
            br#"{"schema_version": 1, "text": "missing fields"}"#.to_vec(),
        ),
        ("bad-3".to_owned(), Vec::new()),
    ];
    messages.splice(100..100, malformed);
    // The first ten arrive with a trace context (as ingest gives them); the rest without.
    let traceparent = |index: usize| format!("00-{:032x}-{:016x}-01", index + 1, index + 1);
    {
        let producer = sentiflow_common::kafka::ResilientProducer::new(&kafka, "test").unwrap();
        let mut acks = Vec::new();
        for (index, (key, payload)) in messages[..10].iter().enumerate() {
            let context =
                sentiflow_common::trace::TraceContext::parse(traceparent(index).as_bytes())
                    .unwrap();
            acks.push(
                producer
                    .enqueue(
                        &kafka.topic(topics::REVIEWS_CLEAN),
                        Some(key.as_bytes()),
                        payload,
                        Some(sentiflow_common::trace::headers(&context, None)),
                    )
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            sentiflow_common::kafka::await_delivery(ack).await.unwrap();
        }
    }
    sentiflow_tests::publish_clean(&kafka, &messages[10..]).await;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = sentiflow_infer::start(
        infer_config(&kafka, &redis_server.url(), "inf1", dir.path()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(running.device.device.as_str(), "cpu");

    let brokers = &sentiflow_tests::kafka().brokers;
    let predictions = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::PREDICTIONS),
        texts.len(),
        Duration::from_secs(90),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        predictions.len(),
        texts.len(),
        "exactly one prediction per review"
    );
    let values = sentiflow_tests::json_payloads(&predictions);
    // Every prediction carries a trace: the clean review's continued, or a new one.
    let mut prediction_traces = BTreeMap::new();
    for (message, value) in predictions.iter().zip(&values) {
        let review_id = value["review_id"].as_str().unwrap().to_owned();
        let trace = sentiflow_tests::trace_id_of(message).expect("a traceparent");
        let index: usize = review_id.trim_start_matches("review-").parse().unwrap();
        if index < 10 {
            assert_eq!(trace, format!("{:032x}", index + 1), "{review_id}");
        }
        prediction_traces.insert(review_id, trace);
    }
    let distinct: BTreeSet<&String> = prediction_traces.values().collect();
    assert_eq!(distinct.len(), texts.len(), "one trace per review");
    let offline = offline_probabilities(&trained_models().v1, &texts);
    let offline_oov = offline_oov_rates(&trained_models().v1, &trained_models().v1_seen, &texts);
    assert!(
        offline_oov.iter().flatten().any(|&rate| rate > 0.0)
            && offline_oov.iter().flatten().all(|&rate| rate < 1.0),
        "texts use some features the slice never had, and many it had"
    );
    let mut seen = BTreeSet::new();
    let mut expected_alerts = 0;
    for value in &values {
        SchemaRegistry::global()
            .validate(EventSchema::Prediction, value)
            .unwrap();
        assert_eq!(value["model"]["version"], "v1");
        assert_eq!(
            value["device"], "cpu",
            "no GPU here: the device must say so"
        );
        let review_id = value["review_id"].as_str().unwrap();
        let index: usize = review_id.trim_start_matches("review-").parse().unwrap();
        assert!(seen.insert(index), "duplicate prediction for {review_id}");
        let expected = offline[index];
        let oov = value["oov_rate"].as_f64();
        assert_eq!(
            oov, offline_oov[index],
            "{review_id}: OOV rate against v1's seen features"
        );
        for (position, class) in ["negative", "neutral", "positive"].iter().enumerate() {
            let got = value["probabilities"][class].as_f64().unwrap();
            assert!(
                (got - f64::from(expected[position])).abs() <= 1e-5,
                "{review_id} {class}: served {got}, offline {}",
                expected[position]
            );
        }
        if value["label"] == "negative" && value["confidence"].as_f64().unwrap() >= ALERT_THRESHOLD
        {
            expected_alerts += 1;
        }
    }
    let max_negative = values
        .iter()
        .map(|value| value["probabilities"]["negative"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        expected_alerts > 0,
        "the slice has confident negatives (largest negative probability {max_negative}; labels {:?})",
        sentiflow_tests::count_by(&values, "label")
    );
    let alerts = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::ALERTS_NEGATIVE),
        expected_alerts,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(alerts.len(), expected_alerts);
    for message in &alerts {
        let alert: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(
            sentiflow_tests::trace_id_of(message).as_ref(),
            prediction_traces.get(alert["review_id"].as_str().unwrap()),
            "an alert is in its prediction's trace"
        );
    }
    for alert in sentiflow_tests::json_payloads(&alerts) {
        SchemaRegistry::global()
            .validate(EventSchema::NegativeAlert, &alert)
            .unwrap();
        assert!(alert["confidence"].as_f64().unwrap() >= ALERT_THRESHOLD);
        assert_eq!(alert["threshold"], ALERT_THRESHOLD);
    }
    let dead = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::REVIEWS_DLQ),
        3,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        dead.iter()
            .all(|letter| sentiflow_tests::trace_id_of(letter).is_some()),
        "dead letters carry a trace too"
    );
    let dead = sentiflow_tests::json_payloads(&dead);
    assert_eq!(
        sentiflow_tests::count_by(&dead, "error_kind"),
        BTreeMap::from([
            ("empty_payload".to_owned(), 1),
            ("invalid_json".to_owned(), 1),
            ("schema_violation".to_owned(), 1),
        ])
    );
    assert!(dead.iter().all(|letter| letter["service"] == "infer"));

    let (status, health) = sentiflow_tests::http_get(running.http_addr, "/healthz")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["info"]["device"], "cpu", "{health}");
    assert_eq!(health["info"]["model"]["version"], "v1", "{health}");
    let (_, metrics) = sentiflow_tests::http_get(running.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("sentiflow_infer_device_info{device=\"cpu\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sentiflow_infer_batch_size_rows_bucket"));

    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_holds_predictions_and_loses_none() {
    let mut broker = sentiflow_tests::OwnBroker::start().await;
    let kafka = broker.kafka.clone();
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf-outage", dir.path()).await;
    registry.promote(MODEL, "v1").await.unwrap();
    let texts = texts(400);
    let messages = review_messages(&texts, 0);
    sentiflow_tests::publish_clean(&kafka, &messages[..200]).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = sentiflow_infer::start(
        infer_config(&kafka, &redis_server.url(), "inf-outage", dir.path()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let predictions_topic = kafka.topic(topics::PREDICTIONS);
    let before = sentiflow_tests::read_exactly(
        &kafka.brokers,
        &predictions_topic,
        200,
        Duration::from_secs(90),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(before.len(), 200);

    // The broker goes away while reviews keep coming (a producer queues them).
    broker.stop().await;
    let queued = {
        let kafka = sentiflow_tests::patient(&kafka);
        let rest = messages[200..].to_vec();
        tokio::spawn(async move { sentiflow_tests::publish_clean(&kafka, &rest).await })
    };
    // Only the stream needs the broker: degraded, still ready, and predict answers.
    let http_addr = running.http_addr;
    assert!(
        sentiflow_tests::health_eventually(
            http_addr,
            "degraded",
            "kafka",
            false,
            Duration::from_secs(30)
        )
        .await,
        "degraded (kafka check failing) but still ready while the broker is down"
    );
    assert_predict_answers(http_addr).await;
    assert!(
        !running.task.is_finished(),
        "infer holds on, it does not exit"
    );

    // Back on the same port and data: every review is predicted (at least once: infer is
    // at-least-once, and a batch whose offsets were not committed is scored again).
    broker.restart_and_await(queued).await;
    let expected: BTreeSet<String> = messages.iter().map(|(key, _)| key.clone()).collect();
    // Read until every review has a prediction (a review missing after all arrived is a loss: the
    // read then fails for want of messages).
    let mut want = expected.len();
    let (predicted, total) = loop {
        let all = sentiflow_tests::read_exactly(
            &kafka.brokers,
            &predictions_topic,
            want,
            Duration::from_secs(120),
            Duration::from_secs(3),
        )
        .await;
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        for value in sentiflow_tests::json_payloads(&all) {
            let review = value["review_id"].as_str().unwrap().to_owned();
            let label = value["label"].as_str().unwrap().to_owned();
            if let Some(earlier) = labels.insert(review, label.clone()) {
                assert_eq!(earlier, label, "a review scored twice gets the same label");
            }
        }
        let predicted: BTreeSet<String> = labels.into_keys().collect();
        if predicted.len() == expected.len() {
            break (predicted, all.len());
        }
        want = all.len() + (expected.len() - predicted.len());
    };
    assert_eq!(predicted, expected, "every review predicted, none lost");
    assert!(total >= expected.len());
    assert!(
        sentiflow_tests::health_eventually(
            http_addr,
            "ready",
            "kafka",
            true,
            Duration::from_secs(60)
        )
        .await,
        "ready, not degraded, again"
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// `POST /v1/predict` answers 200 with one prediction per text (used while a dependency is down).
async fn assert_predict_answers(addr: std::net::SocketAddr) {
    let body = serde_json::json!({"texts": ["the crew was lovely", "lost my bag again"]});
    let (status, answer) =
        sentiflow_tests::http_post(addr, "/v1/predict", &serde_json::to_vec(&body).unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200, "predict answers: {answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["predictions"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_keeps_serving_and_the_next_promotion_is_followed() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    // Persistent, so the registry survives the restart as a production Redis's would.
    let mut redis_server = sentiflow_tests::persistent_redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf-redis", dir.path()).await;
    registry.promote(MODEL, "v1").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = infer_config(&kafka, &redis_server.url(), "inf-redis", dir.path());
    config.registry_poll_secs = 1;
    let running = sentiflow_infer::start(config, shutdown.clone())
        .await
        .unwrap();
    wait_serving(&running, "v1").await;
    let http_addr = running.http_addr;
    let texts = texts(300);
    let messages = review_messages(&texts, 0);
    let predictions_topic = kafka.topic(topics::PREDICTIONS);

    // Redis goes away: the registry cannot be read, but the loaded champion serves both the API and
    // the stream; the service is degraded, not out of rotation.
    redis_server.stop().unwrap();
    assert!(
        sentiflow_tests::health_eventually(
            http_addr,
            "degraded",
            "redis",
            false,
            Duration::from_secs(30)
        )
        .await,
        "degraded (redis check failing) but still ready while Redis is down"
    );
    assert_predict_answers(http_addr).await;
    sentiflow_tests::publish_clean(&kafka, &messages[..150]).await;
    let during = sentiflow_tests::read_exactly(
        &kafka.brokers,
        &predictions_topic,
        150,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(during.len(), 150, "the stream is predicted without Redis");
    assert!(
        sentiflow_tests::json_payloads(&during)
            .iter()
            .all(|prediction| prediction["model"]["version"] == "v1"),
        "by the champion loaded before the outage"
    );

    // Back, with its data: a promotion made now is followed (the registry check every second finds
    // it even if its update event raced the update consumer), and the stream goes on with v2.
    sentiflow_tests::restart_redis_and_await_ready(&mut redis_server, http_addr).await;
    // The test's own registry connection fails once on the dropped socket, then reconnects.
    assert!(
        sentiflow_tests::eventually_async(Duration::from_secs(30), || async {
            registry.get(MODEL, "v1").await.is_ok()
        })
        .await,
        "the registry answers again"
    );
    promote(&kafka, &registry, "v2").await;
    wait_serving(&running, "v2").await;
    sentiflow_tests::publish_clean(&kafka, &messages[150..]).await;
    let all = sentiflow_tests::read_exactly(
        &kafka.brokers,
        &predictions_topic,
        300,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(all.len(), 300, "every review predicted once, none lost");
    let version_of: BTreeMap<String, String> = sentiflow_tests::json_payloads(&all)
        .iter()
        .map(|prediction| {
            (
                prediction["review_id"].as_str().unwrap().to_owned(),
                prediction["model"]["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(version_of.len(), 300, "one prediction per review");
    for (index, (review_id, _)) in messages.iter().enumerate() {
        let expected = if index < 150 { "v1" } else { "v2" };
        assert_eq!(
            version_of[review_id], expected,
            "review {index}: v1 during the outage, the new champion after"
        );
    }
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_promote_then_rollback_loses_nothing() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf2", dir.path()).await;
    registry.promote(MODEL, "v1").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = sentiflow_infer::start(
        infer_config(&kafka, &redis_server.url(), "inf2", dir.path()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    wait_serving(&running, "v1").await;

    // Continuous load: 6 waves of 300 reviews; promote v2 after the second, roll back after the fourth.
    let texts = texts(1800);
    let waves: Vec<Vec<(String, Vec<u8>)>> = texts
        .chunks(300)
        .enumerate()
        .map(|(wave, chunk)| review_messages(chunk, wave * 300))
        .collect();
    for (wave, messages) in waves.iter().enumerate() {
        sentiflow_tests::publish_clean(&kafka, messages).await;
        if wave == 0 {
            // The first wave is scored by v1 on every partition before anything changes.
            let stats = running.stats.clone();
            assert!(
                sentiflow_tests::eventually(Duration::from_secs(60), || {
                    stats.consumed.load(std::sync::atomic::Ordering::Relaxed) >= 300
                })
                .await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if wave == 1 {
            promote(&kafka, &registry, "v2").await;
            wait_serving(&running, "v2").await;
        }
        if wave == 3 {
            let (from, to) = registry.rollback(MODEL).await.unwrap();
            assert_eq!((from.as_str(), to.as_str()), ("v2", "v1"));
            let record = registry.get(MODEL, "v1").await.unwrap();
            sentiflow::models::announce(
                &kafka,
                &record.update_event(
                    UpdateAction::RolledBack,
                    Some(from),
                    Some(ModelAlias::Champion),
                ),
            )
            .await
            .unwrap();
            wait_serving(&running, "v1").await;
        }
    }

    let brokers = &sentiflow_tests::kafka().brokers;
    let predictions = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::PREDICTIONS),
        texts.len(),
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await;
    let mut by_review = BTreeMap::new();
    let mut versions_by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for message in &predictions {
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let version = value["model"]["version"].as_str().unwrap().to_owned();
        assert!(version == "v1" || version == "v2", "{version}");
        by_review
            .entry(value["review_id"].as_str().unwrap().to_owned())
            .or_insert_with(Vec::new)
            .push(version.clone());
        versions_by_partition
            .entry(message.partition())
            .or_default()
            .push(version);
    }
    assert_eq!(by_review.len(), texts.len(), "every review was predicted");
    assert!(
        by_review.values().all(|versions| versions.len() == 1),
        "no review predicted twice"
    );
    let counts = by_review
        .values()
        .fold(BTreeMap::<&str, usize>::new(), |mut counts, versions| {
            *counts.entry(versions[0].as_str()).or_default() += 1;
            counts
        });
    assert!(counts.get("v2").copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get("v1").copied().unwrap_or(0) >= 300, "{counts:?}");
    // Per partition the versions form at most three runs (v1, v2, v1): once a partition saw the new
    // version, the old one never reappears until the next swap.
    for (partition, versions) in &versions_by_partition {
        let mut runs: Vec<&str> = Vec::new();
        for version in versions {
            if runs.last() != Some(&version.as_str()) {
                runs.push(version);
            }
        }
        assert!(
            runs.len() <= 3 && runs.first() == Some(&"v1"),
            "partition {partition}: versions interleave: {runs:?}"
        );
    }

    // The swap acknowledgements are on models.updates.
    let updates = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::MODELS_UPDATES),
        4,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let serving: Vec<String> = sentiflow_tests::json_payloads(&updates)
        .into_iter()
        .filter(|update| update["action"] == "serving")
        .map(|update| update["model"]["version"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serving,
        ["v1", "v2", "v1"],
        "one acknowledgement per swap (the first for the start-up load)"
    );

    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_artifact_is_refused_and_the_champion_keeps_serving() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf3", dir.path()).await;
    registry.promote(MODEL, "v1").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = sentiflow_infer::start(
        infer_config(&kafka, &redis_server.url(), "inf3", dir.path()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    wait_serving(&running, "v1").await;

    // Flip bytes inside v2's artifact after registration, then promote it.
    let path = dir.path().join("models").join(MODEL).join("v2/model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    promote(&kafka, &registry, "v2").await;

    let brokers = &sentiflow_tests::kafka().brokers;
    let updates = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::MODELS_UPDATES),
        3, // serving v1 (start-up), promoted v2 (the announcement), load_failed v2
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let failed = sentiflow_tests::json_payloads(&updates)
        .into_iter()
        .find(|update| update["action"] == "load_failed")
        .expect("a load_failed event");
    SchemaRegistry::global()
        .validate(EventSchema::ModelUpdate, &failed)
        .unwrap();
    assert_eq!(failed["model"]["version"], "v2");
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains("checksum") && detail.contains("still serving v1"),
        "{detail}"
    );

    // Serving continues on v1.
    let texts = texts(50);
    sentiflow_tests::publish_clean(&kafka, &review_messages(&texts, 0)).await;
    let predictions = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::PREDICTIONS),
        texts.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    let values = sentiflow_tests::json_payloads(&predictions);
    assert_eq!(values.len(), texts.len());
    assert!(values.iter().all(|value| value["model"]["version"] == "v1"));
    let (status, _) = sentiflow_tests::http_get(running.http_addr, "/readyz")
        .await
        .unwrap();
    assert_eq!(status, 200, "still ready on the old model");
    let (_, metrics) = sentiflow_tests::http_get(running.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("sentiflow_infer_model_load_failures_total{error_kind=\"checksum\"}"),
        "{metrics}"
    );

    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_predict_waits_for_a_model_and_rejects_bad_input_with_json() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf4", dir.path()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = infer_config(&kafka, &redis_server.url(), "inf4", dir.path());
    config.http_max_concurrent = 2;
    // The promotion below may be published before infer's update consumer is assigned; the
    // registry check then finds it (every second here instead of 30).
    config.registry_poll_secs = 1;
    const API_KEY: &str = "infer-test-key-0123456789";
    let keys_file = dir.path().join("api-keys");
    std::fs::write(&keys_file, format!("{API_KEY}\n")).unwrap();
    config.api_auth.api_keys_file = Some(keys_file);
    // A rate no request below comes near (a token a microsecond); a burst under --http-max-texts
    // (8), so a batch of 7 texts is more than the key may ever send at once.
    config.api_auth.api_key_rate = Some(1_000_000.0);
    config.api_auth.api_key_burst = Some(6);
    let running = sentiflow_infer::start(config, shutdown.clone())
        .await
        .unwrap();
    let addr = running.http_addr;
    let post_as = |authorization: &'static str, body: Vec<u8>| async move {
        let headers = [("Authorization", authorization)];
        let headers = if authorization.is_empty() {
            &headers[..0]
        } else {
            &headers[..]
        };
        let (status, _, body) =
            sentiflow_tests::http_post_with_headers(addr, "/v1/predict", headers, &body)
                .await
                .unwrap();
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("status {status}: body is not JSON ({error}): {body}"));
        (status, json)
    };
    let post = |body: Vec<u8>| post_as("Bearer infer-test-key-0123456789", body);

    // Without the key (or with another), 401 before anything else, even before a model is served.
    let (status, body) = post_as("", br#"{"texts": ["hello"]}"#.to_vec()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_api_key"))
    );
    let (status, body) = post_as("Bearer not-the-key-0123456789", b"{}".to_vec()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_api_key"))
    );

    // No champion yet: not ready, and predict says why.
    let (status, body) = post(br#"{"texts": ["hello"]}"#.to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("no_model")));
    let (status, _) = sentiflow_tests::http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 503);

    promote(&kafka, &registry, "v1").await;
    wait_serving(&running, "v1").await;
    let (status, body) = post(
        serde_json::to_vec(&serde_json::json!({"texts": [
            "@united worst flight ever, lost my bag and no help at all",
            "thank you @JetBlue, great crew and smooth flight!",
            ""
        ]}))
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"]["version"], "v1");
    assert_eq!(body["device"], "cpu");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    assert_eq!(predictions[0]["label"], "negative", "{body}");
    assert_eq!(predictions[1]["label"], "positive", "{body}");
    for prediction in predictions {
        let sum: f64 = ["negative", "neutral", "positive"]
            .iter()
            .map(|class| prediction["probabilities"][class].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-4);
    }

    let too_many = serde_json::to_vec(&serde_json::json!({"texts": vec!["a"; 9]})).unwrap();
    let over_burst = serde_json::to_vec(&serde_json::json!({"texts": vec!["a"; 7]})).unwrap();
    let whole_burst = serde_json::to_vec(&serde_json::json!({"texts": vec!["a"; 6]})).unwrap();
    // A millisecond refills the bucket, whatever came before (and after).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (status, body) = post(whole_burst).await;
    assert_eq!(status, 200, "the key's whole burst in one request: {body}");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let too_long = serde_json::to_vec(&serde_json::json!({"texts": ["x".repeat(501)]})).unwrap();
    for (body, want_status, want_kind) in [
        (b"not json".to_vec(), 400, "invalid_json"),
        (br#"{"texts": []}"#.to_vec(), 422, "empty_texts"),
        (br#"{"texts": "one"}"#.to_vec(), 422, "invalid_request"),
        (br#"{"text": ["one"]}"#.to_vec(), 422, "invalid_request"),
        (br#"{"texts": [1, 2]}"#.to_vec(), 422, "invalid_request"),
        (too_many, 422, "too_many_texts"),
        // Counted before any element is read as a text (elements of any type).
        (
            br#"{"texts": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}"#.to_vec(),
            422,
            "too_many_texts",
        ),
        (
            br#"{"other": [0, 0, 0], "texts": ["a"]}"#.to_vec(),
            422,
            "invalid_request",
        ),
        // A lone surrogate escape: skipping the body does not check it, reading the text does.
        (br#"{"texts": ["\ud800"]}"#.to_vec(), 400, "invalid_json"),
        (over_burst, 413, "over_key_burst"),
        (too_long, 422, "text_too_long"),
        (vec![b' '; 1 << 20], 413, "body_too_large"),
    ] {
        let (status, body) = post(body).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_kind)),
            "{body}"
        );
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty())
        );
    }

    let (status, openapi) = sentiflow_tests::http_get(addr, "/openapi.json")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let openapi: serde_json::Value = serde_json::from_str(&openapi).unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/v1/predict"]["post"].is_object());
    assert_eq!(
        openapi["components"]["schemas"]["PredictRequest"]["properties"]["texts"]["maxItems"],
        8
    );
    let responses = &openapi["paths"]["/v1/predict"]["post"]["responses"];
    assert!(responses["429"]["headers"]["Retry-After"].is_object());
    assert!(
        responses["413"]["description"]
            .as_str()
            .is_some_and(|text| text.contains("over_key_burst"))
    );
    let (status, _) = sentiflow_tests::http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 200);

    // Two requests whose bodies have not arrived hold both in-flight slots: a third is shed with
    // 503 `overloaded` before its body is read; once one completes, requests are served again.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = br#"{"texts": ["late body"]}"#;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "POST /v1/predict HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    assert!(
        sentiflow_tests::metric_line_eventually(
            addr,
            "sentiflow_infer_http_in_flight_requests 2",
            Duration::from_secs(30)
        )
        .await,
        "the two stalled requests hold both slots"
    );
    let (status, shed) = post(br#"{"texts": ["hello"]}"#.to_vec()).await;
    assert_eq!(
        (status, shed["error"].as_str()),
        (503, Some("overloaded")),
        "{shed}"
    );
    // The key is checked before a slot is taken: a request without one is told so, not shed.
    let (status, refused) = post_as("", br#"{"texts": ["hello"]}"#.to_vec()).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (401, Some("missing_api_key"))
    );
    let mut first = stalled.remove(0);
    first.write_all(body).await.unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let (status, json) = post(br#"{"texts": ["hello again"]}"#.to_vec()).await;
    assert_eq!(status, 200, "a freed slot serves again: {json}");
    // The other one never sends its body: it is answered 408 and its slot comes back.
    let mut second = stalled.remove(0);
    let mut answer = String::new();
    tokio::time::timeout(
        sentiflow_infer::http::BODY_READ_TIMEOUT + Duration::from_secs(20),
        second.read_to_string(&mut answer),
    )
    .await
    .expect("answered")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.0 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        sentiflow_tests::metric_line_eventually(
            addr,
            "sentiflow_infer_http_in_flight_requests 0",
            Duration::from_secs(5)
        )
        .await,
        "every slot given back"
    );
    let (_, metrics) = sentiflow_tests::http_get(addr, "/metrics").await.unwrap();
    assert!(
        metrics.contains("sentiflow_infer_http_errors_total{error_kind=\"overloaded\"}"),
        "{metrics}"
    );

    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predict_requests_waiting_for_the_session_share_a_run_and_each_gets_its_own_rows() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf-batch", dir.path()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = infer_config(&kafka, &redis_server.url(), "inf-batch", dir.path());
    // One session: a run scoring, one more preparing its inputs; requests beyond wait and merge.
    config.workers = 1;
    config.http_max_concurrent = 64;
    config.http_max_texts = 256;
    config.http_max_text_bytes = 5_000;
    let running = sentiflow_infer::start(config, shutdown.clone())
        .await
        .unwrap();
    let addr = running.http_addr;
    promote(&kafka, &registry, "v1").await;
    wait_serving(&running, "v1").await;
    let post = |texts: Vec<String>| async move {
        let body = serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap();
        let (status, body) = sentiflow_tests::http_post(addr, "/v1/predict", &body)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200, "{json}");
        let rows = json["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|prediction| {
                ["negative", "neutral", "positive"]
                    .map(|class| prediction["probabilities"][class].as_f64().unwrap() as f32)
            })
            .collect::<Vec<_>>();
        let run_requests = json["run_requests"].as_u64().unwrap();
        assert!(
            json["run_texts"].as_u64().unwrap() >= rows.len() as u64,
            "{json}"
        );
        (rows, run_requests)
    };

    // A long request (256 texts of ~4,000 bytes: featurizing them takes a while) takes the session;
    // of the small requests sent meanwhile, one takes the other slot and waits for the session, and
    // the rest wait in line and are scored together.
    let long_texts: Vec<String> = texts(256)
        .iter()
        .map(|text| {
            text.repeat(5_000 / text.len().max(1))
                .chars()
                .take(4_000)
                .collect()
        })
        .collect();
    let long = tokio::spawn(post(long_texts.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let small_texts = texts(40);
    let small: Vec<_> = small_texts
        .chunks(2)
        .map(|pair| tokio::spawn(post(pair.to_vec())))
        .collect();
    let (long_rows, _) = long.await.unwrap();
    let mut small_rows = Vec::new();
    let mut runs = 0.0;
    let mut merged = 0;
    for task in small {
        let (rows, run_requests) = task.await.unwrap();
        small_rows.extend(rows);
        // A request's share of its run: the shares of a run's requests add up to one run.
        runs += 1.0 / run_requests as f64;
        merged += usize::from(run_requests > 1);
    }

    // Each request got its own texts' rows, in order, as if scored alone.
    let v1 = &trained_models().v1;
    assert_eq!((small_rows.len(), long_rows.len()), (40, 256));
    for (got, want) in small_rows
        .iter()
        .zip(offline_probabilities(v1, &small_texts))
        .chain(long_rows.iter().zip(offline_probabilities(v1, &long_texts)))
    {
        for (got, want) in got.iter().zip(want) {
            assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
        }
    }
    assert!(
        merged > 1 && runs < 20.0,
        "the 20 small requests shared runs: {merged} merged, {runs:.1} runs"
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cuda_without_a_gpu_refuses_to_start() {
    let kafka = KafkaArgs::local(
        sentiflow_tests::kafka().brokers.clone(),
        sentiflow_tests::unique_prefix(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = infer_config(&kafka, "redis://127.0.0.1:1", "inf5", dir.path());
    config.device = DeviceArg::Cuda;
    let error = sentiflow_infer::start(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("no GPU on this machine");
    let message = error.to_string();
    assert!(
        message.contains("--device cuda was requested but CUDA cannot be used")
            && message.contains("CUDA execution provider is not enabled in this build"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_scoring_scores_the_sample_with_the_challenger_and_serves_the_champion() {
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_models(&redis_server.url(), "inf6", dir.path()).await;
    registry.promote(MODEL, "v1").await.unwrap();
    registry.set_challenger(MODEL, "v2").await.unwrap();
    let mut config = infer_config(&kafka, &redis_server.url(), "inf6", dir.path());
    config.shadow_fraction = 0.5;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = sentiflow_infer::start(config, shutdown.clone())
        .await
        .unwrap();
    wait_serving(&running, "v1").await;
    let health = running.health.clone();
    assert!(
        sentiflow_tests::eventually(Duration::from_secs(30), || {
            health.snapshot()["info"]["shadow_model"]["version"] == "v2"
        })
        .await,
        "challenger loaded: {}",
        running.health.snapshot()
    );

    let texts = texts(200);
    let messages = review_messages(&texts, 0);
    let sampled: BTreeSet<String> = messages
        .iter()
        .map(|(review_id, _)| review_id.clone())
        .filter(|review_id| sentiflow_infer::score::in_shadow_sample(review_id, 0.5))
        .collect();
    assert!(
        (60..=140).contains(&sampled.len()),
        "about half: {}",
        sampled.len()
    );
    sentiflow_tests::publish_clean(&kafka, &messages).await;
    let brokers = &sentiflow_tests::kafka().brokers;
    let served_messages = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::PREDICTIONS),
        texts.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    let served = sentiflow_tests::json_payloads(&served_messages);
    assert_eq!(served.len(), texts.len());
    assert!(
        served.iter().all(|value| value["model"]["version"] == "v1"),
        "the champion serves every review"
    );
    let shadow_messages = sentiflow_tests::read_exactly(
        brokers,
        &kafka.topic(topics::PREDICTIONS_SHADOW),
        sampled.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let shadow = sentiflow_tests::json_payloads(&shadow_messages);
    // A shadow prediction is in the trace of its review, like the served one.
    let served_traces: BTreeMap<String, Option<String>> = served_messages
        .iter()
        .zip(&served)
        .map(|(message, value)| {
            (
                value["review_id"].as_str().unwrap().to_owned(),
                sentiflow_tests::trace_id_of(message),
            )
        })
        .collect();
    for (message, value) in shadow_messages.iter().zip(&shadow) {
        let trace = sentiflow_tests::trace_id_of(message);
        assert!(trace.is_some());
        assert_eq!(trace, served_traces[value["review_id"].as_str().unwrap()]);
    }
    let shadowed: BTreeSet<String> = shadow
        .iter()
        .map(|value| value["review_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shadowed, sampled, "exactly the sampled reviews, once each");
    for value in &shadow {
        SchemaRegistry::global()
            .validate(EventSchema::Prediction, value)
            .unwrap();
        assert_eq!(value["model"]["version"], "v2");
    }
    let (_, metrics) = sentiflow_tests::http_get(running.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("sentiflow_infer_shadow_predictions_total{"),
        "{metrics}"
    );

    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[test]
fn a_seen_features_file_that_does_not_fit_the_model_is_refused() {
    let models = trained_models();
    let env = sentiflow::train::ort_environment().unwrap();
    let metadata = LoadedModel::load(&env, &models.v1, DeviceRequest::Cpu, 1)
        .unwrap()
        .metadata()
        .clone();
    let load = || sentiflow::bench::infer::serving_model(&models.v1, &metadata, 8).unwrap();
    let served = load().with_seen_features(Some(&models.v1_seen)).unwrap();
    assert!(served.reports_oov());
    assert!(!load().with_seen_features(None).unwrap().reports_oov());
    for bad in [&b"garbage"[..], &models.v1_seen[..models.v1_seen.len() - 8]] {
        let error = load().with_seen_features(Some(bad)).unwrap_err();
        assert!(
            error.to_string().contains(SEEN_FEATURES_FILE),
            "a clear refusal naming the file: {error}"
        );
    }
}
