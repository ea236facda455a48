//! The `sentiflow` command tree: `up`, `replay`, `topics`, each service (`ingest`, `infer`, `trainer`,
//! `drift run`) as a subcommand, and the operator commands (`models`, `retrain`, `drift mute`).
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sentiflow_common::catalogue::{Catalogue, topics};
use sentiflow_common::config::{KafkaArgs, TelemetryArgs};
use sentiflow_common::kafka::{self, ResilientProducer};
use sentiflow_common::telemetry;
use sentiflow_ingest::IngestConfig;
use sentiflow_trainer::TrainerConfig;

use crate::corpus::{self, CorpusFormat};
use crate::replay;
use crate::up::{self, UpArgs};

/// Streaming sentiment MLOps on Kafka: ingest, clean and label reviews, predict, watch for drift.
#[derive(Parser, Debug)]
#[command(name = "sentiflow", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole pipeline locally: Kafka + Redis from the setup cache, topics, services, and a corpus
    /// replay that stages a topic shift (drift → retrain → promotion → hot swap; --scenario plain: none).
    Up(UpArgs),
    /// Publish a corpus file (CSV/JSONL, .gz ok) to reviews.raw.
    Replay(ReplayArgs),
    /// Create the catalogue's topics (idempotent).
    Topics(TopicsArgs),
    /// Run the ingest service (reviews.raw → reviews.clean / reviews.dlq; POST /v1/reviews).
    Ingest(Box<IngestConfig>),
    /// Run the inference service (reviews.clean → predictions / alerts.negative; POST /v1/predict).
    Infer(Box<sentiflow_infer::InferConfig>),
    /// Run the trainer service (reviews.clean + labels.feedback → curation segments → dataset snapshots;
    /// retrain.requests → snapshot → train → gate → promote or reject on models.updates).
    Trainer(Box<TrainerConfig>),
    /// The drift service and its operator controls: run, mute, unmute, status.
    Drift {
        /// What to do.
        #[command(subcommand)]
        command: crate::drift::DriftCommand,
    },
    /// Ask for a retrain of the serving model now (publishes a retrain request by an operator).
    Retrain(Box<crate::drift::RetrainArgs>),
    /// Publish human labels to labels.feedback (one by flags, or a CSV/JSONL file; every row is
    /// checked first and nothing is sent if one is invalid): curation prefers them, drift joins them.
    Label(Box<crate::label::LabelArgs>),
    /// The dead-letter topic for operators: summary by service and error kind, the letters, and
    /// redrive of their originals to the source topic once the cause is fixed.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: crate::dlq::DlqCommand,
    },
    /// Train a model on a snapshot, register it, gate it against the champion (and promote with --promote).
    #[command(
        after_help = "The version directory holds model.onnx, the model card (card.json, card.md) and its \
                      charts (confusion_matrix.png, training_curve.png). The charts' text uses DejaVu Sans \
                      (/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf, Debian package fonts-dejavu-core) or \
                      the TTF file named by SENTIFLOW_CHART_FONT; without a readable font the charts are \
                      skipped and the card says why."
    )]
    Train(Box<crate::train::TrainArgs>),
    /// Evaluate a model (file or registry) on a labelled file.
    Eval(Box<crate::train::EvalArgs>),
    /// Every service's readiness at a glance (status, failing checks, the model infer serves); exit
    /// status 0 all ready, 1 one degraded, 2 one not ready or unreachable.
    Status(Box<crate::status::StatusArgs>),
    /// The model registry: list, show, promote, roll back, prune versions nothing needs.
    Models {
        /// What to do.
        #[command(subcommand)]
        command: crate::models::ModelsCommand,
    },
    /// Dataset snapshots: import labelled files, snapshot the curated stream, compact its segments, prune
    /// snapshots no model needs, list, show manifests.
    Dataset {
        /// What to do.
        #[command(subcommand)]
        command: crate::dataset::DatasetCommand,
    },
    /// Benchmarks against a baseline measured in the same run (train, infer, pipeline, drift).
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
}

/// Flags of `sentiflow replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Corpus file.
    #[arg(long)]
    pub file: PathBuf,
    /// Layout of the file.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,
    /// Publish at most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Rows per second (default: as fast as the broker accepts).
    #[arg(long)]
    pub rate: Option<u32>,
}

/// Flags of `sentiflow topics`.
#[derive(clap::Args, Debug)]
pub struct TopicsArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Catalogue file (default: the one built into this binary, schemas/topics.json).
    #[arg(long)]
    pub catalogue: Option<PathBuf>,
    /// Upper bound of the replication factor (e.g. 1 for a single-broker cluster).
    #[arg(long)]
    pub max_replication_factor: Option<i32>,
}

/// Runs a parsed command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let shutdown = sentiflow_common::shutdown::shutdown_on_signals();
    match cli.command {
        Command::Up(args) => {
            // `sentiflow` is a prefix of every service crate's target: their info lines tell the loop's
            // story (drift reports, the retrain request, the retrain's outcome, the model swap).
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn,sentiflow=info".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            up::up(args, shutdown).await.map(|_report| ())
        }
        Command::Replay(args) => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            let records = corpus::read_records(&args.file, args.format, args.limit)?;
            let producer = ResilientProducer::new(&args.kafka, "replay")?;
            let bar = replay::progress_bar(records.len() as u64, "published", true);
            let summary = replay::publish(
                &producer,
                &args.kafka.topic(topics::REVIEWS_RAW),
                &records,
                args.rate,
                &bar,
            )
            .await?;
            bar.finish();
            println!(
                "published {} records in {:.2} s ({:.0}/s)",
                summary.published,
                summary.elapsed.as_secs_f64(),
                summary.rate()
            );
            Ok(())
        }
        Command::Topics(args) => {
            telemetry::init_tracing(&TelemetryArgs::ephemeral());
            let catalogue = match &args.catalogue {
                Some(path) => {
                    Catalogue::load(path).with_context(|| format!("loading {}", path.display()))?
                }
                None => Catalogue::embedded().clone(),
            };
            let created =
                kafka::ensure_topics(&args.kafka, &catalogue, args.max_replication_factor).await?;
            println!(
                "{} topics in the catalogue, {} created: {created:?}",
                catalogue.topics.len(),
                created.len()
            );
            Ok(())
        }
        Command::Train(args) => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn,sentiflow_trainer=info".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            crate::train::train(*args).await
        }
        Command::Eval(args) => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            crate::train::eval(*args).await
        }
        Command::Status(args) => crate::status::run(*args).await,
        Command::Models { command } => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            crate::models::run(command).await
        }
        Command::Dataset { command } => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            tokio::task::spawn_blocking(move || crate::dataset::run(command)).await?
        }
        Command::Bench { command } => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            tokio::task::spawn_blocking(move || crate::bench::run(command)).await?
        }
        Command::Ingest(config) => {
            telemetry::init_tracing(&config.telemetry);
            tracing::info!(?config, "starting ingest");
            sentiflow_ingest::run(*config, shutdown).await?;
            Ok(())
        }
        Command::Drift { command } => crate::drift::run(command, shutdown).await,
        Command::Retrain(args) => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            crate::drift::retrain(*args).await
        }
        Command::Dlq { command } => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            crate::dlq::run(command, shutdown).await
        }
        Command::Label(args) => {
            telemetry::init_tracing(&TelemetryArgs {
                log_filter: "warn".to_owned(),
                ..TelemetryArgs::ephemeral()
            });
            crate::label::run(*args).await
        }
        Command::Infer(config) => {
            telemetry::init_tracing(&config.telemetry);
            tracing::info!(?config, "starting infer");
            sentiflow_infer::run(*config, shutdown).await?;
            Ok(())
        }
        Command::Trainer(config) => {
            telemetry::init_tracing(&config.telemetry);
            tracing::info!(?config, "starting trainer");
            sentiflow_trainer::run(*config, shutdown).await?;
            Ok(())
        }
    }
}
