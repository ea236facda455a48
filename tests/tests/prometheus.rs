//! The monitoring files in `infra/`: the Prometheus config and alert rules pass `promtool check`, the
//! rules pass their unit tests (`promtool test rules`), and every sentiflow metric that the rules and
//! the Grafana dashboard query is one the services really export: named in their sources, and (for the
//! dashboard) present in `/metrics` of a running pipeline (ingest, infer, trainer, drift on a real Kafka
//! and Redis, fed raw reviews until drift has requested a retrain); the lag gauge the rules sum over
//! replicas counts each partition once across a rebalance.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("infra/prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package; infra/setup.sh installs it)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_config_and_rules_are_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "rules.yml"]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "rules_test.yml"]);
}

/// Every metric name the services export: string literals `"sentiflow_…"` in their sources, with the
/// `sentiflow_{}_…` / `sentiflow_{service}_…` templates of the shared plumbing expanded for each service.
fn exported_metrics() -> BTreeSet<String> {
    let literal = regex::Regex::new(r#""(sentiflow_[a-z_]+)""#).unwrap();
    let template = regex::Regex::new(r"sentiflow_\{[a-z_]*\}_([a-z_]+)").unwrap();
    let mut names = BTreeSet::new();
    let mut stack = vec![repo_root().join("services")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                names.extend(literal.captures_iter(&source).map(|c| c[1].to_owned()));
                for c in template.captures_iter(&source) {
                    for service in ["ingest", "infer", "drift", "trainer"] {
                        names.insert(format!("sentiflow_{service}_{}", &c[1]));
                    }
                }
            }
        }
    }
    names
}

/// Metric names in PromQL text, with `sentiflow_(a|b)_x` alternations expanded.
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let alternation = regex::Regex::new(r"sentiflow_\(([a-z|]+)\)_([a-z_]+)").unwrap();
    let plain = regex::Regex::new(r"sentiflow_[a-z_]+").unwrap();
    let mut names = BTreeSet::new();
    for c in alternation.captures_iter(text) {
        for service in c[1].split('|') {
            names.insert(format!("sentiflow_{service}_{}", &c[2]));
        }
    }
    let without = alternation.replace_all(text, "");
    names.extend(plain.find_iter(&without).map(|m| m.as_str().to_owned()));
    // A histogram is queried through its series (`_bucket`, `_sum`, `_count`) but exported as one name.
    names
        .into_iter()
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or(name.clone(), str::to_owned)
        })
        .collect()
}

fn assert_all_exported(file: &Path, queried: &BTreeSet<String>) {
    let exported = exported_metrics();
    assert!(!queried.is_empty(), "{} queries no metric", file.display());
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "{} queries metrics no service exports: {missing:?}",
        file.display()
    );
}

#[test]
fn alert_rules_only_name_exported_metrics() {
    let path = repo_root().join("infra/prometheus/rules.yml");
    let rules = std::fs::read_to_string(&path).unwrap();
    let expressions: String = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_all_exported(&path, &queried_metrics(&expressions));
}

#[test]
fn grafana_dashboard_only_queries_exported_metrics() {
    let path = repo_root().join("infra/grafana/dashboards/sentiflow-drift.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut expressions = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push_str(target["expr"].as_str().unwrap());
            expressions.push('\n');
        }
    }
    let queried = queried_metrics(&expressions);
    for needed in [
        "sentiflow_drift_signal_statistic",
        "sentiflow_drift_status",
        "sentiflow_infer_predictions_total",
        "sentiflow_drift_consumer_lag_messages",
        "sentiflow_drift_retrain_requests_total",
        "sentiflow_infer_model_info",
        "sentiflow_infer_device_info",
    ] {
        assert!(queried.contains(needed), "the dashboard shows {needed}");
    }
    assert_all_exported(&path, &queried);
}

#[test]
fn the_metric_name_check_catches_a_made_up_metric() {
    let queried = queried_metrics("rate(sentiflow_drift_made_up_total[5m])");
    assert!(!queried.is_subset(&exported_metrics()));
}

// ------------------------------------------------------------------------- a running pipeline, scraped

mod pipeline {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    use sentiflow::corpus::CorpusFormat;
    use sentiflow_common::catalogue::topics;
    use sentiflow_common::config::{RedisArgs, Secret, TelemetryArgs};
    use sentiflow_common::kafka::{ResilientProducer, await_delivery};
    use sentiflow_common::store::RedisStore;
    use sentiflow_infer::InferConfig;
    use sentiflow_infer::config::DeviceArg;
    use sentiflow_ingest::IngestConfig;
    use sentiflow_ingest::config::LangPolicy;
    use sentiflow_model::featurize::FeaturizerConfig;
    use sentiflow_model::train::TrainConfig;
    use sentiflow_tests::{http_get, kafka_with_topics, redis};
    use sentiflow_trainer::dataset::LabelWeights;
    use sentiflow_trainer::dataset::SnapshotStore;
    use sentiflow_trainer::gate::GatePolicy;
    use sentiflow_trainer::pipeline::{self, TrainDevice, TrainRequest};
    use sentiflow_trainer::registry::Registry;
    use tokio_util::sync::CancellationToken;

    const MODEL: &str = "sentiment-hashed";
    /// A failure guard for a debug build on a loaded machine, not a speed assertion.
    const WAIT: Duration = Duration::from_secs(300);

    /// Metric names in a Prometheus text exposition (histogram series folded onto their name).
    fn names(exposition: &str) -> BTreeSet<String> {
        exposition
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| line.split(['{', ' ']).next())
            .map(|name| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name)
                    .to_owned()
            })
            .collect()
    }

    async fn scrape(addr: SocketAddr) -> BTreeSet<String> {
        let (status, body) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "/metrics of {addr}");
        names(&body)
    }

    /// A small champion trained on airline rows, promoted as v1.
    async fn champion(registry: &Registry, data_dir: &Path) {
        let store = SnapshotStore::new(data_dir.join("snapshots"));
        let manifest = sentiflow::dataset::import_limited(
            &store,
            &[sentiflow_tests::shared_data("airline_tweets.csv.gz")],
            CorpusFormat::Airline,
            Some(1500),
        )
        .unwrap();
        let ort = sentiflow::train::ort_environment().expect("run infra/setup.sh");
        pipeline::train_and_register(
            &store,
            registry,
            sentiflow::train::lexicon().unwrap(),
            &ort,
            &TrainRequest {
                snapshot_id: manifest.snapshot_id,
                model_name: MODEL.to_owned(),
                featurizer: FeaturizerConfig {
                    buckets: 1 << 14,
                    ..FeaturizerConfig::default()
                },
                train: TrainConfig {
                    seed: 3,
                    epochs: 2,
                    dim: 8,
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
        registry.promote(MODEL, "v1").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn grafana_dashboard_queries_only_metrics_a_running_pipeline_exports() {
        let kafka = kafka_with_topics().await;
        let redis_server = redis();
        let prefix = format!("{}-redis", kafka.topic_prefix);
        let redis_args = || RedisArgs::local(&redis_server.url(), &prefix);
        let data = tempfile::tempdir().unwrap();
        let registry = Registry::new(
            data.path().join("models"),
            RedisStore::connect_lazy(&redis_args()).unwrap(),
        );
        champion(&registry, data.path()).await;

        let shutdown = CancellationToken::new();
        let ingest = sentiflow_ingest::start(
            IngestConfig {
                kafka: kafka.clone(),
                redis: redis_args(),
                telemetry: TelemetryArgs::ephemeral(),
                api_auth: Default::default(),
                group_id: format!("{}-ingest", kafka.topic_prefix),
                max_payload_bytes: 65_536,
                max_batch: 100,
                batch_wait_ms: 10,
                dedupe_ttl_secs: 3600,
                dedupe_text: true,
                author_hash_key: Secret::new("prometheus-test-author-key"),
                lang_allow: vec!["en".to_owned()],
                lang_policy: LangPolicy::Mark,
                weak_label_threshold: 0.5,
                lexicon_path: None,
                http_max_reviews: 500,
                http_max_concurrent: 16,
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let infer = sentiflow_infer::start(
            InferConfig {
                kafka: kafka.clone(),
                redis: redis_args(),
                telemetry: TelemetryArgs::ephemeral(),
                api_auth: Default::default(),
                group_id: format!("{}-infer", kafka.topic_prefix),
                data_dir: data.path().to_owned(),
                model_name: MODEL.to_owned(),
                device: DeviceArg::Cpu,
                ort_dylib: None,
                workers: 1,
                intra_threads: 1,
                max_batch: 64,
                batch_wait_ms: 5,
                max_queued_batches: 4,
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
        let mut trainer_config = sentiflow_trainer::TrainerConfig::local(
            kafka.clone(),
            redis_args(),
            data.path().to_owned(),
        );
        trainer_config.segment_max_age_ms = 500;
        let trainer = sentiflow_trainer::start(trainer_config, shutdown.clone())
            .await
            .unwrap();
        // Small windows, and a text-length threshold every window reaches: the second window is drift,
        // confirmed at once, so drift requests a retrain and its retrain metrics exist.
        let mut drift_config = sentiflow_drift::DriftConfig::local(kafka.clone(), redis_args());
        drift_config.group_id = format!("{}-drift", kafka.topic_prefix);
        drift_config.window_events = 100;
        drift_config.confirm_windows = 1;
        drift_config.confirm_min_events = 0;
        drift_config.thresholds = vec!["text_length_ks=0,0".parse().unwrap()];
        let drift = sentiflow_drift::start(drift_config, shutdown.clone())
            .await
            .unwrap();

        // Raw reviews, as a producer would send them.
        let records = sentiflow::corpus::read_records(
            &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
            CorpusFormat::Airline,
            Some(2400),
        )
        .unwrap();
        let producer = ResilientProducer::new(&kafka, "prometheus-test").unwrap();
        let topic = kafka.topic(topics::REVIEWS_RAW);
        let mut acks = Vec::new();
        for record in records.iter().skip(1500) {
            acks.push(
                producer
                    .enqueue(&topic, Some(record.key.as_bytes()), &record.payload, None)
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            await_delivery(ack).await.unwrap();
        }
        // The request APIs answer (the dashboard charts their requests and errors): a review and a
        // body that is not JSON to ingest, texts and a bad body to infer (200, or 503 before a model).
        for (addr, path, good) in [
            (ingest.http_addr, "/v1/reviews", records[0].payload.clone()),
            (
                infer.http_addr,
                "/v1/predict",
                br#"{"texts": ["the crew was lovely"]}"#.to_vec(),
            ),
        ] {
            for body in [good, b"{not json".to_vec()] {
                let (status, answer) = sentiflow_tests::http_post(addr, path, &body).await.unwrap();
                assert!(
                    [200, 202, 400, 503].contains(&status),
                    "{path}: {status} {answer}"
                );
            }
        }

        // Until drift has seen its retrain request and every service reports its consumer lag.
        let addrs = [
            ("ingest", ingest.http_addr),
            ("infer", infer.http_addr),
            ("trainer", trainer.http_addr),
            ("drift", drift.http_addr),
        ];
        let wanted = [
            "sentiflow_drift_retrain_requests_total",
            "sentiflow_drift_retrain_decisions_total",
            "sentiflow_drift_signal_statistic",
            "sentiflow_infer_predictions_total",
            "sentiflow_ingest_consumer_lag_messages",
            "sentiflow_infer_consumer_lag_messages",
            "sentiflow_trainer_consumer_lag_messages",
            "sentiflow_drift_consumer_lag_messages",
        ];
        let deadline = std::time::Instant::now() + WAIT;
        let mut scraped = BTreeSet::new();
        loop {
            scraped.clear();
            for (_, addr) in addrs {
                scraped.extend(scrape(addr).await);
            }
            if wanted.iter().all(|name| scraped.contains(*name)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pipeline never exported {:?}",
                wanted
                    .iter()
                    .filter(|name| !scraped.contains(**name))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // Every metric the dashboard queries is in a scrape of the running services.
        let path = super::repo_root().join("infra/grafana/dashboards/sentiflow-drift.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut expressions = String::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                expressions.push_str(target["expr"].as_str().unwrap());
                expressions.push('\n');
            }
        }
        let queried = super::queried_metrics(&expressions);
        let missing: Vec<&String> = queried.difference(&scraped).collect();
        assert!(
            missing.is_empty(),
            "the dashboard queries metrics the running pipeline does not export: {missing:?}"
        );
        // And the comparison can fail: a made-up name is not in the scrape.
        assert!(!scraped.contains("sentiflow_drift_made_up_total"));

        // The probes the deployment files use answer on every service (200 or 503, never 404).
        for (service, addr) in addrs {
            for path in ["/healthz", "/readyz"] {
                let (status, _) = http_get(addr, path).await.unwrap();
                assert!(status == 200 || status == 503, "{service} {path}: {status}");
            }
        }
        shutdown.cancel();
        let stop = Duration::from_secs(60);
        assert!(
            tokio::time::timeout(stop, ingest.task).await.is_ok(),
            "ingest stops"
        );
        assert!(
            tokio::time::timeout(stop, infer.task).await.is_ok(),
            "infer stops"
        );
        assert!(
            tokio::time::timeout(stop, trainer.task).await.is_ok(),
            "trainer stops"
        );
        assert!(
            tokio::time::timeout(stop, drift.task).await.is_ok(),
            "drift stops"
        );
    }
}

/// The lag gauge on a real broker: a replica that loses partitions in a rebalance stops showing their
/// lag, so the lag alert's and the dashboards' sum over replicas counts each partition once.
mod lag {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    use rdkafka::producer::FutureRecord;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use sentiflow_common::catalogue::topics;
    use sentiflow_common::config::KafkaOption;
    use sentiflow_common::kafka::{Consumer, at_least_once_consumer};
    use sentiflow_tests::kafka_with_topics;

    const MESSAGES_PER_PARTITION: i64 = 10;

    /// `partition → lag` of `service`'s gauge for `topic`, as the process's exposition shows it.
    fn lag_of(service: &str, topic: &str) -> BTreeMap<i32, f64> {
        let exposition = sentiflow_common::telemetry::prometheus().render();
        let prefix = format!("sentiflow_{service}_consumer_lag_messages{{");
        exposition
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .filter(|line| line.contains(&format!("topic=\"{topic}\"")))
            .filter_map(|line| {
                let partition = line.split("partition=\"").nth(1)?.split('"').next()?;
                let value = line.rsplit(' ').next()?;
                Some((partition.parse().ok()?, value.parse().ok()?))
            })
            .collect()
    }

    /// Keeps `consumer` polling (assignments, rebalances and statistics are served by the poll)
    /// without storing an offset, so the group's committed offsets stay where they are.
    fn keep_polling(consumer: Consumer) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let _ = consumer.recv().await;
            }
        })
    }

    /// Waits until `check` holds (90 s at most: a failure guard, not a speed assertion).
    async fn wait_for(what: &str, services: [&str; 2], topic: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what}: {} {:?}, {} {:?}",
                services[0],
                lag_of(services[0], topic),
                services[1],
                lag_of(services[1], topic)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Two consumers of one group, named `services` in their metrics, with `assignor` (librdkafka's
    /// default, eager, when `None`): once the second joins, each partition's lag is shown once.
    async fn each_partition_lag_counts_once_across_a_rebalance(
        services: [&'static str; 2],
        assignor: Option<&str>,
    ) {
        // The recorder exists before the first gauge is set.
        sentiflow_common::telemetry::prometheus();
        let mut kafka = kafka_with_topics().await;
        kafka.options.push(KafkaOption {
            key: "statistics.interval.ms".to_owned(),
            value: "200".to_owned(),
        });
        if let Some(assignor) = assignor {
            kafka.options.push(KafkaOption {
                key: "partition.assignment.strategy".to_owned(),
                value: assignor.to_owned(),
            });
        }
        let topic = kafka.topic(topics::REVIEWS_CLEAN);
        let group = format!("{}-lag", kafka.topic_prefix);
        let producer: rdkafka::producer::FutureProducer = kafka.client_config().create().unwrap();
        for partition in 0..3 {
            for index in 0..MESSAGES_PER_PARTITION {
                producer
                    .send(
                        FutureRecord::<str, str>::to(&topic)
                            .partition(partition)
                            .payload(&format!("message {index}")),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("delivered");
            }
        }
        // The group has committed offset 0 everywhere: each partition lags by all its messages.
        let committer: BaseConsumer = {
            let mut config: ClientConfig = kafka.client_config();
            config.set("group.id", &group);
            config.create().unwrap()
        };
        let mut offsets = TopicPartitionList::new();
        for partition in 0..3 {
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(0))
                .unwrap();
        }
        committer.commit(&offsets, CommitMode::Sync).unwrap();
        drop(committer);

        let full = MESSAGES_PER_PARTITION as f64;
        let [first_name, second_name] = services;
        let first = keep_polling(
            at_least_once_consumer(&kafka, &group, first_name, &[topic.as_str()]).unwrap(),
        );
        wait_for(
            "the only replica shows every partition's lag",
            services,
            &topic,
            || lag_of(first_name, &topic) == BTreeMap::from([(0, full), (1, full), (2, full)]),
        )
        .await;

        let second = keep_polling(
            at_least_once_consumer(&kafka, &group, second_name, &[topic.as_str()]).unwrap(),
        );
        // Once the second replica has partitions, each partition's lag is shown by one replica
        // only: the sum over both is the group's lag, not more.
        wait_for(
            "after the rebalance each partition's lag counts once",
            services,
            &topic,
            || {
                let first = lag_of(first_name, &topic);
                let second = lag_of(second_name, &topic);
                let moved = second.values().filter(|lag| **lag == full).count();
                moved > 0
                    && (0..3).all(|partition| {
                        first.get(&partition).copied().unwrap_or(0.0)
                            + second.get(&partition).copied().unwrap_or(0.0)
                            == full
                    })
            },
        )
        .await;
        first.abort();
        second.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_replica_that_loses_a_partition_in_a_rebalance_stops_showing_its_lag() {
        each_partition_lag_counts_once_across_a_rebalance(["lagfirst", "lagsecond"], None).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_same_with_the_cooperative_sticky_assignor() {
        each_partition_lag_counts_once_across_a_rebalance(
            ["coopfirst", "coopsecond"],
            Some("cooperative-sticky"),
        )
        .await;
    }
}
