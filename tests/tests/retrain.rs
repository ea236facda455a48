//! The closed loop against a real Kafka broker, Redis and ONNX Runtime: curated rows of the airline corpus,
//! a registered champion, and `retrain.requests` → snapshot → train → gate → `promoted` (infer hot-swaps)
//! or `rejected` (the champion keeps serving), exactly one announcement per request id even when the
//! request is published twice or the trainer restarts; malformed requests → DLQ; cuda → a failed outcome;
//! a retrain's snapshot holds every review published before the request (curation catches up first).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sentiflow::corpus::CorpusFormat;
use sentiflow::local::RedisServer;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, KafkaOption, RedisArgs, TelemetryArgs};
use sentiflow_common::events::{
    CleanReview, DeviceWanted, Event, LabelFeedback, LabelInfo, LabelProvenance, ModelAlias,
    ModelFamily, ModelRef, RawReview, Redactions, RequestedBy, RetrainRequest, SCHEMA_VERSION,
    SourceCoordinate, UpdateAction, new_event_id,
};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::store::RedisStore;
use sentiflow_infer::InferConfig;
use sentiflow_infer::config::DeviceArg;
use sentiflow_model::featurize::FeaturizerConfig;
use sentiflow_model::train::TrainConfig;
use sentiflow_tests::{
    count_by, eventually, http_get, json_payloads, kafka_with_topics, read_exactly, redis,
};
use sentiflow_trainer::dataset::SnapshotStore;
use sentiflow_trainer::dataset::{ClassBalance, LabelWeights};
use sentiflow_trainer::gate::GatePolicy;
use sentiflow_trainer::pipeline::{self, TrainDevice, TrainRequest};
use sentiflow_trainer::registry::Registry;
use sentiflow_trainer::{OutcomeKind, TrainerConfig};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "sentiment-hashed";
/// Rows of the airline corpus the champion is trained on; the curated stream starts after them.
const CHAMPION_ROWS: usize = 2500;
/// Rows published to `reviews.clean` and curated by the trainer.
const CURATED_ROWS: usize = 1500;
/// Long enough for a debug build on a loaded machine; a failure guard, not a speed assertion.
const WAIT: Duration = Duration::from_secs(300);

/// A gate every challenger passes, for tests about the promotion path.
const EVERY_CHALLENGER_PASSES: GatePolicy = GatePolicy {
    epsilon: 1.0,
    max_recall_drop: 1.0,
};

/// Registry of one test: artifacts under `data_dir/models`, metadata under `prefix` in Redis.
fn registry(redis_url: &str, prefix: &str, data_dir: &Path) -> Registry {
    let store = RedisStore::connect_lazy(&RedisArgs::local(redis_url, prefix)).unwrap();
    Registry::new(data_dir.join("models"), store)
}

/// Airline rows as raw reviews, skipping `skip`.
fn airline(skip: usize, count: usize) -> Vec<RawReview> {
    sentiflow::corpus::read_records(
        &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
        CorpusFormat::Airline,
        Some(skip + count),
    )
    .unwrap()
    .into_iter()
    .skip(skip)
    .map(|record| serde_json::from_slice(&record.payload).unwrap())
    .collect()
}

/// Trains a small champion on the first corpus rows (its card is the recipe retrains reuse) and
/// promotes it: `v1`.
async fn register_champion(registry: &Registry, data_dir: &Path) {
    let store = SnapshotStore::new(data_dir.join("champion-snapshots"));
    let slice = data_dir.join("champion.jsonl");
    let lines: Vec<String> = airline(0, CHAMPION_ROWS)
        .iter()
        .map(|review| serde_json::to_string(review).unwrap())
        .collect();
    std::fs::write(&slice, lines.join("\n")).unwrap();
    let manifest = sentiflow::dataset::import(&store, &[slice], CorpusFormat::Events).unwrap();
    let ort = sentiflow::train::ort_environment().expect("run infra/setup.sh");
    let outcome = pipeline::train_and_register(
        &store,
        registry,
        sentiflow::train::lexicon().unwrap(),
        &ort,
        &TrainRequest {
            snapshot_id: manifest.snapshot_id,
            model_name: MODEL.to_owned(),
            featurizer: FeaturizerConfig {
                buckets: 1 << 15,
                ..FeaturizerConfig::default()
            },
            train: TrainConfig {
                seed: 5,
                epochs: 4,
                dim: 16,
                ..TrainConfig::default()
            },
            burn: Default::default(),
            device: TrainDevice::Cpu,
            gate: GatePolicy::default(),
            // Trained offline with the per-source balance; the retrain loop balances globally.
            label_weights: LabelWeights {
                class_balance: ClassBalance::Source,
                ..LabelWeights::default()
            },
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome.record.version, "v1");
    registry.promote(MODEL, "v1").await.unwrap();
}

/// One test's topics, Redis, data directory and registry (its Redis keys under `prefix`).
struct Bed {
    kafka: KafkaArgs,
    redis_server: RedisServer,
    data: tempfile::TempDir,
    prefix: String,
    registry: Registry,
}

/// A fresh [`Bed`] whose registry has the champion `v1` ([`register_champion`]).
async fn bed_with_champion() -> Bed {
    bed_with_champion_on(redis()).await
}

/// [`bed_with_champion`] on a Redis of the caller's.
async fn bed_with_champion_on(redis_server: RedisServer) -> Bed {
    let kafka = kafka_with_topics().await;
    let data = tempfile::tempdir().unwrap();
    let prefix = format!("{}-redis", kafka.topic_prefix);
    let registry = registry(&redis_server.url(), &prefix, data.path());
    register_champion(&registry, data.path()).await;
    Bed {
        kafka,
        redis_server,
        data,
        prefix,
        registry,
    }
}

/// Labelled clean reviews from corpus rows, review times one minute apart from 2026-01-01.
fn clean_reviews(rows: &[RawReview]) -> Vec<CleanReview> {
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap();
    rows.iter()
        .enumerate()
        .map(|(index, raw)| {
            let review = CleanReview {
                schema_version: SCHEMA_VERSION,
                event_id: new_event_id(),
                event_time: Utc::now(),
                source_event_id: raw.event_id.clone(),
                review_id: format!("air-{index:05}"),
                source: "airline".to_owned(),
                author_hash: format!("{index:064x}"),
                text: raw.text.clone(),
                text_hash: format!("{:064x}", index + 1_000_000),
                created_at: start + chrono::Duration::minutes(index as i64),
                lang: "en".to_owned(),
                lang_confidence: 0.9,
                lang_allowed: true,
                label: raw.label.map(|label| LabelInfo {
                    label,
                    provenance: LabelProvenance::SourceLabel,
                    confidence: 1.0,
                }),
                redactions: Redactions::default(),
                normalizer_version: sentiflow_model::text::NORMALIZER_VERSION.to_owned(),
                source_offset: SourceCoordinate {
                    topic: "reviews.raw".to_owned(),
                    partition: 0,
                    offset: index as i64,
                },
                metadata: None,
                rating: None,
            };
            review.validate().expect("valid clean review");
            review
        })
        .collect()
}

fn retrain_request(request_id: &str, device: DeviceWanted) -> RetrainRequest {
    let request = RetrainRequest {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: Utc::now(),
        request_id: request_id.to_owned(),
        reason: "test: drift confirmed".to_owned(),
        requested_by: RequestedBy::Operator,
        report_id: None,
        model: ModelRef {
            name: MODEL.to_owned(),
            version: "v1".to_owned(),
            family: ModelFamily::Hashed,
        },
        family: ModelFamily::Hashed,
        data_from: None,
        data_to: None,
        device_wanted: device,
    };
    request.validate().expect("valid retrain request");
    request
}

/// Publishes keyed payloads in order, awaits every acknowledgement, returns (partition, offset) of each.
async fn publish(
    kafka: &KafkaArgs,
    topic: &str,
    messages: &[(String, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let producer = ResilientProducer::new(kafka, "test").unwrap();
    let topic = kafka.topic(topic);
    let mut acks = Vec::new();
    for (key, payload) in messages {
        acks.push(
            producer
                .enqueue(&topic, Some(key.as_bytes()), payload, None)
                .await
                .unwrap(),
        );
    }
    let mut positions = Vec::new();
    for ack in acks {
        positions.push(await_delivery(ack).await.unwrap());
    }
    positions
}

/// Publishes keyed payloads in one committed transaction: each partition written then ends in a
/// commit marker, which consumers step over but never receive as a message.
async fn publish_in_transaction(kafka: &KafkaArgs, topic: &str, messages: &[(String, Vec<u8>)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
    let producer: FutureProducer = kafka
        .client_config()
        .set(
            "transactional.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    producer.begin_transaction().unwrap();
    let topic = kafka.topic(topic);
    for (key, payload) in messages {
        producer
            .send(FutureRecord::to(&topic).key(key).payload(payload), timeout)
            .await
            .unwrap();
    }
    producer.commit_transaction(timeout).unwrap();
}

/// `kafka` with extra librdkafka properties for every client built from it.
fn with_options(kafka: &KafkaArgs, options: &[(&str, &str)]) -> KafkaArgs {
    let mut kafka = kafka.clone();
    kafka
        .options
        .extend(options.iter().map(|(key, value)| KafkaOption {
            key: (*key).to_owned(),
            value: (*value).to_owned(),
        }));
    kafka
}

fn encoded<E: Event>(events: &[E]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .map(|event| (event.key().to_owned(), event.to_json_vec().unwrap()))
        .collect()
}

fn trainer_config(
    kafka: &KafkaArgs,
    redis_url: &str,
    prefix: &str,
    data_dir: &Path,
    gate: GatePolicy,
) -> TrainerConfig {
    let mut config = TrainerConfig::local(
        kafka.clone(),
        RedisArgs::local(redis_url, prefix),
        data_dir.to_owned(),
    );
    config.segment_max_age_ms = 200;
    config.gate = gate;
    config
}

/// Starts a trainer, publishes the curated rows and waits until all of them are in closed segments.
async fn curated_trainer(
    config: TrainerConfig,
    kafka: &KafkaArgs,
    shutdown: CancellationToken,
) -> sentiflow_trainer::Running {
    let trainer = sentiflow_trainer::start(config, shutdown).await.unwrap();
    let reviews = clean_reviews(&airline(CHAMPION_ROWS, CURATED_ROWS));
    publish(kafka, topics::REVIEWS_CLEAN, &encoded(&reviews)).await;
    let stats = trainer.stats.clone();
    assert!(
        eventually(WAIT, || stats.snapshot().durable >= CURATED_ROWS as u64).await,
        "curation did not make every row durable: {:?}",
        stats.snapshot()
    );
    trainer
}

/// The `models.updates` events of `version` by action (reads until `expected` events in all arrived).
async fn updates_by_action(
    kafka: &KafkaArgs,
    expected: usize,
    version: &str,
) -> BTreeMap<String, usize> {
    let messages = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::MODELS_UPDATES),
        expected,
        WAIT,
        Duration::from_secs(2),
    )
    .await;
    let events: Vec<serde_json::Value> = json_payloads(&messages)
        .into_iter()
        .filter(|event| event["model"]["version"] == version)
        .collect();
    count_by(&events, "action")
}

/// The committed offset of `group` on one partition of `topic`.
fn committed_offset(brokers: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    match committed.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retrain_request_promotes_once_infer_swaps_and_bad_requests_are_handled() {
    let Bed {
        kafka,
        redis_server,
        data,
        prefix,
        registry,
    } = bed_with_champion().await;

    // This test is about the promotion path.
    let gate = EVERY_CHALLENGER_PASSES;
    let shutdown = CancellationToken::new();
    let trainer = curated_trainer(
        trainer_config(&kafka, &redis_server.url(), &prefix, data.path(), gate),
        &kafka,
        shutdown.clone(),
    )
    .await;
    let infer = sentiflow_infer::start(
        InferConfig {
            kafka: kafka.clone(),
            redis: RedisArgs::local(&redis_server.url(), &prefix),
            telemetry: TelemetryArgs::ephemeral(),
            api_auth: Default::default(),
            group_id: format!("infer-{}", uuid::Uuid::new_v4().simple()),
            data_dir: data.path().to_owned(),
            model_name: MODEL.to_owned(),
            device: DeviceArg::Cpu,
            ort_dylib: None,
            workers: 1,
            intra_threads: 1,
            max_batch: 64,
            batch_wait_ms: 5,
            max_queued_batches: 3,
            pause_after_ms: 500,
            alert_threshold: 0.8,
            registry_poll_secs: 3600,
            shadow_fraction: 0.0,
            http_max_texts: 8,
            http_max_text_bytes: 500,
            http_max_concurrent: 16,
            http_batch_texts: 256,
            encoder_model_name: "sentiment-encoder".to_owned(),
            family: sentiflow_infer::config::FamilyArg::Auto,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let slot = infer.slot.clone();
    assert!(
        eventually(WAIT, || slot
            .current()
            .is_some_and(|model| model.model_ref().version == "v1"))
        .await,
        "infer serves the champion v1"
    );

    // A malformed request, the request, the same request again (a new event id), a cuda request.
    let mut malformed = serde_json::to_value(retrain_request("bad", DeviceWanted::Auto)).unwrap();
    malformed.as_object_mut().unwrap().remove("reason");
    let request = retrain_request("req-promote", DeviceWanted::Auto);
    let again = RetrainRequest {
        event_id: new_event_id(),
        ..request.clone()
    };
    let cuda = retrain_request("req-cuda", DeviceWanted::Cuda);
    let mut messages = vec![("v1".to_owned(), serde_json::to_vec(&malformed).unwrap())];
    messages.extend(encoded(&[request, again, cuda]));
    publish(&kafka, topics::RETRAIN_REQUESTS, &messages).await;

    let stats = trainer.stats.clone();
    let handled = |s: sentiflow_trainer::StatsSnapshot| {
        s.retrain_dead_lettered
            + s.retrains_promoted
            + s.retrains_rejected
            + s.retrains_failed
            + s.retrains_duplicate
    };
    assert!(
        eventually(WAIT, || handled(stats.snapshot()) >= 4).await,
        "every request handled: {:?}",
        stats.snapshot()
    );
    let totals = stats.snapshot();
    assert_eq!(totals.retrain_requests, 4, "{totals:?}");
    assert_eq!(totals.retrain_dead_lettered, 1, "{totals:?}");
    assert_eq!(totals.retrains_promoted, 1, "{totals:?}");
    assert_eq!(totals.retrains_duplicate, 1, "{totals:?}");
    assert_eq!(totals.retrains_failed, 1, "{totals:?}");
    assert_eq!(totals.retrains_rejected, 0, "{totals:?}");

    // The registry: v2 is the champion, with its gate decision recorded.
    assert_eq!(
        registry
            .alias(MODEL, ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some("v2")
    );
    let v2 = registry.get(MODEL, "v2").await.unwrap();
    let gate_decision = v2.gate.clone().expect("gate decision recorded");
    assert!(gate_decision.passed, "{gate_decision:?}");
    assert!(
        gate_decision.champion_macro_f1.is_some(),
        "v1 was scored on the same rows"
    );
    assert!(
        registry.get(MODEL, "v3").await.is_err(),
        "one model per request"
    );

    // Exactly one `promoted` (and one `registered`) for v2, however often the request arrived.
    let actions = updates_by_action(&kafka, 2, "v2").await;
    assert_eq!(actions.get("promoted"), Some(&1), "{actions:?}");
    assert_eq!(actions.get("registered"), Some(&1), "{actions:?}");
    assert_eq!(actions.get("rejected"), None, "{actions:?}");

    // The outcomes in Redis.
    let outcomes = trainer.retrain_outcomes.clone().expect("retrain loop on");
    let promoted = outcomes
        .get("req-promote")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(promoted.outcome, OutcomeKind::Promoted);
    assert!(promoted.announced);
    assert_eq!(promoted.version.as_deref(), Some("v2"));
    assert_eq!(promoted.previous_champion.as_deref(), Some("v1"));
    assert_eq!(promoted.data_range, "all curated data");
    assert!(promoted.recipe.contains("v1"), "{}", promoted.recipe);
    // The trainer runs with the default `auto`: a retrain balances over the whole set, whatever the
    // champion did (it learns for the stream its gate judges it on).
    let card = |version: &str| -> serde_json::Value {
        let path = data
            .path()
            .join(format!("models/{MODEL}/{version}/card.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert_eq!(card("v1")["label_weights"]["class_balance"], "source");
    assert_eq!(card("v2")["label_weights"]["class_balance"], "global");
    let snapshot_rows = promoted.snapshot_rows.expect("snapshot");
    let labelled = airline(CHAMPION_ROWS, CURATED_ROWS)
        .iter()
        .filter(|raw| raw.label.is_some())
        .count() as u64;
    assert_eq!(
        snapshot_rows, labelled,
        "the snapshot holds every curated labelled row"
    );
    let failed = outcomes.get("req-cuda").await.unwrap().expect("recorded");
    assert_eq!(failed.outcome, OutcomeKind::Failed);
    assert!(failed.message.contains("cuda"), "{}", failed.message);
    assert!(failed.version.is_none() && failed.events.is_empty());
    assert!(outcomes.get("bad").await.unwrap().is_none());

    // The malformed request is in the DLQ with its reason.
    let letters = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_DLQ),
        1,
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    let letters = json_payloads(&letters);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["source"]["topic"],
        kafka.topic(topics::RETRAIN_REQUESTS)
    );
    assert_eq!(letters[0]["service"], "trainer");
    assert!(
        letters[0]["reason"].as_str().unwrap().contains("reason"),
        "{}",
        letters[0]["reason"]
    );

    // Infer hot-swapped to the new champion.
    assert!(
        eventually(WAIT, || slot
            .current()
            .is_some_and(|model| model.model_ref().version == "v2"))
        .await,
        "infer swapped to v2"
    );

    // Metrics and health say what happened.
    let (status, metrics) = http_get(trainer.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "sentiflow_trainer_retrains_total{outcome=\"promoted\"}",
        "sentiflow_trainer_retrains_total{outcome=\"duplicate\"}",
        "sentiflow_trainer_retrains_total{outcome=\"failed\"}",
        "sentiflow_trainer_last_retrain_timestamp_seconds",
        "sentiflow_trainer_retrain_seconds_bucket",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    let (_, health) = http_get(trainer.http_addr, "/healthz").await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let last = health
        .pointer("/info/last_retrain")
        .expect("last retrain in /healthz");
    assert_eq!(last["request_id"], "req-cuda", "{last}");
    assert_eq!(last["outcome"], "failed", "{last}");

    shutdown.cancel();
    trainer.task.await.unwrap().unwrap();
    infer.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_holds_a_retrain_request_which_is_then_decided_once() {
    // Persistent, as a production Redis is: the registry and the outcome log survive the restart.
    let Bed {
        kafka,
        mut redis_server,
        data,
        prefix,
        registry,
    } = bed_with_champion_on(sentiflow_tests::persistent_redis()).await;
    let gate = EVERY_CHALLENGER_PASSES;
    let shutdown = CancellationToken::new();
    let trainer = curated_trainer(
        trainer_config(&kafka, &redis_server.url(), &prefix, data.path(), gate),
        &kafka,
        shutdown.clone(),
    )
    .await;
    let stats = trainer.stats.clone();
    let decided = |s: sentiflow_trainer::StatsSnapshot| {
        s.retrains_promoted + s.retrains_rejected + s.retrains_failed + s.retrains_duplicate
    };

    // Redis goes away; a retrain request and more reviews arrive. Curation needs only the broker and
    // the disk; the request waits (retrying) for the registry and the outcome log.
    redis_server.stop().unwrap();
    let request = retrain_request("req-redis-outage", DeviceWanted::Cpu);
    publish(
        &kafka,
        topics::RETRAIN_REQUESTS,
        &encoded(std::slice::from_ref(&request)),
    )
    .await;
    let more = clean_reviews(&airline(CHAMPION_ROWS + CURATED_ROWS, 300));
    publish(&kafka, topics::REVIEWS_CLEAN, &encoded(&more)).await;
    assert!(
        sentiflow_tests::health_eventually(
            trainer.http_addr,
            "not_ready",
            "redis",
            false,
            Duration::from_secs(30)
        )
        .await,
        "/readyz 503 while Redis is down"
    );
    assert!(
        eventually(WAIT, || stats.snapshot().durable
            >= (CURATED_ROWS + 300) as u64)
        .await,
        "curation goes on without Redis: {:?}",
        stats.snapshot()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        decided(stats.snapshot()),
        0,
        "nothing decided while the registry cannot be read: {:?}",
        stats.snapshot()
    );

    // Back with its data: the request is trained, gated and promoted, once.
    redis_server.restart().unwrap();
    assert!(
        eventually(WAIT, || decided(stats.snapshot()) >= 1).await,
        "decided once Redis is back: {:?}",
        stats.snapshot()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let totals = stats.snapshot();
    assert_eq!(
        (totals.retrains_promoted, decided(totals)),
        (1, 1),
        "{totals:?}"
    );
    let actions = updates_by_action(&kafka, 2, "v2").await;
    assert_eq!(actions.get("registered"), Some(&1), "{actions:?}");
    assert_eq!(actions.get("promoted"), Some(&1), "{actions:?}");
    // The test's registry connection fails once on the dropped socket, then reconnects.
    assert!(
        sentiflow_tests::eventually_async(Duration::from_secs(30), || async {
            registry.alias(MODEL, ModelAlias::Champion).await.is_ok()
        })
        .await
    );
    assert_eq!(
        registry
            .alias(MODEL, ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some("v2")
    );
    let outcome = trainer
        .retrain_outcomes
        .clone()
        .expect("retrain loop on")
        .get("req-redis-outage")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(outcome.outcome, OutcomeKind::Promoted);
    assert!(outcome.announced);
    assert!(
        sentiflow_tests::health_eventually(
            trainer.http_addr,
            "ready",
            "redis",
            true,
            Duration::from_secs(60)
        )
        .await,
        "ready again"
    );
    shutdown.cancel();
    trainer.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gate_refusal_keeps_the_champion_and_a_restart_does_not_announce_again() {
    let Bed {
        kafka,
        redis_server,
        data,
        prefix,
        registry,
    } = bed_with_champion().await;

    // A gate no challenger can pass: macro-F1 would have to beat the champion's by 1.0.
    let gate = GatePolicy {
        epsilon: -1.0,
        max_recall_drop: 0.05,
    };
    let config = trainer_config(&kafka, &redis_server.url(), &prefix, data.path(), gate);
    let shutdown = CancellationToken::new();
    let trainer = curated_trainer(config.clone(), &kafka, shutdown.clone()).await;

    // A time range that holds no curated review: the loop falls back to all curated data.
    let request = RetrainRequest {
        data_from: Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).single().unwrap()),
        data_to: None,
        ..retrain_request("req-reject", DeviceWanted::Cpu)
    };
    let positions = publish(
        &kafka,
        topics::RETRAIN_REQUESTS,
        &encoded(std::slice::from_ref(&request)),
    )
    .await;
    let stats = trainer.stats.clone();
    assert!(
        eventually(WAIT, || stats.snapshot().retrains_rejected >= 1).await,
        "rejected: {:?}",
        stats.snapshot()
    );

    assert_eq!(
        registry
            .alias(MODEL, ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some("v1"),
        "the champion keeps serving"
    );
    assert_eq!(
        registry
            .alias(MODEL, ModelAlias::Challenger)
            .await
            .unwrap()
            .as_deref(),
        Some("v2"),
        "the rejected version is the challenger, as `sentiflow train` leaves it"
    );
    let outcomes = trainer.retrain_outcomes.clone().expect("retrain loop on");
    let rejected = outcomes.get("req-reject").await.unwrap().expect("recorded");
    assert_eq!(rejected.outcome, OutcomeKind::Rejected);
    assert!(rejected.announced);
    assert!(
        rejected
            .data_range
            .starts_with("all curated data (the requested range"),
        "{}",
        rejected.data_range
    );
    let decision = rejected.gate.clone().expect("gate numbers");
    assert!(!decision.passed);
    assert!(decision.champion_macro_f1.is_some());
    assert!(rejected.metrics.contains_key("macro_f1"));
    let actions = updates_by_action(&kafka, 2, "v2").await;
    assert_eq!(actions.get("rejected"), Some(&1), "{actions:?}");
    assert_eq!(actions.get("promoted"), None, "{actions:?}");
    let events = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::MODELS_UPDATES),
        2,
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    let rejected_event = json_payloads(&events)
        .into_iter()
        .find(|event| event["action"] == "rejected")
        .unwrap();
    assert_eq!(rejected_event["alias"], "challenger");
    assert_eq!(rejected_event["gate"]["passed"], false);
    assert_eq!(
        rejected_event["gate"]["challenger_macro_f1"].as_f64(),
        Some(decision.challenger_macro_f1)
    );

    // Graceful stop: the request's offset is committed.
    shutdown.cancel();
    trainer.task.await.unwrap().unwrap();
    let (partition, offset) = positions[0];
    assert_eq!(
        committed_offset(
            &kafka.brokers,
            &config.retrain_group_id,
            &kafka.topic(topics::RETRAIN_REQUESTS),
            partition
        ),
        Some(offset + 1)
    );

    // A restarted trainer gets the same request again (a redelivery): a duplicate, nothing announced.
    let shutdown = CancellationToken::new();
    let trainer = sentiflow_trainer::start(config, shutdown.clone())
        .await
        .unwrap();
    let again = RetrainRequest {
        event_id: new_event_id(),
        ..request
    };
    publish(&kafka, topics::RETRAIN_REQUESTS, &encoded(&[again])).await;
    let stats = trainer.stats.clone();
    assert!(
        eventually(WAIT, || stats.snapshot().retrains_duplicate >= 1).await,
        "duplicate: {:?}",
        stats.snapshot()
    );
    let totals = stats.snapshot();
    assert_eq!(
        totals.retrain_requests, 1,
        "the committed request is not read again: {totals:?}"
    );
    assert_eq!(
        totals.retrains_rejected + totals.retrains_promoted,
        0,
        "{totals:?}"
    );
    let actions = updates_by_action(&kafka, 2, "v2").await;
    assert_eq!(actions.get("rejected"), Some(&1), "{actions:?}");
    assert!(
        registry.get(MODEL, "v3").await.is_err(),
        "nothing retrained"
    );

    // A recorded, unannounced outcome whose version left the registry (removed by hand, or by a
    // prune that did not see the outcome) cannot be applied: it is finished as `failed`, not retried
    // forever, and the champion stays.
    let vanished = sentiflow_trainer::RetrainOutcome {
        request_id: "req-vanished".to_owned(),
        outcome: OutcomeKind::Promoted,
        version: Some("v9".to_owned()),
        events: Vec::new(),
        applied: false,
        announced: false,
        ..rejected.clone()
    };
    outcomes.put(&vanished).await.unwrap();
    publish(
        &kafka,
        topics::RETRAIN_REQUESTS,
        &encoded(&[retrain_request("req-vanished", DeviceWanted::Cpu)]),
    )
    .await;
    assert!(
        eventually(WAIT, || stats.snapshot().retrains_failed >= 1).await,
        "failed: {:?}",
        stats.snapshot()
    );
    let finished = outcomes.get("req-vanished").await.unwrap().unwrap();
    assert_eq!(finished.outcome, OutcomeKind::Failed);
    assert!(finished.announced);
    assert!(
        finished.message.contains("removed from the registry"),
        "{}",
        finished.message
    );
    assert_eq!(
        registry
            .alias(MODEL, ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some("v1")
    );

    // A recorded, unannounced promotion gated against a champion that no longer serves (an
    // operator promoted or rolled back while it trained, then the trainer crashed before applying
    // it): kept as the challenger, the champion stays, and its event says why.
    let mut promoted_event = rejected
        .events
        .iter()
        .find(|event| event.action == UpdateAction::Rejected)
        .cloned()
        .expect("the rejected event of v2");
    promoted_event.event_id = new_event_id();
    promoted_event.action = UpdateAction::Promoted;
    promoted_event.alias = Some(ModelAlias::Champion);
    promoted_event.previous_version = Some("v0".to_owned());
    let stale = sentiflow_trainer::RetrainOutcome {
        request_id: "req-stale".to_owned(),
        outcome: OutcomeKind::Promoted,
        version: Some("v2".to_owned()),
        previous_champion: Some("v0".to_owned()),
        events: vec![promoted_event.clone()],
        applied: false,
        announced: false,
        ..rejected.clone()
    };
    outcomes.put(&stale).await.unwrap();
    publish(
        &kafka,
        topics::RETRAIN_REQUESTS,
        &encoded(&[retrain_request("req-stale", DeviceWanted::Cpu)]),
    )
    .await;
    assert!(
        eventually(WAIT, || stats.snapshot().retrains_rejected >= 1).await,
        "kept as challenger: {:?}",
        stats.snapshot()
    );
    let finished = outcomes.get("req-stale").await.unwrap().unwrap();
    assert_eq!(finished.outcome, OutcomeKind::Rejected);
    assert!(finished.applied && finished.announced);
    assert!(
        finished.message.contains("the champion became v1"),
        "{}",
        finished.message
    );
    for (alias, version) in [(ModelAlias::Champion, "v1"), (ModelAlias::Challenger, "v2")] {
        assert_eq!(
            registry.alias(MODEL, alias).await.unwrap().as_deref(),
            Some(version)
        );
    }
    let events = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::MODELS_UPDATES),
        3,
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    let announced = json_payloads(&events)
        .into_iter()
        .find(|event| event["event_id"] == promoted_event.event_id.as_str())
        .expect("the outcome's event, same id");
    assert_eq!(announced["action"], "rejected");
    assert_eq!(announced["alias"], "challenger");
    assert!(
        announced["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("kept as challenger")),
        "{announced}"
    );
    shutdown.cancel();
    trainer.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retrain_snapshot_holds_every_review_published_before_the_request() {
    let Bed {
        kafka,
        redis_server,
        data,
        prefix,
        registry: _,
    } = bed_with_champion().await;

    // No segment closes on its own: only the retrain's flush makes the reviews durable, so whatever
    // the snapshot holds, curation read before answering it.
    let mut config = trainer_config(
        &kafka,
        &redis_server.url(),
        &prefix,
        data.path(),
        EVERY_CHALLENGER_PASSES,
    );
    config.segment_max_age_ms = 3_600_000;
    config.segment_max_messages = 1_000_000;
    // One message per fetched batch (the reviews go out one per batch, below): curation takes
    // seconds to read the 6,000 reviews.
    config.kafka = with_options(&kafka, &[("max.partition.fetch.bytes", "1")]);
    config.retrain_catch_up_ms = 120_000;

    // Human labels of labelled reviews (the row count stays that of the labelled reviews), from a
    // transactional producer: each partition it wrote ends in a commit marker, never delivered as a
    // message, which a catch-up counting delivered messages only would wait on until its deadline.
    let rows = airline(CHAMPION_ROWS, 4 * CURATED_ROWS);
    let reviews = clean_reviews(&rows);
    let labels: Vec<LabelFeedback> = reviews
        .iter()
        .filter_map(|review| review.label.as_ref().map(|label| (review, label.label)))
        .take(20)
        .map(|(review, label)| {
            let feedback = LabelFeedback {
                schema_version: SCHEMA_VERSION,
                event_id: new_event_id(),
                event_time: Utc::now(),
                review_id: review.review_id.clone(),
                label,
                reviewer: "tester".to_owned(),
                note: None,
            };
            feedback.validate().expect("valid feedback");
            feedback
        })
        .collect();
    publish_in_transaction(&kafka, topics::LABELS_FEEDBACK, &encoded(&labels)).await;
    // Reviews, labels and the request are all on the broker before the trainer starts; curation,
    // fetching one message per partition at a time, is still reading when the request is handled
    // (without the catch-up, snapshots held a few hundred of the 6,000).
    publish(
        &with_options(&kafka, &[("linger.ms", "0"), ("batch.num.messages", "1")]),
        topics::REVIEWS_CLEAN,
        &encoded(&reviews),
    )
    .await;
    publish(
        &kafka,
        topics::RETRAIN_REQUESTS,
        &encoded(&[retrain_request("req-catch-up", DeviceWanted::Cpu)]),
    )
    .await;
    let shutdown = CancellationToken::new();
    let trainer = sentiflow_trainer::start(config, shutdown.clone())
        .await
        .unwrap();
    let stats = trainer.stats.clone();
    assert!(
        eventually(WAIT, || {
            let totals = stats.snapshot();
            totals.retrains_promoted + totals.retrains_rejected + totals.retrains_failed >= 1
        })
        .await,
        "handled: {:?}",
        stats.snapshot()
    );
    let totals = stats.snapshot();
    assert_eq!(
        totals.retrains_promoted, 1,
        "a snapshot missing rows may lack a class and fail: {totals:?}"
    );
    assert!(totals.catch_ups >= 1, "curation read on: {totals:?}");
    assert_eq!(totals.catch_up_timeouts, 0, "{totals:?}");
    assert_eq!(totals.feedback, labels.len() as u64, "{totals:?}");
    let outcome = trainer
        .retrain_outcomes
        .clone()
        .expect("retrain loop on")
        .get("req-catch-up")
        .await
        .unwrap()
        .expect("recorded");
    let labelled = rows.iter().filter(|raw| raw.label.is_some()).count() as u64;
    assert_eq!(
        outcome.snapshot_rows,
        Some(labelled),
        "the snapshot holds every labelled review published before the request"
    );
    assert!(
        outcome.curation.starts_with(
            "read on to where the topics ended when the retrain started (6020 messages durable"
        ),
        "{}",
        outcome.curation
    );
    shutdown.cancel();
    trainer.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encoder_family_request_trains_gates_and_promotes_the_encoder_name() {
    const ENCODER: &str = "sentiment-encoder";
    let Bed {
        kafka,
        redis_server,
        data,
        prefix,
        registry,
    } = bed_with_champion().await;
    let shutdown = CancellationToken::new();
    let trainer = curated_trainer(
        trainer_config(
            &kafka,
            &redis_server.url(),
            &prefix,
            data.path(),
            GatePolicy::default(),
        ),
        &kafka,
        shutdown.clone(),
    )
    .await;

    // What drift sends when infer serves the encoder family.
    let encoder_request = |request_id: &str, device| {
        let mut request = retrain_request(request_id, device);
        request.model = ModelRef {
            name: ENCODER.to_owned(),
            version: "v1".to_owned(),
            family: ModelFamily::Encoder,
        };
        request.family = ModelFamily::Encoder;
        request
    };
    let no_gpu = !sentiflow_burn::probe::cuda().is_available();
    let mut requests = vec![encoder_request("req-encoder", DeviceWanted::Auto)];
    if no_gpu {
        requests.push(encoder_request("req-encoder-cuda", DeviceWanted::Cuda));
    }
    publish(&kafka, topics::RETRAIN_REQUESTS, &encoded(&requests)).await;
    let outcomes = trainer.retrain_outcomes.clone().expect("retrain loop on");
    let mut outcome = None;
    let deadline = std::time::Instant::now() + WAIT;
    while outcome.is_none() && std::time::Instant::now() < deadline {
        outcome = outcomes.get("req-encoder").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outcome = outcome.expect("the encoder request was handled");
    assert_eq!(
        outcome.outcome,
        OutcomeKind::Promoted,
        "{}",
        outcome.message
    );
    assert_eq!(outcome.model_name, ENCODER);
    if no_gpu {
        assert!(
            outcome.recipe.contains("frozen int8 encoder")
                && outcome.recipe.contains("no usable CUDA"),
            "{}",
            outcome.recipe
        );
    }
    let version = outcome.version.clone().expect("registered");
    let record = registry.get(ENCODER, &version).await.unwrap();
    assert_eq!(record.family, ModelFamily::Encoder);
    assert_eq!(
        registry
            .alias(ENCODER, ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some(version.as_str())
    );
    assert_eq!(
        registry
            .alias(MODEL, ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some("v1"),
        "the hashed family's champion is untouched"
    );
    if no_gpu {
        let mut failed = None;
        while failed.is_none() && std::time::Instant::now() < deadline {
            failed = outcomes.get("req-encoder-cuda").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let failed = failed.expect("the cuda request was handled");
        assert_eq!(failed.outcome, OutcomeKind::Failed);
        assert!(
            failed.message.contains("no usable CUDA GPU"),
            "{}",
            failed.message
        );
    }

    // A blended champion (encoder + hashed model in one graph) is retrained as a blend with its
    // member's weight and featurizer.
    if no_gpu {
        let blended = sentiflow_trainer::encoder::train_and_register_encoder(
            &SnapshotStore::new(data.path().join("snapshots")),
            &registry,
            &sentiflow::train::ort_environment().unwrap(),
            &sentiflow_trainer::encoder::EncoderFiles::from_cache(
                &sentiflow_common::cache::CacheDir::from_env().unwrap(),
            )
            .unwrap(),
            &sentiflow_trainer::encoder::EncoderTrainRequest {
                snapshot_id: record.snapshot_id.clone(),
                model_name: ENCODER.to_owned(),
                max_length: sentiflow_model::encoder::DEFAULT_MAX_LENGTH,
                head: sentiflow_model::encoder::HeadConfig::default(),
                device: TrainDevice::Auto,
                gate: GatePolicy::default(),
                label_weights: LabelWeights::default(),
                threads: 2,
                embedding_cache: Some(data.path().join("embeddings")),
                blend: Some(sentiflow_trainer::encoder::BlendRequest {
                    weight: 0.4,
                    featurizer: FeaturizerConfig {
                        buckets: 1 << 15,
                        ..FeaturizerConfig::default()
                    },
                    train: TrainConfig {
                        dim: 16,
                        ..TrainConfig::default()
                    },
                }),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            blended.embedding.rows, 0,
            "the retrain cached the embeddings under the encoder part's config"
        );
        registry
            .promote(ENCODER, &blended.outcome.record.version)
            .await
            .unwrap();
        publish(
            &kafka,
            topics::RETRAIN_REQUESTS,
            &encoded(&[encoder_request("req-blend", DeviceWanted::Auto)]),
        )
        .await;
        let mut again = None;
        while again.is_none() && std::time::Instant::now() < deadline + WAIT {
            again = outcomes.get("req-blend").await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let again = again.expect("the request after the blend was handled");
        assert!(
            again.recipe.contains("blended with a hashed model × 0.4"),
            "{}",
            again.recipe
        );
        let version = again.version.clone().expect("registered");
        let onnx = registry
            .load_verified(&registry.get(ENCODER, &version).await.unwrap())
            .await
            .unwrap();
        let summary = sentiflow_model::onnx::verify_structure(&onnx).unwrap();
        let (member, buckets) = summary.hashed_member.expect("retrained as a blend");
        assert_eq!((member.weight, buckets), (0.4, 1 << 15));
        // The member's trainer settings come from the champion's card, not the defaults.
        let card: sentiflow_trainer::encoder::EncoderModelCard = serde_json::from_slice(
            &std::fs::read(
                data.path()
                    .join(format!("models/{ENCODER}/{version}/card.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            card.hashed_member.expect("a blend's card").train_config.dim,
            16
        );
    }
    shutdown.cancel();
    trainer.task.await.unwrap().unwrap();
}
