//! Evaluation of three-class probability predictions against gold labels: per-class precision, recall,
//! F1 and support, macro-F1, accuracy, the confusion matrix and expected calibration error, in one
//! serialisable [`Evaluation`] for model cards, the promotion gate and `sentiflow eval`.
//!
//! Definitions follow scikit-learn (`precision_recall_fscore_support` with `zero_division=0`,
//! `f1_score(average="macro")` over all three classes, `confusion_matrix` with rows = true labels);
//! the calibration error is Guo et al. (2017): confidence = top probability, 10 equal-width bins
//! `(k/10, (k+1)/10]` (the first bin also holds 0), weighted mean of |accuracy − mean confidence|.

use serde::{Deserialize, Serialize};

use crate::hashed::CLASSES;

/// Number of equal-width confidence bins of the expected calibration error.
pub const CALIBRATION_BINS: usize = 10;

/// Class names in index order, as the schemas spell them.
pub const CLASS_NAMES: [&str; CLASSES] = ["negative", "neutral", "positive"];

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Correct predictions of the class over all predictions of it (0 when it was never predicted).
    pub precision: f64,
    /// Correct predictions of the class over its true rows (0 when it has none).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Rows whose true label is the class.
    pub support: usize,
}

/// One confidence bin of the reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Exclusive lower edge (the first bin also holds confidence 0).
    pub lower: f64,
    /// Inclusive upper edge.
    pub upper: f64,
    /// Rows whose confidence falls in the bin.
    pub count: usize,
    /// Share of those rows predicted correctly (0 when empty).
    pub accuracy: f64,
    /// Mean confidence of those rows (0 when empty).
    pub confidence: f64,
}

/// Everything the model card and the gate need about one model on one labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: usize,
    /// Share of rows whose top class is the true one.
    pub accuracy: f64,
    /// Unweighted mean of the three per-class F1 scores (absent classes count as 0).
    pub macro_f1: f64,
    /// Per class, in index order (negative, neutral, positive).
    pub per_class: [ClassMetrics; CLASSES],
    /// `confusion[true][predicted]` row counts.
    pub confusion: [[usize; CLASSES]; CLASSES],
    /// Expected calibration error over [`CALIBRATION_BINS`] bins.
    pub expected_calibration_error: f64,
    /// Mean negative log-likelihood of the true class (probabilities floored at 1e-15, as sklearn).
    pub log_loss: f64,
    /// The reliability diagram behind the calibration error.
    pub calibration: Vec<CalibrationBin>,
}

impl Evaluation {
    /// Recall of each class, in index order (the gate compares these between champion and
    /// challenger).
    pub fn recalls(&self) -> [f64; CLASSES] {
        self.per_class.map(|class| class.recall)
    }
}

/// `weight · first + (1 − weight) · second`, row by row: a blend of two models' class
/// probabilities on the same rows (each row still sums to 1).
pub fn blend(
    first: &[[f64; CLASSES]],
    second: &[[f64; CLASSES]],
    weight: f64,
) -> Vec<[f64; CLASSES]> {
    assert_eq!(first.len(), second.len(), "both models score the same rows");
    first
        .iter()
        .zip(second)
        .map(|(a, b)| std::array::from_fn(|class| weight * a[class] + (1.0 - weight) * b[class]))
        .collect()
}

/// Index of the highest probability; ties go to the lowest index, as `numpy.argmax`.
pub fn predicted_class(probabilities: &[f64; CLASSES]) -> usize {
    let mut best = 0;
    for class in 1..CLASSES {
        if probabilities[class] > probabilities[best] {
            best = class;
        }
    }
    best
}

/// Evaluates `predictions` (class probabilities per row) against `labels` (class indices).
///
/// # Panics
/// When the two slices differ in length or a label is not below [`CLASSES`]: both are caller bugs
/// (labels are checked when data is loaded).
pub fn evaluate(predictions: &[[f64; CLASSES]], labels: &[usize]) -> Evaluation {
    assert_eq!(predictions.len(), labels.len(), "one label per prediction");
    let mut confusion = [[0usize; CLASSES]; CLASSES];
    let mut bins = [(0usize, 0usize, 0.0f64); CALIBRATION_BINS]; // (count, correct, confidence sum)
    let mut log_loss = 0.0;
    for (probabilities, &label) in predictions.iter().zip(labels) {
        assert!(label < CLASSES, "label {label} is not a class index");
        let predicted = predicted_class(probabilities);
        confusion[label][predicted] += 1;
        let confidence = probabilities[predicted];
        let bin = calibration_bin(confidence);
        bins[bin].0 += 1;
        bins[bin].1 += usize::from(predicted == label);
        bins[bin].2 += confidence;
        log_loss -= probabilities[label].clamp(1e-15, 1.0 - 1e-15).ln();
    }

    let rows = labels.len();
    let per_class: [ClassMetrics; CLASSES] = std::array::from_fn(|class| {
        let true_positives = confusion[class][class];
        let support: usize = confusion[class].iter().sum();
        let predicted: usize = confusion.iter().map(|row| row[class]).sum();
        let precision = ratio(true_positives, predicted);
        let recall = ratio(true_positives, support);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        ClassMetrics {
            precision,
            recall,
            f1,
            support,
        }
    });
    let correct: usize = (0..CLASSES).map(|class| confusion[class][class]).sum();

    let calibration: Vec<CalibrationBin> = bins
        .iter()
        .enumerate()
        .map(
            |(index, &(count, correct, confidence_sum))| CalibrationBin {
                lower: index as f64 / CALIBRATION_BINS as f64,
                upper: (index + 1) as f64 / CALIBRATION_BINS as f64,
                count,
                accuracy: ratio(correct, count),
                confidence: if count == 0 {
                    0.0
                } else {
                    confidence_sum / count as f64
                },
            },
        )
        .collect();
    let expected_calibration_error = if rows == 0 {
        0.0
    } else {
        calibration
            .iter()
            .map(|bin| bin.count as f64 / rows as f64 * (bin.accuracy - bin.confidence).abs())
            .sum()
    };

    Evaluation {
        rows,
        accuracy: ratio(correct, rows),
        macro_f1: per_class.iter().map(|class| class.f1).sum::<f64>() / CLASSES as f64,
        per_class,
        confusion,
        expected_calibration_error,
        log_loss: if rows == 0 {
            0.0
        } else {
            log_loss / rows as f64
        },
        calibration,
    }
}

/// Bin `(k/10, (k+1)/10]` of a confidence; 0 goes to the first bin.
fn calibration_bin(confidence: f64) -> usize {
    let scaled = (confidence.clamp(0.0, 1.0) * CALIBRATION_BINS as f64).ceil() as usize;
    scaled.clamp(1, CALIBRATION_BINS) - 1
}

/// `numerator / denominator`, 0 when the denominator is 0 (sklearn's `zero_division=0`).
fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_hot(class: usize, confidence: f64) -> [f64; CLASSES] {
        let rest = (1.0 - confidence) / 2.0;
        std::array::from_fn(|index| if index == class { confidence } else { rest })
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 1e-12
    }

    #[test]
    fn perfect_predictions() {
        let predictions = [one_hot(0, 1.0), one_hot(1, 1.0), one_hot(2, 1.0)];
        let evaluation = evaluate(&predictions, &[0, 1, 2]);
        assert_eq!(evaluation.accuracy, 1.0);
        assert_eq!(evaluation.macro_f1, 1.0);
        assert_eq!(evaluation.confusion, [[1, 0, 0], [0, 1, 0], [0, 0, 1]]);
        assert!(close(evaluation.expected_calibration_error, 0.0));
    }

    /// y_true = [0,0,0,1,1,2,2,2,2,1], y_pred = [0,1,0,1,2,2,2,0,2,1]; scikit-learn 1.9.1 gives
    /// precision [2/3, 2/3, 3/4], recall [2/3, 2/3, 3/4], f1 the same, macro-F1 0.69444…,
    /// accuracy 0.7 and confusion [[2,1,0],[0,2,1],[1,0,3]].
    #[test]
    fn matches_sklearn_definitions() {
        let truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1];
        let predicted = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1];
        let predictions: Vec<_> = predicted.iter().map(|&class| one_hot(class, 0.8)).collect();
        let evaluation = evaluate(&predictions, &truth);
        assert_eq!(evaluation.confusion, [[2, 1, 0], [0, 2, 1], [1, 0, 3]]);
        let expected = [
            (2.0 / 3.0, 2.0 / 3.0, 3),
            (2.0 / 3.0, 2.0 / 3.0, 3),
            (0.75, 0.75, 4),
        ];
        for (metrics, (precision, recall, support)) in evaluation.per_class.iter().zip(expected) {
            assert!(close(metrics.precision, precision), "{metrics:?}");
            assert!(close(metrics.recall, recall), "{metrics:?}");
            assert!(close(metrics.f1, precision), "{metrics:?}");
            assert_eq!(metrics.support, support);
        }
        assert!(close(
            evaluation.macro_f1,
            (2.0 / 3.0 + 2.0 / 3.0 + 0.75) / 3.0
        ));
        assert!(close(evaluation.accuracy, 0.7));
        // Every row has confidence 0.8 (bin (0.7, 0.8]) and 7 of 10 are right: ECE = |0.7 - 0.8|.
        assert!(close(evaluation.expected_calibration_error, 0.1));
        assert_eq!(evaluation.calibration[7].count, 10);
        // log loss: right rows have p = 0.8, wrong rows p = 0.1.
        let expected_log_loss = -(7.0 * 0.8f64.ln() + 3.0 * 0.1f64.ln()) / 10.0;
        assert!(close(evaluation.log_loss, expected_log_loss));
    }

    /// A class never predicted has precision 0 (not NaN), a class absent from the truth recall 0,
    /// and macro-F1 still averages over all three classes, as sklearn with `zero_division=0` and
    /// `labels=[0, 1, 2]` (checked with scikit-learn 1.9.1: precision [0.5, 0, 1], recall [1, 0, 0.5],
    /// macro-F1 0.4444…).
    #[test]
    fn zero_division_counts_as_zero() {
        let predictions = [one_hot(0, 0.9), one_hot(0, 0.9), one_hot(2, 0.9)];
        let evaluation = evaluate(&predictions, &[0, 2, 2]);
        let [negative, neutral, positive] = evaluation.per_class;
        assert!(close(negative.precision, 0.5) && close(negative.recall, 1.0));
        assert!(close(negative.f1, 2.0 / 3.0));
        assert_eq!(
            (
                neutral.precision,
                neutral.recall,
                neutral.f1,
                neutral.support
            ),
            (0.0, 0.0, 0.0, 0)
        );
        assert!(close(positive.precision, 1.0) && close(positive.recall, 0.5));
        assert!(close(
            evaluation.macro_f1,
            (2.0 / 3.0 + 0.0 + 2.0 / 3.0) / 3.0
        ));
        assert!(evaluation.macro_f1.is_finite());
    }

    #[test]
    fn calibration_bins_are_right_closed() {
        for (confidence, bin) in [
            (0.0, 0),
            (0.05, 0),
            (0.1, 0),
            (0.1000001, 1),
            (0.5, 4),
            (0.55, 5),
            (1.0, 9),
        ] {
            assert_eq!(calibration_bin(confidence), bin, "confidence {confidence}");
        }
    }

    /// Two bins: 4 rows at 0.9 (3 right) and 2 rows at 0.6 (1 right):
    /// ECE = 4/6·|0.75 − 0.9| + 2/6·|0.5 − 0.6| = 0.1 + 0.0333… = 0.1333….
    #[test]
    fn expected_calibration_error_by_hand() {
        let predictions = [
            one_hot(0, 0.9),
            one_hot(0, 0.9),
            one_hot(0, 0.9),
            one_hot(0, 0.9),
            one_hot(1, 0.6),
            one_hot(1, 0.6),
        ];
        let evaluation = evaluate(&predictions, &[0, 0, 0, 2, 1, 0]);
        assert!(
            close(evaluation.expected_calibration_error, 0.4 / 3.0),
            "{}",
            evaluation.expected_calibration_error
        );
        assert_eq!(evaluation.calibration[8].count, 4);
        assert!(close(evaluation.calibration[8].accuracy, 0.75));
        assert_eq!(evaluation.calibration[5].count, 2);
    }

    #[test]
    fn ties_go_to_the_lowest_class_and_empty_input_is_all_zero() {
        assert_eq!(predicted_class(&[0.4, 0.4, 0.2]), 0);
        assert_eq!(predicted_class(&[0.2, 0.4, 0.4]), 1);
        let evaluation = evaluate(&[], &[]);
        assert_eq!(
            (evaluation.rows, evaluation.accuracy, evaluation.macro_f1),
            (0, 0.0, 0.0)
        );
        assert_eq!(evaluation.expected_calibration_error, 0.0);
    }

    #[test]
    #[should_panic(expected = "one label per prediction")]
    fn mismatched_lengths_panic() {
        let _ = evaluate(&[one_hot(0, 1.0)], &[]);
    }
}
