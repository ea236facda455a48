//! Shared state in Redis that makes alert hygiene hold across restarts and replicas, and the operator
//! actions behind `sentiflow retrain` and `sentiflow drift mute/unmute`.
//!
//! Keys (under `--redis-key-prefix`):
//! - `drift:mute` — operator mute of drift-triggered retrains, value = reason, TTL = mute duration;
//! - `drift:cooldown:<model name>` — no drift-triggered request while it exists (value = request id);
//! - `drift:retrain_lock:<model name>` — one retrain at a time (value = request id; TTL; released
//!   when `models.updates` says the model was promoted or a candidate rejected);
//! - `drift:retrain_pending` — hash, model name → a drift request (JSON) whose lock is taken but whose
//!   publication the broker has not acknowledged yet; a restart publishes it again;
//! - `drift:reference:<model name>:<version>` — reference statistics of a version (JSON);
//! - `drift:feedback:<model name>:<version>` — the version's human-label window and baseline (JSON).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::AsyncCommands as _;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::KafkaArgs;
use sentiflow_common::events::{
    DeviceWanted, Event as _, ModelRef, RequestedBy, RetrainRequest, SCHEMA_VERSION, new_event_id,
};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::store::RedisStore;

use crate::error::DriftError;
use crate::monitor::FeedbackState;
use crate::window::Sample;

/// Redis keys and operations of the drift service.
#[derive(Clone, Debug)]
pub struct Control {
    /// The connection and key prefix.
    store: RedisStore,
}

/// An operator mute in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mute {
    /// Why, as given to `sentiflow drift mute`.
    pub reason: String,
    /// Seconds left.
    pub ttl_secs: u64,
}

impl Mute {
    /// This mute `elapsed` after it was read, if it is still in force then.
    pub fn after(&self, elapsed: Duration) -> Option<Mute> {
        seconds_left_after(self.ttl_secs, elapsed).map(|ttl_secs| Mute {
            reason: self.reason.clone(),
            ttl_secs,
        })
    }
}

/// Seconds left of something that had `seconds_left` when read, `elapsed` ago (`u64::MAX`: no expiry);
/// `None` once it has run out.
pub fn seconds_left_after(seconds_left: u64, elapsed: Duration) -> Option<u64> {
    if seconds_left == u64::MAX {
        return Some(u64::MAX);
    }
    let left_ms = u128::from(seconds_left) * 1000;
    let elapsed_ms = elapsed.as_millis();
    (left_ms > elapsed_ms).then(|| ((left_ms - elapsed_ms).div_ceil(1000)) as u64)
}

/// A mute or cooldown as last read from (or written to) Redis, so that a window closing while Redis
/// cannot be read is still reported muted when it was (the operator cannot change it meanwhile: the
/// keys are in Redis).
#[derive(Debug, Default)]
pub struct LastRead {
    inner: std::sync::Mutex<LastReadInner>,
}

#[derive(Debug, Default)]
struct LastReadInner {
    mute: Option<(Option<Mute>, Instant)>,
    cooldowns: HashMap<String, (Option<u64>, Instant)>,
}

impl LastRead {
    fn lock(&self) -> std::sync::MutexGuard<'_, LastReadInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a mute read now.
    pub fn mute_read(&self, mute: Option<Mute>) {
        self.lock().mute = Some((mute, Instant::now()));
    }

    /// The mute as last read, aged; `None` when none was in force or none was ever read.
    pub fn mute(&self) -> Option<Mute> {
        let inner = self.lock();
        let (mute, at) = inner.mute.as_ref()?;
        mute.as_ref()?.after(at.elapsed())
    }

    /// Remembers the cooldown of model `name` read (or started) now: seconds left.
    pub fn cooldown_read(&self, name: &str, seconds_left: Option<u64>) {
        self.lock()
            .cooldowns
            .insert(name.to_owned(), (seconds_left, Instant::now()));
    }

    /// The cooldown of model `name` as last read, aged.
    pub fn cooldown(&self, name: &str) -> Option<u64> {
        let inner = self.lock();
        let (seconds_left, at) = inner.cooldowns.get(name)?;
        seconds_left_after((*seconds_left)?, at.elapsed())
    }
}

impl Control {
    /// Operations on `store`.
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn mute_key(&self) -> String {
        self.store.key(&["drift", "mute"])
    }

    fn cooldown_key(&self, name: &str) -> String {
        self.store.key(&["drift", "cooldown", name])
    }

    /// Key of the retrain lock of model `name` (a trainer deletes it when its retrain ends).
    pub fn lock_key(&self, name: &str) -> String {
        self.store.key(&["drift", "retrain_lock", name])
    }

    fn pending_key(&self) -> String {
        self.store.key(&["drift", "retrain_pending"])
    }

    fn feedback_key(&self, model: &ModelRef) -> String {
        self.store
            .key(&["drift", "feedback", &model.name, &model.version])
    }

    /// The stored human-label state of `model`, if any (an unreadable one is ignored).
    pub async fn load_feedback(
        &self,
        model: &ModelRef,
    ) -> Result<Option<FeedbackState>, DriftError> {
        self.load_version_state(self.feedback_key(model), model, "human-label state")
            .await
    }

    /// Stores the human-label state of `model` (kept 30 days, like references).
    pub async fn store_feedback(
        &self,
        model: &ModelRef,
        state: &FeedbackState,
    ) -> Result<(), DriftError> {
        self.store_version_state(self.feedback_key(model), state)
            .await
    }

    /// A version's JSON state at `key`; an unreadable one is logged and taken as absent (rebuilt).
    async fn load_version_state<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        model: &ModelRef,
        what: &str,
    ) -> Result<Option<T>, DriftError> {
        let mut connection = self.store.connection();
        let json: Option<String> = connection.get(key).await?;
        Ok(json.and_then(|json| match serde_json::from_str(&json) {
            Ok(state) => Some(state),
            Err(error) => {
                tracing::warn!(%error, version = %model.version, what, "stored drift state is unreadable; rebuilding it");
                None
            }
        }))
    }

    /// Stores a version's JSON state at `key` for 30 days.
    async fn store_version_state<T: serde::Serialize>(
        &self,
        key: String,
        state: &T,
    ) -> Result<(), DriftError> {
        let json = serde_json::to_string(state).expect("drift states serialise");
        let mut connection = self.store.connection();
        let _: () = connection.set_ex(key, json, 30 * 24 * 3600).await?;
        Ok(())
    }

    fn reference_key(&self, model: &ModelRef) -> String {
        self.store
            .key(&["drift", "reference", &model.name, &model.version])
    }

    /// Mutes drift-triggered retrain requests for `duration`.
    pub async fn mute(&self, duration: Duration, reason: &str) -> Result<(), DriftError> {
        let mut connection = self.store.connection();
        let millis = duration.as_millis().max(1) as u64;
        let _: () = connection.pset_ex(self.mute_key(), reason, millis).await?;
        Ok(())
    }

    /// Lifts an operator mute; returns whether one was in force.
    pub async fn unmute(&self) -> Result<bool, DriftError> {
        let mut connection = self.store.connection();
        let removed: u64 = connection.del(self.mute_key()).await?;
        Ok(removed > 0)
    }

    /// The operator mute in force, if any.
    pub async fn mute_status(&self) -> Result<Option<Mute>, DriftError> {
        let mut connection = self.store.connection();
        let key = self.mute_key();
        let (reason, ttl_ms): (Option<String>, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut connection)
            .await?;
        Ok(reason.map(|reason| Mute {
            reason,
            // -1: no expiry (a key set by hand), as for the cooldown.
            ttl_secs: if ttl_ms == -1 {
                u64::MAX
            } else {
                (ttl_ms.max(0) as u64).div_ceil(1000)
            },
        }))
    }

    /// Seconds left of the cooldown of model `name`, if one is running.
    pub async fn cooldown_left(&self, name: &str) -> Result<Option<u64>, DriftError> {
        let mut connection = self.store.connection();
        let ttl_ms: i64 = connection.pttl(self.cooldown_key(name)).await?;
        // -2: no key; -1: no expiry (treated as running).
        Ok(match ttl_ms {
            -2 => None,
            -1 => Some(u64::MAX),
            ms => Some((ms.max(0) as u64).div_ceil(1000)),
        })
    }

    /// Starts the cooldown of model `name`.
    pub async fn start_cooldown(
        &self,
        name: &str,
        request_id: &str,
        duration: Duration,
    ) -> Result<(), DriftError> {
        if duration.is_zero() {
            return Ok(());
        }
        let mut connection = self.store.connection();
        let _: () = connection
            .pset_ex(
                self.cooldown_key(name),
                request_id,
                duration.as_millis() as u64,
            )
            .await?;
        Ok(())
    }

    /// Takes the retrain lock of model `name` for `request_id`; Err(holder) when another holds it.
    pub async fn try_lock(
        &self,
        name: &str,
        request_id: &str,
        ttl: Duration,
    ) -> Result<Result<(), String>, DriftError> {
        let mut connection = self.store.connection();
        let key = self.lock_key(name);
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(request_id)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut connection)
            .await?;
        if taken.is_some() {
            return Ok(Ok(()));
        }
        let holder: Option<String> = connection.get(&key).await?;
        Ok(Err(holder.unwrap_or_default()))
    }

    /// Takes the retrain lock of `request`'s model for it and records the request as pending, both or
    /// neither (one script): a crash or shutdown before the broker acknowledges the request leaves it
    /// to [`Control::pending_requests`] at the next start instead of a lock held for a request nobody
    /// sent. Err(holder) when another request holds the lock.
    pub async fn try_lock_pending(
        &self,
        request: &RetrainRequest,
        ttl: Duration,
    ) -> Result<Result<(), String>, DriftError> {
        let script = redis::Script::new(
            "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
               redis.call('HSET', KEYS[2], ARGV[3], ARGV[4]) return 1 \
             else return 0 end",
        );
        let payload = serde_json::to_string(request).expect("requests serialise");
        let mut connection = self.store.connection();
        let taken: i64 = script
            .key(self.lock_key(&request.model.name))
            .key(self.pending_key())
            .arg(&request.request_id)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(&request.model.name)
            .arg(payload)
            .invoke_async(&mut connection)
            .await?;
        if taken == 1 {
            return Ok(Ok(()));
        }
        let holder: Option<String> = connection.get(self.lock_key(&request.model.name)).await?;
        Ok(Err(holder.unwrap_or_default()))
    }

    /// The broker acknowledged `request`: it is no longer pending (unless another request has
    /// replaced it meanwhile, which stays).
    pub async fn request_delivered(&self, request: &RetrainRequest) -> Result<(), DriftError> {
        let payload = serde_json::to_string(request).expect("requests serialise");
        self.forget_pending(&request.model.name, &payload).await
    }

    /// Removes the pending entry of `name` only if it still holds `payload` (one script): a replica
    /// that took the lock meanwhile keeps its own entry.
    async fn forget_pending(&self, name: &str, payload: &str) -> Result<(), DriftError> {
        let script = redis::Script::new(
            "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
               return redis.call('HDEL', KEYS[1], ARGV[1]) else return 0 end",
        );
        let mut connection = self.store.connection();
        let _: i64 = script
            .key(self.pending_key())
            .arg(name)
            .arg(payload)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Requests recorded by [`Control::try_lock_pending`] and not acknowledged, whose lock they still
    /// hold. Entries whose lock has gone (released, expired, taken over by `--force`) or that cannot be
    /// read are removed: publishing them now would start a retrain nobody holds the lock for.
    pub async fn pending_requests(&self) -> Result<Vec<RetrainRequest>, DriftError> {
        let mut connection = self.store.connection();
        let entries: Vec<(String, String)> = connection.hgetall(self.pending_key()).await?;
        let mut pending = Vec::new();
        for (name, json) in entries {
            let request = match RetrainRequest::decode_validated(json.as_bytes()) {
                Ok(request) if request.model.name == name => request,
                Ok(_) | Err(_) => {
                    tracing::warn!(model = %name, "unreadable pending retrain request; dropped");
                    self.forget_pending(&name, &json).await?;
                    continue;
                }
            };
            let holder: Option<String> = connection.get(self.lock_key(&name)).await?;
            if holder.as_deref() == Some(request.request_id.as_str()) {
                pending.push(request);
            } else {
                self.forget_pending(&name, &json).await?;
            }
        }
        Ok(pending)
    }

    /// The request id holding the retrain lock of model `name`, if any.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<String>, DriftError> {
        let mut connection = self.store.connection();
        Ok(connection.get(self.lock_key(name)).await?)
    }

    /// Releases the lock of model `name` if `request_id` holds it (a failed publish gives it back).
    pub async fn unlock(&self, name: &str, request_id: &str) -> Result<(), DriftError> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let mut connection = self.store.connection();
        let _: i64 = script
            .key(self.lock_key(name))
            .arg(request_id)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    /// The stored reference of `model`, if any (an unreadable one is ignored and rebuilt).
    pub async fn load_reference(&self, model: &ModelRef) -> Result<Option<Sample>, DriftError> {
        self.load_version_state(self.reference_key(model), model, "reference")
            .await
    }

    /// Stores the reference of `model` (kept 30 days).
    pub async fn store_reference(
        &self,
        model: &ModelRef,
        sample: &Sample,
    ) -> Result<(), DriftError> {
        self.store_version_state(self.reference_key(model), sample)
            .await
    }
}

/// What `sentiflow retrain` decided.
#[derive(Debug, Clone)]
pub enum OperatorOutcome {
    /// The request was published.
    Published(RetrainRequest),
    /// Another retrain holds the lock (and `force` was not given).
    Locked {
        /// Request id holding the lock.
        holder: String,
    },
}

/// Publishes an operator retrain request for `model`, taking the retrain lock (unless `force`, which
/// replaces it) so the drift service does not add its own on top.
pub async fn operator_retrain(
    kafka: &KafkaArgs,
    control: &Control,
    model: ModelRef,
    reason: &str,
    device_wanted: DeviceWanted,
    lock_ttl: Duration,
    force: bool,
) -> Result<OperatorOutcome, DriftError> {
    let request = RetrainRequest {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: Utc::now(),
        request_id: new_event_id(),
        reason: reason.chars().take(2000).collect(),
        requested_by: RequestedBy::Operator,
        report_id: None,
        family: model.family,
        model,
        data_from: None,
        data_to: None,
        device_wanted,
    };
    request.validate()?;
    if force {
        control.unlock_any(&request.model.name).await?;
    }
    if let Err(holder) = control
        .try_lock(&request.model.name, &request.request_id, lock_ttl)
        .await?
    {
        return Ok(OperatorOutcome::Locked { holder });
    }
    let producer = ResilientProducer::new(kafka, "drift")?;
    let payload = request.to_json_vec().expect("requests serialise");
    let delivery = producer
        .enqueue(
            &kafka.topic(topics::RETRAIN_REQUESTS),
            Some(request.key().as_bytes()),
            &payload,
            None,
        )
        .await;
    let acked = match delivery {
        Ok(future) => await_delivery(future).await.map(|_| ()),
        Err(error) => Err(error),
    };
    if let Err(error) = acked {
        control
            .unlock(&request.model.name, &request.request_id)
            .await?;
        return Err(error.into());
    }
    Ok(OperatorOutcome::Published(request))
}

impl Control {
    /// Deletes the lock of model `name` whoever holds it (operator `--force`, or the retrain's end);
    /// says whether there was one.
    pub async fn unlock_any(&self, name: &str) -> Result<bool, DriftError> {
        let mut connection = self.store.connection();
        let deleted: u64 = connection.del(self.lock_key(name)).await?;
        Ok(deleted > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_mute_or_cooldown_runs_out_on_time() {
        assert_eq!(seconds_left_after(10, Duration::from_millis(0)), Some(10));
        assert_eq!(
            seconds_left_after(10, Duration::from_millis(2_500)),
            Some(8)
        );
        assert_eq!(
            seconds_left_after(10, Duration::from_millis(9_999)),
            Some(1)
        );
        assert_eq!(seconds_left_after(10, Duration::from_secs(10)), None);
        assert_eq!(seconds_left_after(0, Duration::ZERO), None);
        assert_eq!(
            seconds_left_after(u64::MAX, Duration::from_secs(1 << 40)),
            Some(u64::MAX),
            "no expiry stays"
        );
        let mute = Mute {
            reason: "maintenance".to_owned(),
            ttl_secs: 60,
        };
        assert_eq!(mute.after(Duration::from_secs(30)).unwrap().ttl_secs, 30);
        assert_eq!(mute.after(Duration::from_secs(61)), None);
    }

    #[test]
    fn last_read_answers_only_what_was_read() {
        let last = LastRead::default();
        assert_eq!(last.mute(), None, "never read: not muted");
        assert_eq!(last.cooldown("m"), None);
        last.mute_read(Some(Mute {
            reason: "maintenance".to_owned(),
            ttl_secs: 3600,
        }));
        last.cooldown_read("m", Some(600));
        last.cooldown_read("other", None);
        assert_eq!(last.mute().unwrap().reason, "maintenance");
        assert!(last.cooldown("m").is_some_and(|left| left <= 600));
        assert_eq!(last.cooldown("other"), None);
        last.mute_read(None);
        assert_eq!(last.mute(), None, "an unmute read later wins");
    }
}
