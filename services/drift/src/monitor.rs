//! The in-memory state of the drift monitor, free of I/O so it can be tested alone: windows and the
//! reference per model version, the human-label join, and confirmation with hysteresis.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use sentiflow_common::events::{
    DriftReport, DriftStatus, ModelRef, Prediction, SCHEMA_VERSION, Sentiment, Window, WindowKind,
    new_event_id,
};

use crate::config::{DriftConfig, Threshold};
use crate::sequential::ClassMixScan;
use crate::signals::{self, CLASS_MIX_SCAN_G, FeedbackScores};
use crate::stats;
use crate::warm::WarmPrediction;
use crate::window::{OpenWindow, Sample};

/// Seconds after a version was replaced during which its predictions are stragglers, not a rollback.
pub const ROLLBACK_GRACE_SECS: i64 = 60;

/// When drift is confirmed and when it clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmRule {
    /// Drift windows (no ok window between them) that confirm.
    pub confirm_windows: u32,
    /// Predictions the episode must span (from its first drift window, warn windows included) before
    /// it is confirmed: a scan window can be a few dozen predictions long, and a retrain needs the
    /// shift to have lasted, and its data to have arrived, not just to have been noticed.
    pub min_events: u64,
    /// Consecutive ok windows that clear a confirmed drift.
    pub clear_windows: u32,
}

/// Confirmation state of one model version (persistence on the way in, hysteresis on the way out).
///
/// On the way in, drift windows count until an ok window ends the run; a warn window pauses it
/// (neither counts nor resets). A real shift whose statistics sit near the drift threshold gives
/// windows that alternate drift and warn, and must still confirm; a stationary stream gives ok
/// windows, which reset the count. On the way out, ok windows count and a warn or drift window resets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// Drift windows since the last ok window (warn windows pause the run), including the last one.
    pub consecutive_drift: u32,
    /// Predictions in the windows of the current run, from its first drift window.
    pub run_events: u64,
    /// Consecutive windows with status ok (clears a confirmed drift).
    pub consecutive_ok: u32,
    /// Whether drift is confirmed.
    pub confirmed: bool,
    /// Whether a retrain was already requested in this confirmed episode (collapses duplicates).
    pub requested: bool,
}

impl Confirmation {
    /// Folds in one window of `events` predictions; returns whether drift became confirmed with it.
    pub fn observe(&mut self, status: DriftStatus, events: u64, rule: &ConfirmRule) -> bool {
        match status {
            DriftStatus::Drift => {
                self.consecutive_drift += 1;
                self.run_events += events;
                self.consecutive_ok = 0;
            }
            DriftStatus::Warn => {
                if self.consecutive_drift > 0 {
                    self.run_events += events;
                }
                self.consecutive_ok = 0;
            }
            DriftStatus::Ok => {
                self.consecutive_drift = 0;
                self.run_events = 0;
                self.consecutive_ok += 1;
            }
        }
        if self.confirmed && self.consecutive_ok >= rule.clear_windows {
            self.confirmed = false;
            self.requested = false;
        }
        if !self.confirmed
            && self.consecutive_drift >= rule.confirm_windows
            && self.run_events >= rule.min_events
        {
            self.confirmed = true;
            self.requested = false;
            return true;
        }
        false
    }
}

/// Everything kept for one model version.
#[derive(Debug)]
pub struct VersionState {
    /// The model version.
    pub model: ModelRef,
    /// The window being filled.
    pub open: Option<OpenWindow>,
    /// Reference statistics, once complete.
    pub reference: Option<Sample>,
    /// Reference being built from the first windows, and how many windows it holds.
    pub building: (Sample, u32),
    /// The sequential class-mix scan against the reference (once there is one, when enabled).
    pub scan: Option<ClassMixScan>,
    /// Confirmation state.
    pub confirmation: Confirmation,
    /// The latest human label of each of the last reviews labelled, oldest first.
    pub feedback: VecDeque<FeedbackLabel>,
    /// Macro-F1 of the first full feedback window.
    pub feedback_baseline: Option<f64>,
    /// Per `labels.feedback` partition, the offset up to which every label had been dealt with when
    /// this version last took one (see [`FeedbackState::applied`]).
    pub labels_applied: BTreeMap<i32, i64>,
    /// Per partition, offsets beyond that applied to this version.
    pub labels_beyond: BTreeMap<i32, BTreeSet<i64>>,
}

/// One human label in a version's label window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackLabel {
    /// [`review_key`] of the review; `None` for labels restored from a state written before keys were
    /// kept (they cannot be recognised as labelled again).
    pub review: Option<u64>,
    /// The class the version predicted.
    pub predicted: usize,
    /// The class the reviewer gave.
    pub truth: usize,
}

/// The key a review is known by in a label window: 8 bytes instead of the id, stable across restarts.
/// A collision (2^-64 per pair of reviews) would take one review's label for the other's.
pub fn review_key(review_id: &str) -> u64 {
    sentiflow_common::hash::fnv1a64(review_id.as_bytes())
}

/// The human-label state of one version: kept in Redis so a restart neither loses the labels read
/// before it (their offsets are stored once applied) nor takes a degraded model's score as the new
/// baseline.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeedbackState {
    /// Rolling (predicted, true) class indices, oldest first.
    pub pairs: Vec<(usize, usize)>,
    /// The [`review_key`] of each pair, in the same order (`null` for a label restored from a state
    /// written before keys were kept). Empty in such states: their labels count, but a review among
    /// them labelled again is not recognised.
    #[serde(default)]
    pub reviews: Vec<Option<u64>>,
    /// Macro-F1 of the first full feedback window.
    pub baseline: Option<f64>,
    /// Per `labels.feedback` partition, the offset up to which every label had been dealt with
    /// (applied, given up or dead-lettered) when this version last took one: a label read again
    /// after a crash (its offset was not yet committed) at or below it is recognised and not counted
    /// twice. Empty in states written before it existed.
    #[serde(default)]
    pub applied: BTreeMap<i32, i64>,
    /// Per partition, the offsets beyond `applied` applied to this version (a label whose prediction
    /// was read while an earlier one still waited for its own), as inclusive ranges: labels applied
    /// while one is held are mostly consecutive, so the state stays small.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied_beyond: BTreeMap<i32, Vec<(i64, i64)>>,
}

/// Consecutive offsets as inclusive ranges.
fn to_ranges(offsets: &BTreeSet<i64>) -> Vec<(i64, i64)> {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &offset in offsets {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == offset => *end = offset,
            _ => ranges.push((offset, offset)),
        }
    }
    ranges
}

/// The offsets of inclusive ranges (reversed or overlapping ones are read as written).
fn from_ranges(ranges: &[(i64, i64)]) -> BTreeSet<i64> {
    ranges
        .iter()
        .flat_map(|&(start, end)| start..=end)
        .collect()
}

/// How a human label met the predictions.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelJoin {
    /// Joined to the prediction of this version and added to its label window.
    Joined(ModelRef),
    /// A review already in this version's label window labelled again with a different class: the
    /// new label replaces the earlier one (the latest label of a review wins, as in curation).
    Relabelled(ModelRef),
    /// A review already in this version's label window labelled again with the same class (a labels
    /// file published twice, two reviewers agreeing): not counted twice.
    Duplicate(ModelRef),
    /// Already applied to this version before a restart (read again): not counted twice.
    Replayed(ModelRef),
    /// The review was predicted by this version, which has no state in this process yet (a
    /// prediction read before a restart): track it, then add the label again.
    Untracked(ModelRef),
    /// No remembered prediction of the review.
    Unmatched,
}

/// The (predicted, true) class pairs of a label window, oldest first.
fn feedback_pairs(feedback: &VecDeque<FeedbackLabel>) -> Vec<(usize, usize)> {
    feedback
        .iter()
        .map(|label| (label.predicted, label.truth))
        .collect()
}

/// A window that closed, ready to be reported.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// The report (without `muted`, which the service fills in from Redis).
    pub report: DriftReport,
    /// True when the window went into the reference (its report has no signals).
    pub reference: bool,
    /// The reference is now complete and should be stored.
    pub reference_completed: Option<Sample>,
    /// Drift became confirmed with this window.
    pub newly_confirmed: bool,
}

/// Per-version windows and states for all model versions seen.
#[derive(Debug)]
pub struct Monitor {
    window_events: u64,
    window_secs: u64,
    min_window_events: u64,
    reference_windows: u32,
    reference_max_values: usize,
    confirm: ConfirmRule,
    /// Suffix lengths of the class-mix scan, `None` when it is off.
    scan_events: Option<(usize, usize)>,
    /// Largest reference of the scan, predictions.
    scan_reference_max_events: u64,
    feedback_window: usize,
    join_capacity: usize,
    thresholds: BTreeMap<&'static str, Threshold>,
    /// State per (model name, version).
    versions: HashMap<(String, String), VersionState>,
    /// Versions replaced by a newer one of the same name, with the event time of the replacement:
    /// their stragglers are not windowed; a prediction well after it means a rollback.
    retired: HashMap<(String, String), DateTime<Utc>>,
    /// Latest version seen per model name.
    latest: HashMap<String, String>,
    /// review id → (model, predicted class), bounded FIFO for joining late labels.
    joins: HashMap<String, (ModelRef, usize)>,
    /// Insertion order of `joins`.
    join_order: VecDeque<String>,
    /// topic → partition → the highest offset this process has added and the latest event time
    /// added from there: a prediction at or below that offset and no newer is a re-read (after the
    /// group lost and got back the partition, it resumes from the committed offset, which stays
    /// below the first prediction of every open window) and is not counted twice; a newer one below
    /// it means the topic was recreated, and counts.
    added_through: HashMap<String, HashMap<i32, (i64, DateTime<Utc>)>>,
    /// Versions replaced since [`Monitor::take_retired`] was last called.
    newly_retired: Vec<ModelRef>,
}

/// What happened to one prediction.
#[derive(Debug)]
pub enum Outcome {
    /// Added to its version's window; maybe some windows closed (its own, or a replaced version's).
    Windowed(Vec<ClosedWindow>),
    /// A straggler of a replaced version: counted, not windowed.
    Retired,
    /// Read again (its partition was revoked or lost and assigned back): already in a window.
    Reread,
}

impl Monitor {
    /// A monitor configured by `config`.
    pub fn new(config: &DriftConfig) -> Self {
        Self {
            window_events: config.window_events,
            window_secs: config.window_secs,
            min_window_events: config.min_window_events,
            reference_windows: config.reference_windows,
            reference_max_values: config.reference_max_values,
            confirm: ConfirmRule {
                confirm_windows: config.confirm_windows,
                min_events: config.confirm_min_events,
                clear_windows: config.clear_windows,
            },
            scan_events: config
                .scan
                .then_some((config.scan_min_events, config.scan_max_events)),
            scan_reference_max_events: config.scan_reference_max_events,
            feedback_window: config.feedback_window,
            join_capacity: config.join_capacity,
            thresholds: config.threshold_table(),
            versions: HashMap::new(),
            retired: HashMap::new(),
            latest: HashMap::new(),
            joins: HashMap::new(),
            join_order: VecDeque::new(),
            added_through: HashMap::new(),
            newly_retired: Vec::new(),
        }
    }

    /// Whether the version has no state yet (the service then looks for a stored reference).
    pub fn is_new(&self, prediction: &Prediction) -> bool {
        let model = &prediction.model;
        let key = (model.name.clone(), model.version.clone());
        if self.versions.contains_key(&key) {
            return false;
        }
        // A replaced version seen again after the grace period is a rollback: tracked afresh, with
        // its stored reference and labels, like a version never seen.
        self.retired.get(&key).is_none_or(|retired_at| {
            prediction.event_time >= *retired_at + chrono::Duration::seconds(ROLLBACK_GRACE_SECS)
        })
    }

    /// Starts tracking a version, with a reference loaded from storage if there is one.
    pub fn track(
        &mut self,
        model: &ModelRef,
        reference: Option<Sample>,
        feedback: Option<FeedbackState>,
    ) {
        let key = (model.name.clone(), model.version.clone());
        let scan = reference.as_ref().and_then(|r| self.new_scan(r));
        let feedback = feedback.unwrap_or_default();
        let classes = Sentiment::ALL.len();
        let keys_kept = feedback.reviews.len() == feedback.pairs.len();
        if !keys_kept && !feedback.reviews.is_empty() {
            tracing::warn!(model = %model.name, version = %model.version,
                pairs = feedback.pairs.len(), keys = feedback.reviews.len(),
                "the stored label window's review keys do not match its labels: keys dropped");
        }
        let mut pairs: VecDeque<FeedbackLabel> = feedback
            .pairs
            .iter()
            .enumerate()
            .filter(|&(_, &(predicted, truth))| predicted < classes && truth < classes)
            .map(|(at, &(predicted, truth))| FeedbackLabel {
                review: if keys_kept {
                    feedback.reviews[at]
                } else {
                    None
                },
                predicted,
                truth,
            })
            .collect();
        while pairs.len() > self.feedback_window {
            pairs.pop_front();
        }
        // One label per review: a key stored twice (a corrupt state) keeps only its latest label's.
        let mut seen = std::collections::HashSet::new();
        for label in pairs.iter_mut().rev() {
            if let Some(review) = label.review
                && !seen.insert(review)
            {
                label.review = None;
            }
        }
        let baseline = feedback
            .baseline
            .filter(|baseline| (0.0..=1.0).contains(baseline));
        self.versions.entry(key).or_insert_with(|| VersionState {
            model: model.clone(),
            open: None,
            reference,
            building: (Sample::default(), 0),
            scan,
            confirmation: Confirmation::default(),
            feedback: pairs,
            feedback_baseline: baseline,
            labels_applied: feedback.applied,
            labels_beyond: feedback
                .applied_beyond
                .iter()
                .map(|(&partition, ranges)| (partition, from_ranges(ranges)))
                .collect(),
        });
    }

    /// The human-label state of `model`, if tracked.
    pub fn feedback_state(&self, model: &ModelRef) -> Option<FeedbackState> {
        let state = self
            .versions
            .get(&(model.name.clone(), model.version.clone()))?;
        Some(FeedbackState {
            pairs: state
                .feedback
                .iter()
                .map(|label| (label.predicted, label.truth))
                .collect(),
            reviews: state.feedback.iter().map(|label| label.review).collect(),
            baseline: state.feedback_baseline,
            applied: state.labels_applied.clone(),
            applied_beyond: state
                .labels_beyond
                .iter()
                .map(|(&partition, offsets)| (partition, to_ranges(offsets)))
                .collect(),
        })
    }

    fn new_scan(&self, reference: &Sample) -> Option<ClassMixScan> {
        let (min, max) = self.scan_events?;
        Some(ClassMixScan::new(reference.class_counts, min, max, 1.5))
    }

    /// Adds a prediction read at `(topic, partition, offset)`.
    pub fn add(
        &mut self,
        prediction: &Prediction,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Outcome {
        if !self.first_read(topic, partition, offset, prediction.event_time) {
            return Outcome::Reread;
        }
        let model = &prediction.model;
        let key = (model.name.clone(), model.version.clone());
        if let Some(retired_at) = self.retired.get(&key) {
            // In-flight batches of the old model trickle in for a moment after a swap; a prediction
            // of a replaced version long after it is a rollback, and the version is tracked again.
            if prediction.event_time < *retired_at + chrono::Duration::seconds(ROLLBACK_GRACE_SECS)
            {
                return Outcome::Retired;
            }
            self.retired.remove(&key);
        }
        self.track(model, None, None);
        let mut closed = Vec::new();
        // A new version of the same name replaces the previous one: close what it had open.
        if let Some(previous) = self
            .latest
            .insert(model.name.clone(), model.version.clone())
            && previous != model.version
        {
            let old = (model.name.clone(), previous);
            if let Some(mut state) = self.versions.remove(&old) {
                if let Some(open) = state.open.take()
                    && open.sample.events() >= self.min_window_events
                {
                    closed.push(self.close(&mut state, open, WindowKind::Count));
                }
                self.newly_retired.push(state.model.clone());
            }
            // Also joins remembered at start-up for a version this process never tracked.
            self.forget_joins_of(&old);
            self.retired.insert(old, prediction.event_time);
        }
        self.remember_join(&prediction.review_id, model, prediction.label.index());
        let (window_events, window_secs, min_events) =
            (self.window_events, self.window_secs, self.min_window_events);
        let mut state = self.versions.remove(&key).expect("tracked above");
        let open = state
            .open
            .get_or_insert_with(|| OpenWindow::new(prediction.event_time));
        open.add(prediction, topic, partition, offset);
        let alarm_at = self.thresholds[CLASS_MIX_SCAN_G].drift;
        let alarm = state
            .scan
            .as_mut()
            .and_then(|scan| scan.observe(prediction.label.index()))
            .is_some_and(|point| point.statistic >= alarm_at);
        let bound = if alarm {
            Some(WindowKind::Scan)
        } else {
            open.closes(window_events, window_secs, min_events)
        };
        if let Some(kind) = bound {
            let open = state.open.take().expect("open window");
            closed.push(self.close(&mut state, open, kind));
            if alarm && let Some(scan) = state.scan.as_mut() {
                // The next alarm must rest on predictions of its own.
                scan.restart();
            }
        }
        self.versions.insert(key, state);
        Outcome::Windowed(closed)
    }

    /// Closes time windows that a quiet stream would otherwise keep open: those with at least
    /// `--min-window-events` predictions whose start is `--window-secs` before `now`.
    pub fn close_idle(&mut self, now: DateTime<Utc>) -> Vec<ClosedWindow> {
        if self.window_secs == 0 {
            return Vec::new();
        }
        let span = chrono::Duration::seconds(self.window_secs as i64);
        let due: Vec<(String, String)> = self
            .versions
            .iter()
            .filter(|(_, state)| {
                state.open.as_ref().is_some_and(|open| {
                    open.sample.events() >= self.min_window_events && now - open.start >= span
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut closed = Vec::new();
        for key in due {
            let mut state = self.versions.remove(&key).expect("listed above");
            let open = state.open.take().expect("filtered on an open window");
            closed.push(self.close(&mut state, open, WindowKind::Time));
            self.versions.insert(key, state);
        }
        closed
    }

    fn close(&self, state: &mut VersionState, open: OpenWindow, kind: WindowKind) -> ClosedWindow {
        let window = Window {
            kind,
            start: open.start,
            // The end is exclusive: one millisecond after the last event.
            end: open.last + chrono::Duration::milliseconds(1),
            events: open.sample.events(),
        };
        let mut report = DriftReport {
            schema_version: SCHEMA_VERSION,
            event_id: new_event_id(),
            event_time: Utc::now(),
            report_id: new_event_id(),
            model: state.model.clone(),
            window,
            signals: Vec::new(),
            status: DriftStatus::Ok,
            confirmed: state.confirmation.confirmed,
            consecutive_drift_windows: state.confirmation.consecutive_drift,
            muted: false,
        };
        let Some(reference) = &state.reference else {
            state
                .building
                .0
                .absorb(&open.sample, self.reference_max_values);
            state.building.1 += 1;
            let mut completed = None;
            if state.building.1 >= self.reference_windows {
                let reference = std::mem::take(&mut state.building.0);
                completed = Some(reference.clone());
                state.scan = self.new_scan(&reference);
                state.reference = Some(reference);
            }
            return ClosedWindow {
                report,
                reference: true,
                reference_completed: completed,
                newly_confirmed: false,
            };
        };
        let feedback = self.feedback_scores(state);
        let scan = state.scan.as_mut().and_then(ClassMixScan::take_window_max);
        report.signals = signals::compute(
            reference,
            &open.sample,
            scan.as_ref(),
            feedback.as_ref(),
            &self.thresholds,
        );
        report.status = signals::overall(&report.signals);
        let newly_confirmed =
            state
                .confirmation
                .observe(report.status, report.window.events, &self.confirm);
        report.confirmed = state.confirmation.confirmed;
        report.consecutive_drift_windows = state.confirmation.consecutive_drift;
        if report.status == DriftStatus::Ok
            && let Some(scan) = state.scan.as_mut()
        {
            scan.extend_reference(open.sample.class_counts, self.scan_reference_max_events);
        }
        ClosedWindow {
            report,
            reference: false,
            reference_completed: None,
            newly_confirmed,
        }
    }

    fn feedback_scores(&self, state: &VersionState) -> Option<FeedbackScores> {
        let baseline = state.feedback_baseline?;
        if state.feedback.len() < self.feedback_window {
            return None;
        }
        let pairs = feedback_pairs(&state.feedback);
        let (macro_f1, recall) = stats::classification_scores(&pairs, 3);
        Some(FeedbackScores {
            baseline_macro_f1: baseline,
            macro_f1,
            recall,
            labels: pairs.len(),
        })
    }

    /// The versions replaced by a newer one since the last call (the service resets their gauges).
    pub fn take_retired(&mut self) -> Vec<ModelRef> {
        std::mem::take(&mut self.newly_retired)
    }

    /// Whether the prediction at `(topic, partition, offset)`, made at `event_time`, was not added
    /// yet (and records it).
    fn first_read(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        event_time: DateTime<Utc>,
    ) -> bool {
        let partitions = match self.added_through.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.added_through.entry(topic.to_owned()).or_default(),
        };
        match partitions.get_mut(&partition) {
            Some((through, latest)) if offset <= *through && event_time <= *latest => false,
            Some((through, latest)) if offset > *through => {
                *through = offset;
                *latest = (*latest).max(event_time);
                true
            }
            // Below the mark but newer than anything added from there: the topic was recreated
            // (offsets start again); the mark starts again with it. (Until the first such newer
            // prediction, a recreated topic's predictions no newer than the old mark's — an infer
            // host whose clock lags — are taken for re-reads.)
            Some(mark) => {
                *mark = (offset, event_time);
                true
            }
            None => {
                partitions.insert(partition, (offset, event_time));
                true
            }
        }
    }

    fn remember_join(&mut self, review_id: &str, model: &ModelRef, class: usize) {
        if self.join_capacity == 0 {
            return;
        }
        if self
            .joins
            .insert(review_id.to_owned(), (model.clone(), class))
            .is_none()
        {
            self.join_order.push_back(review_id.to_owned());
        }
        while self.join_order.len() > self.join_capacity {
            if let Some(oldest) = self.join_order.pop_front() {
                self.joins.remove(&oldest);
            }
        }
    }

    fn forget_joins_of(&mut self, key: &(String, String)) {
        self.joins
            .retain(|_, (model, _)| (&model.name, &model.version) != (&key.0, &key.1));
        let joins = &self.joins;
        self.join_order.retain(|id| joins.contains_key(id));
    }

    /// Remembers, for joining human labels only, the predictions read again at start-up from just
    /// before where this process resumes (they are not windowed: their windows were reported). Only
    /// the newest version of each name (by event time) is kept, as the process before the restart
    /// had forgotten the versions it replaced; it becomes the version a different one replaces, and
    /// the older versions seen count as replaced by it at its first prediction (so a straggler of
    /// one in the replay is not taken for a new version). Returns how many predictions were
    /// remembered.
    pub fn warm_joins(&mut self, predictions: &[WarmPrediction]) -> usize {
        // Per name: the newest version, its last and first event time.
        let mut newest: HashMap<&str, (&ModelRef, DateTime<Utc>)> = HashMap::new();
        for prediction in predictions {
            let entry = newest
                .entry(prediction.model.name.as_str())
                .or_insert((&prediction.model, prediction.event_time));
            if prediction.event_time > entry.1 {
                *entry = (&prediction.model, prediction.event_time);
            }
        }
        let newest: HashMap<String, ModelRef> = newest
            .into_iter()
            .map(|(name, (model, _))| (name.to_owned(), model.clone()))
            .collect();
        let is_newest = |model: &ModelRef| {
            newest
                .get(&model.name)
                .is_some_and(|newest| newest.version == model.version)
        };
        let mut replaced_at: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut remembered = 0;
        for prediction in predictions {
            let model = &prediction.model;
            if is_newest(model) {
                self.remember_join(&prediction.review_id, model, prediction.class);
                remembered += 1;
                let first = replaced_at
                    .entry(model.name.clone())
                    .or_insert(prediction.event_time);
                *first = (*first).min(prediction.event_time);
            }
        }
        for prediction in predictions {
            let model = &prediction.model;
            if !is_newest(model)
                && let Some(at) = replaced_at.get(&model.name)
            {
                self.retired
                    .entry((model.name.clone(), model.version.clone()))
                    .or_insert(*at);
            }
        }
        for (name, model) in newest {
            self.latest.entry(name).or_insert(model.version);
        }
        remembered
    }

    /// Whether a prediction of `review_id` is remembered for the label join.
    pub fn knows_review(&self, review_id: &str) -> bool {
        self.joins.contains_key(review_id)
    }

    /// Joins a human label, read at `partition`/`offset` of `labels.feedback`, to the prediction of
    /// `review_id`; `resolved_through` is the offset of that partition up to which every label is
    /// dealt with once this one is (-1: none).
    pub fn add_label(
        &mut self,
        review_id: &str,
        truth: usize,
        (partition, offset): (i32, i64),
        resolved_through: i64,
    ) -> LabelJoin {
        let Some((model, predicted)) = self.joins.get(review_id).cloned() else {
            return LabelJoin::Unmatched;
        };
        let Some(state) = self
            .versions
            .get_mut(&(model.name.clone(), model.version.clone()))
        else {
            return LabelJoin::Untracked(model);
        };
        let through = state.labels_applied.get(&partition).copied().unwrap_or(-1);
        if offset <= through
            || state
                .labels_beyond
                .get(&partition)
                .is_some_and(|beyond| beyond.contains(&offset))
        {
            return LabelJoin::Replayed(model);
        }
        let through = through.max(resolved_through);
        if through >= 0 {
            state.labels_applied.insert(partition, through);
        }
        let beyond = state.labels_beyond.entry(partition).or_default();
        if offset > through {
            beyond.insert(offset);
        }
        beyond.retain(|&applied| applied > through);
        if beyond.is_empty() {
            state.labels_beyond.remove(&partition);
        }
        let review = review_key(review_id);
        let earlier = state
            .feedback
            .iter()
            .position(|label| label.review == Some(review));
        if let Some(at) = earlier
            && state.feedback[at].truth == truth
        {
            return LabelJoin::Duplicate(model);
        }
        if let Some(at) = earlier {
            // The window holds the latest label of each review: the earlier one goes, the new one
            // joins at the end like any label.
            state.feedback.remove(at);
        }
        state.feedback.push_back(FeedbackLabel {
            review: Some(review),
            predicted,
            truth,
        });
        while state.feedback.len() > self.feedback_window {
            state.feedback.pop_front();
        }
        if state.feedback_baseline.is_none() && state.feedback.len() >= self.feedback_window {
            let pairs = feedback_pairs(&state.feedback);
            state.feedback_baseline = Some(stats::classification_scores(&pairs, 3).0);
        }
        if earlier.is_some() {
            LabelJoin::Relabelled(model)
        } else {
            LabelJoin::Joined(model)
        }
    }

    /// Whether `model` was replaced by a newer version of its name (its labels no longer count).
    pub fn is_retired(&self, model: &ModelRef) -> bool {
        self.retired
            .contains_key(&(model.name.clone(), model.version.clone()))
    }

    /// Marks that a retrain was requested (or found already requested) for `model`'s episode.
    pub fn mark_requested(&mut self, model: &ModelRef) {
        if let Some(state) = self
            .versions
            .get_mut(&(model.name.clone(), model.version.clone()))
        {
            state.confirmation.requested = true;
        }
    }

    /// The confirmation state of `model`, if tracked.
    pub fn confirmation(&self, model: &ModelRef) -> Option<&Confirmation> {
        self.versions
            .get(&(model.name.clone(), model.version.clone()))
            .map(|state| &state.confirmation)
    }

    /// The offset that is safe to store for `(topic, partition)` after processing `offset` there:
    /// everything below the first offset of any open window is reported.
    pub fn safe_offset(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let key = (topic.to_owned(), partition);
        let first_open = self
            .versions
            .values()
            .filter_map(|state| state.open.as_ref()?.first_offsets.get(&key).copied())
            .min();
        match first_open {
            Some(first) if first > 0 => Some(first - 1),
            Some(_) => None,
            None => Some(offset),
        }
    }

    /// Open windows' event counts per version (for `/api/reports`).
    pub fn open_windows(&self) -> Vec<(ModelRef, u64, bool)> {
        self.versions
            .values()
            .map(|state| {
                (
                    state.model.clone(),
                    state.open.as_ref().map_or(0, |open| open.sample.events()),
                    state.reference.is_some(),
                )
            })
            .collect()
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &BTreeMap<&'static str, Threshold> {
        &self.thresholds
    }

    /// Event time of the last prediction of every open window (time windows close on it).
    pub fn last_event_time(&self) -> Option<DateTime<Utc>> {
        self.versions
            .values()
            .filter_map(|state| state.open.as_ref().map(|open| open.last))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentiflow_common::config::{KafkaArgs, RedisArgs};
    use sentiflow_common::events::{Device, ModelFamily, Probabilities};

    fn config(window: u64) -> DriftConfig {
        let mut config = DriftConfig::local(
            KafkaArgs::local("b:9092", ""),
            RedisArgs::local("redis://127.0.0.1:1/", "t"),
        );
        config.window_events = window;
        config.reference_windows = 1;
        config.feedback_window = 10;
        config
    }

    fn prediction(i: usize, version: &str, label: Sentiment, secs: i64) -> Prediction {
        let time = DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        let mut p = [0.1, 0.1, 0.1];
        p[label.index()] = 0.8;
        Prediction {
            schema_version: SCHEMA_VERSION,
            event_id: format!("e{i}"),
            event_time: time,
            source_event_id: format!("s{i}"),
            review_id: format!("r{i}"),
            label,
            probabilities: Probabilities::from_array(p),
            confidence: 0.8,
            model: ModelRef {
                name: "m".to_owned(),
                version: version.to_owned(),
                family: ModelFamily::Hashed,
            },
            device: Device::Cpu,
            inference_latency_ms: 1.0,
            created_at: time,
            text_length: 40 + (i % 7) as u64,
            oov_rate: None,
            lang: None,
        }
    }

    fn closed(outcome: Outcome) -> Vec<ClosedWindow> {
        match outcome {
            Outcome::Windowed(closed) => closed,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn first_window_becomes_the_reference_then_windows_are_scored() {
        let mut monitor = Monitor::new(&config(20));
        let mut reports = Vec::new();
        for i in 0..60 {
            let label = Sentiment::ALL[i % 3];
            reports.extend(closed(monitor.add(
                &prediction(i, "v1", label, i as i64),
                "p",
                0,
                i as i64,
            )));
        }
        assert_eq!(reports.len(), 3);
        assert!(reports[0].reference && reports[0].report.signals.is_empty());
        assert!(reports[0].reference_completed.is_some());
        assert!(!reports[1].reference);
        assert_eq!(reports[1].report.status, DriftStatus::Ok);
        assert_eq!(reports[1].report.window.events, 20);
        assert_eq!(reports[1].report.window.kind, WindowKind::Count);
        // Offsets: everything was reported, the next window is empty.
        assert_eq!(monitor.safe_offset("p", 0, 59), Some(59));
        monitor.add(&prediction(60, "v1", Sentiment::Negative, 60), "p", 0, 60);
        assert_eq!(
            monitor.safe_offset("p", 0, 60),
            Some(59),
            "offset 60 is in an open window"
        );
        assert_eq!(
            monitor.safe_offset("p", 1, 5),
            Some(5),
            "no open window on partition 1"
        );
    }

    #[test]
    fn time_windows_close_on_event_time_span() {
        let mut config = config(1000);
        config.window_secs = 10;
        config.min_window_events = 5;
        let mut monitor = Monitor::new(&config);
        let mut reports = Vec::new();
        for i in 0..11 {
            reports.extend(closed(monitor.add(
                &prediction(i, "v1", Sentiment::Positive, i as i64 * 2),
                "p",
                0,
                i as i64,
            )));
        }
        // Events at 0, 2, .., 20 s: the first window closes when its span reaches 10 s (6 events); the
        // second (12..20 s) is still open.
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].report.window.kind, WindowKind::Time);
        assert_eq!(reports[0].report.window.events, 6);
    }

    #[test]
    fn a_quiet_stream_still_closes_its_time_window() {
        let mut config = config(1000);
        config.window_secs = 10;
        config.min_window_events = 3;
        let mut monitor = Monitor::new(&config);
        for i in 0..3 {
            let out = monitor.add(
                &prediction(i, "v1", Sentiment::Neutral, 0),
                "p",
                0,
                i as i64,
            );
            assert!(closed(out).is_empty());
        }
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        assert!(
            monitor
                .close_idle(start + chrono::Duration::seconds(9))
                .is_empty()
        );
        let out = monitor.close_idle(start + chrono::Duration::seconds(10));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].report.window.kind, WindowKind::Time);
        assert_eq!(out[0].report.window.events, 3);
        assert_eq!(monitor.safe_offset("p", 0, 2), Some(2));
        assert!(
            monitor
                .close_idle(start + chrono::Duration::seconds(60))
                .is_empty()
        );
    }

    #[test]
    fn a_new_version_retires_the_old_one_and_a_late_return_is_a_rollback() {
        let mut monitor = Monitor::new(&config(20));
        for i in 0..25 {
            monitor.add(
                &prediction(i, "v1", Sentiment::Negative, 0),
                "p",
                0,
                i as i64,
            );
        }
        assert!(monitor.take_retired().is_empty());
        // v2 arrives: v1's open window (5 events, below the minimum) is dropped and v1 retired.
        let out = closed(monitor.add(&prediction(25, "v2", Sentiment::Negative, 1), "p", 0, 25));
        assert!(out.is_empty());
        let retired: Vec<String> = monitor
            .take_retired()
            .into_iter()
            .map(|model| model.version)
            .collect();
        assert_eq!(retired, ["v1"], "reported once");
        assert!(monitor.take_retired().is_empty());
        assert!(matches!(
            monitor.add(&prediction(26, "v1", Sentiment::Negative, 2), "p", 0, 26),
            Outcome::Retired
        ));
        assert_eq!(
            monitor.safe_offset("p", 0, 26),
            Some(24),
            "v2's window starts at 25"
        );
        let late = ROLLBACK_GRACE_SECS + 5;
        assert!(matches!(
            monitor.add(&prediction(27, "v1", Sentiment::Negative, late), "p", 0, 27),
            Outcome::Windowed(_)
        ));
        assert!(!monitor.is_new(&prediction(0, "v1", Sentiment::Negative, 0)));
    }

    #[test]
    fn human_labels_join_predictions_and_a_drop_in_macro_f1_is_a_signal() {
        let mut monitor = Monitor::new(&config(20));
        let mut reports = Vec::new();
        let add = |monitor: &mut Monitor, i: usize| {
            let label = Sentiment::ALL[i % 3];
            closed(monitor.add(&prediction(i, "v1", label, i as i64), "p", 0, i as i64))
        };
        for i in 0..40 {
            reports.extend(add(&mut monitor, i));
        }
        assert_eq!(
            monitor.add_label("unknown-review", 0, (0, 0), 0),
            LabelJoin::Unmatched
        );
        // 10 correct labels: the baseline (macro-F1 1.0).
        for i in 20..30 {
            let joined = monitor.add_label(&format!("r{i}"), i % 3, (0, i as i64), i as i64);
            assert!(matches!(joined, LabelJoin::Joined(_)));
        }
        // 10 labels that disagree with every prediction.
        for i in 30..40 {
            let joined = monitor.add_label(&format!("r{i}"), (i + 1) % 3, (0, i as i64), i as i64);
            assert!(matches!(joined, LabelJoin::Joined(_)));
        }
        for i in 40..60 {
            reports.extend(add(&mut monitor, i));
        }
        let last = &reports.last().unwrap().report;
        let f1 = last
            .signals
            .iter()
            .find(|s| s.name == "feedback_macro_f1_drop")
            .unwrap();
        assert!((f1.statistic - 1.0).abs() < 1e-12, "{f1:?}");
        assert_eq!(f1.status, DriftStatus::Drift);
        assert_eq!(last.status, DriftStatus::Drift);
    }

    #[test]
    fn a_restored_feedback_state_keeps_the_baseline_and_drops_impossible_pairs() {
        let mut before = Monitor::new(&config(20));
        let model = prediction(0, "v1", Sentiment::Negative, 0).model;
        before.track(&model, None, None);
        for i in 0..20 {
            closed(before.add(
                &prediction(i, "v1", Sentiment::ALL[i % 3], i as i64),
                "p",
                0,
                i as i64,
            ));
        }
        for i in 0..10 {
            let joined = before.add_label(&format!("r{i}"), i % 3, (0, i as i64), i as i64);
            assert!(matches!(joined, LabelJoin::Joined(_)));
        }
        let saved = before.feedback_state(&model).expect("tracked");
        assert_eq!(saved.pairs.len(), 10);
        assert_eq!(saved.baseline, Some(1.0));
        assert_eq!(saved.applied, BTreeMap::from([(0, 9)]));

        let mut after = Monitor::new(&config(20));
        let mut stored = saved.clone();
        stored.pairs.push((7, 0));
        stored.reviews.push(Some(review_key("r7")));
        after.track(&model, None, Some(stored));
        assert_eq!(
            after.feedback_state(&model),
            Some(saved),
            "restored as saved"
        );

        let mut fresh = Monitor::new(&config(20));
        fresh.track(
            &model,
            None,
            Some(FeedbackState {
                pairs: (0..25).map(|i| (i % 3, i % 3)).collect(),
                baseline: Some(1.5),
                ..FeedbackState::default()
            }),
        );
        let state = fresh.feedback_state(&model).expect("tracked");
        assert_eq!(state.pairs.len(), 10, "at most the feedback window");
        assert_eq!(
            state.baseline, None,
            "an impossible baseline is not trusted"
        );
    }

    #[test]
    fn the_scan_closes_a_window_early_on_an_abrupt_shift_and_restarts() {
        let mut config = config(300);
        config.confirm_windows = 2;
        config.confirm_min_events = 50;
        let mut monitor = Monitor::new(&config);
        let mut reports = Vec::new();
        let mut i = 0;
        let mut feed =
            |monitor: &mut Monitor, label: Sentiment, reports: &mut Vec<ClosedWindow>| {
                reports.extend(closed(monitor.add(
                    &prediction(i, "v1", label, i as i64),
                    "p",
                    0,
                    i as i64,
                )));
                i += 1;
            };
        // Reference and one more window: an even mix.
        for k in 0..600 {
            feed(&mut monitor, Sentiment::ALL[k % 3], &mut reports);
        }
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].report.status, DriftStatus::Ok);
        let quiet = reports[1]
            .report
            .signals
            .iter()
            .find(|s| s.name == CLASS_MIX_SCAN_G)
            .expect("the scan reports on every scored window");
        assert!(quiet.statistic < 5.0, "{quiet:?}");
        // Then only negatives: the scan fires within 30 predictions, and again after 30 new ones,
        // long before a 300-prediction window fills.
        for _ in 0..60 {
            feed(&mut monitor, Sentiment::Negative, &mut reports);
        }
        let alarms: Vec<&ClosedWindow> = reports[2..].iter().collect();
        assert_eq!(alarms.len(), 2, "two scan windows on separate evidence");
        for alarm in &alarms {
            assert_eq!(alarm.report.window.kind, WindowKind::Scan);
            assert_eq!(alarm.report.status, DriftStatus::Drift);
        }
        // The first alarm's longer suffixes reach back over the previous window's even mix; after
        // the restart the second alarm needs a full shortest suffix of new predictions.
        assert!(
            alarms[0].report.window.events < 30,
            "{:?}",
            alarms[0].report.window
        );
        assert_eq!(alarms[1].report.window.events, 30);
        assert!(!alarms[0].newly_confirmed && alarms[1].newly_confirmed);
        // Off: the same stream waits for the count bound.
        config.scan = false;
        let mut monitor = Monitor::new(&config);
        let mut reports = Vec::new();
        for k in 0..800 {
            let label = if k < 600 {
                Sentiment::ALL[k % 3]
            } else {
                Sentiment::Negative
            };
            reports.extend(closed(monitor.add(
                &prediction(k, "v1", label, k as i64),
                "p",
                0,
                k as i64,
            )));
        }
        assert_eq!(reports.len(), 2, "no early close without the scan");
        assert!(
            reports[1]
                .report
                .signals
                .iter()
                .all(|s| s.name != CLASS_MIX_SCAN_G)
        );
    }

    #[test]
    fn confirmation_also_needs_the_episode_to_span_enough_predictions() {
        let rule = ConfirmRule {
            confirm_windows: 2,
            min_events: 100,
            clear_windows: 2,
        };
        let mut c = Confirmation::default();
        assert!(!c.observe(DriftStatus::Drift, 30, &rule));
        assert!(
            !c.observe(DriftStatus::Drift, 30, &rule),
            "2 windows, 60 predictions"
        );
        assert!(
            !c.observe(DriftStatus::Warn, 20, &rule),
            "a warn window adds its span"
        );
        assert_eq!(c.run_events, 80);
        assert!(c.observe(DriftStatus::Drift, 25, &rule), "105 predictions");
        let mut c = Confirmation::default();
        c.observe(DriftStatus::Warn, 500, &rule);
        assert_eq!(c.run_events, 0, "a run starts at its first drift window");
        c.observe(DriftStatus::Drift, 60, &rule);
        c.observe(DriftStatus::Ok, 500, &rule);
        assert_eq!(c.run_events, 0, "an ok window ends the run");
    }

    #[test]
    fn confirmation_needs_k_windows_and_clears_with_hysteresis() {
        let rule = ConfirmRule {
            confirm_windows: 3,
            min_events: 0,
            clear_windows: 2,
        };
        let mut c = Confirmation::default();
        assert!(!c.observe(DriftStatus::Drift, 500, &rule));
        assert!(!c.observe(DriftStatus::Drift, 500, &rule));
        assert!(
            !c.observe(DriftStatus::Ok, 500, &rule),
            "an ok window ends the run"
        );
        assert_eq!(c.consecutive_drift, 0);
        assert!(!c.observe(DriftStatus::Drift, 500, &rule));
        assert!(
            !c.observe(DriftStatus::Warn, 500, &rule),
            "a warn window pauses the run"
        );
        assert_eq!(c.consecutive_drift, 1);
        assert!(!c.observe(DriftStatus::Drift, 500, &rule));
        assert!(!c.observe(DriftStatus::Warn, 500, &rule));
        assert!(
            c.observe(DriftStatus::Drift, 500, &rule),
            "three drift windows, no ok between"
        );
        assert!(c.confirmed);
        assert_eq!(c.consecutive_drift, 3);
        c.requested = true;
        assert!(
            !c.observe(DriftStatus::Drift, 500, &rule),
            "already confirmed"
        );
        c.observe(DriftStatus::Ok, 500, &rule);
        c.observe(DriftStatus::Warn, 500, &rule);
        c.observe(DriftStatus::Ok, 500, &rule);
        assert!(c.confirmed, "one ok window (then a warn) does not clear it");
        c.observe(DriftStatus::Ok, 500, &rule);
        assert!(!c.confirmed);
        assert!(!c.requested);
    }

    #[test]
    fn labels_applied_while_an_earlier_one_waited_are_recognised_when_read_again() {
        let mut before = Monitor::new(&config(100));
        let mut read: Vec<Prediction> = Vec::new();
        for i in 0..10 {
            let prediction = prediction(i, "v1", Sentiment::ALL[i % 3], i as i64);
            closed(before.add(&prediction, "p", 0, i as i64));
            read.push(prediction);
        }
        let v1 = read[0].model.clone();
        for offset in 0..5 {
            let review = format!("r{offset}");
            assert_eq!(
                before.add_label(&review, 0, (0, offset), offset),
                LabelJoin::Joined(v1.clone())
            );
        }
        // Offset 5 waits for its prediction; 6 and 7 join meanwhile (every label through 4 is dealt
        // with), then a crash before 5 is applied.
        assert_eq!(
            before.add_label("r6", 1, (0, 6), 4),
            LabelJoin::Joined(v1.clone())
        );
        assert_eq!(
            before.add_label("r7", 1, (0, 7), 4),
            LabelJoin::Joined(v1.clone())
        );
        let saved = before.feedback_state(&v1).unwrap();
        assert_eq!(saved.applied, BTreeMap::from([(0, 4)]));
        assert_eq!(saved.applied_beyond, BTreeMap::from([(0, vec![(6, 7)])]));
        assert_eq!(
            to_ranges(&BTreeSet::from([3, 4, 5, 9, 11, 12])),
            vec![(3, 5), (9, 9), (11, 12)]
        );
        assert_eq!(from_ranges(&[(3, 5), (9, 9)]), BTreeSet::from([3, 4, 5, 9]));
        let json = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<FeedbackState>(&json).unwrap(), saved);

        // The restart reads from offset 5 again: 5 joins, 6 and 7 are replays, 8 is new.
        let mut after = Monitor::new(&config(100));
        after.warm_joins(
            &read
                .iter()
                .cloned()
                .map(Into::into)
                .collect::<Vec<WarmPrediction>>(),
        );
        after.track(&v1, None, Some(saved));
        assert_eq!(
            after.add_label("r6", 1, (0, 6), 4),
            LabelJoin::Replayed(v1.clone())
        );
        assert_eq!(
            after.add_label("r5", 2, (0, 5), 7),
            LabelJoin::Joined(v1.clone())
        );
        assert_eq!(
            after.add_label("r7", 1, (0, 7), 7),
            LabelJoin::Replayed(v1.clone())
        );
        assert_eq!(
            after.add_label("r8", 2, (0, 8), 8),
            LabelJoin::Joined(v1.clone())
        );
        let state = after.feedback_state(&v1).unwrap();
        assert_eq!(state.applied, BTreeMap::from([(0, 8)]));
        assert!(
            state.applied_beyond.is_empty(),
            "nothing beyond once all are dealt with"
        );
        assert_eq!(state.pairs.len(), 9, "0..=8, each once");
        // States written before `applied_beyond` existed still load.
        let old: FeedbackState =
            serde_json::from_str(r#"{"pairs":[[0,0]],"baseline":null,"applied":{"0":3}}"#).unwrap();
        assert!(old.applied_beyond.is_empty());
    }

    #[test]
    fn a_review_labelled_again_counts_once_and_its_latest_label_wins() {
        let mut before = Monitor::new(&config(20));
        for i in 0..20 {
            closed(before.add(
                &prediction(i, "v1", Sentiment::ALL[i % 3], i as i64),
                "p",
                0,
                i as i64,
            ));
        }
        let v1 = prediction(0, "v1", Sentiment::Negative, 0).model;
        // 10 correct labels fill the window: baseline 1.0.
        for i in 0..10_i64 {
            assert_eq!(
                before.add_label(&format!("r{i}"), i as usize % 3, (0, i), i),
                LabelJoin::Joined(v1.clone())
            );
        }
        // The same labels published again (a file sent twice): none counts, but each is dealt with.
        for i in 0..10_i64 {
            assert_eq!(
                before.add_label(&format!("r{i}"), i as usize % 3, (0, 10 + i), 10 + i),
                LabelJoin::Duplicate(v1.clone())
            );
        }
        let state = before.feedback_state(&v1).unwrap();
        assert_eq!(
            state.pairs,
            (0..10).map(|i| (i % 3, i % 3)).collect::<Vec<_>>()
        );
        assert_eq!(state.applied, BTreeMap::from([(0, 19)]));
        // A reviewer corrects r4: the earlier label goes, the new one is the newest in the window.
        assert_eq!(
            before.add_label("r4", 2, (0, 20), 20),
            LabelJoin::Relabelled(v1.clone())
        );
        let saved = before.feedback_state(&v1).unwrap();
        assert_eq!(saved.pairs.len(), 10, "still one label per review");
        assert_eq!(
            saved.pairs.last(),
            Some(&(1, 2)),
            "r4: predicted 1, now labelled 2"
        );
        assert_eq!(saved.reviews.last(), Some(&Some(review_key("r4"))));
        assert_eq!(saved.reviews.len(), 10);
        assert_eq!(
            saved.baseline,
            Some(1.0),
            "the baseline stays the first full window's"
        );
        let json = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<FeedbackState>(&json).unwrap(), saved);

        // After a restart the keys come back: r4's new label again is a duplicate, its old one a
        // correction back; a replayed offset stays a replay.
        let mut after = Monitor::new(&config(20));
        after.warm_joins(
            &(0..20)
                .map(|i| prediction(i, "v1", Sentiment::ALL[i % 3], i as i64).into())
                .collect::<Vec<WarmPrediction>>(),
        );
        after.track(&v1, None, Some(saved.clone()));
        assert_eq!(after.feedback_state(&v1), Some(saved));
        assert_eq!(
            after.add_label("r4", 2, (0, 20), 20),
            LabelJoin::Replayed(v1.clone())
        );
        assert_eq!(
            after.add_label("r4", 2, (0, 21), 21),
            LabelJoin::Duplicate(v1.clone())
        );
        assert_eq!(
            after.add_label("r4", 1, (0, 22), 22),
            LabelJoin::Relabelled(v1.clone())
        );
        let state = after.feedback_state(&v1).unwrap();
        assert!(
            state
                .pairs
                .iter()
                .all(|&(predicted, truth)| predicted == truth)
        );

        // A state written before keys were kept: its labels count and are never matched.
        let old: FeedbackState =
            serde_json::from_str(r#"{"pairs":[[0,0],[1,1]],"baseline":null,"applied":{"0":1}}"#)
                .unwrap();
        assert!(old.reviews.is_empty());
        let mut upgraded = Monitor::new(&config(20));
        upgraded.warm_joins(&[prediction(0, "v1", Sentiment::Negative, 0).into()]);
        upgraded.track(&v1, None, Some(old));
        assert_eq!(
            upgraded.add_label("r0", 0, (0, 2), 2),
            LabelJoin::Joined(v1.clone())
        );
        let state = upgraded.feedback_state(&v1).unwrap();
        assert_eq!(state.pairs, vec![(0, 0), (1, 1), (0, 0)]);
        assert_eq!(state.reviews, vec![None, None, Some(review_key("r0"))]);

        // An impossible pair inside the window goes with its key, the keys after it stay on their
        // labels; a key stored twice keeps only its latest label's.
        let stored = FeedbackState {
            pairs: vec![(0, 0), (9, 1), (1, 2), (2, 2)],
            reviews: vec![
                Some(review_key("a")),
                Some(review_key("b")),
                Some(review_key("c")),
                Some(review_key("a")),
            ],
            ..FeedbackState::default()
        };
        let mut restored = Monitor::new(&config(20));
        restored.track(&v1, None, Some(stored));
        let state = restored.feedback_state(&v1).unwrap();
        assert_eq!(state.pairs, vec![(0, 0), (1, 2), (2, 2)]);
        assert_eq!(
            state.reviews,
            vec![None, Some(review_key("c")), Some(review_key("a"))]
        );
    }

    #[test]
    fn after_a_restart_labels_join_warmed_predictions_once_and_replays_are_recognised() {
        // Before the restart: v1 predicted r0..r19, then v2 replaced it for r20..r29; labels for r20..r24
        // were applied (offsets 0..4 of label partition 1) and saved.
        let mut before = Monitor::new(&config(100));
        let mut read: Vec<Prediction> = Vec::new();
        for i in 0..30 {
            let version = if i < 20 { "v1" } else { "v2" };
            let prediction = prediction(i, version, Sentiment::ALL[i % 3], i as i64);
            closed(before.add(&prediction, "p", 0, i as i64));
            read.push(prediction);
        }
        let v2 = read[20].model.clone();
        for i in 20..25 {
            let joined = before.add_label(
                &format!("r{i}"),
                i % 3,
                (1, (i - 20) as i64),
                (i - 20) as i64,
            );
            assert_eq!(joined, LabelJoin::Joined(v2.clone()));
        }
        let saved = before.feedback_state(&v2).unwrap();

        // After it: the predictions are remembered again (not windowed); v1's are not (v2 replaced
        // it), so a late label for r3 does not count against v1.
        let warmed: Vec<WarmPrediction> = read.iter().cloned().map(Into::into).collect();
        // Without tracking v2, a newer version still takes v2's warmed joins away with it.
        let mut replaced = Monitor::new(&config(100));
        replaced.warm_joins(&warmed);
        closed(replaced.add(&prediction(41, "v3", Sentiment::Negative, 41), "p", 0, 41));
        assert_eq!(
            replaced.add_label("r26", 2, (1, 6), 6),
            LabelJoin::Unmatched
        );
        // A straggler of v1 replayed after the warm-up is not taken for a new version replacing v2.
        let mut straggler = Monitor::new(&config(100));
        straggler.warm_joins(&warmed);
        assert!(matches!(
            straggler.add(&prediction(19, "v1", Sentiment::Negative, 19), "p", 0, 19),
            Outcome::Retired
        ));
        assert_eq!(
            straggler.add_label("r26", 2, (1, 6), 6),
            LabelJoin::Untracked(v2.clone())
        );

        let mut after = Monitor::new(&config(100));
        assert_eq!(after.warm_joins(&warmed), 10);
        assert_eq!(after.add_label("r3", 0, (1, 10), 10), LabelJoin::Unmatched);
        // v2 has no state yet: the service tracks it with its stored state, then adds the label.
        assert_eq!(
            after.add_label("r26", 2, (1, 6), 6),
            LabelJoin::Untracked(v2.clone())
        );
        after.track(&v2, None, Some(saved));
        // Labels read again after the crash (offsets 3, 4) are recognised; the new ones count.
        assert_eq!(
            after.add_label("r23", 2, (1, 3), 3),
            LabelJoin::Replayed(v2.clone())
        );
        assert_eq!(
            after.add_label("r24", 0, (1, 4), 4),
            LabelJoin::Replayed(v2.clone())
        );
        assert_eq!(
            after.add_label("r26", 2, (1, 6), 6),
            LabelJoin::Joined(v2.clone())
        );
        // Another partition's offsets are its own.
        assert_eq!(
            after.add_label("r27", 0, (0, 4), 4),
            LabelJoin::Joined(v2.clone())
        );
        let state = after.feedback_state(&v2).unwrap();
        assert_eq!(state.pairs.len(), 7);
        assert_eq!(state.applied, BTreeMap::from([(0, 4), (1, 6)]));
        // When a newer version arrives, the warmed joins of v2 go with it.
        closed(after.add(&prediction(40, "v3", Sentiment::Negative, 40), "p", 0, 40));
        assert_eq!(after.add_label("r28", 1, (1, 7), 7), LabelJoin::Unmatched);
        assert!(after.is_retired(&v2));
    }

    #[test]
    fn predictions_read_again_after_a_rebalance_are_not_counted_twice() {
        let mut monitor = Monitor::new(&config(20));
        for i in 0..30 {
            closed(monitor.add(
                &prediction(i, "v1", Sentiment::Negative, 0),
                "p",
                0,
                i as i64,
            ));
        }
        let open_before = monitor.open_windows();
        // The group lost partition 0 and got it back: it resumes at the committed offset, below
        // the open window's first prediction (20), and reads 20..30 again.
        let resume = monitor.safe_offset("p", 0, 29).expect("an open window") + 1;
        assert_eq!(resume, 20);
        for i in resume..30 {
            let i = usize::try_from(i).unwrap();
            assert!(matches!(
                monitor.add(
                    &prediction(i, "v1", Sentiment::Negative, 0),
                    "p",
                    0,
                    i as i64
                ),
                Outcome::Reread
            ));
        }
        assert_eq!(monitor.open_windows(), open_before, "nothing added twice");
        // Predictions made after everything added, at offsets that start again (the topic was
        // recreated), are new; read again, they are not.
        let events = |monitor: &Monitor| -> u64 {
            monitor
                .open_windows()
                .iter()
                .map(|(_, events, _)| events)
                .sum()
        };
        let before = events(&monitor);
        closed(monitor.add(&prediction(50, "v1", Sentiment::Negative, 100), "p", 0, 0));
        assert_eq!(events(&monitor), before + 1);
        assert!(matches!(
            monitor.add(&prediction(50, "v1", Sentiment::Negative, 100), "p", 0, 0),
            Outcome::Reread
        ));
        assert_eq!(events(&monitor), before + 1);
        // Another partition, or another topic, at the same offsets is new.
        closed(monitor.add(&prediction(30, "v1", Sentiment::Negative, 0), "p", 1, 25));
        closed(monitor.add(&prediction(31, "v1", Sentiment::Negative, 0), "q", 0, 25));
        // The window still closes after exactly 20 distinct predictions: 10 read before, 3 above,
        // 7 more from partition 0 (whose mark restarted at offset 0).
        let reports: Vec<ClosedWindow> = (31..38)
            .flat_map(|i| {
                closed(monitor.add(
                    &prediction(i + 2, "v1", Sentiment::Negative, 0),
                    "p",
                    0,
                    i as i64,
                ))
            })
            .collect();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].report.window.events, 20);
    }
}
