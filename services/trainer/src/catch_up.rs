//! Catching curation up before a retrain snapshot: the ends of the source partitions when the retrain
//! started, how far curation has read each one, and which it still has to read to the end.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sentiflow_common::kafka::{Consumer, ResilientProducer};

/// How long one metadata, watermark or committed-offset query to the broker may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The extent of one source partition when a retrain started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionEnd {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// The oldest offset still in the log: where a group with no committed offset starts reading
    /// (`auto.offset.reset=earliest`).
    pub(crate) low: i64,
    /// One past the last message a consumer can read: the high watermark, or under the default
    /// `isolation.level=read_committed` the last stable offset (an open transaction's messages are
    /// not waited for).
    pub(crate) high: i64,
}

/// A request to the curation loop: read the partitions it is assigned up to `read_to`, then close the
/// open segment.
#[derive(Debug)]
pub(crate) struct FlushRequest {
    /// The source partitions' ends to read up to first (None: they could not be read; close what is
    /// open now).
    pub(crate) read_to: Option<Vec<PartitionEnd>>,
    pub(crate) reply: tokio::sync::oneshot::Sender<FlushAnswer>,
}

/// The curation loop's answer to a [`FlushRequest`], sent once the open segment is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushAnswer {
    /// Messages curation has made durable since it started.
    pub(crate) durable: u64,
    pub(crate) outcome: CatchUpOutcome,
}

impl FlushAnswer {
    /// Whether curation could not catch up and may be able to shortly: its consumer holds no
    /// partitions yet, or the ends were unknown and nothing is durable yet.
    pub(crate) fn worth_asking_again(self) -> bool {
        match self.outcome {
            CatchUpOutcome::Unassigned => true,
            CatchUpOutcome::NoWatermarks => self.durable == 0,
            _ => false,
        }
    }
}

/// How a catch-up ended (the `outcome` label of `sentiflow_trainer_retrain_catch_ups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUpOutcome {
    /// Curation had to read on, and read every partition it is assigned up to the ends.
    ReadToEnd,
    /// Every partition curation is assigned was already read up to the ends.
    NothingToRead,
    /// Curation's consumer had no partitions (joining its group, or mid-rebalance).
    Unassigned,
    /// The ends could not be read from the broker; curation closed what it had.
    NoWatermarks,
    /// The deadline passed with partitions still unread.
    TimedOut,
}

impl CatchUpOutcome {
    /// What it means for the snapshot, for people (the retrain outcome's `curation`).
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::ReadToEnd => "read on to where the topics ended when the retrain started",
            Self::NothingToRead => "had already read to where the topics ended",
            Self::Unassigned => "held no partitions (joining its group); what was durable",
            Self::NoWatermarks => "the topics' ends could not be read; what curation had read",
            Self::TimedOut => "timed out before reading to the topics' ends; what it had read",
        }
    }

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ReadToEnd => "read_to_end",
            Self::NothingToRead => "nothing_to_read",
            Self::Unassigned => "unassigned",
            Self::NoWatermarks => "no_watermarks",
            Self::TimedOut => "timed_out",
        }
    }
}

/// The ends of every partition of `topics` now. Blocking: broker round trips.
pub(crate) fn partition_ends(
    producer: &ResilientProducer,
    topics: &[String],
) -> KafkaResult<Vec<PartitionEnd>> {
    let producer = producer.current();
    let client = rdkafka::producer::Producer::client(&producer);
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
        for found in metadata.topics() {
            if let Some(error) = found.error() {
                return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::from(error)));
            }
            for partition in found.partitions() {
                let (low, high) = client.fetch_watermarks(topic, partition.id(), QUERY_TIMEOUT)?;
                ends.push(PartitionEnd {
                    topic: topic.clone(),
                    partition: partition.id(),
                    low,
                    high,
                });
            }
        }
    }
    Ok(ends)
}

/// How far curation has read each partition since it started: the offset after the last message read.
#[derive(Debug, Default)]
pub(crate) struct ReadPositions {
    next: HashMap<String, HashMap<i32, i64>>,
}

impl ReadPositions {
    /// Records that the message at `offset` was read (and accounted for in the open segment).
    pub(crate) fn advance(&mut self, topic: &str, partition: i32, offset: i64) {
        match self.next.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, offset + 1);
            }
            None => {
                self.next
                    .insert(topic.to_owned(), HashMap::from([(partition, offset + 1)]));
            }
        }
    }

    /// The offset after the last message read from a partition, if any was read since start.
    pub(crate) fn next(&self, topic: &str, partition: i32) -> Option<i64> {
        self.next.get(topic)?.get(&partition).copied()
    }

    /// Whether `end` is read to the end: by the messages read, or by `position` (where reading
    /// resumes: the committed offset, or the consumer's own position, which steps over transaction
    /// markers).
    pub(crate) fn has_read(&self, end: &PartitionEnd, position: Option<i64>) -> bool {
        match self.next(&end.topic, end.partition).max(position) {
            Some(next) => next >= end.high,
            None => false,
        }
    }
}

/// The ends among `ends` that curation still has to read: of partitions with messages, those not read
/// to the end by the messages read nor by `position_of` (the furthest known position in a partition:
/// a committed offset, the consumer's position). None means unknown: the partition counts as unread
/// and the catch-up deadline bounds the wait.
pub(crate) fn unread(
    ends: Vec<PartitionEnd>,
    read: &ReadPositions,
    position_of: impl Fn(&PartitionEnd) -> Option<i64>,
) -> Vec<PartitionEnd> {
    ends.into_iter()
        .filter(|end| end.high > end.low && !read.has_read(end, position_of(end)))
        .collect()
}

/// What the consumer holds now: its partitions and its position in each. Blocking: the assignment is
/// asked of librdkafka's group thread.
#[derive(Debug, Default)]
pub(crate) struct ConsumerView {
    pub(crate) assigned: HashSet<(String, i32)>,
    /// The offset after the last message delivered or stepped over, where the consumer has one.
    pub(crate) positions: HashMap<(String, i32), i64>,
}

impl ConsumerView {
    /// The consumer's partitions and positions now.
    pub(crate) fn of(consumer: &Consumer) -> Self {
        let Ok(list) = consumer.position() else {
            return Self::default();
        };
        let mut view = Self::default();
        for element in list.elements() {
            let key = (element.topic().to_owned(), element.partition());
            if let Offset::Offset(offset) = element.offset() {
                view.positions.insert(key.clone(), offset);
            }
            view.assigned.insert(key);
        }
        view
    }

    /// The consumer's position in `end`'s partition, if it has one.
    pub(crate) fn position(&self, end: &PartitionEnd) -> Option<i64> {
        self.positions
            .get(&(end.topic.clone(), end.partition))
            .copied()
    }

    /// Whether `end`'s partition is this consumer's (another trainer reads the rest).
    pub(crate) fn owns(&self, end: &PartitionEnd) -> bool {
        self.assigned.contains(&(end.topic.clone(), end.partition))
    }
}

/// Where reading resumes in each of `ends` for `consumer`'s group: its committed offset, else the log
/// start (`auto.offset.reset=earliest`). Blocking: one broker round trip. Partitions the broker did not
/// answer for are left out. This also covers a partition read here, revoked, read on by another
/// trainer and assigned back: what was read here before is then behind the committed offset.
pub(crate) fn resume_offsets(
    consumer: &Consumer,
    ends: &[PartitionEnd],
) -> KafkaResult<HashMap<(String, i32), i64>> {
    let mut list = TopicPartitionList::new();
    for end in ends {
        list.add_partition(&end.topic, end.partition);
    }
    let committed = consumer.committed_offsets(list, QUERY_TIMEOUT)?;
    let mut resume = HashMap::new();
    for end in ends {
        let Some(element) = committed.find_partition(&end.topic, end.partition) else {
            continue;
        };
        if element.error().is_err() {
            continue;
        }
        let offset = match element.offset() {
            Offset::Offset(offset) => offset,
            Offset::Invalid | Offset::Beginning => end.low,
            // Stored, End, Tail or OffsetTail: not something this group commits; leave it unknown.
            _ => continue,
        };
        resume.insert((end.topic.clone(), end.partition), offset);
    }
    Ok(resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(topic: &str, partition: i32, low: i64, high: i64) -> PartitionEnd {
        PartitionEnd {
            topic: topic.to_owned(),
            partition,
            low,
            high,
        }
    }

    #[test]
    fn a_partition_read_to_its_high_watermark_is_done_and_one_short_of_it_is_not() {
        let mut read = ReadPositions::default();
        read.advance("clean", 0, 9);
        read.advance("clean", 1, 3);
        let ends = vec![end("clean", 0, 0, 10), end("clean", 1, 0, 10)];
        let left = unread(ends, &read, |_| None);
        assert_eq!(left, vec![end("clean", 1, 0, 10)]);
        read.advance("clean", 1, 9);
        assert!(read.has_read(&left[0], None));
    }

    #[test]
    fn empty_partitions_are_not_waited_for_and_unknown_ones_are() {
        let read = ReadPositions::default();
        let ends = vec![end("clean", 0, 0, 10), end("feedback", 0, 5, 5)];
        assert_eq!(unread(ends, &read, |_| None), vec![end("clean", 0, 0, 10)]);
    }

    #[test]
    fn a_partition_is_done_when_reading_would_resume_at_its_end() {
        let read = ReadPositions::default();
        let ends = vec![end("clean", 0, 0, 10), end("clean", 1, 0, 10)];
        let left = unread(ends, &read, |end| {
            Some(if end.partition == 0 { 10 } else { 4 })
        });
        assert_eq!(left, vec![end("clean", 1, 0, 10)]);
    }

    #[test]
    fn a_position_past_the_last_message_counts_as_read() {
        let mut read = ReadPositions::default();
        // The last message is at 8; offset 9 is a transaction marker the consumer stepped over.
        read.advance("feedback", 0, 8);
        let end = end("feedback", 0, 0, 10);
        assert!(!read.has_read(&end, None));
        assert!(read.has_read(&end, Some(10)));
        read.advance("feedback", 0, 9);
        assert!(
            read.has_read(&end, Some(3)),
            "a lagging position does not undo reading"
        );
    }

    #[test]
    fn a_committed_offset_beyond_what_was_read_here_counts() {
        // Read to 4 here, revoked, read to the end by another trainer, assigned back.
        let mut read = ReadPositions::default();
        read.advance("clean", 0, 4);
        let ends = vec![end("clean", 0, 0, 10)];
        assert_eq!(unread(ends.clone(), &read, |_| Some(10)), vec![]);
        assert_eq!(unread(ends.clone(), &read, |_| None), ends);
    }

    #[test]
    fn the_retrain_asks_again_only_while_curation_may_still_catch_up() {
        let answer = |outcome, durable| FlushAnswer { durable, outcome };
        assert!(answer(CatchUpOutcome::Unassigned, 0).worth_asking_again());
        assert!(answer(CatchUpOutcome::Unassigned, 500).worth_asking_again());
        assert!(answer(CatchUpOutcome::NoWatermarks, 0).worth_asking_again());
        assert!(!answer(CatchUpOutcome::NoWatermarks, 500).worth_asking_again());
        // Nothing durable since a restart, but everything was read before it: no reason to wait.
        assert!(!answer(CatchUpOutcome::NothingToRead, 0).worth_asking_again());
        assert!(!answer(CatchUpOutcome::ReadToEnd, 10).worth_asking_again());
        assert!(!answer(CatchUpOutcome::TimedOut, 0).worth_asking_again());
    }

    #[test]
    fn the_view_tells_owned_partitions_and_positions() {
        let view = ConsumerView {
            assigned: HashSet::from([("clean".to_owned(), 0), ("clean".to_owned(), 1)]),
            positions: HashMap::from([(("clean".to_owned(), 1), 7)]),
        };
        assert!(view.owns(&end("clean", 0, 0, 10)));
        assert!(!view.owns(&end("clean", 2, 0, 10)));
        assert_eq!(view.position(&end("clean", 0, 0, 10)), None);
        assert_eq!(view.position(&end("clean", 1, 0, 10)), Some(7));
    }
}
