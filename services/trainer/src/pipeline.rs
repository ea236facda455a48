//! One training run of the `hashed` family: snapshot → featurize → training (sparse SGD on the CPU, or
//! the burn trainer on a CUDA GPU) → evaluation on the snapshot's test split → ONNX export → model card
//! → registry → gate against the champion (evaluated on the same test rows through ONNX Runtime) →
//! optional promotion.

use std::collections::BTreeMap;
use std::time::Instant;

pub use sentiflow_burn::{BurnConfig, BurnDevice, CudaProbe};
use sentiflow_common::events::{GateDecision, ModelFamily};
use sentiflow_model::encoder::{EncoderTokenizer, HashedMember};
use sentiflow_model::eval::{Evaluation, evaluate};
use sentiflow_model::featurize::{FEATURIZER_VERSION, Featurizer, FeaturizerConfig};
use sentiflow_model::hashed::CLASSES;
use sentiflow_model::lexicon::Lexicon;
use sentiflow_model::onnx::{Family, ModelMetadata, export_hashed, weights_sha256};
use sentiflow_model::runtime::{DeviceRequest, LoadedModel, OrtEnvironment};
use sentiflow_model::seen::{SEEN_FEATURES_FILE, SeenFeatures};
use sentiflow_model::train::{Example, TrainConfig, TrainedModel, train};
use serde::{Deserialize, Serialize};

use crate::charts::{self, ChartInputs, Charts, CurvePoint};
use crate::dataset::{DatasetRow, LabelWeights, SnapshotStore, Split};
use crate::gate::{self, GatePolicy};
use crate::registry::{ModelRecord, NewModel, Registry};

/// Which device trains. `auto` takes a CUDA GPU only when a probe of the driver finds a usable one
/// (and says why not otherwise); `cuda` without one is an error, never a silent fallback.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainDevice {
    /// Hashed family: CUDA (the burn trainer) when the driver probe finds a usable GPU, else the CPU
    /// sparse trainer. The frozen encoder trains its head on the CPU.
    Auto,
    /// The CPU: sparse SGD (hashed), ORT embeddings + head (encoder).
    Cpu,
    /// The burn trainer on the first CUDA GPU; fails when there is none.
    Cuda,
    /// The burn trainer on burn's CPU (ndarray) backend: the GPU code path without a GPU (slow; for
    /// checking that path).
    BurnCpu,
}

/// Which trainer a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainer {
    /// The hand-written sparse SGD (`sentiflow_model::train`).
    Sparse,
    /// The generic burn code (`sentiflow_burn`) on a backend.
    Burn(BurnDevice),
}

/// The device decision and its reason (both go into the log and the model card).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChoice {
    /// The trainer.
    pub trainer: Trainer,
    /// `cpu`, `cuda` or `burn-cpu`.
    pub device: &'static str,
    /// Why.
    pub reason: String,
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Snapshot to train on.
    pub snapshot_id: String,
    /// Registry name, e.g. `sentiment-hashed`.
    pub model_name: String,
    /// Featurizer settings.
    pub featurizer: FeaturizerConfig,
    /// Trainer settings (including the seed).
    pub train: TrainConfig,
    /// Settings of the burn trainer (used when the device decision picks it).
    pub burn: BurnConfig,
    /// Device wanted.
    pub device: TrainDevice,
    /// Gate thresholds.
    pub gate: GatePolicy,
    /// How much each labelled row counts in training, by label provenance.
    pub label_weights: LabelWeights,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The registered version.
    pub record: ModelRecord,
    /// Test-split evaluation of the new model.
    pub test: Evaluation,
    /// The champion's test-split evaluation on the same rows, if there was a champion.
    pub champion_test: Option<Evaluation>,
    /// The gate's decision.
    pub gate: GateDecision,
    /// The champion version the gate compared with (None: there was none); a retrain promotes only
    /// while it is still the champion.
    pub gated_against: Option<String>,
    /// Seconds spent training (featurizing included).
    pub train_seconds: f64,
    /// Training tokens per second of the best run's SGD (mean over epochs).
    pub tokens_per_second: f64,
}

/// The model card: everything needed to understand and reproduce a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model name and version.
    pub name: String,
    /// Registry version.
    pub version: String,
    /// Family.
    pub family: ModelFamily,
    /// Snapshot id (its manifest holds the data's checksums).
    pub snapshot_id: String,
    /// Featurizer version and configuration.
    pub featurizer_version: String,
    /// Featurizer configuration.
    pub featurizer_config: FeaturizerConfig,
    /// Hash of the featurizer configuration.
    pub featurizer_config_hash: String,
    /// Trainer configuration (seed included).
    pub train_config: TrainConfig,
    /// The burn trainer's own settings, when it trained the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_config: Option<BurnConfig>,
    /// How much each label counted in training (human labels × `human`).
    #[serde(default = "LabelWeights::unweighted")]
    pub label_weights: LabelWeights,
    /// Device that trained it, and why.
    pub device: String,
    /// Why that device.
    pub device_reason: String,
    /// sha256 of the weights.
    pub weights_sha256: String,
    /// Per-epoch history (loss, validation macro-F1, tokens/s).
    pub history: Vec<sentiflow_model::train::EpochRecord>,
    /// Best epoch.
    pub best_epoch: usize,
    /// Validation evaluation.
    pub validation: Evaluation,
    /// Test evaluation (the gate set).
    pub test: Evaluation,
    /// The champion's evaluation on the same test rows.
    pub champion_test: Option<Evaluation>,
    /// Gate decision.
    pub gate: GateDecision,
    /// The confusion-matrix and training-curve PNGs next to the card (names and sha256), or why they
    /// were skipped. Absent in cards written before charts existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charts: Option<Charts>,
}

/// Training-run failures.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Snapshot problem.
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    /// Registry problem.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// Featurizer configuration problem.
    #[error("featurizer: {0}")]
    Featurizer(String),
    /// Training failed.
    #[error("training: {0}")]
    Train(#[from] sentiflow_model::train::TrainError),
    /// Export or inference failed.
    #[error("onnx: {0}")]
    Onnx(String),
    /// The device cannot be used.
    #[error("{0}")]
    Device(String),
    /// The burn trainer failed.
    #[error("burn trainer: {0}")]
    Burn(String),
    /// A request setting out of range.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// Decides the training device honestly, probing the CUDA driver (once per process) when the
/// answer depends on it.
pub fn choose_device(wanted: TrainDevice) -> Result<DeviceChoice, PipelineError> {
    match wanted {
        TrainDevice::Auto | TrainDevice::Cuda => {
            choose_device_with(wanted, sentiflow_burn::probe::cuda())
        }
        TrainDevice::Cpu | TrainDevice::BurnCpu => {
            choose_device_with(wanted, &CudaProbe::Unavailable("not probed".to_owned()))
        }
    }
}

/// [`choose_device`] for a given probe result.
pub fn choose_device_with(
    wanted: TrainDevice,
    probe: &CudaProbe,
) -> Result<DeviceChoice, PipelineError> {
    let cuda = |reason: String| DeviceChoice {
        trainer: Trainer::Burn(BurnDevice::Cuda),
        device: BurnDevice::Cuda.as_str(),
        reason,
    };
    match (wanted, probe) {
        (TrainDevice::Cpu, _) => Ok(DeviceChoice {
            trainer: Trainer::Sparse,
            device: "cpu",
            reason: "requested: sparse SGD on the CPU".to_owned(),
        }),
        (TrainDevice::BurnCpu, _) => Ok(DeviceChoice {
            trainer: Trainer::Burn(BurnDevice::NdArray),
            device: BurnDevice::NdArray.as_str(),
            reason: "requested: the burn trainer on its CPU (ndarray) backend".to_owned(),
        }),
        (TrainDevice::Auto, CudaProbe::Available { .. }) => Ok(cuda(format!(
            "auto: {}; burn trainer on the GPU",
            probe.describe()
        ))),
        (TrainDevice::Auto, CudaProbe::Unavailable(why)) => Ok(DeviceChoice {
            trainer: Trainer::Sparse,
            device: "cpu",
            reason: format!("auto: no usable CUDA ({why}); sparse SGD on the CPU"),
        }),
        (TrainDevice::Cuda, CudaProbe::Available { .. }) => {
            Ok(cuda(format!("requested: {}", probe.describe())))
        }
        (TrainDevice::Cuda, CudaProbe::Unavailable(why)) => Err(PipelineError::Device(format!(
            "--device cuda: no usable CUDA GPU: {why}; use --device auto or --device cpu"
        ))),
    }
}

pub(crate) fn examples(rows: &[DatasetRow], weights: LabelWeights) -> Vec<Example> {
    rows.iter()
        .zip(weights.row_weights(rows))
        .map(|(row, weight)| Example {
            text: row.text.clone(),
            label: row.label.index(),
            weight,
        })
        .collect()
}

/// Runs one training run and registers the result; promotes it when `promote` and the gate passes.
pub async fn train_and_register(
    store: &SnapshotStore,
    registry: &Registry,
    lexicon: Lexicon,
    ort: &OrtEnvironment,
    request: &TrainRequest,
) -> Result<TrainOutcome, PipelineError> {
    let DeviceChoice {
        trainer,
        device,
        reason: device_reason,
    } = choose_device(request.device)?;
    tracing::info!(device, reason = %device_reason, snapshot = %request.snapshot_id, "training");
    request
        .label_weights
        .validate()
        .map_err(PipelineError::Config)?;
    let label_weights = request.label_weights.for_family(ModelFamily::Hashed);
    let manifest = store.manifest(&request.snapshot_id)?;
    let train_rows = store.read(&request.snapshot_id, Split::Train)?;
    let validation_rows = store.read(&request.snapshot_id, Split::Validation)?;
    let test_rows = store.read(&request.snapshot_id, Split::Test)?;
    let featurizer = Featurizer::new(request.featurizer.clone(), Some(lexicon))
        .map_err(|error| PipelineError::Featurizer(error.to_string()))?;

    let started = Instant::now();
    let featurizer_for_training = featurizer.clone();
    let train_config = request.train.clone();
    let burn_config = request.burn.clone();
    let (train_examples, validation_examples) = (
        examples(&train_rows, label_weights),
        examples(&validation_rows, label_weights),
    );
    let trained: TrainedModel = tokio::task::spawn_blocking(move || match trainer {
        Trainer::Sparse => train(
            &featurizer_for_training,
            &train_examples,
            &validation_examples,
            &train_config,
        )
        .map_err(PipelineError::from),
        Trainer::Burn(burn_device) => sentiflow_burn::train_on(
            burn_device,
            &featurizer_for_training,
            &train_examples,
            &validation_examples,
            &train_config,
            &burn_config,
        )
        .map_err(|error| match error {
            sentiflow_burn::BurnError::Train(error) => PipelineError::Train(error),
            sentiflow_burn::BurnError::CudaUnavailable(why) => PipelineError::Device(why),
            other => PipelineError::Burn(other.to_string()),
        }),
    })
    .await
    .map_err(|error| PipelineError::Onnx(error.to_string()))??;
    let train_seconds = started.elapsed().as_secs_f64();
    // The feature ids of the training split: serving reports each text's share of ids outside it.
    let seen = SeenFeatures::of_texts(&featurizer, train_rows.iter().map(|row| row.text.as_str()));

    let test_texts: Vec<&str> = test_rows.iter().map(|row| row.text.as_str()).collect();
    let test_labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let test = evaluate(
        &sentiflow_model::train::predict_texts(&featurizer, &trained.model, &test_texts),
        &test_labels,
    );

    let champion = match registry.resolve(&request.model_name, "champion").await {
        Ok(record) => Some(record),
        Err(crate::registry::RegistryError::NotFound(_)) => None,
        Err(error) => return Err(error.into()),
    };
    let champion_test = match &champion {
        Some(record) => {
            // ONNX Runtime scoring is CPU-bound: keep it off the async workers (the trainer service runs
            // this beside its curation loop).
            let onnx = registry.load_verified(record).await?;
            let (ort, labels) = (ort.clone(), test_labels.clone());
            let texts: Vec<String> = test_texts.iter().map(|text| (*text).to_owned()).collect();
            let evaluation = tokio::task::spawn_blocking(move || {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                evaluate_onnx(&ort, &onnx, &texts, &labels)
            })
            .await
            .map_err(|error| PipelineError::Onnx(error.to_string()))??;
            Some(evaluation)
        }
        None => None,
    };
    let decision = gate::decide_on(&test, champion_test.as_ref(), test_rows.len(), request.gate);

    let version = registry.reserve_version(&request.model_name).await?;
    let metadata = ModelMetadata {
        name: request.model_name.clone(),
        version: version.clone(),
        family: "hashed".to_owned(),
        featurizer_version: FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: featurizer.config().config_hash(),
        featurizer_config: serde_json::to_string(featurizer.config()).expect("configs serialise"),
        labels: ModelMetadata::default_labels(),
        training_snapshot: request.snapshot_id.clone(),
        weights_sha256: weights_sha256(&trained.model),
        // Derived from the inputs so the same snapshot + seed give the same bytes.
        created_at: manifest.created_at.to_rfc3339(),
    };
    let onnx = export_hashed(&trained.model, &metadata)
        .map_err(|error| PipelineError::Onnx(error.to_string()))?;
    let (charts, chart_files) = charts::render_or_skip(
        &ChartInputs {
            name: &request.model_name,
            version: &version,
            test: &test,
            history: trained.history.iter().map(CurvePoint::from).collect(),
            best_epoch: trained.best_epoch,
            planned_epochs: request.train.epochs,
            patience: request.train.patience,
            min_epochs: request.train.first_eligible_epoch(),
        },
        &charts::font_path(),
    );
    let card = ModelCard {
        name: request.model_name.clone(),
        version: version.clone(),
        family: ModelFamily::Hashed,
        snapshot_id: request.snapshot_id.clone(),
        featurizer_version: FEATURIZER_VERSION.to_owned(),
        featurizer_config: featurizer.config().clone(),
        featurizer_config_hash: metadata.featurizer_config_hash.clone(),
        train_config: request.train.clone(),
        burn_config: matches!(trainer, Trainer::Burn(_)).then(|| request.burn.clone()),
        label_weights,
        device: device.to_owned(),
        device_reason,
        weights_sha256: metadata.weights_sha256.clone(),
        history: trained.history.clone(),
        best_epoch: trained.best_epoch,
        validation: trained.validation.clone(),
        test: test.clone(),
        champion_test: champion_test.clone(),
        gate: decision.clone(),
        charts: Some(charts),
    };
    let metrics = record_metrics(&test, trained.validation.macro_f1);
    let record = registry
        .register(NewModel {
            name: request.model_name.clone(),
            version: Some(version),
            family: ModelFamily::Hashed,
            onnx,
            featurizer_version: FEATURIZER_VERSION.to_owned(),
            snapshot_id: request.snapshot_id.clone(),
            trained_on: device.to_owned(),
            metrics,
            gate: Some(decision.clone()),
            files: {
                let mut files = card_files(
                    serde_json::to_vec_pretty(&card).expect("cards serialise"),
                    card_markdown(&card),
                    chart_files,
                );
                files.push((SEEN_FEATURES_FILE.to_owned(), seen.to_bytes()));
                files
            },
        })
        .await?;
    let tokens_per_second = mean(trained.history.iter().map(|epoch| epoch.tokens_per_second));
    Ok(TrainOutcome {
        record,
        test,
        champion_test,
        gate: decision,
        gated_against: champion.map(|champion| champion.version),
        train_seconds,
        tokens_per_second,
    })
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| {
        (sum + value, count + 1)
    });
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// Evaluates an ONNX model of either family on labelled texts through ONNX Runtime (CPU), rebuilding
/// the featurizer (hashed) or tokenizer (encoder, from the setup cache) the model was trained with
/// from its metadata.
pub fn evaluate_onnx(
    ort: &OrtEnvironment,
    onnx: &[u8],
    texts: &[&str],
    labels: &[usize],
) -> Result<Evaluation, PipelineError> {
    Ok(evaluate(&predict_onnx(ort, onnx, texts)?, labels))
}

/// Class probabilities of `texts` from an ONNX model of either family, through ONNX Runtime's CPU
/// provider, preprocessed as the model's metadata says (the serving code path).
pub fn predict_onnx(
    ort: &OrtEnvironment,
    onnx: &[u8],
    texts: &[&str],
) -> Result<Vec<[f64; CLASSES]>, PipelineError> {
    let onnx_error = |error: &dyn std::fmt::Display| PipelineError::Onnx(error.to_string());
    let family = sentiflow_model::onnx::read_metadata(onnx)
        .and_then(|metadata| metadata.family_kind())
        .map_err(|error| onnx_error(&error))?;
    let threads = match family {
        Family::Hashed => 1,
        // A transformer per row: use the cores.
        Family::Encoder => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let mut model = LoadedModel::load(ort, onnx, DeviceRequest::Cpu, threads)
        .map_err(|error| onnx_error(&error))?;
    let mut probabilities = Vec::with_capacity(texts.len());
    match family {
        Family::Hashed => {
            let featurizer = featurizer_for(model.metadata())?;
            for chunk in texts.chunks(256) {
                let (ids, rows, cols) = featurizer.batch_padded(chunk);
                for row in model
                    .predict(&ids, rows, cols)
                    .map_err(|error| onnx_error(&error))?
                {
                    probabilities.push(row.map(f64::from));
                }
            }
        }
        Family::Encoder => {
            let cache = sentiflow_common::cache::CacheDir::from_env()
                .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
            let path = cache
                .require(cache.minilm_tokenizer(), "MiniLM tokenizer")
                .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
            let tokenizer = EncoderTokenizer::for_metadata(model.metadata(), &path)
                .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
            let member = match &model.summary().hashed_member {
                Some((member, _)) => Some(member_featurizer(member)?),
                None => None,
            };
            for chunk in texts.chunks(64) {
                let batch = tokenizer
                    .encode_batch(chunk, 8)
                    .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
                let rows = match &member {
                    None => model.predict_masked(
                        &batch.input_ids,
                        &batch.attention_mask,
                        batch.rows,
                        batch.cols,
                    ),
                    Some(featurizer) => {
                        let (hashed_ids, _, hashed_cols) = featurizer.batch_padded(chunk);
                        model.predict_blend(
                            &batch.input_ids,
                            &batch.attention_mask,
                            batch.rows,
                            batch.cols,
                            &hashed_ids,
                            hashed_cols,
                        )
                    }
                }
                .map_err(|error| onnx_error(&error))?;
                probabilities.extend(rows.into_iter().map(|row| row.map(f64::from)));
            }
        }
    }
    Ok(probabilities)
}

/// Rebuilds the featurizer recorded in a model's metadata, refusing versions this build does not implement.
pub fn featurizer_for(metadata: &ModelMetadata) -> Result<Featurizer, PipelineError> {
    featurizer_of(
        &metadata.featurizer_version,
        featurizer_config_for(metadata)?,
    )
}

/// The featurizer configuration recorded in a model's metadata, checked against its version and hash.
pub fn featurizer_config_for(metadata: &ModelMetadata) -> Result<FeaturizerConfig, PipelineError> {
    // The version first: another version's configuration may not even parse here.
    check_featurizer_version(&metadata.featurizer_version)?;
    let config: FeaturizerConfig = serde_json::from_str(&metadata.featurizer_config)
        .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
    if config.config_hash() != metadata.featurizer_config_hash {
        return Err(PipelineError::Featurizer(
            "featurizer config does not match its recorded hash".to_owned(),
        ));
    }
    Ok(config)
}

/// The featurizer of a blended encoder model's hashed member (the `hashed_ids` input).
pub fn member_featurizer(member: &HashedMember) -> Result<Featurizer, PipelineError> {
    featurizer_of(&member.featurizer_version, member.featurizer_config.clone())
}

fn check_featurizer_version(version: &str) -> Result<(), PipelineError> {
    if version != FEATURIZER_VERSION {
        return Err(PipelineError::Featurizer(format!(
            "model needs featurizer {version}, this build implements {FEATURIZER_VERSION}"
        )));
    }
    Ok(())
}

fn featurizer_of(version: &str, config: FeaturizerConfig) -> Result<Featurizer, PipelineError> {
    check_featurizer_version(version)?;
    let lexicon = if config.lexicon_features {
        Some(cached_lexicon()?)
    } else {
        None
    };
    Featurizer::new(config, lexicon).map_err(|error| PipelineError::Featurizer(error.to_string()))
}

/// The VADER lexicon installed by infra/setup.sh in the cache.
pub fn cached_lexicon() -> Result<Lexicon, PipelineError> {
    let featurizer_error =
        |error: &dyn std::fmt::Display| PipelineError::Featurizer(error.to_string());
    let cache =
        sentiflow_common::cache::CacheDir::from_env().map_err(|error| featurizer_error(&error))?;
    let path = cache
        .require(cache.vader_lexicon(), "VADER lexicon")
        .map_err(|error| featurizer_error(&error))?;
    Lexicon::load(&path).map_err(|error| featurizer_error(&error))
}

/// The human-readable model card.
pub fn card_markdown(card: &ModelCard) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "# {} {}\n", card.name, card.version);
    let _ = writeln!(
        out,
        "- family: {:?}\n- snapshot: `{}`\n- featurizer: {} (config hash `{}`)",
        card.family, card.snapshot_id, card.featurizer_version, card.featurizer_config_hash
    );
    let _ = writeln!(
        out,
        "- trained on: {} ({})\n- weights sha256: `{}`\n- seed: {}\n- best epoch: {}\n- {}\n",
        card.device,
        card.device_reason,
        card.weights_sha256,
        card.train_config.seed,
        card.best_epoch,
        card.label_weights.describe()
    );
    if let Some(burn) = &card.burn_config {
        let _ = writeln!(
            out,
            "- burn trainer: batch size {}, learning rate {}\n",
            burn.batch_size, burn.learning_rate
        );
    }
    write_test_and_gate(&mut out, &card.test, &card.gate, card.charts.as_ref());
    let _ = writeln!(out, "## Training curve\n");
    write_curve_link(&mut out, card.charts.as_ref());
    let _ = writeln!(
        out,
        "| epoch | train loss | validation macro-F1 | tokens/s |\n|---|---|---|---|"
    );
    for epoch in &card.history {
        let _ = writeln!(
            out,
            "| {} | {:.4} | {:.4} | {:.0} |",
            epoch.epoch, epoch.train_loss, epoch.validation_macro_f1, epoch.tokens_per_second
        );
    }
    out
}

/// The files of a version directory besides `model.onnx`: `card.json`, `card.md` and the charts
/// (shared by both families).
pub(crate) fn card_files(
    card_json: Vec<u8>,
    card_md: String,
    charts: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("card.json".to_owned(), card_json),
        ("card.md".to_owned(), card_md.into_bytes()),
    ];
    files.extend(charts);
    files
}

/// The training-curve chart's image link (relative: the PNG lies next to `card.md`), when written.
pub(crate) fn write_curve_link(out: &mut String, charts: Option<&Charts>) {
    use std::fmt::Write as _;
    if let Some(Charts::Written { training_curve, .. }) = charts {
        let _ = writeln!(
            out,
            "![training loss and validation macro-F1 per epoch]({})\n",
            training_curve.file
        );
    }
}

/// The model card's test-split and gate sections (shared by both families' cards), with the
/// confusion-matrix chart's link or the reason the charts were skipped.
pub(crate) fn write_test_and_gate(
    out: &mut String,
    test: &Evaluation,
    gate: &GateDecision,
    charts: Option<&Charts>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "## Test split (gate set)\n");
    let _ = writeln!(
        out,
        "macro-F1 **{:.4}**, accuracy {:.4}, expected calibration error {:.4}, rows {}\n",
        test.macro_f1, test.accuracy, test.expected_calibration_error, test.rows
    );
    let _ = writeln!(
        out,
        "| class | precision | recall | F1 | support |\n|---|---|---|---|---|"
    );
    for (name, class) in sentiflow_model::eval::CLASS_NAMES
        .iter()
        .zip(&test.per_class)
    {
        let _ = writeln!(
            out,
            "| {name} | {:.4} | {:.4} | {:.4} | {} |",
            class.precision, class.recall, class.f1, class.support
        );
    }
    let _ = writeln!(
        out,
        "\nConfusion matrix (rows = true, columns = predicted: negative, neutral, positive):\n"
    );
    for row in &test.confusion {
        let _ = writeln!(out, "    {:>7} {:>7} {:>7}", row[0], row[1], row[2]);
    }
    match charts {
        Some(Charts::Written {
            confusion_matrix, ..
        }) => {
            let _ = writeln!(
                out,
                "\n![confusion matrix of the test split]({})",
                confusion_matrix.file
            );
        }
        Some(Charts::Skipped(reason)) => {
            let _ = writeln!(out, "\nCharts skipped: {reason}");
        }
        None => {}
    }
    let _ = writeln!(
        out,
        "\n## Gate\n\n{} — {}\n",
        if gate.passed { "passed" } else { "rejected" },
        gate.reason
    );
}

/// The registry record's metrics of a trained model: test macro-F1, accuracy, ECE, per-class recall
/// and the validation macro-F1 (the same keys for every family, so `models list` compares them).
pub(crate) fn record_metrics(test: &Evaluation, validation_macro_f1: f64) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::from([
        ("macro_f1".to_owned(), test.macro_f1),
        ("accuracy".to_owned(), test.accuracy),
        ("ece".to_owned(), test.expected_calibration_error),
        ("validation_macro_f1".to_owned(), validation_macro_f1),
    ]);
    for (index, name) in sentiflow_model::eval::CLASS_NAMES.iter().enumerate() {
        metrics.insert(format!("recall_{name}"), test.per_class[index].recall);
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> CudaProbe {
        CudaProbe::Available {
            devices: 1,
            driver_version: "13.0".to_owned(),
            nvrtc: "libnvrtc.so.13".to_owned(),
        }
    }

    fn card(charts: Option<Charts>) -> ModelCard {
        let test = sentiflow_model::eval::evaluate(
            &[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
            &[0, 1, 1],
        );
        ModelCard {
            name: "sentiment-hashed".to_owned(),
            version: "v3".to_owned(),
            family: ModelFamily::Hashed,
            snapshot_id: "snap".to_owned(),
            featurizer_version: FEATURIZER_VERSION.to_owned(),
            featurizer_config: FeaturizerConfig::default(),
            featurizer_config_hash: FeaturizerConfig::default().config_hash(),
            train_config: TrainConfig::default(),
            burn_config: None,
            label_weights: LabelWeights::default(),
            device: "cpu".to_owned(),
            device_reason: "requested".to_owned(),
            weights_sha256: "0".repeat(64),
            history: Vec::new(),
            best_epoch: 1,
            validation: test.clone(),
            test,
            champion_test: None,
            gate: crate::gate::decide(
                crate::gate::GateScores {
                    macro_f1: 0.5,
                    recall: [0.5; 3],
                },
                None,
                GatePolicy::default(),
            ),
            charts,
        }
    }

    fn links(markdown: &str) -> Vec<&str> {
        markdown
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
            .collect()
    }

    #[test]
    fn the_card_links_its_charts_or_says_why_there_are_none() {
        let chart = |file: &str| charts::ChartFile {
            file: file.to_owned(),
            sha256: "ab".repeat(32),
            width: 10,
            height: 10,
        };
        let written = card(Some(Charts::Written {
            confusion_matrix: chart(charts::CONFUSION_MATRIX_FILE),
            training_curve: chart(charts::TRAINING_CURVE_FILE),
        }));
        let markdown = card_markdown(&written);
        assert_eq!(
            links(&markdown),
            [charts::CONFUSION_MATRIX_FILE, charts::TRAINING_CURVE_FILE]
        );
        assert!(!markdown.contains("Charts skipped"));
        let json = serde_json::to_value(&written).unwrap();
        assert_eq!(
            json["charts"]["written"]["confusion_matrix"]["file"],
            charts::CONFUSION_MATRIX_FILE
        );

        // A missing font: the card says why, links nothing, and names no chart file.
        let reason = "chart font /nope.ttf: No such file or directory (os error 2)";
        let skipped = card(Some(Charts::Skipped(reason.to_owned())));
        let markdown = card_markdown(&skipped);
        assert!(links(&markdown).is_empty(), "{markdown}");
        assert!(
            markdown.contains(&format!("Charts skipped: {reason}")),
            "{markdown}"
        );
        let json = serde_json::to_value(&skipped).unwrap();
        assert_eq!(json["charts"], serde_json::json!({ "skipped": reason }));
        let files = card_files(serde_json::to_vec(&skipped).unwrap(), markdown, Vec::new());
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["card.json", "card.md"]);

        // Cards written before charts existed still load.
        let mut old = serde_json::to_value(card(None)).unwrap();
        assert!(old.get("charts").is_none());
        old.as_object_mut().unwrap().remove("charts");
        let parsed: ModelCard = serde_json::from_value(old).unwrap();
        assert!(parsed.charts.is_none());
        assert!(links(&card_markdown(&parsed)).is_empty());
    }

    #[test]
    fn device_decisions_follow_the_probe() {
        let none = CudaProbe::Unavailable("no NVIDIA driver: libcuda.so.1 missing".to_owned());
        let auto_cpu = choose_device_with(TrainDevice::Auto, &none).unwrap();
        assert_eq!(
            (auto_cpu.trainer, auto_cpu.device),
            (Trainer::Sparse, "cpu")
        );
        assert!(
            auto_cpu.reason.contains("libcuda.so.1 missing"),
            "{}",
            auto_cpu.reason
        );
        let auto_gpu = choose_device_with(TrainDevice::Auto, &gpu()).unwrap();
        assert_eq!(
            (auto_gpu.trainer, auto_gpu.device),
            (Trainer::Burn(BurnDevice::Cuda), "cuda")
        );
        assert!(
            auto_gpu.reason.contains("CUDA driver 13.0"),
            "{}",
            auto_gpu.reason
        );
        let error = choose_device_with(TrainDevice::Cuda, &none).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--device cuda: no usable CUDA GPU: no NVIDIA driver"),
            "{error}"
        );
        assert_eq!(
            choose_device_with(TrainDevice::Cuda, &gpu())
                .unwrap()
                .trainer,
            Trainer::Burn(BurnDevice::Cuda)
        );
        for probe in [none, gpu()] {
            assert_eq!(
                choose_device_with(TrainDevice::Cpu, &probe)
                    .unwrap()
                    .trainer,
                Trainer::Sparse
            );
            assert_eq!(
                choose_device_with(TrainDevice::BurnCpu, &probe)
                    .unwrap()
                    .device,
                "burn-cpu"
            );
        }
    }
}
