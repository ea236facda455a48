//! Start-up warm-up of the human-label join: the predictions just before where this consumer group
//! resumes are read once more, only to remember which version predicted what for each review, so a
//! human label that arrives after a restart still joins a prediction read before it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use sentiflow_common::config::KafkaArgs;
use sentiflow_common::events::{Event as _, ModelRef, Prediction};
use tokio_util::sync::CancellationToken;

/// What the label join needs of one prediction (the rest of it is dropped as it is read).
#[derive(Debug, Clone, PartialEq)]
pub struct WarmPrediction {
    /// The review it scored.
    pub review_id: String,
    /// The version that scored it.
    pub model: ModelRef,
    /// The predicted class index.
    pub class: usize,
    /// When it was scored.
    pub event_time: DateTime<Utc>,
}

impl From<Prediction> for WarmPrediction {
    fn from(prediction: Prediction) -> Self {
        Self {
            review_id: prediction.review_id,
            model: prediction.model,
            class: prediction.label.index(),
            event_time: prediction.event_time,
        }
    }
}

/// What the warm-up read.
#[derive(Debug, Default)]
pub struct Warmed {
    /// Valid predictions, in the order read (per partition, by offset).
    pub predictions: Vec<WarmPrediction>,
    /// Messages that were not valid predictions (they went to the dead-letter topic when first read).
    pub invalid: u64,
    /// Why it stopped before every partition was read to where the group resumes, if it did.
    pub stopped_early: Option<String>,
    /// High watermark of each partition of the labels topic at start (a label window's applied
    /// offsets at or beyond them belong to an earlier incarnation of the topic).
    pub label_ends: HashMap<i32, i64>,
    /// Where the service resumes reading each partition of the predictions topic: the group's
    /// committed offset, else the partition's start (or end, when `auto.offset.reset` is set to
    /// latest); the label hold measures how far predictions were read from there.
    pub prediction_resume: HashMap<i32, i64>,
}

/// Reads, from each partition of `predictions`, up to `capacity` / partitions predictions before the
/// offset `group_id` has committed there (a partition without one is read from its start by the
/// service anyway), and the high watermarks of `labels`; everything within `deadline`, stopping at
/// `shutdown`. Blocking; joins no group and commits nothing. A poll error ends the reading with what
/// was read.
pub fn recent_predictions(
    kafka: &KafkaArgs,
    group_id: &str,
    (predictions, labels): (&str, &str),
    capacity: usize,
    deadline: Duration,
    shutdown: &CancellationToken,
) -> KafkaResult<Warmed> {
    let started = Instant::now();
    let left = || deadline.saturating_sub(started.elapsed());
    let query = || left().min(Duration::from_secs(10));
    // The operator's options are in `client_config()`; the settings that keep this consumer from
    // committing (and rewinding the group) come after them, so no option can undo them.
    let mut config = kafka.client_config();
    config
        .set("group.id", group_id)
        .set("client.id", "sentiflow-drift-join-warmup")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut warmed = Warmed::default();
    let partitions_of = |topic: &str| -> KafkaResult<Vec<i32>> {
        let metadata = consumer.fetch_metadata(Some(topic), query())?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|found| found.error().is_none())
            .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
            .collect())
    };
    for partition in partitions_of(labels)? {
        let (_, high) = consumer.fetch_watermarks(labels, partition, query())?;
        warmed.label_ends.insert(partition, high);
    }
    let partitions = partitions_of(predictions)?;
    if partitions.is_empty() {
        return Ok(warmed);
    }
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(predictions, partition);
    }
    // A group coordinator that is still loading (a new group, a broker just started) answers with a
    // retriable error for a moment.
    let committed = loop {
        match consumer.committed_offsets(list.clone(), query()) {
            Ok(committed) => break committed,
            Err(error) if left() > deadline / 2 && !shutdown.is_cancelled() => {
                tracing::debug!(%error, "committed offsets not available yet; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(error) => return Err(error),
        }
    };
    let per_partition = (capacity / partitions.len()).max(1) as i64;
    let mut assignment = TopicPartitionList::new();
    // partition → the offset the group resumes at (read up to, not including, it).
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let from_latest = resets_to_latest(kafka);
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(predictions, partition, query())?;
        let Some(Offset::Offset(resume)) = committed
            .find_partition(predictions, partition)
            .filter(|element| element.error().is_ok())
            .map(|element| element.offset())
        else {
            // Nothing committed: the service starts where `auto.offset.reset` says.
            warmed
                .prediction_resume
                .insert(partition, if from_latest { high } else { low });
            continue;
        };
        // Out of range (retention deleted it, or the topic was recreated): the consumer resets.
        let resumes_at = if (low..=high).contains(&resume) {
            resume
        } else if from_latest {
            high
        } else {
            low
        };
        warmed.prediction_resume.insert(partition, resumes_at);
        let start = (resume - per_partition).max(low);
        if capacity > 0 && start < resume {
            assignment.add_partition_offset(predictions, partition, Offset::Offset(start))?;
            ends.insert(partition, resume);
        }
    }
    if ends.is_empty() {
        return Ok(warmed);
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        if shutdown.is_cancelled() {
            warmed.stopped_early = Some("shutdown".to_owned());
            break;
        }
        if left().is_zero() {
            warmed.stopped_early = Some(format!("deadline of {} s", deadline.as_secs()));
            break;
        }
        let Some(message) = consumer.poll(left().min(Duration::from_millis(200))) else {
            continue;
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                warmed.stopped_early = Some(format!("poll error: {error}"));
                break;
            }
        };
        let partition = message.partition();
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if message.offset() < end {
            match Prediction::decode_validated(message.payload().unwrap_or_default()) {
                Ok(prediction) => warmed.predictions.push(prediction.into()),
                Err(_) => warmed.invalid += 1,
            }
        }
        if message.offset() + 1 >= end {
            ends.remove(&partition);
            // Done with it: stop fetching what the service reads itself.
            let mut done = TopicPartitionList::new();
            done.add_partition(predictions, partition);
            let _ = consumer.pause(&done);
        }
    }
    Ok(warmed)
}

/// Whether the operator's options make a consumer without a committed offset start at a partition's
/// end (librdkafka's default here is its start: see `at_least_once_consumer`).
fn resets_to_latest(kafka: &KafkaArgs) -> bool {
    kafka
        .options
        .iter()
        .rev()
        .find(|option| option.key == "auto.offset.reset")
        .is_some_and(|option| matches!(option.value.as_str(), "latest" | "largest" | "end"))
}

/// The high watermarks of the predictions topic's partitions, read through a client of its own (it
/// joins no group) and reused for a second, so a burst of labels costs one round of broker calls.
pub struct PredictionEnds {
    client: std::sync::Arc<BaseConsumer>,
    topic: String,
    cached: Option<(Instant, HashMap<i32, i64>)>,
    /// When the last fetch failed: no other is tried for `ENDS_RETRY_AFTER_FAILURE`.
    failed_at: Option<Instant>,
}

impl std::fmt::Debug for PredictionEnds {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PredictionEnds")
            .field("topic", &self.topic)
            .field("cached", &self.cached)
            .field("failed_at", &self.failed_at)
            .finish_non_exhaustive()
    }
}

/// How long fetched ends are reused.
const ENDS_FRESH_FOR: Duration = Duration::from_secs(1);

/// Longest a fetch of the ends may take, all its broker calls together.
const ENDS_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed fetch, how long the last ends (or none) are used before the broker is asked again.
const ENDS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

impl PredictionEnds {
    /// A reader of `topic`'s ends.
    pub fn new(kafka: &KafkaArgs, topic: &str) -> KafkaResult<Self> {
        let mut config = kafka.client_config();
        config
            .set("client.id", "sentiflow-drift-prediction-ends")
            .set("enable.auto.commit", "false");
        Ok(Self {
            client: std::sync::Arc::new(config.create()?),
            topic: topic.to_owned(),
            cached: None,
            failed_at: None,
        })
    }

    /// The ends (partition → high watermark), fetched at most once a second; when a fetch fails,
    /// the last ones fetched (or none) with the error, and no fetch for the next five seconds.
    pub async fn get(&mut self) -> (HashMap<i32, i64>, Option<String>) {
        if let Some((at, ends)) = &self.cached
            && at.elapsed() < ENDS_FRESH_FOR
        {
            return (ends.clone(), None);
        }
        if self
            .failed_at
            .is_some_and(|at| at.elapsed() < ENDS_RETRY_AFTER_FAILURE)
        {
            return (self.last(), None);
        }
        let (client, topic) = (self.client.clone(), self.topic.clone());
        let fetched = tokio::task::spawn_blocking(move || -> KafkaResult<HashMap<i32, i64>> {
            let started = Instant::now();
            let left = || ENDS_TIMEOUT.saturating_sub(started.elapsed());
            let metadata = client.fetch_metadata(Some(&topic), left())?;
            let mut ends = HashMap::new();
            for found in metadata
                .topics()
                .iter()
                .filter(|found| found.error().is_none())
            {
                for partition in found.partitions() {
                    let (_, high) = client.fetch_watermarks(&topic, partition.id(), left())?;
                    ends.insert(partition.id(), high);
                }
            }
            Ok(ends)
        })
        .await;
        let error = match fetched {
            Ok(Ok(ends)) => {
                self.cached = Some((Instant::now(), ends.clone()));
                self.failed_at = None;
                return (ends, None);
            }
            Ok(Err(error)) => error.to_string(),
            Err(join_error) => join_error.to_string(),
        };
        self.failed_at = Some(Instant::now());
        (self.last(), Some(error))
    }

    fn last(&self) -> HashMap<i32, i64> {
        self.cached
            .as_ref()
            .map(|(_, ends)| ends.clone())
            .unwrap_or_default()
    }
}
