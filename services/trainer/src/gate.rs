//! The promotion gate: a challenger replaces the champion of its family only if its macro-F1 on the gate
//! set is at least the champion's minus ε and no class's recall drops by more than δ.

use sentiflow_common::events::{GateDecision, Sentiment};
use sentiflow_model::eval::Evaluation;

/// The figures the gate compares, measured on the same gate set for both models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateScores {
    /// Macro-averaged F1.
    pub macro_f1: f64,
    /// Recall per class, in `Sentiment::index` order.
    pub recall: [f64; 3],
}

/// Gate thresholds.
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct GatePolicy {
    /// ε: how much lower than the champion's the challenger's macro-F1 may be.
    #[arg(
        long = "gate-epsilon",
        env = "SENTIFLOW_GATE_EPSILON",
        default_value_t = 0.005
    )]
    pub epsilon: f64,
    /// δ: the largest allowed drop of any class's recall.
    #[arg(
        long = "gate-max-recall-drop",
        env = "SENTIFLOW_GATE_MAX_RECALL_DROP",
        default_value_t = 0.05
    )]
    pub max_recall_drop: f64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            epsilon: 0.005,
            max_recall_drop: 0.05,
        }
    }
}

/// Decides whether `challenger` may replace `champion` (no champion: it passes).
pub fn decide(
    challenger: GateScores,
    champion: Option<GateScores>,
    policy: GatePolicy,
) -> GateDecision {
    let decision = |passed: bool, reason: String| GateDecision {
        passed,
        reason,
        challenger_macro_f1: challenger.macro_f1,
        champion_macro_f1: champion.map(|scores| scores.macro_f1),
        epsilon: policy.epsilon,
        max_recall_drop: policy.max_recall_drop,
    };
    let Some(champion) = champion else {
        return decision(
            true,
            "no champion yet: the first model is promoted".to_owned(),
        );
    };
    if challenger.macro_f1 < champion.macro_f1 - policy.epsilon {
        return decision(
            false,
            format!(
                "macro-F1 {:.4} is below the champion's {:.4} minus epsilon {}",
                challenger.macro_f1, champion.macro_f1, policy.epsilon
            ),
        );
    }
    for class in Sentiment::ALL {
        let index = class.index();
        let drop = champion.recall[index] - challenger.recall[index];
        if drop > policy.max_recall_drop {
            return decision(
                false,
                format!(
                    "{class} recall drops by {drop:.4} ({:.4} -> {:.4}), more than {}",
                    champion.recall[index], challenger.recall[index], policy.max_recall_drop
                ),
            );
        }
    }
    decision(
        true,
        format!(
            "macro-F1 {:.4} vs champion {:.4}; no class recall drop beyond {}",
            challenger.macro_f1, champion.macro_f1, policy.max_recall_drop
        ),
    )
}

/// The gate on two evaluations of the same `rows` test rows (the champion's, when there is one),
/// refused on an empty set ([`require_evaluation_rows`]).
pub fn decide_on(
    challenger: &Evaluation,
    champion: Option<&Evaluation>,
    rows: usize,
    policy: GatePolicy,
) -> GateDecision {
    let scores = |evaluation: &Evaluation| GateScores {
        macro_f1: evaluation.macro_f1,
        recall: evaluation.recalls(),
    };
    require_evaluation_rows(
        decide(scores(challenger), champion.map(scores), policy),
        rows,
    )
}

/// `decision`, refused when the evaluation set had no rows and there is a champion to beat: scores
/// of 0 against 0 on nothing say nothing, and must not replace a serving model.
pub fn require_evaluation_rows(decision: GateDecision, rows: usize) -> GateDecision {
    if rows > 0 || decision.champion_macro_f1.is_none() {
        return decision;
    }
    GateDecision {
        passed: false,
        reason:
            "the evaluation split is empty: nothing to compare the challenger and the champion on"
                .to_owned(),
        ..decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_evaluation_set_cannot_promote_over_a_champion() {
        let policy = GatePolicy {
            epsilon: 0.01,
            max_recall_drop: 0.05,
        };
        let nothing = scores(0.0, [0.0; 3]);
        let decision = decide(nothing, Some(nothing), policy);
        assert!(decision.passed, "0 vs 0 passes the score rules");
        let refused = require_evaluation_rows(decision.clone(), 0);
        assert!(!refused.passed && refused.reason.contains("empty"));
        assert!(require_evaluation_rows(decision, 10).passed);
        let first = decide(nothing, None, policy);
        assert!(
            require_evaluation_rows(first, 0).passed,
            "no champion to protect"
        );
    }

    fn scores(macro_f1: f64, recall: [f64; 3]) -> GateScores {
        GateScores { macro_f1, recall }
    }

    #[test]
    fn gate_table() {
        let policy = GatePolicy {
            epsilon: 0.01,
            max_recall_drop: 0.05,
        };
        let champion = scores(0.60, [0.70, 0.50, 0.60]);
        let table = [
            (scores(0.55, [0.1, 0.1, 0.1]), None, true, "no champion"),
            (
                scores(0.62, [0.70, 0.50, 0.60]),
                Some(champion),
                true,
                "better",
            ),
            (
                scores(0.595, [0.70, 0.50, 0.60]),
                Some(champion),
                true,
                "within epsilon",
            ),
            (
                scores(0.589, [0.70, 0.50, 0.60]),
                Some(champion),
                false,
                "below epsilon",
            ),
            (
                scores(0.65, [0.80, 0.44, 0.70]),
                Some(champion),
                false,
                "neutral recall drops 0.06",
            ),
            (
                scores(0.65, [0.80, 0.46, 0.70]),
                Some(champion),
                true,
                "recall drop 0.04 allowed",
            ),
        ];
        for (challenger, champion, passed, case) in table {
            let decision = decide(challenger, champion, policy);
            assert_eq!(decision.passed, passed, "{case}: {}", decision.reason);
            assert_eq!(decision.challenger_macro_f1, challenger.macro_f1);
            assert_eq!(decision.champion_macro_f1, champion.map(|c| c.macro_f1));
        }
        let refused = decide(scores(0.65, [0.80, 0.44, 0.70]), Some(champion), policy);
        assert!(
            refused.reason.contains("neutral recall"),
            "{}",
            refused.reason
        );
    }
}
