//! Human labels read before the prediction they label: held until the prediction is read or can no
//! longer be on its way (no I/O here).
//!
//! A label can overtake its prediction: after a restart the predictions after the committed offsets
//! are replayed while labels for them are read; when drift lags on `predictions`; when a reviewer is
//! quicker than infer. A held label is applied as soon as its review's prediction is read, or given
//! up once every `predictions` partition was read up to where it ended when the label was read
//! **and** the grace time since the label was read has passed. Labels that can join are applied at
//! once, even behind a held one; the offset stored for a `labels.feedback` partition stays just
//! before its first held label, so a restart reads every held label again and nothing is lost, and
//! [`LabelHold::resolved_through`] tells the label windows up to where every label was dealt with,
//! which with the offsets applied beyond it recognises a label read again after a crash.

use std::collections::{BTreeMap, HashMap};
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
    /// Its review's prediction was read.
    Predicted,
    /// The predictions it waited for were read and its grace time passed: it will not join.
    WaitedOut,
    /// The hold is full: the label held longest goes, joined if it can be.
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
    /// By (`labels.feedback` partition, offset): per partition in the order read.
    held: BTreeMap<(i32, i64), HeldLabel>,
    /// Review id → the held labels of it.
    by_review: HashMap<String, Vec<(i32, i64)>>,
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
            held: BTreeMap::new(),
            by_review: HashMap::new(),
            read_to: resume,
        }
    }

    /// Whether labels may be held at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Labels held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when no label is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
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

    /// Whether a label read now for which no prediction is remembered must be held: the hold is on
    /// and its prediction may still be on its way (`waits_for` not read yet, or a grace time).
    pub fn should_wait(&self, waits_for: &[(i32, i64)]) -> bool {
        self.enabled() && (!waits_for.is_empty() || !self.grace.is_zero())
    }

    /// Holds a label read at `now` that waits for `waits_for` (from [`Self::unread`]). Returns the
    /// label the capacity pushes out, if any: the one held longest, to be applied now.
    pub fn hold(
        &mut self,
        (review_id, truth): (&str, usize),
        (partition, offset): (i32, i64),
        waits_for: Vec<(i32, i64)>,
        now: Instant,
    ) -> Option<HeldLabel> {
        self.by_review
            .entry(review_id.to_owned())
            .or_default()
            .push((partition, offset));
        self.held.insert(
            (partition, offset),
            HeldLabel {
                review_id: review_id.to_owned(),
                truth,
                partition,
                offset,
                waits_for,
                held_at: now,
            },
        );
        if self.held.len() <= self.capacity {
            return None;
        }
        let oldest = self
            .first_per_partition()
            .min_by_key(|label| (label.held_at, label.partition))
            .map(|label| (label.partition, label.offset))?;
        self.remove(oldest)
    }

    /// The keys (partition, offset) of the held labels of `review_id`, whose prediction was just
    /// read, in the order read. Take each with [`Self::take`] just before applying it: the ones not
    /// yet applied must still count as held for [`Self::resolved_through`].
    pub fn predicted(&self, review_id: &str) -> Vec<(i32, i64)> {
        let mut keys = self.by_review.get(review_id).cloned().unwrap_or_default();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Takes the held label at `key` out of the hold.
    pub fn take(&mut self, key: (i32, i64)) -> Option<HeldLabel> {
        self.remove(key)
    }

    /// The next held label to give up on at `now`: its predictions were read and its grace passed.
    pub fn next_waited_out(&mut self, now: Instant) -> Option<HeldLabel> {
        // Within a partition labels were read in offset order, so the first is the first to go.
        let key = self
            .first_per_partition()
            .find(|label| self.waited_out(label, now))
            .map(|label| (label.partition, label.offset))?;
        self.remove(key)
    }

    /// The offset of `labels.feedback` `partition` that may be stored once `read` was read there:
    /// just before its first label still held, else `read`.
    pub fn safe_offset(&self, partition: i32, read: i64) -> Option<i64> {
        let through = self.resolved_through(partition, read);
        (through >= 0).then_some(through)
    }

    /// The highest offset of `partition` up to which every label read (`read` the last) was dealt
    /// with: applied, dead-lettered or given up; -1 when none was.
    pub fn resolved_through(&self, partition: i32, read: i64) -> i64 {
        self.held
            .range((partition, i64::MIN)..=(partition, i64::MAX))
            .next()
            .map_or(read, |(&(_, first), _)| (first - 1).min(read))
    }

    /// The first held label of each partition, jumping from partition to partition (the hold may
    /// be large; the partitions are few).
    fn first_per_partition(&self) -> impl Iterator<Item = &HeldLabel> {
        let mut next = self
            .held
            .first_key_value()
            .map(|(&(partition, _), _)| partition);
        std::iter::from_fn(move || {
            let partition = next?;
            let (_, label) = self.held.range((partition, i64::MIN)..).next()?;
            next = partition.checked_add(1).and_then(|after| {
                self.held
                    .range((after, i64::MIN)..)
                    .next()
                    .map(|(&(partition, _), _)| partition)
            });
            Some(label)
        })
    }

    fn waited_out(&self, label: &HeldLabel, now: Instant) -> bool {
        now.saturating_duration_since(label.held_at) >= self.grace
            && label.waits_for.iter().all(|(partition, end)| {
                self.read_to
                    .get(partition)
                    .is_none_or(|&read_to| read_to >= *end)
            })
    }

    fn remove(&mut self, key: (i32, i64)) -> Option<HeldLabel> {
        let label = self.held.remove(&key)?;
        if let Some(keys) = self.by_review.get_mut(&label.review_id) {
            keys.retain(|held| *held != key);
            if keys.is_empty() {
                self.by_review.remove(&label.review_id);
            }
        }
        Some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_hold(capacity: usize, grace_secs: u64) -> LabelHold {
        LabelHold::new(
            capacity,
            Duration::from_secs(grace_secs),
            HashMap::from([(0, 10), (1, 5)]),
        )
    }

    #[test]
    fn a_held_label_goes_when_its_prediction_is_read_and_the_stored_offset_stays_before_the_first_held()
     {
        let start = Instant::now();
        let mut hold = new_hold(100, 30);
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
        assert!(hold.hold(("r2", 0), (3, 42), waits, start).is_none());
        assert!(hold.hold(("r9", 1), (4, 7), vec![], start).is_none());
        assert_eq!(hold.len(), 3);
        assert_eq!(hold.next_waited_out(start), None, "grace");
        // Offset 41 (a label that joined at once) is dealt with, but 40 is held: store 39.
        assert_eq!(hold.safe_offset(3, 42), Some(39));
        assert_eq!(hold.resolved_through(3, 42), 39);
        assert_eq!(hold.safe_offset(4, 7), Some(6));
        assert_eq!(hold.safe_offset(5, 9), Some(9), "nothing held there");
        assert_eq!(hold.predicted("r-other"), vec![]);

        // r2's prediction is read first: it goes although r1 before it is still held.
        assert_eq!(hold.predicted("r2"), vec![(3, 42)]);
        let r2 = hold.take((3, 42)).unwrap();
        assert_eq!((r2.review_id.as_str(), r2.offset), ("r2", 42));
        assert_eq!(hold.safe_offset(3, 42), Some(39));
        assert_eq!(hold.take((3, 42)), None, "taken once");
        // Two labels of r1: while the first is applied, the second still counts as held.
        assert!(hold.hold(("r1", 0), (3, 43), vec![], start).is_none());
        let keys = hold.predicted("r1");
        assert_eq!(keys, vec![(3, 40), (3, 43)]);
        assert_eq!(hold.take(keys[0]).unwrap().offset, 40);
        assert_eq!(hold.resolved_through(3, 43), 42, "43 is still held");
        assert_eq!(hold.take(keys[1]).unwrap().offset, 43);
        assert_eq!(hold.resolved_through(3, 43), 43);
        assert_eq!(hold.len(), 1);
        assert!(hold.predicted("r1").is_empty());
        // Many partitions: the first of each is found.
        for partition in 10..20 {
            hold.hold(("p", 0), (partition, 5), vec![], start);
            hold.hold(("p", 0), (partition, 6), vec![], start);
        }
        let later = start + Duration::from_secs(31);
        let mut gone = Vec::new();
        while let Some(label) = hold.next_waited_out(later) {
            gone.push((label.partition, label.offset));
        }
        assert_eq!(gone.len(), 21);
        assert_eq!(&gone[..3], &[(4, 7), (10, 5), (10, 6)]);
        assert!(hold.is_empty());
    }

    #[test]
    fn a_label_without_a_prediction_goes_once_the_predictions_it_waited_for_were_read_and_its_grace_passed()
     {
        let start = Instant::now();
        let later = start + Duration::from_secs(31);
        let mut hold = new_hold(100, 30);
        let waits = hold.unread(&HashMap::from([(0, 12)]));
        hold.hold(("r1", 2), (0, 0), waits, start);
        assert_eq!(hold.safe_offset(0, 0), None, "nothing before it to store");
        assert_eq!(hold.resolved_through(0, 0), -1);
        assert_eq!(
            hold.next_waited_out(later),
            None,
            "partition 0 read to 10 of 12"
        );
        hold.predictions_read(0, 10);
        assert_eq!(hold.next_waited_out(later), None, "read to 11 of 12");
        hold.predictions_read(0, 11);
        assert_eq!(
            hold.next_waited_out(start + Duration::from_secs(29)),
            None,
            "grace"
        );
        let label = hold.next_waited_out(later).unwrap();
        assert_eq!(label.review_id, "r1");
        assert!(hold.is_empty());
        assert!(hold.predicted("r1").is_empty(), "forgotten with it");

        // Without a grace time a label waits only for the predictions.
        let mut quick = new_hold(100, 0);
        assert!(!quick.should_wait(&[]), "nothing to wait for");
        let waits = quick.unread(&HashMap::from([(1, 6)]));
        assert!(quick.should_wait(&waits));
        quick.hold(("r2", 1), (0, 3), waits, start);
        assert_eq!(quick.next_waited_out(start), None);
        quick.predictions_read(1, 5);
        assert_eq!(quick.next_waited_out(start).unwrap().review_id, "r2");

        // The consumer's position past a transaction marker at the end counts as read to there, and
        // a partition first known by its position is waited for from then on.
        let waits = quick.unread(&HashMap::from([(0, 12)]));
        quick.hold(("r3", 1), (0, 4), waits, start);
        quick.predictions_read(0, 10);
        assert_eq!(quick.next_waited_out(start), None, "read to 11 of 12");
        quick.predictions_position(0, 12);
        quick.predictions_position(0, 11);
        assert_eq!(quick.next_waited_out(start).unwrap().review_id, "r3");
        quick.predictions_position(9, 3);
        assert_eq!(quick.unread(&HashMap::from([(9, 5)])), vec![(9, 5)]);
    }

    #[test]
    fn a_full_hold_lets_the_label_held_longest_go_and_capacity_zero_holds_nothing() {
        let start = Instant::now();
        let second = start + Duration::from_secs(1);
        let mut hold = new_hold(3, 30);
        assert!(hold.hold(("b1", 0), (1, 1), vec![], start).is_none());
        assert!(hold.hold(("a1", 0), (0, 1), vec![], second).is_none());
        assert!(hold.hold(("b2", 0), (1, 2), vec![], second).is_none());
        let pushed = hold.hold(("a2", 0), (0, 2), vec![], second).unwrap();
        assert_eq!((pushed.review_id.as_str(), pushed.partition), ("b1", 1));
        let pushed = hold.hold(("a3", 0), (0, 3), vec![], second).unwrap();
        assert_eq!(pushed.review_id, "a1", "same time: the lower partition");
        assert_eq!(hold.len(), 3);
        assert_eq!(hold.safe_offset(0, 3), Some(1));
        assert!(hold.predicted("b1").is_empty(), "pushed out, forgotten");

        let off = LabelHold::new(0, Duration::from_secs(30), HashMap::new());
        assert!(!off.enabled());
        assert!(!off.should_wait(&[(0, 5)]));
    }
}
