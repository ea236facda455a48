//! The curation loop: consume `reviews.clean` and `labels.feedback`, gather records into the open segment,
//! write it durably when it is full or old enough, and only then store the offsets it accounts for;
//! malformed messages go to `reviews.dlq` (acknowledged before their offsets count); optionally cut a
//! snapshot every N records or every T. Beside it, as a task of its own, the retrain loop
//! ([`crate::retrain`]) consumes `retrain.requests`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::BorrowedMessage;
use sentiflow_common::cache::CacheDir;
use sentiflow_common::catalogue::topics;
use sentiflow_common::dlq::DeadLetterSink;
use sentiflow_common::events::{CleanReview, Event, LabelFeedback, SourceCoordinate};
use sentiflow_common::health::Health;
use sentiflow_common::kafka::{self, Consumer, ResilientProducer};
use sentiflow_common::retry::Backoff;
use sentiflow_common::store::{self, RedisStore};
use sentiflow_common::telemetry;
use sentiflow_model::runtime::OrtEnvironment;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::SERVICE;
use crate::catch_up::{
    self, CatchUpOutcome, ConsumerView, FlushAnswer, FlushRequest, PartitionEnd, ReadPositions,
};
use crate::config::TrainerConfig;
use crate::curation::{CompactionScope, CurateOptions, compact_segments, curate_snapshot};
use crate::dataset::SnapshotStore;
use crate::error::{Rejection, TrainerError};
use crate::registry::Registry;
use crate::retrain::{CurationFlush, OutcomeLog, RetrainWorker};
use crate::segment::{CurationRecord, OffsetTracker, SegmentStore};

/// Running totals of this process, for tests and `sentiflow up` (Prometheus has the same).
#[derive(Debug, Default)]
pub struct TrainerStats {
    /// Messages consumed (both topics, malformed included).
    consumed: AtomicU64,
    /// Clean reviews curated (labelled or not).
    reviews: AtomicU64,
    /// Clean reviews without any label.
    unlabelled: AtomicU64,
    /// Human labels curated.
    feedback: AtomicU64,
    /// Messages sent to the dead-letter topic.
    dead_lettered: AtomicU64,
    /// Messages whose segment is on disk and whose offsets are stored.
    durable: AtomicU64,
    /// Segments written.
    segments: AtomicU64,
    /// Snapshots written by the schedule.
    snapshots: AtomicU64,
    /// Compactions that folded segments into one.
    compactions: AtomicU64,
    /// Retrain flushes for which curation read on, up to the retrain's partition ends.
    catch_ups: AtomicU64,
    /// Retrain flushes answered when the catch-up deadline passed first.
    catch_up_timeouts: AtomicU64,
    /// `retrain.requests` messages consumed (malformed and duplicates included).
    pub(crate) retrain_requests: AtomicU64,
    /// Malformed retrain requests sent to the dead-letter topic.
    pub(crate) retrain_dead_lettered: AtomicU64,
    /// Retrains whose new version passed the gate and was promoted.
    pub(crate) retrains_promoted: AtomicU64,
    /// Retrains whose new version the gate refused.
    pub(crate) retrains_rejected: AtomicU64,
    /// Retrain requests that could not produce a model.
    pub(crate) retrains_failed: AtomicU64,
    /// Retrain requests skipped because their request id was already handled.
    pub(crate) retrains_duplicate: AtomicU64,
}

/// [`TrainerStats`] as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages consumed (both topics, malformed included).
    pub consumed: u64,
    /// Clean reviews curated (labelled or not).
    pub reviews: u64,
    /// Clean reviews without any label.
    pub unlabelled: u64,
    /// Human labels curated.
    pub feedback: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages whose segment is on disk and whose offsets are stored.
    pub durable: u64,
    /// Segments written.
    pub segments: u64,
    /// Snapshots written by the schedule.
    pub snapshots: u64,
    /// Compactions that folded segments into one.
    pub compactions: u64,
    /// Retrain flushes for which curation read on, up to the retrain's partition ends.
    pub catch_ups: u64,
    /// Retrain flushes answered when the catch-up deadline passed first.
    pub catch_up_timeouts: u64,
    /// `retrain.requests` messages consumed (malformed and duplicates included).
    pub retrain_requests: u64,
    /// Malformed retrain requests sent to the dead-letter topic.
    pub retrain_dead_lettered: u64,
    /// Retrains whose new version passed the gate and was promoted.
    pub retrains_promoted: u64,
    /// Retrains whose new version the gate refused.
    pub retrains_rejected: u64,
    /// Retrain requests that could not produce a model.
    pub retrains_failed: u64,
    /// Retrain requests skipped because their request id was already handled.
    pub retrains_duplicate: u64,
}

impl TrainerStats {
    /// The totals now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            consumed: get(&self.consumed),
            reviews: get(&self.reviews),
            unlabelled: get(&self.unlabelled),
            feedback: get(&self.feedback),
            dead_lettered: get(&self.dead_lettered),
            durable: get(&self.durable),
            segments: get(&self.segments),
            snapshots: get(&self.snapshots),
            compactions: get(&self.compactions),
            catch_ups: get(&self.catch_ups),
            catch_up_timeouts: get(&self.catch_up_timeouts),
            retrain_requests: get(&self.retrain_requests),
            retrain_dead_lettered: get(&self.retrain_dead_lettered),
            retrains_promoted: get(&self.retrains_promoted),
            retrains_rejected: get(&self.retrains_rejected),
            retrains_failed: get(&self.retrains_failed),
            retrains_duplicate: get(&self.retrains_duplicate),
        }
    }
}

/// A started trainer service.
#[derive(Debug)]
pub struct Running {
    /// Totals since start.
    pub stats: Arc<TrainerStats>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub http_addr: SocketAddr,
    /// Live health state.
    pub health: Health,
    /// The curation segments this service writes.
    pub segments: SegmentStore,
    /// The snapshot store its snapshots go to.
    pub snapshots: SnapshotStore,
    /// Handled retrain requests and their outcomes (None with `--no-retrain`).
    pub retrain_outcomes: Option<OutcomeLog>,
    /// Ends when the service has closed its last segment, finished or abandoned the retrain in progress,
    /// and committed after `shutdown`.
    pub task: tokio::task::JoinHandle<Result<(), TrainerError>>,
}

/// Runs the service until `shutdown` is cancelled, then closes the open segment and commits.
pub async fn run(config: TrainerConfig, shutdown: CancellationToken) -> Result<(), TrainerError> {
    let running = start(config, shutdown).await?;
    running.task.await.unwrap_or_else(|join_error| {
        std::panic::resume_unwind(join_error.into_panic());
    })
}

/// Starts the service and returns once it is consuming (configuration and data-directory errors surface
/// here).
pub async fn start(
    config: TrainerConfig,
    shutdown: CancellationToken,
) -> Result<Running, TrainerError> {
    config.validate()?;
    let segments = SegmentStore::in_data_dir(&config.data_dir);
    let snapshots = SnapshotStore::new(config.data_dir.join("snapshots"));
    std::fs::create_dir_all(segments.dir()).map_err(|source| crate::dataset::DatasetError::Io {
        path: segments.dir().to_owned(),
        source,
    })?;
    // Under the lock (on a blocking thread: it may wait): a `sentiflow dataset compact` running beside
    // us may be writing a temp file.
    let cleaning = segments.clone();
    let stale = tokio::task::spawn_blocking(move || {
        let _lock = cleaning.lock_for_writing()?;
        cleaning.remove_stale_temp_files()
    })
    .await
    .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))?;
    if stale > 0 {
        info!(
            stale,
            "removed temp files of segment writes a crash interrupted"
        );
    }

    let health = Health::new(SERVICE);
    health.set_info("data_dir", config.data_dir.display().to_string());
    let clean_topic = config.kafka.topic(topics::REVIEWS_CLEAN);
    let feedback_topic = config.kafka.topic(topics::LABELS_FEEDBACK);
    let producer = ResilientProducer::new(&config.kafka, SERVICE)?;
    let consumer = kafka::at_least_once_consumer(
        &config.kafka,
        &config.group_id,
        SERVICE,
        &[&clean_topic, &feedback_topic],
    )?;
    // The registry (the retrain loop's) lives in Redis: readiness covers it from the start.
    let redis = RedisStore::connect_lazy(&config.redis)?;
    let stats = Arc::new(TrainerStats::default());
    // The retrain loop asks curation to write its open segment before cutting a snapshot, so a retrain
    // trains on every review consumed so far, not only on what the segment deadline already closed.
    let (flush_tx, flush_rx) = tokio::sync::mpsc::channel::<FlushRequest>(4);
    let retrain = if config.no_retrain {
        health.set_info("retrain", "off (--no-retrain)");
        None
    } else {
        let requests_topic = config.kafka.topic(topics::RETRAIN_REQUESTS);
        let ort = ort_environment(&config)?;
        let lexicon = tokio::task::spawn_blocking(crate::pipeline::cached_lexicon)
            .await
            .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
            .map_err(|error| TrainerError::Runtime(error.to_string()))?;
        health.set_info(
            "retrain",
            format!("on: {requests_topic} -> {}", config.model_name),
        );
        Some(RetrainWorker {
            consumer: kafka::at_least_once_consumer(
                &config.kafka,
                &config.retrain_group_id,
                SERVICE,
                &[&requests_topic],
            )?,
            producer: producer.clone(),
            dlq: DeadLetterSink::new(
                producer.clone(),
                config.kafka.topic(topics::REVIEWS_DLQ),
                SERVICE,
            ),
            updates_topic: config.kafka.topic(topics::MODELS_UPDATES),
            requests_topic,
            segments: segments.clone(),
            snapshots: snapshots.clone(),
            registry: Registry::new(config.data_dir.join("models"), redis.clone()),
            outcomes: OutcomeLog::new(redis.clone()),
            ort,
            lexicon,
            model_name: config.model_name.clone(),
            encoder_model_name: config.encoder_model_name.clone(),
            data_dir: config.data_dir.clone(),
            gate: config.gate,
            label_weights: config.label_weights,
            max_payload_bytes: config.max_payload_bytes,
            health: health.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            drain_timeout: Duration::from_millis(config.telemetry.drain_timeout_ms),
            curation: CurationFlush::new(
                flush_tx,
                producer.clone(),
                vec![clean_topic.clone(), feedback_topic.clone()],
                Duration::from_millis(config.retrain_catch_up_ms),
            ),
        })
    };
    let retrain_outcomes = retrain.as_ref().map(|worker| worker.outcomes.clone());

    let probes_stop = shutdown.child_token();
    let (http_addr, http_task) = telemetry::serve_http(
        config.telemetry.http_addr,
        health.clone(),
        axum::Router::new(),
        probes_stop.clone(),
    )
    .await?;
    let probes = [
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

    let worker = Worker {
        dlq: DeadLetterSink::new(
            producer.clone(),
            config.kafka.topic(topics::REVIEWS_DLQ),
            SERVICE,
        ),
        producer,
        consumer: Arc::new(consumer),
        segments: segments.clone(),
        snapshots: snapshots.clone(),
        clean_topic: clean_topic.clone(),
        feedback_topic: feedback_topic.clone(),
        max_payload_bytes: config.max_payload_bytes,
        segment_max_messages: config.segment_max_messages as u64,
        segment_max_age: Duration::from_millis(config.segment_max_age_ms),
        snapshot_every_rows: config.snapshot_every_rows,
        snapshot_every: config.snapshot_every_ms.map(Duration::from_millis),
        compact_after_segments: u64::from(config.compact_after_segments),
        curation_retention: config
            .curation_retention_days
            .map(|days| chrono::Duration::days(i64::from(days))),
        health: health.clone(),
        drain_timeout: Duration::from_millis(config.telemetry.drain_timeout_ms),
        catch_up_timeout: Duration::from_millis(config.retrain_catch_up_ms),
        shutdown,
        stats: stats.clone(),
    };
    info!(%http_addr, clean = %clean_topic, feedback = %feedback_topic,
        segments = %segments.dir().display(), "trainer started");
    // The retrain loop is a task of its own: a training run must not hold up curation.
    let retrain_task = retrain.map(|worker| tokio::spawn(worker.run()));
    let task = tokio::spawn(async move {
        let result = worker.run(flush_rx).await;
        if let Some(retrain_task) = retrain_task
            && let Err(join_error) = retrain_task.await
        {
            std::panic::resume_unwind(join_error.into_panic());
        }
        probes_stop.cancel();
        for probe in probes {
            let _ = probe.await;
        }
        let _ = http_task.await;
        result
    });
    Ok(Running {
        stats,
        http_addr,
        health,
        segments,
        snapshots,
        retrain_outcomes,
        task,
    })
}

/// The ONNX Runtime library: the flag, else `ORT_DYLIB_PATH`, else the one in the setup cache.
fn ort_environment(config: &TrainerConfig) -> Result<OrtEnvironment, TrainerError> {
    let path = match (&config.ort_dylib, std::env::var_os("ORT_DYLIB_PATH")) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => path.into(),
        (None, None) => CacheDir::from_env()
            .and_then(|cache| cache.require(cache.onnxruntime_lib(), "ONNX Runtime library"))
            .map_err(|error| TrainerError::Runtime(error.to_string()))?,
    };
    sentiflow_model::runtime::init(&path).map_err(|error| TrainerError::Runtime(error.to_string()))
}

/// The records and offsets gathered since the last segment closed.
struct OpenSegment {
    /// Records to write.
    records: Vec<CurationRecord>,
    /// Offsets of every message accounted for (records and dead letters).
    offsets: OffsetTracker,
    /// Messages accounted for.
    messages: u64,
    /// Of which dead-lettered.
    dead_lettered: u64,
    /// When the segment must close even if not full.
    deadline: tokio::time::Instant,
}

/// The background work segments trigger: scheduled snapshots and compactions.
struct Schedule {
    /// Records curated since the last scheduled snapshot.
    rows_since: u64,
    /// When the last scheduled snapshot started (or the service started).
    last: Instant,
    /// The snapshot being written, if any (one at a time).
    running: Option<tokio::task::JoinHandle<()>>,
    /// Segments written since the last compaction started (at start: the segments on disk).
    segments_since_compaction: u64,
    /// The compaction running, if any (one at a time).
    compaction: Option<tokio::task::JoinHandle<()>>,
}

struct Worker {
    /// Shared with blocking committed-offset queries.
    consumer: Arc<Consumer>,
    producer: ResilientProducer,
    dlq: DeadLetterSink,
    segments: SegmentStore,
    snapshots: SnapshotStore,
    clean_topic: String,
    feedback_topic: String,
    max_payload_bytes: usize,
    segment_max_messages: u64,
    segment_max_age: Duration,
    snapshot_every_rows: Option<u64>,
    snapshot_every: Option<Duration>,
    /// Segments written between compactions (0: never compact).
    compact_after_segments: u64,
    /// How long a review stays in the segments after anything about it last arrived (unset: forever).
    curation_retention: Option<chrono::Duration>,
    health: Health,
    drain_timeout: Duration,
    /// How long a retrain's flush may wait for curation to read up to the partition ends.
    catch_up_timeout: Duration,
    shutdown: CancellationToken,
    stats: Arc<TrainerStats>,
}

/// A flush request being served: curation reads on until `unread` is empty or `deadline` passes.
struct CatchUp {
    /// Partition ends not yet read to.
    unread: Vec<PartitionEnd>,
    /// How it ended when that was clear at the start (nothing to read, no partitions, no ends).
    settled: Option<CatchUpOutcome>,
    reply: tokio::sync::oneshot::Sender<FlushAnswer>,
    started: tokio::time::Instant,
    /// When the consumer's positions are looked at next.
    next_check: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

/// How often a catch-up compares the consumer's positions with the partition ends (between messages,
/// what was read is compared after each one).
const CATCH_UP_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Work given up at shutdown; its offsets stay unstored, so it is read again after a restart.
#[derive(Debug)]
struct Abandoned;

impl Worker {
    /// Consumes until shutdown. `flush_requests` come from the retrain loop: each one has curation read
    /// its partitions up to the ends the request names (at most `catch_up_timeout`), then close the open
    /// segment; it is answered with the number of messages made durable so far.
    async fn run(
        self,
        mut flush_requests: tokio::sync::mpsc::Receiver<FlushRequest>,
    ) -> Result<(), TrainerError> {
        let mut open: Option<OpenSegment> = None;
        let mut flush_open = true;
        let segment_files = self.segments.list()?.len() as u64;
        metrics::gauge!("sentiflow_trainer_segment_files").set(segment_files as f64);
        let mut schedule = Schedule {
            rows_since: 0,
            last: Instant::now(),
            running: None,
            segments_since_compaction: segment_files,
            compaction: None,
        };
        self.maybe_compact(&mut schedule);
        let mut read = ReadPositions::default();
        let mut catching_up: Option<CatchUp> = None;
        let mut abandoned = false;
        loop {
            let deadline = open.as_ref().map(|segment| segment.deadline);
            let segment_due = async move {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let catch_up_check = catching_up
                .as_ref()
                .map(|catch_up| catch_up.next_check.min(catch_up.deadline));
            let catch_up_due = async move {
                match catch_up_check {
                    Some(check) => tokio::time::sleep_until(check).await,
                    None => std::future::pending().await,
                }
            };
            // One flush at a time: the next request waits until this one is answered.
            let listening = flush_open && catching_up.is_none();
            let flush_requested = async {
                if listening {
                    flush_requests.recv().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = segment_due => {
                    if self.close(&mut open, &mut schedule).await.is_err() {
                        abandoned = true;
                        break;
                    }
                }
                () = catch_up_due => {
                    let Some(catch_up) = catching_up.as_mut() else { continue };
                    // The consumer's own position also counts (it steps over transaction markers,
                    // never delivered as messages); partitions revoked meanwhile are another's now.
                    // No partitions at all (mid-rebalance, or the query failed) tells nothing.
                    let view = self.consumer_view().await;
                    let revoked = |end: &PartitionEnd| !view.assigned.is_empty() && !view.owns(end);
                    catch_up
                        .unread
                        .retain(|end| !revoked(end) && !read.has_read(end, view.position(end)));
                    let now = tokio::time::Instant::now();
                    if !catch_up.unread.is_empty() && now < catch_up.deadline {
                        catch_up.next_check = now + CATCH_UP_CHECK_EVERY;
                        continue;
                    }
                    if let Some(catch_up) = catching_up.take()
                        && self.answer_flush(catch_up, &mut open, &mut schedule).await.is_err()
                    {
                        abandoned = true;
                        break;
                    }
                }
                request = flush_requested => match request {
                    Some(request) => {
                        let catch_up = self.start_catch_up(request, &read).await;
                        if catch_up.settled.is_some() {
                            if self.answer_flush(catch_up, &mut open, &mut schedule).await.is_err() {
                                abandoned = true;
                                break;
                            }
                        } else {
                            catching_up = Some(catch_up);
                        }
                    }
                    // No retrain loop (--no-retrain) or it stopped: stop listening.
                    None => flush_open = false,
                },
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let segment = open.get_or_insert_with(|| OpenSegment {
                            records: Vec::new(),
                            offsets: OffsetTracker::default(),
                            messages: 0,
                            dead_lettered: 0,
                            deadline: tokio::time::Instant::now() + self.segment_max_age,
                        });
                        if self.accept(&message, segment).await.is_err() {
                            abandoned = true;
                            break;
                        }
                        read.advance(message.topic(), message.partition(), message.offset());
                        if segment.messages >= self.segment_max_messages
                            && self.close(&mut open, &mut schedule).await.is_err()
                        {
                            abandoned = true;
                            break;
                        }
                        if let Some(catch_up) = catching_up.as_mut() {
                            catch_up.unread.retain(|end| !read.has_read(end, None));
                            if catch_up.unread.is_empty()
                                && let Some(catch_up) = catching_up.take()
                                && self.answer_flush(catch_up, &mut open, &mut schedule).await.is_err()
                            {
                                abandoned = true;
                                break;
                            }
                        }
                    }
                    Err(error) => self.receive_error(&error).await,
                },
            }
        }
        if !abandoned && self.close(&mut open, &mut schedule).await.is_err() {
            warn!("last segment abandoned at shutdown; its messages will be read again");
        }
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for (task, what) in [
            (schedule.running.take(), "scheduled snapshot"),
            (schedule.compaction.take(), "segment compaction"),
        ] {
            if let Some(task) = task
                && tokio::time::timeout_at(deadline, task).await.is_err()
            {
                warn!(
                    task = what,
                    "still running at shutdown; it finishes or leaves nothing behind"
                );
            }
        }
        self.finish();
        Ok(())
    }

    /// Works out which of the partitions a flush request names curation still has to read: those it
    /// is assigned and has not read to the end (by the messages read, the committed offset or the
    /// consumer's position). The flush is answered once they are read, or at once when none is left.
    async fn start_catch_up(&self, request: FlushRequest, read: &ReadPositions) -> CatchUp {
        let started = tokio::time::Instant::now();
        let mut catch_up = CatchUp {
            unread: Vec::new(),
            settled: None,
            reply: request.reply,
            started,
            next_check: started + CATCH_UP_CHECK_EVERY,
            deadline: started + self.catch_up_timeout,
        };
        let Some(ends) = request.read_to else {
            catch_up.settled = Some(CatchUpOutcome::NoWatermarks);
            return catch_up;
        };
        let consumer = self.consumer.clone();
        let (view, owned, committed) = tokio::task::spawn_blocking(move || {
            let view = ConsumerView::of(&consumer);
            let owned: Vec<PartitionEnd> = ends.into_iter().filter(|end| view.owns(end)).collect();
            let committed = if owned.is_empty() {
                Ok(HashMap::new())
            } else {
                catch_up::resume_offsets(&consumer, &owned)
            };
            (view, owned, committed)
        })
        .await
        .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()));
        if view.assigned.is_empty() {
            catch_up.settled = Some(CatchUpOutcome::Unassigned);
            return catch_up;
        }
        let committed = committed.unwrap_or_else(|error| {
            // Unknown resume points count as unread: the catch-up deadline bounds the wait.
            warn!(%error, "could not read the committed offsets; reading on until the partitions are read");
            HashMap::new()
        });
        catch_up.unread = catch_up::unread(owned, read, |end| {
            committed
                .get(&(end.topic.clone(), end.partition))
                .copied()
                .max(view.position(end))
        });
        if catch_up.unread.is_empty() {
            catch_up.settled = Some(CatchUpOutcome::NothingToRead);
        } else {
            debug!(
                partitions = catch_up.unread.len(),
                "reading up to the retrain's partition ends before closing the segment"
            );
        }
        catch_up
    }

    /// The consumer's partitions and positions (librdkafka's group thread answers: off the runtime).
    async fn consumer_view(&self) -> ConsumerView {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || ConsumerView::of(&consumer))
            .await
            .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
    }

    /// Closes the open segment and answers the flush with the number of durable messages and how the
    /// catch-up ended.
    async fn answer_flush(
        &self,
        catch_up: CatchUp,
        open: &mut Option<OpenSegment>,
        schedule: &mut Schedule,
    ) -> Result<(), Abandoned> {
        let outcome = match catch_up.settled {
            Some(outcome) => outcome,
            None if catch_up.unread.is_empty() => CatchUpOutcome::ReadToEnd,
            None => CatchUpOutcome::TimedOut,
        };
        match outcome {
            CatchUpOutcome::ReadToEnd => {
                self.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
            }
            CatchUpOutcome::TimedOut => {
                self.stats.catch_up_timeouts.fetch_add(1, Ordering::Relaxed);
                warn!(
                    timeout_ms = self.catch_up_timeout.as_millis() as u64,
                    unread = ?catch_up.unread,
                    "curation did not read to the retrain's partition ends in time; the snapshot holds what it has read"
                );
            }
            _ => {}
        }
        metrics::counter!("sentiflow_trainer_retrain_catch_ups_total", "outcome" => outcome.as_str())
            .increment(1);
        // How long curation read on before closing (the segment write not included).
        metrics::histogram!("sentiflow_trainer_retrain_catch_up_seconds")
            .record(catch_up.started.elapsed().as_secs_f64());
        let had_open = open.is_some();
        self.close(open, schedule).await?;
        let durable = self.stats.durable.load(Ordering::Relaxed);
        debug!(
            had_open,
            durable,
            outcome = outcome.as_str(),
            "open segment closed for a retrain snapshot"
        );
        // The retrain loop may have given up waiting; then nobody needs the answer.
        let _ = catch_up.reply.send(FlushAnswer { durable, outcome });
        Ok(())
    }

    async fn receive_error(&self, error: &rdkafka::error::KafkaError) {
        metrics::counter!("sentiflow_trainer_errors_total", "error_kind" => "kafka_receive")
            .increment(1);
        warn!(%error, "kafka receive error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Adds one message to the open segment: a record, or a dead letter acknowledged by the broker.
    async fn accept(
        &self,
        message: &BorrowedMessage<'_>,
        segment: &mut OpenSegment,
    ) -> Result<(), Abandoned> {
        let coordinate = SourceCoordinate {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let logical = if message.topic() == self.feedback_topic {
            topics::LABELS_FEEDBACK
        } else {
            debug_assert_eq!(message.topic(), self.clean_topic);
            topics::REVIEWS_CLEAN
        };
        metrics::counter!("sentiflow_trainer_events_in_total", "topic" => logical).increment(1);
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        match self.decode(message.payload(), logical, coordinate.clone()) {
            Ok(record) => {
                let provenance = record.provenance.map_or("none", |p| p.as_str());
                metrics::counter!("sentiflow_trainer_labels_total", "provenance" => provenance)
                    .increment(1);
                let counter = match (record.kind, record.label) {
                    (crate::segment::RecordKind::Feedback, _) => &self.stats.feedback,
                    (_, None) => {
                        self.stats.unlabelled.fetch_add(1, Ordering::Relaxed);
                        &self.stats.reviews
                    }
                    (_, Some(_)) => &self.stats.reviews,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                segment.records.push(record);
            }
            Err(rejection) => {
                self.dead_letter(message, &rejection, coordinate).await?;
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                segment.dead_lettered += 1;
            }
        }
        segment
            .offsets
            .add(message.topic(), message.partition(), message.offset());
        segment.messages += 1;
        Ok(())
    }

    fn decode(
        &self,
        payload: Option<&[u8]>,
        logical: &'static str,
        coordinate: SourceCoordinate,
    ) -> Result<CurationRecord, Rejection> {
        let payload = payload.ok_or(Rejection::EmptyPayload)?;
        if payload.len() > self.max_payload_bytes {
            return Err(Rejection::Oversize {
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        let decode_error = |source| Rejection::Decode {
            topic: logical,
            source,
        };
        if logical == topics::LABELS_FEEDBACK {
            let feedback = LabelFeedback::decode_validated(payload).map_err(decode_error)?;
            Ok(CurationRecord::from_feedback(&feedback, coordinate))
        } else {
            let review = CleanReview::decode_validated(payload).map_err(decode_error)?;
            Ok(CurationRecord::from_review(&review, coordinate))
        }
    }

    /// Publishes a dead letter and waits for the broker's acknowledgement, retrying until it comes.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        rejection: &Rejection,
        coordinate: SourceCoordinate,
    ) -> Result<(), Abandoned> {
        let letter = self.dlq.letter(
            rejection.kind(),
            &rejection.to_string(),
            coordinate,
            message.key(),
            message.payload().unwrap_or_default(),
        );
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            let delivered = match self.dlq.enqueue(&letter, message).await {
                Ok(future) => self.until_drained(kafka::await_delivery(future)).await?,
                Err(error) => Err(error),
            };
            match delivered {
                Ok(_) => return Ok(()),
                Err(error) => {
                    metrics::counter!("sentiflow_trainer_retries_total", "dependency" => "kafka")
                        .increment(1);
                    self.producer.rebuild_if_fatal();
                    self.health.set_check("kafka", false, error.to_string());
                    if backoff.should_log() {
                        warn!(%error, attempts = backoff.attempts(), "dead letter not delivered; retrying");
                    }
                    self.wait_or_abandon(backoff.next_delay()).await?;
                }
            }
        }
    }

    /// Writes the open segment durably, then stores the offsets it accounts for.
    async fn close(
        &self,
        open: &mut Option<OpenSegment>,
        schedule: &mut Schedule,
    ) -> Result<(), Abandoned> {
        let Some(segment) = open.take() else {
            return Ok(());
        };
        let records = Arc::new(segment.records);
        let ranges = segment.offsets.ranges();
        let mut backoff = Backoff::new(Duration::from_secs(10));
        let meta = loop {
            let (store, batch, offsets) = (self.segments.clone(), records.clone(), ranges.clone());
            let dead_lettered = segment.dead_lettered;
            let started = Instant::now();
            let written =
                tokio::task::spawn_blocking(move || store.write(&batch, offsets, dead_lettered))
                    .await
                    .unwrap_or_else(|join_error| {
                        std::panic::resume_unwind(join_error.into_panic())
                    });
            match written {
                Ok(meta) => {
                    metrics::histogram!("sentiflow_trainer_segment_write_seconds")
                        .record(started.elapsed().as_secs_f64());
                    self.health.set_check("disk", true, "last segment written");
                    break meta;
                }
                Err(error) => {
                    metrics::counter!("sentiflow_trainer_retries_total", "dependency" => "disk")
                        .increment(1);
                    self.health.set_check("disk", false, error.to_string());
                    if backoff.should_log() {
                        warn!(%error, attempts = backoff.attempts(), "segment write failed; holding its offsets and retrying");
                    }
                    self.wait_or_abandon(backoff.next_delay()).await?;
                }
            }
        };
        // Only now may the offsets be committed: the segment holding these messages survives a crash.
        for range in &ranges {
            if let Err(error) =
                self.consumer
                    .store_offset(&range.topic, range.partition, range.max_offset)
            {
                // The partition was revoked meanwhile; its new owner reads it again (at-least-once).
                debug!(%error, topic = %range.topic, partition = range.partition, "offset not stored");
            }
        }
        self.stats
            .durable
            .fetch_add(segment.messages, Ordering::Relaxed);
        self.stats.segments.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sentiflow_trainer_segments_written_total").increment(1);
        metrics::histogram!("sentiflow_trainer_segment_size_rows").record(meta.rows as f64);
        debug!(segment = %meta.segment_id, rows = meta.rows, dead_lettered = meta.dead_lettered, "segment closed");
        metrics::gauge!("sentiflow_trainer_segment_files").increment(1.0);
        schedule.rows_since += meta.rows;
        schedule.segments_since_compaction += 1;
        self.maybe_snapshot(schedule);
        self.maybe_compact(schedule);
        Ok(())
    }

    /// Starts a (tiered) compaction when enough segments were written since the last one and none is
    /// running.
    /// A failed compaction is counted and logged; the next one is tried after as many segments again.
    fn maybe_compact(&self, schedule: &mut Schedule) {
        if self.compact_after_segments == 0
            || schedule.segments_since_compaction < self.compact_after_segments
            || schedule
                .compaction
                .as_ref()
                .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        schedule.segments_since_compaction = 0;
        let (segments, stats) = (self.segments.clone(), self.stats.clone());
        let expire_before = self
            .curation_retention
            .map(|keep| chrono::Utc::now() - keep);
        // The newest tier (what the consumer wrote since the last compaction, and earlier outputs the
        // newer segments have caught up with); every segment, applying the retention, once a day.
        let scope = CompactionScope::Tiered {
            full_after: chrono::Duration::days(1),
        };
        schedule.compaction = Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let compacted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                compact_segments(&segments, expire_before, scope)
            }));
            match compacted {
                Ok(Ok(report)) => {
                    let outcome = if report.segment_id.is_some() {
                        stats.compactions.fetch_add(1, Ordering::Relaxed);
                        "written"
                    } else {
                        "nothing_to_fold"
                    };
                    let scope = if report.full { "full" } else { "tiered" };
                    metrics::counter!("sentiflow_trainer_compactions_total", "outcome" => outcome, "scope" => scope)
                        .increment(1);
                    metrics::histogram!("sentiflow_trainer_compaction_seconds")
                        .record(started.elapsed().as_secs_f64());
                    for (reason, records) in [
                        ("redelivered", report.away.redelivered),
                        ("superseded", report.away.superseded),
                        ("expired", report.away.expired),
                    ] {
                        metrics::counter!("sentiflow_trainer_compacted_away_records_total", "reason" => reason)
                            .increment(records);
                    }
                }
                Ok(Err(error)) => {
                    metrics::counter!("sentiflow_trainer_compactions_total", "outcome" => error.kind(), "scope" => "unknown")
                        .increment(1);
                    warn!(%error, "segment compaction failed; the segments stay as they were");
                }
                Err(_) => {
                    metrics::counter!("sentiflow_trainer_compactions_total", "outcome" => "panic", "scope" => "unknown")
                        .increment(1);
                    tracing::error!("segment compaction panicked; the segments stay as they were");
                }
            }
            if let Ok(paths) = segments.list() {
                metrics::gauge!("sentiflow_trainer_segment_files").set(paths.len() as f64);
            }
        }));
    }

    /// Starts a scheduled snapshot when one is due and none is running.
    fn maybe_snapshot(&self, schedule: &mut Schedule) {
        let due = schedule.rows_since > 0
            && (self
                .snapshot_every_rows
                .is_some_and(|rows| schedule.rows_since >= rows)
                || self
                    .snapshot_every
                    .is_some_and(|every| schedule.last.elapsed() >= every));
        if !due
            || schedule
                .running
                .as_ref()
                .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        schedule.rows_since = 0;
        schedule.last = Instant::now();
        let (segments, snapshots, stats) = (
            self.segments.clone(),
            self.snapshots.clone(),
            self.stats.clone(),
        );
        schedule.running = Some(tokio::task::spawn_blocking(move || {
            match curate_snapshot(&segments, &snapshots, &CurateOptions::default()) {
                Ok(curated) => {
                    stats.snapshots.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("sentiflow_trainer_snapshots_total", "outcome" => "written")
                        .increment(1);
                    metrics::gauge!("sentiflow_trainer_last_snapshot_rows")
                        .set(curated.manifest.rows as f64);
                    metrics::gauge!("sentiflow_trainer_last_snapshot_unlabelled_rows")
                        .set(curated.counts.unlabelled as f64);
                }
                Err(error) => {
                    // Not enough data yet (empty, a class missing) is normal early on: count and go on.
                    metrics::counter!("sentiflow_trainer_snapshots_total", "outcome" => error.kind())
                        .increment(1);
                    warn!(%error, "scheduled snapshot not written");
                }
            }
        }));
    }

    /// Awaits `future`, giving up `drain_timeout` after shutdown was requested.
    async fn until_drained<F: Future>(&self, future: F) -> Result<F::Output, Abandoned> {
        tokio::select! {
            output = future => Ok(output),
            () = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(self.drain_timeout).await;
            } => Err(Abandoned),
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
        kafka::commit_at_shutdown(
            &self.consumer,
            SERVICE,
            "the last segment may be read again",
        );
        if let Err(error) = self.producer.flush(self.drain_timeout) {
            warn!(%error, "producer flush failed at shutdown");
        }
        info!("trainer stopped");
    }
}
