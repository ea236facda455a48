//! Kafka plumbing with at-least-once semantics: consumers that store offsets only when told to, idempotent
//! producers that are rebuilt after a fatal error, topic creation from the catalogue, and lag metrics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use tracing::{debug, info, warn};

use crate::catalogue::Catalogue;
use crate::config::KafkaArgs;
use crate::health::Health;

/// Client context shared by our consumers and producers: turns librdkafka statistics into lag metrics
/// and logs rebalances and commit failures.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    /// Service name, the `<service>` part of metric names.
    service: &'static str,
    /// Which partitions this client consumes, and which it reported a lag for.
    lag: Arc<Mutex<LagState>>,
}

/// The partitions behind a client's lag gauges.
#[derive(Debug, Default)]
struct LagState {
    /// Assigned to this consumer by the group (kept from the rebalance callbacks; librdkafka's
    /// statistics go on listing a revoked partition with its last committed offset, so they cannot
    /// tell).
    assigned: HashSet<(String, i32)>,
    /// Reported in the last statistics.
    reported: HashSet<(String, i32)>,
}

impl ServiceContext {
    /// A context whose metrics are named after `service`.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            lag: Arc::default(),
        }
    }

    fn lag_state(&self) -> std::sync::MutexGuard<'_, LagState> {
        self.lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `(topic, partition)` pairs of a partition list.
fn partitions_of(list: &TopicPartitionList) -> impl Iterator<Item = (String, i32)> + '_ {
    list.elements()
        .into_iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
}

/// The lag gauges to set from one statistics report: each partition `state` has assigned, with its lag
/// as observed, and 0 once for a partition reported before and not now (`state.reported` updated).
/// Without the 0, a replica that lost a partition in a rebalance would show its last lag for ever,
/// and a sum over replicas (the lag alert, the dashboards) would add it to the new owner's.
fn lag_updates(
    state: &mut LagState,
    observed: impl IntoIterator<Item = (String, i32, i64)>,
) -> Vec<(String, i32, f64)> {
    let mut now_reported = HashSet::new();
    let mut updates = Vec::new();
    for (topic, partition, lag) in observed {
        let key = (topic, partition);
        // -1: not fetched (yet); partition -1 is librdkafka's internal UA partition, never assigned.
        if lag < 0 || !state.assigned.contains(&key) {
            continue;
        }
        updates.push((key.0.clone(), key.1, lag as f64));
        now_reported.insert(key);
    }
    for (topic, partition) in state.reported.difference(&now_reported) {
        updates.push((topic.clone(), *partition, 0.0));
    }
    state.reported = now_reported;
    updates
}

impl ClientContext for ServiceContext {
    fn stats(&self, statistics: Statistics) {
        let name = format!("sentiflow_{}_consumer_lag_messages", self.service);
        let observed = statistics.topics.into_iter().flat_map(|(topic, stats)| {
            stats
                .partitions
                .into_iter()
                .map(move |(partition, partition_stats)| {
                    (topic.clone(), partition, partition_stats.consumer_lag)
                })
        });
        let updates = lag_updates(&mut self.lag_state(), observed);
        for (topic, partition, lag) in updates {
            metrics::gauge!(name.clone(), "topic" => topic, "partition" => partition.to_string())
                .set(lag);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(format!(
            "sentiflow_{}_kafka_client_errors_total",
            self.service
        ))
        .increment(1);
        warn!(service = self.service, %error, reason, "kafka client error");
    }
}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        info!(service = self.service, ?rebalance, "rebalance starting");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        info!(service = self.service, ?rebalance, "rebalance done");
        // Eager assignors revoke everything, then assign the new set; cooperative ones add and
        // remove partitions: both are followed by adding and removing. Not read back with
        // `consumer.assignment()`: doing that here made closing a consumer hang now and then (the
        // trainer's broker-outage test, 2 runs of 3).
        match rebalance {
            Rebalance::Assign(assigned) => {
                self.lag_state().assigned.extend(partitions_of(assigned))
            }
            Rebalance::Revoke(revoked) => {
                let mut state = self.lag_state();
                for partition in partitions_of(revoked) {
                    state.assigned.remove(&partition);
                }
            }
            Rebalance::Error(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(service = self.service, ?offsets, "offsets committed"),
            // "No offset stored" just means nothing new was processed since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                metrics::counter!(format!("sentiflow_{}_commit_errors_total", self.service))
                    .increment(1);
                warn!(service = self.service, %error, "offset commit failed");
            }
        }
    }
}

/// The consumer type every service uses.
pub type Consumer = StreamConsumer<ServiceContext>;

/// Builds a consumer for at-least-once processing and subscribes it to `topics`.
///
/// Auto-commit stays on but auto offset *store* is off: an offset becomes committable only when the
/// caller calls `store_offset` after every output of that message was acknowledged by the broker.
pub fn at_least_once_consumer(
    kafka: &KafkaArgs,
    group_id: &str,
    service: &'static str,
    topics: &[&str],
) -> KafkaResult<Consumer> {
    let mut config = kafka.client_config();
    config
        .set("group.id", group_id)
        .set("client.id", format!("sentiflow-{service}"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "45000")
        .set("statistics.interval.ms", "5000");
    override_from_options(&mut config, kafka);
    let consumer: Consumer = config.create_with_context(ServiceContext::new(service))?;
    consumer.subscribe(topics)?;
    info!(service, group_id, ?topics, brokers = %kafka.brokers, "consumer subscribed");
    Ok(consumer)
}

/// User-supplied `--kafka-option`s win over our role defaults: call after setting them.
pub fn override_from_options(config: &mut rdkafka::ClientConfig, kafka: &KafkaArgs) {
    for option in &kafka.options {
        config.set(option.key.clone(), option.value.clone());
    }
}

/// Builds an idempotent, acks=all producer (ordering per partition survives retries).
pub fn idempotent_producer(
    kafka: &KafkaArgs,
    service: &'static str,
) -> KafkaResult<FutureProducer<ServiceContext>> {
    let mut config = kafka.client_config();
    config
        .set("client.id", format!("sentiflow-{service}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "60000")
        .set("statistics.interval.ms", "0");
    override_from_options(&mut config, kafka);
    config.create_with_context(ServiceContext::new(service))
}

/// An idempotent producer that replaces itself after a fatal error instead of staying dead
/// (an idempotent producer can hit a fatal "out of order sequence" error; see rust-rdkafka #627).
#[derive(Clone)]
pub struct ResilientProducer {
    /// Settings used to rebuild the producer.
    kafka: KafkaArgs,
    /// Service name for metrics and client id.
    service: &'static str,
    /// The live producer; swapped wholesale on a fatal error.
    inner: Arc<RwLock<FutureProducer<ServiceContext>>>,
}

impl std::fmt::Debug for ResilientProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientProducer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ResilientProducer {
    /// Creates the producer.
    pub fn new(kafka: &KafkaArgs, service: &'static str) -> KafkaResult<Self> {
        Ok(Self {
            kafka: kafka.clone(),
            service,
            inner: Arc::new(RwLock::new(idempotent_producer(kafka, service)?)),
        })
    }

    /// The current underlying producer (for metadata queries).
    pub fn current(&self) -> FutureProducer<ServiceContext> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Enqueues one message and returns the future of its broker acknowledgement.
    /// Waits (asynchronously) while librdkafka's local queue is full: that is backpressure, not an error.
    pub async fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> KafkaResult<DeliveryFuture> {
        loop {
            let producer = self.current();
            let mut record = FutureRecord::to(topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(headers) = headers.clone() {
                record = record.headers(headers);
            }
            match producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    self.rebuild_if_fatal();
                    return Err(error);
                }
            }
        }
    }

    /// Rebuilds the producer when librdkafka reports a fatal error; returns whether it did.
    pub fn rebuild_if_fatal(&self) -> bool {
        let fatal = self.current().client().fatal_error();
        let Some((code, reason)) = fatal else {
            return false;
        };
        warn!(
            service = self.service,
            ?code,
            reason,
            "producer hit a fatal error; rebuilding it"
        );
        metrics::counter!(format!(
            "sentiflow_{}_producer_rebuilds_total",
            self.service
        ))
        .increment(1);
        match idempotent_producer(&self.kafka, self.service) {
            Ok(fresh) => {
                *self
                    .inner
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
                true
            }
            Err(error) => {
                warn!(service = self.service, %error, "could not rebuild producer");
                false
            }
        }
    }

    /// Waits until every enqueued message is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.current().flush(timeout)
    }
}

/// Commits the stored offsets synchronously at shutdown. "No offset stored" (nothing new since the last
/// commit) is not an error; a failed commit is logged with `if_lost`, what it means for this consumer.
pub fn commit_at_shutdown(consumer: &Consumer, service: &'static str, if_lost: &str) {
    use rdkafka::consumer::CommitMode;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => info!(service, "final offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => warn!(service, %error, "final commit failed; {if_lost}"),
    }
}

/// Awaits a delivery future, turning a dropped future into a Kafka error.
pub async fn await_delivery(future: DeliveryFuture) -> KafkaResult<(i32, i64)> {
    match future.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _message))) => Err(error),
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}

/// Creates every catalogue topic under `prefix` that does not exist yet; returns the names created.
///
/// `replication_factor_cap` bounds the catalogue's replication factor (a single local broker needs 1).
pub async fn ensure_topics(
    kafka: &KafkaArgs,
    catalogue: &Catalogue,
    replication_factor_cap: Option<i32>,
) -> KafkaResult<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let specs: Vec<(String, i32, i32, String, &'static str)> = catalogue
        .topics
        .iter()
        .map(|spec| {
            let replication = replication_factor_cap.map_or(spec.replication_factor, |cap| {
                spec.replication_factor.min(cap)
            });
            (
                kafka.topic(&spec.name),
                spec.partitions,
                replication,
                spec.retention_ms.to_string(),
                spec.cleanup_policy.as_str(),
            )
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, partitions, replication, retention, cleanup)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(*replication))
                .set("retention.ms", retention)
                .set("cleanup.policy", cleanup)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_name, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| warn!(topic = name, ?code, "topic creation failed"));
            }
        }
    }
    if !created.is_empty() {
        info!(?created, "topics created");
    }
    Ok(created)
}

/// Periodically checks that the brokers answer a metadata request and reports it as the `kafka` check.
pub fn spawn_kafka_probe(
    producer: ResilientProducer,
    health: Health,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let client = producer.current();
            let outcome = tokio::task::spawn_blocking(move || {
                client
                    .client()
                    .fetch_metadata(None, Duration::from_secs(3))
                    .map(|metadata| metadata.brokers().len())
            })
            .await;
            match outcome {
                Ok(Ok(brokers)) if brokers > 0 => {
                    health.set_check("kafka", true, format!("{brokers} broker(s) reachable"))
                }
                Ok(Ok(_)) => health.set_check("kafka", false, "metadata lists no broker"),
                Ok(Err(error)) => health.set_check("kafka", false, error.to_string()),
                Err(join_error) => health.set_check("kafka", false, join_error.to_string()),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// True for errors that will not heal by retrying the same message (bad topic, message too large, auth).
pub fn is_permanent_produce_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(rows: &[(&str, i32, i64)]) -> Vec<(String, i32, i64)> {
        rows.iter()
            .map(|(topic, partition, lag)| ((*topic).to_owned(), *partition, *lag))
            .collect()
    }

    fn sorted(mut updates: Vec<(String, i32, f64)>) -> Vec<(String, i32, f64)> {
        updates.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        updates
    }

    #[test]
    fn a_partition_this_client_no_longer_consumes_shows_no_lag() {
        let assigned = |partitions: &[i32]| -> HashSet<(String, i32)> {
            partitions
                .iter()
                .map(|partition| ("raw".to_owned(), *partition))
                .collect()
        };
        let mut state = LagState {
            assigned: assigned(&[0, 1, 2]),
            reported: HashSet::new(),
        };
        // Two partitions consumed; the UA partition and one not fetched yet are left out.
        let updates = lag_updates(
            &mut state,
            observed(&[
                ("raw", 0, 120),
                ("raw", 1, 7),
                ("raw", -1, 0),
                ("raw", 2, -1),
            ]),
        );
        assert_eq!(
            sorted(updates),
            [("raw".to_owned(), 0, 120.0), ("raw".to_owned(), 1, 7.0)]
        );
        // A rebalance moved partition 1 to another replica; the statistics still list it with the
        // group's committed offset, but it is no longer this client's: 0 once, then left alone.
        state.assigned = assigned(&[0, 2]);
        let updates = lag_updates(&mut state, observed(&[("raw", 0, 90), ("raw", 1, 7)]));
        assert_eq!(
            sorted(updates),
            [("raw".to_owned(), 0, 90.0), ("raw".to_owned(), 1, 0.0)]
        );
        let updates = lag_updates(&mut state, observed(&[("raw", 0, 80), ("raw", 1, 7)]));
        assert_eq!(updates, [("raw".to_owned(), 0, 80.0)]);
        // A partition gone from the statistics goes to 0 as well; one assigned again is reported.
        state.assigned = assigned(&[1]);
        let updates = lag_updates(&mut state, observed(&[("raw", 1, 3)]));
        assert_eq!(
            sorted(updates),
            [("raw".to_owned(), 0, 0.0), ("raw".to_owned(), 1, 3.0)]
        );
    }
}
