//! The drift service: `predictions` (+ `labels.feedback`) → count/time windows per serving model version
//! → signals against the version's reference (and a per-prediction class-mix scan) → `drift.reports`; drift confirmed over k windows →
//! one `retrain.requests` event (operator mute, cooldown and a Redis lock permitting); a live
//! `/dashboard` page.
//!
//! Guarantee: at-least-once, in order per partition. A prediction's offset is stored only after every
//! window holding it was reported (and any retrain request it triggered acknowledged), so a restart
//! replays the open windows; alert hygiene state that must survive restarts (mute, cooldown, lock,
//! references, label windows with the label offsets they applied) lives in Redis.
//!
//! # Layout
//! - [`config`]: flags, thresholds and start-up checks.
//! - [`error`]: the error enum (`kind()` is the metric label).
//! - [`stats`]: chi-square, PSI, Jensen-Shannon, two-sample KS, entropy, macro-F1 (checked against
//!   scipy/sklearn values in `tests/fixtures`).
//! - [`window`]: what a window keeps and when it closes.
//! - [`signals`]: the signals, their default thresholds and statuses.
//! - [`sequential`]: the per-prediction class-mix scan (G test over recent suffixes) that closes a
//!   window early on an abrupt shift.
//! - [`monitor`]: per-version windows, references, label join and confirmation (no I/O).
//! - [`hold`]: human labels read before their prediction, held until it is read or cannot come (no I/O).
//! - [`control`]: Redis keys (mute, cooldown, lock, references) and the operator actions.
//! - [`service`]: the consume → window → report → request loop.
//! - [`warm`]: at start, the predictions just before where the group resumes, read again for the
//!   label join only.
//! - [`metrics`]: Prometheus gauges and counters.
//! - [`http`]: `/dashboard` and `/api/reports`.

pub mod config;
pub mod control;
pub mod error;
pub mod hold;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod sequential;
pub mod service;
pub mod signals;
pub mod stats;
pub mod warm;
pub mod window;

pub use config::DriftConfig;
pub use error::DriftError;
pub use service::{DriftStats, Running, run, start};

/// Service name used in metric names, logs and dead letters.
pub const SERVICE: &str = "drift";
