//! `POST /v1/reviews`: producers that do not speak Kafka send reviews over HTTP. Every review of a
//! request is checked exactly as the Kafka path checks it before any is published; then all go to
//! `reviews.raw` (idempotent producer, `acks=all`) and the answer names where each landed.
//!
//! A request is all or nothing on validation, at-least-once on publication: when the broker does not
//! acknowledge every review the answer is 503 and the client sends the same request again; reviews
//! that did land are dropped by ingest's dedupe on their event id, so a retry never duplicates one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::join_all;
use sentiflow_common::events::SourceCoordinate;
use sentiflow_common::http::{InFlight, RequestSlots, json_error, read_body, record_request};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use serde::Serialize;
use serde_json::{Value, json};

use crate::SERVICE;
use crate::pipeline::Processor;

/// How long a request waits for the broker to acknowledge its reviews before answering 503.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Rejections named one by one in a 422 answer; beyond that they are only counted.
const REJECTIONS_LISTED: usize = 100;

/// Limits of the API, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most reviews per request.
    pub max_reviews: usize,
    /// Largest review in bytes (the Kafka path's `--max-payload-bytes`).
    pub max_review_bytes: usize,
    /// Most requests in flight.
    pub max_concurrent: usize,
}

impl HttpLimits {
    /// Largest body: `max_reviews` reviews of the largest size, with room for the array and spacing.
    pub fn max_body_bytes(&self) -> usize {
        self.max_reviews
            .saturating_mul(self.max_review_bytes.saturating_add(16))
            .saturating_add(1024)
    }
}

#[derive(Clone)]
struct ApiState {
    processor: Arc<Processor>,
    producer: ResilientProducer,
    raw_topic: String,
    limits: HttpLimits,
}

/// Where one accepted review landed.
#[derive(Debug, Serialize)]
struct Accepted {
    event_id: String,
    review_id: String,
    partition: i32,
    offset: i64,
}

/// The routes merged into ingest's HTTP server.
pub fn router(
    processor: Arc<Processor>,
    producer: ResilientProducer,
    raw_topic: String,
    limits: HttpLimits,
) -> Router {
    let slots = RequestSlots::new(SERVICE, limits.max_concurrent);
    Router::new()
        .route(
            "/v1/reviews",
            post(accept).route_layer(middleware::from_fn(move |request, next| {
                slots.clone().shed_when_full(request, next)
            })),
        )
        .with_state(ApiState {
            processor,
            producer,
            raw_topic,
            limits,
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes()))
}

async fn accept(State(state): State<ApiState>, request: Request) -> Response {
    let started = Instant::now();
    let in_flight = request.extensions().get::<InFlight>().cloned();
    let response = match read_body(SERVICE, request, state.limits.max_body_bytes()).await {
        Ok(body) => accept_body(&state, in_flight, &body).await,
        Err(response) => response,
    };
    record_request(SERVICE, &response, started);
    response
}

async fn accept_body(state: &ApiState, in_flight: Option<InFlight>, body: &[u8]) -> Response {
    let reviews = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(reviews)) => reviews,
        Ok(review @ Value::Object(_)) => vec![review],
        Ok(_) => {
            return json_error(
                SERVICE,
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "expected one review object or an array of them",
            );
        }
        Err(error) => {
            return json_error(
                SERVICE,
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {error}"),
            );
        }
    };
    if reviews.is_empty() {
        return json_error(
            SERVICE,
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_reviews",
            "the array holds no review",
        );
    }
    if reviews.len() > state.limits.max_reviews {
        return json_error(
            SERVICE,
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_reviews",
            format!(
                "{} reviews; at most {} per request (--http-max-reviews)",
                reviews.len(),
                state.limits.max_reviews
            ),
        );
    }
    // The same checks as a message on reviews.raw (cleaning and language detection included), off the
    // async workers: ~150 µs a review.
    let processor = state.processor.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let _in_flight = in_flight;
        check(&processor, reviews)
    })
    .await;
    let (valid, rejected) = match checked {
        Ok(checked) => checked,
        Err(join_error) => {
            tracing::error!(%join_error, "checking an HTTP request failed");
            return json_error(
                SERVICE,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "checking the reviews failed",
            );
        }
    };
    if !rejected.is_empty() {
        let total = valid.len() + rejected.len();
        for rejection in &rejected {
            metrics::counter!("sentiflow_ingest_http_reviews_total", "outcome" => "rejected", "error_kind" => rejection.error_kind)
                .increment(1);
        }
        metrics::counter!("sentiflow_ingest_http_errors_total", "error_kind" => "invalid_reviews")
            .increment(1);
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "error": "invalid_reviews",
                "message": format!(
                    "{} of {total} reviews are invalid; none was accepted",
                    rejected.len()
                ),
                "rejected_total": rejected.len(),
                "rejected": rejected.iter().take(REJECTIONS_LISTED).collect::<Vec<_>>(),
            })),
        )
            .into_response();
    }
    publish(state, valid).await
}

/// A review that passed the checks: its bytes as they will be published.
struct ValidReview {
    event_id: String,
    review_id: String,
    bytes: Vec<u8>,
}

/// Why one review of a request was refused.
#[derive(Debug, Serialize)]
struct RejectedReview {
    /// Position in the request (0 for a single object).
    index: usize,
    /// The dead-letter kind the Kafka path would give it.
    error_kind: &'static str,
    /// The reason.
    message: String,
}

/// Checks every review; the valid ones come back serialised compactly, as they will be published.
fn check(processor: &Processor, reviews: Vec<Value>) -> (Vec<ValidReview>, Vec<RejectedReview>) {
    let source = SourceCoordinate {
        topic: "http".to_owned(),
        partition: 0,
        offset: 0,
    };
    let mut valid = Vec::with_capacity(reviews.len());
    let mut rejected = Vec::new();
    for (index, review) in reviews.into_iter().enumerate() {
        let bytes = serde_json::to_vec(&review).expect("a parsed JSON value serialises");
        match processor.process(Some(&bytes), &source) {
            Ok(clean) => valid.push(ValidReview {
                event_id: clean.source_event_id,
                review_id: clean.review_id,
                bytes,
            }),
            Err(rejection) => rejected.push(RejectedReview {
                index,
                error_kind: rejection.kind(),
                message: rejection.to_string(),
            }),
        }
    }
    (valid, rejected)
}

/// Publishes the checked reviews keyed by review id and waits for every acknowledgement.
async fn publish(state: &ApiState, reviews: Vec<ValidReview>) -> Response {
    let mut deliveries = Vec::with_capacity(reviews.len());
    for review in &reviews {
        match state
            .producer
            .enqueue(
                &state.raw_topic,
                Some(review.review_id.as_bytes()),
                &review.bytes,
                None,
            )
            .await
        {
            Ok(delivery) => deliveries.push(await_delivery(delivery)),
            Err(error) => return broker_unavailable(&error.to_string()),
        }
    }
    let acknowledged = match tokio::time::timeout(PUBLISH_TIMEOUT, join_all(deliveries)).await {
        Ok(acknowledged) => acknowledged,
        Err(_) => {
            return broker_unavailable(&format!(
                "not every review was acknowledged within {} s",
                PUBLISH_TIMEOUT.as_secs()
            ));
        }
    };
    let mut accepted = Vec::with_capacity(reviews.len());
    for (review, acknowledgement) in reviews.into_iter().zip(acknowledged) {
        match acknowledgement {
            Ok((partition, offset)) => accepted.push(Accepted {
                event_id: review.event_id,
                review_id: review.review_id,
                partition,
                offset,
            }),
            Err(error) => return broker_unavailable(&error.to_string()),
        }
    }
    metrics::counter!("sentiflow_ingest_http_reviews_total", "outcome" => "accepted", "error_kind" => "none")
        .increment(accepted.len() as u64);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "accepted": accepted.len(),
            "topic": state.raw_topic,
            "reviews": accepted,
        })),
    )
        .into_response()
}

/// 503 with `Retry-After`: the client sends the same request again (event ids make that safe).
fn broker_unavailable(reason: &str) -> Response {
    tracing::warn!(%reason, "an HTTP request's reviews were not all acknowledged");
    let mut response = json_error(
        SERVICE,
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!(
            "{reason}; send the same request again: reviews that were written are dropped as duplicates by their event id"
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_limit_fits_the_largest_valid_request() {
        let limits = HttpLimits {
            max_reviews: 500,
            max_review_bytes: 65_536,
            max_concurrent: 16,
        };
        let review = "x".repeat(limits.max_review_bytes);
        let body = format!("[{}]", vec![review; limits.max_reviews].join(",\n  "));
        assert!(body.len() <= limits.max_body_bytes());
    }
}
