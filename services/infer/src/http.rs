//! The synchronous API: `POST /v1/predict` scores texts with the served model; `/openapi.json` describes
//! it. Every bad request gets a 4xx with a JSON body `{"error": <kind>, "message": …}`, never a panic;
//! requests beyond `--http-max-concurrent` are shed with 503 `overloaded` before their body is read.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sentiflow_common::api_keys::{ApiKeys, KeyAllowance, document_in_openapi, protect};
use sentiflow_common::http::{InFlight, RequestSlots, json_error, read_body, record_request};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::SERVICE;
use crate::batcher::{BatchError, Held, PredictBatcher};
use crate::model::{ModelSlot, ServingModel};
use crate::score::probabilities;

/// Limits on one request, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most texts per request.
    pub max_texts: usize,
    /// Longest text in bytes.
    pub max_text_bytes: usize,
    /// Most requests in flight (being read, waiting for a session or scored).
    pub max_concurrent: usize,
}

impl HttpLimits {
    /// Largest body that can hold `max_texts` texts of `max_text_bytes`, even fully `\uXXXX`-escaped.
    pub fn max_body_bytes(&self) -> usize {
        self.max_texts
            .saturating_mul(self.max_text_bytes.saturating_mul(6).saturating_add(4))
            .saturating_add(1024)
    }
}

#[derive(Clone)]
struct HttpState {
    slot: ModelSlot,
    limits: HttpLimits,
    /// The keys guarding the request API, if any (the OpenAPI document declares them).
    api_keys: Option<Arc<ApiKeys>>,
    /// Where requests wait for a session and are merged into runs.
    batcher: PredictBatcher<ServingModel>,
}

/// The body of `POST /v1/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Texts to score (raw; they are normalised exactly as the Kafka path normalises them).
    pub texts: Vec<String>,
}

/// The length of a body's `texts` array, read without keeping any element (other fields skipped).
#[derive(Debug, Deserialize)]
struct TextsCount {
    #[serde(default, deserialize_with = "count_elements")]
    texts: Option<usize>,
}

fn count_elements<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    struct Counter;
    impl<'de> serde::de::Visitor<'de> for Counter {
        type Value = Option<usize>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("an array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut count = 0usize;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                count += 1;
            }
            Ok(Some(count))
        }
    }
    deserializer.deserialize_seq(Counter)
}

fn too_many_texts(count: usize, max_texts: usize) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_texts",
        format!("{count} texts; at most {max_texts} per request"),
    )
}

/// One scored text.
#[derive(Debug, Serialize, Deserialize)]
pub struct TextPrediction {
    /// Predicted class.
    pub label: String,
    /// Probability of the predicted class.
    pub confidence: f64,
    /// Probability per class.
    pub probabilities: sentiflow_common::events::Probabilities,
}

/// The answer of `POST /v1/predict`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PredictResponse {
    /// The model version that scored every text of the request.
    pub model: sentiflow_common::events::ModelRef,
    /// The device that really ran it.
    pub device: sentiflow_common::events::Device,
    /// One entry per text, in request order.
    pub predictions: Vec<TextPrediction>,
    /// Model run time, milliseconds (of the run this request was scored in).
    pub inference_ms: f64,
    /// Requests scored in that run (more than 1: requests that waited were merged).
    pub run_requests: usize,
    /// Texts scored in that run.
    pub run_texts: usize,
}

/// The routes merged into the service's HTTP server.
pub fn router(
    slot: ModelSlot,
    limits: HttpLimits,
    api_keys: Option<Arc<ApiKeys>>,
    batcher: PredictBatcher<ServingModel>,
) -> Router {
    let slots = RequestSlots::new(SERVICE, limits.max_concurrent);
    let api_keys_in_force = api_keys.clone();
    Router::new()
        .route(
            "/v1/predict",
            // The key is checked first: a request without one takes no slot.
            protect(
                post(predict).route_layer(middleware::from_fn(move |request, next| {
                    slots.clone().shed_when_full(request, next)
                })),
                api_keys,
            ),
        )
        .route("/openapi.json", get(openapi))
        .with_state(HttpState {
            slot,
            limits,
            api_keys: api_keys_in_force,
            batcher,
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes()))
}

/// A JSON error response, counted by kind.
fn error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    json_error(SERVICE, status, kind, message)
}

/// How long a request's body may take to arrive once its headers have (see the common helper).
pub const BODY_READ_TIMEOUT: std::time::Duration = sentiflow_common::http::BODY_READ_TIMEOUT;

async fn predict(State(state): State<HttpState>, request: Request) -> Response {
    let started = Instant::now();
    let in_flight = request.extensions().get::<InFlight>().cloned();
    let allowance = KeyAllowance::of(&request);
    let response = match read_body(SERVICE, request, state.limits.max_body_bytes()).await {
        Ok(body) => predict_inner(&state, in_flight, allowance, &body).await,
        Err(response) => response,
    };
    record_request(SERVICE, &response, started);
    response
}

async fn predict_inner(
    state: &HttpState,
    in_flight: Option<InFlight>,
    allowance: Option<KeyAllowance>,
    body: &[u8],
) -> Response {
    let limits = state.limits;
    // Syntax first (400), without building anything: a body of 7 MB of `[0,0,…]` parsed into a
    // `serde_json::Value` is ~3.8 million 32-byte values: over 100 MB.
    if let Err(parse_error) = serde_json::from_slice::<IgnoredAny>(body) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {parse_error}"),
        );
    }
    // Too many texts are refused before any is copied out of the body.
    if let Ok(TextsCount { texts: Some(count) }) = serde_json::from_slice::<TextsCount>(body)
        && count > limits.max_texts
    {
        return too_many_texts(count, limits.max_texts);
    }
    let request: PredictRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        // What skipping did not check (a string's escapes and UTF-8) is still bad JSON.
        Err(parse_error) if parse_error.is_syntax() || parse_error.is_eof() => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {parse_error}"),
            );
        }
        Err(shape_error) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("expected {{\"texts\": [\"…\", …]}}: {shape_error}"),
            );
        }
    };
    if request.texts.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_texts",
            "`texts` must hold at least one text",
        );
    }
    if request.texts.len() > limits.max_texts {
        return too_many_texts(request.texts.len(), limits.max_texts);
    }
    if let Some((index, text)) = request
        .texts
        .iter()
        .enumerate()
        .find(|(_, text)| text.len() > limits.max_text_bytes)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "text_too_long",
            format!(
                "text {index} has {} bytes; at most {} per text",
                text.len(),
                limits.max_text_bytes
            ),
        );
    }
    let Some(model) = state.slot.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model is serving yet; see /healthz",
        );
    };
    // Only a request that will be scored is charged to its key.
    if let Some(allowance) = allowance
        && let Err(refused) = allowance.charge(request.texts.len()).await
    {
        return *refused;
    }
    // The request keeps its slot until its run is over, even if the client goes away meanwhile.
    let held = in_flight.map(|slot| Box::new(slot) as Held);
    let scored = state
        .batcher
        .score(Arc::clone(&model), request.texts, held)
        .await;
    let scored = match scored {
        Ok(scored) => scored,
        Err(failure) => {
            tracing::error!(%failure, "inference failed on an HTTP request");
            let message = match failure {
                BatchError::Model(message) => message,
                BatchError::Lost => failure.to_string(),
            };
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference_failed",
                message,
            );
        }
    };
    metrics::histogram!("sentiflow_infer_http_texts_rows").record(scored.rows.len() as f64);
    let predictions = scored
        .rows
        .into_iter()
        .map(|row| {
            let probabilities = probabilities(row);
            let (label, confidence) = probabilities.argmax();
            TextPrediction {
                label: label.as_str().to_owned(),
                confidence,
                probabilities,
            }
        })
        .collect();
    Json(PredictResponse {
        model: model.model_ref().clone(),
        device: model.event_device(),
        predictions,
        inference_ms: scored.elapsed.as_secs_f64() * 1000.0,
        run_requests: scored.run_requests,
        run_texts: scored.run_texts,
    })
    .into_response()
}

async fn openapi(State(state): State<HttpState>) -> Json<Value> {
    let mut document = openapi_document(state.limits);
    if let Some(keys) = &state.api_keys {
        document_in_openapi(&mut document, "/v1/predict", keys, state.limits.max_texts);
    }
    Json(document)
}

/// The OpenAPI 3.1 description of the service's HTTP API.
pub fn openapi_document(limits: HttpLimits) -> Value {
    let error_body = json!({
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "Stable error kind (also the `error_kind` label of sentiflow_infer_http_errors_total)."},
            "message": {"type": "string"}
        }
    });
    let error_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sentiflow infer",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sentiment predictions (negative / neutral / positive) from the served champion model."
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "summary": "Score texts with the served model",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                    "responses": {
                        "200": {"description": "One prediction per text, in order", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                        "400": error_response("invalid_json: the body is not JSON; unreadable_body: the body could not be read"),
                        "408": error_response("body_timeout: the body did not arrive within 10 s of the headers"),
                        "413": error_response("body_too_large"),
                        "422": error_response("invalid_request, empty_texts, too_many_texts or text_too_long"),
                        "500": error_response("inference_failed: the model failed on this request (logged)"),
                        "503": error_response("no_model: no model is serving yet; overloaded: more than --http-max-concurrent requests in flight (Retry-After: 1)")
                    }
                }
            },
            "/healthz": {"get": {"summary": "Liveness and details: checks, device, served model", "responses": {"200": {"description": "Health snapshot"}}}},
            "/readyz": {"get": {"summary": "Readiness: 200 when a model serves, else 503; with Kafka or Redis down still 200, status degraded (predictions are answered, the stream and model updates wait)", "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition format"}}}}
        },
        "components": {
            "schemas": {
                "PredictRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["texts"],
                    "properties": {
                        "texts": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": limits.max_texts,
                            "items": {"type": "string", "maxLength": limits.max_text_bytes, "description": "Raw text; at most this many bytes of UTF-8."}
                        }
                    }
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["model", "device", "predictions", "inference_ms", "run_requests", "run_texts"],
                    "properties": {
                        "model": {"type": "object", "required": ["name", "version", "family"], "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "family": {"type": "string", "enum": ["hashed", "encoder"]}}},
                        "device": {"type": "string", "enum": ["cpu", "cuda"], "description": "The device that really ran the model."},
                        "predictions": {"type": "array", "items": {
                            "type": "object",
                            "required": ["label", "confidence", "probabilities"],
                            "properties": {
                                "label": {"type": "string", "enum": ["negative", "neutral", "positive"]},
                                "confidence": {"type": "number"},
                                "probabilities": {"type": "object", "required": ["negative", "neutral", "positive"], "properties": {"negative": {"type": "number"}, "neutral": {"type": "number"}, "positive": {"type": "number"}}}
                            }
                        }},
                        "inference_ms": {"type": "number", "description": "Model time of the run this request was scored in."},
                        "run_requests": {"type": "integer", "minimum": 1, "description": "Requests scored in that run: more than 1 when requests that waited for a session were merged (--http-batch-texts)."},
                        "run_texts": {"type": "integer", "minimum": 1, "description": "Texts scored in that run."}
                    }
                },
                "Error": error_body
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limit_fits_the_largest_valid_request_even_fully_escaped() {
        let limits = HttpLimits {
            max_texts: 256,
            max_text_bytes: 5_000,
            max_concurrent: 1,
        };
        let escaped_text = "\\u00e9".repeat(5_000 / 2);
        let largest = serde_json::to_vec(&serde_json::json!({"texts": vec![escaped_text; 256]}))
            .expect("serialises");
        assert!(largest.len() <= limits.max_body_bytes());
    }

    #[test]
    fn openapi_document_states_the_configured_limits() {
        let document = openapi_document(HttpLimits {
            max_texts: 7,
            max_text_bytes: 99,
            max_concurrent: 1,
        });
        let texts = &document["components"]["schemas"]["PredictRequest"]["properties"]["texts"];
        assert_eq!(texts["maxItems"], 7);
        assert_eq!(texts["items"]["maxLength"], 99);
        let responses = &document["paths"]["/v1/predict"]["post"]["responses"];
        for status in ["200", "400", "413", "422", "500", "503"] {
            assert!(responses[status].is_object(), "{status} is documented");
        }
    }
}
