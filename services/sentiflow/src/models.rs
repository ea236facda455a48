//! `sentiflow models list|show|promote|rollback|prune`: the registry from the command line. Promote and
//! rollback move the `champion` alias in Redis and announce it on `models.updates`; prune removes the
//! versions nothing needs any more.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, RedisArgs};
use sentiflow_common::events::{Event, ModelAlias, ModelUpdate, UpdateAction};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::store::RedisStore;
use sentiflow_trainer::registry::{
    ModelRecord, Registry, Removal, VersionPruneEntry, VersionPrunePolicy, VersionVerdict,
};
use sentiflow_trainer::retrain::OutcomeLog;

/// Where the registry lives.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Redis holding the registry metadata and aliases.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Data directory; artifacts live in `<data-dir>/models/<name>/<version>/`.
    #[arg(long, env = "SENTIFLOW_DATA_DIR", default_value = "data/local")]
    pub data_dir: PathBuf,
}

impl RegistryArgs {
    /// Opens the registry.
    pub fn open(&self) -> anyhow::Result<Registry> {
        Ok(self.open_with_store()?.0)
    }

    /// Opens the registry and hands back its Redis connection for other keys of the deployment.
    pub fn open_with_store(&self) -> anyhow::Result<(Registry, RedisStore)> {
        let store = RedisStore::connect_lazy(&self.redis).context("redis")?;
        Ok((
            Registry::new(self.data_dir.join("models"), store.clone()),
            store,
        ))
    }
}

/// `sentiflow models …`.
#[derive(clap::Subcommand, Debug)]
pub enum ModelsCommand {
    /// List every version of every model with its aliases.
    List {
        /// Registry location.
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one version (or alias) in full.
    Show {
        /// Registry location.
        #[command(flatten)]
        registry: RegistryArgs,
        /// Model name, e.g. sentiment-hashed.
        name: String,
        /// Version (v3) or alias (champion, challenger).
        version: String,
    },
    /// Make a version the champion and announce it on models.updates.
    Promote {
        /// Registry location.
        #[command(flatten)]
        registry: RegistryArgs,
        /// Kafka, for the models.updates event.
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Model name.
        name: String,
        /// Version to promote.
        version: String,
    },
    /// Restore the previous champion and announce it on models.updates.
    Rollback {
        /// Registry location.
        #[command(flatten)]
        registry: RegistryArgs,
        /// Kafka, for the models.updates event.
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Model name.
        name: String,
    },
    /// Remove model versions nothing needs: every version that is not the champion or challenger, not
    /// in the first --keep-history entries of the rollback history, not among the newest
    /// --keep-latest of its name, not named by an unannounced retrain outcome, readable and older than
    /// --min-age-hours (every retrain registers one; they add up). The snapshots they were trained on
    /// become prunable by `sentiflow dataset prune`. Exits non-zero when a removal fails (after
    /// trying the others).
    Prune(PruneModelsArgs),
}

/// Flags of `sentiflow models prune`.
#[derive(clap::Args, Debug)]
pub struct PruneModelsArgs {
    /// Registry location.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Keep the newest this many versions of each model name whatever else holds.
    #[arg(long, default_value_t = 3)]
    pub keep_latest: usize,
    /// Keep this many earlier champions per name (the rollback history, most recent first), at least
    /// 1; `models rollback` can go back that far. Deeper entries are dropped from the history with
    /// their versions.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_history: u32,
    /// Keep versions registered less than this many hours ago, at least 1 (a retrain may be gating
    /// one it has just registered; the same age protects interrupted writes' leftovers).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_age_hours: u32,
    /// Also remove version directories the registry has no record of (left by a registration that
    /// crashed between writing its files and its record); by default they are listed and kept.
    #[arg(long)]
    pub remove_unregistered: bool,
    /// Also forget the trainer's announced retrain outcomes decided more than this many days ago
    /// (they deduplicate redelivered `retrain.requests`; keep them longer than that topic's retention,
    /// 30 days in the catalogue, hence at least 31).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(31..))]
    pub keep_outcomes_days: u32,
    /// Print what would be removed and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a models command.
pub async fn run(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List { registry, json } => {
            let registry = registry.open()?;
            let mut rows = Vec::new();
            for name in registry.names().await? {
                let champion = registry.alias(&name, ModelAlias::Champion).await?;
                let challenger = registry.alias(&name, ModelAlias::Challenger).await?;
                for record in registry.versions(&name).await? {
                    let mut aliases = Vec::new();
                    if champion.as_deref() == Some(record.version.as_str()) {
                        aliases.push("champion");
                    }
                    if challenger.as_deref() == Some(record.version.as_str()) {
                        aliases.push("challenger");
                    }
                    rows.push((record, aliases.join(",")));
                }
            }
            if json {
                let values: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(record, aliases)| {
                        let mut value = serde_json::to_value(record).expect("records serialise");
                        value["aliases"] = serde_json::json!(aliases);
                        value
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
            } else {
                println!(
                    "{:<20} {:<8} {:<8} {:<20} {:>9} {:<22} {:<12}",
                    "NAME", "VERSION", "FAMILY", "ALIASES", "MACRO_F1", "SNAPSHOT", "SHA256"
                );
                for (record, aliases) in &rows {
                    let macro_f1 = record
                        .metrics
                        .get("macro_f1")
                        .map_or("-".to_owned(), |value| format!("{value:.4}"));
                    println!(
                        "{:<20} {:<8} {:<8} {:<20} {:>9} {:<22} {:<12}",
                        record.name,
                        record.version,
                        record.family.as_str(),
                        aliases,
                        macro_f1,
                        record.snapshot_id.chars().take(22).collect::<String>(),
                        &record.sha256[..12]
                    );
                }
            }
            Ok(())
        }
        ModelsCommand::Show {
            registry,
            name,
            version,
        } => {
            let record = registry.open()?.resolve(&name, &version).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
            Ok(())
        }
        ModelsCommand::Promote {
            registry,
            kafka,
            name,
            version,
        } => {
            let registry = registry.open()?;
            let record = registry.get(&name, &version).await?;
            registry
                .load_verified(&record)
                .await
                .context("refusing to promote")?;
            let previous = registry.promote(&name, &version).await?;
            let event = record.update_event(
                UpdateAction::Promoted,
                previous.clone(),
                Some(ModelAlias::Champion),
            );
            announce(&kafka, &event).await.context("promoted in the registry, but the models.updates event was not published; run promote again to re-announce")?;
            println!(
                "{name}: champion {} -> {version}",
                previous.as_deref().unwrap_or("(none)")
            );
            Ok(())
        }
        ModelsCommand::Rollback {
            registry,
            kafka,
            name,
        } => {
            let registry = registry.open()?;
            let (from, to) = registry.rollback(&name).await?;
            let record: ModelRecord = registry.get(&name, &to).await?;
            let event = record.update_event(
                UpdateAction::RolledBack,
                Some(from.clone()),
                Some(ModelAlias::Champion),
            );
            announce(&kafka, &event).await.context(
                "rolled back in the registry, but the models.updates event was not published",
            )?;
            println!("{name}: champion {from} -> {to} (rolled back)");
            Ok(())
        }
        ModelsCommand::Prune(args) => prune(&args).await,
    }
}

/// `sentiflow models prune`: plans from the registry, then removes each planned version through the
/// registry's atomic check (a version promoted meanwhile stays).
async fn prune(args: &PruneModelsArgs) -> anyhow::Result<()> {
    let (registry, store) = args.registry.open_with_store()?;
    let policy = VersionPrunePolicy {
        keep_latest: args.keep_latest,
        keep_history: args.keep_history as usize,
        min_age: chrono::Duration::hours(i64::from(args.min_age_hours)),
        remove_unregistered: args.remove_unregistered,
    };
    let now = chrono::Utc::now();
    let names = registry
        .names()
        .await
        .context("reading the registry (nothing was removed)")?;
    if names.is_empty() && registry.has_version_directories()? {
        bail!(
            "the registry ({}, key prefix {:?}) lists no model, yet {} holds version directories: \
             check --redis-url and --redis-key-prefix (nothing was removed)",
            args.registry.redis.url,
            args.registry.redis.key_prefix,
            args.registry.data_dir.join("models").display()
        );
    }
    // A retrain whose outcome is recorded but not yet announced (its trainer stopped in between) will
    // still promote its version or make it the challenger when it finishes.
    let outcomes = OutcomeLog::new(store);
    let held: BTreeMap<(String, String), String> = outcomes
        .all()
        .await
        .context("reading the retrain outcomes (nothing was removed)")?
        .into_values()
        .filter(|outcome| !outcome.announced)
        .filter_map(|outcome| {
            let version = outcome.version?;
            let reason = format!("retrain {} not yet announced", outcome.request_id);
            Some(((outcome.model_name, version), reason))
        })
        .collect();
    let mut plan = registry
        .plan_prune(&policy, &held, now)
        .await
        .context("planning the prune (nothing was removed)")?;
    let registered: Vec<_> = plan.iter().filter(|entry| entry.registered).collect();
    if !registered.is_empty() && !registered.iter().any(|entry| entry.directory.is_dir()) {
        bail!(
            "none of the {} registered versions' directories exists here (e.g. {}): run where the \
             registry's artifacts are, with the deployment's --data-dir (nothing was removed)",
            registered.len(),
            registered[0].directory.display()
        );
    }
    // One failure does not stop the others; the run reports them all and exits non-zero.
    let mut failures = Vec::new();
    let (mut removed, mut freed) = (0, 0);
    for entry in &mut plan {
        if entry.verdict != VersionVerdict::Remove {
            continue;
        }
        if !args.dry_run {
            match registry.remove_version(entry, policy.keep_history).await {
                Ok(Removal::Removed) => {}
                Ok(Removal::Kept(reason)) => {
                    tracing::info!(name = %entry.name, version = %entry.version, %reason, "kept after all");
                    entry.verdict = VersionVerdict::Changed { reason };
                    continue;
                }
                Ok(Removal::RecordOnly(error)) => {
                    failures.push(format!("{}@{}: {error}", entry.name, entry.version));
                    entry.verdict = VersionVerdict::Failed { error };
                    continue;
                }
                Err(error) => {
                    failures.push(format!("{}@{}: {error}", entry.name, entry.version));
                    entry.verdict = VersionVerdict::Failed {
                        error: error.to_string(),
                    };
                    continue;
                }
            }
        }
        removed += 1;
        freed += entry.bytes;
    }
    let (mut leftovers, mut outcomes_forgotten) = (0, 0);
    if !args.dry_run {
        match registry.remove_leftovers(now - policy.min_age) {
            Ok(count) => leftovers = count,
            Err(error) => failures.push(format!("leftovers of interrupted writes: {error}")),
        }
        let cutoff = now - chrono::Duration::days(i64::from(args.keep_outcomes_days));
        match outcomes.forget_announced_before(cutoff).await {
            Ok(count) => outcomes_forgotten = count,
            Err(error) => failures.push(format!("forgetting old retrain outcomes: {error}")),
        }
    }
    report_prune(
        args,
        &plan,
        (removed, freed),
        leftovers,
        outcomes_forgotten,
        &failures,
    )?;
    if !failures.is_empty() {
        bail!(
            "{} of the prune's steps failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Prints a prune's plan and totals: a table, or JSON with `--json`.
fn report_prune(
    args: &PruneModelsArgs,
    plan: &[VersionPruneEntry],
    (removed, freed): (usize, u64),
    leftovers: usize,
    outcomes_forgotten: usize,
    failures: &[String],
) -> anyhow::Result<()> {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": args.dry_run,
                "versions": plan,
                "removed": removed,
                "freed_bytes": freed,
                "leftovers_removed": leftovers,
                "retrain_outcomes_forgotten": outcomes_forgotten,
                "failures": failures,
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<20} {:>9}  fate",
        "NAME", "VERSION", "REGISTERED", "MB"
    );
    for entry in plan {
        println!(
            "{:<20} {:<8} {:<20} {:>9.1}  {}",
            entry.name,
            entry.version,
            entry.registered_at.map_or_else(
                || "?".to_owned(),
                |at| at.format("%Y-%m-%d %H:%M").to_string()
            ),
            entry.bytes as f64 / 1e6,
            entry.verdict.describe()
        );
    }
    crate::dataset::print_prune_totals(
        args.dry_run,
        (removed, plan.len(), "versions"),
        freed,
        leftovers,
    );
    if outcomes_forgotten > 0 {
        println!(
            "forgot {outcomes_forgotten} announced retrain outcomes older than {} days",
            args.keep_outcomes_days
        );
    }
    Ok(())
}

/// Publishes a models.updates event and waits for the broker's acknowledgement.
pub async fn announce(kafka: &KafkaArgs, event: &ModelUpdate) -> anyhow::Result<()> {
    let producer = ResilientProducer::new(kafka, "cli")?;
    let payload = event.to_json_vec()?;
    let ack = producer
        .enqueue(
            &kafka.topic(topics::MODELS_UPDATES),
            Some(event.key().as_bytes()),
            &payload,
            None,
        )
        .await?;
    let (partition, offset) =
        tokio::time::timeout(std::time::Duration::from_secs(30), await_delivery(ack))
            .await
            .context("timed out waiting for the broker")??;
    tracing::info!(partition, offset, action = ?event.action, "models.updates published");
    Ok(())
}
