//! Liveness and readiness state of a service: named dependency checks (kafka, redis, model…) plus
//! free-form facts (device, model version) that `/healthz` shows and `/readyz` gates on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// The state of one dependency check.
#[derive(Clone, Debug, Serialize)]
pub struct CheckState {
    /// Whether the dependency is usable right now.
    pub ok: bool,
    /// Human-readable detail of the last observation.
    pub detail: String,
    /// When `ok` last changed.
    pub since: DateTime<Utc>,
}

#[derive(Debug)]
struct HealthInner {
    service: &'static str,
    started: DateTime<Utc>,
    checks: Mutex<BTreeMap<String, CheckState>>,
    info: Mutex<BTreeMap<String, Value>>,
}

/// Shared, cheaply cloneable health registry of one service.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

impl Health {
    /// A registry with no checks yet (a service with no checks is ready).
    pub fn new(service: &'static str) -> Self {
        Self {
            inner: Arc::new(HealthInner {
                service,
                started: Utc::now(),
                checks: Mutex::new(BTreeMap::new()),
                info: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The service this registry belongs to.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// Records the outcome of a check; logs and counts transitions only, so probes can call it often.
    pub fn set_check(&self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        let mut checks = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = checks.get(name).is_none_or(|previous| previous.ok != ok);
        if changed {
            if ok {
                tracing::info!(service = self.inner.service, check = name, %detail, "dependency ready");
            } else {
                tracing::warn!(service = self.inner.service, check = name, %detail, "dependency not ready");
            }
        }
        let since = match checks.get(name) {
            Some(previous) if !changed => previous.since,
            _ => Utc::now(),
        };
        checks.insert(name.to_owned(), CheckState { ok, detail, since });
        metrics::gauge!(format!("sentiflow_{}_dependency_up", self.inner.service), "dependency" => name.to_owned())
            .set(if ok { 1.0 } else { 0.0 });
    }

    /// Publishes a fact shown by `/healthz` (e.g. `device`, `model_version`).
    pub fn set_info(&self, key: &str, value: impl Into<Value>) {
        self.inner
            .info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key.to_owned(), value.into());
    }

    /// The state of one check, if it was ever set.
    pub fn check(&self, name: &str) -> Option<CheckState> {
        self.inner
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
    }

    /// Ready when every registered check is ok.
    pub fn is_ready(&self) -> bool {
        self.inner
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .all(|check| check.ok)
    }

    /// The JSON document served by `/healthz` and `/readyz`.
    pub fn snapshot(&self) -> Value {
        let checks = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let info = self
            .inner
            .info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let ready = checks.values().all(|check| check.ok);
        serde_json::json!({
            "service": self.inner.service,
            "version": env!("CARGO_PKG_VERSION"),
            "status": if ready { "ready" } else { "not_ready" },
            "ready": ready,
            "started_at": self.inner.started,
            "checks": checks,
            "info": info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is_ok() {
        let health = Health::new("test");
        assert!(health.is_ready());
        health.set_check("kafka", true, "ok");
        health.set_check("redis", false, "connection refused");
        assert!(!health.is_ready());
        let since = health.check("redis").unwrap().since;
        health.set_check("redis", false, "still refused");
        assert_eq!(
            health.check("redis").unwrap().since,
            since,
            "since moves only on transitions"
        );
        health.set_check("redis", true, "pong");
        assert!(health.is_ready());
        health.set_info("device", "cpu");
        let snapshot = health.snapshot();
        assert_eq!(snapshot["ready"], true);
        assert_eq!(snapshot["info"]["device"], "cpu");
        assert_eq!(snapshot["checks"]["redis"]["detail"], "pong");
    }
}
