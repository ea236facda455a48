//! The `sentiflow` command line as a library: local Kafka/Redis servers, corpus readers, replay and `up`,
//! reused by the integration tests.
//!
//! # Layout
//! - [`cli`]: the clap command tree and dispatch.
//! - [`up`]: `sentiflow up`, the whole pipeline on one machine.
//! - [`stack`]: ingest, infer, trainer and drift wired together in-process (`up` and the end-to-end tests).
//! - [`scenario`]: the replay scenarios of `up` (`shift`: airline tweets, then other topics).
//! - [`local`]: real Kafka (KRaft) and Redis processes started from the setup cache.
//! - [`dataset`]: `sentiflow dataset import|list|show` (snapshots for offline training).
//! - [`models`]: `sentiflow models list|show|promote|rollback`.
//! - [`drift`]: `sentiflow drift run|mute|unmute|status` and `sentiflow retrain`.
//! - [`label`]: `sentiflow label` (human labels to `labels.feedback`).
//! - [`dlq`]: `sentiflow dlq summary|list|redrive` (the dead-letter topic for operators).
//! - [`train`]: `sentiflow train` and `sentiflow eval`.
//! - [`corpus`]: corpus files → raw review events.
//! - [`replay`]: publishing records with bounded in-flight sends and a progress bar.
//! - [`bench`]: `sentiflow bench train|infer|pipeline|drift` (each against its baseline, side by side).

pub mod bench;
pub mod cli;
pub mod corpus;
pub mod dataset;
pub mod dlq;
pub mod drift;
pub mod label;
pub mod local;
pub mod models;
pub mod replay;
pub mod scenario;
pub mod stack;
pub mod status;
pub mod train;
pub mod up;
