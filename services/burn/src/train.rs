//! Mini-batch training of [`HashedBag`] on any burn autodiff backend (CUDA on a GPU host, ndarray on
//! the CPU in CI), mirroring the sparse CPU trainer's contract: the same [`TrainConfig`] (dimension,
//! epochs, learning-rate schedule, AdaGrad or SGD, class weighting, L2, feature dropout, patience,
//! `min_epochs`, seed), the same initialisation, the same choice of the kept epoch and of when to stop
//! early ([`EpochSelection`]: validation macro-F1, restored weights), and
//! the same [`TrainedModel`] result, so the pipeline exports it with the same ONNX writer.
//!
//! Differences, by design: updates are dense over the whole table (burn's optimisers), one step per
//! mini-batch of [`BurnConfig::batch_size`] examples with the mean weighted cross-entropy as loss, and
//! L2 is a loss term `λ/2 ‖θ‖²` rather than the CPU trainer's lazy per-row decay.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdaGradConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use sentiflow_model::eval::{Evaluation, evaluate};
use sentiflow_model::featurize::{FEATURIZER_VERSION, Featurizer, pad_length};
use sentiflow_model::hashed::{CLASSES, HashedModel, PADDING_ID};
use sentiflow_model::train::{
    EpochRecord, EpochSelection, EpochVerdict, Example, LearningRateSchedule, OptimizerKind, Rng,
    TrainConfig, TrainError, TrainedModel, check_examples, class_weights, initial_model,
};
use serde::{Deserialize, Serialize};

use crate::BurnError;
use crate::model::{HashedBag, ids_tensor};

/// Settings of the mini-batch trainer that the sparse trainer does not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BurnConfig {
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Initial learning rate of the mini-batch steps (replaces [`TrainConfig::learning_rate`], which
    /// is tuned for one step per example).
    pub learning_rate: f32,
}

impl Default for BurnConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            learning_rate: 0.05,
        }
    }
}

impl BurnConfig {
    /// Checks ranges; [`train`] calls it.
    pub fn validate(&self) -> Result<(), BurnError> {
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return Err(BurnError::InvalidConfig(format!(
                "batch_size must be 1..=1048576, got {}",
                self.batch_size
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(BurnError::InvalidConfig(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            )));
        }
        Ok(())
    }
}

/// Rows scored per forward pass during validation.
const EVAL_CHUNK: usize = 1024;
/// AdaGrad's ε, as the sparse trainer's.
const ADAGRAD_EPSILON: f32 = 1e-8;

/// Feature ids of one text, with the distinct ids and their counts for feature dropout (which drops a
/// distinct id with all its copies, as the sparse trainer does).
struct Bag {
    ids: Vec<i64>,
    distinct: Vec<(i64, usize)>,
}

/// Featurized texts and the number of cleaned-text tokens (for tokens/s).
fn featurize(featurizer: &Featurizer, examples: &[Example]) -> (Vec<Bag>, usize) {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    let chunk = examples.len().div_ceil(threads).max(1);
    let parts: Vec<(Vec<Bag>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = examples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut tokens = 0;
                    let bags = part
                        .iter()
                        .map(|example| {
                            let (ids, count) = featurizer.featurize_counted(&example.text);
                            tokens += count;
                            let mut sorted = ids.clone();
                            sorted.sort_unstable();
                            let mut distinct: Vec<(i64, usize)> = Vec::new();
                            for id in sorted {
                                match distinct.last_mut() {
                                    Some((last, copies)) if *last == id => *copies += 1,
                                    _ => distinct.push((id, 1)),
                                }
                            }
                            Bag { ids, distinct }
                        })
                        .collect();
                    (bags, tokens)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("featurizer thread panicked"))
            .collect()
    });
    let tokens = parts.iter().map(|(_, tokens)| tokens).sum();
    (
        parts.into_iter().flat_map(|(bags, _)| bags).collect(),
        tokens,
    )
}

/// Pads `rows` into one row-major matrix of [`pad_length`] columns.
fn pad(rows: &[&[i64]]) -> (Vec<i64>, usize) {
    let longest = rows.iter().map(|row| row.len()).max().unwrap_or(1);
    let cols = pad_length(longest).max(longest);
    let mut ids = vec![PADDING_ID; rows.len() * cols];
    for (out, row) in ids.chunks_exact_mut(cols).zip(rows) {
        out[..row.len()].copy_from_slice(row);
    }
    (ids, cols)
}

/// Class probabilities of featurized rows, in chunks.
fn predict_bags<B: Backend>(
    model: &HashedBag<B>,
    bags: &[Bag],
    device: &B::Device,
) -> Result<Vec<[f64; CLASSES]>, BurnError> {
    let mut out = Vec::with_capacity(bags.len());
    for chunk in bags.chunks(EVAL_CHUNK) {
        let rows: Vec<&[i64]> = chunk.iter().map(|bag| bag.ids.as_slice()).collect();
        let (ids, cols) = pad(&rows);
        out.extend(crate::model::predict_ids(
            model,
            ids,
            rows.len(),
            cols,
            device,
        )?);
    }
    Ok(out)
}

/// Class probabilities of raw texts under a burn model (the reference for ONNX parity of a
/// burn-trained model).
pub fn predict_texts<B: Backend, S: AsRef<str>>(
    featurizer: &Featurizer,
    model: &HashedBag<B>,
    texts: &[S],
    device: &B::Device,
) -> Result<Vec<[f64; CLASSES]>, BurnError> {
    let bags: Vec<Bag> = texts
        .iter()
        .map(|text| Bag {
            ids: featurizer.featurize(text.as_ref()),
            distinct: Vec::new(),
        })
        .collect();
    predict_bags(model, &bags, device)
}

/// Trains a [`HashedBag`] on `device` and returns the kept epoch's weights as a [`TrainedModel`],
/// exactly as the sparse trainer does. Deterministic on the ndarray backend for the same inputs.
pub fn train<B: AutodiffBackend>(
    featurizer: &Featurizer,
    training: &[Example],
    validation: &[Example],
    config: &TrainConfig,
    burn: &BurnConfig,
    device: &B::Device,
) -> Result<TrainedModel, BurnError> {
    config.validate()?;
    burn.validate()?;
    check_examples("training", training)?;
    check_examples("validation", validation)?;
    if training.is_empty() {
        return Err(TrainError::EmptyTrainingSet.into());
    }
    if validation.is_empty() {
        return Err(TrainError::EmptyValidationSet.into());
    }
    let class_weights = class_weights(training, config.class_weighting)?;

    let featurize_start = Instant::now();
    let (train_bags, train_tokens) = featurize(featurizer, training);
    let (validation_bags, _) = featurize(featurizer, validation);
    let featurize_seconds = featurize_start.elapsed().as_secs_f64();

    let mut rng = Rng::new(config.seed);
    let initial = initial_model(featurizer.config().buckets, config.dim, &mut rng);
    let model = HashedBag::<B>::from_model(&initial, device)?;
    let run = Run {
        training,
        validation,
        train_bags: &train_bags,
        train_tokens,
        validation_bags: &validation_bags,
        class_weights,
        config,
        burn,
        device,
    };
    let (model, history, best_epoch, evaluation) = match config.optimizer {
        OptimizerKind::Adagrad => run.epochs(
            model,
            AdaGradConfig::new().with_epsilon(ADAGRAD_EPSILON).init(),
            &mut rng,
        )?,
        OptimizerKind::Sgd => run.epochs(model, SgdConfig::new().init(), &mut rng)?,
    };
    Ok(TrainedModel {
        model,
        history,
        best_epoch,
        validation: evaluation,
        class_weights,
        featurizer_version: FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: featurizer.config().config_hash(),
        config: config.clone(),
        featurize_seconds,
    })
}

/// Everything an epoch loop reads.
struct Run<'a, B: Backend> {
    training: &'a [Example],
    validation: &'a [Example],
    train_bags: &'a [Bag],
    train_tokens: usize,
    validation_bags: &'a [Bag],
    class_weights: [f32; CLASSES],
    config: &'a TrainConfig,
    burn: &'a BurnConfig,
    device: &'a B::Device,
}

/// Best weights, the per-epoch history, the best epoch and its validation evaluation.
type Outcome = (HashedModel, Vec<EpochRecord>, usize, Evaluation);

impl<B: AutodiffBackend> Run<'_, B> {
    fn epochs<O: Optimizer<HashedBag<B>, B>>(
        &self,
        mut model: HashedBag<B>,
        mut optimizer: O,
        rng: &mut Rng,
    ) -> Result<Outcome, BurnError> {
        let config = self.config;
        let batch_size = self.burn.batch_size;
        let validation_labels: Vec<usize> = self
            .validation
            .iter()
            .map(|example| example.label)
            .collect();
        let mut order: Vec<usize> = (0..self.training.len()).collect();
        let batches_per_epoch = self.training.len().div_ceil(batch_size);
        let total_steps = (config.epochs * batches_per_epoch) as f64;
        let mut history = Vec::with_capacity(config.epochs);
        let mut best: Option<(HashedModel, usize, Evaluation)> = None;
        let mut selection = EpochSelection::new(config);
        let mut kept: Vec<i64> = Vec::new();

        for epoch in 0..config.epochs {
            let start = Instant::now();
            rng.shuffle(&mut order);
            let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
            let mut weight_sum = 0.0f64;
            let mut features = 0usize;
            let mut learning_rate = self.burn.learning_rate;
            for (batch, indices) in order.chunks(batch_size).enumerate() {
                let step = epoch * batches_per_epoch + batch;
                learning_rate = match config.schedule {
                    LearningRateSchedule::Linear => {
                        self.burn.learning_rate * (1.0 - step as f64 / total_steps) as f32
                    }
                    LearningRateSchedule::Constant => self.burn.learning_rate,
                };
                let mut ids = Vec::new();
                let mut rows: Vec<(usize, usize)> = Vec::with_capacity(indices.len());
                let mut targets = Vec::with_capacity(indices.len() * CLASSES);
                for &index in indices {
                    let bag = &self.train_bags[index];
                    let label = self.training[index].label;
                    let weight = self.training[index].weight * self.class_weights[label];
                    if bag.ids.is_empty() || weight == 0.0 {
                        continue;
                    }
                    kept.clear();
                    if config.feature_dropout > 0.0 {
                        for &(id, copies) in &bag.distinct {
                            if rng.next_f32() >= config.feature_dropout {
                                kept.extend(std::iter::repeat_n(id, copies));
                            }
                        }
                        if kept.is_empty() {
                            let (id, copies) = bag.distinct[rng.below(bag.distinct.len())];
                            kept.extend(std::iter::repeat_n(id, copies));
                        }
                    } else {
                        kept.extend_from_slice(&bag.ids);
                    }
                    rows.push((ids.len(), kept.len()));
                    ids.extend_from_slice(&kept);
                    let mut target = [0.0f32; CLASSES];
                    target[label] = weight;
                    targets.extend_from_slice(&target);
                    weight_sum += f64::from(weight);
                }
                if rows.is_empty() {
                    continue;
                }
                features += ids.len();
                let row_slices: Vec<&[i64]> = rows
                    .iter()
                    .map(|&(offset, length)| &ids[offset..offset + length])
                    .collect();
                let (padded, cols) = pad(&row_slices);
                let count = rows.len();
                let input = ids_tensor::<B>(padded, count, cols, self.device);
                let targets = Tensor::<B, 2>::from_data(
                    TensorData::new(targets, [count, CLASSES]),
                    self.device,
                );
                // Σ wᵢ · (−log pᵢ[yᵢ]) over the batch; the step minimises its mean over examples.
                let weighted = (log_softmax(model.logits(input), 1) * targets).sum().neg();
                let mut loss = weighted.clone().div_scalar(count as f32);
                if config.l2_embeddings > 0.0 {
                    loss = loss
                        + model
                            .embeddings
                            .val()
                            .square()
                            .sum()
                            .mul_scalar(0.5 * config.l2_embeddings);
                }
                if config.l2_output > 0.0 {
                    loss = loss
                        + model
                            .weights
                            .val()
                            .square()
                            .sum()
                            .mul_scalar(0.5 * config.l2_output);
                }
                let gradients = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(f64::from(learning_rate), model, gradients);
                let weighted = weighted.inner();
                loss_sum = Some(match loss_sum {
                    Some(sum) => sum + weighted,
                    None => weighted,
                });
            }
            // Reading the loss waits for the device, so the time below covers all of the epoch's work.
            let loss_total = match loss_sum {
                Some(sum) => f64::from(
                    sum.into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .map_err(|error| BurnError::Tensor(format!("{error:?}")))?[0],
                ),
                None => 0.0,
            };
            let seconds = start.elapsed().as_secs_f64();

            let inner = model.valid();
            let predictions = predict_bags(&inner, self.validation_bags, self.device)?;
            let evaluation = evaluate(&predictions, &validation_labels);
            tracing::debug!(
                epoch = epoch + 1,
                macro_f1 = evaluation.macro_f1,
                seconds,
                "burn epoch"
            );
            history.push(EpochRecord {
                epoch: epoch + 1,
                learning_rate,
                train_loss: if weight_sum > 0.0 {
                    loss_total / weight_sum
                } else {
                    0.0
                },
                validation_macro_f1: evaluation.macro_f1,
                validation_log_loss: evaluation.log_loss,
                tokens_per_second: self.train_tokens as f64 / seconds.max(1e-9),
                features_per_second: features as f64 / seconds.max(1e-9),
                seconds,
            });
            match selection.observe(epoch + 1, evaluation.macro_f1) {
                EpochVerdict::Keep => best = Some((inner.to_model()?, epoch + 1, evaluation)),
                EpochVerdict::Continue => {}
                EpochVerdict::Stop => break,
            }
        }
        let (model, best_epoch, evaluation) =
            best.expect("the last planned epoch is always eligible");
        Ok((model, history, best_epoch, evaluation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_uses_the_serving_lengths() {
        let (ids, cols) = pad(&[&[1, 2], &[3]]);
        assert_eq!(cols, 32);
        assert_eq!(&ids[..3], &[1, 2, 0]);
        assert_eq!(&ids[32..34], &[3, 0]);
        assert_eq!(pad(&[&[7; 40]]).1, 64);
    }

    #[test]
    fn config_ranges_are_checked() {
        assert!(BurnConfig::default().validate().is_ok());
        for bad in [
            BurnConfig {
                batch_size: 0,
                ..BurnConfig::default()
            },
            BurnConfig {
                learning_rate: f32::NAN,
                ..BurnConfig::default()
            },
        ] {
            assert_eq!(bad.validate().unwrap_err().kind(), "invalid_config");
        }
    }
}
