//! The per-batch work of the Kafka path, pure apart from ONNX Runtime: decode and validate the clean
//! reviews, score them in one model run, and build the prediction and alert events for each message.

use std::time::Instant;

use chrono::Utc;
use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;
use sentiflow_common::events::{
    CleanReview, Event as _, NegativeAlert, Prediction, Probabilities, SCHEMA_VERSION, Sentiment,
};
use sentiflow_model::NORMALIZER_VERSION;
use uuid::Uuid;

use crate::error::Rejection;
use crate::model::{ClassProbabilities, ServingModel};

/// Namespace of prediction ids: a redelivered review scored by the same model version gets the same
/// prediction id, so consumers can drop the duplicate.
const PREDICTION_NAMESPACE: Uuid = Uuid::from_u128(0x5e47_1f10_a11c_4e5d_9b0e_7c3d_2f1a_0b9c);
/// Namespace of alert ids (same reasoning).
const ALERT_NAMESPACE: Uuid = Uuid::from_u128(0x5e47_1f10_a1e7_4e5d_9b0e_7c3d_2f1a_0b9d);

/// What one consumed message turned into.
#[derive(Debug)]
pub enum Outcome {
    /// A prediction, plus an alert for a confident negative.
    Predicted {
        /// The prediction event.
        prediction: Box<Prediction>,
        /// The alert, when the prediction is negative at or above the threshold.
        alert: Option<Box<NegativeAlert>>,
        /// When the review entered the pipeline (`reviews.clean` event time), for end-to-end latency.
        review_event_time: chrono::DateTime<Utc>,
    },
    /// Not a usable clean review: goes to the dead-letter topic.
    Rejected(Rejection),
}

/// The challenger's prediction of one sampled review, beside the champion's label.
#[derive(Debug)]
pub struct ShadowPrediction {
    /// The challenger's prediction (for `predictions.shadow`).
    pub prediction: Box<Prediction>,
    /// What the champion answered for the same review.
    pub champion_label: Sentiment,
}

/// Shadow scoring settings for one batch.
#[derive(Debug, Clone, Copy)]
pub struct Shadow<'a> {
    /// The challenger.
    pub model: &'a ServingModel,
    /// Fraction of reviews it scores too.
    pub fraction: f64,
}

/// Whether a review is in the shadow sample: a stable hash of its id, so a review is always in or
/// always out whatever the batch boundaries.
pub fn in_shadow_sample(review_id: &str, fraction: f64) -> bool {
    let unit = (sentiflow_model::featurize::stable_hash(review_id.as_bytes()) >> 11) as f64
        / (1u64 << 53) as f64;
    unit < fraction
}

/// A scored batch, in message order.
#[derive(Debug)]
pub struct ScoredBatch {
    /// One outcome per message.
    pub outcomes: Vec<Outcome>,
    /// Seconds the model run took (0 when nothing was scored).
    pub inference_seconds: f64,
    /// Reviews scored.
    pub scored: usize,
    /// Challenger predictions of the sampled reviews (empty without shadow scoring).
    pub shadow: Vec<ShadowPrediction>,
}

/// Decodes, scores and builds events for `messages` with `model`. Blocking (runs ONNX Runtime).
///
/// # Errors
/// Only when ONNX Runtime fails on valid input; the caller retries the batch.
pub fn score_messages(
    model: &ServingModel,
    shadow: Option<Shadow<'_>>,
    messages: &[OwnedMessage],
    alert_threshold: f64,
) -> Result<ScoredBatch, sentiflow_model::runtime::RuntimeError> {
    let mut decoded: Vec<Result<CleanReview, Rejection>> = messages.iter().map(decode).collect();
    let started = Instant::now();
    // Text cleaned by this build's normaliser needs no second cleaning pass (same ids; about a
    // tenth of the scoring time); a review from an older or newer ingest is cleaned again.
    let mut prepared = {
        let texts: Vec<&str> = decoded
            .iter()
            .flatten()
            .map(|review| review.text.as_str())
            .collect();
        let already_clean: Vec<bool> = decoded
            .iter()
            .flatten()
            .map(|review| review.normalizer_version == NORMALIZER_VERSION)
            .collect();
        model.prepare(&texts, &already_clean)
    };
    // A text with nothing to score (an encoder-family text without a WordPiece token) is rejected
    // from the inputs already built: each text is preprocessed once.
    let keep: Vec<bool> = (0..prepared.len())
        .map(|row| !prepared.has_nothing_to_score(row))
        .collect();
    if keep.contains(&false) {
        let served = model.model_ref();
        let mut flags = keep.iter();
        for review in &mut decoded {
            if review.is_ok() && !flags.next().expect("one flag per decoded review") {
                *review = Err(Rejection::NoTokens {
                    model: format!("{} {}", served.name, served.version),
                });
            }
        }
        prepared.retain(&keep);
    }
    let scoring = !prepared.is_empty();
    let (probabilities, oov_rates) = model.score_prepared(prepared)?;
    let inference_seconds = if scoring {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let scored = probabilities.len();
    let shadow = match shadow {
        Some(shadow) => score_shadow(shadow, &decoded, &probabilities),
        None => Vec::new(),
    };
    let mut rows = probabilities.into_iter().zip(oov_rates);
    let outcomes = decoded
        .into_iter()
        .map(|review| match review {
            Ok(review) => {
                let (row, oov_rate) = rows.next().expect("one row per decoded review");
                let (mut prediction, alert) =
                    build_events(model, &review, row, inference_seconds, alert_threshold);
                prediction.oov_rate = oov_rate;
                Outcome::Predicted {
                    prediction: Box::new(prediction),
                    alert: alert.map(Box::new),
                    review_event_time: review.event_time,
                }
            }
            Err(rejection) => Outcome::Rejected(rejection),
        })
        .collect();
    Ok(ScoredBatch {
        outcomes,
        inference_seconds,
        scored,
        shadow,
    })
}

/// Scores the sampled reviews with the challenger. A challenger failure is logged and counted and
/// yields no shadow predictions: it must never hold up the served result.
fn score_shadow(
    shadow: Shadow<'_>,
    decoded: &[Result<CleanReview, Rejection>],
    champion: &[ClassProbabilities],
) -> Vec<ShadowPrediction> {
    let sampled: Vec<(&CleanReview, ClassProbabilities)> = decoded
        .iter()
        .filter_map(|review| review.as_ref().ok())
        .zip(champion.iter().copied())
        .filter(|(review, _)| in_shadow_sample(&review.review_id, shadow.fraction))
        .collect();
    if sampled.is_empty() {
        return Vec::new();
    }
    let texts: Vec<&str> = sampled
        .iter()
        .map(|(review, _)| review.text.as_str())
        .collect();
    let started = Instant::now();
    let rows = match shadow.model.score(&texts) {
        Ok(rows) => rows,
        Err(error) => {
            metrics::counter!("sentiflow_infer_errors_total", "error_kind" => "shadow_inference")
                .increment(1);
            tracing::warn!(%error, "challenger inference failed; no shadow predictions for this batch");
            return Vec::new();
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    sampled
        .into_iter()
        .zip(rows)
        .map(|((review, champion_row), row)| {
            let (prediction, _) = build_events(shadow.model, review, row, seconds, f64::INFINITY);
            ShadowPrediction {
                prediction: Box::new(prediction),
                champion_label: probabilities(champion_row).argmax().0,
            }
        })
        .collect()
}

/// Decodes a clean review. The typed decode (required fields, types, enums, the schema version) is
/// the fast path: `reviews.clean` is written by ingest, which validated every event against the
/// schema. Only a message the typed decode refuses is run through the full JSON Schema, to give the
/// dead letter its precise kind and reason (about 4× the cost of the typed decode per message).
fn decode(message: &OwnedMessage) -> Result<CleanReview, Rejection> {
    let payload = message
        .payload()
        .filter(|payload| !payload.is_empty())
        .ok_or(Rejection::EmptyPayload)?;
    match serde_json::from_slice::<CleanReview>(payload) {
        Ok(review) if review.schema_version == SCHEMA_VERSION => Ok(review),
        _ => CleanReview::decode_validated(payload)
            .map_err(|error| Rejection::InvalidEvent {
                kind: error.kind(),
                reason: error.to_string(),
            })
            .and_then(|review| {
                if review.schema_version == SCHEMA_VERSION {
                    Ok(review)
                } else {
                    Err(Rejection::InvalidEvent {
                        kind: "schema_violation",
                        reason: format!(
                            "schema_version {} is not the version {SCHEMA_VERSION} this service reads",
                            review.schema_version
                        ),
                    })
                }
            }),
    }
}

/// Probabilities as the event carries them, rounded through f32 → f64.
pub fn probabilities(row: ClassProbabilities) -> Probabilities {
    Probabilities {
        negative: f64::from(row[0]),
        neutral: f64::from(row[1]),
        positive: f64::from(row[2]),
    }
}

/// The prediction for one review and, for a confident negative, its alert.
pub fn build_events(
    model: &ServingModel,
    review: &CleanReview,
    row: ClassProbabilities,
    inference_seconds: f64,
    alert_threshold: f64,
) -> (Prediction, Option<NegativeAlert>) {
    let probabilities = probabilities(row);
    let (label, confidence) = probabilities.argmax();
    let model_ref = model.model_ref().clone();
    let device = model.event_device();
    let now = Utc::now();
    let prediction_id = Uuid::new_v5(
        &PREDICTION_NAMESPACE,
        format!(
            "{}/{}/{}",
            review.event_id, model_ref.name, model_ref.version
        )
        .as_bytes(),
    )
    .to_string();
    let alert =
        (label == Sentiment::Negative && confidence >= alert_threshold).then(|| NegativeAlert {
            schema_version: SCHEMA_VERSION,
            event_id: Uuid::new_v5(&ALERT_NAMESPACE, prediction_id.as_bytes()).to_string(),
            event_time: now,
            review_id: review.review_id.clone(),
            source_event_id: prediction_id.clone(),
            confidence,
            threshold: alert_threshold,
            model: model_ref.clone(),
            device,
            text: review.text.clone(),
            source: review.source.clone(),
            created_at: review.created_at,
        });
    let prediction = Prediction {
        schema_version: SCHEMA_VERSION,
        event_id: prediction_id,
        event_time: now,
        source_event_id: review.event_id.clone(),
        review_id: review.review_id.clone(),
        label,
        probabilities,
        confidence,
        model: model_ref,
        device,
        inference_latency_ms: inference_seconds * 1000.0,
        created_at: review.created_at,
        text_length: review.text.chars().count() as u64,
        oov_rate: None,
        lang: Some(review.lang.clone()),
    };
    (prediction, alert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_sample_is_stable_and_close_to_the_fraction() {
        let ids: Vec<String> = (0..20_000).map(|index| format!("review-{index}")).collect();
        for fraction in [0.0, 0.1, 0.5, 1.0] {
            let sampled = ids
                .iter()
                .filter(|id| in_shadow_sample(id, fraction))
                .count();
            let share = sampled as f64 / ids.len() as f64;
            assert!((share - fraction).abs() < 0.02, "{fraction}: {share}");
        }
        assert_eq!(
            in_shadow_sample("review-7", 0.5),
            in_shadow_sample("review-7", 0.5)
        );
    }

    #[test]
    fn probabilities_keep_class_order() {
        let probabilities = probabilities([0.7, 0.2, 0.1]);
        assert_eq!(probabilities.argmax().0, Sentiment::Negative);
        assert!((probabilities.neutral - 0.2).abs() < 1e-6);
    }
}
