//! The in-memory state of the drift monitor, free of I/O so it can be tested alone: windows and the
//! reference per model version, the human-label join, and confirmation with hysteresis.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use sentiflow_common::events::{
    DriftReport, DriftStatus, ModelRef, Prediction, SCHEMA_VERSION, Window, WindowKind,
    new_event_id,
};

use crate::config::{DriftConfig, Threshold};
use crate::signals::{self, FeedbackScores};
use crate::stats;
use crate::window::{OpenWindow, Sample};

/// Seconds after a version was replaced during which its predictions are stragglers, not a rollback.
pub const ROLLBACK_GRACE_SECS: i64 = 60;

/// Confirmation state of one model version (persistence on the way in, hysteresis on the way out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// Consecutive windows with status drift, including the last one.
    pub consecutive_drift: u32,
    /// Consecutive windows with status ok (clears a confirmed drift).
    pub consecutive_ok: u32,
    /// Whether drift is confirmed.
    pub confirmed: bool,
    /// Whether a retrain was already requested in this confirmed episode (collapses duplicates).
    pub requested: bool,
}

impl Confirmation {
    /// Folds one window's status in; returns whether drift became confirmed with this window.
    pub fn observe(&mut self, status: DriftStatus, confirm: u32, clear: u32) -> bool {
        match status {
            DriftStatus::Drift => {
                self.consecutive_drift += 1;
                self.consecutive_ok = 0;
            }
            DriftStatus::Warn => {
                self.consecutive_drift = 0;
                self.consecutive_ok = 0;
            }
            DriftStatus::Ok => {
                self.consecutive_drift = 0;
                self.consecutive_ok += 1;
            }
        }
        if self.confirmed && self.consecutive_ok >= clear {
            self.confirmed = false;
            self.requested = false;
        }
        if !self.confirmed && self.consecutive_drift >= confirm {
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
    /// Confirmation state.
    pub confirmation: Confirmation,
    /// Rolling (predicted, true) class indices from human labels.
    pub feedback: VecDeque<(usize, usize)>,
    /// Macro-F1 of the first full feedback window.
    pub feedback_baseline: Option<f64>,
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
    confirm_windows: u32,
    clear_windows: u32,
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
    /// review id → (model key, predicted class), bounded FIFO for joining late labels.
    joins: HashMap<String, ((String, String), usize)>,
    /// Insertion order of `joins`.
    join_order: VecDeque<String>,
}

/// What happened to one prediction.
#[derive(Debug)]
pub enum Outcome {
    /// Added to its version's window; maybe some windows closed (its own, or a replaced version's).
    Windowed(Vec<ClosedWindow>),
    /// A straggler of a replaced version: counted, not windowed.
    Retired,
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
            confirm_windows: config.confirm_windows,
            clear_windows: config.clear_windows,
            feedback_window: config.feedback_window,
            join_capacity: config.join_capacity,
            thresholds: config.threshold_table(),
            versions: HashMap::new(),
            retired: HashMap::new(),
            latest: HashMap::new(),
            joins: HashMap::new(),
            join_order: VecDeque::new(),
        }
    }

    /// Whether the version has no state yet (the service then looks for a stored reference).
    pub fn is_new(&self, model: &ModelRef) -> bool {
        let key = (model.name.clone(), model.version.clone());
        !self.versions.contains_key(&key) && !self.retired.contains_key(&key)
    }

    /// Starts tracking a version, with a reference loaded from storage if there is one.
    pub fn track(&mut self, model: &ModelRef, reference: Option<Sample>) {
        let key = (model.name.clone(), model.version.clone());
        self.versions.entry(key).or_insert_with(|| VersionState {
            model: model.clone(),
            open: None,
            reference,
            building: (Sample::default(), 0),
            confirmation: Confirmation::default(),
            feedback: VecDeque::new(),
            feedback_baseline: None,
        });
    }

    /// Adds a prediction read at `(topic, partition, offset)`.
    pub fn add(
        &mut self,
        prediction: &Prediction,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Outcome {
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
        self.track(model, None);
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
                self.forget_joins_of(&old);
            }
            self.retired.insert(old, prediction.event_time);
        }
        self.remember_join(&prediction.review_id, key.clone(), prediction.label.index());
        let (window_events, window_secs, min_events) =
            (self.window_events, self.window_secs, self.min_window_events);
        let mut state = self.versions.remove(&key).expect("tracked above");
        let open = state
            .open
            .get_or_insert_with(|| OpenWindow::new(prediction.event_time));
        open.add(prediction, topic, partition, offset);
        if let Some(kind) = open.closes(window_events, window_secs, min_events) {
            let open = state.open.take().expect("open window");
            closed.push(self.close(&mut state, open, kind));
        }
        self.versions.insert(key, state);
        Outcome::Windowed(closed)
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
        report.signals =
            signals::compute(reference, &open.sample, feedback.as_ref(), &self.thresholds);
        report.status = signals::overall(&report.signals);
        let newly_confirmed =
            state
                .confirmation
                .observe(report.status, self.confirm_windows, self.clear_windows);
        report.confirmed = state.confirmation.confirmed;
        report.consecutive_drift_windows = state.confirmation.consecutive_drift;
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
        let pairs: Vec<(usize, usize)> = state.feedback.iter().copied().collect();
        let (macro_f1, recall) = stats::classification_scores(&pairs, 3);
        Some(FeedbackScores {
            baseline_macro_f1: baseline,
            macro_f1,
            recall,
            labels: pairs.len(),
        })
    }

    fn remember_join(&mut self, review_id: &str, key: (String, String), class: usize) {
        if self.join_capacity == 0 {
            return;
        }
        if self
            .joins
            .insert(review_id.to_owned(), (key, class))
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
        self.joins.retain(|_, (k, _)| k != key);
        let joins = &self.joins;
        self.join_order.retain(|id| joins.contains_key(id));
    }

    /// Joins a human label to the prediction of `review_id`; returns whether it matched one.
    pub fn add_label(&mut self, review_id: &str, truth: usize) -> bool {
        let Some((key, predicted)) = self.joins.get(review_id).cloned() else {
            return false;
        };
        let Some(state) = self.versions.get_mut(&key) else {
            return false;
        };
        state.feedback.push_back((predicted, truth));
        while state.feedback.len() > self.feedback_window {
            state.feedback.pop_front();
        }
        if state.feedback_baseline.is_none() && state.feedback.len() >= self.feedback_window {
            let pairs: Vec<(usize, usize)> = state.feedback.iter().copied().collect();
            state.feedback_baseline = Some(stats::classification_scores(&pairs, 3).0);
        }
        true
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

    #[test]
    fn confirmation_needs_k_windows_and_clears_with_hysteresis() {
        let mut c = Confirmation::default();
        assert!(!c.observe(DriftStatus::Drift, 3, 2));
        assert!(!c.observe(DriftStatus::Drift, 3, 2));
        assert!(!c.observe(DriftStatus::Warn, 3, 2), "a warn breaks the run");
        assert!(!c.observe(DriftStatus::Drift, 3, 2));
        assert!(!c.observe(DriftStatus::Drift, 3, 2));
        assert!(c.observe(DriftStatus::Drift, 3, 2));
        assert!(c.confirmed);
        c.requested = true;
        assert!(!c.observe(DriftStatus::Drift, 3, 2), "already confirmed");
        c.observe(DriftStatus::Ok, 3, 2);
        c.observe(DriftStatus::Warn, 3, 2);
        c.observe(DriftStatus::Ok, 3, 2);
        assert!(c.confirmed, "one ok window (then a warn) does not clear it");
        c.observe(DriftStatus::Ok, 3, 2);
        assert!(!c.confirmed);
        assert!(!c.requested);
    }
}
