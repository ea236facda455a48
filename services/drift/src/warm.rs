//! Start-up warm-up of the human-label join: the predictions just before where this consumer group
//! resumes are read once more, only to remember which version predicted what for each review, so a
//! human label that arrives after a restart still joins a prediction read before it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use sentiflow_common::config::KafkaArgs;
use sentiflow_common::events::{Event as _, Prediction};

/// What the warm-up read.
#[derive(Debug, Default)]
pub struct WarmedPredictions {
    /// Valid predictions, in the order read (per partition, by offset).
    pub predictions: Vec<Prediction>,
    /// Messages that were not valid predictions (they went to the dead-letter topic when first read).
    pub invalid: u64,
    /// Whether the deadline passed before every partition was read to where the group resumes.
    pub timed_out: bool,
}

/// Reads, from each partition of `topic`, up to `capacity` / partitions predictions before the offset
/// `group_id` has committed there (a partition without one is read from its start by the service
/// anyway), within `deadline`. Blocking; joins no group and commits nothing.
pub fn recent_predictions(
    kafka: &KafkaArgs,
    group_id: &str,
    topic: &str,
    capacity: usize,
    deadline: Duration,
) -> KafkaResult<WarmedPredictions> {
    let started = Instant::now();
    let query = Duration::from_secs(10).min(deadline);
    let mut config = kafka.client_config();
    config
        .set("group.id", group_id)
        .set("client.id", "sentiflow-drift-join-warmup")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    for option in &kafka.options {
        config.set(option.key.clone(), option.value.clone());
    }
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), query)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.error().is_none())
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    let mut warmed = WarmedPredictions::default();
    if partitions.is_empty() || capacity == 0 {
        return Ok(warmed);
    }
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(topic, partition);
    }
    // A group coordinator that is still loading (a new group, a broker just started) answers with a
    // retriable error for a moment.
    let committed = loop {
        match consumer.committed_offsets(list.clone(), query) {
            Ok(committed) => break committed,
            Err(error) if started.elapsed() < deadline / 2 => {
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
    for &partition in &partitions {
        let Some(Offset::Offset(resume)) = committed
            .find_partition(topic, partition)
            .filter(|element| element.error().is_ok())
            .map(|element| element.offset())
        else {
            continue;
        };
        let (low, _) = consumer.fetch_watermarks(topic, partition, query)?;
        let start = (resume - per_partition).max(low);
        if start < resume {
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
            ends.insert(partition, resume);
        }
    }
    if ends.is_empty() {
        return Ok(warmed);
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        let Some(left) = deadline.checked_sub(started.elapsed()) else {
            warmed.timed_out = true;
            break;
        };
        let Some(message) = consumer.poll(left.min(Duration::from_millis(500))) else {
            continue;
        };
        let message = message?;
        let partition = message.partition();
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if message.offset() < end {
            match Prediction::decode_validated(message.payload().unwrap_or_default()) {
                Ok(prediction) => warmed.predictions.push(prediction),
                Err(_) => warmed.invalid += 1,
            }
        }
        if message.offset() + 1 >= end {
            ends.remove(&partition);
        }
    }
    Ok(warmed)
}
