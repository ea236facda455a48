//! The trainer: dataset snapshots (Arrow/Parquet + manifest), the model registry (artifacts on disk,
//! metadata and aliases in Redis) and the promotion gate.
//!
//! # Layout
//! - [`dataset`]: splits by review-id hash, immutable snapshots with checksummed manifests, label merging.
//! - [`registry`]: artifacts on disk, records and aliases in Redis, `models.updates` events.
//! - [`pipeline`]: one training run: train, evaluate, export, card, register, gate.
//! - [`gate`]: the promotion rule (macro-F1 within ε of the champion, no class recall drop beyond δ).

pub mod dataset;
pub mod gate;
pub mod pipeline;
pub mod registry;
