//! Zero-downtime model swaps: follows `models.updates` (fast path) and re-reads the registry's champion
//! alias periodically (catches a missed event); fetches by content hash, verifies, warms, then swaps.
//! A model that cannot be loaded is reported (log, metric, `load_failed` event) and the old one keeps
//! serving. An encoder request that found no encoder champion at start switches family, without a
//! restart, when the first one appears.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::Message as _;
use sentiflow_common::events::{
    Event as _, ModelAlias, ModelUpdate, SCHEMA_VERSION, UpdateAction, new_event_id,
};
use sentiflow_common::health::Health;
use sentiflow_common::kafka::{self, Consumer, ResilientProducer};
use sentiflow_model::runtime::{Device, OrtEnvironment};
use sentiflow_model::seen::SEEN_FEATURES_FILE;
use sentiflow_trainer::registry::{ModelRecord, Registry, RegistryError};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::SERVICE;
use crate::error::LoadError;
use crate::model::{LoadSpec, ModelSlot, ServingModel};

/// Loads and swaps the served model.
#[derive(Debug)]
pub struct Swapper {
    /// ONNX Runtime.
    pub env: OrtEnvironment,
    /// Where records and artifacts are.
    pub registry: Registry,
    /// The slot the Kafka and HTTP paths read.
    pub slot: ModelSlot,
    /// Sessions to build.
    pub spec: LoadSpec,
    /// Registry name and family served now.
    served: RwLock<Served>,
    /// The family to switch to once its registry name has a champion.
    pending_switch: Mutex<Option<FamilySwitch>>,
    /// Health (`model` check, model info).
    pub health: Health,
    /// For `serving` / `load_failed` events.
    pub producer: ResilientProducer,
    /// Physical name of `models.updates`.
    pub updates_topic: String,
    /// This instance, as named in events (`infer@<host>/<pid>`).
    pub instance: String,
    /// The last champion that failed to load, per model name (the served family's and, while
    /// waiting to switch, the other family's), so the periodic check does not retry and re-report
    /// the same broken artifact every poll.
    failed: Mutex<HashMap<String, FailedLoad>>,
    /// One swap at a time (an event and the periodic check may race).
    installing: tokio::sync::Mutex<()>,
    /// The challenger scored in shadow (None when shadow scoring is off).
    shadow: Option<ModelSlot>,
    /// The last challenger that failed to load.
    shadow_failed: Mutex<Option<FailedLoad>>,
}

/// How long a load that failed for a reason that may pass (the registry's disk or Redis, ONNX
/// Runtime out of memory, CUDA) is left before the periodic check tries it again; doubled after
/// each further failure of the same artifact, up to [`RETRY_FAILED_LOAD_AT_MOST`].
const RETRY_FAILED_LOAD_AFTER: Duration = Duration::from_secs(300);
/// The longest wait between two tries of the same failing artifact.
const RETRY_FAILED_LOAD_AT_MOST: Duration = Duration::from_secs(3_600);

/// A version that failed to load: not tried again by the periodic check, for good when the artifact
/// itself is refused (checksum, unsupported), until `retry_at` otherwise (e.g. the file was not yet
/// visible on a shared volume when the promotion event arrived).
#[derive(Debug, Clone)]
struct FailedLoad {
    version: String,
    sha256: String,
    /// The error, as announced: a retry failing the same way is not announced again.
    error: String,
    /// Failed tries of this artifact in a row.
    tries: u32,
    retry_at: Option<Instant>,
}

impl FailedLoad {
    /// The failure of `record` after `previous` (the slot's last failure, if any).
    fn after(previous: Option<&FailedLoad>, record: &ModelRecord, error: &LoadError) -> Self {
        Self::after_at(previous, record, error, Instant::now())
    }

    fn after_at(
        previous: Option<&FailedLoad>,
        record: &ModelRecord,
        error: &LoadError,
        now: Instant,
    ) -> Self {
        let lasting = matches!(error, LoadError::Checksum(_) | LoadError::Unsupported(_));
        let tries = previous
            .filter(|previous| previous.is(record))
            .map_or(1, |previous| previous.tries.saturating_add(1));
        let wait = RETRY_FAILED_LOAD_AFTER
            .saturating_mul(2u32.saturating_pow(tries - 1))
            .min(RETRY_FAILED_LOAD_AT_MOST);
        Self {
            version: record.version.clone(),
            sha256: record.sha256.clone(),
            error: error.to_string(),
            tries,
            retry_at: (!lasting).then(|| now + wait),
        }
    }

    fn is(&self, record: &ModelRecord) -> bool {
        self.version == record.version && self.sha256 == record.sha256
    }

    /// Whether this failure repeats `previous` (same artifact, same error): not announced again.
    fn repeats(&self, previous: Option<&FailedLoad>) -> bool {
        previous.is_some_and(|previous| {
            previous.version == self.version
                && previous.sha256 == self.sha256
                && previous.error == self.error
        })
    }

    /// Whether `record` is this failure and is not due to be tried again yet.
    fn holds_back(&self, record: &ModelRecord) -> bool {
        self.holds_back_at(record, Instant::now())
    }

    fn holds_back_at(&self, record: &ModelRecord, now: Instant) -> bool {
        self.is(record) && self.retry_at.is_none_or(|retry_at| now < retry_at)
    }
}

/// The registry name whose champion is served, and its family.
#[derive(Debug, Clone)]
struct Served {
    model_name: String,
    family: &'static str,
}

/// A family `infer` switches to, without a restart, when `model_name` gets its first champion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilySwitch {
    /// Registry name to watch.
    pub model_name: String,
    /// Its family.
    pub family: &'static str,
    /// Why it is wanted (on `/healthz` as `family_reason` once switched).
    pub reason: String,
}

impl Swapper {
    /// A swapper serving `model_name`'s champion (of `family`); nothing is loaded until
    /// [`Swapper::reconcile`] or an update arrives.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        env: OrtEnvironment,
        registry: Registry,
        slot: ModelSlot,
        spec: LoadSpec,
        model_name: String,
        family: &'static str,
        health: Health,
        producer: ResilientProducer,
        updates_topic: String,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        Self {
            env,
            registry,
            slot,
            spec,
            served: RwLock::new(Served { model_name, family }),
            pending_switch: Mutex::new(None),
            health,
            producer,
            updates_topic,
            instance: format!("{SERVICE}@{host}/{}", std::process::id()),
            failed: Mutex::new(HashMap::new()),
            installing: tokio::sync::Mutex::new(()),
            shadow: None,
            shadow_failed: Mutex::new(None),
        }
    }

    /// Also watches `switch.model_name`: when it gets a champion, that champion is loaded and, once
    /// it serves, the swapper follows that name instead (family, `/healthz` and metric updated).
    pub fn with_family_switch(self, switch: Option<FamilySwitch>) -> Self {
        *lock(&self.pending_switch) = switch;
        self
    }

    /// The registry name whose champion is served now.
    pub fn model_name(&self) -> String {
        self.served
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .model_name
            .clone()
    }

    /// The family switch still waited for, if any.
    pub fn pending_switch(&self) -> Option<FamilySwitch> {
        lock(&self.pending_switch).clone()
    }

    /// Switches family when the awaited name has a champion (`record`, or the registry's): loads it,
    /// then follows its name. Returns whether the switch happened.
    async fn try_family_switch(
        &self,
        record: Option<ModelRecord>,
        trigger: &str,
    ) -> Result<bool, LoadError> {
        let Some(switch) = self.pending_switch() else {
            return Ok(false);
        };
        let record = match record {
            Some(record) => record,
            None => match self.registry.resolve(&switch.model_name, "champion").await {
                Ok(record) => record,
                Err(RegistryError::NotFound(_)) => return Ok(false),
                Err(error) => return Err(LoadError::Registry(error.to_string())),
            },
        };
        if self.already_failed(&record) {
            return Ok(false);
        }
        self.install(record, trigger, Some(&switch)).await?;
        if let Err(error) = self.reconcile_shadow().await {
            warn!(%error, "shadow model not updated after the family switch");
        }
        Ok(true)
    }

    /// Follows `switch`'s name from now on (called as its champion is swapped in, so `/healthz` and
    /// the metric change with the served model).
    fn apply_family_switch(&self, switch: &FamilySwitch) {
        let previous = {
            let mut served = self
                .served
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let previous = served.family;
            *served = Served {
                model_name: switch.model_name.clone(),
                family: switch.family,
            };
            previous
        };
        *lock(&self.pending_switch) = None;
        info!(model = %switch.model_name, family = switch.family, previous, reason = %switch.reason, "serving family switched");
        metrics::gauge!("sentiflow_infer_family_info", "family" => previous).set(0.0);
        metrics::gauge!("sentiflow_infer_family_info", "family" => switch.family).set(1.0);
        self.health.set_info("family", switch.family);
        self.health
            .set_info("family_reason", switch.reason.as_str());
        self.health
            .set_info("model_name", switch.model_name.as_str());
    }

    /// Also follows the `challenger` alias into `slot`, for shadow scoring.
    pub fn with_shadow(mut self, slot: ModelSlot) -> Self {
        self.shadow = Some(slot);
        self
    }

    /// Loads the registry's challenger into the shadow slot (or empties it when there is none, or when
    /// it is the champion itself).
    pub async fn reconcile_shadow(&self) -> Result<(), LoadError> {
        let Some(shadow) = &self.shadow else {
            return Ok(());
        };
        let record = match self
            .registry
            .resolve(&self.model_name(), "challenger")
            .await
        {
            Ok(record) => record,
            Err(RegistryError::NotFound(_)) => {
                if shadow.clear().is_some() {
                    info!("no challenger any more; shadow scoring paused");
                }
                return Ok(());
            }
            Err(error) => return Err(LoadError::Registry(error.to_string())),
        };
        if self.is_serving(&record) {
            shadow.clear();
            return Ok(());
        }
        let current = shadow.current();
        if current.as_ref().is_some_and(|model| {
            model.model_ref().version == record.version && model.sha256() == record.sha256
        }) {
            return Ok(());
        }
        let failed_before = self
            .shadow_failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .is_some_and(|failed| failed.holds_back(&record));
        if failed_before {
            return Ok(());
        }
        match self.load(&record).await {
            Ok(model) => {
                info!(name = %record.name, version = %record.version, "challenger loaded for shadow scoring");
                *self
                    .shadow_failed
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                self.health.set_info(
                    "shadow_model",
                    serde_json::json!({"name": record.name, "version": record.version, "sha256": record.sha256}),
                );
                shadow.swap(Arc::new(model));
                Ok(())
            }
            Err(error) => {
                error!(name = %record.name, version = %record.version, %error, "challenger refused; shadow scoring paused");
                metrics::counter!("sentiflow_infer_model_load_failures_total", "error_kind" => error.kind())
                    .increment(1);
                let repeated = {
                    let mut failed = self
                        .shadow_failed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let now = FailedLoad::after(failed.as_ref(), &record, &error);
                    let repeated = now.repeats(failed.as_ref());
                    *failed = Some(now);
                    repeated
                };
                shadow.clear();
                if repeated {
                    return Err(error);
                }
                let detail = format!(
                    "{}: challenger {} ({error}); shadow scoring paused",
                    self.instance,
                    error.kind()
                );
                self.publish(&record, UpdateAction::LoadFailed, None, detail)
                    .await;
                Err(error)
            }
        }
    }

    /// Serves the registry's current champion if it is not already served.
    pub async fn reconcile(&self) -> Result<(), LoadError> {
        // A switch that cannot happen yet (registry error, refused model: reported) must not keep
        // the current family's champion from being followed.
        match self.try_family_switch(None, "registry").await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => warn!(%error, "family switch not done; the current family keeps serving"),
        }
        let model_name = self.model_name();
        let record = match self.registry.resolve(&model_name, "champion").await {
            Ok(record) => record,
            Err(RegistryError::NotFound(_)) => {
                if self.slot.current().is_none() {
                    self.health.set_check(
                        "model",
                        false,
                        format!("no champion of {model_name} in the registry yet; waiting for one"),
                    );
                }
                return Ok(());
            }
            Err(error) => return Err(LoadError::Registry(error.to_string())),
        };
        if self.is_serving(&record) || self.already_failed(&record) {
            return Ok(());
        }
        self.install(record, "registry", None).await
    }

    /// Acts on one `models.updates` event: a new champion (promotion or rollback) is loaded and swapped
    /// in; with shadow scoring on, the challenger is re-read too (any registry change can move it).
    pub async fn handle_update(&self, update: &ModelUpdate) -> Result<(), LoadError> {
        let champion = self.handle_champion_update(update).await;
        if self.shadow.is_some()
            && update.model.name == self.model_name()
            && matches!(
                update.action,
                UpdateAction::Registered
                    | UpdateAction::Rejected
                    | UpdateAction::Promoted
                    | UpdateAction::RolledBack
            )
            && let Err(error) = self.reconcile_shadow().await
        {
            warn!(%error, "shadow model not updated");
        }
        champion
    }

    async fn handle_champion_update(&self, update: &ModelUpdate) -> Result<(), LoadError> {
        let awaited = self
            .pending_switch()
            .is_some_and(|switch| switch.model_name == update.model.name);
        if update.model.name != self.model_name() && !awaited {
            return Ok(());
        }

        let champion_changed = match update.action {
            UpdateAction::Promoted => update.alias == Some(ModelAlias::Champion),
            UpdateAction::RolledBack => true,
            UpdateAction::Registered
            | UpdateAction::Rejected
            | UpdateAction::Serving
            | UpdateAction::LoadFailed => false,
        };
        if !champion_changed {
            return Ok(());
        }
        let record = self
            .registry
            .get(&update.model.name, &update.model.version)
            .await
            .map_err(|error| LoadError::Registry(error.to_string()))?;
        if record.sha256 != update.sha256 {
            let error = LoadError::Checksum(format!(
                "the update announces sha256 {} but the registry records {} for {} {}",
                update.sha256, record.sha256, record.name, record.version
            ));
            self.report_failure(&record, &error).await;
            return Err(error);
        }
        if awaited {
            return self
                .try_family_switch(Some(record), update.action.as_str())
                .await
                .map(drop);
        }
        if self.is_serving(&record) {
            return Ok(());
        }
        self.install(record, update.action.as_str(), None).await
    }

    fn is_serving(&self, record: &ModelRecord) -> bool {
        self.slot.current().is_some_and(|model| {
            model.model_ref().version == record.version && model.sha256() == record.sha256
        })
    }

    fn already_failed(&self, record: &ModelRecord) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&record.name)
            .is_some_and(|failed| failed.holds_back(record))
    }

    /// Fetches, verifies, loads and warms `record`, then swaps it in; on failure the old model stays.
    /// With `switch`, the swapper follows that family's name as the model is swapped in.
    async fn install(
        &self,
        record: ModelRecord,
        trigger: &str,
        switch: Option<&FamilySwitch>,
    ) -> Result<(), LoadError> {
        let _one_at_a_time = self.installing.lock().await;
        if self.is_serving(&record) {
            if let Some(switch) = switch {
                self.apply_family_switch(switch);
            }
            return Ok(());
        }
        info!(name = %record.name, version = %record.version, trigger, "loading model");
        let loaded = self.load(&record).await;
        match loaded {
            Ok(model) => {
                let model = Arc::new(model);
                let previous = self.slot.swap(model.clone());
                if let Some(switch) = switch {
                    self.apply_family_switch(switch);
                }
                self.failed
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(&record.name);
                self.announce_serving(&record, &model, previous.as_deref())
                    .await;
                Ok(())
            }
            Err(error) => {
                self.report_failure(&record, &error).await;
                Err(error)
            }
        }
    }

    async fn load(&self, record: &ModelRecord) -> Result<ServingModel, LoadError> {
        let bytes = self
            .registry
            .load_verified(record)
            .await
            .map_err(|error| match error {
                RegistryError::Checksum { .. } => LoadError::Checksum(error.to_string()),
                other => LoadError::Registry(other.to_string()),
            })?;
        let seen = self
            .registry
            .load_file_verified(record, SEEN_FEATURES_FILE)
            .await
            .map_err(|error| match error {
                RegistryError::Checksum { .. } => LoadError::Checksum(error.to_string()),
                other => LoadError::Registry(other.to_string()),
            })?;
        let env = self.env.clone();
        let spec = self.spec;
        let sha256 = record.sha256.clone();
        let expected = record.model_ref();
        tokio::task::spawn_blocking(move || {
            ServingModel::load(&env, &bytes, &sha256, &expected, &spec)?
                .with_seen_features(seen.as_deref())
        })
        .await
        .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
    }

    async fn announce_serving(
        &self,
        record: &ModelRecord,
        model: &ServingModel,
        previous: Option<&ServingModel>,
    ) {
        let version = &model.model_ref().version;
        info!(
            name = %record.name,
            %version,
            previous = previous.map(|model| model.model_ref().version.as_str()),
            device = %model.device(),
            load_ms = model.load_time().as_millis() as u64,
            "model swapped in"
        );
        metrics::counter!("sentiflow_infer_model_swaps_total").increment(1);
        if let Some(previous) = previous {
            metrics::gauge!("sentiflow_infer_model_info", "model" => previous.model_ref().name.clone(), "version" => previous.model_ref().version.clone()).set(0.0);
        }
        metrics::gauge!("sentiflow_infer_model_info", "model" => record.name.clone(), "version" => version.clone()).set(1.0);
        metrics::gauge!("sentiflow_infer_model_load_seconds").set(model.load_time().as_secs_f64());
        report_serving_device(&self.health, model);
        self.health
            .set_check("model", true, format!("serving {} {version}", record.name));
        self.health.set_info(
            "model",
            serde_json::json!({
                "name": record.name,
                "version": version,
                "family": model.model_ref().family.as_str(),
                "blend_hashed_weight": model.blend_hashed_weight(),
                "sha256": model.sha256(),
                "featurizer_version": model.metadata().featurizer_version,
                "training_snapshot": model.metadata().training_snapshot,
                "device": model.device().as_str(),
                "loaded_at": model.loaded_at(),
            }),
        );
        // "still serving <the old version>" no longer holds.
        self.health.clear_info("last_load_error");
        let detail = format!(
            "{} serves {} {version} on {}{}",
            self.instance,
            record.name,
            model.device(),
            previous.map_or_else(String::new, |previous| format!(
                " (was {})",
                previous.model_ref().version
            ))
        );
        self.publish(
            record,
            UpdateAction::Serving,
            previous.map(|model| model.model_ref().version.clone()),
            detail,
        )
        .await;
    }

    async fn report_failure(&self, record: &ModelRecord, error: &LoadError) {
        error!(name = %record.name, version = %record.version, kind = error.kind(), %error, "model load refused; the current model keeps serving");
        metrics::counter!("sentiflow_infer_model_load_failures_total", "error_kind" => error.kind())
            .increment(1);
        let repeated = {
            let mut failed = self
                .failed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let previous = failed.get(&record.name);
            let now = FailedLoad::after(previous, record, error);
            let repeated = now.repeats(previous);
            failed.insert(record.name.clone(), now);
            repeated
        };
        let serving = self.slot.current();
        match &serving {
            Some(model) => self.health.set_info(
                "last_load_error",
                format!(
                    "{} {}: {error} (still serving {})",
                    record.name,
                    record.version,
                    model.model_ref().version
                ),
            ),
            None => self.health.set_check(
                "model",
                false,
                format!(
                    "{} {} could not be loaded: {error}",
                    record.name, record.version
                ),
            ),
        }
        let detail = format!(
            "{}: {} ({error}); still serving {}",
            self.instance,
            error.kind(),
            serving.map_or_else(
                || "nothing".to_owned(),
                |model| model.model_ref().version.clone()
            )
        );
        // A retry that failed the same way was announced already.
        if !repeated {
            self.publish(record, UpdateAction::LoadFailed, None, detail)
                .await;
        }
    }

    /// Best effort: the event is an audit trail; serving never waits on it for long.
    async fn publish(
        &self,
        record: &ModelRecord,
        action: UpdateAction,
        previous_version: Option<String>,
        detail: String,
    ) {
        let mut event = record.update_event(action, previous_version, None);
        event.detail = Some(detail);
        event.schema_version = SCHEMA_VERSION;
        event.event_id = new_event_id();
        event.event_time = Utc::now();
        let payload = match event.to_json_vec() {
            Ok(payload) => payload,
            Err(error) => {
                warn!(%error, "cannot serialise a models.updates event");
                return;
            }
        };
        let sent = async {
            let future = self
                .producer
                .enqueue(
                    &self.updates_topic,
                    Some(event.key().as_bytes()),
                    &payload,
                    None,
                )
                .await?;
            kafka::await_delivery(future).await
        };
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                warn!(%error, action = action.as_str(), "could not publish to models.updates")
            }
            Err(_) => warn!(
                action = action.as_str(),
                "publishing to models.updates timed out"
            ),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Follows `models.updates` and polls the registry until `shutdown`.
pub async fn follow_updates(
    swapper: Arc<Swapper>,
    consumer: Consumer,
    poll_every: Duration,
    shutdown: CancellationToken,
) {
    let mut poll = tokio::time::interval(poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = poll.tick() => {
                if let Err(error) = swapper.reconcile().await {
                    warn!(%error, "registry check failed");
                }
                if let Err(error) = swapper.reconcile_shadow().await {
                    warn!(%error, "challenger check failed");
                }
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let Some(payload) = message.payload() else { continue };
                    match ModelUpdate::decode_validated(payload) {
                        Ok(update) => {
                            if let Err(error) = swapper.handle_update(&update).await {
                                warn!(%error, version = %update.model.version, "update not applied");
                            }
                        }
                        Err(error) => {
                            metrics::counter!("sentiflow_infer_errors_total", "error_kind" => "invalid_model_update").increment(1);
                            warn!(%error, offset = message.offset(), "unreadable models.updates event ignored");
                        }
                    }
                }
                Err(error) => {
                    metrics::counter!("sentiflow_infer_errors_total", "error_kind" => "kafka_receive").increment(1);
                    warn!(%error, "models.updates receive error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// A consumer that sees every `models.updates` event from now on: its own group (every replica must
/// see every update), starting at the end, never committing.
pub fn updates_consumer(
    kafka_args: &sentiflow_common::config::KafkaArgs,
    group_prefix: &str,
    topic: &str,
) -> rdkafka::error::KafkaResult<Consumer> {
    use rdkafka::consumer::Consumer as _;
    let mut config = kafka_args.client_config();
    config
        .set(
            "group.id",
            format!("{group_prefix}-updates-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("client.id", "sentiflow-infer-updates")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("enable.partition.eof", "false");
    sentiflow_common::kafka::override_from_options(&mut config, kafka_args);
    let consumer: Consumer =
        config.create_with_context(sentiflow_common::kafka::ServiceContext::new(SERVICE))?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// The device of the model now serving, in the device metric and `/healthz`: with `--device auto`
/// every load tries CUDA and falls back to the CPU on its own (out of GPU memory during a swap,
/// nodes CUDA cannot run), so the start-up probe's answer does not hold for every model.
fn report_serving_device(health: &Health, model: &ServingModel) {
    let device = model.device();
    for known in [Device::Cpu, Device::Cuda] {
        metrics::gauge!("sentiflow_infer_device_info", "device" => known.as_str())
            .set(if known == device { 1.0 } else { 0.0 });
    }
    health.set_info("device", device.as_str());
    match (model.fallback_reason(), device) {
        (Some(reason), _) => health.set_info("device_fallback_reason", reason),
        (None, Device::Cuda) => health.clear_info("device_fallback_reason"),
        // Loaded on the CPU without trying CUDA (`--device cpu`, or `auto` after the start-up probe
        // found no CUDA): the probe's reason, if any, still says why.
        (None, Device::Cpu) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, sha256: &str) -> ModelRecord {
        serde_json::from_value(serde_json::json!({
            "name": "sentiment-hashed",
            "version": version,
            "family": "hashed",
            "sha256": sha256,
            "artifact_uri": "/data/models/sentiment-hashed/v2/model.onnx",
            "featurizer_version": "feat-v1",
            "snapshot_id": "snap-x",
            "trained_on": "cpu",
            "metrics": {},
            "gate": null,
            "registered_at": "2026-12-07T00:00:00Z",
        }))
        .expect("a minimal record")
    }

    #[test]
    fn a_refused_artifact_stays_refused_and_other_failures_are_tried_again_later() {
        let now = Instant::now();
        let v2 = record("v2", "aa");
        let refused = FailedLoad::after_at(None, &v2, &LoadError::Checksum("mismatch".into()), now);
        assert!(refused.holds_back_at(&v2, now + Duration::from_secs(86_400)));
        let unreadable =
            FailedLoad::after_at(None, &v2, &LoadError::Registry("ENOENT".into()), now);
        assert!(unreadable.holds_back_at(&v2, now + Duration::from_secs(299)));
        assert!(!unreadable.holds_back_at(&v2, now + RETRY_FAILED_LOAD_AFTER));
        // Another version, or the same version with other bytes, is tried at once.
        assert!(!refused.holds_back_at(&record("v3", "aa"), now));
        assert!(!refused.holds_back_at(&record("v2", "bb"), now));

        // Each further failure of the same artifact doubles the wait, up to an hour, and is not
        // announced again while its error stays the same.
        let mut failure = unreadable;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let later = FailedLoad::after_at(
                Some(&failure),
                &v2,
                &LoadError::Registry("ENOENT".into()),
                now,
            );
            assert!(later.repeats(Some(&failure)));
            waits.push(later.retry_at.unwrap() - now);
            failure = later;
        }
        let minutes: Vec<u64> = waits.iter().map(|wait| wait.as_secs() / 60).collect();
        assert_eq!(minutes, [10, 20, 40, 60, 60, 60]);
        let other_error =
            FailedLoad::after_at(Some(&failure), &v2, &LoadError::Runtime("OOM".into()), now);
        assert!(
            !other_error.repeats(Some(&failure)),
            "a new reason is announced"
        );
        let other_version = FailedLoad::after_at(
            Some(&failure),
            &record("v3", "cc"),
            &LoadError::Registry("ENOENT".into()),
            now,
        );
        assert!(!other_version.repeats(Some(&failure)));
        assert_eq!(other_version.tries, 1);
    }
}
