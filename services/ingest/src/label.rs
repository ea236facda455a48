//! Labelling rules: an explicit source label wins, then a star rating, then a weak lexicon label when the
//! lexicon is confident enough; otherwise the review stays unlabelled. Provenance and confidence are kept.

use sentiflow_common::events::{LabelInfo, LabelProvenance, Sentiment};
use sentiflow_model::lexicon::Lexicon;

/// Maps a 1–5 star rating to a sentiment: 1–2 negative, 3 neutral, 4–5 positive.
pub fn sentiment_from_rating(rating: u8) -> Option<Sentiment> {
    match rating {
        1 | 2 => Some(Sentiment::Negative),
        3 => Some(Sentiment::Neutral),
        4 | 5 => Some(Sentiment::Positive),
        _ => None,
    }
}

/// Chooses the label of a review.
#[derive(Debug)]
pub struct Labeller {
    /// VADER lexicon for weak labels.
    lexicon: Lexicon,
    /// Smallest |compound| that yields a weak label.
    threshold: f64,
}

impl Labeller {
    /// A labeller using `lexicon`; weak labels need |compound| ≥ `threshold`.
    pub fn new(lexicon: Lexicon, threshold: f64) -> Self {
        Self { lexicon, threshold }
    }

    /// The label for a review, from the strongest evidence available.
    ///
    /// Weak labels are only positive or negative: a lexicon that finds no sentiment words is not evidence
    /// of neutrality (sarcasm, domain words), so such reviews stay unlabelled rather than mislabelled.
    pub fn label(
        &self,
        source_label: Option<Sentiment>,
        rating: Option<u8>,
        cleaned_text: &str,
    ) -> Option<LabelInfo> {
        if let Some(label) = source_label {
            return Some(LabelInfo {
                label,
                provenance: LabelProvenance::SourceLabel,
                confidence: 1.0,
            });
        }
        if let Some(label) = rating.and_then(sentiment_from_rating) {
            return Some(LabelInfo {
                label,
                provenance: LabelProvenance::SourceRating,
                confidence: 1.0,
            });
        }
        let compound = self.lexicon.score(cleaned_text).compound;
        let label = if compound >= self.threshold {
            Sentiment::Positive
        } else if compound <= -self.threshold {
            Sentiment::Negative
        } else {
            return None;
        };
        Some(LabelInfo {
            label,
            provenance: LabelProvenance::WeakLexicon,
            confidence: compound.abs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labeller() -> Labeller {
        let lexicon = Lexicon::parse(
            "good\t1.9\t0.9\t[2, 2]\nterrible\t-2.5\t0.5\t[-3, -2]\nawful\t-2.0\t0.5\t[-2, -2]\n",
        )
        .unwrap();
        Labeller::new(lexicon, 0.5)
    }

    #[test]
    fn ratings_map_to_three_classes() {
        let table = [
            (1, Some(Sentiment::Negative)),
            (2, Some(Sentiment::Negative)),
            (3, Some(Sentiment::Neutral)),
            (4, Some(Sentiment::Positive)),
            (5, Some(Sentiment::Positive)),
            (0, None),
            (6, None),
        ];
        for (rating, expected) in table {
            assert_eq!(sentiment_from_rating(rating), expected, "rating {rating}");
        }
    }

    #[test]
    fn evidence_order_is_label_then_rating_then_lexicon() {
        let labeller = labeller();
        // (source label, rating, text, expected label, provenance)
        let table = [
            (
                Some(Sentiment::Neutral),
                Some(1),
                "terrible awful",
                Some((Sentiment::Neutral, LabelProvenance::SourceLabel)),
            ),
            (
                None,
                Some(5),
                "terrible awful",
                Some((Sentiment::Positive, LabelProvenance::SourceRating)),
            ),
            (
                None,
                None,
                "terrible awful flight",
                Some((Sentiment::Negative, LabelProvenance::WeakLexicon)),
            ),
            (
                None,
                None,
                "good good good",
                Some((Sentiment::Positive, LabelProvenance::WeakLexicon)),
            ),
            (None, None, "the flight left at noon", None),
        ];
        for (source, rating, text, expected) in table {
            let got = labeller
                .label(source, rating, text)
                .map(|info| (info.label, info.provenance));
            assert_eq!(got, expected, "{source:?} {rating:?} {text:?}");
        }
    }

    #[test]
    fn weak_label_confidence_is_the_compound_magnitude() {
        let info = labeller()
            .label(None, None, "terrible awful flight")
            .unwrap();
        assert!(
            info.confidence >= 0.5 && info.confidence <= 1.0,
            "{}",
            info.confidence
        );
    }
}
