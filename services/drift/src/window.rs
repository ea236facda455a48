//! What a window remembers of its predictions (class counts and the distributions the signals test),
//! when it closes (count or event time), and the reference a model version is compared against.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sentiflow_common::events::{Prediction, WindowKind};
use serde::{Deserialize, Serialize};

use crate::stats;

/// Per-prediction values of a set of predictions (a window or a reference).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Predicted class counts in class-index order (negative, neutral, positive).
    pub class_counts: [u64; 3],
    /// Confidence (probability of the predicted class) of each prediction.
    pub confidences: Vec<f64>,
    /// Entropy of each prediction's probabilities, nats.
    pub entropies: Vec<f64>,
    /// Clean text length of each prediction, characters.
    pub text_lengths: Vec<f64>,
    /// OOV rate of the predictions that carry one.
    pub oov_rates: Vec<f64>,
}

impl Sample {
    /// Adds one prediction.
    pub fn add(&mut self, prediction: &Prediction) {
        self.class_counts[prediction.label.index()] += 1;
        push_finite(&mut self.confidences, prediction.confidence);
        push_finite(
            &mut self.entropies,
            stats::entropy(&prediction.probabilities.to_array()),
        );
        self.text_lengths.push(prediction.text_length as f64);
        if let Some(oov) = prediction.oov_rate {
            push_finite(&mut self.oov_rates, oov);
        }
    }

    /// Predictions in the sample.
    pub fn events(&self) -> u64 {
        self.class_counts.iter().sum()
    }

    /// Appends `other`, keeping at most `max_values` per distribution (a deterministic stride sample
    /// beyond, so a reference stays bounded).
    pub fn absorb(&mut self, other: &Sample, max_values: usize) {
        for (a, b) in self.class_counts.iter_mut().zip(other.class_counts) {
            *a += b;
        }
        for (mine, theirs) in [
            (&mut self.confidences, &other.confidences),
            (&mut self.entropies, &other.entropies),
            (&mut self.text_lengths, &other.text_lengths),
            (&mut self.oov_rates, &other.oov_rates),
        ] {
            mine.extend_from_slice(theirs);
            thin(mine, max_values);
        }
    }
}

/// Keeps every k-th value so at most `max` remain (order is arrival order, so this is a uniform
/// subsample of the stream).
fn thin(values: &mut Vec<f64>, max: usize) {
    if values.len() <= max {
        return;
    }
    let stride = values.len().div_ceil(max);
    let kept: Vec<f64> = values.iter().step_by(stride).copied().collect();
    *values = kept;
}

fn push_finite(values: &mut Vec<f64>, value: f64) {
    if value.is_finite() {
        values.push(value);
    }
}

/// An open window of one model version.
#[derive(Debug, Clone)]
pub struct OpenWindow {
    /// The predictions so far.
    pub sample: Sample,
    /// Earliest event time seen.
    pub start: DateTime<Utc>,
    /// Latest event time seen.
    pub last: DateTime<Utc>,
    /// Lowest offset of each (topic, partition) in this window: offsets below the lowest over all
    /// open windows are safe to store.
    pub first_offsets: HashMap<(String, i32), i64>,
}

impl OpenWindow {
    /// A window opened by its first prediction.
    pub fn new(first_event: DateTime<Utc>) -> Self {
        Self {
            sample: Sample::default(),
            start: first_event,
            last: first_event,
            first_offsets: HashMap::new(),
        }
    }

    /// Adds a prediction read at `(topic, partition, offset)`.
    pub fn add(&mut self, prediction: &Prediction, topic: &str, partition: i32, offset: i64) {
        self.sample.add(prediction);
        self.start = self.start.min(prediction.event_time);
        self.last = self.last.max(prediction.event_time);
        self.first_offsets
            .entry((topic.to_owned(), partition))
            .and_modify(|first| *first = (*first).min(offset))
            .or_insert(offset);
    }

    /// Whether the window is complete: `Some(kind)` says which bound closed it.
    pub fn closes(
        &self,
        window_events: u64,
        window_secs: u64,
        min_events: u64,
    ) -> Option<WindowKind> {
        let events = self.sample.events();
        if events >= window_events {
            return Some(WindowKind::Count);
        }
        let span = (self.last - self.start).num_milliseconds();
        (window_secs > 0 && events >= min_events && span >= (window_secs as i64) * 1000)
            .then_some(WindowKind::Time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_a_bounded_uniform_subsample() {
        let mut values: Vec<f64> = (0..1000).map(f64::from).collect();
        thin(&mut values, 300);
        assert!(values.len() <= 300, "{}", values.len());
        assert_eq!(values[0], 0.0);
        assert_eq!(values[1], 4.0);
        let mut a = Sample::default();
        let b = Sample {
            class_counts: [1, 2, 3],
            confidences: vec![0.5; 50],
            ..Sample::default()
        };
        a.absorb(&b, 20);
        a.absorb(&b, 20);
        assert_eq!(a.class_counts, [2, 4, 6]);
        assert!(a.confidences.len() <= 20);
    }
}
