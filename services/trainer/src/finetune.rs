//! One fine-tuning run of the `encoder` family: snapshot → WordPiece ids → all-MiniLM-L6-v2 (fp32
//! safetensors, checksum checked) fine-tuned with burn on CUDA or burn's CPU backend → fp32 ONNX
//! written from Rust → test split through ORT → the same gate as every family, against the champion of
//! the same name on the same rows → model card → registry. With a [`BlendRequest`] a hashed model is
//! trained on the same splits and appended to the exported graph, which then serves the average.

use std::time::Instant;

pub use sentiflow_burn::FineTuneConfig;
use sentiflow_burn::finetune::FineTuneEpoch;
use sentiflow_burn::probe::CudaProbe;
use sentiflow_burn::{BurnDevice, TokenizedExample};
use sentiflow_common::events::{GateDecision, ModelFamily};
use sentiflow_model::encoder::bert::{
    BertClassifierWeights, MINILM_SAFETENSORS_SHA256, fine_tuned_minilm_config,
};
use sentiflow_model::encoder::{ENCODER_FEATURIZER_VERSION, EncoderConfig, EncoderTokenizer};
use sentiflow_model::eval::Evaluation;
use sentiflow_model::onnx::{FAMILY_ENCODER, ModelMetadata, export_bert_classifier};
use sentiflow_model::runtime::OrtEnvironment;
use sentiflow_model::train::Rng;
use serde::{Deserialize, Serialize};

use crate::charts::{self, ChartInputs, Charts, CurvePoint};
use crate::dataset::{DatasetRow, LabelWeights, SnapshotStore, Split};
use crate::encoder::{
    BlendRequest, EncoderFiles, HashedMemberCard, TrainedMember, blend_summary,
    champion_evaluation, write_blend_section,
};
use crate::gate::{self, GatePolicy};
use crate::pipeline::{
    PipelineError, TrainDevice, TrainOutcome, card_files, evaluate_onnx, predict_onnx,
    write_curve_link, write_test_and_gate,
};
use crate::registry::{NewModel, Registry};

/// How `--family encoder` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderMode {
    /// Fine-tune when a usable CUDA GPU is there, else train a head on the frozen int8 encoder (a
    /// full fine-tune runs at ~8 sentences/s on 2 CPU cores).
    Auto,
    /// Fine-tune the whole encoder with burn (CUDA, or burn's CPU backend).
    FineTune,
    /// Frozen int8 encoder through ORT + a trained linear head.
    FrozenHead,
}

/// What an encoder run will do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderPlan {
    /// Fine-tune on this burn device.
    FineTune {
        /// Where.
        device: BurnDevice,
        /// Why (for logs and the model card).
        reason: String,
    },
    /// Train a head on the frozen encoder (on the CPU).
    FrozenHead {
        /// Why (for logs and the model card).
        reason: String,
    },
}

/// Decides mode and device for `--family encoder` from the flags and a CUDA probe. `--device cuda`
/// without a usable GPU is an error, never a silent CPU run.
pub fn plan_encoder(
    mode: EncoderMode,
    device: TrainDevice,
    probe: &CudaProbe,
) -> Result<EncoderPlan, PipelineError> {
    let no_gpu = |why: &str| {
        PipelineError::Device(format!(
            "--device cuda: no usable CUDA GPU: {why}; use --device auto or --device cpu"
        ))
    };
    let cpu_fine_tune = |reason: String| EncoderPlan::FineTune {
        device: BurnDevice::NdArray,
        reason,
    };
    let cuda_fine_tune = |reason: String| EncoderPlan::FineTune {
        device: BurnDevice::Cuda,
        reason,
    };
    Ok(match (mode, device, probe) {
        (EncoderMode::FrozenHead, TrainDevice::Cuda | TrainDevice::BurnCpu, _) => {
            return Err(PipelineError::Device(
                "--encoder-mode frozen-head embeds through ONNX Runtime's CPU provider and trains the \
                 head on the CPU; use --device auto or cpu (or --encoder-mode fine-tune)"
                    .to_owned(),
            ));
        }
        (EncoderMode::FrozenHead, _, _) => EncoderPlan::FrozenHead {
            reason: "requested: frozen int8 encoder + linear head on the CPU".to_owned(),
        },
        (_, TrainDevice::Cuda, CudaProbe::Unavailable(why)) => return Err(no_gpu(why)),
        (_, TrainDevice::Cuda | TrainDevice::Auto, CudaProbe::Available { .. }) => {
            cuda_fine_tune(format!("{}; burn fine-tune on the GPU", probe.describe()))
        }
        (EncoderMode::FineTune, TrainDevice::Auto, CudaProbe::Unavailable(why)) => {
            cpu_fine_tune(format!(
                "requested fine-tune; no usable CUDA ({why}): burn's CPU backend (slow: ~8 \
                 sentences/s on 2 cores)"
            ))
        }
        (_, TrainDevice::Cpu | TrainDevice::BurnCpu, _) if mode == EncoderMode::FineTune => {
            cpu_fine_tune("requested: burn fine-tune on the CPU (ndarray) backend".to_owned())
        }
        (EncoderMode::Auto, TrainDevice::BurnCpu, _) => {
            cpu_fine_tune("requested: burn fine-tune on the CPU (ndarray) backend".to_owned())
        }
        (EncoderMode::Auto, TrainDevice::Auto, CudaProbe::Unavailable(why)) => {
            EncoderPlan::FrozenHead {
                reason: format!(
                    "auto: no usable CUDA ({why}); a full fine-tune would run at ~8 sentences/s on \
                     the CPU, so the int8 encoder stays frozen and a linear head is trained \
                     (--encoder-mode fine-tune to fine-tune anyway)"
                ),
            }
        }
        (EncoderMode::Auto, TrainDevice::Cpu, _) => EncoderPlan::FrozenHead {
            reason: "requested CPU: frozen int8 encoder + linear head".to_owned(),
        },
        (EncoderMode::FineTune, TrainDevice::Cpu | TrainDevice::BurnCpu, _) => {
            cpu_fine_tune("requested: burn fine-tune on the CPU (ndarray) backend".to_owned())
        }
    })
}

/// [`plan_encoder`] with the CUDA probe run only when the answer could depend on it.
pub fn plan_encoder_probed(
    mode: EncoderMode,
    device: TrainDevice,
) -> Result<EncoderPlan, PipelineError> {
    let probe = match (mode, device) {
        (EncoderMode::FrozenHead, _) | (_, TrainDevice::Cpu | TrainDevice::BurnCpu) => {
            CudaProbe::Unavailable("not probed".to_owned())
        }
        _ => sentiflow_burn::probe::cuda().clone(),
    };
    plan_encoder(mode, device, &probe)
}

/// What to fine-tune.
#[derive(Debug, Clone)]
pub struct FineTuneRequest {
    /// Snapshot to train on.
    pub snapshot_id: String,
    /// Registry name, e.g. `sentiment-encoder`.
    pub model_name: String,
    /// Longest token sequence (`[CLS]`/`[SEP]` included); longer texts are truncated and counted.
    pub max_length: usize,
    /// Optimiser, schedule, epochs, seed.
    pub fine_tune: FineTuneConfig,
    /// Train on at most this many training rows (a seeded sample; class mix kept by sampling
    /// uniformly): bounds a CPU run. `None`: all.
    pub max_train_rows: Option<usize>,
    /// Where, and why.
    pub device: BurnDevice,
    /// Why that device (model card).
    pub device_reason: String,
    /// Gate thresholds.
    pub gate: GatePolicy,
    /// How much each labelled row counts in training, by label provenance.
    pub label_weights: LabelWeights,
    /// A hashed model to train and serve blended with the fine-tuned encoder in one graph (`None`:
    /// the encoder alone). It trains on the whole training split, even when `max_train_rows` caps
    /// the fine-tune's (it takes seconds on the CPU).
    pub blend: Option<BlendRequest>,
}

/// Rows of one split as the fine-tuner takes them, and what tokenizing found.
struct TokenizedSplit {
    examples: Vec<TokenizedExample>,
    truncated: usize,
    empty: usize,
}

fn tokenize_split(
    tokenizer: &EncoderTokenizer,
    rows: &[DatasetRow],
    label_weights: LabelWeights,
) -> Result<TokenizedSplit, PipelineError> {
    let mut split = TokenizedSplit {
        examples: Vec::with_capacity(rows.len()),
        truncated: 0,
        empty: 0,
    };
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let (ids, cut) = tokenizer
            .encode(&row.text)
            .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
        split.truncated += usize::from(cut);
        // [CLS] [SEP] only: the text cleaned to nothing, so there is nothing to learn from.
        if ids.len() <= 2 {
            split.empty += 1;
            continue;
        }
        kept.push((row, ids));
    }
    // Weighed after the empty rows are gone, so a class balance counts only rows that train.
    let kept_rows: Vec<&DatasetRow> = kept.iter().map(|(row, _)| *row).collect();
    let weights = label_weights.row_weights(&kept_rows);
    for ((row, ids), weight) in kept.into_iter().zip(weights) {
        split.examples.push(TokenizedExample {
            ids,
            label: row.label.index(),
            weight,
        });
    }
    Ok(split)
}

/// The model card of a fine-tuned encoder-family model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FineTunedModelCard {
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
    /// Tokenizer, max length, base weights and their checksums (`fine_tuned: true`).
    pub encoder_config: EncoderConfig,
    /// Hash of `encoder_config`.
    pub featurizer_config_hash: String,
    /// Optimiser, schedule, epochs and seed.
    pub fine_tune_config: FineTuneConfig,
    /// How much each label counted in training (confidence, human labels × `human`); `None` in a
    /// card written before the setting existed, when the fine-tune weighed every row 1.
    #[serde(default)]
    pub label_weights: Option<LabelWeights>,
    /// Device that trained it (`cuda`, `burn-cpu`).
    pub device: String,
    /// Why that device.
    pub device_reason: String,
    /// sha256 over every initializer of the ONNX graph.
    pub weights_sha256: String,
    /// Training rows used (after the optional cap and dropping rows without tokens).
    pub training_rows: usize,
    /// Rows (all splits) that tokenized to nothing and were left out.
    pub empty_rows: usize,
    /// Rows (all splits) cut to `max_length`.
    pub truncated_rows: usize,
    /// Per-epoch history.
    pub history: Vec<FineTuneEpoch>,
    /// Best epoch.
    pub best_epoch: usize,
    /// Seconds of the whole fine-tune (validation passes included).
    pub train_seconds: f64,
    /// Validation evaluation of the best epoch (burn forward pass); for a blend, the blend's (the
    /// exported encoder through ORT averaged with the hashed member).
    pub validation: Evaluation,
    /// Test evaluation of the exported ONNX through ORT (the gate set); for a blend, the blend's.
    pub test: Evaluation,
    /// The champion's evaluation on the same test rows.
    pub champion_test: Option<Evaluation>,
    /// Gate decision.
    pub gate: GateDecision,
    /// The confusion-matrix and training-curve PNGs next to the card, or why they were skipped.
    pub charts: Charts,
    /// The hashed model blended into the served graph, if any. Absent for an encoder alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_member: Option<HashedMemberCard>,
}

/// Fine-tunes, exports, evaluates, gates and registers (the caller promotes when the gate passed and
/// it was asked to).
pub async fn fine_tune_and_register(
    store: &SnapshotStore,
    registry: &Registry,
    ort: &OrtEnvironment,
    files: &EncoderFiles,
    request: &FineTuneRequest,
) -> Result<TrainOutcome, PipelineError> {
    tracing::info!(device = request.device.as_str(), reason = %request.device_reason, snapshot = %request.snapshot_id, "fine-tuning an encoder-family model");
    request
        .label_weights
        .validate()
        .map_err(PipelineError::Config)?;
    let label_weights = request.label_weights.for_family(ModelFamily::Encoder);
    if let Some(blend) = &request.blend {
        blend.check()?;
    }
    let manifest = store.manifest(&request.snapshot_id)?;
    let tokenizer = EncoderTokenizer::from_file(&files.tokenizer, request.max_length)
        .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
    let mut train_rows = store.read(&request.snapshot_id, Split::Train)?;
    let validation_rows = store.read(&request.snapshot_id, Split::Validation)?;
    let test_rows = store.read(&request.snapshot_id, Split::Test)?;
    // The member first: it takes seconds, and its errors (a missing lexicon) must not cost a
    // fine-tune.
    let member = match &request.blend {
        Some(blend) => Some(
            TrainedMember::train(
                blend,
                train_rows.clone(),
                validation_rows.clone(),
                label_weights,
            )
            .await?,
        ),
        None => None,
    };
    if let Some(cap) = request.max_train_rows
        && train_rows.len() > cap
    {
        let mut rng = Rng::new(request.fine_tune.seed);
        for index in (1..train_rows.len()).rev() {
            let other = (rng.next_u64() % (index as u64 + 1)) as usize;
            train_rows.swap(index, other);
        }
        train_rows.truncate(cap);
    }
    let training = tokenize_split(&tokenizer, &train_rows, label_weights)?;
    let tokenized_validation = tokenize_split(&tokenizer, &validation_rows, label_weights)?;
    let initial = BertClassifierWeights::from_safetensors(
        &files.weights,
        &files.weights_config,
        Some(MINILM_SAFETENSORS_SHA256),
    )
    .map_err(|error| PipelineError::Featurizer(error.to_string()))?;
    let config = fine_tuned_minilm_config(&tokenizer);
    config
        .validate()
        .map_err(|error| PipelineError::Featurizer(error.to_string()))?;

    let started = Instant::now();
    let tuned = {
        let device = request.device;
        let fine_tune = request.fine_tune.clone();
        let train_examples = training.examples;
        let validation_examples = tokenized_validation.examples;
        tokio::task::spawn_blocking(move || {
            sentiflow_burn::fine_tune_on(
                device,
                &initial,
                &train_examples,
                &validation_examples,
                &fine_tune,
                |_| {},
            )
            .map(|tuned| (tuned, train_examples.len()))
        })
        .await
        .map_err(|error| PipelineError::Onnx(error.to_string()))?
        .map_err(|error| match error {
            sentiflow_burn::BurnError::CudaUnavailable(why) => {
                PipelineError::Device(format!("--device cuda: no usable CUDA GPU: {why}"))
            }
            other => PipelineError::Onnx(format!("fine-tuning: {other}")),
        })?
    };
    let (tuned, training_rows) = tuned;
    let train_seconds = started.elapsed().as_secs_f64();

    let version = registry.reserve_version(&request.model_name).await?;
    let metadata = ModelMetadata {
        name: request.model_name.clone(),
        version: version.clone(),
        family: FAMILY_ENCODER.to_owned(),
        featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: config.config_hash(),
        featurizer_config: config.canonical_json(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: request.snapshot_id.clone(),
        weights_sha256: String::new(),
        created_at: manifest.created_at.to_rfc3339(),
    };
    let onnx_error =
        |error: sentiflow_model::onnx::OnnxError| PipelineError::Onnx(error.to_string());
    let encoder_onnx =
        export_bert_classifier(&tuned.weights, &config, &metadata).map_err(onnx_error)?;

    // The encoder is scored through ORT on its exported file, what serving computes; a blend's
    // average is taken in Rust as the graph takes it (the registered blend through ORT gives the
    // same confusion matrix: tests/tests/encoder_training.rs).
    let test_texts: Vec<String> = test_rows.iter().map(|row| row.text.clone()).collect();
    let test_labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let (onnx, test, validation, member_card, served_config) = match &member {
        Some(member) => {
            let (encoder_validation, encoder_test) = {
                let ort = ort.clone();
                let onnx = encoder_onnx.clone();
                let validation_texts: Vec<String> =
                    validation_rows.iter().map(|row| row.text.clone()).collect();
                let test_texts = test_texts.clone();
                tokio::task::spawn_blocking(move || {
                    fn as_str(texts: &[String]) -> Vec<&str> {
                        texts.iter().map(String::as_str).collect()
                    }
                    Ok::<_, PipelineError>((
                        predict_onnx(&ort, &onnx, &as_str(&validation_texts))?,
                        predict_onnx(&ort, &onnx, &as_str(&test_texts))?,
                    ))
                })
                .await
                .map_err(|error| PipelineError::Onnx(error.to_string()))??
            };
            let blended = member.blend_with(
                &config,
                &validation_rows,
                &encoder_validation,
                &test_rows,
                &encoder_test,
            )?;
            let onnx = member.append_to(&encoder_onnx, &blended.config, &metadata)?;
            (
                onnx,
                blended.test,
                blended.validation,
                Some(blended.card),
                blended.config,
            )
        }
        None => {
            let test = {
                let ort = ort.clone();
                let onnx = encoder_onnx.clone();
                let texts = test_texts.clone();
                let labels = test_labels.clone();
                tokio::task::spawn_blocking(move || {
                    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                    evaluate_onnx(&ort, &onnx, &texts, &labels)
                })
                .await
                .map_err(|error| PipelineError::Onnx(error.to_string()))??
            };
            (encoder_onnx, test, tuned.validation.clone(), None, config)
        }
    };
    let weights_sha256 = sentiflow_model::onnx::read_metadata(&onnx)
        .map_err(|error| PipelineError::Onnx(error.to_string()))?
        .weights_sha256;
    let (gated_against, champion_test) =
        champion_evaluation(registry, ort, &request.model_name, test_texts, test_labels)
            .await?
            .unzip();
    let decision = gate::decide_on(&test, champion_test.as_ref(), test_rows.len(), request.gate);

    let (charts, chart_files) = charts::render_or_skip(
        &ChartInputs {
            name: &request.model_name,
            version: &version,
            test: &test,
            history: tuned
                .history
                .iter()
                .map(|epoch| CurvePoint {
                    epoch: epoch.epoch,
                    train_loss: epoch.train_loss,
                    validation_macro_f1: epoch.validation_macro_f1,
                })
                .collect(),
            best_epoch: tuned.best_epoch,
            planned_epochs: request.fine_tune.epochs,
            patience: request.fine_tune.patience,
            min_epochs: 1,
        },
        &charts::font_path(),
    );
    let card = FineTunedModelCard {
        name: request.model_name.clone(),
        version: version.clone(),
        family: ModelFamily::Encoder,
        snapshot_id: request.snapshot_id.clone(),
        featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: served_config.config_hash(),
        encoder_config: served_config,
        fine_tune_config: request.fine_tune.clone(),
        label_weights: Some(label_weights),
        device: request.device.as_str().to_owned(),
        device_reason: request.device_reason.clone(),
        weights_sha256,
        training_rows,
        empty_rows: training.empty + tokenized_validation.empty,
        truncated_rows: training.truncated + tokenized_validation.truncated,
        history: tuned.history.clone(),
        best_epoch: tuned.best_epoch,
        train_seconds,
        validation: validation.clone(),
        test: test.clone(),
        champion_test: champion_test.clone(),
        gate: decision.clone(),
        charts,
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
            trained_on: request.device.as_str().to_owned(),
            metrics,
            gate: Some(decision.clone()),
            files: card_files(
                serde_json::to_vec_pretty(&card).expect("cards serialise"),
                card_markdown(&card),
                chart_files,
            ),
        })
        .await?;
    let sentences: f64 = tuned
        .history
        .iter()
        .map(|epoch| epoch.sentences_per_second * epoch.seconds)
        .sum();
    let training_time: f64 = tuned.history.iter().map(|epoch| epoch.seconds).sum();
    tracing::info!(
        sentences_per_second = sentences / training_time.max(1e-9),
        seconds = train_seconds,
        "encoder fine-tune finished"
    );
    Ok(TrainOutcome {
        record,
        test,
        champion_test,
        gate: decision,
        gated_against,
        train_seconds,
        tokens_per_second: 0.0,
    })
}

/// The human-readable model card.
pub fn card_markdown(card: &FineTunedModelCard) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "# {} {}\n", card.name, card.version);
    let config = &card.fine_tune_config;
    let blend = blend_summary(card.hashed_member.as_ref());
    let _ = writeln!(
        out,
        "- family: encoder (fine-tuned {} + mean pooling + linear head{blend})\n- snapshot: `{}`\n- featurizer: {} \
         (max length {}, tokenizer sha256 `{}`, config hash `{}`)\n- base weights sha256: `{}`",
        card.encoder_config.base_model,
        card.snapshot_id,
        card.featurizer_version,
        card.encoder_config.max_length,
        card.encoder_config.tokenizer_sha256,
        card.featurizer_config_hash,
        card.encoder_config.base_sha256
    );
    let _ = writeln!(
        out,
        "- trained on: {} ({})\n- weights sha256: `{}`\n- AdamW: lr {:e}, warm-up {:.0} %, weight decay {}, \
         clip {}, batch {}, dropout {}, class weighting {}, seed {}\n- training rows: {} ({} rows without \
         tokens left out, {} truncated)\n- {}\n- best epoch: {} of {} planned; {:.1} s\n",
        card.device,
        card.device_reason,
        card.weights_sha256,
        config.learning_rate,
        config.warmup_fraction * 100.0,
        config.weight_decay,
        config.max_grad_norm,
        config.batch_size,
        config.dropout,
        config.class_weighting,
        config.seed,
        card.training_rows,
        card.empty_rows,
        card.truncated_rows,
        card.label_weights.map_or_else(
            || "label weights: every row 1 (trained before label weights existed)".to_owned(),
            |weights| weights.describe()
        ),
        card.best_epoch,
        config.epochs,
        card.train_seconds
    );
    write_test_and_gate(&mut out, &card.test, &card.gate, Some(&card.charts));
    if let Some(member) = &card.hashed_member {
        write_blend_section(&mut out, member, &card.test);
    }
    let _ = writeln!(out, "## Training curve\n");
    write_curve_link(&mut out, Some(&card.charts));
    let _ = writeln!(
        out,
        "| epoch | steps | train loss | validation macro-F1 | validation log loss | sentences/s |\n|---|---|---|---|---|---|"
    );
    for epoch in &card.history {
        let _ = writeln!(
            out,
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.1} |",
            epoch.epoch,
            epoch.steps,
            epoch.train_loss,
            epoch.validation_macro_f1,
            epoch.validation_log_loss,
            epoch.sentences_per_second
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> CudaProbe {
        CudaProbe::Available {
            driver_version: "13.0".to_owned(),
            devices: 1,
            nvrtc: "libnvrtc.so.13".to_owned(),
        }
    }

    fn none() -> CudaProbe {
        CudaProbe::Unavailable("libcuda.so.1 not found".to_owned())
    }

    #[test]
    fn tokenized_rows_carry_their_label_weight() {
        let cache = sentiflow_common::cache::CacheDir::from_env().unwrap();
        let tokenizer = EncoderTokenizer::from_file(
            &cache
                .require(
                    cache.minilm_tokenizer(),
                    "MiniLM tokenizer (run infra/setup.sh)",
                )
                .unwrap(),
            32,
        )
        .unwrap();
        let row = |provenance, confidence| DatasetRow {
            review_id: "r".to_owned(),
            text: "the flight was fine".to_owned(),
            label: sentiflow_common::events::Sentiment::Neutral,
            provenance,
            confidence,
            created_at: chrono::Utc::now(),
            source: "unit".to_owned(),
        };
        use sentiflow_common::events::LabelProvenance::{Human, SourceLabel, WeakLexicon};
        let rows = [
            row(SourceLabel, 1.0),
            row(WeakLexicon, 0.7),
            row(Human, 1.0),
        ];
        let weights = LabelWeights {
            human: 4.0,
            ..LabelWeights::UNWEIGHTED
        };
        let split = tokenize_split(&tokenizer, &rows, weights).unwrap();
        let weights: Vec<f32> = split
            .examples
            .iter()
            .map(|example| example.weight)
            .collect();
        assert_eq!(weights, [1.0, 0.7, 4.0]);
    }

    #[test]
    fn auto_fine_tunes_only_on_a_real_gpu_and_says_why() {
        let plan = plan_encoder(EncoderMode::Auto, TrainDevice::Auto, &gpu()).unwrap();
        assert!(matches!(
            plan,
            EncoderPlan::FineTune {
                device: BurnDevice::Cuda,
                ..
            }
        ));
        let plan = plan_encoder(EncoderMode::Auto, TrainDevice::Auto, &none()).unwrap();
        let EncoderPlan::FrozenHead { reason } = plan else {
            panic!("no GPU: frozen head")
        };
        assert!(reason.contains("libcuda.so.1 not found"), "{reason}");
        let plan = plan_encoder(EncoderMode::FineTune, TrainDevice::Auto, &none()).unwrap();
        assert!(matches!(
            plan,
            EncoderPlan::FineTune {
                device: BurnDevice::NdArray,
                ..
            }
        ));
        let plan = plan_encoder(EncoderMode::FineTune, TrainDevice::Cpu, &gpu()).unwrap();
        assert!(matches!(
            plan,
            EncoderPlan::FineTune {
                device: BurnDevice::NdArray,
                ..
            }
        ));
    }

    #[test]
    fn cuda_without_a_gpu_is_an_error_never_a_silent_cpu_run() {
        for mode in [EncoderMode::Auto, EncoderMode::FineTune] {
            let error = plan_encoder(mode, TrainDevice::Cuda, &none()).unwrap_err();
            assert!(error.to_string().contains("no usable CUDA GPU"), "{error}");
        }
        assert!(plan_encoder(EncoderMode::FrozenHead, TrainDevice::Cuda, &gpu()).is_err());
        let plan = plan_encoder(EncoderMode::FrozenHead, TrainDevice::Auto, &gpu()).unwrap();
        assert!(matches!(plan, EncoderPlan::FrozenHead { .. }));
    }
}
