//! The drift loop: consume `predictions`, `labels.feedback`, `retrain.requests` and `models.updates`
//! (a promotion or rejection releases the retrain lock); window predictions
//! per model version; publish a report per closed window; on confirmed drift, request one retrain
//! (mute, cooldown and lock permitting). Offsets of predictions are stored only once every window
//! holding them has been reported, so a crash replays the open windows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use sentiflow_common::catalogue::topics;
use sentiflow_common::dlq::DeadLetterSink;
use sentiflow_common::events::{
    DriftReport, DriftStatus, Event, LabelFeedback, ModelRef, ModelUpdate, Prediction, RequestedBy,
    RetrainRequest, SCHEMA_VERSION, SourceCoordinate, UpdateAction, new_event_id,
};
use sentiflow_common::health::Health;
use sentiflow_common::kafka::{self, Consumer, ResilientProducer};
use sentiflow_common::retry::Backoff;
use sentiflow_common::store::{self, RedisStore};
use sentiflow_common::telemetry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::SERVICE;
use crate::config::DriftConfig;
use crate::control::{Control, LastRead};
use crate::error::DriftError;
use crate::hold::{LabelHold, Release};
use crate::http::{self, Board};
use crate::monitor::{ClosedWindow, FeedbackState, LabelJoin, Monitor, Outcome};
use crate::warm::{self, PredictionEnds};

/// Running totals of this process (Prometheus has the same; tests and `up` read these).
#[derive(Debug, Default)]
pub struct DriftStats {
    /// Predictions consumed.
    pub predictions: AtomicU64,
    /// Human labels joined to a prediction.
    pub labels_joined: AtomicU64,
    /// Human labels read again after a restart that had already been applied (not counted twice).
    pub labels_replayed: AtomicU64,
    /// Human labels that replaced an earlier, different label of the same review in its version's
    /// label window (also counted in `labels_joined`: they joined a prediction).
    pub labels_relabelled: AtomicU64,
    /// Human labels that repeated the label of a review already in its version's label window (a
    /// file published twice, reviewers agreeing): not counted twice.
    pub labels_duplicate: AtomicU64,
    /// Human labels that joined no prediction (after any wait in the hold).
    pub labels_unmatched: AtomicU64,
    /// Human labels held now, waiting for their prediction.
    pub labels_held: AtomicU64,
    /// Human labels that were held (read before their prediction, or behind one that was).
    pub labels_waited: AtomicU64,
    /// Predictions read again at start-up to remember for joining labels.
    pub joins_warmed: AtomicU64,
    /// Drift reports published.
    pub reports: AtomicU64,
    /// Retrain requests published by this service.
    pub retrain_requests: AtomicU64,
}

/// A started drift service.
#[derive(Debug)]
pub struct Running {
    /// Totals since start.
    pub stats: Arc<DriftStats>,
    /// Where `/dashboard`, `/api/reports`, `/healthz`, `/readyz` and `/metrics` are served.
    pub http_addr: SocketAddr,
    /// Live health state.
    pub health: Health,
    /// The recent reports and retrain requests behind `/api/reports` (`up` summarises the loop from it).
    pub board: Board,
    /// Ends when the service has drained and committed after `shutdown`.
    pub task: JoinHandle<Result<(), DriftError>>,
}

/// Runs the service until `shutdown` is cancelled, then commits and returns.
pub async fn run(config: DriftConfig, shutdown: CancellationToken) -> Result<(), DriftError> {
    let running = start(config, shutdown).await?;
    running.task.await.unwrap_or_else(|join_error| {
        std::panic::resume_unwind(join_error.into_panic());
    })
}

/// Starts the service and returns once it consumes (configuration errors surface here).
pub async fn start(
    config: DriftConfig,
    shutdown: CancellationToken,
) -> Result<Running, DriftError> {
    config.validate()?;
    // Install the metrics recorder before anything can emit a metric, or it is lost.
    telemetry::prometheus();
    let health = Health::new(SERVICE);
    let producer = ResilientProducer::new(&config.kafka, SERVICE)?;
    let redis = RedisStore::connect_lazy(&config.redis)?;
    let control = Control::new(redis.clone());
    let mut monitor = Monitor::new(&config);
    let board = Board::new(config.history, monitor.thresholds().clone());
    let topics = Topics {
        predictions: config.kafka.topic(topics::PREDICTIONS),
        labels: config.kafka.topic(topics::LABELS_FEEDBACK),
        retrain: config.kafka.topic(topics::RETRAIN_REQUESTS),
        updates: config.kafka.topic(topics::MODELS_UPDATES),
        reports: config.kafka.topic(topics::DRIFT_REPORTS),
    };
    let consumer = kafka::at_least_once_consumer(
        &config.kafka,
        &config.group_id,
        SERVICE,
        &[
            &topics.predictions,
            &topics.labels,
            &topics.retrain,
            &topics.updates,
        ],
    )?;
    let probes_stop = shutdown.child_token();
    let (http_addr, http_task) = telemetry::serve_http(
        config.telemetry.http_addr,
        health.clone(),
        http::router(board.clone(), control.clone()),
        probes_stop.clone(),
    )
    .await?;
    let background = vec![
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
    let stats = Arc::new(DriftStats::default());
    let (label_ends, prediction_resume) =
        warm_joins(&config, &topics, &mut monitor, &stats, &shutdown).await;
    let prediction_ends = if config.max_held_labels > 0 {
        Some(PredictionEnds::new(&config.kafka, &topics.predictions)?)
    } else {
        None
    };
    let hold = LabelHold::new(
        config.max_held_labels,
        Duration::from_secs(config.label_grace_secs),
        prediction_resume,
    );
    let worker = Worker {
        dlq: DeadLetterSink::new(
            producer.clone(),
            config.kafka.topic(topics::REVIEWS_DLQ),
            SERVICE,
        ),
        producer,
        control,
        monitor,
        board: board.clone(),
        topics,
        stats: stats.clone(),
        config,
        shutdown,
        label_ends,
        hold,
        prediction_ends,
        labels_read: HashMap::new(),
        labels_freed: std::collections::BTreeSet::new(),
        overflows: 0,
        last_read: LastRead::default(),
    };
    info!(%http_addr, "drift started; dashboard at /dashboard");
    let task = tokio::spawn(async move {
        let result = worker.run(consumer).await;
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
        board,
        task,
    })
}

/// Remembers, for the label join, the predictions just before where this group resumes (read once
/// more, not windowed), so human labels arriving after a restart still join them; returns the labels
/// topic's high watermarks and where the predictions topic's partitions are resumed (each empty when
/// unknown). Best effort: on a broker error, at `JOIN_WARMUP_DEADLINE` or at shutdown the service
/// starts with what it has, and says so.
async fn warm_joins(
    config: &DriftConfig,
    topics: &Topics,
    monitor: &mut Monitor,
    stats: &DriftStats,
    shutdown: &CancellationToken,
) -> (HashMap<i32, i64>, HashMap<i32, i64>) {
    let (kafka, group, predictions, labels, capacity, stop) = (
        config.kafka.clone(),
        config.group_id.clone(),
        topics.predictions.clone(),
        topics.labels.clone(),
        config.join_capacity,
        shutdown.clone(),
    );
    let started = std::time::Instant::now();
    let read = tokio::task::spawn_blocking(move || {
        warm::recent_predictions(
            &kafka,
            &group,
            (&predictions, &labels),
            capacity,
            JOIN_WARMUP_DEADLINE,
            &stop,
        )
    })
    .await;
    match read {
        Ok(Ok(warmed)) => {
            let remembered = monitor.warm_joins(&warmed.predictions);
            stats
                .joins_warmed
                .store(remembered as u64, Ordering::Relaxed);
            metrics::counter!("sentiflow_drift_join_warmup_predictions_total")
                .increment(remembered as u64);
            if let Some(why) = &warmed.stopped_early {
                warn!(remembered, %why,
                    "label join warm-up stopped early; labels for older predictions may not join");
            } else {
                info!(
                    remembered,
                    read = warmed.predictions.len(),
                    invalid = warmed.invalid,
                    seconds = started.elapsed().as_secs_f64(),
                    "label join warmed from recent predictions"
                );
            }
            (warmed.label_ends, warmed.prediction_resume)
        }
        Ok(Err(error)) => {
            warn!(%error, "label join warm-up failed; labels for predictions read before this start will not join");
            (HashMap::new(), HashMap::new())
        }
        Err(join_error) => {
            warn!(%join_error, "label join warm-up panicked; starting without it");
            (HashMap::new(), HashMap::new())
        }
    }
}

/// Longest the start-up join warm-up reads before the service starts without the rest.
const JOIN_WARMUP_DEADLINE: Duration = Duration::from_secs(60);

/// Physical topic names.
struct Topics {
    predictions: String,
    labels: String,
    retrain: String,
    updates: String,
    reports: String,
}

/// Publishing stopped by shutdown (the offsets stay unstored; the input is replayed).
#[derive(Debug)]
struct Abandoned;

struct Worker {
    config: DriftConfig,
    producer: ResilientProducer,
    dlq: DeadLetterSink,
    control: Control,
    monitor: Monitor,
    board: Board,
    topics: Topics,
    stats: Arc<DriftStats>,
    shutdown: CancellationToken,
    /// High watermarks of the labels topic's partitions at start.
    label_ends: HashMap<i32, i64>,
    /// Human labels waiting for their prediction.
    hold: LabelHold,
    /// The predictions topic's ends, for what a label read now must wait for (`None`: hold off).
    prediction_ends: Option<PredictionEnds>,
    /// Last offset read per `labels.feedback` partition.
    labels_read: HashMap<i32, i64>,
    /// `labels.feedback` partitions whose held labels were applied since their offsets were stored.
    labels_freed: std::collections::BTreeSet<i32>,
    /// Labels the full hold let go without waiting.
    overflows: u64,
    /// Mute and cooldowns as last read, for windows that close while Redis cannot be read.
    last_read: LastRead,
}

impl Worker {
    /// A version's stored human-label state, without applied label offsets at or beyond the labels
    /// topic's current ends (recorded against an earlier incarnation of the topic: a recreated topic
    /// counts from 0 again and its labels must not be taken for replays).
    async fn load_feedback(&self, model: &ModelRef) -> Result<Option<FeedbackState>, Abandoned> {
        let mut state = self
            .retry_redis("load human-label state", || {
                self.control.load_feedback(model)
            })
            .await?;
        if let Some(state) = state.as_mut()
            && !self.label_ends.is_empty()
        {
            // This process read up to `labels_read` itself (a version rolled back to was saved by it).
            let end = |partition: &i32| {
                let read = self.labels_read.get(partition).map(|&read| read + 1);
                self.label_ends.get(partition).copied().max(read)
            };
            let before_end =
                |partition: &i32, offset: i64| end(partition).is_some_and(|end| offset < end);
            state
                .applied
                .retain(|partition, offset| before_end(partition, *offset));
            for (partition, ranges) in &mut state.applied_beyond {
                ranges.retain(|&(start, _)| before_end(partition, start));
                if let Some(end) = end(partition) {
                    for range in ranges.iter_mut() {
                        range.1 = range.1.min(end - 1);
                    }
                }
            }
            state.applied_beyond.retain(|_, ranges| !ranges.is_empty());
        }
        Ok(state)
    }

    async fn run(mut self, consumer: Consumer) -> Result<(), DriftError> {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        // Time windows of a quiet stream are closed by the clock (a no-op without --window-secs).
        let mut clock = tokio::time::interval(Duration::from_secs(1));
        // Last prediction offset seen per partition, to store offsets freed by the clock: a partition
        // that goes quiet while a window holding its predictions is open would otherwise keep that
        // window's start as its stored offset after the window was reported (and a restart would
        // count those predictions again).
        let mut last_seen: std::collections::HashMap<(String, i32), i64> =
            std::collections::HashMap::new();
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.republish_pending().await.is_err() {
            return Ok(());
        }
        loop {
            let message = tokio::select! {
                () = self.shutdown.cancelled() => {
                    // A window closed by the last message may have freed other partitions' offsets
                    // that the clock would have stored within the second: store them now, so a
                    // restart does not window those predictions again. (Not after an abandoned
                    // step, below: its window was taken out of the monitor but never reported.)
                    self.store_unpinned_offsets(&consumer, &mut last_seen);
                    break;
                }
                _ = clock.tick() => {
                    let closed = self.monitor.close_idle(Utc::now());
                    let mut stopped = false;
                    for window in closed {
                        if self.on_closed(window).await.is_err() {
                            stopped = true;
                            break;
                        }
                    }
                    if stopped {
                        break;
                    }
                    self.update_prediction_positions(&consumer);
                    if self.release_held().await.is_err() {
                        break;
                    }
                    self.store_freed_label_offsets(&consumer);
                    self.store_unpinned_offsets(&consumer, &mut last_seen);
                    continue;
                }
                received = consumer.recv() => match received {
                    Ok(message) => message.detach(),
                    Err(error) => {
                        metrics::counter!("sentiflow_drift_errors_total", "error_kind" => "consume").increment(1);
                        if backoff.should_log() {
                            warn!(%error, "consume failed");
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                },
            };
            backoff = Backoff::new(Duration::from_secs(5));
            if self.handle(&message).await.is_err() {
                break;
            }
            let (topic, partition, offset) =
                (message.topic(), message.partition(), message.offset());
            let safe = if topic == self.topics.predictions {
                last_seen.insert((topic.to_owned(), partition), offset);
                self.hold.predictions_read(partition, offset);
                if !self.hold.is_empty() && self.release_held().await.is_err() {
                    break;
                }
                self.monitor.safe_offset(topic, partition, offset)
            } else if topic == self.topics.labels {
                // Also for a label that went to the dead-letter topic: it is dealt with too.
                self.labels_read.insert(partition, offset);
                self.hold.safe_offset(partition, offset)
            } else {
                Some(offset)
            };
            if let Some(safe) = safe
                && let Err(error) = consumer.store_offset(topic, partition, safe)
            {
                warn!(%error, topic, partition, "storing the offset failed");
            }
            self.store_freed_label_offsets(&consumer);
        }
        kafka::commit_at_shutdown(&consumer, SERVICE, "some input will be replayed");
        let drain = Duration::from_millis(self.config.telemetry.drain_timeout_ms);
        if let Err(error) = self.producer.flush(drain) {
            warn!(%error, "producer flush failed at shutdown");
        }
        info!("drift stopped");
        Ok(())
    }

    /// Stores, for each prediction partition read, the offset its open windows no longer pin. A
    /// partition this consumer no longer holds (revoked, or lost when the group session timed out)
    /// cannot take one: it is forgotten until its next message, instead of failing (and warning)
    /// every second for as long as it stays elsewhere.
    fn store_unpinned_offsets(
        &self,
        consumer: &Consumer,
        last_seen: &mut std::collections::HashMap<(String, i32), i64>,
    ) {
        last_seen.retain(|(topic, partition), offset| {
            let Some(safe) = self.monitor.safe_offset(topic, *partition, *offset) else {
                return true;
            };
            match consumer.store_offset(topic, *partition, safe) {
                Ok(()) => true,
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                    debug!(
                        topic,
                        partition, "partition no longer assigned; its last offset is forgotten"
                    );
                    false
                }
                Err(error) => {
                    warn!(%error, topic, partition, "storing the offset failed");
                    true
                }
            }
        });
    }

    async fn handle(&mut self, message: &OwnedMessage) -> Result<(), Abandoned> {
        let topic = message.topic();
        metrics::counter!("sentiflow_drift_events_in_total", "topic" => topic_label(&self.topics, topic)).increment(1);
        let payload = message.payload().unwrap_or_default();
        if topic == self.topics.predictions {
            match Prediction::decode_validated(payload) {
                Ok(prediction) => self.on_prediction(message, &prediction).await,
                Err(error) => {
                    self.dead_letter(message, error.kind(), &error.to_string())
                        .await
                }
            }
        } else if topic == self.topics.labels {
            match LabelFeedback::decode_validated(payload) {
                Ok(label) => self.on_label(message, &label).await,
                Err(error) => {
                    self.dead_letter(message, error.kind(), &error.to_string())
                        .await
                }
            }
        } else if topic == self.topics.updates {
            match ModelUpdate::decode_validated(payload) {
                Ok(update) => self.on_model_update(&update).await,
                Err(error) => {
                    self.dead_letter(message, error.kind(), &error.to_string())
                        .await
                }
            }
        } else {
            match RetrainRequest::decode_validated(payload) {
                Ok(request) => {
                    self.on_retrain_request(request);
                    Ok(())
                }
                Err(error) => {
                    self.dead_letter(message, error.kind(), &error.to_string())
                        .await
                }
            }
        }
    }

    /// A human label read at `partition`/`offset`: joined now, or held until its prediction is read
    /// (or can no longer come).
    async fn on_label(
        &mut self,
        message: &OwnedMessage,
        label: &LabelFeedback,
    ) -> Result<(), Abandoned> {
        let (partition, offset) = (message.partition(), message.offset());
        self.labels_read.insert(partition, offset);
        let truth = label.label.index();
        if self.hold.enabled() && !self.monitor.knows_review(&label.review_id) {
            let waits_for = self.unread_predictions().await;
            if self.hold.should_wait(&waits_for) {
                let pushed_out = self.hold.hold(
                    (&label.review_id, truth),
                    (partition, offset),
                    waits_for,
                    std::time::Instant::now(),
                );
                self.stats.labels_waited.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentiflow_drift_labels_held_total").increment(1);
                if let Some(oldest) = pushed_out {
                    self.count_release(Release::Overflow);
                    self.overflows += 1;
                    if self.overflows % 1000 == 1 {
                        warn!(review_id = %oldest.review_id, partition = oldest.partition, offset = oldest.offset,
                            capacity = self.config.max_held_labels, overflows = self.overflows,
                            "label hold full; applying its oldest labels without waiting (logged every 1,000)");
                    }
                    self.labels_freed.insert(oldest.partition);
                    self.apply_label(
                        &oldest.review_id,
                        oldest.truth,
                        oldest.partition,
                        oldest.offset,
                    )
                    .await?;
                }
                self.show_held();
                return Ok(());
            }
        }
        self.apply_label(&label.review_id, truth, partition, offset)
            .await
    }

    /// Where the predictions topic ends on the partitions this process has not read to the end yet
    /// (a label read now may be for a prediction there). Empty when the ends cannot be read.
    async fn unread_predictions(&mut self) -> Vec<(i32, i64)> {
        let Some(reader) = self.prediction_ends.as_mut() else {
            return Vec::new();
        };
        let (ends, error) = reader.get().await;
        if let Some(error) = error {
            metrics::counter!("sentiflow_drift_errors_total", "error_kind" => "prediction_ends")
                .increment(1);
            warn!(%error, "cannot read where the predictions topic ends; a label holds only for its grace time");
        }
        self.hold.unread(&ends)
    }

    /// Gives up on every held label whose predictions were read and whose grace time passed (their
    /// partitions' offsets are stored after).
    async fn release_held(&mut self) -> Result<(), Abandoned> {
        let mut released = false;
        let now = std::time::Instant::now();
        while let Some(label) = self.hold.next_waited_out(now) {
            self.count_release(Release::WaitedOut);
            self.labels_freed.insert(label.partition);
            released = true;
            self.apply_label(&label.review_id, label.truth, label.partition, label.offset)
                .await?;
        }
        if released {
            self.show_held();
        }
        Ok(())
    }

    /// Stores the offsets of the `labels.feedback` partitions whose held labels were applied.
    fn store_freed_label_offsets(&mut self, consumer: &Consumer) {
        for partition in std::mem::take(&mut self.labels_freed) {
            let Some(&read) = self.labels_read.get(&partition) else {
                continue;
            };
            if let Some(safe) = self.hold.safe_offset(partition, read)
                && let Err(error) = consumer.store_offset(&self.topics.labels, partition, safe)
            {
                warn!(%error, partition, "storing the label offset failed");
            }
        }
    }

    /// Tells the hold the consumer's positions in `predictions` (past offsets that carry no message,
    /// and known before a partition delivers anything).
    fn update_prediction_positions(&mut self, consumer: &Consumer) {
        if self.hold.is_empty() {
            return;
        }
        let Ok(positions) = consumer.position() else {
            return;
        };
        for element in positions.elements_for_topic(&self.topics.predictions) {
            if let rdkafka::Offset::Offset(position) = element.offset() {
                self.hold
                    .predictions_position(element.partition(), position);
            }
        }
    }

    fn count_release(&self, why: Release) {
        metrics::counter!("sentiflow_drift_labels_released_total", "reason" => why.as_str())
            .increment(1);
    }

    fn show_held(&self) {
        let held = self.hold.len();
        self.stats.labels_held.store(held as u64, Ordering::Relaxed);
        metrics::gauge!("sentiflow_drift_held_labels").set(held as f64);
    }

    /// Joins a human label to its remembered prediction and counts the outcome.
    async fn apply_label(
        &mut self,
        review_id: &str,
        truth: usize,
        partition: i32,
        offset: i64,
    ) -> Result<(), Abandoned> {
        let read = self.labels_read.get(&partition).copied().unwrap_or(offset);
        let resolved_through = self.hold.resolved_through(partition, read);
        let mut joined =
            self.monitor
                .add_label(review_id, truth, (partition, offset), resolved_through);
        if let LabelJoin::Untracked(model) = &joined
            && !self.monitor.is_retired(model)
        {
            // Predicted before a restart (remembered at start-up) by a version no prediction since
            // has brought back: its stored state comes back first, so the label lands in its window.
            let reference = self
                .retry_redis("load reference", || self.control.load_reference(model))
                .await?;
            let feedback = self.load_feedback(model).await?;
            info!(model = %model.name, version = %model.version,
                "tracking the version a human label refers to (predicted before a restart)");
            self.monitor.track(model, reference, feedback);
            joined =
                self.monitor
                    .add_label(review_id, truth, (partition, offset), resolved_through);
        }
        if let LabelJoin::Joined(model) | LabelJoin::Relabelled(model) | LabelJoin::Duplicate(model) =
            &joined
            && let Some(state) = self.monitor.feedback_state(model)
        {
            // Before the label's offset is stored: a restart resumes from here (a duplicate changed
            // only the replay marks, which must be stored all the same).
            self.retry_redis("store human-label state", || {
                self.control.store_feedback(model, &state)
            })
            .await?;
        }
        match joined {
            LabelJoin::Joined(_) => {
                self.stats.labels_joined.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentiflow_drift_labels_joined_total").increment(1);
            }
            LabelJoin::Relabelled(_) => {
                self.stats.labels_joined.fetch_add(1, Ordering::Relaxed);
                self.stats.labels_relabelled.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentiflow_drift_labels_joined_total").increment(1);
                metrics::counter!("sentiflow_drift_labels_relabelled_total").increment(1);
            }
            LabelJoin::Duplicate(_) => {
                self.stats.labels_duplicate.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentiflow_drift_labels_duplicate_total").increment(1);
            }
            LabelJoin::Replayed(_) => {
                self.stats.labels_replayed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentiflow_drift_labels_replayed_total").increment(1);
            }
            LabelJoin::Untracked(_) | LabelJoin::Unmatched => {
                self.stats.labels_unmatched.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sentiflow_drift_labels_unmatched_total").increment(1);
            }
        }
        Ok(())
    }

    async fn on_prediction(
        &mut self,
        message: &OwnedMessage,
        prediction: &Prediction,
    ) -> Result<(), Abandoned> {
        self.stats.predictions.fetch_add(1, Ordering::Relaxed);
        if self.monitor.is_new(prediction) {
            let reference = self
                .retry_redis("load reference", || {
                    self.control.load_reference(&prediction.model)
                })
                .await?;
            let feedback = self.load_feedback(&prediction.model).await?;
            info!(model = %prediction.model.name, version = %prediction.model.version, stored_reference = reference.is_some(),
                stored_labels = feedback.as_ref().map_or(0, |state| state.pairs.len()), "tracking a new model version");
            self.monitor.track(&prediction.model, reference, feedback);
        }
        let outcome = self.monitor.add(
            prediction,
            message.topic(),
            message.partition(),
            message.offset(),
        );

        for key in self.hold.predicted(&prediction.review_id) {
            let Some(label) = self.hold.take(key) else {
                continue;
            };
            self.count_release(Release::Predicted);
            self.labels_freed.insert(label.partition);
            self.apply_label(&label.review_id, label.truth, label.partition, label.offset)
                .await?;
            self.show_held();
        }
        match outcome {
            Outcome::Retired => {
                metrics::counter!("sentiflow_drift_retired_predictions_total").increment(1);
            }
            Outcome::Reread => {
                metrics::counter!("sentiflow_drift_reread_predictions_total").increment(1);
            }
            Outcome::Windowed(closed) => {
                for window in closed {
                    self.on_closed(window).await?;
                }
            }
        }
        // After the replaced version's last window was reported, which sets its gauges once more.
        for retired in self.monitor.take_retired() {
            crate::metrics::clear_retired(&retired);
        }
        self.board.set_open(self.monitor.open_windows());
        Ok(())
    }

    async fn on_closed(&mut self, mut closed: ClosedWindow) -> Result<(), Abandoned> {
        if let Some(reference) = &closed.reference_completed {
            let model = closed.report.model.clone();
            self.retry_redis("store reference", || {
                self.control.store_reference(&model, reference)
            })
            .await?;
            info!(version = %model.version, events = reference.events(), "reference complete");
        }
        let model = closed.report.model.clone();
        let mute = match self.control.mute_status().await {
            Ok(mute) => {
                self.last_read.mute_read(mute.clone());
                mute
            }
            Err(error) => {
                let mute = self.last_read.mute();
                metrics::counter!("sentiflow_drift_errors_total", "error_kind" => "control_read")
                    .increment(1);
                warn!(%error, muted = mute.is_some(), "cannot read the mute key; reporting the mute as last read");
                mute
            }
        };
        let cooldown = match self.control.cooldown_left(&model.name).await {
            Ok(cooldown) => {
                self.last_read.cooldown_read(&model.name, cooldown);
                cooldown
            }
            Err(error) => {
                let cooldown = self.last_read.cooldown(&model.name);
                metrics::counter!("sentiflow_drift_errors_total", "error_kind" => "control_read")
                    .increment(1);
                warn!(%error, cooling_down = cooldown.is_some(), "cannot read the cooldown key; using the cooldown as last read");
                cooldown
            }
        };
        let report = &mut closed.report;
        report.muted = mute.is_some() || cooldown.is_some();
        report.event_time = Utc::now();
        self.publish(&self.topics.reports, &*report).await?;
        self.stats.reports.fetch_add(1, Ordering::Relaxed);
        crate::metrics::record_report(report, mute.is_some());
        info!(
            version = %model.version,
            events = report.window.events,
            status = %report.status,
            confirmed = report.confirmed,
            consecutive = report.consecutive_drift_windows,
            muted = report.muted,
            reference = closed.reference,
            signals = %signal_summary(report),
            "drift report"
        );
        self.board.push_report(report.clone(), mute.clone());
        let needs_request = report.confirmed
            && self
                .monitor
                .confirmation(&model)
                .is_some_and(|confirmation| !confirmation.requested);
        if !needs_request {
            return Ok(());
        }
        let decision = if mute.is_some() {
            "muted"
        } else if cooldown.is_some() {
            "cooldown"
        } else {
            self.request_retrain(&closed.report).await?
        };
        metrics::counter!("sentiflow_drift_retrain_decisions_total", "outcome" => decision)
            .increment(1);
        if decision != "requested" {
            info!(version = %model.version, decision, "confirmed drift; no retrain requested");
        }
        Ok(())
    }

    /// Takes the lock and publishes the request; returns the decision label.
    async fn request_retrain(&mut self, report: &DriftReport) -> Result<&'static str, Abandoned> {
        let model = &report.model;
        let request = retrain_request(report, self.config.device_wanted);
        let lock_ttl = Duration::from_secs(self.config.lock_ttl_secs);
        match self.control.try_lock_pending(&request, lock_ttl).await {
            Ok(Ok(())) => {}
            Ok(Err(holder)) => {
                info!(version = %model.version, %holder, "a retrain is already running; not requesting another");
                self.monitor.mark_requested(model);
                return Ok("locked");
            }
            Err(error) => {
                warn!(%error, "cannot take the retrain lock; will retry at the next window");
                return Ok("lock_error");
            }
        }
        // Shutdown here leaves the lock and the pending request in Redis: the next start publishes it.
        self.publish(&self.topics.retrain, &request).await?;
        self.monitor.mark_requested(model);
        self.after_request_delivered(&request).await;
        info!(version = %model.version, request_id = %request.request_id, report_id = %report.report_id, "retrain requested");
        Ok("requested")
    }

    /// Counts a delivered request, clears it from the pending ones and starts its cooldown.
    async fn after_request_delivered(&self, request: &RetrainRequest) {
        self.stats.retrain_requests.fetch_add(1, Ordering::Relaxed);
        let name = &request.model.name;
        if let Err(error) = self.control.request_delivered(request).await {
            // Harmless: the next start publishes it again and the trainer drops a known request id.
            warn!(%error, "cannot clear the delivered request from the pending ones");
        }
        let cooldown = Duration::from_secs(self.config.cooldown_secs);
        match self
            .control
            .start_cooldown(name, &request.request_id, cooldown)
            .await
        {
            Ok(()) if !cooldown.is_zero() => {
                self.last_read
                    .cooldown_read(name, Some(self.config.cooldown_secs));
            }
            Ok(()) => {}
            Err(error) => {
                warn!(%error, "cannot start the cooldown; the lock still prevents a second retrain")
            }
        }
    }

    /// Publishes the requests a previous run took the lock for but saw no acknowledgement of (it
    /// stopped or crashed while publishing): otherwise the lock would block every retrain of that
    /// model until its TTL while no request was ever sent.
    async fn republish_pending(&self) -> Result<(), Abandoned> {
        let pending = self
            .retry_redis("read pending retrain requests", || {
                self.control.pending_requests()
            })
            .await?;
        for request in pending {
            self.publish(&self.topics.retrain, &request).await?;
            self.after_request_delivered(&request).await;
            metrics::counter!("sentiflow_drift_retrain_decisions_total", "outcome" => "republished")
                .increment(1);
            info!(model = %request.model.name, version = %request.model.version, request_id = %request.request_id,
                "retrain request of a previous run published (its lock was taken, its delivery never confirmed)");
        }
        Ok(())
    }

    /// A promotion or a rejection ends the retrain of that model: its lock is released (the TTL
    /// remains the fallback when neither comes). Redis failures are retried, as for every other
    /// write: storing the update's offset with the lock still held would keep later drift of the new
    /// champion from asking for a retrain until the TTL ran out.
    async fn on_model_update(&self, update: &ModelUpdate) -> Result<(), Abandoned> {
        if !matches!(
            update.action,
            UpdateAction::Promoted | UpdateAction::Rejected
        ) {
            return Ok(());
        }
        let released = self
            .retry_redis("release the retrain lock", || {
                self.control.unlock_any(&update.model.name)
            })
            .await?;
        if released {
            metrics::counter!("sentiflow_drift_retrain_lock_releases_total").increment(1);
            info!(model = %update.model.name, version = %update.model.version, action = %update.action, "retrain finished; lock released");
        } else {
            // No retrain was running (a bootstrap promotion, a `models promote` or `train --promote`
            // between retrains), or it outlived the lock's TTL: nothing to release or count.
            info!(model = %update.model.name, version = %update.model.version, action = %update.action, "model update; no retrain lock was held");
        }
        Ok(())
    }

    fn on_retrain_request(&mut self, request: RetrainRequest) {
        metrics::counter!("sentiflow_drift_retrain_requests_total", "requested_by" => request.requested_by.as_str()).increment(1);
        metrics::gauge!("sentiflow_drift_last_retrain_timestamp_seconds")
            .set(request.event_time.timestamp_millis() as f64 / 1000.0);
        if request.requested_by == RequestedBy::Operator {
            // An operator's request covers the drift episode of that version: no second one.
            self.monitor.mark_requested(&request.model);
        }
        self.board.push_request(request);
    }

    /// Produces one event and waits for its acknowledgement, retrying until it lands or shutdown.
    async fn publish<E: Event>(&self, topic: &str, event: &E) -> Result<(), Abandoned> {
        let payload = event.to_json_vec().expect("events serialise");
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            let sent = match self
                .producer
                .enqueue(topic, Some(event.key().as_bytes()), &payload, None)
                .await
            {
                Ok(future) => kafka::await_delivery(future).await.map(|_| ()),
                Err(error) => Err(error),
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(error) => {
                    metrics::counter!("sentiflow_drift_retries_total", "dependency" => "kafka")
                        .increment(1);
                    if backoff.should_log() {
                        warn!(%error, topic, "publish failed; retrying");
                    }
                    self.producer.rebuild_if_fatal();
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Abandoned),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Runs a Redis operation until it succeeds (an outage is never taken as "absent") or shutdown.
    async fn retry_redis<T, F, Fut>(&self, what: &str, mut operation: F) -> Result<T, Abandoned>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DriftError>>,
    {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    metrics::counter!("sentiflow_drift_retries_total", "dependency" => "redis")
                        .increment(1);
                    if backoff.should_log() {
                        warn!(%error, what, "redis operation failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Abandoned),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        kind: &str,
        reason: &str,
    ) -> Result<(), Abandoned> {
        let letter = self.dlq.letter(
            kind,
            reason,
            SourceCoordinate {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
            message.key(),
            message.payload().unwrap_or_default(),
        );
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            let sent = match self.dlq.enqueue(&letter, message).await {
                Ok(future) => kafka::await_delivery(future).await.map(|_| ()),
                Err(error) => Err(error),
            };
            if sent.is_ok() {
                return Ok(());
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Abandoned),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// The signals of a report for a log line: those at warn or drift with their statistic, else "all ok"
/// (a reference window has none).
pub fn signal_summary(report: &DriftReport) -> String {
    if report.signals.is_empty() {
        return "none (reference window)".to_owned();
    }
    let flagged: Vec<String> = report
        .signals
        .iter()
        .filter(|signal| signal.status != DriftStatus::Ok)
        .map(|signal| {
            format!(
                "{}={:.3} ({})",
                signal.name, signal.statistic, signal.status
            )
        })
        .collect();
    if flagged.is_empty() {
        format!("all {} ok", report.signals.len())
    } else {
        flagged.join(", ")
    }
}

/// The fixed `topic` label of an input topic.
fn topic_label(topics: &Topics, topic: &str) -> &'static str {
    if topic == topics.predictions {
        "predictions"
    } else if topic == topics.labels {
        "labels.feedback"
    } else if topic == topics.updates {
        "models.updates"
    } else {
        "retrain.requests"
    }
}

/// The retrain request for confirmed drift in `report`: its id is derived from the report, so the
/// trainer collapses a replayed copy.
pub fn retrain_request(
    report: &DriftReport,
    device_wanted: sentiflow_common::events::DeviceWanted,
) -> RetrainRequest {
    let drifting: Vec<String> = report
        .signals
        .iter()
        .filter(|signal| signal.status == DriftStatus::Drift)
        .map(|signal| format!("{}={:.3}", signal.name, signal.statistic))
        .collect();
    let reason = format!(
        "drift confirmed after {} drift windows of {} predictions (no ok window between them); drifting signals: {}",
        report.consecutive_drift_windows,
        report.window.events,
        if drifting.is_empty() {
            "none in the last window".to_owned()
        } else {
            drifting.join(", ")
        }
    );
    let model: ModelRef = report.model.clone();
    RetrainRequest {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: Utc::now(),
        request_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, report.report_id.as_bytes())
            .to_string(),
        reason,
        requested_by: RequestedBy::Drift,
        report_id: Some(report.report_id.clone()),
        family: model.family,
        model,
        data_from: None,
        data_to: Some(report.window.end),
        device_wanted,
    }
}
