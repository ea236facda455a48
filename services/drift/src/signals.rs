//! The drift signals of one window against its model version's reference: each an effect size (never
//! a p-value: on large windows every p-value is tiny) with warn/drift thresholds, plus the p-value
//! where the test has one.

use std::collections::BTreeMap;

use sentiflow_common::events::{DriftStatus, Sentiment, Signal};

use crate::config::Threshold;
use crate::sequential::ScanPoint;
use crate::stats;
use crate::window::Sample;

/// Cramér's V of the predicted-class counts (chi-square test of homogeneity; p-value).
pub const CLASS_MIX_CRAMERS_V: &str = "class_mix_cramers_v";
/// Population stability index of the predicted-class mix.
pub const CLASS_MIX_PSI: &str = "class_mix_psi";
/// Jensen-Shannon distance (base 2) of the predicted-class mix.
pub const CLASS_MIX_JS: &str = "class_mix_js";
/// Two-sample KS distance of the confidences (p-value).
pub const CONFIDENCE_KS: &str = "confidence_ks";
/// Shift of the mean prediction entropy, as a share of the maximum entropy ln 3.
pub const ENTROPY_SHIFT: &str = "entropy_shift";
/// Two-sample KS distance of the text lengths (p-value).
pub const TEXT_LENGTH_KS: &str = "text_length_ks";
/// Shift of the mean OOV rate (only when predictions carry one).
pub const OOV_RATE_SHIFT: &str = "oov_rate_shift";
/// Drop of the rolling macro-F1 on human labels below the version's baseline.
pub const FEEDBACK_MACRO_F1_DROP: &str = "feedback_macro_f1_drop";
/// Largest score of the sequential class-mix scan during the window: the G statistic of a recent
/// suffix less a scale penalty (its drift threshold is the alarm that closes a window early; the
/// p-value is the suffix's G, nominal).
pub const CLASS_MIX_SCAN_G: &str = "class_mix_scan_g";

/// Every signal name, in report order.
pub const SIGNAL_NAMES: [&str; 9] = [
    CLASS_MIX_SCAN_G,
    CLASS_MIX_CRAMERS_V,
    CLASS_MIX_PSI,
    CLASS_MIX_JS,
    CONFIDENCE_KS,
    ENTROPY_SHIFT,
    TEXT_LENGTH_KS,
    OOV_RATE_SHIFT,
    FEEDBACK_MACRO_F1_DROP,
];

/// Default thresholds: conventional effect-size cut-offs (PSI 0.1/0.25; Cramér's V and KS "small" at
/// 0.1, drift at 0.2), chosen to stay silent on sampling noise of 500-event windows.
pub fn default_thresholds() -> BTreeMap<&'static str, Threshold> {
    let t = |warn, drift| Threshold { warn, drift };
    BTreeMap::from([
        (CLASS_MIX_SCAN_G, t(SCAN_WARN_G, SCAN_DRIFT_G)),
        (CLASS_MIX_CRAMERS_V, t(0.1, 0.2)),
        (CLASS_MIX_PSI, t(0.1, 0.25)),
        (CLASS_MIX_JS, t(0.1, 0.2)),
        (CONFIDENCE_KS, t(0.1, 0.2)),
        (ENTROPY_SHIFT, t(0.05, 0.1)),
        (TEXT_LENGTH_KS, t(0.1, 0.2)),
        (OOV_RATE_SHIFT, t(0.05, 0.1)),
        (FEEDBACK_MACRO_F1_DROP, t(0.05, 0.1)),
    ])
}

/// Default warn threshold of the class-mix scan's score (see [`SCAN_DRIFT_G`]).
pub const SCAN_WARN_G: f64 = 16.0;

/// Default alarm threshold of the class-mix scan's score (penalised G): far beyond the chi-square
/// (2 dof) tail of one test, because the scan tests many overlapping suffixes after every prediction;
/// `sentiflow bench drift` measures the resulting false alarms on 200,000 stationary predictions.
pub const SCAN_DRIFT_G: f64 = 22.0;

/// Epsilon floor of proportions in the PSI.
pub const PSI_EPSILON: f64 = 1e-4;

/// Macro-F1 from human labels: the version's baseline and the rolling value now.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackScores {
    /// Macro-F1 of the version's first full feedback window.
    pub baseline_macro_f1: f64,
    /// Macro-F1 of the latest full feedback window.
    pub macro_f1: f64,
    /// Per-class recall of the latest window, class-index order.
    pub recall: Vec<f64>,
    /// Labelled predictions in the rolling window.
    pub labels: usize,
}

/// Status of a statistic against its thresholds.
pub fn status_of(statistic: f64, threshold: Threshold) -> DriftStatus {
    if statistic >= threshold.drift {
        DriftStatus::Drift
    } else if statistic >= threshold.warn {
        DriftStatus::Warn
    } else {
        DriftStatus::Ok
    }
}

fn signal(
    name: &'static str,
    statistic: f64,
    p_value: Option<f64>,
    thresholds: &BTreeMap<&'static str, Threshold>,
    detail: String,
) -> Option<Signal> {
    if !statistic.is_finite() {
        return None;
    }
    let threshold = thresholds[name];
    Some(Signal {
        name: name.to_owned(),
        statistic,
        warn_threshold: threshold.warn,
        drift_threshold: threshold.drift,
        p_value: p_value.filter(|p| p.is_finite()).map(|p| p.clamp(0.0, 1.0)),
        status: status_of(statistic, threshold),
        detail: Some(detail),
    })
}

fn shares(counts: &[u64; 3]) -> String {
    let total = counts.iter().sum::<u64>().max(1) as f64;
    Sentiment::ALL
        .iter()
        .map(|s| format!("{}={:.3}", s, counts[s.index()] as f64 / total))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every signal computable for `window` against `reference` (signals without data are left out);
/// `scan` is the largest point of the sequential class-mix scan during the window.
pub fn compute(
    reference: &Sample,
    window: &Sample,
    scan: Option<&ScanPoint>,
    feedback: Option<&FeedbackScores>,
    thresholds: &BTreeMap<&'static str, Threshold>,
) -> Vec<Signal> {
    let mut signals = Vec::new();
    if let Some(point) = scan {
        signals.extend(signal(
            CLASS_MIX_SCAN_G,
            point.statistic,
            Some(point.nominal_p_value()),
            thresholds,
            format!(
                "G {:.2} over the last {} predictions: {} | scan reference of {}: {}",
                point.g,
                point.suffix_events,
                shares(&point.suffix_counts),
                point.reference_counts.iter().sum::<u64>(),
                shares(&point.reference_counts)
            ),
        ));
    }
    let mix = format!(
        "reference {} | window {}",
        shares(&reference.class_counts),
        shares(&window.class_counts)
    );
    if let Some(chi) = stats::chi_square_homogeneity(&reference.class_counts, &window.class_counts)
    {
        signals.extend(signal(
            CLASS_MIX_CRAMERS_V,
            chi.cramers_v,
            Some(chi.p_value),
            thresholds,
            format!("chi2={:.3} dof={}; {mix}", chi.statistic, chi.dof),
        ));
    }
    if let Some(psi) = stats::psi(&reference.class_counts, &window.class_counts, PSI_EPSILON) {
        signals.extend(signal(CLASS_MIX_PSI, psi, None, thresholds, mix.clone()));
    }
    if let Some(js) = stats::jensen_shannon_distance(&reference.class_counts, &window.class_counts)
    {
        signals.extend(signal(CLASS_MIX_JS, js, None, thresholds, mix));
    }
    let ks = |name, a: &[f64], b: &[f64], signals: &mut Vec<Signal>| {
        if let Some(test) = stats::ks_two_sample(a, b) {
            let detail = format!(
                "mean reference {:.3} | window {:.3}",
                stats::mean(a).unwrap_or(f64::NAN),
                stats::mean(b).unwrap_or(f64::NAN)
            );
            signals.extend(signal(
                name,
                test.statistic,
                Some(test.p_value),
                thresholds,
                detail,
            ));
        }
    };
    ks(
        CONFIDENCE_KS,
        &reference.confidences,
        &window.confidences,
        &mut signals,
    );
    if let (Some(r), Some(w)) = (
        stats::mean(&reference.entropies),
        stats::mean(&window.entropies),
    ) {
        signals.extend(signal(
            ENTROPY_SHIFT,
            (w - r).abs() / 3f64.ln(),
            None,
            thresholds,
            format!("mean entropy reference {r:.4} | window {w:.4} nats"),
        ));
    }
    ks(
        TEXT_LENGTH_KS,
        &reference.text_lengths,
        &window.text_lengths,
        &mut signals,
    );
    if let (Some(r), Some(w)) = (
        stats::mean(&reference.oov_rates),
        stats::mean(&window.oov_rates),
    ) {
        signals.extend(signal(
            OOV_RATE_SHIFT,
            (w - r).abs(),
            None,
            thresholds,
            format!("mean oov rate reference {r:.4} | window {w:.4}"),
        ));
    }
    if let Some(feedback) = feedback {
        let recall = Sentiment::ALL
            .iter()
            .map(|s| format!("{}={:.3}", s, feedback.recall[s.index()]))
            .collect::<Vec<_>>()
            .join(" ");
        signals.extend(signal(
            FEEDBACK_MACRO_F1_DROP,
            (feedback.baseline_macro_f1 - feedback.macro_f1).max(0.0),
            None,
            thresholds,
            format!(
                "macro-F1 {:.4} (baseline {:.4}) over the last {} human labels; recall {recall}",
                feedback.macro_f1, feedback.baseline_macro_f1, feedback.labels
            ),
        ));
    }
    signals
}

/// Worst status among `signals` (ok when there are none).
pub fn overall(signals: &[Signal]) -> DriftStatus {
    signals
        .iter()
        .map(|s| s.status)
        .max()
        .unwrap_or(DriftStatus::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(counts: [u64; 3], confidence: f64, length: f64, n: usize) -> Sample {
        Sample {
            class_counts: counts,
            confidences: (0..n)
                .map(|i| confidence + (i % 10) as f64 * 0.01)
                .collect(),
            entropies: vec![0.5; n],
            text_lengths: (0..n).map(|i| length + (i % 50) as f64).collect(),
            oov_rates: Vec::new(),
        }
    }

    #[test]
    fn same_distribution_is_ok_and_a_shift_is_drift() {
        let thresholds = default_thresholds();
        let reference = sample([600, 200, 200], 0.8, 80.0, 1000);
        let same = compute(&reference, &reference, None, None, &thresholds);
        assert_eq!(overall(&same), DriftStatus::Ok);
        assert_eq!(same.len(), 6, "no oov, no feedback: {same:?}");
        let shifted = sample([150, 250, 600], 0.6, 160.0, 1000);
        let signals = compute(&reference, &shifted, None, None, &thresholds);
        assert_eq!(overall(&signals), DriftStatus::Drift);
        let by_name = |name: &str| signals.iter().find(|s| s.name == name).unwrap();
        assert_eq!(by_name(CLASS_MIX_PSI).status, DriftStatus::Drift);
        assert_eq!(by_name(TEXT_LENGTH_KS).status, DriftStatus::Drift);
        assert!(by_name(CLASS_MIX_CRAMERS_V).p_value.unwrap() < 1e-10);
        assert!(by_name(CLASS_MIX_PSI).p_value.is_none());
    }

    #[test]
    fn feedback_drop_is_reported_with_recall() {
        let reference = sample([600, 200, 200], 0.8, 80.0, 100);
        let feedback = FeedbackScores {
            baseline_macro_f1: 0.8,
            macro_f1: 0.65,
            recall: vec![0.9, 0.3, 0.7],
            labels: 200,
        };
        let signals = compute(
            &reference,
            &reference,
            None,
            Some(&feedback),
            &default_thresholds(),
        );
        let f1 = signals
            .iter()
            .find(|s| s.name == FEEDBACK_MACRO_F1_DROP)
            .unwrap();
        assert!((f1.statistic - 0.15).abs() < 1e-12);
        assert_eq!(f1.status, DriftStatus::Drift);
        assert!(f1.detail.as_deref().unwrap().contains("neutral=0.300"));
    }

    #[test]
    fn status_boundaries_are_inclusive() {
        let t = Threshold {
            warn: 0.1,
            drift: 0.2,
        };
        assert_eq!(status_of(0.099, t), DriftStatus::Ok);
        assert_eq!(status_of(0.1, t), DriftStatus::Warn);
        assert_eq!(status_of(0.2, t), DriftStatus::Drift);
    }
}
