//! The inference service: `reviews.clean` → featurize → ONNX Runtime → `predictions` and, for confident
//! negatives, `alerts.negative`; `POST /v1/predict` over HTTP; zero-downtime model swaps on `models.updates`.
//!
//! Guarantee: at-least-once, in order per partition. A batch's offsets are stored only after every
//! prediction, alert and dead letter of that batch was acknowledged by the broker.
//!
//! # Layout
//! - [`config`]: flags and start-up checks.
//! - [`error`]: fatal errors and per-message rejection kinds (metric labels).
//! - [`model`]: a served model (featurizer + one ORT session per worker), the atomic model slot and
//!   the device probe.
//! - [`score`]: the pure per-batch work: decode, featurize, infer, build the output events.
//! - [`service`]: consume → micro-batch → score on blocking threads → produce → store offsets, with
//!   partition pause/resume as backpressure.
//! - [`swap`]: follows `models.updates` and the registry, loads, verifies, warms and swaps models.
//! - [`http`]: `POST /v1/predict` and `/openapi.json`.
//! - [`batcher`]: dynamic batching of `POST /v1/predict`: requests waiting for a session share a run.

pub mod batcher;
pub mod config;
pub mod error;
pub mod family;
pub mod http;
pub mod model;
pub mod score;
pub mod service;
pub mod swap;

pub use config::InferConfig;
pub use error::InferError;
pub use service::{InferStats, Running, run, start};

/// Service name used in metric names, logs and dead letters.
pub const SERVICE: &str = "infer";
