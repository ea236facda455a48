//! Plumbing of the services' request APIs (`infer`'s `POST /v1/predict`, `ingest`'s `POST /v1/reviews`):
//! JSON error bodies counted by kind, load shedding before a body is read, and a bounded body read.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How long a request's body may take to arrive once its headers have: a client that never sends it
/// would otherwise hold an in-flight slot (and block a graceful shutdown) for good.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON error response `{"error": <kind>, "message": …}`, counted in
/// `sentiflow_<service>_http_errors_total{error_kind}`.
pub fn json_error(
    service: &'static str,
    status: StatusCode,
    kind: &'static str,
    message: impl Into<String>,
) -> Response {
    metrics::counter!(format!("sentiflow_{service}_http_errors_total"), "error_kind" => kind)
        .increment(1);
    (
        status,
        Json(json!({"error": kind, "message": message.into()})),
    )
        .into_response()
}

/// The request slots of one API: at most `max_concurrent` requests in flight (being read, waiting or
/// working); one more is answered 503 `overloaded` with `Retry-After: 1` before its body is read.
#[derive(Clone, Debug)]
pub struct RequestSlots {
    semaphore: Arc<tokio::sync::Semaphore>,
    service: &'static str,
}

/// A taken slot, in the request's extensions: clone it into work that outlives the request (a
/// blocking job goes on when the client has gone) so the slot is held until that work ends.
pub type InFlight = Arc<Slot>;

/// One taken slot; dropping the last handle gives it back and lowers
/// `sentiflow_<service>_http_in_flight_requests`.
#[derive(Debug)]
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    service: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(format!(
            "sentiflow_{}_http_in_flight_requests",
            self.service
        ))
        .decrement(1.0);
    }
}

impl RequestSlots {
    /// `max_concurrent` slots for `service`'s API.
    pub fn new(service: &'static str, max_concurrent: usize) -> Self {
        Self {
            semaphore: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            service,
        }
    }

    /// Middleware (`axum::middleware::from_fn`): takes a slot for the request or sheds it at once —
    /// waiting would let a burst pile up bodies and blocked threads without bound.
    pub async fn shed_when_full(self, mut request: Request, next: Next) -> Response {
        match self.semaphore.try_acquire_owned() {
            Ok(permit) => {
                metrics::gauge!(format!(
                    "sentiflow_{}_http_in_flight_requests",
                    self.service
                ))
                .increment(1.0);
                let slot: InFlight = Arc::new(Slot {
                    _permit: permit,
                    service: self.service,
                });
                request.extensions_mut().insert(slot);
                next.run(request).await
            }
            Err(_) => {
                metrics::counter!(format!("sentiflow_{}_http_requests_total", self.service), "status" => "503")
                    .increment(1);
                let mut response = json_error(
                    self.service,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight (--http-max-concurrent); retry shortly",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                response
            }
        }
    }
}

/// Reads the whole body within [`BODY_READ_TIMEOUT`]; a late, unreadable or too large body (the
/// router's `DefaultBodyLimit`, `limit_bytes` here only for the message) is answered with its JSON error.
///
/// # Errors
/// The response to send instead: 408 `body_timeout`, 413 `body_too_large` or 400 `unreadable_body`.
pub async fn read_body(
    service: &'static str,
    request: Request,
    limit_bytes: usize,
) -> Result<Bytes, Response> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(rejection)) => {
            let status = rejection.status();
            let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "unreadable_body"
            };
            Err(json_error(
                service,
                status,
                kind,
                format!(
                    "{} (the body limit is {limit_bytes} bytes)",
                    rejection.body_text()
                ),
            ))
        }
        Err(_) => Err(json_error(
            service,
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Counts a finished request in `sentiflow_<service>_http_requests_total{status}` and its time in
/// `sentiflow_<service>_http_request_seconds`.
pub fn record_request(service: &'static str, response: &Response, started: std::time::Instant) {
    metrics::counter!(format!("sentiflow_{service}_http_requests_total"), "status" => response.status().as_u16().to_string())
        .increment(1);
    metrics::histogram!(format!("sentiflow_{service}_http_request_seconds"))
        .record(started.elapsed().as_secs_f64());
}
