//! The inference loop: consume `reviews.clean` into micro-batches (closed on size or deadline), score
//! each batch on a blocking thread with the model that was serving when the batch closed, then publish
//! predictions, alerts and dead letters in batch order and store offsets once all are acknowledged.
//! When the queue of batches is full consumption waits for a slot; if none frees up within
//! `--pause-after-ms` (a stalled pipeline) the assigned partitions are paused, so consumer lag (not
//! memory) absorbs the overload. Pausing is kept for stalls because librdkafka drops its prefetched
//! messages on pause and fetches them again on resume: pausing on every full queue halved throughput.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::DeliveryFuture;
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::topics;
use sentiflow_common::dlq::DeadLetterSink;
use sentiflow_common::events::{Event as _, SourceCoordinate};
use sentiflow_common::health::Health;
use sentiflow_common::kafka::{self, Consumer, ResilientProducer};
use sentiflow_common::retry::Backoff;
use sentiflow_common::store::{self, RedisStore};
use sentiflow_common::telemetry;
use sentiflow_model::runtime::{DeviceRequest, OrtEnvironment};
use sentiflow_trainer::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::SERVICE;
use crate::batcher::PredictBatcher;
use crate::config::InferConfig;
use crate::error::InferError;
use crate::http::{self, HttpLimits};
use crate::model::{self, DeviceProbe, LoadSpec, ModelSlot, ServingModel};
use crate::score::{self, Outcome, ScoredBatch};
use crate::swap::{self, Swapper};

/// Running totals of this process, for `sentiflow up`'s summary and for tests (Prometheus has the same).
#[derive(Debug, Default)]
pub struct InferStats {
    /// Messages whose batch was fully published (offsets stored).
    pub consumed: AtomicU64,
    /// Predictions published.
    pub predictions: AtomicU64,
    /// Negative alerts published.
    pub alerts: AtomicU64,
    /// Dead letters published.
    pub dead_lettered: AtomicU64,
    /// Times consumption was paused for backpressure.
    pub pauses: AtomicU64,
}

impl InferStats {
    /// (consumed, predictions, alerts, dead-lettered) as plain numbers.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.consumed.load(Ordering::Relaxed),
            self.predictions.load(Ordering::Relaxed),
            self.alerts.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
        )
    }
}

/// A started inference service.
#[derive(Debug)]
pub struct Running {
    /// Totals since start.
    pub stats: Arc<InferStats>,
    /// Where `/v1/predict`, `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are served.
    pub http_addr: SocketAddr,
    /// Live health state.
    pub health: Health,
    /// The served model (tests and `up` read the version from it).
    pub slot: ModelSlot,
    /// What the device probe found.
    pub device: DeviceProbe,
    /// Ends when the service has drained and committed after `shutdown`.
    pub task: JoinHandle<Result<(), InferError>>,
}

/// Runs the service until `shutdown` is cancelled, then drains and commits.
pub async fn run(config: InferConfig, shutdown: CancellationToken) -> Result<(), InferError> {
    let running = start(config, shutdown).await?;
    running.task.await.unwrap_or_else(|join_error| {
        std::panic::resume_unwind(join_error.into_panic());
    })
}

/// The ONNX Runtime library: the flag, else `ORT_DYLIB_PATH`, else the one in the setup cache.
fn ort_environment(config: &InferConfig) -> Result<OrtEnvironment, InferError> {
    let path = match (&config.ort_dylib, std::env::var_os("ORT_DYLIB_PATH")) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => path.into(),
        (None, None) => CacheDir::from_env()
            .and_then(|cache| cache.require(cache.onnxruntime_lib(), "ONNX Runtime library"))
            .map_err(|error| InferError::Runtime(error.to_string()))?,
    };
    sentiflow_model::runtime::init(&path).map_err(|error| InferError::Runtime(error.to_string()))
}

/// Starts the service and returns once it is running (configuration and device errors surface here).
/// Consumption starts as soon as a model is serving: at once when the registry has a champion,
/// otherwise when one is promoted.
pub async fn start(
    config: InferConfig,
    shutdown: CancellationToken,
) -> Result<Running, InferError> {
    config.validate()?;
    let redis = RedisStore::connect_lazy(&config.redis)?;
    let api_keys = config.api_auth.load(
        SERVICE,
        config.telemetry.http_addr,
        config.http_max_texts,
        &redis,
    )?;
    // Install the metrics recorder before the first gauge (the device) is set, or it is lost.
    telemetry::prometheus();
    let env = ort_environment(&config)?;
    let request = DeviceRequest::from(config.device);
    let intra_threads = config.intra_threads;
    let probe_env = env.clone();
    let probe = tokio::task::spawn_blocking(move || {
        model::probe_device(&probe_env, request, intra_threads)
    })
    .await
    .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
    .map_err(|error| match error {
        sentiflow_model::runtime::RuntimeError::CudaUnavailable(reason) => {
            InferError::CudaUnavailable(reason)
        }
        other => InferError::Runtime(other.to_string()),
    })?;
    let health = Health::new(SERVICE);
    // `POST /v1/predict` needs only the loaded model: a broker or Redis outage holds the prediction
    // stream and model updates, and must not take the API of every replica out of rotation (once
    // they have answered: an instance started with a wrong address never becomes ready).
    health.expect_checks(&["kafka", "redis"]);
    health.mark_optional(&["kafka", "redis"]);
    report_device(&health, request, &probe);

    let producer = ResilientProducer::new(&config.kafka, SERVICE)?;
    let registry = Registry::new(config.models_dir(), redis.clone());
    let family = crate::family::choose(
        config.family,
        probe.device,
        &registry,
        &config.model_name,
        &config.encoder_model_name,
    )
    .await;
    info!(model = %family.model_name, family = family.family, reason = %family.reason, "serving family decided");
    metrics::gauge!("sentiflow_infer_family_info", "family" => family.family).set(1.0);
    health.set_info("family", family.family);
    health.set_info("family_reason", family.reason.as_str());
    health.set_info("model_name", family.model_name.as_str());
    let slot = ModelSlot::default();
    let spec = LoadSpec {
        device: probe.request_for_models(request),
        workers: config.workers,
        intra_threads: config.intra_threads,
        max_batch: config.max_batch.max(config.http_max_texts),
    };
    let shadow_slot = ModelSlot::default();
    let swapper = Swapper::new(
        env,
        registry,
        slot.clone(),
        spec,
        family.model_name.clone(),
        family.family,
        health.clone(),
        producer.clone(),
        config.kafka.topic(topics::MODELS_UPDATES),
    )
    .with_family_switch(family.switch_to.clone());
    let swapper = Arc::new(if config.shadow_fraction > 0.0 {
        swapper.with_shadow(shadow_slot.clone())
    } else {
        swapper
    });
    health.set_check("model", false, "loading the champion");
    let updates = swap::updates_consumer(
        &config.kafka,
        &config.group_id,
        &config.kafka.topic(topics::MODELS_UPDATES),
    )?;

    let probes_stop = shutdown.child_token();
    let limits = HttpLimits {
        max_texts: config.http_max_texts,
        max_text_bytes: config.http_max_text_bytes,
        max_concurrent: config.http_max_concurrent,
    };
    let (http_addr, http_task) = telemetry::serve_http(
        config.telemetry.http_addr,
        health.clone(),
        http::router(
            slot.clone(),
            limits,
            api_keys.clone(),
            // Requests beyond the runs at once wait in line (at most the slots of
            // --http-max-concurrent) and are merged.
            PredictBatcher::spawn(
                config.http_batch_texts,
                crate::batcher::runs_at_once(config.workers),
                config.http_max_concurrent,
            ),
        ),
        probes_stop.clone(),
    )
    .await?;
    let mut background = vec![
        kafka::spawn_kafka_probe(
            producer.clone(),
            health.clone(),
            Duration::from_secs(5),
            probes_stop.clone(),
        ),
        store::spawn_redis_probe(
            redis,
            health.clone(),
            Duration::from_secs(1),
            probes_stop.clone(),
        ),
    ];
    background.extend(api_keys.map(|keys| keys.spawn_reloader(probes_stop.clone())));
    // The first registry check runs at once (the interval's first tick), before any update arrives.
    background.push(tokio::spawn(swap::follow_updates(
        swapper,
        updates,
        Duration::from_secs(config.registry_poll_secs),
        probes_stop.clone(),
    )));

    let stats = Arc::new(InferStats::default());
    let worker = Worker {
        clean_topic: config.kafka.topic(topics::REVIEWS_CLEAN),
        predictions_topic: config.kafka.topic(topics::PREDICTIONS),
        alerts_topic: config.kafka.topic(topics::ALERTS_NEGATIVE),
        shadow_topic: config.kafka.topic(topics::PREDICTIONS_SHADOW),
        shadow_slot,
        dlq: DeadLetterSink::new(
            producer.clone(),
            config.kafka.topic(topics::REVIEWS_DLQ),
            SERVICE,
        ),
        producer,
        slot: slot.clone(),
        health: health.clone(),
        stats: stats.clone(),
        config,
        shutdown,
    };
    info!(%http_addr, device = %probe.device, "infer started");
    let task = tokio::spawn(async move {
        let result = worker.run().await;
        probes_stop.cancel();
        for task in background {
            let _ = task.await;
        }
        let _ = http_task.await;
        result
    });
    Ok(Running {
        stats,
        http_addr,
        health,
        slot,
        device: probe,
        task,
    })
}

/// Logs, exports and shows in `/healthz` the device ONNX Runtime really gave this process.
fn report_device(health: &Health, request: DeviceRequest, probe: &DeviceProbe) {
    metrics::gauge!("sentiflow_infer_device_info", "device" => probe.device.as_str()).set(1.0);
    health.set_info("device", probe.device.as_str());
    health.set_info("device_requested", request.as_str());
    match &probe.fallback_reason {
        Some(reason) => {
            warn!(requested = %request, device = %probe.device, %reason, "CUDA is not available; inference runs on CPU");
            health.set_info("device_fallback_reason", reason.as_str());
        }
        None => info!(requested = %request, device = %probe.device, "inference device decided"),
    }
}

/// Pauses every assigned partition not in `paused` yet (and records it there).
fn pause_unpaused(consumer: &Consumer, paused: &mut std::collections::HashSet<(String, i32)>) {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            warn!(%error, "reading the assignment to pause it failed");
            return;
        }
    };
    let mut newly = rdkafka::TopicPartitionList::new();
    for element in assignment.elements() {
        if paused.insert((element.topic().to_owned(), element.partition())) {
            newly.add_partition(element.topic(), element.partition());
        }
    }
    if newly.count() > 0
        && let Err(error) = consumer.pause(&newly)
    {
        warn!(%error, "pausing partitions failed");
    }
}

/// A batch being scored, in consumption order.
struct InFlight {
    messages: Arc<Vec<OwnedMessage>>,
    received: Instant,
    /// None when scoring was given up at shutdown.
    scoring: JoinHandle<Option<ScoredBatch>>,
}

/// A scored batch whose outputs were handed to the producer, waiting for the broker.
struct Enqueued {
    messages: Arc<Vec<OwnedMessage>>,
    received: Instant,
    scored: ScoredBatch,
    deliveries: Vec<(usize, DeliveryFuture)>,
    failed: Vec<usize>,
}

struct Worker {
    config: InferConfig,
    producer: ResilientProducer,
    dlq: DeadLetterSink,
    slot: ModelSlot,
    health: Health,
    clean_topic: String,
    predictions_topic: String,
    alerts_topic: String,
    shadow_topic: String,
    shadow_slot: ModelSlot,
    stats: Arc<InferStats>,
    shutdown: CancellationToken,
}

/// Why publishing stopped (offsets of the unfinished batch stay unstored; it is redelivered).
#[derive(Debug)]
struct Abandoned;

impl Worker {
    async fn run(self) -> Result<(), InferError> {
        // Consuming without a model would only fill memory: wait for the first one.
        tokio::select! {
            () = self.shutdown.cancelled() => {
                info!("infer stopped before a model was served");
                return Ok(());
            }
            model = self.slot.wait_for_model() => {
                info!(version = %model.model_ref().version, "first model serving; consuming");
            }
        }
        let consumer = Arc::new(kafka::at_least_once_consumer(
            &self.config.kafka,
            &self.config.group_id,
            SERVICE,
            &[&self.clean_topic],
        )?);
        let worker = Arc::new(self);
        let (queue, queued) = mpsc::channel::<InFlight>(worker.config.max_queued_batches);
        // Enqueued batches waiting for their acknowledgements; bounded like the scoring queue.
        let (acks, pending) = mpsc::channel::<Enqueued>(worker.config.max_queued_batches);
        let publisher = {
            let worker = worker.clone();
            tokio::spawn(async move { worker.publish_loop(queued, acks).await })
        };
        let acker = {
            let worker = worker.clone();
            let consumer = consumer.clone();
            tokio::spawn(async move { worker.ack_loop(&consumer, pending).await })
        };
        worker.consume_loop(&consumer, queue).await;
        // The queue sender is dropped: the publisher drains what was queued and drops its sender, then
        // the acker drains what was enqueued.
        let published = publisher.await;
        let acked = acker.await;
        // What was acknowledged is committed even when a loop panicked; the panic then ends the
        // service as a panic (a non-zero exit a supervisor restarts), not as a clean stop.
        worker.finish(&consumer);
        for ended in [published, acked] {
            if let Err(join_error) = ended
                && join_error.is_panic()
            {
                std::panic::resume_unwind(join_error.into_panic());
            }
        }
        Ok(())
    }

    /// Collects micro-batches, starts scoring each on a blocking thread and queues it for publishing;
    /// waits while the queue is full and pauses the partitions if it stays full (a stall).
    async fn consume_loop(&self, consumer: &Consumer, queue: mpsc::Sender<InFlight>) {
        let mut carried: Vec<OwnedMessage> = Vec::new();
        loop {
            let Some(messages) = self.next_batch(consumer, &mut carried).await else {
                break;
            };
            let model = self
                .slot
                .current()
                .expect("a model is serving once consumption started");
            let in_flight = self.score_async(model, messages);
            let permit = match queue.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => {
                    metrics::counter!("sentiflow_infer_queue_full_total").increment(1);
                    let pause_after = Duration::from_millis(self.config.pause_after_ms);
                    let waited = tokio::select! {
                        () = self.shutdown.cancelled() => None,
                        reserved = tokio::time::timeout(pause_after, queue.reserve()) => Some(reserved),
                    };
                    let permit = match waited {
                        Some(Ok(Ok(permit))) => Some(permit),
                        Some(Ok(Err(_closed))) => break,
                        None => None,
                        Some(Err(_stalled)) => {
                            self.wait_paused(consumer, &queue, &mut carried).await
                        }
                    };
                    match permit {
                        Some(permit) => permit,
                        None => {
                            // Shutdown while waiting: the batch is scored but not published; its
                            // offsets stay unstored and it is redelivered.
                            in_flight.scoring.abort();
                            break;
                        }
                    }
                }
                Err(mpsc::error::TrySendError::Closed(())) => break,
            };
            permit.send(in_flight);
            metrics::gauge!("sentiflow_infer_queue_depth_batches")
                .set((queue.max_capacity() - queue.capacity()) as f64);
        }
    }

    /// Pauses the assigned partitions until the queue has room for half of its batches again, keeping
    /// the consumer polled (messages already fetched are carried into the next batch).
    async fn wait_paused<'a>(
        &self,
        consumer: &Consumer,
        queue: &'a mpsc::Sender<InFlight>,
        carried: &mut Vec<OwnedMessage>,
    ) -> Option<mpsc::Permit<'a, InFlight>> {
        let mut paused = std::collections::HashSet::new();
        pause_unpaused(consumer, &mut paused);
        let mut paused_at = Instant::now();
        self.stats.pauses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sentiflow_infer_pauses_total").increment(1);
        metrics::gauge!("sentiflow_infer_paused").set(1.0);
        debug!("queue full: partitions paused");
        let resume_at = queue.max_capacity().div_ceil(2);
        let permit = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break None,
                received = consumer.recv() => match received {
                    Ok(message) => carried.push(message.detach()),
                    Err(error) => self.receive_error(&error).await,
                },
                () = tokio::time::sleep(Duration::from_millis(5)) => {
                    if queue.capacity() >= resume_at {
                        break queue.try_reserve().ok();
                    }
                    // A rebalance during the pause assigns partitions unpaused (new ones, and ones
                    // taken away and given back): without this their whole backlog would pile up in
                    // `carried`. New partitions at once, the whole assignment again every 100 ms.
                    if paused_at.elapsed() >= Duration::from_millis(100) {
                        paused.clear();
                        paused_at = Instant::now();
                    }
                    pause_unpaused(consumer, &mut paused);
                }
            }
        };
        // Resume what is assigned now, even on shutdown: a paused partition would stay paused for a
        // later reuse of this consumer's assignment.
        match consumer.assignment() {
            Ok(assignment) => {
                if let Err(error) = consumer.resume(&assignment) {
                    warn!(%error, "resuming partitions failed");
                }
            }
            Err(error) => warn!(%error, "reading the assignment to resume it failed"),
        }
        metrics::gauge!("sentiflow_infer_paused").set(0.0);
        permit
    }

    /// Up to `max_batch` messages: the first waits indefinitely, the rest up to `batch_wait_ms`.
    /// Returns None on shutdown.
    async fn next_batch(
        &self,
        consumer: &Consumer,
        carried: &mut Vec<OwnedMessage>,
    ) -> Option<Vec<OwnedMessage>> {
        let max_batch = self.config.max_batch;
        let mut batch: Vec<OwnedMessage> = carried.drain(..carried.len().min(max_batch)).collect();
        if batch.is_empty() {
            let first = loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return None,
                    received = consumer.recv() => match received {
                        Ok(message) => break message.detach(),
                        Err(error) => self.receive_error(&error).await,
                    },
                }
            };
            batch.push(first);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.batch_wait_ms);
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(error)) => {
                    self.receive_error(&error).await;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        Some(batch)
    }

    async fn receive_error(&self, error: &rdkafka::error::KafkaError) {
        metrics::counter!("sentiflow_infer_errors_total", "error_kind" => "kafka_receive")
            .increment(1);
        warn!(%error, "kafka receive error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Starts scoring `messages` on a blocking thread. A failing model run (not bad input: that is a
    /// dead letter) is retried with backoff on the same model, never skipped.
    fn score_async(&self, model: Arc<ServingModel>, messages: Vec<OwnedMessage>) -> InFlight {
        let received = Instant::now();
        let messages = Arc::new(messages);
        let shared = messages.clone();
        let threshold = self.config.alert_threshold;
        let shadow_fraction = self.config.shadow_fraction;
        let challenger = (shadow_fraction > 0.0)
            .then(|| self.shadow_slot.current())
            .flatten();
        let shutdown = self.shutdown.clone();
        let scoring = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_secs(5));
            loop {
                let model = model.clone();
                let challenger = challenger.clone();
                let batch = shared.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let shadow = challenger.as_deref().map(|model| score::Shadow {
                        model,
                        fraction: shadow_fraction,
                    });
                    score::score_messages(&model, shadow, &batch, threshold)
                })
                .await
                .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()));
                match result {
                    Ok(scored) => return Some(scored),
                    Err(error) => {
                        metrics::counter!("sentiflow_infer_errors_total", "error_kind" => error.kind()).increment(1);
                        if backoff.should_log() {
                            warn!(%error, "inference failed; retrying the batch");
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => return None,
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            }
        });
        metrics::histogram!("sentiflow_infer_batch_size_rows").record(messages.len() as f64);
        InFlight {
            messages,
            received,
            scoring,
        }
    }

    /// Enqueues the outputs of each scored batch in consumption order without waiting for the broker,
    /// so the next batch is on its way while this one's acknowledgements come back.
    async fn publish_loop(
        &self,
        mut queued: mpsc::Receiver<InFlight>,
        acks: mpsc::Sender<Enqueued>,
    ) {
        let drain_deadline = Duration::from_millis(self.config.telemetry.drain_timeout_ms);
        while let Some(InFlight {
            messages,
            received,
            scoring,
        }) = queued.recv().await
        {
            let scored = if self.shutdown.is_cancelled() {
                match tokio::time::timeout(drain_deadline, scoring).await {
                    Ok(Ok(Some(scored))) => scored,
                    _ => break,
                }
            } else {
                match scoring.await {
                    Ok(Some(scored)) => scored,
                    Ok(None) => break,
                    Err(join_error) if join_error.is_panic() => {
                        std::panic::resume_unwind(join_error.into_panic())
                    }
                    Err(_cancelled) => break,
                }
            };
            let all: Vec<usize> = (0..messages.len()).collect();
            let (deliveries, failed) = self.enqueue_all(&messages, &scored, &all).await;
            let enqueued = Enqueued {
                messages,
                received,
                scored,
                deliveries,
                failed,
            };
            if acks.send(enqueued).await.is_err() {
                break;
            }
            metrics::gauge!("sentiflow_infer_queue_depth_batches").set(queued.len() as f64);
        }
        // Anything left in the queue is dropped unpublished; its offsets were never stored.
        queued.close();
        while let Some(in_flight) = queued.recv().await {
            in_flight.scoring.abort();
        }
    }

    /// Waits for each enqueued batch's acknowledgements in order, re-sends what failed, then stores the
    /// batch's offsets: an offset is stored only once every output of its batch and of every earlier
    /// batch is acknowledged.
    async fn ack_loop(&self, consumer: &Consumer, mut pending: mpsc::Receiver<Enqueued>) {
        while let Some(enqueued) = pending.recv().await {
            let Enqueued {
                messages,
                received,
                scored,
                deliveries,
                failed,
            } = enqueued;
            if self
                .await_acknowledged(&messages, &scored, deliveries, failed)
                .await
                .is_err()
            {
                warn!(
                    messages = messages.len(),
                    "batch abandoned at shutdown; it will be redelivered"
                );
                break;
            }
            for message in messages.iter() {
                if let Err(error) =
                    consumer.store_offset(message.topic(), message.partition(), message.offset())
                {
                    // The partition was revoked meanwhile; its new owner will redeliver (at-least-once).
                    debug!(%error, partition = message.partition(), offset = message.offset(), "offset not stored");
                }
            }
            self.record(&messages, received, &scored);
            self.publish_shadow(&messages, &scored).await;
        }
        pending.close();
        while pending.recv().await.is_some() {}
    }

    fn record(&self, messages: &[OwnedMessage], received: Instant, scored: &ScoredBatch) {
        let now = Utc::now();
        let mut predictions = 0u64;
        let mut alerts = 0u64;
        let mut dead = 0u64;
        for outcome in &scored.outcomes {
            match outcome {
                Outcome::Predicted {
                    prediction,
                    alert,
                    review_event_time,
                } => {
                    predictions += 1;
                    alerts += u64::from(alert.is_some());
                    metrics::counter!("sentiflow_infer_predictions_total", "label" => prediction.label.as_str(), "model_version" => prediction.model.version.clone()).increment(1);
                    let end_to_end = (now - *review_event_time).num_microseconds().unwrap_or(0);
                    metrics::histogram!("sentiflow_infer_end_to_end_seconds")
                        .record((end_to_end.max(0) as f64) / 1e6);
                }
                Outcome::Rejected(_) => dead += 1,
            }
        }
        if alerts > 0 {
            metrics::counter!("sentiflow_infer_alerts_total").increment(alerts);
        }
        if scored.scored > 0 {
            metrics::histogram!("sentiflow_infer_inference_seconds")
                .record(scored.inference_seconds);
        }
        metrics::histogram!("sentiflow_infer_batch_seconds")
            .record(received.elapsed().as_secs_f64());
        metrics::counter!("sentiflow_infer_events_in_total").increment(messages.len() as u64);
        self.stats
            .consumed
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        self.stats
            .predictions
            .fetch_add(predictions, Ordering::Relaxed);
        self.stats.alerts.fetch_add(alerts, Ordering::Relaxed);
        self.stats.dead_lettered.fetch_add(dead, Ordering::Relaxed);
    }

    /// Best effort: shadow predictions go to `predictions.shadow` without holding up offsets, and
    /// their agreement with the champion goes to metrics.
    async fn publish_shadow(&self, messages: &[OwnedMessage], scored: &ScoredBatch) {
        if scored.shadow.is_empty() {
            return;
        }
        // A shadow prediction continues the trace of its review's message, like the served one.
        let message_of: std::collections::HashMap<&str, &OwnedMessage> = scored
            .outcomes
            .iter()
            .zip(messages)
            .filter_map(|(outcome, message)| match outcome {
                Outcome::Predicted { prediction, .. } => {
                    Some((prediction.review_id.as_str(), message))
                }
                Outcome::Rejected(_) => None,
            })
            .collect();
        for shadow in &scored.shadow {
            let champion = shadow.champion_label.as_str();
            let challenger = shadow.prediction.label.as_str();
            metrics::counter!("sentiflow_infer_shadow_predictions_total", "champion_label" => champion, "challenger_label" => challenger).increment(1);
            if champion == challenger {
                metrics::counter!("sentiflow_infer_shadow_agreements_total").increment(1);
            }
            let payload = shadow
                .prediction
                .to_json_vec()
                .expect("predictions always serialise");
            let trace = message_of
                .get(shadow.prediction.review_id.as_str())
                .map(|message| sentiflow_common::trace::headers_after(*message).1);
            if let Err(error) = self
                .producer
                .enqueue(
                    &self.shadow_topic,
                    Some(shadow.prediction.key().as_bytes()),
                    &payload,
                    trace,
                )
                .await
            {
                metrics::counter!("sentiflow_infer_errors_total", "error_kind" => "shadow_publish")
                    .increment(1);
                debug!(%error, "shadow prediction not published");
            }
        }
    }

    /// Enqueues the outputs of the messages at `indices`; returns the delivery futures (by message
    /// index) and the indices whose enqueue failed.
    async fn enqueue_all(
        &self,
        messages: &[OwnedMessage],
        scored: &ScoredBatch,
        indices: &[usize],
    ) -> (Vec<(usize, DeliveryFuture)>, Vec<usize>) {
        let mut futures = Vec::with_capacity(indices.len() * 2);
        let mut failed = Vec::new();
        for &index in indices {
            match self
                .enqueue(&messages[index], &scored.outcomes[index])
                .await
            {
                Ok(enqueued) => futures.extend(enqueued.into_iter().map(|future| (index, future))),
                Err(error) => {
                    warn!(%error, "enqueue failed");
                    failed.push(index);
                }
            }
        }
        (futures, failed)
    }

    /// Awaits `deliveries`; re-sends failed messages with backoff until all are acknowledged.
    /// Gives up (Abandoned) only at shutdown.
    async fn await_acknowledged(
        &self,
        messages: &[OwnedMessage],
        scored: &ScoredBatch,
        mut deliveries: Vec<(usize, DeliveryFuture)>,
        mut failed: Vec<usize>,
    ) -> Result<(), Abandoned> {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let drain_timeout = Duration::from_millis(self.config.telemetry.drain_timeout_ms);
        loop {
            let waiting =
                futures::future::join_all(deliveries.drain(..).map(|(index, future)| async move {
                    (index, kafka::await_delivery(future).await)
                }));
            let results = if self.shutdown.is_cancelled() {
                tokio::time::timeout(drain_timeout, waiting)
                    .await
                    .map_err(|_| Abandoned)?
            } else {
                waiting.await
            };
            for (index, result) in results {
                if let Err(error) = result {
                    metrics::counter!("sentiflow_infer_retries_total", "dependency" => "kafka")
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
                return Ok(());
            }
            self.producer.rebuild_if_fatal();
            self.health.set_check(
                "kafka",
                false,
                format!("{} deliveries failed", failed.len()),
            );
            // A message whose prediction landed but whose alert failed is sent again whole: the
            // prediction id is deterministic, so consumers can drop the copy.
            failed.sort_unstable();
            failed.dedup();
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Abandoned),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            let retry = std::mem::take(&mut failed);
            let (again, still_failed) = self.enqueue_all(messages, scored, &retry).await;
            deliveries = again;
            failed = still_failed;
        }
    }

    /// Enqueues the outputs of one message: prediction (+ alert), or a dead letter.
    async fn enqueue(
        &self,
        message: &OwnedMessage,
        outcome: &Outcome,
    ) -> rdkafka::error::KafkaResult<Vec<DeliveryFuture>> {
        match outcome {
            Outcome::Predicted {
                prediction, alert, ..
            } => {
                let payload = prediction
                    .to_json_vec()
                    .expect("predictions always serialise");
                // The prediction and its alert continue the clean review's trace.
                let (_, trace) = sentiflow_common::trace::headers_after(message);
                let mut futures = vec![
                    self.producer
                        .enqueue(
                            &self.predictions_topic,
                            Some(prediction.key().as_bytes()),
                            &payload,
                            Some(trace.clone()),
                        )
                        .await?,
                ];
                if let Some(alert) = alert {
                    let payload = alert.to_json_vec().expect("alerts always serialise");
                    futures.push(
                        self.producer
                            .enqueue(
                                &self.alerts_topic,
                                Some(alert.key().as_bytes()),
                                &payload,
                                Some(trace),
                            )
                            .await?,
                    );
                }
                Ok(futures)
            }
            Outcome::Rejected(rejection) => {
                metrics::counter!("sentiflow_infer_errors_total", "error_kind" => rejection.kind())
                    .increment(1);
                let letter = self.dlq.letter(
                    rejection.kind(),
                    &rejection.to_string(),
                    coordinate(message),
                    message.key(),
                    message.payload().unwrap_or_default(),
                );
                Ok(vec![self.dlq.enqueue(&letter, message).await?])
            }
        }
    }

    /// Commits stored offsets synchronously and flushes the producer.
    fn finish(&self, consumer: &Consumer) {
        kafka::commit_at_shutdown(consumer, SERVICE, "the last batch may be redelivered");
        let drain_timeout = Duration::from_millis(self.config.telemetry.drain_timeout_ms);
        if let Err(error) = self.producer.flush(drain_timeout) {
            warn!(%error, "producer flush failed at shutdown");
        }
        info!("infer stopped");
    }
}

fn coordinate(message: &OwnedMessage) -> SourceCoordinate {
    SourceCoordinate {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    }
}
