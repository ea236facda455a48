//! The ingest service: `reviews.raw` → validate → clean → redact PII → dedupe (Redis) → label →
//! `reviews.clean`; anything that cannot be processed goes to `reviews.dlq` with a reason.
//!
//! Guarantee: at-least-once, in order per partition. A batch's offsets are stored only after every clean
//! event and dead letter of that batch was acknowledged by the broker; Redis or broker outages are retried
//! with backoff (the service reports not-ready meanwhile) and never turn into a dropped or unchecked review.
//!
//! # Layout
//! - [`config`]: flags and start-up checks.
//! - [`error`]: rejection kinds (dead-letter `error_kind`, metric label) and fatal errors.
//! - [`pipeline`]: the pure per-message transformation.
//! - [`label`]: source label / rating / weak lexicon labelling.
//! - [`dedupe`]: Redis claims by event id and text fingerprint.
//! - [`service`]: the consume → process → produce → store-offset loop.
//! - [`http`]: `POST /v1/reviews`, reviews over HTTP, checked like the Kafka path, then published.

pub mod config;
pub mod dedupe;
pub mod error;
pub mod http;
pub mod label;
pub mod pipeline;
pub mod service;

pub use config::IngestConfig;
pub use error::{IngestError, Rejection};
pub use service::{IngestStats, Running, run, start};

/// Service name used in metric names, logs and dead letters.
pub const SERVICE: &str = "ingest";
