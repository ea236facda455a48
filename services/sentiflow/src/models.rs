//! `sentiflow models list|show|promote|rollback`: the registry from the command line. Promote and
//! rollback move the `champion` alias in Redis and announce it on `models.updates`.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::path::PathBuf;

use anyhow::Context;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::{KafkaArgs, RedisArgs};
use sentiflow_common::events::{Event, ModelAlias, ModelUpdate, UpdateAction};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::store::RedisStore;
use sentiflow_trainer::registry::{ModelRecord, Registry};

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
        let store = RedisStore::connect_lazy(&self.redis).context("redis")?;
        Ok(Registry::new(self.data_dir.join("models"), store))
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
    }
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
