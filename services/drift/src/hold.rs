//! Human labels read before the prediction they label: held, in order per `labels.feedback`
//! partition, until the prediction is read or can no longer be on its way (no I/O here).
//!
//! A label can overtake its prediction: after a restart the predictions after the committed offsets
//! are replayed while labels for them are read; when drift lags on `predictions`; when a reviewer is
//! quicker than infer. A held label is applied once its review has a remembered prediction, or once
//! every `predictions` partition was read up to where it ended when the label was read **and** the
//! grace time since the label was read has passed. Labels of one partition are applied in offset
//! order, so the highest applied label offset a version's state records still tells a label read
//! again after a crash from a new one; a held label's offset is not stored, so a restart reads it
//! again and nothing is lost.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A human label waiting for its prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLabel {
    /// The review it labels.
    pub review_id: String,
    /// The true class index.
    pub truth: usize,
    /// Its `labels.feedback` partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// `predictions` partition → the offset it must be read to (its end when the label was read).
    waits_for: Vec<(i32, i64)>,
    /// When it was read.
    held_at: Instant,
}

/// Why a held label is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Its review has a remembered prediction now.
    Predicted,
    /// The predictions it waited for were read and its grace time passed: it will not join.
    WaitedOut,
    /// The hold is full: the oldest label of the longest queue goes, joined if it can be.
    Overflow,
}

impl Release {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predicted => "predicted",
            Self::WaitedOut => "waited_out",
            Self::Overflow => "overflow",
        }
    }
}

/// The held labels and how far `predictions` was read.
#[derive(Debug)]
pub struct LabelHold {
    capacity: usize,
    grace: Duration,
    queues: BTreeMap<i32, VecDeque<HeldLabel>>,
    held: usize,
    /// `predictions` partition → the next offset this process reads there (where it resumed, then
    /// one past the last prediction read). A partition missing here is not waited for.
    read_to: HashMap<i32, i64>,
}

impl LabelHold {
    /// A hold of at most `capacity` labels (0: labels are never held) that gives up on a label
    /// `grace` after it was read; `resume` is where this process starts reading each `predictions`
    /// partition.
    pub fn new(capacity: usize, grace: Duration, resume: HashMap<i32, i64>) -> Self {
        Self {
            capacity,
            grace,
            queues: BTreeMap::new(),
            held: 0,
            read_to: resume,
        }
    }

    /// Whether labels may be held at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Labels held now.
    pub fn len(&self) -> usize {
        self.held
    }

    /// True when no label is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Records that the prediction at `partition`/`offset` was read.
    pub fn predictions_read(&mut self, partition: i32, offset: i64) {
        self.read_to.insert(partition, offset + 1);
    }

    /// Records the consumer's own position in a `predictions` partition (it moves past offsets that
    /// hold no message for the application, such as transaction markers, and is known where nothing
    /// was read yet): the reading position is at least that.
    pub fn predictions_position(&mut self, partition: i32, position: i64) {
        let read_to = self.read_to.entry(partition).or_insert(position);
        *read_to = (*read_to).max(position);
    }

    /// The `predictions` partitions of `ends` (partition → high watermark) not yet read to their end,
    /// with that end; partitions whose reading position is unknown are left out.
    pub fn unread(&self, ends: &HashMap<i32, i64>) -> Vec<(i32, i64)> {
        let mut unread: Vec<(i32, i64)> = ends
            .iter()
            .filter(|&(partition, &end)| {
                self.read_to
                    .get(partition)
                    .is_some_and(|&read_to| read_to < end)
            })
            .map(|(&partition, &end)| (partition, end))
            .collect();
        unread.sort_unstable();
        unread
    }

    /// Whether a label of `partition` is held (a later one must queue behind it).
    pub fn is_holding(&self, partition: i32) -> bool {
        self.queues
            .get(&partition)
            .is_some_and(|queue| !queue.is_empty())
    }

    /// Whether a label read now for which no prediction is remembered must be held: the hold is on
    /// and some prediction may still be on its way (`waits_for` not read yet, or a grace time).
    pub fn should_wait(&self, waits_for: &[(i32, i64)]) -> bool {
        self.enabled() && (!waits_for.is_empty() || !self.grace.is_zero())
    }

    /// Holds a label read at `now` that waits for `waits_for` (from [`Self::unread`]). Returns the
    /// label the capacity pushes out, if any: the oldest of the longest queue, to be applied now.
    pub fn hold(
        &mut self,
        (review_id, truth): (&str, usize),
        (partition, offset): (i32, i64),
        waits_for: Vec<(i32, i64)>,
        now: Instant,
    ) -> Option<HeldLabel> {
        self.queues
            .entry(partition)
            .or_default()
            .push_back(HeldLabel {
                review_id: review_id.to_owned(),
                truth,
                partition,
                offset,
                waits_for,
                held_at: now,
            });
        self.held += 1;
        if self.held <= self.capacity {
            return None;
        }
        let longest = self
            .queues
            .iter()
            .max_by_key(|(partition, queue)| (queue.len(), std::cmp::Reverse(**partition)))
            .map(|(&partition, _)| partition)?;
        self.pop_front(longest)
    }

    /// The next held label that may be applied at `now`, and why; `predicted` tells whether a
    /// review has a remembered prediction. Only the first label of each partition can go; a label
    /// whose review was predicted waits behind an earlier one of its partition that was not.
    pub fn release(
        &mut self,
        now: Instant,
        predicted: impl Fn(&str) -> bool,
    ) -> Option<(HeldLabel, Release)> {
        let (partition, why) = self.queues.iter().find_map(|(&partition, queue)| {
            let head = queue.front()?;
            if predicted(&head.review_id) {
                Some((partition, Release::Predicted))
            } else if self.waited_out(head, now) {
                Some((partition, Release::WaitedOut))
            } else {
                None
            }
        })?;
        let label = self.pop_front(partition)?;
        Some((label, why))
    }

    /// The offset of `labels.feedback` `partition` that may be stored once `read` was read there:
    /// just before the first label still held, else `read`.
    pub fn safe_offset(&self, partition: i32, read: i64) -> Option<i64> {
        match self.queues.get(&partition).and_then(VecDeque::front) {
            Some(first) if first.offset > 0 => Some((first.offset - 1).min(read)),
            Some(_) => None,
            None => Some(read),
        }
    }

    fn waited_out(&self, label: &HeldLabel, now: Instant) -> bool {
        now.saturating_duration_since(label.held_at) >= self.grace
            && label.waits_for.iter().all(|(partition, end)| {
                self.read_to
                    .get(partition)
                    .is_none_or(|&read_to| read_to >= *end)
            })
    }

    fn pop_front(&mut self, partition: i32) -> Option<HeldLabel> {
        let queue = self.queues.get_mut(&partition)?;
        let label = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&partition);
        }
        self.held -= 1;
        Some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(capacity: usize, grace_secs: u64) -> LabelHold {
        LabelHold::new(
            capacity,
            Duration::from_secs(grace_secs),
            HashMap::from([(0, 10), (1, 5)]),
        )
    }

    #[test]
    fn a_label_waits_until_its_prediction_is_read_and_later_labels_of_its_partition_wait_behind_it()
    {
        let start = Instant::now();
        let mut hold = hold(100, 30);
        let ends = HashMap::from([(0, 12), (1, 5), (7, 3)]);
        let waits = hold.unread(&ends);
        assert_eq!(
            waits,
            vec![(0, 12)],
            "partition 1 is read to its end, 7 unknown"
        );
        assert!(hold.should_wait(&waits));
        assert!(
            hold.hold(("r1", 2), (3, 40), waits.clone(), start)
                .is_none()
        );
        assert!(hold.is_holding(3));
        // r2 already has its prediction but must not overtake r1 on partition 3.
        assert!(hold.hold(("r2", 0), (3, 41), waits, start).is_none());
        assert!(hold.hold(("r9", 1), (4, 7), vec![], start).is_none());
        assert_eq!(hold.len(), 3);
        let known = |review: &str| review == "r2";
        assert_eq!(
            hold.release(start, known),
            None,
            "nothing ready: r1 has no prediction, r9's grace has not passed"
        );
        assert_eq!(hold.safe_offset(3, 41), Some(39));
        assert_eq!(hold.safe_offset(4, 7), Some(6));
        assert_eq!(hold.safe_offset(5, 9), Some(9), "nothing held there");

        // r1's prediction is read: r1 goes, then r2 behind it.
        let known = |review: &str| review == "r1" || review == "r2";
        let (first, why) = hold.release(start, known).unwrap();
        assert_eq!(
            (first.review_id.as_str(), first.offset, why),
            ("r1", 40, Release::Predicted)
        );
        let (second, _) = hold.release(start, known).unwrap();
        assert_eq!(second.review_id, "r2");
        assert!(!hold.is_holding(3));
        assert_eq!(hold.safe_offset(3, 41), Some(41));
        assert_eq!(hold.release(start, known), None);
        assert_eq!(hold.len(), 1);
    }

    #[test]
    fn a_label_without_a_prediction_goes_once_the_predictions_it_waited_for_were_read_and_its_grace_passed()
     {
        let start = Instant::now();
        let later = start + Duration::from_secs(31);
        let mut hold = hold(100, 30);
        let waits = hold.unread(&HashMap::from([(0, 12)]));
        hold.hold(("r1", 2), (0, 0), waits, start);
        assert_eq!(hold.safe_offset(0, 0), None, "nothing before it to store");
        let never = |_: &str| false;
        assert_eq!(
            hold.release(later, never),
            None,
            "partition 0 read to 10 of 12"
        );
        hold.predictions_read(0, 10);
        assert_eq!(hold.release(later, never), None, "read to 11 of 12");
        hold.predictions_read(0, 11);
        assert_eq!(
            hold.release(start + Duration::from_secs(29), never),
            None,
            "grace"
        );
        let (label, why) = hold.release(later, never).unwrap();
        assert_eq!((label.review_id.as_str(), why), ("r1", Release::WaitedOut));
        assert!(hold.is_empty());

        // Without a grace time a label waits only for the predictions.
        let mut quick = hold_with_grace(0);
        assert!(!quick.should_wait(&[]), "nothing to wait for");
        let waits = quick.unread(&HashMap::from([(1, 6)]));
        assert!(quick.should_wait(&waits));
        quick.hold(("r2", 1), (0, 3), waits, start);
        assert_eq!(quick.release(start, never), None);
        quick.predictions_read(1, 5);
        assert_eq!(quick.release(start, never).unwrap().1, Release::WaitedOut);

        // The consumer's position past a transaction marker at the end counts as read to there, and
        // a partition first known by its position is waited for from then on.
        let waits = quick.unread(&HashMap::from([(0, 12)]));
        quick.hold(("r3", 1), (0, 4), waits, start);
        quick.predictions_read(0, 10);
        assert_eq!(quick.release(start, never), None, "read to 11 of 12");
        quick.predictions_position(0, 12);
        quick.predictions_position(0, 11);
        assert_eq!(quick.release(start, never).unwrap().0.review_id, "r3");
        quick.predictions_position(9, 3);
        assert_eq!(quick.unread(&HashMap::from([(9, 5)])), vec![(9, 5)]);
    }

    fn hold_with_grace(grace_secs: u64) -> LabelHold {
        hold(100, grace_secs)
    }

    #[test]
    fn a_full_hold_lets_the_oldest_label_of_its_longest_queue_go_and_capacity_zero_holds_nothing() {
        let start = Instant::now();
        let mut hold = hold(3, 30);
        assert!(hold.hold(("a1", 0), (0, 1), vec![], start).is_none());
        assert!(hold.hold(("b1", 0), (1, 1), vec![], start).is_none());
        assert!(hold.hold(("b2", 0), (1, 2), vec![], start).is_none());
        let pushed = hold.hold(("a2", 0), (0, 2), vec![], start).unwrap();
        assert_eq!(
            (pushed.review_id.as_str(), pushed.partition),
            ("a1", 0),
            "queues of equal length: the lower partition"
        );
        let pushed = hold.hold(("b3", 0), (1, 3), vec![], start).unwrap();
        assert_eq!(pushed.review_id, "b1");
        assert_eq!(hold.len(), 3);
        assert_eq!(hold.safe_offset(1, 3), Some(1));

        let off = LabelHold::new(0, Duration::from_secs(30), HashMap::new());
        assert!(!off.enabled());
        assert!(!off.should_wait(&[(0, 5)]));
    }
}
