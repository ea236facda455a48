//! Ingest against a real Kafka broker and a real Redis: exact counts for valid, duplicate and malformed
//! input; no loss across a graceful restart or a crash; a Redis outage holds the stream instead of
//! dropping it while `POST /v1/reviews` still accepts (degraded, not out of rotation).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sentiflow::status::{ServiceName, StatusArgs};
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, RedisArgs, Secret, TelemetryArgs};
use sentiflow_common::events::{
    DeadLetter, MAX_DEAD_LETTER_KEY_BYTES, MAX_DEAD_LETTER_VALUE_BYTES, RawReview,
};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::schema::{EventSchema, SchemaRegistry};
use sentiflow_common::trace;
use sentiflow_ingest::IngestConfig;
use sentiflow_ingest::config::LangPolicy;
use sentiflow_tests::{
    eventually, http_get, json_payloads, kafka_with_topics, metric_growth, metric_value,
    read_exactly, redis,
};
use tokio_util::sync::CancellationToken;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn ingest_config(kafka: &KafkaArgs, redis_url: &str, max_batch: usize) -> IngestConfig {
    IngestConfig {
        kafka: kafka.clone(),
        redis: RedisArgs::local(redis_url, format!("{}-redis", kafka.topic_prefix)),
        telemetry: TelemetryArgs::ephemeral(),
        api_auth: Default::default(),
        group_id: format!("{}-ingest", kafka.topic_prefix),
        max_payload_bytes: 65_536,
        max_batch,
        batch_wait_ms: 10,
        dedupe_ttl_secs: 3600,
        dedupe_text: true,
        author_hash_key: Secret::new("integration-test-author-key"),
        lang_allow: vec!["en".to_owned()],
        lang_policy: LangPolicy::Mark,
        weak_label_threshold: 0.5,
        lexicon_path: None,
        http_max_reviews: 500,
        http_max_concurrent: 16,
    }
}

/// `count` real airline tweets as raw reviews with distinct normalised texts (so text dedupe keeps all).
fn real_reviews(count: usize, skip: usize) -> Vec<RawReview> {
    let records = sentiflow::corpus::read_records(
        &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
        sentiflow::corpus::CorpusFormat::Airline,
        None,
    )
    .expect("airline corpus");
    let mut seen = BTreeSet::new();
    records
        .into_iter()
        .map(|record| serde_json::from_slice::<RawReview>(&record.payload).expect("raw review"))
        .filter(|review| {
            let cleaned = sentiflow_model::text::clean(&review.text);
            cleaned
                .text
                .split_whitespace()
                .filter(|word| *word != "@user" && *word != "<url>")
                .count()
                >= 3
                && seen.insert(sentiflow_model::text::text_fingerprint(&cleaned.text))
        })
        .skip(skip)
        .take(count)
        .collect()
}

async fn publish(producer: &ResilientProducer, topic: &str, key: &str, payload: Option<&[u8]>) {
    let future = match payload {
        Some(payload) => producer
            .enqueue(topic, Some(key.as_bytes()), payload, None)
            .await
            .expect("enqueue"),
        None => producer
            .current()
            .send_result(FutureRecord::<[u8], [u8]>::to(topic).key(key.as_bytes()))
            .map_err(|(error, _)| error)
            .expect("enqueue tombstone"),
    };
    await_delivery(future).await.expect("delivered");
}

/// Reads `reviews.clean` until `expected` reviews arrived (then `settle` for extras): the messages and
/// their review ids.
async fn clean_reviews(
    kafka: &KafkaArgs,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> (Vec<rdkafka::message::OwnedMessage>, BTreeSet<String>) {
    let clean = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_CLEAN),
        expected,
        timeout,
        settle,
    )
    .await;
    let ids = json_payloads(&clean)
        .iter()
        .map(|value| value["review_id"].as_str().unwrap().to_owned())
        .collect();
    (clean, ids)
}

/// The review ids of `reviews`.
fn review_ids(reviews: &[RawReview]) -> BTreeSet<String> {
    reviews
        .iter()
        .map(|review| review.review_id.clone())
        .collect()
}

/// Publishes in order, awaiting every acknowledgement at the end (the idempotent producer keeps order).
async fn publish_reviews(producer: &ResilientProducer, topic: &str, reviews: &[RawReview]) {
    let mut acks = Vec::with_capacity(reviews.len());
    for review in reviews {
        acks.push(
            producer
                .enqueue(
                    topic,
                    Some(review.review_id.as_bytes()),
                    &serde_json::to_vec(review).unwrap(),
                    None,
                )
                .await
                .expect("enqueue"),
        );
    }
    for ack in acks {
        await_delivery(ack).await.expect("delivered");
    }
}

/// A traceparent put on raw events (the W3C specification's example).
const TRACED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `headers` with one more header whose name is any bytes: rdkafka's own API only takes `&str`
/// names, other clients send what they like.
#[allow(unsafe_code)]
fn with_raw_header(headers: OwnedHeaders, name: &[u8], value: &[u8]) -> OwnedHeaders {
    use rdkafka::bindings::{rd_kafka_header_add, rd_kafka_headers_t, rd_kafka_resp_err_t};
    let list: *mut rd_kafka_headers_t = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rd_kafka_headers_t>()
        .cast_mut();
    // SAFETY: the list is alive and owned by `headers` (rdkafka's `BorrowedHeaders` is a view
    // placed at its address); the sizes are the slices' own.
    let added = unsafe {
        rd_kafka_header_add(
            list,
            name.as_ptr().cast(),
            isize::try_from(name.len()).expect("short name"),
            value.as_ptr().cast(),
            isize::try_from(value.len()).expect("short value"),
        )
    };
    assert_eq!(added, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    headers
}

/// Bytes of padding after `bad-<index>~` in the key of a malformed input that wants a huge key.
const HUGE_KEY_PADDING: usize = 700_000;

/// The key of malformed input `index`: `bad-<index>`, padded to about 700 KB when `huge`.
fn malformed_key(index: usize, huge: bool) -> String {
    if huge {
        format!("bad-{index}~{}", "k".repeat(HUGE_KEY_PADDING))
    } else {
        format!("bad-{index}")
    }
}

/// (error kind, payload, whether its key is huge) of every malformed input.
fn malformed_inputs(template: &RawReview) -> Vec<(&'static str, Option<Vec<u8>>, bool)> {
    let mut value = serde_json::to_value(template).unwrap();
    value["event_id"] = serde_json::json!("malformed-base");
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut copy = value.clone();
        edit(&mut copy);
        Some(serde_json::to_vec(&copy).unwrap())
    };
    let mut invalid_utf8 = b"{\"text\": \"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    invalid_utf8.extend_from_slice(b"\"}");
    vec![
        ("invalid_json", Some(b"{this is not json".to_vec()), false),
        ("invalid_json", Some(b"   ".to_vec()), false),
        ("invalid_utf8", Some(invalid_utf8), false),
        (
            "schema_violation",
            with(&|v| {
                v.as_object_mut().unwrap().remove("text");
            }),
            false,
        ),
        (
            "schema_violation",
            with(&|v| v["rating"] = serde_json::json!("five")),
            false,
        ),
        (
            "schema_violation",
            with(&|v| v["text"] = serde_json::json!("x".repeat(10_001))),
            false,
        ),
        (
            "schema_violation",
            with(&|v| v["label"] = serde_json::json!("ecstatic")),
            false,
        ),
        (
            "schema_violation",
            with(&|v| v["surprise"] = serde_json::json!(true)),
            false,
        ),
        (
            "schema_violation",
            with(&|v| v["created_at"] = serde_json::json!("yesterday")),
            false,
        ),
        (
            "unknown_schema_version",
            with(&|v| v["schema_version"] = serde_json::json!(2)),
            false,
        ),
        (
            "oversize",
            with(&|v| v["metadata"] = serde_json::json!({"blob": "y".repeat(70_000)})),
            false,
        ),
        // Its base64 would pass the producer's 1 MB limit: the dead letter keeps a prefix instead
        // of being refused and retried forever (which stopped the whole instance).
        (
            "oversize",
            with(&|v| v["metadata"] = serde_json::json!({"blob": "z".repeat(800_000)})),
            false,
        ),
        // A 700 KB key and a 250 KB value: together under the broker's limit, but a dead letter
        // keyed by the whole original key plus its payload would not be.
        (
            "oversize",
            with(&|v| v["metadata"] = serde_json::json!({"blob": "w".repeat(250_000)})),
            true,
        ),
        (
            "empty_after_cleaning",
            with(&|v| v["text"] = serde_json::json!("@someone https://t.co/xyz !!!")),
            false,
        ),
        ("empty_payload", None, false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valid_duplicate_and_malformed_events_are_counted_exactly() {
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let shutdown = CancellationToken::new();
    let running = sentiflow_ingest::start(
        ingest_config(&kafka, &redis_server.url(), 64),
        shutdown.clone(),
    )
    .await
    .expect("ingest starts");
    let producer = ResilientProducer::new(&kafka, "test").unwrap();
    let raw_topic = kafka.topic(topics::REVIEWS_RAW);

    let valid = real_reviews(300, 0);
    let malformed = malformed_inputs(&valid[0]);
    // Duplicates: 20 exact re-sends (same event id) and 20 retweets (new event id, same text).
    let resent: Vec<RawReview> = valid[..20].to_vec();
    let retweets: Vec<RawReview> = valid[20..40]
        .iter()
        .map(|review| RawReview {
            event_id: format!("{}-rt", review.event_id),
            review_id: format!("{}-rt", review.review_id),
            ..review.clone()
        })
        .collect();

    // The first valid and the first malformed event carry a header whose name is not UTF-8
    // (rdkafka's header iteration panics on it: ingest crashed on such a message after every
    // restart) next to a traceparent, which must still be continued.
    for (key, payload) in [
        (
            valid[0].review_id.clone(),
            serde_json::to_vec(&valid[0]).unwrap(),
        ),
        (
            malformed_key(0, malformed[0].2),
            malformed[0].1.clone().unwrap(),
        ),
    ] {
        let headers = with_raw_header(
            OwnedHeaders::new().insert(Header {
                key: trace::TRACEPARENT,
                value: Some(TRACED.as_bytes()),
            }),
            b"\xff\xfe",
            b"opaque",
        );
        let ack = producer
            .enqueue(&raw_topic, Some(key.as_bytes()), &payload, Some(headers))
            .await
            .expect("enqueue");
        await_delivery(ack).await.expect("delivered");
    }
    publish_reviews(&producer, &raw_topic, &valid[1..150]).await;
    for (index, (_, payload, huge_key)) in malformed.iter().enumerate().skip(1) {
        publish(
            &producer,
            &raw_topic,
            &malformed_key(index, *huge_key),
            payload.as_deref(),
        )
        .await;
    }
    publish_reviews(&producer, &raw_topic, &resent).await;
    publish_reviews(&producer, &raw_topic, &valid[150..]).await;
    // Retweets carry other review ids, so they land on other partitions, whose relative order Kafka does
    // not define: publish them once the originals are through, so "original first" is well defined.
    assert!(
        eventually(Duration::from_secs(60), || running.stats.snapshot().1
            == valid.len() as u64)
        .await,
        "originals processed"
    );
    publish_reviews(&producer, &raw_topic, &retweets).await;

    let clean = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_CLEAN),
        valid.len(),
        Duration::from_secs(60),
        Duration::from_secs(3),
    )
    .await;
    let dlq = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_DLQ),
        malformed.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        clean.len(),
        valid.len(),
        "exactly the valid events, no duplicates"
    );
    assert_eq!(dlq.len(), malformed.len(), "exactly the malformed events");
    let traced_trace_id = &TRACED[3..35];
    let continued = |messages: &[rdkafka::message::OwnedMessage], key: &str| {
        let message = messages
            .iter()
            .find(|message| message.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} published"));
        let (context, _) = trace::of_message(message).expect("a traceparent");
        assert_eq!(
            context.trace_id(),
            traced_trace_id,
            "{key} continues its trace"
        );
    };
    continued(&clean, &valid[0].review_id);
    continued(&dlq, &malformed_key(0, malformed[0].2));

    let registry = SchemaRegistry::global();
    let clean_values = json_payloads(&clean);
    for value in &clean_values {
        registry
            .validate(EventSchema::CleanReview, value)
            .unwrap_or_else(|violation| panic!("{violation}: {value}"));
        assert!(
            !value.to_string().contains("\"author\""),
            "raw author must not be forwarded"
        );
    }
    let expected_ids: BTreeSet<String> = valid
        .iter()
        .map(|review| review.review_id.clone())
        .collect();
    let got_ids: BTreeSet<String> = clean_values
        .iter()
        .map(|value| value["review_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got_ids, expected_ids);
    assert!(
        clean_values
            .iter()
            .all(|value| value["label"]["provenance"] == "source_label"),
        "airline rows carry their label"
    );

    let mut expected_kinds = BTreeMap::new();
    for (kind, _, _) in &malformed {
        *expected_kinds.entry((*kind).to_owned()).or_insert(0usize) += 1;
    }
    let mut got_kinds = BTreeMap::new();
    for (message, value) in dlq.iter().zip(json_payloads(&dlq)) {
        registry
            .validate(EventSchema::DeadLetter, &value)
            .unwrap_or_else(|violation| panic!("{violation}: {value}"));
        let letter: DeadLetter = serde_json::from_value(value).unwrap();
        assert!(!letter.reason.is_empty());
        assert_eq!(letter.service, "ingest");
        assert_eq!(letter.source.topic, raw_topic);
        let key = std::str::from_utf8(message.key().unwrap()).unwrap();
        let index: usize = key
            .trim_start_matches("bad-")
            .split('~')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let original_key = malformed_key(index, malformed[index].2);
        assert_eq!(
            key.as_bytes(),
            &original_key.as_bytes()[..original_key.len().min(MAX_DEAD_LETTER_KEY_BYTES)],
            "the dead letter is keyed by the original key, cut to 16 KiB"
        );
        assert_eq!(
            letter.error_kind, malformed[index].0,
            "kind of bad-{index}: {}",
            letter.reason
        );
        let original = malformed[index].1.clone().unwrap_or_default();
        assert_eq!(letter.original_size_bytes, original.len() as u64);
        let kept = original.len().min(MAX_DEAD_LETTER_VALUE_BYTES);
        assert_eq!(
            letter.original_value().unwrap(),
            original[..kept],
            "original bytes kept (a prefix beyond 256 KiB)"
        );
        assert_eq!(
            letter.original_key().unwrap().unwrap(),
            original_key.as_bytes()[..original_key.len().min(MAX_DEAD_LETTER_KEY_BYTES)]
        );
        let cut = kept < original.len() || original_key.len() > MAX_DEAD_LETTER_KEY_BYTES;
        assert_eq!(letter.original_truncated, cut, "bad-{index} flagged as cut");
        assert_eq!(
            letter.original_sha256,
            cut.then(|| sha256_hex(&original)),
            "the whole value's sha256 when cut"
        );
        *got_kinds.entry(letter.error_kind.clone()).or_insert(0usize) += 1;
    }
    assert_eq!(got_kinds, expected_kinds);

    let total = 300 + 40 + malformed.len() as u64;
    assert!(
        eventually(Duration::from_secs(30), || running.stats.snapshot().0
            == total)
        .await,
        "all consumed"
    );
    let (consumed, clean_count, dead, duplicates) = running.stats.snapshot();
    assert_eq!(
        (clean_count, dead, duplicates),
        (300, malformed.len() as u64, 40)
    );
    assert_eq!(consumed, 300 + 40 + malformed.len() as u64);

    let (status, metrics) = http_get(running.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for needle in [
        "sentiflow_ingest_events_in_total",
        "sentiflow_ingest_dlq_total{error_kind=\"invalid_json\"}",
        "sentiflow_ingest_dedupe_hits_total{kind=\"text\"}",
        "sentiflow_ingest_processing_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// Stops ingest mid-stream (gracefully, then by aborting its task as a crash would) and restarts it:
/// every valid event arrives; a graceful stop adds no duplicate, a crash only at-least-once ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mid_stream_loses_nothing() {
    for graceful in [true, false] {
        let kafka = kafka_with_topics().await;
        let redis_server = redis();
        let producer = ResilientProducer::new(&kafka, "test").unwrap();
        let reviews = real_reviews(1500, 0);
        publish_reviews(&producer, &kafka.topic(topics::REVIEWS_RAW), &reviews).await;

        let shutdown = CancellationToken::new();
        let first = sentiflow_ingest::start(
            ingest_config(&kafka, &redis_server.url(), 25),
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert!(
            eventually(Duration::from_secs(60), || first.stats.snapshot().0 >= 300).await,
            "first run made progress"
        );
        if graceful {
            shutdown.cancel();
            first.task.await.unwrap().unwrap();
        } else {
            first.task.abort();
            let _ = first.task.await;
        }
        let stopped_at = first.stats.snapshot().0;
        assert!(
            stopped_at < reviews.len() as u64,
            "stopped mid-stream ({stopped_at})"
        );

        let shutdown = CancellationToken::new();
        let second = sentiflow_ingest::start(
            ingest_config(&kafka, &redis_server.url(), 200),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let (clean, ids) = clean_reviews(
            &kafka,
            reviews.len(),
            Duration::from_secs(90),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(
            ids.len(),
            reviews.len(),
            "every valid event arrived (graceful: {graceful})"
        );
        if graceful {
            assert_eq!(
                clean.len(),
                reviews.len(),
                "a graceful stop commits: no duplicates"
            );
        }
        shutdown.cancel();
        second.task.await.unwrap().unwrap();
    }
}

/// Ingest (batches of 50) on `kafka` and `redis_url`, ready, with the first `processed` of `reviews`
/// published and cleaned: the state an outage test starts from.
async fn ingest_after(
    kafka: &KafkaArgs,
    redis_url: &str,
    reviews: &[RawReview],
    processed: usize,
) -> (
    sentiflow_ingest::Running,
    CancellationToken,
    ResilientProducer,
) {
    let shutdown = CancellationToken::new();
    let running = sentiflow_ingest::start(ingest_config(kafka, redis_url, 50), shutdown.clone())
        .await
        .unwrap();
    let producer = ResilientProducer::new(&sentiflow_tests::patient(kafka), "test").unwrap();
    publish_reviews(
        &producer,
        &kafka.topic(topics::REVIEWS_RAW),
        &reviews[..processed],
    )
    .await;
    assert!(
        eventually(Duration::from_secs(60), || running.stats.snapshot().1
            == processed as u64)
        .await,
        "the first {processed} processed"
    );
    assert!(eventually(Duration::from_secs(30), || running.health.is_ready()).await);
    (running, shutdown, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_holds_the_stream_and_keeps_accepting_reviews() {
    let kafka = kafka_with_topics().await;
    let mut redis_server = redis();
    let reviews = real_reviews(420, 0);
    let (running, shutdown, producer) =
        ingest_after(&kafka, &redis_server.url(), &reviews[..400], 200).await;
    let raw_topic = kafka.topic(topics::REVIEWS_RAW);
    let addr = running.http_addr;

    redis_server.stop().unwrap();
    publish_reviews(&producer, &raw_topic, &reviews[200..400]).await;
    // Degraded, not out of rotation: `POST /v1/reviews` needs only the broker.
    assert!(
        sentiflow_tests::health_eventually(
            addr,
            "degraded",
            "redis",
            false,
            Duration::from_secs(10)
        )
        .await,
        "degraded (redis check failing) but still ready while Redis is down"
    );
    // `sentiflow status` says the same, with exit status 1 (degraded).
    let report = sentiflow::status::report(&status_args(addr, &[]))
        .await
        .unwrap();
    let table = report.table();
    assert_eq!(report.exit_status, 1, "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("ingest   degraded")
                && line.contains("redis (optional) failing since")),
        "{table}"
    );
    let body = serde_json::to_vec(&reviews[400..]).unwrap();
    let (status, answer) = sentiflow_tests::http_post(addr, "/v1/reviews", &body)
        .await
        .unwrap();
    assert_eq!(
        status, 202,
        "reviews are accepted while Redis is down: {answer}"
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["accepted"], 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running.stats.snapshot().1,
        200,
        "nothing passes unchecked while Redis is down"
    );

    redis_server.restart().unwrap();
    let clean = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_CLEAN),
        420,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        clean.len(),
        420,
        "nothing lost (the 20 posted during the outage included), nothing doubled"
    );
    let ids: BTreeSet<String> = json_payloads(&clean)
        .iter()
        .map(|event| event["review_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, review_ids(&reviews));
    assert!(
        sentiflow_tests::health_eventually(addr, "ready", "redis", true, Duration::from_secs(10))
            .await,
        "ready, not degraded, again"
    );
    let report = sentiflow::status::report(&status_args(addr, &[]))
        .await
        .unwrap();
    assert_eq!(report.exit_status, 0, "{}", report.table());
    assert!(report.table().contains("all 2 ok"), "{}", report.table());
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_redis_address_at_start_never_becomes_ready() {
    // Redis is optional for readiness only once it has answered: a new instance with a wrong address
    // must not join the rotation (a rolling update would otherwise replace every working replica).
    let kafka = kafka_with_topics().await;
    let nothing_there = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let shutdown = CancellationToken::new();
    let running = sentiflow_ingest::start(
        ingest_config(&kafka, &format!("redis://127.0.0.1:{nothing_there}/"), 50),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(
        sentiflow_tests::health_eventually(
            running.http_addr,
            "not_ready",
            "redis",
            false,
            Duration::from_secs(30)
        )
        .await
    );
    // Kafka answers meanwhile, and it stays out of rotation.
    assert!(
        eventually(Duration::from_secs(30), || running
            .health
            .check("kafka")
            .is_some_and(|check| check.ok))
        .await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = http_get(running.http_addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(!running.health.is_ready());
    // `sentiflow status`: ingest not ready; ingest's address given as infer's is named as such, and
    // a port nobody serves is unreachable; exit status 2.
    let closed = format!("http://127.0.0.1:{nothing_there}");
    let report = sentiflow::status::report(&status_args(
        running.http_addr,
        &[
            (ServiceName::Infer, format!("http://{}", running.http_addr)),
            (ServiceName::Trainer, closed),
        ],
    ))
    .await
    .unwrap();
    let table = report.table();
    assert_eq!(report.exit_status, 2, "{table}");
    let statuses: Vec<&str> = report
        .services
        .iter()
        .map(|service| service.status.as_str())
        .collect();
    assert_eq!(
        statuses,
        ["not_ready", "unexpected", "unreachable"],
        "{table}"
    );
    assert!(
        // Optional for ingest, but required until it has answered once.
        table.contains("redis (required) failing") && table.contains("answered by `ingest`"),
        "{table}"
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_holds_the_stream_and_loses_nothing() {
    let mut broker = sentiflow_tests::OwnBroker::start().await;
    let kafka = broker.kafka.clone();
    let redis_server = redis();
    let reviews = real_reviews(300, 0);
    let (running, shutdown, producer) =
        ingest_after(&kafka, &redis_server.url(), &reviews, 150).await;
    let raw_topic = kafka.topic(topics::REVIEWS_RAW);

    // Once those are committed (so the outage redelivers nothing) the broker goes away; a producer
    // keeps sending (its messages wait in its queue).
    sentiflow_tests::assert_committed(
        &kafka.brokers,
        &format!("{}-ingest", kafka.topic_prefix),
        &raw_topic,
        150,
    )
    .await;
    broker.stop().await;
    let queued = {
        let producer = producer.clone();
        let raw_topic = raw_topic.clone();
        let rest = reviews[150..].to_vec();
        tokio::spawn(async move { publish_reviews(&producer, &raw_topic, &rest).await })
    };
    let http_addr = running.http_addr;
    // The broker is required (`POST /v1/reviews` publishes to it): out of rotation, /readyz 503.
    // (Checked through this instance's /healthz: the metrics are the whole test process's.)
    assert!(
        sentiflow_tests::health_eventually(
            http_addr,
            "not_ready",
            "kafka",
            false,
            Duration::from_secs(30)
        )
        .await,
        "/readyz turns 503 while the broker is down"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !running.task.is_finished(),
        "ingest holds on, it does not exit"
    );

    // Back on the same port and data: everything published arrives clean, each review at least once.
    broker.restart_and_await(queued).await;
    let (clean, ids) = clean_reviews(
        &kafka,
        300,
        Duration::from_secs(120),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(ids, review_ids(&reviews), "nothing lost");
    assert_eq!(clean.len(), 300, "nothing doubled");
    assert!(
        eventually(Duration::from_secs(60), || running.health.is_ready()).await,
        "ready again"
    );
    let (status, _) = http_get(running.http_addr, "/readyz").await.unwrap();
    assert_eq!(status, 200);
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_configuration_is_refused_at_start() {
    let kafka = KafkaArgs::local("127.0.0.1:1", "unused");
    let mut config = ingest_config(&kafka, "redis://127.0.0.1:1/", 10);
    config.author_hash_key = Secret::new("short");
    let error = sentiflow_ingest::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--author-hash-key"), "{error}");
    let mut config = ingest_config(&kafka, "redis://127.0.0.1:1/", 10);
    config.telemetry.drain_timeout_ms = 60_000;
    let error = sentiflow_ingest::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("session timeout"), "{error}");
    let mut config = ingest_config(&kafka, "redis://127.0.0.1:1/", 10);
    config.max_payload_bytes = 1_000_000;
    let error = sentiflow_ingest::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--max-payload-bytes"), "{error}");
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("api-keys");
    std::fs::write(&keys_file, "# producers\ntoo-short\n").unwrap();
    let mut config = ingest_config(&kafka, "redis://127.0.0.1:1/", 10);
    config.api_auth.api_keys_file = Some(keys_file);
    let error = sentiflow_ingest::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("line 2: a key must be at least 16 characters"),
        "{error}"
    );
}

/// `sentiflow dlq …` parsed as a user types it, against this test's broker, topics and Redis keys.
fn dlq_command(kafka: &KafkaArgs, redis_url: &str, words: &[&str]) -> sentiflow::dlq::DlqCommand {
    use clap::Parser as _;
    let redis_prefix = format!("{}-redis", kafka.topic_prefix);
    let mut args = vec!["sentiflow", "dlq"];
    args.extend_from_slice(words);
    args.extend_from_slice(&[
        "--kafka-brokers",
        &kafka.brokers,
        "--topic-prefix",
        &kafka.topic_prefix,
        "--redis-url",
        redis_url,
        "--redis-key-prefix",
        &redis_prefix,
    ]);
    match sentiflow::cli::Cli::try_parse_from(args)
        .expect("dlq flags")
        .command
    {
        sentiflow::cli::Command::Dlq { command } => command,
        _ => panic!("not the dlq command"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_summarised_listed_and_redriven_once_the_cause_is_fixed() {
    use sentiflow::dlq::{DlqCommand, Keep, read, redrive, summarize};
    let no_interrupt = CancellationToken::new();
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let redis_url = redis_server.url();
    let producer = ResilientProducer::new(&kafka, "test").unwrap();
    let raw_topic = kafka.topic(topics::REVIEWS_RAW);
    let dlq_topic = kafka.topic(topics::REVIEWS_DLQ);

    // A payload limit too low for long reviews: 5 of them are dead-lettered as oversize, and so is
    // one too large for a dead letter to hold whole; 2 are not JSON.
    let mut too_strict = ingest_config(&kafka, &redis_url, 64);
    too_strict.max_payload_bytes = 1_024;
    let shutdown = CancellationToken::new();
    let first = sentiflow_ingest::start(too_strict, shutdown.clone())
        .await
        .expect("ingest starts");
    let short = real_reviews(10, 0);
    let long: Vec<RawReview> = real_reviews(5, 10)
        .into_iter()
        .map(|review| RawReview {
            text: format!("{} {}", review.text, "and it went on and on. ".repeat(60)),
            ..review
        })
        .collect();
    publish_reviews(&producer, &raw_topic, &short).await;
    publish_reviews(&producer, &raw_topic, &long).await;
    publish(&producer, &raw_topic, "huge", Some(&vec![b'x'; 300 * 1024])).await;
    publish(&producer, &raw_topic, "bad-1", Some(b"{not json")).await;
    publish(&producer, &raw_topic, "bad-2", Some(b"[1, 2")).await;
    let dead = read_exactly(
        &kafka.brokers,
        &dlq_topic,
        8,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 8);
    shutdown.cancel();
    first.task.await.unwrap().unwrap();
    // Something on the dead-letter topic that is not a dead letter is reported, never fatal.
    publish(&producer, &dlq_topic, "junk", Some(b"not a dead letter")).await;

    let DlqCommand::Summary(summary) = dlq_command(&kafka, &redis_url, &["summary"]) else {
        panic!("summary");
    };
    let scan = read(&summary.selection, Keep::WithoutOriginals)
        .await
        .expect("the topic is read");
    assert_eq!((scan.read, scan.selected, scan.unreadable_total), (9, 8, 1));
    assert!(
        scan.letters
            .iter()
            .all(|found| found.letter.original_value_b64.is_empty()),
        "a summary keeps no originals"
    );
    let rows = summarize(&scan.letters);
    let counts: Vec<(&str, &str, &str, u64, u64)> = rows
        .iter()
        .map(|row| {
            (
                row.service.as_str(),
                row.error_kind.as_str(),
                row.source_topic.as_str(),
                row.letters,
                row.truncated,
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("ingest", "invalid_json", raw_topic.as_str(), 2, 0),
            ("ingest", "oversize", raw_topic.as_str(), 6, 1),
        ]
    );
    for words in [
        &["summary"][..],
        &["summary", "--json"],
        &["list", "--limit", "3"],
        &["list", "--format", "json"],
        &[
            "list",
            "--format",
            "original",
            "--error-kind",
            "invalid_json",
        ],
    ] {
        sentiflow::dlq::run(dlq_command(&kafka, &redis_url, words), no_interrupt.clone())
            .await
            .unwrap_or_else(|error| panic!("{words:?}: {error:#}"));
    }
    // The newest three, oldest first; the whole selection in time order.
    let all = read(&summary.selection, Keep::All).await.unwrap().letters;
    let newest = read(&summary.selection, Keep::Newest(3)).await.unwrap();
    assert_eq!(newest.selected, 8);
    let place = |letters: &[sentiflow::dlq::FoundLetter]| -> Vec<i64> {
        letters.iter().map(|found| found.dlq_offset).collect()
    };
    assert_eq!(place(&newest.letters), place(&all[5..]));
    assert!(
        all.windows(2)
            .all(|pair| pair[0].letter.event_time <= pair[1].letter.event_time)
    );
    // Filters: kind, age, source topic, time, trace.
    let one_trace = all[0].trace_id.clone().expect("dead letters carry a trace");
    let one_trace_upper = one_trace.to_ascii_uppercase();
    for (words, expected) in [
        (&["list", "--trace-id", one_trace.as_str()][..], 1),
        (&["list", "--trace-id", one_trace_upper.as_str()], 1),
        (
            &["list", "--trace-id", "0123456789abcdef0123456789abcdef"],
            0,
        ),
        (
            &["list", "--error-kind", "oversize", "--since", "1h"][..],
            6,
        ),
        (
            &[
                "list",
                "--error-kind",
                "oversize",
                "--error-kind",
                "invalid_json",
            ],
            8,
        ),
        (&["list", "--service", "infer"], 0),
        (&["list", "--source-topic", "reviews.raw"], 8),
        (&["list", "--source-topic", "reviews.clean"], 0),
        (&["list", "--until", "2026-01-01T00:00:00Z"], 0),
        (&["list", "--since", "2099-01-01T00:00:00Z"], 0),
    ] {
        let DlqCommand::List(list) = dlq_command(&kafka, &redis_url, words) else {
            panic!("list");
        };
        let scan = read(&list.selection, Keep::All).await.expect("read");
        assert_eq!(scan.letters.len(), expected, "{words:?}");
    }
    {
        use clap::Parser as _;
        let refused = sentiflow::cli::Cli::try_parse_from([
            "sentiflow",
            "dlq",
            "list",
            "--trace-id",
            "not-a-trace",
        ])
        .unwrap_err()
        .to_string();
        assert!(refused.contains("32 hex digits"), "{refused}");
    }

    let redrive_args = |words: &[&str]| {
        let mut all = vec!["redrive"];
        all.extend_from_slice(words);
        let DlqCommand::Redrive(args) = dlq_command(&kafka, &redis_url, &all) else {
            panic!("redrive");
        };
        args
    };
    let refused = redrive(&redrive_args(&[]), &no_interrupt)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("redrive needs --error-kind"), "{refused}");
    let missing = redrive(
        &redrive_args(&[
            "--error-kind",
            "oversize",
            "--to",
            "no-such-topic",
            "--dry-run",
        ]),
        &no_interrupt,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(missing.contains("does not exist"), "{missing}");
    let dry = redrive(
        &redrive_args(&["--error-kind", "oversize", "--dry-run"]),
        &no_interrupt,
    )
    .await
    .expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(dry.selected, 6);
    assert_eq!(dry.published.get(&raw_topic), Some(&5));
    assert_eq!(dry.truncated, 1, "the cut original cannot be sent");

    // The limit is raised (the default, 64 KiB): the five come through, exactly once each.
    let shutdown = CancellationToken::new();
    let second = sentiflow_ingest::start(ingest_config(&kafka, &redis_url, 64), shutdown.clone())
        .await
        .expect("ingest restarts");
    // Another run is sending one of them right now (its claim): this run leaves that one alone.
    let claimed = all
        .iter()
        .find(|found| found.letter.error_kind == "oversize" && !found.letter.original_truncated)
        .unwrap();
    let claim_key = format!(
        "{}-redis:dlq:redriven:{}",
        kafka.topic_prefix, claimed.letter.event_id
    );
    let mut redis_connection = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&claim_key)
        .arg("pending")
        .arg("EX")
        .arg(60)
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    let interrupted = CancellationToken::new();
    interrupted.cancel();
    let stopped = redrive(&redrive_args(&["--error-kind", "oversize"]), &interrupted)
        .await
        .expect("an interrupted redrive reports");
    assert_eq!(
        (
            stopped.published_total(),
            stopped.stopped.as_deref(),
            stopped.read_to_end
        ),
        (0, Some("interrupted"), false),
        "interrupted before the first letter: nothing sent, the rest not read"
    );
    let done = redrive(&redrive_args(&["--error-kind", "oversize"]), &no_interrupt)
        .await
        .expect("redrive");
    assert_eq!(done.published.get(&raw_topic), Some(&4));
    assert_eq!(
        (
            done.truncated,
            done.failed,
            done.in_progress,
            done.already_redriven,
            done.not_attempted
        ),
        (1, 0, 1, 0, 0)
    );
    // It shows as pending, the four as redriven.
    let oversize_marks = || async {
        let mut scan = read(&summary.selection, Keep::WithoutOriginals)
            .await
            .expect("read");
        sentiflow::dlq::mark_redriven(
            &RedisArgs::local(&redis_url, format!("{}-redis", kafka.topic_prefix)),
            &mut scan.letters,
        )
        .await;
        let row = summarize(&scan.letters)
            .into_iter()
            .find(|row| row.error_kind == "oversize")
            .expect("oversize letters");
        (row.redriven, row.pending)
    };
    assert_eq!(oversize_marks().await, (Some(4), Some(1)));
    // The other run's claim lapses without a send: the next run sends that letter.
    let _: () = redis::cmd("DEL")
        .arg(&claim_key)
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    let rest = redrive(&redrive_args(&["--error-kind", "oversize"]), &no_interrupt)
        .await
        .expect("redrive the rest");
    assert_eq!(rest.published.get(&raw_topic), Some(&1));
    assert_eq!(rest.already_redriven, 4);
    let (clean, ids) =
        clean_reviews(&kafka, 15, Duration::from_secs(60), Duration::from_secs(2)).await;
    assert_eq!(clean.len(), 15);
    assert!(long.iter().all(|review| ids.contains(&review.review_id)));
    let raw = read_exactly(
        &kafka.brokers,
        &raw_topic,
        23,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    // Each copy names its dead letter and continues the trace of the message that failed.
    let letter_traces: BTreeMap<String, Option<String>> = all
        .iter()
        .map(|found| {
            (
                format!("{dlq_topic}/{}/{}", found.dlq_partition, found.dlq_offset),
                found.trace_id.clone(),
            )
        })
        .collect();
    let mut marked = 0;
    for message in &raw {
        let Some(from) = sentiflow_tests::header_of(message, sentiflow::dlq::REDRIVEN_FROM_HEADER)
        else {
            continue;
        };
        marked += 1;
        let letter_trace = letter_traces[&from].clone();
        assert!(letter_trace.is_some(), "dead letters carry a trace");
        assert_eq!(
            sentiflow_tests::trace_id_of(message),
            letter_trace,
            "{from}"
        );
    }
    assert_eq!(marked, 5, "each redriven message names its dead letter");

    // The same command again sends nothing; --again sends them, and ingest's dedupe drops them.
    let again = redrive(&redrive_args(&["--error-kind", "oversize"]), &no_interrupt)
        .await
        .expect("second redrive");
    assert_eq!(again.published_total(), 0);
    assert_eq!(again.already_redriven, 5);
    let forced = redrive(
        &redrive_args(&["--error-kind", "oversize", "--again"]),
        &no_interrupt,
    )
    .await
    .expect("forced redrive");
    assert_eq!(forced.published_total(), 5);
    let running = second.stats.clone();
    assert!(
        eventually(Duration::from_secs(30), || running.snapshot().3 >= 5).await,
        "ingest dropped the forced copies as duplicates: {:?}",
        running.snapshot()
    );
    let (clean, _) =
        clean_reviews(&kafka, 15, Duration::from_secs(30), Duration::from_secs(2)).await;
    assert_eq!(clean.len(), 15, "the copies were dropped as duplicates");
    assert_eq!(oversize_marks().await, (Some(5), Some(0)));
    shutdown.cancel();
    second.task.await.unwrap().unwrap();

    // Many letters stream through a redrive in chunks (256 each): 600 letters of another kind, sent
    // to a topic of their own, each exactly once, and none again on a second run.
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let bulk_topic = format!("{}.redrive-bulk", kafka.topic_prefix);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(&bulk_topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let mut acks = Vec::new();
    for index in 0..600_i64 {
        let letter = DeadLetter::new(
            "ingest",
            "bulk_test",
            "made by the test",
            sentiflow_common::events::SourceCoordinate {
                topic: raw_topic.clone(),
                partition: 0,
                offset: index,
            },
            Some(format!("bulk-{index}").as_bytes()),
            format!("original {index}").as_bytes(),
        );
        acks.push(
            producer
                .enqueue(
                    &dlq_topic,
                    None,
                    &serde_json::to_vec(&letter).unwrap(),
                    None,
                )
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        await_delivery(ack).await.unwrap();
    }
    let bulk = redrive_args(&["--error-kind", "bulk_test", "--to", &bulk_topic]);
    let streamed = redrive(&bulk, &no_interrupt).await.expect("bulk redrive");
    assert_eq!(streamed.selected, 600);
    assert_eq!(streamed.published.get(&bulk_topic), Some(&600));
    assert!(streamed.read_to_end && streamed.stopped.is_none());
    let copies = read_exactly(
        &kafka.brokers,
        &bulk_topic,
        600,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    let originals: BTreeSet<&[u8]> = copies
        .iter()
        .map(|message| message.payload().unwrap())
        .collect();
    assert_eq!((copies.len(), originals.len()), (600, 600), "each once");
    assert!(originals.contains(&b"original 599"[..]));
    let again = redrive(&bulk, &no_interrupt)
        .await
        .expect("second bulk redrive");
    assert_eq!((again.published_total(), again.already_redriven), (0, 600));
}

/// The HTTP API's metrics are process-wide, and the tests of this binary run at once: the tests that
/// count them take turns and compare what changed while they held the turn.
static HTTP_METRICS_TURN: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

/// `sentiflow status` asking ingest at `ingest` and the `others` at their URLs.
fn status_args(ingest: SocketAddr, others: &[(ServiceName, String)]) -> StatusArgs {
    let url_of = |service: ServiceName| {
        others
            .iter()
            .find(|(other, _)| *other == service)
            .map(|(_, url)| url.clone())
            .unwrap_or_default()
    };
    StatusArgs {
        ingest_url: format!("http://{ingest}"),
        infer_url: url_of(ServiceName::Infer),
        trainer_url: url_of(ServiceName::Trainer),
        drift_url: url_of(ServiceName::Drift),
        services: std::iter::once(ServiceName::Ingest)
            .chain(others.iter().map(|(service, _)| *service))
            .collect(),
        timeout_secs: 5.0,
        json: false,
    }
}

/// Replaces a file the way an operator should (a temporary file renamed over it), so a reader never
/// sees it half-written.
fn replace_file(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reviews_posted_over_http_are_checked_like_kafka_and_published_once() {
    use sentiflow_tests::http_post;
    let _turn = HTTP_METRICS_TURN.lock().await;
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let mut settings = ingest_config(&kafka, &redis_server.url(), 64);
    settings.http_max_reviews = 50;
    settings.telemetry.drain_timeout_ms = 500;
    let shutdown = CancellationToken::new();
    let running = sentiflow_ingest::start(settings, shutdown.clone())
        .await
        .expect("ingest starts");
    let addr = running.http_addr;
    let (_, metrics_before) = http_get(addr, "/metrics").await.unwrap();
    let post = |body: Vec<u8>| async move {
        let (status, answer) = http_post(addr, "/v1/reviews", &body)
            .await
            .expect("answered");
        let answer: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|error| panic!("a JSON answer ({status}): {error}: {answer}"));
        (status, answer)
    };
    let reviews = real_reviews(21, 0);

    // One review as an object, then twenty as an array: 202 with where each landed.
    // The first comes with the caller's trace context, which its events continue.
    const CALLER_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = serde_json::to_vec_pretty(&reviews[0]).unwrap();
    let (status, _, answer) = sentiflow_tests::http_post_with_headers(
        addr,
        "/v1/reviews",
        &[
            ("traceparent", CALLER_TRACE),
            ("tracestate", "vendor=opaque"),
        ],
        &first,
    )
    .await
    .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        answer["reviews"][0]["review_id"],
        reviews[0].review_id.as_str()
    );
    assert!(answer["reviews"][0]["offset"].as_i64().unwrap() >= 0);
    let batch = serde_json::to_vec(&reviews[1..]).unwrap();
    let (status, answer) = post(batch.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 20);
    // Without a trace context the request starts a trace of its own.
    let batch_trace = answer["trace_id"].as_str().unwrap().to_owned();
    assert!(batch_trace.len() == 32 && batch_trace != "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(answer["topic"], kafka.topic(topics::REVIEWS_RAW));

    // Two bad reviews among valid ones: 422 naming each, nothing published.
    let mut mixed: Vec<serde_json::Value> = real_reviews(3, 21)
        .iter()
        .map(|review| serde_json::to_value(review).unwrap())
        .collect();
    let mut no_text = mixed[0].clone();
    no_text.as_object_mut().unwrap().remove("text");
    let mut future_version = mixed[1].clone();
    future_version["schema_version"] = 2.into();
    mixed.insert(1, no_text);
    mixed.insert(3, future_version);
    let (status, answer) = post(serde_json::to_vec(&mixed).unwrap()).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"], "invalid_reviews");
    assert_eq!(answer["rejected_total"], 2);
    let rejected: Vec<(u64, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["index"].as_u64().unwrap(),
                entry["error_kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [(1, "schema_violation"), (3, "unknown_schema_version")]
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("2 of 5 reviews are invalid; none was accepted")
    );

    // Bodies that are not reviews at all.
    for (body, expected_status, kind) in [
        (b"{not json".to_vec(), 400, "invalid_json"),
        (b"42".to_vec(), 400, "invalid_body"),
        (b"[]".to_vec(), 422, "no_reviews"),
        (
            serde_json::to_vec(&vec![&reviews[0]; 51]).unwrap(),
            422,
            "too_many_reviews",
        ),
    ] {
        let (status, answer) = post(body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (expected_status, Some(kind))
        );
    }

    // A client retrying the batch (say, after a 503): accepted again, dropped by dedupe downstream.
    let (status, answer) = post(batch).await;
    assert_eq!(status, 202, "{answer}");
    let (clean, ids) =
        clean_reviews(&kafka, 21, Duration::from_secs(60), Duration::from_secs(3)).await;
    assert_eq!(clean.len(), 21, "each review once, the retry deduplicated");
    assert_eq!(ids, review_ids(&reviews));
    // Published byte for byte as sent (checked on those bytes, like a message on reviews.raw).
    let raw = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_RAW),
        41,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(raw.len(), 41);
    let first_raw = raw
        .iter()
        .find(|message| message.payload() == Some(first.as_slice()))
        .expect("published byte for byte");
    let hop = sentiflow_tests::header_of(first_raw, "traceparent").unwrap();
    assert!(
        hop.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && hop != CALLER_TRACE,
        "a child of the caller's context: {hop}"
    );
    assert_eq!(
        sentiflow_tests::header_of(first_raw, "tracestate").as_deref(),
        Some("vendor=opaque")
    );
    // The clean events continue the trace of their request.
    for message in &clean {
        let review: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let expected = if review["review_id"] == reviews[0].review_id.as_str() {
            "4bf92f3577b34da6a3ce929d0e0e4736"
        } else {
            batch_trace.as_str()
        };
        assert_eq!(
            sentiflow_tests::trace_id_of(message).as_deref(),
            Some(expected)
        );
    }
    let (_, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(
        metric_growth(
            &metrics_before,
            &metrics,
            &[
                "sentiflow_ingest_http_reviews_total{outcome=\"accepted\",error_kind=\"none\"}",
                "sentiflow_ingest_http_errors_total{error_kind=\"invalid_reviews\"}",
                "sentiflow_ingest_http_requests_total{status=\"202\"}",
            ]
        ),
        [41.0, 1.0, 3.0],
        "{metrics}"
    );

    // At shutdown, a request still in flight after the drain time (here one whose body never comes,
    // which alone would wait 10 s) is answered 503 and the service stops.
    let stalled = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                b"POST /v1/reviews HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[",
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = std::time::Instant::now();
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
    let answer = stalled.await.unwrap().unwrap();
    assert!(answer.contains(" 503 "), "{answer}");
    assert!(answer.contains("shutting down"), "{answer}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "cut off after the drain time, not the body timeout: {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_api_key_is_held_to_its_rate_in_reviews_on_its_own() {
    use sentiflow_tests::{http_post_with_headers, metric_line_eventually};
    use sha2::Digest as _;
    const FLOODING_KEY: &str = "flooding-key-0123456789";
    const CALM_KEY: &str = "calm-key-9876543210abcd";
    let _turn = HTTP_METRICS_TURN.lock().await;
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("api-keys");
    std::fs::write(&keys_file, format!("{FLOODING_KEY}\n{CALM_KEY}\n")).unwrap();
    let mut settings = ingest_config(&kafka, &redis_server.url(), 64);
    settings.api_auth.api_keys_file = Some(keys_file);
    // One review every 5 s per key, 4 at once (slow enough that a loaded machine's burst ends
    // before a token comes back); a request may hold 500.
    settings.api_auth.api_key_rate = Some(0.2);
    settings.api_auth.api_key_burst = Some(4);
    // The buckets are the shared ones in Redis (the default): a loaded machine's Redis may be slow
    // but must not pass for down here.
    settings.api_auth.api_key_rate_timeout_ms = 5_000;
    let shutdown = CancellationToken::new();
    let running = sentiflow_ingest::start(settings, shutdown.clone())
        .await
        .expect("ingest starts");
    let addr = running.http_addr;
    let reviews = real_reviews(10, 0);
    // One review is sent as an object, more as an array.
    let post = |key: &'static str, indices: &[usize]| {
        let body = match indices {
            [index] => serde_json::to_vec(&reviews[*index]).unwrap(),
            _ => serde_json::to_vec(
                &indices
                    .iter()
                    .map(|&index| &reviews[index])
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
        };
        async move {
            let authorization = format!("Bearer {key}");
            let (status, head, answer) = http_post_with_headers(
                addr,
                "/v1/reviews",
                &[("Authorization", authorization.as_str())],
                &body,
            )
            .await
            .expect("answered");
            let answer: serde_json::Value = serde_json::from_str(&answer)
                .unwrap_or_else(|error| panic!("a JSON answer ({status}): {error}: {answer}"));
            (status, head.to_ascii_lowercase(), answer)
        }
    };
    let retry_after = |head: &str| -> u64 {
        head.lines()
            .find_map(|line| line.strip_prefix("retry-after: "))
            .expect("a Retry-After header")
            .trim()
            .parse()
            .unwrap()
    };

    // A first request (of the other key) warms the producer up, so the burst below is quick.
    let (status, _, answer) = post(CALM_KEY, &[9]).await;
    assert_eq!(status, 202, "{answer}");
    let (_, metrics_before) = http_get(addr, "/metrics").await.unwrap();
    // A batch larger than the burst can never pass: 413, no Retry-After; its first review counts.
    let (status, head, answer) = post(FLOODING_KEY, &[0, 1, 2, 3, 4]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("over_key_burst")),
        "{answer}"
    );
    assert!(!head.contains("retry-after"), "{head}");
    // A batch costs what it carries: 2 of the 3 reviews left.
    let (status, _, answer) = post(FLOODING_KEY, &[0, 1]).await;
    assert_eq!(status, 202, "{answer}");
    // A batch of 3 with 1 left is refused once read (one request more would not be), with the wait
    // for the whole batch; its first review counts, so the next request is refused as it comes in.
    let (status, head, answer) = post(FLOODING_KEY, &[2, 3, 4]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("rate_limited")),
        "{answer}"
    );
    assert!((5..=15).contains(&retry_after(&head)), "{head}");
    let (status, head, answer) = post(FLOODING_KEY, &[2]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("rate_limited")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no token left"),
        "{answer}"
    );
    let wait = retry_after(&head);
    assert!((1..=5).contains(&wait), "{head}");
    // Another key is not held back by the flood.
    let (status, _, answer) = post(CALM_KEY, &[5]).await;
    assert_eq!(status, 202, "{answer}");
    let flooding_id =
        sentiflow_common::api_keys::key_id(&sha2::Sha256::digest(FLOODING_KEY).into());
    assert!(
        metric_line_eventually(
            addr,
            &format!("sentiflow_ingest_api_key_rate_limited_total{{key=\"{flooding_id}\"}} 3"),
            Duration::from_secs(5)
        )
        .await,
        "counted under the key's id"
    );
    let (_, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(
        metric_growth(
            &metrics_before,
            &metrics,
            &[
                "sentiflow_ingest_http_requests_total{status=\"413\"}",
                "sentiflow_ingest_http_requests_total{status=\"429\"}",
                "sentiflow_ingest_http_requests_total{status=\"202\"}",
            ]
        ),
        [1.0, 2.0, 2.0],
        "each answer counted once: {metrics}"
    );
    let (_, openapi) = http_get(addr, "/openapi.json").await.unwrap();
    let openapi: serde_json::Value = serde_json::from_str(&openapi).unwrap();
    let responses = &openapi["paths"]["/v1/reviews"]["post"]["responses"];
    assert!(responses["429"].is_object());
    let too_large = responses["413"]["description"].as_str().unwrap();
    assert!(
        too_large.contains("body_too_large") && too_large.contains("over_key_burst"),
        "the burst (4) is below --http-max-reviews (500): {too_large}"
    );

    // After the refill the key may send again; exactly the accepted reviews arrive clean.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let (status, _, answer) = post(FLOODING_KEY, &[2]).await;
    assert_eq!(status, 202, "{answer}");
    let clean = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_CLEAN),
        5,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let ids: BTreeSet<String> = json_payloads(&clean)
        .iter()
        .map(|event| event["review_id"].as_str().unwrap().to_owned())
        .collect();
    let accepted: Vec<RawReview> = [0, 1, 2, 5, 9]
        .iter()
        .map(|&i| reviews[i].clone())
        .collect();
    assert_eq!(
        ids,
        review_ids(&accepted),
        "the refused requests published nothing"
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_each_keys_bucket_in_redis_and_fall_back_to_their_own_without_it() {
    use sentiflow_common::api_keys::RateScope;
    use sentiflow_tests::http_post_with_headers;
    use sha2::Digest as _;
    const KEY: &str = "shared-key-0123456789abcdef";
    const WARM_KEY: &str = "warm-up-key-0123456789abcdef";
    let _turn = HTTP_METRICS_TURN.lock().await;
    let kafka = kafka_with_topics().await;
    let mut redis_server = redis();
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("api-keys");
    std::fs::write(&keys_file, format!("{KEY}\n{WARM_KEY}\n")).unwrap();
    let shutdown = CancellationToken::new();
    // Three replicas of one deployment (one group, one Redis prefix): two share the key's bucket
    // (the default scope), one keeps its own. One review every 20 s, 3 at once. A loaded machine's
    // Redis may be slow, but must not pass for down here: 5 s before the local bucket decides.
    let mut replicas = Vec::new();
    for scope in [RateScope::Shared, RateScope::Shared, RateScope::Instance] {
        let mut settings = ingest_config(&kafka, &redis_server.url(), 64);
        settings.api_auth.api_keys_file = Some(keys_file.clone());
        settings.api_auth.api_key_rate = Some(0.05);
        settings.api_auth.api_key_burst = Some(3);
        settings.api_auth.api_key_rate_scope = scope;
        settings.api_auth.api_key_rate_timeout_ms = 5_000;
        replicas.push(
            sentiflow_ingest::start(settings, shutdown.clone())
                .await
                .expect("ingest starts"),
        );
    }
    let reviews = real_reviews(15, 0);
    let post_as = |key: &'static str, addr: SocketAddr, indices: std::ops::Range<usize>| {
        let body = serde_json::to_vec(&reviews[indices].iter().collect::<Vec<_>>()).unwrap();
        async move {
            let (status, _, answer) = http_post_with_headers(
                addr,
                "/v1/reviews",
                &[("Authorization", &format!("Bearer {key}"))],
                &body,
            )
            .await
            .expect("answered");
            (status, answer)
        }
    };
    let post = |addr: SocketAddr, indices: std::ops::Range<usize>| post_as(KEY, addr, indices);
    let (first, second, own) = (
        replicas[0].http_addr,
        replicas[1].http_addr,
        replicas[2].http_addr,
    );

    // Each replica's producer is warmed up first, by another key, so the bursts below are quick.
    for (replica, index) in [(first, 12), (second, 13), (own, 14)] {
        let (status, answer) = post_as(WARM_KEY, replica, index..index + 1).await;
        assert_eq!(status, 202, "{answer}");
    }
    let (_, metrics_start) = http_get(first, "/metrics").await.unwrap();
    // The key's burst spent at one shared replica is spent at the other.
    let (status, answer) = post(first, 0..3).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post(second, 3..4).await;
    assert_eq!(status, 429, "the shared bucket is empty: {answer}");
    assert!(answer.contains("no token left"), "{answer}");
    // The replica with its own buckets does not see it.
    let (status, answer) = post(own, 4..7).await;
    assert_eq!(status, 202, "{answer}");
    let (mut connection, bucket_keys) = {
        let client = redis::Client::open(redis_server.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let bucket_keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!(
                "{}-redis:api-key-bucket:ingest:*",
                kafka.topic_prefix
            ))
            .query_async(&mut connection)
            .await
            .unwrap();
        (connection, bucket_keys)
    };
    let digest: [u8; 32] = sha2::Sha256::digest(KEY).into();
    let bucket = format!(
        "{}-redis:api-key-bucket:ingest:{}",
        kafka.topic_prefix,
        hex::encode(&digest[..8])
    );
    assert_eq!(
        bucket_keys.iter().collect::<BTreeSet<_>>().len(),
        2,
        "one bucket per key (this one and the warm-up key): {bucket_keys:?}"
    );
    assert!(bucket_keys.contains(&bucket), "{bucket} in {bucket_keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&bucket)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 60_000 + 60_000,
        "dropped once full again (60 s) plus a minute: {ttl} ms"
    );
    let (_, metrics) = http_get(first, "/metrics").await.unwrap();
    assert_eq!(
        metric_growth(
            &metrics_start,
            &metrics,
            &["sentiflow_ingest_api_key_rate_fallbacks_total"]
        ),
        [0.0],
        "Redis decided every take so far"
    );

    // Without Redis the shared replicas fall back to their own buckets (counted) and keep
    // answering; the first replica's own bucket is full, so it accepts a burst again.
    let (_, metrics_before) = http_get(first, "/metrics").await.unwrap();
    redis_server.stop().unwrap();
    let (status, answer) = post(first, 7..10).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post(first, 10..11).await;
    assert_eq!(status, 429, "its own bucket holds the limit: {answer}");
    let (_, metrics) = http_get(first, "/metrics").await.unwrap();
    let fallbacks = metric_growth(
        &metrics_before,
        &metrics,
        &["sentiflow_ingest_api_key_rate_fallbacks_total"],
    )[0];
    assert_eq!(
        fallbacks, 3.0,
        "each take decided locally is counted (two for the batch, one for the single review)"
    );

    // Once Redis is back (empty: it kept nothing) and the pause after the last failure (1 s) is
    // over, the shared bucket decides again.
    sentiflow_tests::restart_redis_and_await_ready(&mut redis_server, first).await;
    assert!(
        sentiflow_tests::health_eventually(second, "ready", "redis", true, Duration::from_secs(30))
            .await
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, answer) = post(second, 11..12).await;
    assert_eq!(status, 202, "a new, full shared bucket: {answer}");
    let (status, answer) = post(first, 3..4).await;
    assert_eq!(
        status, 202,
        "the shared bucket, not the first replica's empty own one: {answer}"
    );
    shutdown.cancel();
    for replica in replicas {
        replica.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_without_keys_refuses_to_start() {
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let mut settings = ingest_config(&kafka, &redis_server.url(), 64);
    settings.api_auth.api_key_rate = Some(5.0);
    let Err(error) = sentiflow_ingest::start(settings, CancellationToken::new()).await else {
        panic!("a rate without keys must be refused");
    };
    let error = error.to_string();
    assert!(error.contains("needs --api-keys-file"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_api_needs_a_key_in_force_and_keys_rotate_without_a_restart() {
    use sentiflow_tests::{eventually_async, http_post_with_headers, metric_line_eventually};
    const OLD_KEY: &str = "old-key-0123456789abcdef";
    const NEW_KEY: &str = "new-key-fedcba9876543210";
    let _turn = HTTP_METRICS_TURN.lock().await;
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("api-keys");
    std::fs::write(&keys_file, format!("# producers\n{OLD_KEY}\n")).unwrap();
    let mut settings = ingest_config(&kafka, &redis_server.url(), 64);
    settings.api_auth.api_keys_file = Some(keys_file.clone());
    let shutdown = CancellationToken::new();
    let running = sentiflow_ingest::start(settings, shutdown.clone())
        .await
        .expect("ingest starts");
    let addr = running.http_addr;
    let (_, metrics_before) = http_get(addr, "/metrics").await.unwrap();
    for line in [
        "sentiflow_ingest_api_keys 1",
        "sentiflow_ingest_api_keys_file_ok 1",
        "sentiflow_ingest_api_keys_reload_errors_total 0",
    ] {
        assert!(
            metrics_before.lines().any(|candidate| candidate == line),
            "from the start: {line}\n{metrics_before}"
        );
    }
    let post = |authorization: Option<String>, body: Vec<u8>| async move {
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect();
        let (status, head, answer) = http_post_with_headers(addr, "/v1/reviews", &headers, &body)
            .await
            .expect("answered");
        let answer: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|error| panic!("a JSON answer ({status}): {error}: {answer}"));
        (status, head.to_ascii_lowercase(), answer)
    };
    let bearer = |key: &str| Some(format!("Bearer {key}"));
    let reviews = real_reviews(3, 0);
    let review = |index: usize| serde_json::to_vec(&reviews[index]).unwrap();

    // No key, another scheme, an unknown key: 401 with a JSON body and a challenge, nothing published.
    let (status, head, answer) = post(None, review(0)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("missing_api_key"))
    );
    assert!(
        head.contains("www-authenticate: bearer realm=\"sentiflow\""),
        "{head}"
    );
    for refused in [format!("Basic {OLD_KEY}"), format!("Bearer {NEW_KEY}")] {
        let (status, head, answer) = post(Some(refused), review(0)).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (401, Some("invalid_api_key"))
        );
        assert!(head.contains("error=\"invalid_token\""), "{head}");
    }
    // The probes, the metrics and the API's description stay open.
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        let (status, _) = http_get(addr, path).await.unwrap();
        assert_eq!(status, 200, "{path}");
    }
    let (_, openapi) = http_get(addr, "/openapi.json").await.unwrap();
    let openapi: serde_json::Value = serde_json::from_str(&openapi).unwrap();
    let operation = &openapi["paths"]["/v1/reviews"]["post"];
    assert_eq!(operation["security"], serde_json::json!([{"apiKey": []}]));
    assert!(operation["responses"]["401"].is_object());
    assert!(
        operation["responses"]["429"].is_null(),
        "no 429 without --api-key-rate"
    );
    assert_eq!(
        openapi["components"]["securitySchemes"]["apiKey"]["scheme"],
        "bearer"
    );
    let (status, _, answer) = post(bearer(OLD_KEY), review(0)).await;
    assert_eq!(status, 202, "{answer}");

    // Rotation: the new key is added, clients move, the old key is retired; no restart.
    replace_file(&keys_file, &format!("{OLD_KEY}\n{NEW_KEY}\n"));
    assert!(
        metric_line_eventually(addr, "sentiflow_ingest_api_keys 2", Duration::from_secs(15)).await,
        "the added key is in force"
    );
    let (status, _, answer) = post(bearer(NEW_KEY), review(1)).await;
    assert_eq!(status, 202, "{answer}");
    replace_file(&keys_file, &format!("{NEW_KEY}\n"));
    let probe = br#"[]"#.to_vec();
    assert!(
        eventually_async(Duration::from_secs(15), || {
            let probe = probe.clone();
            async move { post(bearer(OLD_KEY), probe).await.0 == 401 }
        })
        .await,
        "the retired key is refused"
    );
    // A file that cannot be used is refused once; the key in force keeps working.
    replace_file(&keys_file, "new-key-fe");
    assert!(
        metric_line_eventually(
            addr,
            "sentiflow_ingest_api_keys_reload_errors_total 1",
            Duration::from_secs(15)
        )
        .await
    );
    assert!(
        metric_line_eventually(
            addr,
            "sentiflow_ingest_api_keys_file_ok 0",
            Duration::from_secs(1)
        )
        .await
    );
    let (status, _, answer) = post(bearer(NEW_KEY), review(2)).await;
    assert_eq!(status, 202, "{answer}");

    let (clean, ids) =
        clean_reviews(&kafka, 3, Duration::from_secs(60), Duration::from_secs(2)).await;
    assert_eq!(clean.len(), 3, "exactly the three accepted reviews");
    assert_eq!(ids, review_ids(&reviews));
    let (_, metrics) = http_get(addr, "/metrics").await.unwrap();
    let growth = metric_growth(
        &metrics_before,
        &metrics,
        &[
            "sentiflow_ingest_http_errors_total{error_kind=\"missing_api_key\"}",
            "sentiflow_ingest_http_requests_total{status=\"202\"}",
            "sentiflow_ingest_http_reviews_total{outcome=\"accepted\",error_kind=\"none\"}",
        ],
    );
    assert_eq!(growth, [1.0, 3.0, 3.0], "{metrics}");
    assert!(
        metric_value(
            &metrics,
            "sentiflow_ingest_http_errors_total{error_kind=\"invalid_api_key\"}"
        ) >= 3.0
    );
    assert!(
        metrics
            .lines()
            .any(|line| line == "sentiflow_ingest_api_keys 1")
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}
