//! Liveness and readiness state of a service: named dependency checks (kafka, redis, model…) plus
//! free-form facts (device, model version) that `/healthz` shows and `/readyz` gates on.
//!
//! A check is *required* unless the service marks it *optional*: `/readyz` answers 503 only while a
//! required check fails, because readiness decides whether requests are routed to this instance. A
//! dependency that only a background stream needs (Redis for infer's model updates, say) must not take
//! a request API out of rotation on every replica at once; while such a check fails the service is
//! `degraded`: ready, with the failure in `/healthz`, `/readyz`'s body and `_dependency_up`. An
//! optional check still gates readiness until it has been ok once, so an instance started with a wrong
//! broker or Redis address never becomes ready (a rolling update stalls instead of replacing every
//! working replica with one whose stream cannot run).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// The state of one dependency check.
#[derive(Clone, Debug, Serialize)]
pub struct CheckState {
    /// Whether the dependency is usable right now.
    pub ok: bool,
    /// Whether readiness waits for it now: a check not marked optional, or an optional one that has
    /// not been ok yet.
    pub required: bool,
    /// Whether it has been ok at least once since start.
    pub ever_ok: bool,
    /// Human-readable detail of the last observation.
    pub detail: String,
    /// When `ok` last changed.
    pub since: DateTime<Utc>,
}

/// Readiness of a service as `/healthz` and `/readyz` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every check is ok.
    Ready,
    /// Every required check is ok, an optional one is not: requests are served, a stream may wait.
    Degraded,
    /// A required check fails.
    NotReady,
}

impl Readiness {
    /// The `status` field of the health document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::NotReady => "not_ready",
        }
    }

    /// Whether requests should be routed here (`/readyz` 200).
    pub fn serves(self) -> bool {
        self != Self::NotReady
    }

    fn of(checks: &BTreeMap<String, CheckState>) -> Self {
        if checks.values().any(|check| check.required && !check.ok) {
            Self::NotReady
        } else if checks.values().any(|check| !check.ok) {
            Self::Degraded
        } else {
            Self::Ready
        }
    }
}

#[derive(Debug, Default)]
struct Checks {
    states: BTreeMap<String, CheckState>,
    optional: BTreeSet<String>,
}

/// Whether readiness waits for check `name`: unless it is optional and has been ok once.
fn required(optional: &BTreeSet<String>, name: &str, ever_ok: bool) -> bool {
    !(ever_ok && optional.contains(name))
}

#[derive(Debug)]
struct HealthInner {
    service: &'static str,
    started: DateTime<Utc>,
    checks: Mutex<Checks>,
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
                checks: Mutex::new(Checks::default()),
                info: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Registers checks as failing "not checked yet", so the service is not ready before its probes
    /// have answered (a check never reported does not count).
    pub fn expect_checks(&self, names: &[&str]) {
        let mut checks = lock(&self.inner.checks);
        for name in names {
            if !checks.states.contains_key(*name) {
                checks.states.insert(
                    (*name).to_owned(),
                    CheckState {
                        ok: false,
                        required: true,
                        ever_ok: false,
                        detail: "not checked yet".to_owned(),
                        since: Utc::now(),
                    },
                );
                metrics::gauge!(format!("sentiflow_{}_dependency_up", self.inner.service), "dependency" => (*name).to_owned())
                    .set(0.0);
            }
        }
        self.publish_readiness(Readiness::of(&checks.states));
    }

    /// Marks checks that readiness does not wait for once they have been ok (see the module
    /// documentation); set at start-up, before or after the checks are first reported.
    pub fn mark_optional(&self, names: &[&str]) {
        let mut checks = lock(&self.inner.checks);
        checks
            .optional
            .extend(names.iter().map(|name| (*name).to_owned()));
        let Checks { states, optional } = &mut *checks;
        for (name, check) in states.iter_mut() {
            check.required = required(optional, name, check.ever_ok);
        }
        self.publish_readiness(Readiness::of(&checks.states));
    }

    /// The service this registry belongs to.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// Records the outcome of a check; logs and counts transitions only, so probes can call it often.
    pub fn set_check(&self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        let mut checks = lock(&self.inner.checks);
        let previous = checks.states.get(name);
        let changed = previous.is_none_or(|previous| previous.ok != ok);
        let ever_ok = ok || previous.is_some_and(|previous| previous.ever_ok);
        let since = match previous {
            Some(previous) if !changed => previous.since,
            _ => Utc::now(),
        };
        let required = required(&checks.optional, name, ever_ok);
        if changed {
            if ok {
                tracing::info!(service = self.inner.service, check = name, %detail, "dependency ready");
            } else if required {
                tracing::warn!(service = self.inner.service, check = name, %detail, "dependency not ready");
            } else {
                tracing::warn!(service = self.inner.service, check = name, %detail, "optional dependency not ready; degraded, still serving");
            }
        }
        checks.states.insert(
            name.to_owned(),
            CheckState {
                ok,
                required,
                ever_ok,
                detail,
                since,
            },
        );
        metrics::gauge!(format!("sentiflow_{}_dependency_up", self.inner.service), "dependency" => name.to_owned())
            .set(if ok { 1.0 } else { 0.0 });
        self.publish_readiness(Readiness::of(&checks.states));
    }

    fn publish_readiness(&self, readiness: Readiness) {
        metrics::gauge!(format!("sentiflow_{}_ready", self.inner.service))
            .set(if readiness.serves() { 1.0 } else { 0.0 });
        metrics::gauge!(format!("sentiflow_{}_degraded", self.inner.service)).set(
            if readiness == Readiness::Degraded {
                1.0
            } else {
                0.0
            },
        );
    }

    /// Publishes a fact shown by `/healthz` (e.g. `device`, `model_version`).
    pub fn set_info(&self, key: &str, value: impl Into<Value>) {
        lock(&self.inner.info).insert(key.to_owned(), value.into());
    }

    /// Withdraws a fact that no longer holds (e.g. a load error once a later model loaded).
    pub fn clear_info(&self, key: &str) {
        lock(&self.inner.info).remove(key);
    }

    /// The state of one check, if it was ever set.
    pub fn check(&self, name: &str) -> Option<CheckState> {
        lock(&self.inner.checks).states.get(name).cloned()
    }

    /// Ready, degraded or not ready, from the checks as they stand.
    pub fn readiness(&self) -> Readiness {
        Readiness::of(&lock(&self.inner.checks).states)
    }

    /// Whether requests should be routed here: every required check is ok (`/readyz` 200).
    pub fn is_ready(&self) -> bool {
        self.readiness().serves()
    }

    /// The JSON document served by `/healthz` and `/readyz`.
    pub fn snapshot(&self) -> Value {
        let checks = lock(&self.inner.checks).states.clone();
        let info = lock(&self.inner.info).clone();
        let readiness = Readiness::of(&checks);
        serde_json::json!({
            "service": self.inner.service,
            "version": env!("CARGO_PKG_VERSION"),
            "status": readiness.as_str(),
            "ready": readiness.serves(),
            "started_at": self.inner.started,
            "checks": checks,
            "info": info,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        assert_eq!(health.readiness(), Readiness::NotReady);
        let since = health.check("redis").unwrap().since;
        health.set_check("redis", false, "still refused");
        assert_eq!(
            health.check("redis").unwrap().since,
            since,
            "since moves only on transitions"
        );
        health.set_check("redis", true, "pong");
        assert!(health.is_ready());
        assert_eq!(health.readiness(), Readiness::Ready);
        health.set_info("device", "cpu");
        let snapshot = health.snapshot();
        assert_eq!(snapshot["ready"], true);
        assert_eq!(snapshot["status"], "ready");
        assert_eq!(snapshot["info"]["device"], "cpu");
        assert_eq!(snapshot["checks"]["redis"]["detail"], "pong");
        assert_eq!(snapshot["checks"]["redis"]["required"], true);
    }

    #[test]
    fn a_failing_optional_check_degrades_but_keeps_the_service_ready() {
        let health = Health::new("test");
        health.expect_checks(&["redis"]);
        assert_eq!(health.readiness(), Readiness::NotReady, "not checked yet");
        assert_eq!(
            health.snapshot()["checks"]["redis"]["detail"],
            "not checked yet"
        );
        health.set_check("redis", false, "connection refused");
        assert_eq!(health.readiness(), Readiness::NotReady);
        // Marked after the check was first reported, before it was ever ok: still gates readiness
        // (a wrong address at start never becomes ready).
        health.mark_optional(&["redis"]);
        assert_eq!(health.readiness(), Readiness::NotReady);
        assert_eq!(health.snapshot()["checks"]["redis"]["required"], true);
        health.set_check("redis", true, "pong");
        assert_eq!(health.readiness(), Readiness::Ready);
        // Once it has been ok, its failure only degrades.
        health.set_check("redis", false, "connection refused");
        assert_eq!(health.readiness(), Readiness::Degraded);
        assert!(health.is_ready());
        assert_ne!(health.readiness(), Readiness::Ready);
        let snapshot = health.snapshot();
        assert_eq!(snapshot["status"], "degraded");
        assert_eq!(snapshot["ready"], true);
        assert_eq!(snapshot["checks"]["redis"]["required"], false);
        assert_eq!(snapshot["checks"]["redis"]["ok"], false);

        // A required check still decides readiness, whatever the optional ones say.
        health.set_check("model", false, "loading");
        assert_eq!(health.readiness(), Readiness::NotReady);
        assert_eq!(health.snapshot()["status"], "not_ready");
        health.set_check("model", true, "serving v1");
        health.set_check("redis", true, "pong");
        assert_eq!(health.readiness(), Readiness::Ready);
    }
}
