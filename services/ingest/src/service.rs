//! The ingest loop: collect a batch, process it, claim dedupe keys in one Redis round trip, produce
//! clean events and dead letters, await every acknowledgement, then store the batch's offsets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::DeliveryFuture;
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::topics;
use sentiflow_common::dlq::DeadLetterSink;
use sentiflow_common::events::SourceCoordinate;
use sentiflow_common::health::Health;
use sentiflow_common::kafka::{self, Consumer, ResilientProducer};
use sentiflow_common::retry::Backoff;
use sentiflow_common::store::{self, RedisStore};
use sentiflow_common::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::SERVICE;
use crate::config::IngestConfig;
use crate::dedupe::{self, Claim, Verdict};
use crate::error::{IngestError, Rejection};
use crate::label::Labeller;
use crate::pipeline::Processor;

/// Running totals of this process, for `sentiflow up`'s summary and for tests (Prometheus has the same).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages whose batch was fully processed (offsets stored).
    pub consumed: AtomicU64,
    /// Clean reviews published.
    pub clean: AtomicU64,
    /// Dead letters published.
    pub dead_lettered: AtomicU64,
    /// Duplicates dropped (event id or text).
    pub duplicates: AtomicU64,
}

impl IngestStats {
    /// (consumed, clean, dead-lettered, duplicates) as plain numbers.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.consumed.load(Ordering::Relaxed),
            self.clean.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
        )
    }
}

/// A started ingest service.
#[derive(Debug)]
pub struct Running {
    /// Totals since start.
    pub stats: Arc<IngestStats>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub http_addr: SocketAddr,
    /// Live health state (tests watch readiness through it or over HTTP).
    pub health: Health,
    /// Ends when the service has drained and committed after `shutdown`.
    pub task: tokio::task::JoinHandle<Result<(), IngestError>>,
}

/// Runs the service until `shutdown` is cancelled, then drains and commits.
pub async fn run(config: IngestConfig, shutdown: CancellationToken) -> Result<(), IngestError> {
    let running = start(config, shutdown).await?;
    running.task.await.unwrap_or_else(|join_error| {
        std::panic::resume_unwind(join_error.into_panic());
    })
}

/// Starts the service and returns once it is consuming (errors in configuration surface here).
pub async fn start(
    config: IngestConfig,
    shutdown: CancellationToken,
) -> Result<Running, IngestError> {
    config.validate()?;
    let redis = RedisStore::connect_lazy(&config.redis)?;
    let api_keys = config.api_auth.load(
        SERVICE,
        config.telemetry.http_addr,
        config.http_max_reviews,
        &redis,
    )?;
    let lexicon_path = match &config.lexicon_path {
        Some(path) => path.clone(),
        None => CacheDir::from_env()
            .and_then(|cache| cache.require(cache.vader_lexicon(), "VADER lexicon"))
            .map_err(|error| IngestError::Lexicon(error.to_string()))?,
    };
    let lexicon = sentiflow_model::lexicon::Lexicon::load(&lexicon_path)
        .map_err(|error| IngestError::Lexicon(format!("{}: {error}", lexicon_path.display())))?;
    info!(path = %lexicon_path.display(), entries = lexicon.len(), "lexicon loaded");
    let processor = Arc::new(Processor {
        max_payload_bytes: config.max_payload_bytes,
        author_hash_key: config.author_hash_key.expose().as_bytes().to_vec(),
        lang_allow: config
            .lang_allow
            .iter()
            .map(|lang| lang.trim().to_ascii_lowercase())
            .filter(|lang| !lang.is_empty())
            .collect(),
        lang_policy: config.lang_policy,
        labeller: Labeller::new(lexicon, config.weak_label_threshold),
    });

    let health = Health::new(SERVICE);
    // `POST /v1/reviews` only needs the broker; without Redis the stream waits (nothing passes
    // unchecked) while reviews are still accepted (once Redis has answered: a wrong address at start
    // never becomes ready).
    health.expect_checks(&["kafka", "redis"]);
    health.mark_optional(&["redis"]);
    let raw_topic = config.kafka.topic(topics::REVIEWS_RAW);
    let producer = ResilientProducer::new(&config.kafka, SERVICE)?;
    let consumer =
        kafka::at_least_once_consumer(&config.kafka, &config.group_id, SERVICE, &[&raw_topic])?;

    let probes_stop = shutdown.child_token();
    let http_cut_off = CancellationToken::new();
    let (http_addr, http_task) = telemetry::serve_http(
        config.telemetry.http_addr,
        health.clone(),
        crate::http::router(
            processor.clone(),
            producer.clone(),
            raw_topic.clone(),
            crate::http::HttpLimits {
                max_reviews: config.http_max_reviews,
                max_review_bytes: config.max_payload_bytes,
                max_concurrent: config.http_max_concurrent,
            },
            http_cut_off.clone(),
            api_keys.clone(),
        ),
        probes_stop.clone(),
    )
    .await?;
    let api_keys_reloader = api_keys.map(|keys| keys.spawn_reloader(probes_stop.clone()));
    let probes = [
        kafka::spawn_kafka_probe(
            producer.clone(),
            health.clone(),
            Duration::from_secs(5),
            probes_stop.clone(),
        ),
        store::spawn_redis_probe(
            redis.clone(),
            health.clone(),
            Duration::from_secs(1),
            probes_stop.clone(),
        ),
    ];

    let worker = Worker {
        clean_topic: config.kafka.topic(topics::REVIEWS_CLEAN),
        dlq: DeadLetterSink::new(
            producer.clone(),
            config.kafka.topic(topics::REVIEWS_DLQ),
            SERVICE,
        ),
        producer,
        consumer,
        redis,
        processor,
        transform_workers: std::thread::available_parallelism().map_or(1, usize::from),
        health: health.clone(),
        max_batch: config.max_batch,
        batch_wait: Duration::from_millis(config.batch_wait_ms),
        dedupe_ttl_secs: config.dedupe_ttl_secs,
        dedupe_text: config.dedupe_text,
        drain_timeout: Duration::from_millis(config.telemetry.drain_timeout_ms),
        shutdown,
        stats: Arc::new(IngestStats::default()),
    };
    let stats = worker.stats.clone();
    info!(%http_addr, topic = %raw_topic, "ingest started");
    let http_drain = Duration::from_millis(config.telemetry.drain_timeout_ms);
    let task = tokio::spawn(async move {
        let result = worker.run().await;
        probes_stop.cancel();
        for probe in probes.into_iter().chain(api_keys_reloader) {
            let _ = probe.await;
        }
        // In-flight `POST /v1/reviews` requests get the drain time to finish; then they answer 503
        // (their clients resend; reviews that landed are deduplicated by event id).
        let mut http_task = http_task;
        if tokio::time::timeout(http_drain, &mut http_task)
            .await
            .is_err()
        {
            warn!(
                drain_ms = http_drain.as_millis() as u64,
                "HTTP requests still in flight after the drain time: answering them 503"
            );
            http_cut_off.cancel();
            if tokio::time::timeout(Duration::from_secs(5), &mut http_task)
                .await
                .is_err()
            {
                http_task.abort();
            }
        }
        result
    });
    Ok(Running {
        stats,
        http_addr,
        health,
        task,
    })
}

/// A batch of consumed messages with their receive times, shared with the transform threads.
type Batch = Arc<Vec<(OwnedMessage, Instant)>>;

/// Transforms a batch on up to `workers` threads (chunks keep their order).
fn transform_parallel(
    processor: &Processor,
    batch: &[(OwnedMessage, Instant)],
    workers: usize,
) -> Vec<Outcome> {
    sentiflow_model::parallel::map_ordered(batch, workers, 32, |(message, _)| {
        transform(processor, message)
    })
}

/// Processes one message into what should be published for it.
fn transform(processor: &Processor, message: &OwnedMessage) -> Outcome {
    match processor.process(message.payload(), &coordinate(message)) {
        Ok(review) => {
            record_clean_metrics(&review);
            Outcome::Clean {
                key: review.review_id.clone(),
                payload: serde_json::to_vec(&review).expect("clean reviews always serialise"),
                text_hash: review.text_hash.clone(),
                event_id: review.source_event_id.clone(),
                verdict: Verdict::New,
                label: review.label.as_ref().map(|label| label.provenance.as_str()),
            }
        }
        Err(rejection) => Outcome::Rejected(rejection),
    }
}

/// What one consumed message turned into.
enum Outcome {
    /// A clean review to publish, with its dedupe verdict filled in later.
    Clean {
        key: String,
        payload: Vec<u8>,
        text_hash: String,
        event_id: String,
        verdict: Verdict,
        label: Option<&'static str>,
    },
    /// A permanent rejection for the dead-letter topic.
    Rejected(Rejection),
}

struct Worker {
    consumer: Consumer,
    producer: ResilientProducer,
    dlq: DeadLetterSink,
    redis: RedisStore,
    processor: Arc<Processor>,
    transform_workers: usize,
    health: Health,
    clean_topic: String,
    max_batch: usize,
    batch_wait: Duration,
    dedupe_ttl_secs: u64,
    dedupe_text: bool,
    drain_timeout: Duration,
    shutdown: CancellationToken,
    stats: Arc<IngestStats>,
}

/// Why a batch was abandoned (its offsets stay unstored, so it is redelivered later).
#[derive(Debug)]
struct Abandoned;

impl Worker {
    async fn run(self) -> Result<(), IngestError> {
        while let Some(batch) = self.next_batch().await {
            let started = Instant::now();
            if self.process_batch(&batch).await.is_err() {
                warn!(
                    messages = batch.len(),
                    "batch abandoned at shutdown; it will be redelivered"
                );
                break;
            }
            debug!(
                messages = batch.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch done"
            );
        }
        self.finish();
        Ok(())
    }

    /// Collects up to `max_batch` messages; the first waits indefinitely, the rest up to `batch_wait`.
    /// Returns None on shutdown.
    async fn next_batch(&self) -> Option<Batch> {
        let mut batch = Vec::with_capacity(self.max_batch);
        let first = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(message) => break message.detach(),
                    Err(error) => self.receive_error(&error).await,
                },
            }
        };
        batch.push((first, Instant::now()));
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while batch.len() < self.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push((message.detach(), Instant::now())),
                Ok(Err(error)) => {
                    self.receive_error(&error).await;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        Some(Arc::new(batch))
    }

    async fn receive_error(&self, error: &rdkafka::error::KafkaError) {
        metrics::counter!("sentiflow_ingest_errors_total", "error_kind" => "kafka_receive")
            .increment(1);
        warn!(%error, "kafka receive error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn process_batch(&self, batch: &Batch) -> Result<(), Abandoned> {
        metrics::counter!("sentiflow_ingest_events_in_total").increment(batch.len() as u64);
        metrics::histogram!("sentiflow_ingest_batch_size_rows").record(batch.len() as f64);

        // Cleaning and language detection are CPU work (~150 µs a review): run them off the async
        // workers, spread over the cores, keeping the batch order.
        let processor = self.processor.clone();
        let shared = batch.clone();
        let workers = self.transform_workers;
        let mut outcomes =
            tokio::task::spawn_blocking(move || transform_parallel(&processor, &shared, workers))
                .await
                .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()));

        self.dedupe(batch, &mut outcomes).await?;
        self.publish(batch, &outcomes).await?;

        for (message, received) in batch.iter() {
            if let Err(error) =
                self.consumer
                    .store_offset(message.topic(), message.partition(), message.offset())
            {
                // The partition was revoked meanwhile; its new owner will redeliver (at-least-once).
                debug!(%error, partition = message.partition(), offset = message.offset(), "offset not stored");
            }
            metrics::histogram!("sentiflow_ingest_processing_seconds")
                .record(received.elapsed().as_secs_f64());
        }
        self.stats
            .consumed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Fills in dedupe verdicts, retrying Redis outages with backoff until it answers (or shutdown).
    async fn dedupe(
        &self,
        batch: &[(OwnedMessage, Instant)],
        outcomes: &mut [Outcome],
    ) -> Result<(), Abandoned> {
        let mut claims = Vec::new();
        let mut positions = Vec::new();
        for (index, ((message, _), outcome)) in batch.iter().zip(outcomes.iter()).enumerate() {
            if let Outcome::Clean {
                text_hash,
                event_id,
                ..
            } = outcome
            {
                claims.push(Claim {
                    event_key: self.redis.key(&["dedupe", "event", event_id]),
                    text_key: self
                        .dedupe_text
                        .then(|| self.redis.key(&["dedupe", "text", text_hash])),
                    coordinate: format!(
                        "{}/{}/{}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    ),
                });
                positions.push(index);
            }
        }
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let verdicts = loop {
            let mut connection = self.redis.connection();
            match dedupe::check_batch(&mut connection, &claims, self.dedupe_ttl_secs).await {
                Ok(verdicts) => break verdicts,
                Err(error) => {
                    self.health.set_check("redis", false, error.to_string());
                    metrics::counter!("sentiflow_ingest_retries_total", "dependency" => "redis")
                        .increment(1);
                    if backoff.should_log() {
                        warn!(%error, attempts = backoff.attempts(), "redis unavailable; holding the batch and retrying");
                    }
                    self.wait_or_abandon(backoff.next_delay()).await?;
                }
            }
        };
        for (position, verdict) in positions.into_iter().zip(verdicts) {
            if let Outcome::Clean { verdict: slot, .. } = &mut outcomes[position] {
                *slot = verdict;
            }
        }
        Ok(())
    }

    /// Produces every output of the batch and waits for all acknowledgements; failed sends are retried.
    async fn publish(
        &self,
        batch: &[(OwnedMessage, Instant)],
        outcomes: &[Outcome],
    ) -> Result<(), Abandoned> {
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut backoff = Backoff::new(Duration::from_secs(5));
        while !pending.is_empty() {
            let mut futures: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(pending.len());
            let mut failed = Vec::new();
            for &index in &pending {
                match self.enqueue(&batch[index].0, &outcomes[index]).await {
                    Ok(Some(future)) => futures.push((index, future)),
                    Ok(None) => {}
                    Err(error) => {
                        warn!(%error, "enqueue failed");
                        failed.push(index);
                    }
                }
            }
            let deliveries =
                futures::future::join_all(futures.into_iter().map(|(index, future)| async move {
                    (index, kafka::await_delivery(future).await)
                }));
            let results = if self.shutdown.is_cancelled() {
                tokio::time::timeout(self.drain_timeout, deliveries)
                    .await
                    .map_err(|_| Abandoned)?
            } else {
                deliveries.await
            };
            for (index, result) in results {
                if let Err(error) = result {
                    metrics::counter!("sentiflow_ingest_retries_total", "dependency" => "kafka")
                        .increment(1);
                    if backoff.should_log() {
                        warn!(%error, "delivery failed; retrying");
                    }
                    failed.push(index);
                }
            }
            if failed.is_empty() {
                self.health
                    .set_check("kafka", true, "deliveries acknowledged");
                break;
            }
            self.producer.rebuild_if_fatal();
            self.health.set_check(
                "kafka",
                false,
                format!("{} deliveries failed", failed.len()),
            );
            failed.sort_unstable();
            pending = failed;
            self.wait_or_abandon(backoff.next_delay()).await?;
        }
        for outcome in outcomes {
            let counter = match outcome {
                Outcome::Clean {
                    verdict: Verdict::New,
                    ..
                } => &self.stats.clean,
                Outcome::Clean { .. } => &self.stats.duplicates,
                Outcome::Rejected(_) => &self.stats.dead_lettered,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Outcome::Clean {
                    verdict: Verdict::New,
                    label,
                    ..
                } => {
                    metrics::counter!("sentiflow_ingest_events_out_total").increment(1);
                    metrics::counter!("sentiflow_ingest_labels_total", "provenance" => label.unwrap_or("none")).increment(1);
                }
                Outcome::Clean { verdict, .. } => {
                    metrics::counter!("sentiflow_ingest_dedupe_hits_total", "kind" => verdict.kind()).increment(1);
                }
                Outcome::Rejected(_) => {}
            }
        }
        Ok(())
    }

    /// Enqueues the output of one message: a clean event, a dead letter, or nothing for a duplicate.
    async fn enqueue(
        &self,
        message: &OwnedMessage,
        outcome: &Outcome,
    ) -> rdkafka::error::KafkaResult<Option<DeliveryFuture>> {
        match outcome {
            Outcome::Clean {
                verdict: Verdict::New,
                key,
                payload,
                ..
            } => {
                let (_, trace) = sentiflow_common::trace::headers_after(message);
                self.producer
                    .enqueue(
                        &self.clean_topic,
                        Some(key.as_bytes()),
                        payload,
                        Some(trace),
                    )
                    .await
                    .map(Some)
            }
            Outcome::Clean { .. } => Ok(None),
            Outcome::Rejected(rejection) => {
                let letter = self.dlq.letter(
                    rejection.kind(),
                    &rejection.to_string(),
                    coordinate(message),
                    message.key(),
                    message.payload().unwrap_or_default(),
                );
                self.dlq.enqueue(&letter, message).await.map(Some)
            }
        }
    }

    /// Sleeps before a retry; gives up (leaving offsets unstored) when shutdown was requested.
    async fn wait_or_abandon(&self, delay: Duration) -> Result<(), Abandoned> {
        tokio::select! {
            () = self.shutdown.cancelled() => Err(Abandoned),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Commits stored offsets synchronously and flushes the producer.
    fn finish(&self) {
        kafka::commit_at_shutdown(&self.consumer, SERVICE, "the last batch may be redelivered");
        if let Err(error) = self.producer.flush(self.drain_timeout) {
            warn!(%error, "producer flush failed at shutdown");
        }
        info!("ingest stopped");
    }
}

fn coordinate(message: &OwnedMessage) -> SourceCoordinate {
    SourceCoordinate {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

fn record_clean_metrics(review: &sentiflow_common::events::CleanReview) {
    for (kind, count) in [
        ("email", review.redactions.emails),
        ("phone", review.redactions.phones),
        ("card", review.redactions.cards),
    ] {
        if count > 0 {
            metrics::counter!("sentiflow_ingest_redactions_total", "kind" => kind)
                .increment(u64::from(count));
        }
    }
    if !review.lang_allowed {
        metrics::counter!("sentiflow_ingest_language_marked_total").increment(1);
    }
}
