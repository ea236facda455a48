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
    /// One past the last message produced (the high watermark).
    pub(crate) high: i64,
}

/// A request to the curation loop: read the partitions it is assigned up to `read_to`, then close the
/// open segment; answered with the number of messages curation has made durable so far.
#[derive(Debug)]
pub(crate) struct FlushRequest {
    /// The source partitions' ends to read up to first (empty: close what is open now).
    pub(crate) read_to: Vec<PartitionEnd>,
    pub(crate) reply: tokio::sync::oneshot::Sender<u64>,
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
    /// resumes, or the consumer's own position, which steps over transaction markers).
    pub(crate) fn has_read(&self, end: &PartitionEnd, position: Option<i64>) -> bool {
        match self.next(&end.topic, end.partition).max(position) {
            Some(next) => next >= end.high,
            None => false,
        }
    }
}

/// The ends among `ends` that curation still has to read: those of partitions it is assigned (another
/// trainer reads the rest) and has not read to the end. `resume_at` answers, for a partition nothing
/// was read from since start, where reading starts in it (None when unknown: then it still counts as
/// unread and the catch-up deadline bounds the wait).
pub(crate) fn unread(
    ends: Vec<PartitionEnd>,
    assigned: &HashSet<(String, i32)>,
    read: &ReadPositions,
    resume_at: impl Fn(&PartitionEnd) -> Option<i64>,
) -> Vec<PartitionEnd> {
    ends.into_iter()
        .filter(|end| end.high > end.low)
        .filter(|end| assigned.contains(&(end.topic.clone(), end.partition)))
        .filter(|end| {
            let resume = match read.next(&end.topic, end.partition) {
                Some(_) => None,
                None => resume_at(end),
            };
            !read.has_read(end, resume)
        })
        .collect()
}

/// The partitions `consumer` is assigned now (empty while it is still joining its group).
pub(crate) fn assigned(consumer: &Consumer) -> HashSet<(String, i32)> {
    consumer
        .assignment()
        .map(|list| {
            list.elements()
                .iter()
                .map(|element| (element.topic().to_owned(), element.partition()))
                .collect()
        })
        .unwrap_or_default()
}

/// The consumer's position (the offset after the last message it delivered or stepped over) in each
/// partition it is assigned and has one in. Local: no broker round trip.
pub(crate) fn positions(consumer: &Consumer) -> HashMap<(String, i32), i64> {
    let Ok(list) = consumer.position() else {
        return HashMap::new();
    };
    list.elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => {
                Some(((element.topic().to_owned(), element.partition()), offset))
            }
            _ => None,
        })
        .collect()
}

/// Where reading resumes in each of `ends` for `consumer`'s group: its committed offset, else the log
/// start (`auto.offset.reset=earliest`). Blocking: one broker round trip. Partitions the broker did not
/// answer for are left out.
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

    fn assigned_to(partitions: &[(&str, i32)]) -> HashSet<(String, i32)> {
        partitions
            .iter()
            .map(|(topic, partition)| ((*topic).to_owned(), *partition))
            .collect()
    }

    #[test]
    fn a_partition_read_to_its_high_watermark_is_done_and_one_short_of_it_is_not() {
        let mut read = ReadPositions::default();
        read.advance("clean", 0, 9);
        read.advance("clean", 1, 3);
        let ends = vec![end("clean", 0, 0, 10), end("clean", 1, 0, 10)];
        let left = unread(
            ends,
            &assigned_to(&[("clean", 0), ("clean", 1)]),
            &read,
            |_| None,
        );
        assert_eq!(left, vec![end("clean", 1, 0, 10)]);
        read.advance("clean", 1, 9);
        assert!(read.has_read(&left[0], None));
    }

    #[test]
    fn partitions_of_other_consumers_and_empty_partitions_are_not_waited_for() {
        let read = ReadPositions::default();
        let ends = vec![
            end("clean", 0, 0, 10),
            end("clean", 1, 0, 10),
            end("feedback", 0, 5, 5),
        ];
        let left = unread(
            ends,
            &assigned_to(&[("clean", 0), ("feedback", 0)]),
            &read,
            |_| Some(0),
        );
        assert_eq!(left, vec![end("clean", 0, 0, 10)]);
    }

    #[test]
    fn an_unread_partition_is_done_when_reading_would_resume_at_its_end() {
        let read = ReadPositions::default();
        let ends = vec![
            end("clean", 0, 0, 10),
            end("clean", 1, 0, 10),
            end("clean", 2, 0, 10),
        ];
        let left = unread(
            ends,
            &assigned_to(&[("clean", 0), ("clean", 1), ("clean", 2)]),
            &read,
            |end| match end.partition {
                0 => Some(10),
                1 => Some(4),
                _ => None,
            },
        );
        assert_eq!(left, vec![end("clean", 1, 0, 10), end("clean", 2, 0, 10)]);
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
    fn what_was_read_wins_over_the_resume_offset() {
        let mut read = ReadPositions::default();
        read.advance("clean", 0, 4);
        let left = unread(
            vec![end("clean", 0, 0, 10)],
            &assigned_to(&[("clean", 0)]),
            &read,
            |_| Some(10),
        );
        assert_eq!(left.len(), 1, "a read position short of the end is unread");
    }
}
