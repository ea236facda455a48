//! The trainer: streaming dataset curation (a service), dataset snapshots (Arrow/Parquet + manifest), the
//! model registry (artifacts on disk, metadata and aliases in Redis) and the promotion gate.
//!
//! Guarantee of the curation service: at-least-once, in order per partition. Records of `reviews.clean`
//! and `labels.feedback` are appended to a segment file that is written to a temp file, fsynced and
//! renamed before the offsets it accounts for are stored, so a crash makes the trainer read messages
//! again but never loses one; the copies a re-read creates are removed when a snapshot is built.
//! Every `--compact-after-segments` segments are folded into one (crash-safe: the compacted segment
//! names the ones it replaces), keeping per review only what a snapshot can still depend on.
//! Malformed messages go to `reviews.dlq` with a reason, acknowledged before their offsets count.
//!
//! Guarantee of the retrain loop: at-least-once per `retrain.requests` message, one request at a time, and
//! at most one `promoted`/`rejected` announcement per request id (outcomes are recorded in Redis before
//! they are applied; see [`retrain`]).
//!
//! # Layout
//! - [`config`]: the service's flags and start-up checks.
//! - [`error`]: rejection kinds (dead-letter `error_kind`, metric label) and fatal errors.
//! - [`service`]: the consume → segment → store-offset loop, HTTP endpoints and probes; starts the
//!   retrain loop beside it.
//! - [`retrain`]: `retrain.requests` → dedupe → [`curation::curate_snapshot`] →
//!   [`pipeline::train_and_register`] → gate → promote or reject → `models.updates`.
//! - [`catch_up`]: before a retrain snapshot, curation reads its partitions up to where they ended
//!   when the retrain started.
//! - [`segment`]: durable append-only curation segments recording their offset ranges; the directory
//!   lock under which segments are loaded or replaced.
//! - [`curation`]: segments → deduplicated, label-merged rows → an immutable snapshot; compaction.
//! - [`dataset`]: splits by review-id hash, immutable snapshots with checksummed manifests, label merging.
//! - [`registry`]: artifacts on disk, records and aliases in Redis, `models.updates` events.
//! - [`pipeline`]: one training run: train, evaluate, export, card, register, gate.
//! - [`encoder`]: the same run for the encoder family (frozen MiniLM embeddings + trained head).
//! - [`charts`]: the model card's confusion-matrix and training-curve PNGs (skipped, with the reason
//!   in the card, when the font is missing).
//! - [`gate`]: the promotion rule (macro-F1 within ε of the champion, no class recall drop beyond δ).

pub mod catch_up;
pub mod charts;
pub mod config;
pub mod curation;
pub mod dataset;
pub mod durable;
pub mod encoder;
pub mod error;
pub mod finetune;
pub mod gate;
pub mod pipeline;
pub mod registry;
pub mod retrain;
pub mod segment;
pub mod service;

pub use config::TrainerConfig;
pub use curation::{CurateOptions, CuratedSnapshot, curate_snapshot};
pub use error::{Rejection, TrainerError};
pub use retrain::{OutcomeKind, OutcomeLog, RetrainOutcome};
pub use service::{Running, StatsSnapshot, TrainerStats, run, start};

/// Service name used in metric names, logs and dead letters.
pub const SERVICE: &str = "trainer";
