//! Registry upkeep (`sentiflow models prune`): which model versions stay (aliases, rollback history,
//! the newest, the young) and the atomic removal of the others' records and artifact directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use sentiflow_common::events::ModelAlias;
use serde::Serialize;

use super::{Registry, RegistryError, valid_name};
use crate::dataset::{directory_bytes, remove_stale_leftovers};

/// What a prune keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionPrunePolicy {
    /// Newest registered versions kept per model name, whatever else holds.
    pub keep_latest: usize,
    /// Entries of each name's rollback history kept (the most recent first), so `models rollback` can
    /// go back this many champions; at least 1, which also keeps the version a serving instance
    /// still runs while it loads a new champion.
    pub keep_history: usize,
    /// Versions registered (directories written) more recently than this stay: a retrain may be
    /// gating one it has just registered.
    pub min_age: chrono::Duration,
    /// Also remove version directories the registry has no record of (left by a registration that
    /// crashed between its rename and its Redis write, or by a lost registry); kept by default.
    pub remove_unregistered: bool,
}

/// What a prune does to one model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum VersionVerdict {
    /// Kept: the `champion` alias points to it.
    Champion,
    /// Kept: the `challenger` alias points to it.
    Challenger,
    /// Kept: entry `depth` (1 = the next rollback) of the rollback history.
    Rollback {
        /// Position in the history, from 1.
        depth: usize,
    },
    /// Kept: the caller holds it (e.g. a retrain outcome that is recorded but not yet announced will
    /// still promote it or make it the challenger).
    Held {
        /// Why.
        reason: String,
    },
    /// Kept: among the newest `keep_latest` of its name.
    Latest,
    /// Kept: younger than `min_age`.
    Young,
    /// Kept: the record cannot be read (for an operator to look at).
    Unreadable {
        /// Why.
        error: String,
    },
    /// Kept: a directory without a registry record (removed only with `remove_unregistered`).
    Unregistered,
    /// Kept: planned for removal, but it changed meanwhile (see [`Removal::Kept`]).
    Changed {
        /// What changed, e.g. "became champion".
        reason: String,
    },
    /// Planned for removal; the removal failed (the run goes on and exits non-zero).
    Failed {
        /// Why, and what is left.
        error: String,
    },
    /// Removed (in a dry run: would be).
    Remove,
}

impl VersionVerdict {
    /// One line for a table.
    pub fn describe(&self) -> String {
        match self {
            Self::Champion => "kept: champion".to_owned(),
            Self::Challenger => "kept: challenger".to_owned(),
            Self::Rollback { depth } => format!("kept: rollback history #{depth}"),
            Self::Held { reason } => format!("kept: {reason}"),
            Self::Latest => "kept: among the newest".to_owned(),
            Self::Young => "kept: younger than --min-age-hours".to_owned(),
            Self::Unreadable { error } => format!("kept: unreadable record ({error})"),
            Self::Unregistered => "kept: not in the registry (--remove-unregistered)".to_owned(),
            Self::Changed { reason } => format!("kept: {reason} while pruning"),
            Self::Failed { error } => format!("FAILED: {error}"),
            Self::Remove => "remove".to_owned(),
        }
    }
}

/// One model version (or unregistered version directory) in a prune plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionPruneEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Whether the registry holds a record for it.
    pub registered: bool,
    /// When it was registered (for an unregistered directory: last modified); None when unknown.
    pub registered_at: Option<DateTime<Utc>>,
    /// Snapshot it was trained on, when the record says.
    pub snapshot_id: Option<String>,
    /// Its artifact directory: the one its record's `artifact_uri` is in (where serving reads it), or
    /// for an unregistered one where it was found.
    pub directory: PathBuf,
    /// Bytes of its artifact directory.
    pub bytes: u64,
    /// What happens to it.
    #[serde(flatten)]
    pub verdict: VersionVerdict,
}

/// The outcome of removing one planned version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Record and directory removed.
    Removed,
    /// The record is removed but the directory could not be moved out of the listing (e.g.
    /// permissions): it is unregistered from now on. Why.
    RecordOnly(String),
    /// Kept after all: since the plan it became the champion or challenger, moved up the rollback
    /// history, or (an unregistered directory) was registered. The reason.
    Kept(String),
}

impl Registry {
    /// Decides, for every registered version and every version directory on disk, whether a prune
    /// keeps it and why; `held` names versions (name, version) the caller needs kept, with the reason.
    /// Reads only.
    pub async fn plan_prune(
        &self,
        policy: &VersionPrunePolicy,
        held: &BTreeMap<(String, String), String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<VersionPruneEntry>, RegistryError> {
        let mut names: BTreeSet<String> = self.names().await?.into_iter().collect();
        names.extend(subdirectories(&self.root)?);
        let mut plan = Vec::new();
        for name in names {
            if valid_name(&name).is_err() {
                continue;
            }
            let mut connection = self.redis.connection();
            let registered: Vec<String> = connection
                .zrange(self.key(&[&name, "versions"]), 0, -1)
                .await?;
            let champion = self.alias(&name, ModelAlias::Champion).await?;
            let challenger = self.alias(&name, ModelAlias::Challenger).await?;
            let history = self.history(&name).await?;
            let latest_from = registered.len().saturating_sub(policy.keep_latest);
            for (index, version) in registered.iter().enumerate() {
                let mut record = self.get(&name, version).await;
                let dir = match &record {
                    Ok(found) => match version_directory(&found.artifact_uri, &name, version) {
                        Some(dir) => dir,
                        None => {
                            let error = RegistryError::Corrupt {
                                key: self.key(&[&name, "record", version]),
                                reason: format!(
                                    "artifact_uri {} is not in a {name}/{version} directory",
                                    found.artifact_uri
                                ),
                            };
                            record = Err(error);
                            self.root.join(&name).join(version)
                        }
                    },
                    Err(_) => self.root.join(&name).join(version),
                };
                let depth = history
                    .iter()
                    .take(policy.keep_history)
                    .position(|entry| entry == version);
                let (registered_at, snapshot_id) = match &record {
                    Ok(record) => (Some(record.registered_at), Some(record.snapshot_id.clone())),
                    Err(_) => (None, None),
                };
                let verdict = if champion.as_deref() == Some(version) {
                    VersionVerdict::Champion
                } else if challenger.as_deref() == Some(version) {
                    VersionVerdict::Challenger
                } else if let Some(depth) = depth {
                    VersionVerdict::Rollback { depth: depth + 1 }
                } else if let Some(reason) = held.get(&(name.clone(), version.clone())) {
                    VersionVerdict::Held {
                        reason: reason.clone(),
                    }
                } else if index >= latest_from {
                    VersionVerdict::Latest
                } else if let Err(error) = &record {
                    VersionVerdict::Unreadable {
                        error: error.to_string(),
                    }
                } else if registered_at.is_some_and(|at| now - at < policy.min_age) {
                    VersionVerdict::Young
                } else {
                    VersionVerdict::Remove
                };
                plan.push(VersionPruneEntry {
                    name: name.clone(),
                    version: version.clone(),
                    registered: true,
                    registered_at,
                    snapshot_id,
                    bytes: directory_bytes(&dir),
                    directory: dir,
                    verdict,
                });
            }
            let known: BTreeSet<&String> = registered.iter().collect();
            for version in subdirectories(&self.root.join(&name))? {
                if known.contains(&version) || valid_name(&version).is_err() {
                    continue;
                }
                let dir = self.root.join(&name).join(&version);
                let verdict = if !policy.remove_unregistered {
                    VersionVerdict::Unregistered
                } else if modified_since(&dir, now - policy.min_age) {
                    VersionVerdict::Young
                } else {
                    VersionVerdict::Remove
                };
                plan.push(VersionPruneEntry {
                    name: name.clone(),
                    version,
                    registered: false,
                    registered_at: modified(&dir),
                    snapshot_id: None,
                    bytes: directory_bytes(&dir),
                    directory: dir,
                    verdict,
                });
            }
        }
        Ok(plan)
    }

    /// Removes one version the plan marked for removal. For a registered version, one Lua script
    /// checks that it is not the champion or challenger nor among the first `keep_history` rollback
    /// entries and, if so, deletes its record, takes it out of the version list and the deeper rollback
    /// history; only then is the directory renamed out of the listing and deleted. So a concurrent
    /// promote (whose own script needs the record) either sees the version gone or keeps it.
    pub async fn remove_version(
        &self,
        entry: &VersionPruneEntry,
        keep_history: usize,
    ) -> Result<Removal, RegistryError> {
        let (name, version) = (entry.name.as_str(), entry.version.as_str());
        valid_name(name)?;
        valid_name(version)?;
        let record_key = self.key(&[name, "record", version]);
        if entry.registered {
            let script = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return 'champion' end \
                 if redis.call('GET', KEYS[2]) == ARGV[1] then return 'challenger' end \
                 local kept = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[2]) - 1) \
                 for _, entry in ipairs(kept) do \
                   if entry == ARGV[1] then return 'rollback history' end \
                 end \
                 redis.call('DEL', KEYS[4]) \
                 redis.call('ZREM', KEYS[5], ARGV[1]) \
                 redis.call('LREM', KEYS[3], 0, ARGV[1]) \
                 return 'removed'",
            );
            let outcome: String = script
                .key(self.key(&[name, "alias", ModelAlias::Champion.as_str()]))
                .key(self.key(&[name, "alias", ModelAlias::Challenger.as_str()]))
                .key(self.history_key(name))
                .key(&record_key)
                .key(self.key(&[name, "versions"]))
                .arg(version)
                .arg(keep_history.max(1))
                .invoke_async(&mut self.redis.connection())
                .await?;
            if outcome != "removed" {
                return Ok(Removal::Kept(format!("became {outcome}")));
            }
        } else {
            let exists: bool = self.redis.connection().exists(&record_key).await?;
            if exists {
                return Ok(Removal::Kept("was registered".to_owned()));
            }
        }
        let dir = &entry.directory;
        let parent = dir.parent().unwrap_or(Path::new("."));
        let removing = parent.join(format!(
            ".removing-{version}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        match std::fs::rename(dir, &removing) {
            Ok(()) => {}
            // Already gone: the record was all that was left.
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Ok(Removal::RecordOnly(format!(
                    "record removed, but {} could not be moved away ({source}); it is listed as \
                     unregistered from now on (--remove-unregistered removes it)",
                    dir.display()
                )));
            }
        }
        // A failure here leaves a `.removing-*` leftover that the next prune removes.
        if let Err(source) = std::fs::remove_dir_all(&removing)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %removing.display(), %source, "pruned version's files not fully removed; the next prune retries");
        }
        tracing::info!(name, version, "model version pruned");
        Ok(Removal::Removed)
    }

    /// Removes what interrupted registrations and removals left under every model name (`.tmp-*`,
    /// `.removing-*`) older than `older_than`; returns how many.
    pub fn remove_leftovers(&self, older_than: DateTime<Utc>) -> Result<usize, RegistryError> {
        let mut removed = 0;
        for name in subdirectories(&self.root)? {
            removed += remove_stale_leftovers(&self.root.join(name), older_than)
                .map_err(|(path, source)| RegistryError::Io { path, source })?;
        }
        Ok(removed)
    }

    /// Whether any version directory exists on disk (to tell an empty registry from a wrong key prefix).
    pub fn has_version_directories(&self) -> Result<bool, RegistryError> {
        for name in subdirectories(&self.root)? {
            if !subdirectories(&self.root.join(name))?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The version directory `artifact_uri` (`…/<name>/<version>/model.onnx`) is in, or None when its
/// path does not end that way (a record that would make a prune delete something else).
fn version_directory(artifact_uri: &str, name: &str, version: &str) -> Option<PathBuf> {
    let dir = Path::new(artifact_uri).parent()?;
    let ends_right = dir.file_name()? == version && dir.parent()?.file_name()? == name;
    ends_right.then(|| dir.to_owned())
}

/// Names of the sub-directories of `dir` that do not start with '.', sorted; empty when `dir` is
/// missing.
fn subdirectories(dir: &Path) -> Result<Vec<String>, RegistryError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RegistryError::Io {
                path: PathBuf::from(dir),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// When `path` was last modified, if readable.
fn modified(path: &Path) -> Option<DateTime<Utc>> {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .map(DateTime::<Utc>::from)
}

/// Whether `path` was modified at or after `since` (unknown counts as recent: keep it).
fn modified_since(path: &Path, since: DateTime<Utc>) -> bool {
    path.exists() && modified(path).is_none_or(|at| at >= since)
}
