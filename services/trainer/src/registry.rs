//! The model registry: artifacts under `<models dir>/<name>/<version>/` (model.onnx, card.json, card.md,
//! images) with sha256, metadata and aliases (`champion`, `challenger`) in Redis, and the
//! `models.updates` events that tell serving about promotions and rollbacks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use sentiflow_common::events::{
    GateDecision, ModelAlias, ModelFamily, ModelRef, ModelUpdate, SCHEMA_VERSION, UpdateAction,
    new_event_id,
};
use sentiflow_common::store::RedisStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod prune;
pub use prune::{Removal, VersionPruneEntry, VersionPrunePolicy, VersionVerdict};

/// File name of the ONNX artifact inside a version directory.
pub const MODEL_FILE: &str = "model.onnx";

/// What the registry knows about one registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model name (one name per family, e.g. `sentiment-hashed`).
    pub name: String,
    /// Version, `v1`, `v2`, … in registration order.
    pub version: String,
    /// Model family.
    pub family: ModelFamily,
    /// sha256 of `model.onnx`.
    pub sha256: String,
    /// sha256 of every other file of the version directory (card.json, card.md, the chart PNGs), by
    /// file name. Empty in records written before it existed.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Absolute path of `model.onnx`.
    pub artifact_uri: String,
    /// Featurizer version the model was trained with.
    pub featurizer_version: String,
    /// Snapshot it was trained on.
    pub snapshot_id: String,
    /// Device it was trained on (`cpu` / `cuda`).
    pub trained_on: String,
    /// Headline metrics (macro-F1, accuracy, per-class recall…).
    pub metrics: BTreeMap<String, f64>,
    /// The gate decision taken when it was registered, if any.
    pub gate: Option<GateDecision>,
    /// When it was registered.
    pub registered_at: DateTime<Utc>,
}

impl ModelRecord {
    /// The model reference used in events.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            name: self.name.clone(),
            version: self.version.clone(),
            family: self.family,
        }
    }

    /// The `models.updates` event announcing `action` on this version.
    pub fn update_event(
        &self,
        action: UpdateAction,
        previous_version: Option<String>,
        alias: Option<ModelAlias>,
    ) -> ModelUpdate {
        ModelUpdate {
            schema_version: SCHEMA_VERSION,
            event_id: new_event_id(),
            event_time: Utc::now(),
            action,
            model: self.model_ref(),
            previous_version,
            alias,
            artifact_uri: self.artifact_uri.clone(),
            sha256: self.sha256.clone(),
            featurizer_version: self.featurizer_version.clone(),
            metrics: self.metrics.clone(),
            gate: self.gate.clone(),
            detail: None,
        }
    }
}

/// What [`Registry::promote_over`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The version is now the champion; `previous` went on the rollback history.
    Promoted {
        /// The champion it replaced.
        previous: Option<String>,
    },
    /// The version already was the champion (a promotion replayed); nothing changed.
    Unchanged {
        /// The version itself.
        previous: Option<String>,
    },
    /// The champion is no longer the expected one; nothing changed.
    ChampionChanged {
        /// The champion now (None: there is none).
        current: Option<String>,
    },
}

/// Everything about a new model except what the registry assigns (version, path, checksum, time).
#[derive(Debug, Clone)]
pub struct NewModel {
    /// Model name.
    pub name: String,
    /// A version obtained from [`Registry::reserve_version`] (so it can be written into the artifact),
    /// or None to take the next one.
    pub version: Option<String>,
    /// Family.
    pub family: ModelFamily,
    /// ONNX bytes.
    pub onnx: Vec<u8>,
    /// Featurizer version.
    pub featurizer_version: String,
    /// Snapshot id.
    pub snapshot_id: String,
    /// Training device.
    pub trained_on: String,
    /// Headline metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Gate decision, if the gate ran.
    pub gate: Option<GateDecision>,
    /// Extra files for the version directory (card.json, card.md, PNGs), name → bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Filesystem failed.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Unknown model or version.
    #[error("no model {0}")]
    NotFound(String),
    /// The artifact on disk is not the one registered.
    #[error("{path}: sha256 {actual} does not match the registered {expected}; refusing to load")]
    Checksum {
        /// Artifact.
        path: PathBuf,
        /// Registered checksum.
        expected: String,
        /// Computed checksum.
        actual: String,
    },
    /// Nothing to roll back to.
    #[error("{0} has no earlier champion to roll back to")]
    NoHistory(String),
    /// A name or file name that would escape the registry directory.
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    /// A record in Redis is unreadable.
    #[error("corrupt registry record {key}: {reason}")]
    Corrupt {
        /// Redis key.
        key: String,
        /// Parse error.
        reason: String,
    },
}

impl RegistryError {
    /// Stable kind for logs, metrics and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Io { .. } => "io",
            Self::NotFound(_) => "not_found",
            Self::Checksum { .. } => "checksum",
            Self::NoHistory(_) => "no_history",
            Self::InvalidName(_) => "invalid_name",
            Self::Corrupt { .. } => "corrupt",
        }
    }
}

fn valid_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(name.to_owned()))
    }
}

/// The registry of one deployment.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Directory holding `<name>/<version>/`.
    root: PathBuf,
    /// Metadata and aliases.
    redis: RedisStore,
}

impl Registry {
    /// A registry with artifacts under `root`.
    pub fn new(root: impl Into<PathBuf>, redis: RedisStore) -> Self {
        Self {
            root: root.into(),
            redis,
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut all = vec!["registry"];
        all.extend_from_slice(parts);
        self.redis.key(&all)
    }

    /// Registers a new version: files are written to a temporary directory and renamed into place before
    /// the metadata is recorded, so a failure never leaves a half-written version behind.
    pub async fn register(&self, model: NewModel) -> Result<ModelRecord, RegistryError> {
        valid_name(&model.name)?;
        let mut seen = std::collections::BTreeSet::from([MODEL_FILE]);
        for (file, _) in &model.files {
            valid_name(file)?;
            if !seen.insert(file.as_str()) {
                return Err(RegistryError::InvalidName(format!(
                    "{file} is given twice (or is {MODEL_FILE})"
                )));
            }
        }
        let model_dir = self.root.join(&model.name);
        std::fs::create_dir_all(&model_dir).map_err(|source| RegistryError::Io {
            path: model_dir.clone(),
            source,
        })?;
        let (version, target) = match &model.version {
            Some(version) => {
                valid_name(version)?;
                let target = model_dir.join(version);
                if target.exists() {
                    return Err(RegistryError::InvalidName(format!(
                        "{version} already exists"
                    )));
                }
                (version.clone(), target)
            }
            None => {
                let version = self.reserve_version(&model.name).await?;
                let target = model_dir.join(&version);
                (version, target)
            }
        };
        let staging = model_dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let written = write_files(&staging, &model);
        // Durable before Redis names it: a version whose record survives a crash must have its files.
        let written = written.and_then(|()| {
            crate::durable::sync_staged_dir(&staging)
                .and_then(|()| std::fs::rename(&staging, &target))
                .and_then(|()| crate::durable::sync_parent(&target))
                // The name's directory may be new: its entry in the models directory too.
                .and_then(|()| crate::durable::sync_parent(&model_dir))
                .map_err(|source| RegistryError::Io {
                    path: target.clone(),
                    source,
                })
        });
        if let Err(error) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
        let artifact = target.join(MODEL_FILE);
        let record = ModelRecord {
            name: model.name.clone(),
            version: version.clone(),
            family: model.family,
            sha256: hex::encode(Sha256::digest(&model.onnx)),
            files: model
                .files
                .iter()
                .map(|(name, bytes)| (name.clone(), hex::encode(Sha256::digest(bytes))))
                .collect(),
            artifact_uri: artifact
                .canonicalize()
                .unwrap_or(artifact)
                .to_string_lossy()
                .into_owned(),
            featurizer_version: model.featurizer_version,
            snapshot_id: model.snapshot_id,
            trained_on: model.trained_on,
            metrics: model.metrics,
            gate: model.gate,
            registered_at: Utc::now(),
        };
        let json = serde_json::to_string(&record).expect("records serialise");
        let mut connection = self.redis.connection();
        let seq: f64 = version.trim_start_matches('v').parse().unwrap_or(0.0);
        let stored: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .set(self.key(&[&model.name, "record", &version]), json)
            .zadd(self.key(&[&model.name, "versions"]), &version, seq)
            .sadd(self.key(&["names"]), &model.name)
            .query_async(&mut connection)
            .await;
        if let Err(error) = stored {
            let _ = std::fs::remove_dir_all(&target);
            return Err(error.into());
        }
        tracing::info!(name = %record.name, version = %record.version, sha256 = %record.sha256, "model registered");
        Ok(record)
    }

    /// Takes the next free version name (`v<N>`) of `name`.
    pub async fn reserve_version(&self, name: &str) -> Result<String, RegistryError> {
        valid_name(name)?;
        let mut connection = self.redis.connection();
        loop {
            let seq: u64 = connection.incr(self.key(&[name, "seq"]), 1).await?;
            let version = format!("v{seq}");
            if !self.root.join(name).join(&version).exists() {
                return Ok(version);
            }
        }
    }

    /// Every registered model name.
    pub async fn names(&self) -> Result<Vec<String>, RegistryError> {
        let mut names: Vec<String> = self
            .redis
            .connection()
            .smembers(self.key(&["names"]))
            .await?;
        names.sort();
        Ok(names)
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<ModelRecord>, RegistryError> {
        let versions: Vec<String> = self
            .redis
            .connection()
            .zrange(self.key(&[name, "versions"]), 0, -1)
            .await?;
        let mut records = Vec::with_capacity(versions.len());
        for version in versions {
            match self.get(name, &version).await {
                Ok(record) => records.push(record),
                // Removed by a prune between the two reads.
                Err(RegistryError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(records)
    }

    /// One version's record.
    pub async fn get(&self, name: &str, version: &str) -> Result<ModelRecord, RegistryError> {
        let key = self.key(&[name, "record", version]);
        let json: Option<String> = self.redis.connection().get(&key).await?;
        let json = json.ok_or_else(|| RegistryError::NotFound(format!("{name}:{version}")))?;
        serde_json::from_str(&json).map_err(|error| RegistryError::Corrupt {
            key,
            reason: error.to_string(),
        })
    }

    /// The version an alias points to.
    pub async fn alias(
        &self,
        name: &str,
        alias: ModelAlias,
    ) -> Result<Option<String>, RegistryError> {
        Ok(self
            .redis
            .connection()
            .get(self.key(&[name, "alias", alias.as_str()]))
            .await?)
    }

    /// Resolves `version` or an alias name (`champion`, `challenger`) to a record.
    pub async fn resolve(
        &self,
        name: &str,
        version_or_alias: &str,
    ) -> Result<ModelRecord, RegistryError> {
        let version = match version_or_alias.parse::<ModelAlias>() {
            Ok(alias) => self
                .alias(name, alias)
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("{name}@{version_or_alias}")))?,
            Err(_) => version_or_alias.to_owned(),
        };
        self.get(name, &version).await
    }

    /// Points `challenger` at a version (atomically with the check that its record exists, so a version
    /// `models prune` is removing cannot become the challenger).
    pub async fn set_challenger(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        valid_name(name)?;
        let script = redis::Script::new(
            "if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end \
             redis.call('SET', KEYS[1], ARGV[1]) return 1",
        );
        let set: i64 = script
            .key(self.key(&[name, "alias", ModelAlias::Challenger.as_str()]))
            .key(self.key(&[name, "record", version]))
            .arg(version)
            .invoke_async(&mut self.redis.connection())
            .await?;
        if set == 0 {
            return Err(RegistryError::NotFound(format!("{name}:{version}")));
        }
        Ok(())
    }

    /// Makes `version` the champion; the previous champion goes on the rollback history.
    /// Returns the previous champion. The check that the version's record exists and the move are one
    /// atomic step (a Lua script), so a version `models prune` is removing cannot become the champion.
    pub async fn promote(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<String>, RegistryError> {
        match self.promote_checked(name, version, None).await? {
            Promotion::Promoted { previous } | Promotion::Unchanged { previous } => Ok(previous),
            Promotion::ChampionChanged { .. } => {
                unreachable!("an unconditional promotion compares with nothing")
            }
        }
    }

    /// Makes `version` the champion only while the champion is still `expected` (None: there is
    /// none), in one atomic step: a challenger gated against `expected` must not replace a champion
    /// an operator promoted or rolled back to in the meantime.
    pub async fn promote_over(
        &self,
        name: &str,
        version: &str,
        expected: Option<&str>,
    ) -> Result<Promotion, RegistryError> {
        self.promote_checked(name, version, Some(expected.unwrap_or_default()))
            .await
    }

    /// [`Self::promote`] and [`Self::promote_over`]; `expected` Some("") means "no champion".
    async fn promote_checked(
        &self,
        name: &str,
        version: &str,
        expected: Option<&str>,
    ) -> Result<Promotion, RegistryError> {
        valid_name(name)?;
        let script = redis::Script::new(
            "if redis.call('EXISTS', KEYS[3]) == 0 then return {'missing'} end \
             local previous = redis.call('GET', KEYS[1]) \
             if previous == ARGV[1] then return {'unchanged', previous} end \
             if ARGV[2] == '1' and (previous or '') ~= ARGV[3] then return {'changed', previous or ''} end \
             redis.call('SET', KEYS[1], ARGV[1]) \
             if previous then redis.call('LPUSH', KEYS[2], previous) return {'promoted', previous} end \
             return {'promoted'}",
        );
        let outcome: Vec<String> = script
            .key(self.key(&[name, "alias", ModelAlias::Champion.as_str()]))
            .key(self.history_key(name))
            .key(self.key(&[name, "record", version]))
            .arg(version)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .invoke_async(&mut self.redis.connection())
            .await?;
        let second = || outcome.get(1).filter(|value| !value.is_empty()).cloned();
        match outcome.first().map(String::as_str) {
            Some("missing") => Err(RegistryError::NotFound(format!("{name}:{version}"))),
            Some("unchanged") => Ok(Promotion::Unchanged { previous: second() }),
            Some("changed") => Ok(Promotion::ChampionChanged { current: second() }),
            _ => {
                let previous = second();
                tracing::info!(name, version, ?previous, "champion promoted");
                Ok(Promotion::Promoted { previous })
            }
        }
    }

    /// Restores the previous champion: the newest entry of the rollback history whose record still
    /// exists (entries `models prune` removed are skipped, logged and dropped). Returns (from, to).
    /// The script reads the records of history entries it was not given as keys: fine on a standalone
    /// Redis (what the registry runs on), not on Redis Cluster.
    pub async fn rollback(&self, name: &str) -> Result<(String, String), RegistryError> {
        valid_name(name)?;
        let script = redis::Script::new(
            "local current = redis.call('GET', KEYS[1]) \
             if not current then return {'no_champion'} end \
             local skipped = {} \
             while true do \
               local previous = redis.call('LPOP', KEYS[2]) \
               if not previous then return {'no_history', unpack(skipped)} end \
               if redis.call('EXISTS', ARGV[1] .. previous) == 1 then \
                 redis.call('SET', KEYS[1], previous) \
                 return {'rolled_back', current, previous, unpack(skipped)} \
               end \
               table.insert(skipped, previous) \
             end",
        );
        let outcome: Vec<String> = script
            .key(self.key(&[name, "alias", ModelAlias::Champion.as_str()]))
            .key(self.history_key(name))
            .arg(self.key(&[name, "record", ""]))
            .invoke_async(&mut self.redis.connection())
            .await?;
        let skipped = |from: usize| outcome.get(from..).unwrap_or_default().join(", ");
        match outcome.first().map(String::as_str) {
            Some("rolled_back") if outcome.len() >= 3 => {
                let (current, previous) = (&outcome[1], &outcome[2]);
                if outcome.len() > 3 {
                    tracing::warn!(name, skipped = %skipped(3), "rollback history entries without a record skipped");
                }
                tracing::info!(name, from = %current, to = %previous, "champion rolled back");
                Ok((current.clone(), previous.clone()))
            }
            Some("no_champion") => Err(RegistryError::NotFound(format!("{name}@champion"))),
            _ => {
                if outcome.len() > 1 {
                    tracing::warn!(name, skipped = %skipped(1), "rollback history entries without a record dropped");
                }
                Err(RegistryError::NoHistory(name.to_owned()))
            }
        }
    }

    /// The rollback history of `name`, the most recent earlier champion first.
    pub async fn history(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .redis
            .connection()
            .lrange(self.history_key(name), 0, -1)
            .await?)
    }

    fn history_key(&self, name: &str) -> String {
        self.key(&[name, "history"])
    }

    /// Reads a version's ONNX bytes, refusing them when the checksum differs from the registered one.
    pub async fn load_verified(&self, record: &ModelRecord) -> Result<Vec<u8>, RegistryError> {
        read_verified(&PathBuf::from(&record.artifact_uri), &record.sha256)
    }

    /// The bytes of `name`, one of the version's other files (`seen_features.bin`, …), checked against
    /// the sha256 the record holds for it; `None` when the record lists no such file (a model
    /// registered without it).
    pub async fn load_file_verified(
        &self,
        record: &ModelRecord,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some(expected) = record.files.get(name) else {
            return Ok(None);
        };
        let path = PathBuf::from(&record.artifact_uri).with_file_name(name);
        read_verified(&path, expected).map(Some)
    }
}

/// The bytes of `path`, refused when their sha256 is not `expected`.
pub(crate) fn read_verified(path: &Path, expected: &str) -> Result<Vec<u8>, RegistryError> {
    let bytes = std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.to_owned(),
        source,
    })?;
    verify_checksum(path, &bytes, expected)?;
    Ok(bytes)
}

/// Compares the sha256 of `bytes` with `expected`.
pub fn verify_checksum(path: &Path, bytes: &[u8], expected: &str) -> Result<(), RegistryError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual == expected {
        Ok(())
    } else {
        Err(RegistryError::Checksum {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

fn write_files(staging: &Path, model: &NewModel) -> Result<(), RegistryError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RegistryError::Io { path, source }
    };
    std::fs::create_dir_all(staging).map_err(io(staging))?;
    let model_path = staging.join(MODEL_FILE);
    std::fs::write(&model_path, &model.onnx).map_err(io(&model_path))?;
    for (name, bytes) in &model.files {
        let path = staging.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    Ok(())
}
