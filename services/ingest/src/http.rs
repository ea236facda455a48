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
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::join_all;
use rdkafka::message::OwnedHeaders;
use sentiflow_common::api_keys::{ApiKeys, KeyAllowance, document_in_openapi, protect};
use sentiflow_common::events::SourceCoordinate;
use sentiflow_common::http::{InFlight, RequestSlots, json_error, read_body, record_request};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::trace::{self, TraceContext};
use serde::Serialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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
    /// Cancelled when the drain time at shutdown is over: requests still in flight answer 503.
    cut_off: CancellationToken,
    /// Whether `--api-keys-file` guards the API (said in /openapi.json).
    /// The keys guarding the request API, if any (the OpenAPI document declares them).
    api_keys: Option<Arc<ApiKeys>>,
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
    cut_off: CancellationToken,
    api_keys: Option<Arc<ApiKeys>>,
) -> Router {
    let slots = RequestSlots::new(SERVICE, limits.max_concurrent);
    let api_keys_in_force = api_keys.clone();
    Router::new()
        .route(
            "/v1/reviews",
            // The key is checked first: a request without one takes no slot.
            protect(
                post(accept).route_layer(middleware::from_fn(move |request, next| {
                    slots.clone().shed_when_full(request, next)
                })),
                api_keys,
            ),
        )
        .route("/openapi.json", get(openapi))
        .with_state(ApiState {
            processor,
            producer,
            raw_topic,
            limits,
            cut_off,
            api_keys: api_keys_in_force,
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes()))
}

async fn accept(State(state): State<ApiState>, request: Request) -> Response {
    let started = Instant::now();
    let in_flight = request.extensions().get::<InFlight>().cloned();
    let allowance = KeyAllowance::of(&request);
    let trace = RequestTrace::of(request.headers());
    let response = tokio::select! {
        response = async {
            match read_body(SERVICE, request, state.limits.max_body_bytes()).await {
                Ok(body) => accept_body(&state, in_flight, allowance, body, &trace).await,
                Err(response) => response,
            }
        } => response,
        () = state.cut_off.cancelled() => broker_unavailable(
            "ingest is shutting down and its drain time is over"
        ),
    };
    record_request(SERVICE, &response, started);
    response
}

/// The trace the reviews of one request continue: the caller's `traceparent` (a child of it), or a new
/// trace; every review of the request is published with it.
struct RequestTrace {
    context: TraceContext,
    headers: OwnedHeaders,
}

impl RequestTrace {
    fn of(headers: &axum::http::HeaderMap) -> Self {
        let parent = headers
            .get(trace::TRACEPARENT)
            .and_then(|value| TraceContext::parse(value.as_bytes()));
        let context = parent.map_or_else(TraceContext::root, |parent| parent.child());
        // A tracestate belongs to the caller's trace only; repeated headers form one list.
        let state = parent
            .map(|_| {
                headers
                    .get_all(trace::TRACESTATE)
                    .iter()
                    .map(axum::http::HeaderValue::as_bytes)
                    .collect::<Vec<_>>()
                    .join(&b","[..])
            })
            .filter(|state| !state.is_empty() && state.len() <= 8_192);
        Self {
            headers: trace::headers(&context, state.as_deref()),
            context,
        }
    }
}

async fn accept_body(
    state: &ApiState,
    in_flight: Option<InFlight>,
    allowance: Option<KeyAllowance>,
    body: Bytes,
    trace: &RequestTrace,
) -> Response {
    // Parsing and the checks (cleaning and language detection, ~150 µs a review) run off the async
    // workers; the slot is held until publication ends, since the request still holds its bytes.
    let processor = state.processor.clone();
    let limits = state.limits;
    let job_slot = in_flight.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let _in_flight = job_slot;
        parse_and_check(&processor, &body, limits, allowance.as_ref())
    })
    .await;
    let (valid, rejected, total) = match checked {
        Ok(Ok(checked)) => checked,
        Ok(Err(response)) => return *response,
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
    let response = publish(state, valid, trace).await;
    drop(in_flight);
    response
}

/// A review that passed the checks: its bytes exactly as the client sent them.
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

/// What a request's checks found: the valid reviews, the rejected ones, how many there were.
type Checked = (Vec<ValidReview>, Vec<RejectedReview>, usize);

/// Splits the body into its reviews without building them (each one's raw bytes, at most
/// `max_reviews + 1` of them are looked at), charges them to the caller's API key (every review
/// counts, valid or not), then checks each exactly as a message on `reviews.raw` is checked: the
/// same bytes, the same size limit.
fn parse_and_check(
    processor: &Processor,
    body: &[u8],
    limits: HttpLimits,
    allowance: Option<&KeyAllowance>,
) -> Result<Checked, Box<Response>> {
    let invalid_json = |error: &dyn std::fmt::Display| {
        json_error(
            SERVICE,
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {error}"),
        )
    };
    let reviews: Vec<&RawValue> = match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => {
            let mut deserializer = serde_json::Deserializer::from_slice(body);
            let parsed = BoundedReviews(limits.max_reviews).deserialize(&mut deserializer);
            match parsed.and_then(|reviews| deserializer.end().map(|()| reviews)) {
                Ok(reviews) => reviews,
                Err(error) if error.to_string().starts_with(TOO_MANY) => {
                    return Err(Box::new(json_error(
                        SERVICE,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "too_many_reviews",
                        format!(
                            "more than {} reviews; at most {} per request (--http-max-reviews)",
                            limits.max_reviews, limits.max_reviews
                        ),
                    )));
                }
                Err(error) => return Err(Box::new(invalid_json(&error))),
            }
        }
        Some(b'{') => match serde_json::from_slice::<&RawValue>(body) {
            Ok(review) => vec![review],
            Err(error) => return Err(Box::new(invalid_json(&error))),
        },
        _ => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => {
                return Err(Box::new(json_error(
                    SERVICE,
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "expected one review object or an array of them",
                )));
            }
            Err(error) => return Err(Box::new(invalid_json(&error))),
        },
    };
    if reviews.is_empty() {
        return Err(Box::new(json_error(
            SERVICE,
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_reviews",
            "the array holds no review",
        )));
    }
    // Before the checks (~150 µs a review), so a key over its rate costs no more than the split.
    if let Some(allowance) = allowance {
        // On a blocking thread (see `accept_body`): the shared bucket's Redis call is awaited here.
        tokio::runtime::Handle::current().block_on(allowance.charge(reviews.len()))?;
    }
    let source = SourceCoordinate {
        topic: "http".to_owned(),
        partition: 0,
        offset: 0,
    };
    let total = reviews.len();
    let mut valid = Vec::with_capacity(total);
    let mut rejected = Vec::new();
    for (index, review) in reviews.into_iter().enumerate() {
        let bytes = review.get().as_bytes();
        match processor.process(Some(bytes), &source) {
            Ok(clean) => valid.push(ValidReview {
                event_id: clean.source_event_id,
                review_id: clean.review_id,
                bytes: bytes.to_vec(),
            }),
            Err(rejection) => rejected.push(RejectedReview {
                index,
                error_kind: rejection.kind(),
                message: rejection.to_string(),
            }),
        }
    }
    Ok((valid, rejected, total))
}

/// The start of the error a [`BoundedReviews`] gives when the array is longer than its bound.
const TOO_MANY: &str = "too many reviews";

/// A JSON array of raw values that stops reading after `.0` of them (plus one, to know it was more).
struct BoundedReviews(usize);

impl<'de> DeserializeSeed<'de> for BoundedReviews {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedReviews {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an array of reviews")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let mut reviews = Vec::with_capacity(self.0.min(1024));
        while let Some(review) = items.next_element::<&'de RawValue>()? {
            if reviews.len() == self.0 {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            reviews.push(review);
        }
        Ok(reviews)
    }
}

/// Publishes the checked reviews keyed by review id and waits for every acknowledgement, all within
/// [`PUBLISH_TIMEOUT`] (a full producer queue waits inside it too).
async fn publish(state: &ApiState, reviews: Vec<ValidReview>, trace: &RequestTrace) -> Response {
    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        let mut deliveries = Vec::with_capacity(reviews.len());
        for review in &reviews {
            let delivery = state
                .producer
                .enqueue(
                    &state.raw_topic,
                    Some(review.review_id.as_bytes()),
                    &review.bytes,
                    Some(trace.headers.clone()),
                )
                .await
                .map_err(|error| error.to_string())?;
            deliveries.push(await_delivery(delivery));
        }
        join_all(deliveries)
            .await
            .into_iter()
            .collect::<Result<Vec<(i32, i64)>, _>>()
            .map_err(|error| error.to_string())
    })
    .await;
    let places = match sent {
        Ok(Ok(places)) => places,
        Ok(Err(error)) => return broker_unavailable(&error),
        Err(_) => {
            return broker_unavailable(&format!(
                "not every review was acknowledged within {} s",
                PUBLISH_TIMEOUT.as_secs()
            ));
        }
    };
    let accepted: Vec<Accepted> = reviews
        .into_iter()
        .zip(places)
        .map(|(review, (partition, offset))| Accepted {
            event_id: review.event_id,
            review_id: review.review_id,
            partition,
            offset,
        })
        .collect();
    metrics::counter!("sentiflow_ingest_http_reviews_total", "outcome" => "accepted", "error_kind" => "none")
        .increment(accepted.len() as u64);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "accepted": accepted.len(),
            "topic": state.raw_topic,
            "trace_id": trace.context.trace_id(),
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

async fn openapi(State(state): State<ApiState>) -> axum::Json<Value> {
    let mut document = openapi_document(state.limits);
    if let Some(keys) = &state.api_keys {
        document_in_openapi(&mut document, "/v1/reviews", keys, state.limits.max_reviews);
    }
    axum::Json(document)
}

/// The OpenAPI 3.1 description of ingest's HTTP API.
pub fn openapi_document(limits: HttpLimits) -> Value {
    let error_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sentiflow ingest",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Reviews over HTTP: checked like messages on reviews.raw, then published to it."
        },
        "paths": {
            "/v1/reviews": {
                "post": {
                    "summary": "Publish reviews to reviews.raw (all or none pass the checks)",
                    "parameters": [
                        {"name": "traceparent", "in": "header", "required": false, "schema": {"type": "string"}, "description": "W3C Trace Context: the reviews continue this trace through clean events, predictions, alerts and dead letters (a new trace without it)"},
                        {"name": "tracestate", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Passed on with a valid traceparent"}
                    ],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "oneOf": [
                            {"$ref": "https://sentiflow.dev/schemas/review.schema.json"},
                            {"type": "array", "minItems": 1, "maxItems": limits.max_reviews, "items": {"$ref": "https://sentiflow.dev/schemas/review.schema.json"}}
                        ],
                        "description": format!("One review or an array; each at most {} bytes as sent (whitespace counts); the body at most {} bytes.", limits.max_review_bytes, limits.max_body_bytes())
                    }}}},
                    "responses": {
                        "202": {"description": "Every review acknowledged by the broker", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                        "400": error_response("invalid_json, invalid_body (not one object or an array) or unreadable_body"),
                        "408": error_response("body_timeout: the body did not arrive within 10 s of the headers"),
                        "413": error_response("body_too_large"),
                        "422": {"description": "invalid_reviews (nothing published; `rejected` names each: index, error_kind, message), no_reviews or too_many_reviews", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                        "503": error_response("broker_unavailable: not every review was acknowledged; send the same request again (Retry-After: 5); overloaded: more than --http-max-concurrent requests in flight (Retry-After: 1)")
                    }
                }
            },
            "/healthz": {"get": {"summary": "Liveness and details", "responses": {"200": {"description": "Health snapshot"}}}},
            "/readyz": {"get": {"summary": "Readiness: 200 when Kafka answers, else 503; with Redis down still 200, status degraded (reviews are accepted, the stream waits)", "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition format"}}}}
        },
        "components": {
            "schemas": {
                "Accepted": {
                    "type": "object",
                    "required": ["accepted", "topic", "trace_id", "reviews"],
                    "properties": {
                        "accepted": {"type": "integer"},
                        "topic": {"type": "string"},
                        "trace_id": {"type": "string", "description": "The W3C trace id every review of the request carries (the caller's, from traceparent, or a new one)"},
                        "reviews": {"type": "array", "items": {
                            "type": "object",
                            "required": ["event_id", "review_id", "partition", "offset"],
                            "properties": {"event_id": {"type": "string"}, "review_id": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}
                        }}
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "Stable error kind (also the `error_kind` label of sentiflow_ingest_http_errors_total)."},
                        "message": {"type": "string"},
                        "rejected_total": {"type": "integer"},
                        "rejected": {"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "error_kind": {"type": "string"}, "message": {"type": "string"}}}}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor() -> Processor {
        let lexicon = sentiflow_model::lexicon::Lexicon::parse(
            "great\t3.1\t0.8\t[3, 3]\nterrible\t-2.5\t0.5\t[-3, -2]\n",
        )
        .unwrap();
        Processor {
            max_payload_bytes: 600,
            author_hash_key: b"unit-test-author-key".to_vec(),
            lang_allow: Vec::new(),
            lang_policy: crate::config::LangPolicy::Mark,
            labeller: crate::label::Labeller::new(lexicon, 0.5),
        }
    }

    const REVIEW: &str = r#"{"schema_version":1,"event_id":"e-1","event_time":"2026-12-06T10:00:00Z","review_id":"r-1","source":"app","author":"a","text":"a great trip","created_at":"2026-12-06T09:00:00Z"}"#;

    fn outcome(body: &str) -> Result<(usize, usize), (u16, String)> {
        let limits = HttpLimits {
            max_reviews: 3,
            max_review_bytes: 600,
            max_concurrent: 1,
        };
        match parse_and_check(&processor(), body.as_bytes(), limits, None) {
            Ok((valid, rejected, _)) => Ok((valid.len(), rejected.len())),
            Err(response) => Err((
                response.status().as_u16(),
                response
                    .headers()
                    .get("content-type")
                    .map(|value| value.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
            )),
        }
    }

    #[test]
    fn bodies_are_split_checked_and_refused_with_the_right_status() {
        assert_eq!(outcome(REVIEW), Ok((1, 0)));
        assert_eq!(outcome(&format!(" \n[{REVIEW},\n {REVIEW}]\n")), Ok((2, 0)));
        let escaped = REVIEW.replace("a great trip", "a great trip \\u00e9\\n");
        assert_eq!(outcome(&format!("[{escaped}]")), Ok((1, 0)));
        let too_long = REVIEW.replace("a great trip", &"long ".repeat(100));
        assert_eq!(outcome(&format!("[{REVIEW},{too_long}]")), Ok((1, 1)));
        let status = |body: &str| outcome(body).unwrap_err().0;
        assert_eq!(status("[1, 2"), 400);
        assert_eq!(status(&format!("[{REVIEW},]")), 400);
        assert_eq!(status("\"text\""), 400);
        assert_eq!(status("42"), 400);
        assert_eq!(status(""), 400);
        assert_eq!(status("[]"), 422);
        // More than the bound: refused before the rest is even read (it is not JSON).
        assert_eq!(
            status(&format!("[{REVIEW},{REVIEW},{REVIEW},{REVIEW}, garbage")),
            422
        );
    }

    #[test]
    fn openapi_document_states_the_configured_limits() {
        let document = openapi_document(HttpLimits {
            max_reviews: 7,
            max_review_bytes: 300,
            max_concurrent: 1,
        });
        let post = &document["paths"]["/v1/reviews"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["oneOf"][1]["maxItems"],
            7
        );
        for status in ["202", "400", "408", "413", "422", "503"] {
            assert!(
                post["responses"][status].is_object(),
                "{status} is documented"
            );
        }
    }

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
