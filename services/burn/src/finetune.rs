//! Fine-tuning of [`BertClassifier`] on any burn autodiff backend (CUDA on a GPU host, ndarray on the
//! CPU in CI): AdamW with linear warm-up and linear decay, class-weighted cross-entropy, gradient-norm
//! clipping, length-bucketed seeded shuffles, and early stopping on validation macro-F1 with
//! best-epoch restore.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use sentiflow_model::encoder::bert::BertClassifierWeights;
use sentiflow_model::eval::{Evaluation, evaluate};
use sentiflow_model::hashed::CLASSES;
use sentiflow_model::train::Rng;
use serde::{Deserialize, Serialize};

use crate::BurnError;
use crate::encoder::{BertClassifier, DeviceBatch};

/// One tokenized, labelled text: ids with `[CLS]`/`[SEP]`, unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedExample {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Class index (0 negative, 1 neutral, 2 positive).
    pub label: usize,
    /// How much the row counts in the loss (label confidence × provenance weight; 1 = plain).
    pub weight: f32,
}

/// Fine-tuning settings. Defaults follow BERT practice (lr 5e-5, 10 % warm-up, decay 0.01, clip 1.0),
/// with the batch size measured best on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineTuneConfig {
    /// Passes over the training rows (at most; early stopping may end sooner).
    pub epochs: usize,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate (after warm-up).
    pub learning_rate: f64,
    /// Share of all steps spent warming up linearly from 0.
    pub warmup_fraction: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Each parameter's gradient is rescaled so its L2 norm is at most this (burn's norm clipping is
    /// per tensor).
    pub max_grad_norm: f32,
    /// Dropout of embeddings, attention and feed-forward outputs.
    pub dropout: f64,
    /// Weight classes by the inverse of their summed row weight in the loss.
    pub class_weighting: bool,
    /// Epochs without a better validation macro-F1 before stopping.
    pub patience: usize,
    /// Stop after this many optimiser steps in total (smoke tests, time-boxed CPU runs); `None`: no cap.
    pub max_steps: Option<usize>,
    /// Seed of the shuffles and dropout.
    pub seed: u64,
    /// Rows per forward pass when scoring validation rows.
    pub eval_batch_size: usize,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            // Measured on an H200 (bench train --family encoder, all 29,702 rows, 3 epochs): batch
            // 32 ran 494 sentences/s for OOD macro-F1 0.577, 128 ran 1,346/s for 0.603, 256
            // 1,838/s for 0.583.
            batch_size: 128,
            learning_rate: 5e-5,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            dropout: 0.1,
            class_weighting: true,
            patience: 1,
            max_steps: None,
            seed: 42,
            eval_batch_size: 128,
        }
    }
}

impl FineTuneConfig {
    /// Checks ranges; [`fine_tune`] calls it.
    pub fn validate(&self) -> Result<(), BurnError> {
        let invalid = |message: String| Err(BurnError::InvalidConfig(message));
        if self.epochs == 0 || self.batch_size == 0 || self.eval_batch_size == 0 {
            return invalid("epochs, batch_size and eval_batch_size must be positive".to_owned());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) || !(0.0..1.0).contains(&self.dropout) {
            return invalid("warmup_fraction and dropout must be in [0, 1)".to_owned());
        }
        if !(self.max_grad_norm > 0.0 && self.weight_decay >= 0.0) {
            return invalid(
                "max_grad_norm must be positive and weight_decay non-negative".to_owned(),
            );
        }
        if self.max_steps == Some(0) {
            return invalid("max_steps must be positive when given".to_owned());
        }
        Ok(())
    }
}

/// One epoch of the history (the model card's curve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Optimiser steps taken in this epoch.
    pub steps: usize,
    /// Mean class-weighted cross-entropy over the epoch's steps.
    pub train_loss: f64,
    /// Validation macro-F1 after the epoch.
    pub validation_macro_f1: f64,
    /// Validation log loss after the epoch.
    pub validation_log_loss: f64,
    /// Seconds of training in the epoch (validation excluded).
    pub seconds: f64,
    /// Training sentences per second.
    pub sentences_per_second: f64,
    /// Learning rate at the epoch's last step.
    pub learning_rate: f64,
}

/// What a fine-tuning run produced.
#[derive(Debug, Clone)]
pub struct FineTuned {
    /// Weights of the best epoch.
    pub weights: BertClassifierWeights,
    /// Per-epoch history.
    pub history: Vec<FineTuneEpoch>,
    /// 1-based best epoch.
    pub best_epoch: usize,
    /// The best epoch's validation evaluation.
    pub validation: Evaluation,
    /// Loss of every optimiser step, in order (the smoke test checks it falls).
    pub step_losses: Vec<f32>,
    /// Class weights used in the loss.
    pub class_weights: [f32; CLASSES],
    /// Wall-clock seconds of the whole run (validation included).
    pub seconds: f64,
}

/// Learning rate at 0-based `step` of `total`: linear warm-up to `peak`, then linear decay to 0.
pub fn learning_rate_at(step: usize, total: usize, peak: f64, warmup_fraction: f64) -> f64 {
    let total = total.max(1) as f64;
    let warmup = (warmup_fraction * total).round().max(1.0);
    let step = step as f64 + 1.0;
    if step <= warmup {
        peak * step / warmup
    } else {
        peak * ((total - step) / (total - warmup).max(1.0)).max(0.0)
    }
}

/// Fine-tunes `initial` (a pretrained encoder with a fresh head) on `training`, keeping the epoch with
/// the best macro-F1 on `validation`. `progress` hears every finished epoch.
pub fn fine_tune<B: AutodiffBackend>(
    initial: &BertClassifierWeights,
    training: &[TokenizedExample],
    validation: &[TokenizedExample],
    config: &FineTuneConfig,
    device: &B::Device,
    mut progress: impl FnMut(&FineTuneEpoch),
) -> Result<FineTuned, BurnError> {
    config.validate()?;
    check_examples("training", training)?;
    check_examples("validation", validation)?;
    let started = Instant::now();
    B::seed(device, config.seed);
    let class_weights = class_weights(training, config.class_weighting)?;
    let mut model = BertClassifier::<B>::from_weights(initial, config.dropout, device)?;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .with_epsilon(1e-8)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(config.max_grad_norm)))
        .init::<B, BertClassifier<B>>();
    let steps_per_epoch = training.len().div_ceil(config.batch_size);
    let total_steps = config
        .max_steps
        .map_or(steps_per_epoch * config.epochs, |cap| {
            cap.min(steps_per_epoch * config.epochs)
        });
    let validation_labels: Vec<usize> = validation.iter().map(|example| example.label).collect();
    let mut rng = Rng::new(config.seed);
    let mut history = Vec::new();
    let mut step_losses = Vec::with_capacity(total_steps);
    let mut best: Option<(f64, usize, BertClassifierWeights, Evaluation)> = None;
    let mut step = 0usize;
    // Losses stay on the device and are read in groups: one host sync per group, not per step, so a
    // GPU is not stalled after every optimiser step.
    let mut pending_losses: Vec<Tensor<B::InnerBackend, 1>> = Vec::with_capacity(LOSS_READ_EVERY);
    'epochs: for epoch in 1..=config.epochs {
        let epoch_start = Instant::now();
        let mut epoch_losses = Vec::new();
        let mut sentences = 0usize;
        let mut learning_rate = 0.0;
        for batch in length_bucketed_batches(training, config.batch_size, &mut rng) {
            if step >= total_steps {
                break;
            }
            learning_rate = learning_rate_at(
                step,
                total_steps,
                config.learning_rate,
                config.warmup_fraction,
            );
            let rows: Vec<&[i64]> = batch
                .iter()
                .map(|index| training[*index].ids.as_slice())
                .collect();
            let device_batch = DeviceBatch::<B>::from_rows(&rows, device);
            let loss = weighted_cross_entropy(
                model.logits(&device_batch),
                batch.iter().map(|index| &training[*index]),
                &class_weights,
                device,
            );
            pending_losses.push(loss.clone().inner());
            let gradients = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(learning_rate, model, gradients);
            sentences += rows.len();
            step += 1;
            if pending_losses.len() == LOSS_READ_EVERY {
                let read = read_losses(&mut pending_losses, step)?;
                log_progress(epoch, step, total_steps, &read, sentences, &epoch_start);
                step_losses.extend_from_slice(&read);
                epoch_losses.extend(read.iter().map(|loss| f64::from(*loss)));
            }
        }
        let read = read_losses(&mut pending_losses, step)?;
        step_losses.extend_from_slice(&read);
        epoch_losses.extend(read.iter().map(|loss| f64::from(*loss)));
        let seconds = epoch_start.elapsed().as_secs_f64();
        let inner = model.valid();
        let predictions = predict(&inner, validation, config.eval_batch_size, device)?;
        let evaluation = evaluate(&predictions, &validation_labels);
        let record = FineTuneEpoch {
            epoch,
            steps: epoch_losses.len(),
            train_loss: epoch_losses.iter().sum::<f64>() / epoch_losses.len().max(1) as f64,
            validation_macro_f1: evaluation.macro_f1,
            validation_log_loss: evaluation.log_loss,
            seconds,
            sentences_per_second: sentences as f64 / seconds.max(1e-9),
            learning_rate,
        };
        tracing::info!(
            epoch,
            steps = record.steps,
            train_loss = record.train_loss,
            validation_macro_f1 = record.validation_macro_f1,
            sentences_per_second = record.sentences_per_second,
            "encoder fine-tune epoch"
        );
        progress(&record);
        history.push(record);
        let improved = best
            .as_ref()
            .is_none_or(|(score, ..)| evaluation.macro_f1 > *score);
        if improved {
            best = Some((
                evaluation.macro_f1,
                epoch,
                inner.to_weights(initial.config)?,
                evaluation,
            ));
        } else if epoch
            - best
                .as_ref()
                .map_or(epoch, |(_, best_epoch, ..)| *best_epoch)
            >= config.patience
        {
            break 'epochs;
        }
        if step >= total_steps {
            break;
        }
    }
    let (_, best_epoch, weights, validation) =
        best.ok_or_else(|| BurnError::InvalidConfig("no epoch ran".to_owned()))?;
    Ok(FineTuned {
        weights,
        history,
        best_epoch,
        validation,
        step_losses,
        class_weights: class_weights.map(|w| w as f32),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Class probabilities of `examples` (batched by `batch_size`, in order) on an inference backend.
pub fn predict<B: Backend>(
    model: &BertClassifier<B>,
    examples: &[TokenizedExample],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<[f64; CLASSES]>, BurnError> {
    let rows: Vec<&[i64]> = examples
        .iter()
        .map(|example| example.ids.as_slice())
        .collect();
    predict_rows(model, &rows, batch_size, device)
}

/// [`predict`] on bare id rows. Rows are scored in length order (less padding) and returned in input
/// order.
pub fn predict_rows<B: Backend>(
    model: &BertClassifier<B>,
    rows: &[&[i64]],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<[f64; CLASSES]>, BurnError> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|index| rows[*index].len());
    let mut output = vec![[0.0; CLASSES]; rows.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&[i64]> = chunk.iter().map(|index| rows[*index]).collect();
        let probabilities = softmax(model.logits(&DeviceBatch::from_rows(&batch, device)), 1);
        let values = probabilities
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|error| BurnError::Tensor(format!("{error:?}")))?;
        for (index, row) in chunk.iter().zip(values.chunks_exact(CLASSES)) {
            output[*index] = [f64::from(row[0]), f64::from(row[1]), f64::from(row[2])];
        }
    }
    Ok(output)
}

/// Shuffled batches of indices whose members have similar lengths (less padding): shuffle, sort
/// windows of 50 batches by length, cut into batches, shuffle the batches.
fn length_bucketed_batches(
    examples: &[TokenizedExample],
    batch_size: usize,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    shuffle(&mut order, rng);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(examples.len().div_ceil(batch_size));
    for window in order.chunks_mut(batch_size * 50) {
        window.sort_by_key(|index| examples[*index].ids.len());
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    shuffle(&mut batches, rng);
    batches
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for index in (1..items.len()).rev() {
        let other = (rng.next_u64() % (index as u64 + 1)) as usize;
        items.swap(index, other);
    }
}

/// Optimiser steps whose losses are read from the device together.
const LOSS_READ_EVERY: usize = 32;

/// Reads the pending step losses (`step` is the count of steps taken so far); a non-finite loss is
/// an error naming its step.
fn read_losses<B: Backend>(
    pending: &mut Vec<Tensor<B, 1>>,
    step: usize,
) -> Result<Vec<f32>, BurnError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let count = pending.len();
    let values = Tensor::cat(std::mem::take(pending), 0)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|error| BurnError::Tensor(format!("{error:?}")))?;
    if let Some(offset) = values.iter().position(|loss| !loss.is_finite()) {
        return Err(BurnError::Tensor(format!(
            "the loss became {} at step {}: lower the learning rate",
            values[offset],
            step - count + offset
        )));
    }
    Ok(values)
}

/// A loss read that crosses a multiple of 320 steps is logged (a long GPU epoch shows progress).
fn log_progress(
    epoch: usize,
    step: usize,
    total_steps: usize,
    losses: &[f32],
    sentences: usize,
    epoch_start: &Instant,
) {
    let loss = losses.iter().map(|loss| f64::from(*loss)).sum::<f64>() / losses.len().max(1) as f64;
    let sentences_per_second = sentences as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
    let every = LOSS_READ_EVERY * 10;
    if (step - losses.len()) / every != step / every {
        tracing::info!(
            epoch,
            step,
            total_steps,
            loss,
            sentences_per_second,
            "encoder fine-tune progress"
        );
    }
}

/// Σ wᵢ·(−log pᵢ[yᵢ]) / Σ wᵢ with wᵢ = class weight of yᵢ × the row's weight: PyTorch's
/// class-weighted cross-entropy (the same as burn's when every row weighs 1), plus per-row weights.
fn weighted_cross_entropy<'a, B: Backend>(
    logits: Tensor<B, 2>,
    rows: impl Iterator<Item = &'a TokenizedExample>,
    class_weights: &[f64; CLASSES],
    device: &B::Device,
) -> Tensor<B, 1> {
    let (labels, weights): (Vec<i64>, Vec<f32>) = rows
        .map(|row| {
            (
                row.label as i64,
                (class_weights[row.label] * f64::from(row.weight)) as f32,
            )
        })
        .unzip();
    let batch = labels.len();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [batch, 1]), device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [batch]), device);
    let picked = log_softmax(logits, 1).gather(1, targets).reshape([batch]);
    (picked * weights.clone()).sum().neg() / weights.sum()
}

fn check_examples(what: &str, examples: &[TokenizedExample]) -> Result<(), BurnError> {
    if examples.is_empty() {
        return Err(BurnError::InvalidConfig(format!("the {what} set is empty")));
    }
    if let Some(example) = examples.iter().find(|example| {
        example.label >= CLASSES
            || example.ids.is_empty()
            || !(example.weight.is_finite() && example.weight > 0.0)
    }) {
        return Err(BurnError::InvalidConfig(format!(
            "a {what} example has label {}, {} ids and weight {}",
            example.label,
            example.ids.len(),
            example.weight
        )));
    }
    Ok(())
}

/// Balanced class weights, `total / (classes × class total)` over the rows' summed weights (so every
/// class carries the same share of the loss; all 1 when off); a class missing from training is an
/// error, since the model could never learn it.
fn class_weights(
    training: &[TokenizedExample],
    weighting: bool,
) -> Result<[f64; CLASSES], BurnError> {
    let mut totals = [0.0f64; CLASSES];
    for example in training {
        totals[example.label] += f64::from(example.weight);
    }
    if let Some(missing) = totals.iter().position(|total| *total <= 0.0) {
        return Err(BurnError::InvalidConfig(format!(
            "class {missing} has no training example"
        )));
    }
    if !weighting {
        return Ok([1.0; CLASSES]);
    }
    let total: f64 = totals.iter().sum();
    Ok(totals.map(|class_total| total / (CLASSES as f64 * class_total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let rates: Vec<f64> = (0..10)
            .map(|step| learning_rate_at(step, 10, 1.0, 0.2))
            .collect();
        assert!(
            (rates[0] - 0.5).abs() < 1e-12 && (rates[1] - 1.0).abs() < 1e-12,
            "{rates:?}"
        );
        assert!(
            rates.windows(2).skip(1).all(|pair| pair[1] < pair[0]),
            "{rates:?}"
        );
        assert!(rates[9].abs() < 1e-12, "{rates:?}");
    }

    #[test]
    fn batches_cover_every_row_once_and_group_lengths() {
        let examples: Vec<TokenizedExample> = (0..1000)
            .map(|index| TokenizedExample {
                ids: vec![1; 2 + index % 37],
                label: index % 3,
                weight: 1.0,
            })
            .collect();
        let mut rng = Rng::new(7);
        let batches = length_bucketed_batches(&examples, 16, &mut rng);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let spread: usize = batches
            .iter()
            .map(|batch| {
                let lengths = batch.iter().map(|index| examples[*index].ids.len());
                lengths.clone().max().unwrap() - lengths.min().unwrap()
            })
            .sum();
        assert!(
            spread / batches.len() < 6,
            "mean length spread {}",
            spread / batches.len()
        );
        let again = length_bucketed_batches(&examples, 16, &mut Rng::new(7));
        assert_eq!(batches, again, "seeded");
    }

    #[test]
    fn weighted_loss_is_burns_class_weighted_loss_plus_row_weights() {
        use burn::nn::loss::CrossEntropyLossConfig;
        type B = crate::NdArrayInference;
        let device = Default::default();
        let logits = [[2.0f32, -1.0, 0.5], [0.1, 0.3, -0.2], [-1.5, 0.7, 1.9]];
        let labels = [0usize, 1, 2];
        let class_weights = [0.5, 2.0, 1.5];
        let tensor = |rows: &[[f32; 3]]| {
            Tensor::<B, 2>::from_data(
                TensorData::new(rows.concat(), [rows.len(), CLASSES]),
                &device,
            )
        };
        let example = |label: usize, weight: f32| TokenizedExample {
            ids: vec![101, 102],
            label,
            weight,
        };
        let value = |loss: Tensor<B, 1>| loss.into_scalar();
        let plain: Vec<TokenizedExample> =
            labels.iter().map(|label| example(*label, 1.0)).collect();
        let ours = value(weighted_cross_entropy(
            tensor(&logits),
            plain.iter(),
            &class_weights,
            &device,
        ));
        let burns = value(
            CrossEntropyLossConfig::new()
                .with_weights(Some(class_weights.iter().map(|w| *w as f32).collect()))
                .init::<B>(&device)
                .forward(
                    tensor(&logits),
                    Tensor::<B, 1, Int>::from_data(
                        TensorData::new(labels.map(|label| label as i64).to_vec(), [3]),
                        &device,
                    ),
                ),
        );
        assert!((ours - burns).abs() < 1e-6, "{ours} vs burn's {burns}");
        // A row of weight 2 counts as that row twice.
        let doubled = [example(0, 1.0), example(1, 2.0), example(2, 1.0)];
        let repeated = [
            example(0, 1.0),
            example(1, 1.0),
            example(1, 1.0),
            example(2, 1.0),
        ];
        let with_weight = value(weighted_cross_entropy(
            tensor(&logits),
            doubled.iter(),
            &class_weights,
            &device,
        ));
        let with_copy = value(weighted_cross_entropy(
            tensor(&[logits[0], logits[1], logits[1], logits[2]]),
            repeated.iter(),
            &class_weights,
            &device,
        ));
        assert!(
            (with_weight - with_copy).abs() < 1e-6,
            "{with_weight} vs {with_copy}"
        );
        assert!(
            (with_weight - ours).abs() > 1e-3,
            "the weight changes the loss"
        );
    }

    #[test]
    fn class_weights_balance_and_refuse_a_missing_class() {
        let example = |label| TokenizedExample {
            ids: vec![101, 102],
            label,
            weight: 1.0,
        };
        let weights =
            class_weights(&[example(0), example(0), example(1), example(2)], true).unwrap();
        assert!((weights[0] - 4.0 / 6.0).abs() < 1e-12 && (weights[1] - 4.0 / 3.0).abs() < 1e-12);
        assert!(class_weights(&[example(0), example(1)], true).is_err());
    }
}
