//! Shared plumbing of the sentiflow services, written once so every service behaves the same way.
//!
//! Guarantees this crate gives its users: consumers store an offset only when told to (after every
//! output was acknowledged), producers are idempotent and rebuilt after fatal errors, permanent failures
//! become dead letters with a reason, and secrets never reach logs.
//!
//! # Layout
//! - [`config`]: clap argument groups (Kafka with security pass-through, Redis, telemetry), secrets.
//! - [`catalogue`]: the topic catalogue (`schemas/topics.json`) and physical topic names.
//! - [`events`]: Rust types of every event in `schemas/`.
//! - [`schema`]: JSON Schema validation of events against `schemas/`.
//! - [`kafka`]: at-least-once consumer, resilient idempotent producer, topic creation, lag metrics.
//! - [`dlq`]: the dead-letter helper.
//! - [`store`]: Redis with reconnection and a readiness probe.
//! - [`health`]: liveness/readiness state behind `/healthz` and `/readyz`.
//! - [`telemetry`]: tracing, Prometheus metrics and the HTTP server.
//! - [`http`]: the request APIs' JSON errors, load shedding and bounded body reads.
//! - [`api_keys`]: `--api-keys-file`, bearer-key checks on the request APIs, rotated without restart,
//!   and a rate per key (per instance, or shared by the replicas through Redis: `shared_buckets`).
//! - [`hash`]: stable 64-bit hashes (FNV-1a, MurmurHash3's finaliser).
//! - [`retry`]: exponential backoff for transient failures.
//! - [`trace`]: W3C `traceparent` carried from message to message (and from `POST /v1/reviews`).
//! - [`shutdown`]: SIGINT/SIGTERM handling.
//! - [`cache`]: where the setup put Kafka jars, ONNX Runtime, corpora and lexicons.

pub mod api_keys;
pub mod cache;
pub mod catalogue;
pub mod config;
pub mod dlq;
pub mod events;
pub mod hash;
pub mod health;
pub mod http;
pub mod kafka;
pub mod retry;
pub mod schema;
mod shared_buckets;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod trace;

pub use tokio_util::sync::CancellationToken;
