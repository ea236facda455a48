//! Configuration of the drift service: every flag is also a `SENTIFLOW_DRIFT_…` environment variable;
//! impossible combinations (confirmation longer than the history kept, zero-sized windows) are refused
//! at start-up.

use std::collections::BTreeMap;
use std::str::FromStr;

use clap::Parser;
use sentiflow_common::config::{KafkaArgs, RedisArgs, TelemetryArgs};

use crate::signals::{SIGNAL_NAMES, default_thresholds};

/// Warn and drift thresholds of one signal (statistic at or above `warn` warns, at or above `drift`
/// is drift).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// Warn at or above this statistic.
    pub warn: f64,
    /// Drift at or above this statistic.
    pub drift: f64,
}

/// `--threshold NAME=WARN,DRIFT`: overrides the thresholds of one signal.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdOverride {
    /// Signal name (one of [`SIGNAL_NAMES`]).
    pub signal: String,
    /// The new thresholds.
    pub threshold: Threshold,
}

impl FromStr for ThresholdOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (signal, values) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=WARN,DRIFT, got {s:?}"))?;
        if !SIGNAL_NAMES.contains(&signal) {
            return Err(format!(
                "unknown signal {signal:?} (expected one of: {})",
                SIGNAL_NAMES.join(", ")
            ));
        }
        let (warn, drift) = values
            .split_once(',')
            .ok_or_else(|| format!("expected WARN,DRIFT after '=', got {values:?}"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|e| format!("{v:?}: {e}"))
                .and_then(|v| {
                    if v.is_finite() {
                        Ok(v)
                    } else {
                        Err("thresholds must be finite".to_owned())
                    }
                })
        };
        let threshold = Threshold {
            warn: parse(warn)?,
            drift: parse(drift)?,
        };
        if threshold.warn > threshold.drift {
            return Err(format!("{signal}: warn must not exceed drift"));
        }
        Ok(Self {
            signal: signal.to_owned(),
            threshold,
        })
    }
}

/// `predictions` (+ `labels.feedback`) → windows per model version → signals → `drift.reports`; confirmed
/// drift → `retrain.requests`; `/dashboard` and `/api/reports` over HTTP.
#[derive(Parser, Clone, Debug)]
#[command(name = "sentiflow-drift", version, about, long_about = None)]
pub struct DriftConfig {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis connection (references, mute, cooldown and the retrain lock).
    #[command(flatten)]
    pub redis: RedisArgs,

    /// HTTP endpoints, logs and shutdown.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Consumer group id. Windows are kept per process: run one drift replica per group.
    #[arg(
        long,
        env = "SENTIFLOW_DRIFT_GROUP_ID",
        default_value = "sentiflow-drift"
    )]
    pub group_id: String,

    /// A window closes after this many predictions of one model version (the signals' thresholds sit
    /// well above the sampling noise of 500-prediction windows; `sentiflow bench drift` measures it)…
    #[arg(long, env = "SENTIFLOW_DRIFT_WINDOW_EVENTS", default_value_t = 500)]
    pub window_events: u64,

    /// …or, when non-zero, once its predictions span this many seconds of event time, or this many
    /// seconds passed since its first prediction on a quiet stream (a time window; it needs at least
    /// `--min-window-events` predictions, else it keeps growing).
    #[arg(long, env = "SENTIFLOW_DRIFT_WINDOW_SECS", default_value_t = 0)]
    pub window_secs: u64,

    /// Fewest predictions a time window needs before it may close.
    #[arg(long, env = "SENTIFLOW_DRIFT_MIN_WINDOW_EVENTS", default_value_t = 200)]
    pub min_window_events: u64,

    /// How many first windows of a model version form its reference (when Redis holds none for it).
    /// The reference is then stored in Redis (`<prefix>:drift:reference:<name>:<version>`), so a
    /// restart or a second deployment compares against the same one; a trainer may write it ahead.
    /// Two windows of 500 make a reference of 1,000 predictions.
    #[arg(long, env = "SENTIFLOW_DRIFT_REFERENCE_WINDOWS", default_value_t = 2)]
    pub reference_windows: u32,

    /// Drift is confirmed after this many windows with status drift with no ok window between them (a
    /// warn window pauses the count, an ok window resets it). 2 windows of 500: a shift must persist over
    /// 1,000 predictions, and an abrupt one is confirmed within 2,000.
    #[arg(long, env = "SENTIFLOW_DRIFT_CONFIRM_WINDOWS", default_value_t = 2)]
    pub confirm_windows: u32,

    /// The sequential class-mix scan: after every prediction, a G test of the class mix of the last
    /// `--scan-min-events` … `--scan-max-events` predictions (suffix lengths growing by half) against the
    /// reference; reaching the drift threshold of signal `class_mix_scan_g` closes the window early
    /// (kind `scan`) with status drift and restarts the scan, so confirmation still needs k windows on
    /// separate evidence. `false` leaves windows to their count and time bounds.
    #[arg(long, env = "SENTIFLOW_DRIFT_SCAN", default_value_t = true, action = clap::ArgAction::Set)]
    pub scan: bool,

    /// Shortest suffix the scan tests, predictions.
    #[arg(long, env = "SENTIFLOW_DRIFT_SCAN_MIN_EVENTS", default_value_t = 30)]
    pub scan_min_events: usize,

    /// Longest suffix the scan tests, predictions (a mild shift needs a long one).
    #[arg(long, env = "SENTIFLOW_DRIFT_SCAN_MAX_EVENTS", default_value_t = 4000)]
    pub scan_max_events: usize,

    /// The scan's reference starts as the version's reference and takes in the class counts of every
    /// window that closes ok, up to this many predictions (then scaled to it, keeping the mix): the
    /// longer the reference, the milder the shift the scan can tell from sampling noise.
    #[arg(
        long,
        env = "SENTIFLOW_DRIFT_SCAN_REFERENCE_MAX_EVENTS",
        default_value_t = 20_000
    )]
    pub scan_reference_max_events: u64,

    /// …and only once the run of drift (and warn) windows spans this many predictions from its first
    /// drift window. Scan windows can be a few dozen predictions long: this keeps a retrain request
    /// for a shift that has lasted (and whose data has arrived), while drift reports still come as
    /// soon as it is noticed. 1,000 is the span two 500-prediction windows had.
    #[arg(
        long,
        env = "SENTIFLOW_DRIFT_CONFIRM_MIN_EVENTS",
        default_value_t = 1000
    )]
    pub confirm_min_events: u64,

    /// Confirmed drift clears after this many consecutive ok windows (hysteresis).
    #[arg(long, env = "SENTIFLOW_DRIFT_CLEAR_WINDOWS", default_value_t = 2)]
    pub clear_windows: u32,

    /// No new drift-triggered retrain request for a model for this long after one, seconds.
    #[arg(long, env = "SENTIFLOW_DRIFT_COOLDOWN_SECS", default_value_t = 3600)]
    pub cooldown_secs: u64,

    /// Time to live of the retrain lock (one retrain at a time per model name), seconds; a `promoted`
    /// or `rejected` event on `models.updates` releases it earlier.
    #[arg(long, env = "SENTIFLOW_DRIFT_LOCK_TTL_SECS", default_value_t = 7200)]
    pub lock_ttl_secs: u64,

    /// Labelled predictions (from `labels.feedback`) in the rolling macro-F1 window, one per review
    /// (a label repeated for a review in the window is not counted twice; a different one replaces
    /// it); the first full window of a version is its baseline.
    #[arg(long, env = "SENTIFLOW_DRIFT_FEEDBACK_WINDOW", default_value_t = 200)]
    pub feedback_window: usize,

    /// Predictions remembered to join late human labels to (oldest forgotten first); at start, up to
    /// this many (split over the partitions) from just before where the group resumes are read again
    /// to refill it.
    #[arg(long, env = "SENTIFLOW_DRIFT_JOIN_CAPACITY", default_value_t = 200_000)]
    pub join_capacity: usize,

    /// Human labels read before their prediction that are held for it (their offsets not committed);
    /// when full, the one held longest is applied without waiting. 0 holds none: such a label is
    /// unmatched at once.
    #[arg(
        long,
        env = "SENTIFLOW_DRIFT_MAX_HELD_LABELS",
        default_value_t = 10_000
    )]
    pub max_held_labels: usize,

    /// How long a held label waits for its prediction, seconds, counted from when it was read (and
    /// at least until drift has read every prediction published before it): covers infer lagging
    /// behind a reviewer.
    #[arg(long, env = "SENTIFLOW_DRIFT_LABEL_GRACE_SECS", default_value_t = 60)]
    pub label_grace_secs: u64,

    /// Most values kept per distribution in a reference (a uniform reservoir beyond).
    #[arg(
        long,
        env = "SENTIFLOW_DRIFT_REFERENCE_MAX_VALUES",
        default_value_t = 20_000
    )]
    pub reference_max_values: usize,

    /// Reports kept in memory for `/api/reports` and `/dashboard`.
    #[arg(long, env = "SENTIFLOW_DRIFT_HISTORY", default_value_t = 500)]
    pub history: usize,

    /// Device asked for in drift-triggered retrain requests.
    #[arg(long, env = "SENTIFLOW_DRIFT_DEVICE_WANTED", default_value = "auto")]
    pub device_wanted: sentiflow_common::events::DeviceWanted,

    /// Threshold override `NAME=WARN,DRIFT` (repeatable), e.g. `class_mix_psi=0.1,0.25`.
    #[arg(
        long = "threshold",
        env = "SENTIFLOW_DRIFT_THRESHOLDS",
        value_delimiter = ';'
    )]
    pub thresholds: Vec<ThresholdOverride>,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    /// Flag name.
    pub name: &'static str,
    /// Why it is rejected.
    pub reason: String,
}

impl DriftConfig {
    /// Defaults of every flag with the given connections (tests and `sentiflow up`).
    pub fn local(kafka: KafkaArgs, redis: RedisArgs) -> Self {
        let mut config = Self::parse_from(["sentiflow-drift"]);
        config.kafka = kafka;
        config.redis = redis;
        config.telemetry = TelemetryArgs::ephemeral();
        config
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.window_events < 2 {
            return invalid("--window-events", "must be at least 2");
        }
        if self.window_secs > 0 && self.min_window_events < 2 {
            return invalid("--min-window-events", "must be at least 2");
        }
        if self.window_secs > 0 && self.min_window_events > self.window_events {
            return invalid(
                "--min-window-events",
                "must not exceed --window-events (a time window could never close)",
            );
        }
        if self.reference_windows == 0 {
            return invalid("--reference-windows", "must be at least 1");
        }
        if self.scan && self.scan_min_events < 10 {
            return invalid(
                "--scan-min-events",
                "must be at least 10 (a G test of fewer predictions is noise)",
            );
        }
        if self.scan && self.scan_max_events < self.scan_min_events {
            return invalid("--scan-max-events", "must not be below --scan-min-events");
        }
        if self.confirm_windows == 0 {
            return invalid("--confirm-windows", "must be at least 1");
        }
        if self.clear_windows == 0 {
            return invalid("--clear-windows", "must be at least 1");
        }
        if self.lock_ttl_secs == 0 {
            return invalid("--lock-ttl-secs", "must be at least 1");
        }
        if self.feedback_window < 10 {
            return invalid(
                "--feedback-window",
                "must be at least 10 labelled predictions",
            );
        }
        if self.label_grace_secs > 3600 {
            return invalid(
                "--label-grace-secs",
                "must be at most 3600 (a held label keeps its partition's later labels waiting)",
            );
        }
        if self.reference_max_values < 10 {
            return invalid("--reference-max-values", "must be at least 10");
        }
        if self.history == 0 {
            return invalid("--history", "must be at least 1");
        }
        if self.telemetry.drain_timeout_ms >= 45_000 {
            return invalid(
                "--drain-timeout-ms",
                "must be below the consumer session timeout (45000 ms)",
            );
        }
        Ok(())
    }

    /// Thresholds of every signal: the defaults with `--threshold` overrides applied.
    pub fn threshold_table(&self) -> BTreeMap<&'static str, Threshold> {
        let mut table = default_thresholds();
        for o in &self.thresholds {
            if let Some(name) = SIGNAL_NAMES.iter().find(|name| **name == o.signal) {
                table.insert(name, o.threshold);
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_overrides_parse_and_apply() {
        let o: ThresholdOverride = "class_mix_psi=0.2, 0.4".parse().unwrap();
        assert_eq!(
            o.threshold,
            Threshold {
                warn: 0.2,
                drift: 0.4
            }
        );
        assert!("nope=0.1,0.2".parse::<ThresholdOverride>().is_err());
        assert!(
            "class_mix_psi=0.5,0.1"
                .parse::<ThresholdOverride>()
                .is_err()
        );
        assert!("class_mix_psi=0.5".parse::<ThresholdOverride>().is_err());
        let mut config = DriftConfig::local(
            KafkaArgs::local("b:9092", ""),
            RedisArgs::local("redis://127.0.0.1:1/", "x"),
        );
        config.thresholds.push(o);
        assert_eq!(config.threshold_table()["class_mix_psi"].drift, 0.4);
        config.validate().unwrap();
        config.window_secs = 60;
        config.min_window_events = config.window_events + 1;
        assert!(config.validate().is_err());
    }
}
