//! Prometheus metrics of the drift service, all named `sentiflow_drift_*`; signal gauges are labelled by
//! model name, model version and signal name (a fixed set, see [`crate::signals::SIGNAL_NAMES`]); a
//! version replaced by a newer one has its gauges set back to 0 (ok), so no alert keeps firing for a
//! model that no longer serves.
//!
//! - `sentiflow_drift_signal_statistic{model,model_version,signal}`: last value of each signal;
//! - `sentiflow_drift_signal_status{model,model_version,signal}` and
//!   `sentiflow_drift_status{model,model_version}`: 0 ok, 1 warn, 2 drift;
//! - `sentiflow_drift_confirmed{model,model_version}` (0/1), `sentiflow_drift_consecutive_drift_windows`;
//! - `sentiflow_drift_muted` (operator mute, 0/1), `sentiflow_drift_reports_total{status}`;
//! - `sentiflow_drift_retrain_requests_total{requested_by}` (seen on `retrain.requests`),
//!   `sentiflow_drift_retrain_decisions_total{outcome}`, `sentiflow_drift_last_retrain_timestamp_seconds`,
//!   `sentiflow_drift_retrain_lock_releases_total`;
//! - the human-label join (counted where it happens): `sentiflow_drift_labels_joined_total`,
//!   `_labels_unmatched_total`, `_labels_replayed_total`, `_labels_relabelled_total` (also joined),
//!   `_labels_duplicate_total`, `_join_warmup_predictions_total`,
//!   `_labels_held_total`, `_held_labels`, `_labels_released_total{reason}`;
//! - consumer lag: `sentiflow_drift_consumer_lag_messages{topic,partition}` (from common).

use sentiflow_common::events::{DriftReport, DriftStatus, ModelRef};

use crate::signals::SIGNAL_NAMES;

/// 0 ok, 1 warn, 2 drift.
pub fn status_value(status: DriftStatus) -> f64 {
    match status {
        DriftStatus::Ok => 0.0,
        DriftStatus::Warn => 1.0,
        DriftStatus::Drift => 2.0,
    }
}

/// Exports a published report.
pub fn record_report(report: &DriftReport, operator_muted: bool) {
    metrics::counter!("sentiflow_drift_reports_total", "status" => report.status.as_str())
        .increment(1);
    metrics::gauge!("sentiflow_drift_muted").set(if operator_muted { 1.0 } else { 0.0 });
    if report.signals.is_empty() {
        // A reference window: nothing compared yet.
        return;
    }
    let (name, version) = (&report.model.name, &report.model.version);
    for signal in &report.signals {
        metrics::gauge!("sentiflow_drift_signal_statistic", "model" => name.clone(), "model_version" => version.clone(), "signal" => signal.name.clone())
            .set(signal.statistic);
        metrics::gauge!("sentiflow_drift_signal_status", "model" => name.clone(), "model_version" => version.clone(), "signal" => signal.name.clone())
            .set(status_value(signal.status));
    }
    metrics::gauge!("sentiflow_drift_status", "model" => name.clone(), "model_version" => version.clone())
        .set(status_value(report.status));
    metrics::gauge!("sentiflow_drift_confirmed", "model" => name.clone(), "model_version" => version.clone())
        .set(if report.confirmed { 1.0 } else { 0.0 });
    metrics::gauge!("sentiflow_drift_consecutive_drift_windows", "model" => name.clone(), "model_version" => version.clone())
        .set(f64::from(report.consecutive_drift_windows));
}

/// Sets the gauges of a version that a newer one replaced back to ok: its last report would
/// otherwise keep `SentiflowDriftConfirmed` firing for a model nothing serves any more.
pub fn clear_retired(model: &ModelRef) {
    let (name, version) = (&model.name, &model.version);
    for signal in SIGNAL_NAMES {
        metrics::gauge!("sentiflow_drift_signal_status", "model" => name.clone(), "model_version" => version.clone(), "signal" => signal)
            .set(0.0);
    }
    metrics::gauge!("sentiflow_drift_status", "model" => name.clone(), "model_version" => version.clone())
        .set(0.0);
    metrics::gauge!("sentiflow_drift_confirmed", "model" => name.clone(), "model_version" => version.clone())
        .set(0.0);
    metrics::gauge!("sentiflow_drift_consecutive_drift_windows", "model" => name.clone(), "model_version" => version.clone())
        .set(0.0);
}
