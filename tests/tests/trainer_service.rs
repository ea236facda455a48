//! The trainer's curation service against a real Kafka broker and Redis: exact row counts in a snapshot,
//! human labels winning over weak ones, offset ranges in the manifest, malformed messages in the DLQ with
//! reasons, and no loss and no duplicate row across a graceful restart or a crash (task abort).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use clap::Parser as _;
use rdkafka::Message as _;
use rdkafka::producer::FutureRecord;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, RedisArgs};
use sentiflow_common::events::{
    CleanReview, DeadLetter, Event, LabelFeedback, LabelInfo, LabelProvenance, Redactions,
    SCHEMA_VERSION, Sentiment, SourceCoordinate, new_event_id,
};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_tests::{
    eventually, http_get, json_payloads, kafka_with_topics, read_exactly, redis,
};
use sentiflow_trainer::dataset::{Origin, Split};
use sentiflow_trainer::segment::SegmentStore;
use sentiflow_trainer::{CurateOptions, TrainerConfig, curate_snapshot};
use tokio_util::sync::CancellationToken;

fn trainer_config(
    kafka: &KafkaArgs,
    redis_url: &str,
    data_dir: &std::path::Path,
    segment_max_messages: usize,
    segment_max_age_ms: u64,
) -> TrainerConfig {
    let mut config = TrainerConfig::local(
        kafka.clone(),
        RedisArgs::local(redis_url, format!("{}-redis", kafka.topic_prefix)),
        data_dir.to_owned(),
    );
    config.segment_max_messages = segment_max_messages;
    config.segment_max_age_ms = segment_max_age_ms;
    config.max_payload_bytes = 4096;
    config
}

/// A schema-valid clean review; `label` None means unlabelled.
fn clean_review(index: usize, label: Option<(Sentiment, LabelProvenance)>) -> CleanReview {
    let review = CleanReview {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: Utc::now(),
        source_event_id: new_event_id(),
        review_id: format!("r{index:05}"),
        source: "test".to_owned(),
        author_hash: format!("{index:064x}"),
        text: format!("review number {index} says the flight was what it was"),
        text_hash: format!("{:064x}", index + 1_000_000),
        created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap()
            + chrono::Duration::minutes(index as i64),
        lang: "en".to_owned(),
        lang_confidence: 0.9,
        lang_allowed: true,
        label: label.map(|(label, provenance)| LabelInfo {
            label,
            provenance,
            confidence: 0.8,
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
}

fn feedback(review_id: &str, label: Sentiment) -> LabelFeedback {
    let event = LabelFeedback {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: Utc::now(),
        review_id: review_id.to_owned(),
        label,
        reviewer: "tester".to_owned(),
        note: None,
    };
    event.validate().expect("valid feedback");
    event
}

/// Publishes keyed payloads in order and awaits every acknowledgement.
async fn publish_all(
    producer: &ResilientProducer,
    topic: &str,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
) {
    let mut acks = Vec::new();
    for (key, payload) in messages {
        acks.push(
            producer
                .enqueue(topic, Some(key.as_bytes()), &payload, None)
                .await
                .expect("enqueue"),
        );
    }
    for ack in acks {
        await_delivery(ack).await.expect("delivered");
    }
}

fn encoded<E: Event>(events: &[E]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .map(|event| (event.key().to_owned(), event.to_json_vec().unwrap()))
        .collect()
}

async fn publish_tombstone(producer: &ResilientProducer, topic: &str, key: &str) {
    let future = producer
        .current()
        .send_result(FutureRecord::<[u8], [u8]>::to(topic).key(key.as_bytes()))
        .map_err(|(error, _)| error)
        .expect("enqueue tombstone");
    await_delivery(future).await.expect("delivered");
}

/// Distinct review ids and total records in the segments written so far.
fn segment_contents(segments: &SegmentStore) -> (BTreeSet<String>, usize) {
    let mut ids = BTreeSet::new();
    let mut records = 0;
    for path in segments.list().unwrap() {
        let (_, segment_records) = segments.read(&path).unwrap();
        records += segment_records.len();
        ids.extend(segment_records.into_iter().map(|record| record.review_id));
    }
    (ids, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curated_snapshot_has_exact_rows_human_labels_offsets_and_dead_letters() {
    let kafka = kafka_with_topics().await;
    let redis_server = redis();
    let data = tempfile::tempdir().unwrap();
    let clean_topic = kafka.topic(topics::REVIEWS_CLEAN);
    let feedback_topic = kafka.topic(topics::LABELS_FEEDBACK);
    let producer = ResilientProducer::new(&kafka, "test").unwrap();

    // 240 reviews: a quarter unlabelled, a quarter weak-labelled, half with a source label.
    let reviews: Vec<CleanReview> = (0..240)
        .map(|index| {
            let class = Sentiment::from_index(index % 3).unwrap();
            let label = match index % 4 {
                0 => None,
                1 => Some((class, LabelProvenance::WeakLexicon)),
                _ => Some((class, LabelProvenance::SourceLabel)),
            };
            clean_review(index, label)
        })
        .collect();
    // Human labels: 20 overriding weak labels (a different class), 10 for unlabelled reviews, 5 for
    // reviews never published. Half of the overrides arrive before their review does.
    let mut human: BTreeMap<String, Sentiment> = BTreeMap::new();
    let mut early = Vec::new();
    let mut late = Vec::new();
    for (n, review) in reviews
        .iter()
        .filter(|r| {
            r.label
                .is_some_and(|l| l.provenance == LabelProvenance::WeakLexicon)
        })
        .take(20)
        .enumerate()
    {
        let weak = review.label.unwrap().label;
        let label = Sentiment::from_index((weak.index() + 1) % 3).unwrap();
        human.insert(review.review_id.clone(), label);
        let event = feedback(&review.review_id, label);
        if n % 2 == 0 {
            early.push(event)
        } else {
            late.push(event)
        }
    }
    for review in reviews.iter().filter(|r| r.label.is_none()).take(10) {
        human.insert(review.review_id.clone(), Sentiment::Neutral);
        late.push(feedback(&review.review_id, Sentiment::Neutral));
    }
    for ghost in 0..5 {
        late.push(feedback(&format!("ghost-{ghost}"), Sentiment::Positive));
    }

    // Malformed input on both topics, keyed so the dead letters can be matched back.
    let mut missing_text = serde_json::to_value(&reviews[1]).unwrap();
    missing_text.as_object_mut().unwrap().remove("text");
    let mut bad_label = serde_json::to_value(feedback("r00001", Sentiment::Negative)).unwrap();
    bad_label["label"] = serde_json::json!("ecstatic");
    let malformed_clean: Vec<(&str, &str, Vec<u8>)> = vec![
        ("bad-json", "invalid_json", b"{not json".to_vec()),
        (
            "bad-schema",
            "schema_violation",
            serde_json::to_vec(&missing_text).unwrap(),
        ),
        ("bad-size", "oversize", vec![b' '; 5000]),
    ];
    let malformed_feedback: Vec<(&str, &str, Vec<u8>)> = vec![
        ("bad-feedback-json", "invalid_json", b"[1, 2".to_vec()),
        (
            "bad-feedback-label",
            "schema_violation",
            serde_json::to_vec(&bad_label).unwrap(),
        ),
    ];

    publish_all(&producer, &feedback_topic, encoded(&early)).await;
    publish_all(&producer, &clean_topic, encoded(&reviews[..120])).await;
    publish_all(
        &producer,
        &clean_topic,
        malformed_clean
            .iter()
            .map(|(key, _, payload)| ((*key).to_owned(), payload.clone())),
    )
    .await;
    publish_tombstone(&producer, &clean_topic, "bad-empty").await;
    publish_all(&producer, &clean_topic, encoded(&reviews[120..])).await;
    publish_all(
        &producer,
        &feedback_topic,
        malformed_feedback
            .iter()
            .map(|(key, _, payload)| ((*key).to_owned(), payload.clone())),
    )
    .await;
    publish_all(&producer, &feedback_topic, encoded(&late)).await;
    let clean_messages = reviews.len() + malformed_clean.len() + 1;
    let feedback_messages = early.len() + late.len() + malformed_feedback.len();
    let dead_letters = malformed_clean.len() + 1 + malformed_feedback.len();

    let shutdown = CancellationToken::new();
    // Segments of 50 messages, folded into one every 3: the snapshot below reads compacted segments,
    // and compactions may run while it is cut.
    let mut config = trainer_config(&kafka, &redis_server.url(), data.path(), 50, 300);
    config.compact_after_segments = 3;
    let running = sentiflow_trainer::start(config, shutdown.clone())
        .await
        .expect("trainer starts");
    let total = (clean_messages + feedback_messages) as u64;
    assert!(
        eventually(Duration::from_secs(90), || running.stats.snapshot().durable
            == total)
        .await,
        "every message durable: {:?}",
        running.stats.snapshot()
    );
    let stats = running.stats.snapshot();
    assert_eq!(stats.consumed, total);
    assert_eq!(stats.reviews, reviews.len() as u64);
    assert_eq!(stats.unlabelled, 60);
    assert_eq!(stats.feedback, (early.len() + late.len()) as u64);
    assert_eq!(stats.dead_lettered, dead_letters as u64);
    assert!(
        eventually(Duration::from_secs(30), || running
            .stats
            .snapshot()
            .compactions
            >= 1)
        .await,
        "segments were compacted: {:?}",
        running.stats.snapshot()
    );
    let files = running.segments.list().unwrap().len() as u64;
    assert!(
        files < running.stats.snapshot().segments,
        "{files} segment files for {} segments written",
        running.stats.snapshot().segments
    );

    // Dead letters: exactly the malformed messages, each with its kind and a reason.
    let dlq = read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::REVIEWS_DLQ),
        dead_letters,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dlq.len(), dead_letters);
    let mut expected_kinds: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, kind, _) in &malformed_clean {
        expected_kinds.insert((*key).to_owned(), ((*kind).to_owned(), clean_topic.clone()));
    }
    expected_kinds.insert(
        "bad-empty".to_owned(),
        ("empty_payload".to_owned(), clean_topic.clone()),
    );
    for (key, kind, _) in &malformed_feedback {
        expected_kinds.insert(
            (*key).to_owned(),
            ((*kind).to_owned(), feedback_topic.clone()),
        );
    }
    let mut got_kinds = BTreeMap::new();
    for (message, value) in dlq.iter().zip(json_payloads(&dlq)) {
        let letter: DeadLetter = serde_json::from_value(value).unwrap();
        letter.validate().expect("schema-valid dead letter");
        assert_eq!(letter.service, "trainer");
        assert!(!letter.reason.is_empty());
        let key = std::str::from_utf8(message.key().unwrap())
            .unwrap()
            .to_owned();
        got_kinds.insert(
            key,
            (letter.error_kind.clone(), letter.source.topic.clone()),
        );
    }
    assert_eq!(got_kinds, expected_kinds);

    // The snapshot: labelled reviews plus unlabelled ones a human labelled; human labels win.
    let curated = {
        let (segments, snapshots) = (running.segments.clone(), running.snapshots.clone());
        tokio::task::spawn_blocking(move || {
            curate_snapshot(&segments, &snapshots, &CurateOptions::default())
        })
        .await
        .unwrap()
        .expect("snapshot")
    };
    let manifest = &curated.manifest;
    assert_eq!(manifest.rows, 180 + 10);
    assert_eq!(curated.counts.unlabelled, 50);
    assert_eq!(curated.counts.feedback_without_review, 5);
    assert_eq!(curated.counts.dead_lettered, dead_letters as u64);
    assert_eq!(curated.counts.redelivered, 0);
    assert_eq!(
        manifest.provenance,
        BTreeMap::from([
            (LabelProvenance::SourceLabel, 120),
            (LabelProvenance::WeakLexicon, 40),
            (LabelProvenance::Human, 30),
        ])
    );
    let mut rows = BTreeMap::new();
    for split in Split::ALL {
        for row in running
            .snapshots
            .read(&manifest.snapshot_id, split)
            .unwrap()
        {
            assert!(
                rows.insert(row.review_id.clone(), row).is_none(),
                "no duplicate rows"
            );
        }
    }
    assert_eq!(rows.len(), 190);
    for (id, label) in &human {
        let row = &rows[id];
        assert_eq!(
            (row.label, row.provenance),
            (*label, LabelProvenance::Human),
            "{id}"
        );
        assert!(
            row.text.starts_with("review number"),
            "the review's text is kept"
        );
    }
    // Offsets: every message of both topics is accounted for, from offset 0 of each partition.
    let Origin::Topics { offsets, .. } = &manifest.origin else {
        panic!("curated snapshots come from topics")
    };
    for (topic, published) in [
        (&clean_topic, clean_messages),
        (&feedback_topic, feedback_messages),
    ] {
        let spans: Vec<_> = offsets
            .iter()
            .filter(|range| &range.topic == topic)
            .collect();
        assert!(spans.iter().all(|range| range.min_offset == 0), "{spans:?}");
        let covered: i64 = spans
            .iter()
            .map(|range| range.max_offset - range.min_offset + 1)
            .sum();
        assert_eq!(covered, published as i64, "{topic}: {spans:?}");
    }

    let (status, metrics) = http_get(running.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for needle in [
        "sentiflow_trainer_events_in_total{topic=\"reviews.clean\"}",
        "sentiflow_trainer_events_in_total{topic=\"labels.feedback\"}",
        "sentiflow_trainer_dlq_total{error_kind=\"invalid_json\"}",
        "sentiflow_trainer_labels_total{provenance=\"none\"}",
        "sentiflow_trainer_segments_written_total",
        "sentiflow_trainer_segment_write_seconds_bucket",
        "sentiflow_trainer_compactions_total{outcome=\"written\",scope=",
        "sentiflow_trainer_compacted_away_records_total{reason=\"superseded\"}",
        "sentiflow_trainer_compaction_seconds_bucket",
        "sentiflow_trainer_segment_files",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    assert!(eventually(Duration::from_secs(10), || running.health.is_ready()).await);
    let (status, _) = http_get(running.http_addr, "/readyz").await.unwrap();
    assert_eq!(status, 200);
    shutdown.cancel();
    running.task.await.unwrap().unwrap();

    // The CLI path builds the same snapshot from the same segments.
    let cli = sentiflow::cli::Cli::try_parse_from([
        "sentiflow",
        "dataset",
        "snapshot",
        "--data-dir",
        data.path().to_str().unwrap(),
    ])
    .expect("CLI flags");
    let sentiflow::cli::Command::Dataset { command } = cli.command else {
        panic!("parsed as a dataset command")
    };
    tokio::task::spawn_blocking(move || sentiflow::dataset::run(command))
        .await
        .unwrap()
        .expect("sentiflow dataset snapshot");
    let ids = running.snapshots.list().unwrap();
    assert_eq!(ids.len(), 2);
    let from_cli = running.snapshots.manifest(&ids[1]).unwrap();
    assert_eq!(
        (from_cli.rows, &from_cli.class_counts, &from_cli.origin),
        (manifest.rows, &manifest.class_counts, &manifest.origin)
    );

    // `sentiflow dataset compact` folds what is left into one segment; the snapshot stays the same,
    // and a snapshot of the folded segment has the same files (row for row: the same checksums).
    let dataset_cli = |args: &[&str]| {
        let cli = sentiflow::cli::Cli::try_parse_from(
            ["sentiflow", "dataset"]
                .iter()
                .chain(args)
                .chain(&["--data-dir", data.path().to_str().unwrap()]),
        )
        .expect("CLI flags");
        let sentiflow::cli::Command::Dataset { command } = cli.command else {
            panic!("parsed as a dataset command")
        };
        command
    };
    let compact = dataset_cli(&["compact"]);
    tokio::task::spawn_blocking(move || sentiflow::dataset::run(compact))
        .await
        .unwrap()
        .expect("sentiflow dataset compact");
    assert_eq!(running.segments.list().unwrap().len(), 1);
    let snapshot = dataset_cli(&["snapshot"]);
    tokio::task::spawn_blocking(move || sentiflow::dataset::run(snapshot))
        .await
        .unwrap()
        .expect("sentiflow dataset snapshot after compaction");
    let ids = running.snapshots.list().unwrap();
    let compacted = running.snapshots.manifest(&ids[2]).unwrap();
    assert_eq!(
        (&compacted.origin, &compacted.files),
        (&manifest.origin, &manifest.files)
    );
    let error = sentiflow::cli::Cli::try_parse_from([
        "sentiflow",
        "dataset",
        "compact",
        "--retain-days",
        "0",
    ])
    .unwrap_err();
    assert!(error.to_string().contains("--retain-days"), "{error}");
}

/// Stops the trainer with records in its open segment (gracefully, then by aborting its task as a crash
/// would), publishes more, restarts it: the snapshot holds every review exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mid_stream_loses_nothing_and_snapshots_have_no_duplicates() {
    for graceful in [true, false] {
        let kafka = kafka_with_topics().await;
        let redis_server = redis();
        let data = tempfile::tempdir().unwrap();
        let producer = ResilientProducer::new(&kafka, "test").unwrap();
        let clean_topic = kafka.topic(topics::REVIEWS_CLEAN);
        let reviews: Vec<CleanReview> = (0..2000)
            .map(|index| {
                let class = Sentiment::from_index(index % 3).unwrap();
                clean_review(index, Some((class, LabelProvenance::SourceLabel)))
            })
            .collect();
        publish_all(&producer, &clean_topic, encoded(&reviews[..1500])).await;

        // The first run writes one full segment of 1000 and holds the other 500 in its open segment
        // (its deadline is far away) when it stops.
        let shutdown = CancellationToken::new();
        let first = sentiflow_trainer::start(
            trainer_config(&kafka, &redis_server.url(), data.path(), 1000, 600_000),
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert!(
            eventually(Duration::from_secs(90), || {
                let stats = first.stats.snapshot();
                stats.durable == 1000 && stats.consumed == 1500
            })
            .await,
            "first run: {:?}",
            first.stats.snapshot()
        );
        if graceful {
            shutdown.cancel();
            first.task.await.unwrap().unwrap();
            assert_eq!(
                first.stats.snapshot().durable,
                1500,
                "a graceful stop closes the segment"
            );
        } else {
            first.task.abort();
            let _ = first.task.await;
            assert_eq!(
                first.stats.snapshot().durable,
                1000,
                "the open segment died with the task"
            );
        }
        publish_all(&producer, &clean_topic, encoded(&reviews[1500..])).await;

        let shutdown = CancellationToken::new();
        let mut config = trainer_config(&kafka, &redis_server.url(), data.path(), 200, 200);
        config.snapshot_every_rows = Some(400);
        let second = sentiflow_trainer::start(config, shutdown.clone())
            .await
            .unwrap();
        let segments = second.segments.clone();
        assert!(
            eventually(Duration::from_secs(90), || segment_contents(&segments)
                .0
                .len()
                == reviews.len())
            .await,
            "every review reached a segment (graceful: {graceful})"
        );
        assert!(
            eventually(Duration::from_secs(60), || second
                .stats
                .snapshot()
                .snapshots
                >= 1)
            .await,
            "the schedule cut a snapshot"
        );
        shutdown.cancel();
        second.task.await.unwrap().unwrap();

        let (segments, snapshots) = (second.segments.clone(), second.snapshots.clone());
        let curated = tokio::task::spawn_blocking(move || {
            curate_snapshot(&segments, &snapshots, &CurateOptions::default())
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            curated.manifest.rows,
            reviews.len() as u64,
            "graceful: {graceful}"
        );
        let mut ids = BTreeSet::new();
        for split in Split::ALL {
            for row in second
                .snapshots
                .read(&curated.manifest.snapshot_id, split)
                .unwrap()
            {
                assert!(ids.insert(row.review_id), "no duplicate rows");
            }
        }
        let expected: BTreeSet<String> = reviews
            .iter()
            .map(|review| review.review_id.clone())
            .collect();
        assert_eq!(ids, expected);
        let (_, records) = segment_contents(&second.segments);
        if graceful {
            assert_eq!(
                records,
                reviews.len(),
                "a graceful stop commits: nothing read twice"
            );
            assert_eq!(curated.counts.redelivered, 0);
        } else {
            assert!(records >= reviews.len());
            assert_eq!(curated.counts.redelivered as usize, records - reviews.len());
        }
        assert!(
            second.snapshots.list().unwrap().len() >= 2,
            "scheduled and on-demand snapshots"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_holds_curation_and_the_snapshot_loses_nothing() {
    let mut broker = sentiflow_tests::OwnBroker::start().await;
    let kafka = broker.kafka.clone();
    let redis_server = redis();
    let data = tempfile::tempdir().unwrap();
    let producer = ResilientProducer::new(&sentiflow_tests::patient(&kafka), "test").unwrap();
    let clean_topic = kafka.topic(topics::REVIEWS_CLEAN);
    let reviews: Vec<CleanReview> = (0..1000)
        .map(|index| {
            let class = Sentiment::from_index(index % 3).unwrap();
            clean_review(index, Some((class, LabelProvenance::SourceLabel)))
        })
        .collect();
    publish_all(&producer, &clean_topic, encoded(&reviews[..500])).await;
    let shutdown = CancellationToken::new();
    let running = sentiflow_trainer::start(
        trainer_config(&kafka, &redis_server.url(), data.path(), 200, 500),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(90), || running.stats.snapshot().durable
            == 500)
        .await,
        "before the outage: {:?}",
        running.stats.snapshot()
    );

    // The broker goes away while reviews keep coming (a producer queues them).
    broker.stop().await;
    let queued = {
        let producer = producer.clone();
        let topic = clean_topic.clone();
        let rest = encoded(&reviews[500..]);
        tokio::spawn(async move { publish_all(&producer, &topic, rest).await })
    };
    let http_addr = running.http_addr;
    assert!(
        sentiflow_tests::status_eventually(http_addr, "/readyz", 503, Duration::from_secs(30))
            .await,
        "/readyz turns 503 while the broker is down"
    );
    assert!(!running.task.is_finished(), "the trainer holds on");

    // Back on the same port and data: every review reaches a segment, and a snapshot has each once.
    broker.restart_and_await(queued).await;
    let segments = running.segments.clone();
    assert!(
        eventually(Duration::from_secs(120), || segment_contents(&segments)
            .0
            .len()
            == reviews.len())
        .await,
        "every review reached a segment: {:?}",
        running.stats.snapshot()
    );
    assert!(
        eventually(Duration::from_secs(60), || running.health.is_ready()).await,
        "ready again"
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
    let (segments, snapshots) = (running.segments.clone(), running.snapshots.clone());
    let curated = tokio::task::spawn_blocking(move || {
        curate_snapshot(&segments, &snapshots, &CurateOptions::default())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(curated.manifest.rows, reviews.len() as u64);
    let mut ids = BTreeSet::new();
    for split in Split::ALL {
        for row in running
            .snapshots
            .read(&curated.manifest.snapshot_id, split)
            .unwrap()
        {
            assert!(ids.insert(row.review_id), "no duplicate rows");
        }
    }
    assert_eq!(ids.len(), reviews.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_is_refused_at_start() {
    let kafka = KafkaArgs::local("127.0.0.1:1", "unused");
    let data = tempfile::tempdir().unwrap();
    let mut config = trainer_config(&kafka, "redis://127.0.0.1:1/", data.path(), 0, 100);
    let error = sentiflow_trainer::start(config.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("--segment-max-messages"),
        "{error}"
    );
    config.segment_max_messages = 10;
    config.telemetry.drain_timeout_ms = 60_000;
    let error = sentiflow_trainer::start(config.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("session timeout"), "{error}");
    config.telemetry.drain_timeout_ms = 5_000;
    config.retrain_group_id = config.group_id.clone();
    let error = sentiflow_trainer::start(config.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--retrain-group-id"), "{error}");
    config.retrain_group_id = format!("{}-retrain", config.group_id);
    config.gate.epsilon = f64::NAN;
    let error = sentiflow_trainer::start(config.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--gate-epsilon"), "{error}");
    config.gate.epsilon = 0.005;
    config.label_weights.human = 0.0;
    let error = sentiflow_trainer::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("--human-label-weight"),
        "{error}"
    );
    // On the command line the same value never gets that far.
    let error = sentiflow_trainer::TrainerConfig::try_parse_from([
        "sentiflow-trainer",
        "--human-label-weight=-1",
    ])
    .unwrap_err()
    .to_string();
    assert!(error.contains("between 0.01 and 1000"), "{error}");
}
