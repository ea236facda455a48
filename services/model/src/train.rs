//! The CPU trainer of the `hashed` family: fastText-style sparse training of a hashed embedding bag →
//! linear → softmax, with class weighting, a learning-rate schedule, row-wise AdaGrad or plain SGD,
//! lazy L2, feature dropout and early stopping on validation macro-F1 with best-epoch restore.
//! Single-threaded and seeded: the same examples, featurizer and config give bit-identical weights.
//!
//! One step (one example whose bag has `n` feature occurrences, weight `w` = example weight × class
//! weight): `h = mean(E[ids])`, `p = softmax(Wᵀh + b)`, `g = w (p − onehot(y))`; then `∇h = W g` is
//! taken with the old `W`, `W −= η (h gᵀ + λ_out W)`, `b −= η g`, and each distinct id `i` occurring
//! `c_i` times gets `E[i] −= η_i (c_i / n) ∇h`. Only the rows of the ids present are touched. With
//! AdaGrad, `η_i = η / √(Σ past mean-square row gradients)` per row (one accumulator per row, as for
//! large embedding tables), which keeps the compound-prior token, present in every bag with a large
//! share, from drowning the rare word rows. L2 on embedding rows is applied lazily: a row catches up on
//! the decay it missed when it is next used, and all rows at the end of every epoch, which equals
//! dense decay without a dense pass per step.
//!
//! The defaults are the configuration chosen on the out-of-domain experiments (see
//! `examples/train_quality.rs`): they trade some in-domain fit for robustness on unseen domains.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::eval::{Evaluation, evaluate};
use crate::featurize::{FEATURIZER_VERSION, Featurizer, stable_hash};
use crate::hashed::{CLASSES, HashedModel, softmax};

/// One labelled training or validation text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Raw text; the featurizer cleans it.
    pub text: String,
    /// Class index: 0 negative, 1 neutral, 2 positive.
    pub label: usize,
    /// Weight of the example in the loss (1 for ordinary rows; e.g. the annotators' confidence).
    pub weight: f32,
}

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearningRateSchedule {
    /// From `learning_rate` down to 0 linearly over all planned steps (fastText's schedule).
    Linear,
    /// `learning_rate` throughout.
    Constant,
}

/// How the gradient becomes an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Plain SGD, as fastText: every row moves by `lr × gradient`.
    Sgd,
    /// Row-wise AdaGrad for the embeddings (one accumulator per row) and element-wise AdaGrad for
    /// the output layer: frequent rows (the compound-prior token, which makes up a fixed share of
    /// every bag) slow down, rare rows keep learning.
    Adagrad,
}

/// How classes are weighted in the loss, from the (example-weighted) class counts of the training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeighting {
    /// Every class weighs 1: the model learns the training prior.
    None,
    /// `total / (classes × count)`: every class carries the same total weight, so the model learns a
    /// uniform prior (scikit-learn's `class_weight="balanced"`).
    InverseFrequency,
    /// The square root of the balanced weights, renormalised to a weighted mean of 1: halfway.
    SqrtInverseFrequency,
}

/// Hyper-parameters of [`train`]. The defaults are the configuration that met the out-of-domain target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Embedding width.
    pub dim: usize,
    /// Planned epochs (the schedule spans them); early stopping may end the run sooner.
    pub epochs: usize,
    /// Initial learning rate.
    pub learning_rate: f32,
    /// Learning-rate schedule.
    pub schedule: LearningRateSchedule,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// Class weighting of the loss.
    pub class_weighting: ClassWeighting,
    /// L2 strength on the embedding rows (applied lazily, only where used).
    pub l2_embeddings: f32,
    /// L2 strength on the output layer (not the bias).
    pub l2_output: f32,
    /// Probability of dropping each feature occurrence of a training example (at least one stays).
    pub feature_dropout: f32,
    /// Stop after this many epochs without a better validation macro-F1; 0 never stops early.
    pub patience: usize,
    /// The first (1-based) epoch whose weights may be kept (capped at `epochs`; 0 and 1 make every
    /// epoch eligible): earlier epochs are never kept nor count against `patience`, so with patience
    /// p > 0 a run lasts at least min(max(min_epochs, 1) + p, epochs) epochs. Macro-F1 on a few
    /// hundred validation rows is noisy, and on a small snapshot the first, barely fitted epoch can
    /// win by chance: on `up`'s bootstrap snapshot (5,881 airline tweets) with the `bins_and_linear`
    /// lexicon vote, epoch 1 (validation log-loss 0.82) beat epochs 2–4 (down to 0.78) and was kept, a
    /// timid model whose highest P(negative) over all 14,640 airline tweets was 0.82. A configuration
    /// written before this field existed (an older model card) lacks it and reads as 1, what that
    /// model was trained with, so its retrains keep choosing epochs as it did. See
    /// [`EpochSelection`].
    #[serde(default = "min_epochs_before_the_option")]
    pub min_epochs: usize,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
}

/// What an absent `min_epochs` means: every epoch eligible, as before the option existed.
fn min_epochs_before_the_option() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            dim: 32,
            epochs: 8,
            learning_rate: 0.01,
            schedule: LearningRateSchedule::Linear,
            optimizer: OptimizerKind::Adagrad,
            class_weighting: ClassWeighting::InverseFrequency,
            l2_embeddings: 0.0,
            l2_output: 0.0,
            feature_dropout: 0.3,
            patience: 3,
            min_epochs: 4,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Pairs with [`crate::featurize::FeaturizerConfig::in_domain`]: a faster learning rate and no
    /// feature dropout fit the training domain closely at the cost of robustness elsewhere. Measured
    /// with every epoch eligible (`min_epochs` 1), which it keeps.
    pub fn in_domain() -> Self {
        Self {
            learning_rate: 0.05,
            feature_dropout: 0.0,
            min_epochs: 1,
            ..Self::default()
        }
    }

    /// The first epoch whose weights may be kept: `min_epochs` capped at `epochs`.
    pub fn first_eligible_epoch(&self) -> usize {
        self.min_epochs.min(self.epochs)
    }

    /// Checks ranges; [`train`] calls it.
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |reason: String| Err(TrainError::InvalidConfig(reason));
        if self.dim == 0 || self.dim > 1024 {
            return invalid(format!("dim must be 1..=1024, got {}", self.dim));
        }
        if self.epochs == 0 {
            return invalid("epochs must be at least 1".to_owned());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        for (name, value) in [
            ("l2_embeddings", self.l2_embeddings),
            ("l2_output", self.l2_output),
        ] {
            if !(value.is_finite() && value >= 0.0 && value * self.learning_rate < 1.0) {
                return invalid(format!(
                    "{name} must be non-negative and below 1 / learning_rate, got {value}"
                ));
            }
        }
        if !(0.0..0.95).contains(&self.feature_dropout) {
            return invalid(format!(
                "feature_dropout must be in [0, 0.95), got {}",
                self.feature_dropout
            ));
        }
        Ok(())
    }
}

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// No training examples.
    #[error("the training set is empty")]
    EmptyTrainingSet,
    /// No validation examples (early stopping and the best-epoch choice need them).
    #[error("the validation set is empty")]
    EmptyValidationSet,
    /// A class has no training example (or only zero-weight ones).
    #[error("class {class} ({name}) has no training examples")]
    MissingClass {
        /// The class index.
        class: usize,
        /// Its name.
        name: &'static str,
    },
    /// A label is not a class index.
    #[error("{set} example {index} has label {label}, not one of 0, 1, 2")]
    InvalidLabel {
        /// `training` or `validation`.
        set: &'static str,
        /// Position in its slice.
        index: usize,
        /// The label found.
        label: usize,
    },
    /// A weight is negative, NaN or infinite.
    #[error("{set} example {index} has weight {weight}, not a finite non-negative number")]
    InvalidWeight {
        /// `training` or `validation`.
        set: &'static str,
        /// Position in its slice.
        index: usize,
        /// The weight found.
        weight: f32,
    },
    /// A configuration value is out of range.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
}

impl TrainError {
    /// Stable short name, for metric labels and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EmptyTrainingSet => "empty_training_set",
            Self::EmptyValidationSet => "empty_validation_set",
            Self::MissingClass { .. } => "missing_class",
            Self::InvalidLabel { .. } => "invalid_label",
            Self::InvalidWeight { .. } => "invalid_weight",
            Self::InvalidConfig(_) => "invalid_config",
        }
    }
}

/// What one epoch did, for the model card's training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f32,
    /// Mean weighted cross-entropy over the epoch's training steps (before the step's update).
    pub train_loss: f64,
    /// Validation macro-F1 after the epoch.
    pub validation_macro_f1: f64,
    /// Validation log loss after the epoch.
    pub validation_log_loss: f64,
    /// Cleaned-text tokens of the training examples processed per second of SGD (fastText's
    /// "words/sec/thread"; featurization excluded, it happens once before the first epoch).
    pub tokens_per_second: f64,
    /// Feature-id occurrences of the (dropout-thinned) bags per second of SGD; a repeated id (the
    /// compound-prior copies) counts every time, as it does in a padded ONNX input row.
    pub features_per_second: f64,
    /// Seconds of SGD in the epoch.
    pub seconds: f64,
}

/// The result of [`train`]: the kept epoch's weights and how the run went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    /// Weights of the kept epoch (see [`EpochSelection`]).
    pub model: HashedModel,
    /// One record per epoch run.
    pub history: Vec<EpochRecord>,
    /// 1-based epoch whose weights `model` holds.
    pub best_epoch: usize,
    /// Validation evaluation of `model`.
    pub validation: Evaluation,
    /// Class weights used in the loss, in class order.
    pub class_weights: [f32; CLASSES],
    /// [`FEATURIZER_VERSION`] of the featurizer trained with.
    pub featurizer_version: String,
    /// [`crate::featurize::FeaturizerConfig::config_hash`] of the featurizer trained with.
    pub featurizer_config_hash: String,
    /// The configuration used.
    pub config: TrainConfig,
    /// Seconds spent featurizing training and validation text.
    pub featurize_seconds: f64,
}

/// Which epoch's weights a run keeps and when it stops early: the epoch with the best validation
/// macro-F1 among those from [`TrainConfig::min_epochs`] on (the earliest on ties), stopping after
/// [`TrainConfig::patience`] such epochs without a better one. Shared by every hashed trainer (the
/// sparse CPU one here and the `burn` one) so that both choose alike.
#[derive(Debug, Clone)]
pub struct EpochSelection {
    min_epochs: usize,
    patience: usize,
    best_macro_f1: Option<f64>,
    epochs_without_improvement: usize,
}

/// What [`EpochSelection::observe`] says about the epoch just evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochVerdict {
    /// The best eligible epoch so far: keep its weights.
    Keep,
    /// Not kept; train on.
    Continue,
    /// Not kept, and patience is spent: stop.
    Stop,
}

impl EpochSelection {
    /// A selection for a run of `config`.
    pub fn new(config: &TrainConfig) -> Self {
        Self {
            min_epochs: config.first_eligible_epoch(),
            patience: config.patience,
            best_macro_f1: None,
            epochs_without_improvement: 0,
        }
    }

    /// Records the validation macro-F1 of 1-based `epoch` (called once per epoch, in order).
    pub fn observe(&mut self, epoch: usize, macro_f1: f64) -> EpochVerdict {
        if epoch < self.min_epochs {
            return EpochVerdict::Continue;
        }
        if self.best_macro_f1.is_none_or(|best| macro_f1 > best) {
            self.best_macro_f1 = Some(macro_f1);
            self.epochs_without_improvement = 0;
            return EpochVerdict::Keep;
        }
        self.epochs_without_improvement += 1;
        if self.patience > 0 && self.epochs_without_improvement >= self.patience {
            EpochVerdict::Stop
        } else {
            EpochVerdict::Continue
        }
    }
}

/// Class names in index order, for error messages.
const CLASS_NAMES: [&str; CLASSES] = crate::eval::CLASS_NAMES;

/// Whether a row belongs to the validation split: a stable hash of its identity (an id, or the
/// cleaned-text fingerprint so duplicates stay together) below `fraction` of the hash range. A row
/// never moves between splits when the data grows.
pub fn is_validation_row(identity: &str, fraction: f64) -> bool {
    let unit = (stable_hash(identity.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
    unit < fraction
}

/// Trains a hashed embedding-bag model on `training`, choosing the epoch by macro-F1 on
/// `validation`. Deterministic for the same inputs (the SGD runs on one thread; featurization may
/// use several, which does not change any value).
pub fn train(
    featurizer: &Featurizer,
    training: &[Example],
    validation: &[Example],
    config: &TrainConfig,
) -> Result<TrainedModel, TrainError> {
    config.validate()?;
    check_examples("training", training)?;
    check_examples("validation", validation)?;
    if training.is_empty() {
        return Err(TrainError::EmptyTrainingSet);
    }
    if validation.is_empty() {
        return Err(TrainError::EmptyValidationSet);
    }
    let class_weights = class_weights(training, config.class_weighting)?;

    let featurize_start = Instant::now();
    let train_bags = Bags::build(featurizer, training);
    let validation_bags = Bags::build(featurizer, validation);
    let featurize_seconds = featurize_start.elapsed().as_secs_f64();
    let validation_labels: Vec<usize> = validation.iter().map(|example| example.label).collect();

    let buckets = featurizer.config().buckets;
    let dim = config.dim;
    let mut rng = Rng::new(config.seed);
    let mut model = initial_model(buckets, dim, &mut rng);

    let mut optimizer = Optimizer::new(&model, config);
    let mut order: Vec<usize> = (0..training.len()).collect();
    let mut history = Vec::with_capacity(config.epochs);
    let total_steps = (config.epochs * training.len()) as f64;
    let mut best: Option<(usize, HashedModel, Evaluation)> = None;
    let mut selection = EpochSelection::new(config);
    let mut kept = Vec::new();

    for epoch in 0..config.epochs {
        let start = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        let mut weight_sum = 0.0f64;
        let mut features = 0.0f64;
        let mut learning_rate = config.learning_rate;
        for (position, &index) in order.iter().enumerate() {
            let step = epoch * training.len() + position;
            learning_rate = match config.schedule {
                LearningRateSchedule::Linear => {
                    config.learning_rate * (1.0 - step as f64 / total_steps) as f32
                }
                LearningRateSchedule::Constant => config.learning_rate,
            };
            let entries = train_bags.entries(index);
            let label = training[index].label;
            let weight = training[index].weight * class_weights[label];
            if entries.is_empty() || weight == 0.0 {
                continue;
            }
            kept.clear();
            if config.feature_dropout > 0.0 {
                kept.extend(
                    entries
                        .iter()
                        .copied()
                        .filter(|_| rng.next_f32() >= config.feature_dropout),
                );
                if kept.is_empty() {
                    kept.push(entries[rng.below(entries.len())]);
                }
            } else {
                kept.extend_from_slice(entries);
            }
            let step = optimizer.step(&mut model, &kept, label, weight, learning_rate);
            loss_sum += f64::from(step.loss);
            weight_sum += f64::from(weight);
            features += f64::from(step.occurrences);
        }
        let seconds = start.elapsed().as_secs_f64();
        optimizer.catch_up_all(&mut model);

        let predictions = validation_bags.predict(&model);
        let evaluation = evaluate(&predictions, &validation_labels);
        history.push(EpochRecord {
            epoch: epoch + 1,
            learning_rate,
            train_loss: if weight_sum > 0.0 {
                loss_sum / weight_sum
            } else {
                0.0
            },
            validation_macro_f1: evaluation.macro_f1,
            validation_log_loss: evaluation.log_loss,
            tokens_per_second: train_bags.tokens as f64 / seconds.max(1e-9),
            features_per_second: features / seconds.max(1e-9),
            seconds,
        });
        match selection.observe(epoch + 1, evaluation.macro_f1) {
            EpochVerdict::Keep => best = Some((epoch + 1, model.clone(), evaluation)),
            EpochVerdict::Continue => {}
            EpochVerdict::Stop => break,
        }
    }

    let (best_epoch, model, validation) = best.expect("the last planned epoch is always eligible");
    Ok(TrainedModel {
        model,
        history,
        best_epoch,
        validation,
        class_weights,
        featurizer_version: FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: featurizer.config().config_hash(),
        config: config.clone(),
        featurize_seconds,
    })
}

/// fastText's initialisation, drawn from `rng`: input rows uniform in `±1/dim` (the padding row 0
/// stays zero), a zero output layer and bias. Both trainers start from it.
pub fn initial_model(buckets: usize, dim: usize, rng: &mut Rng) -> HashedModel {
    let mut model = HashedModel::zeros(buckets, dim);
    let scale = 1.0 / dim as f32;
    for value in &mut model.embeddings[dim..] {
        *value = (rng.next_f32() * 2.0 - 1.0) * scale;
    }
    model
}

/// Class probabilities of raw texts under `model`, through the same featurizer and the same f32
/// arithmetic the trainer validates with (the f64 reference is [`HashedModel::predict_ids`]).
pub fn predict_texts<S: AsRef<str> + Sync>(
    featurizer: &Featurizer,
    model: &HashedModel,
    texts: &[S],
) -> Vec<[f64; CLASSES]> {
    let bags = Bags::build_texts(featurizer, texts);
    bags.predict(model)
}

/// Checks every example's label and weight; `set` (`training` or `validation`) names the slice in errors.
pub fn check_examples(set: &'static str, examples: &[Example]) -> Result<(), TrainError> {
    for (index, example) in examples.iter().enumerate() {
        if example.label >= CLASSES {
            return Err(TrainError::InvalidLabel {
                set,
                index,
                label: example.label,
            });
        }
        if !(example.weight.is_finite() && example.weight >= 0.0) {
            return Err(TrainError::InvalidWeight {
                set,
                index,
                weight: example.weight,
            });
        }
    }
    Ok(())
}

/// Loss weight per class from the example-weighted class totals; a class without weight is an error.
pub fn class_weights(
    training: &[Example],
    weighting: ClassWeighting,
) -> Result<[f32; CLASSES], TrainError> {
    let mut totals = [0.0f64; CLASSES];
    for example in training {
        totals[example.label] += f64::from(example.weight);
    }
    if let Some(class) = (0..CLASSES).find(|&class| totals[class] <= 0.0) {
        return Err(TrainError::MissingClass {
            class,
            name: CLASS_NAMES[class],
        });
    }
    let total: f64 = totals.iter().sum();
    let balanced = totals.map(|count| total / (CLASSES as f64 * count));
    let weights = match weighting {
        ClassWeighting::None => [1.0; CLASSES],
        ClassWeighting::InverseFrequency => balanced,
        ClassWeighting::SqrtInverseFrequency => {
            let roots = balanced.map(f64::sqrt);
            let mean = (0..CLASSES)
                .map(|class| roots[class] * totals[class])
                .sum::<f64>()
                / total;
            roots.map(|root| root / mean)
        }
    };
    Ok(weights.map(|weight| weight as f32))
}

/// One distinct feature id of a bag and how often it occurs there (the compound-prior token occurs
/// many times by design); the trainer works on these so a repeated id costs one row update.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    row: u32,
    count: f32,
}

/// The bags of many texts in one flat buffer, each sorted by row.
struct Bags {
    entries: Vec<Entry>,
    offsets: Vec<usize>,
    /// Cleaned-text tokens over all texts, for tokens/s.
    tokens: usize,
}

impl Bags {
    fn build(featurizer: &Featurizer, examples: &[Example]) -> Self {
        let texts: Vec<&str> = examples
            .iter()
            .map(|example| example.text.as_str())
            .collect();
        Self::build_texts(featurizer, &texts)
    }

    /// Featurizes on all cores; each thread fills its own contiguous chunk, joined in order, so the
    /// result does not depend on the thread count.
    fn build_texts<S: AsRef<str> + Sync>(featurizer: &Featurizer, texts: &[S]) -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(8);
        let chunk = texts.len().div_ceil(threads).max(1);
        let parts: Vec<(Vec<Vec<i64>>, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = texts
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut tokens = 0;
                        let rows = part
                            .iter()
                            .map(|text| {
                                let (ids, count) = featurizer.featurize_counted(text.as_ref());
                                tokens += count;
                                ids
                            })
                            .collect();
                        (rows, tokens)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("featurizer thread panicked"))
                .collect()
        });
        let mut bags = Self {
            entries: Vec::new(),
            offsets: vec![0],
            tokens: 0,
        };
        let mut sorted = Vec::new();
        for (rows, tokens) in parts {
            bags.tokens += tokens;
            for row in rows {
                sorted.clear();
                sorted.extend(
                    row.iter()
                        .map(|&id| u32::try_from(id).expect("bucket ids fit in u32")),
                );
                sorted.sort_unstable();
                let row_start = bags.entries.len();
                for &id in &sorted {
                    match bags.entries[row_start..].last_mut() {
                        Some(last) if last.row == id => last.count += 1.0,
                        _ => bags.entries.push(Entry {
                            row: id,
                            count: 1.0,
                        }),
                    }
                }
                bags.offsets.push(bags.entries.len());
            }
        }
        bags
    }

    fn entries(&self, index: usize) -> &[Entry] {
        &self.entries[self.offsets[index]..self.offsets[index + 1]]
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn predict(&self, model: &HashedModel) -> Vec<[f64; CLASSES]> {
        let mut hidden = vec![0.0f32; model.dim];
        (0..self.len())
            .map(|index| {
                let logits = forward(model, self.entries(index), &mut hidden);
                softmax(logits.map(f64::from))
            })
            .collect()
    }
}

/// `hidden = mean(E[ids])` over occurrences (zero for an empty bag) and the logits `Wᵀ hidden + b`.
fn forward(model: &HashedModel, entries: &[Entry], hidden: &mut [f32]) -> [f32; CLASSES] {
    let dim = model.dim;
    hidden.fill(0.0);
    let mut occurrences = 0.0f32;
    for entry in entries {
        let start = entry.row as usize * dim;
        let row = &model.embeddings[start..start + dim];
        occurrences += entry.count;
        if entry.count == 1.0 {
            for (sum, value) in hidden.iter_mut().zip(row) {
                *sum += value;
            }
        } else {
            for (sum, value) in hidden.iter_mut().zip(row) {
                *sum += entry.count * value;
            }
        }
    }
    let inverse = 1.0 / occurrences.max(1.0);
    let mut logits = model.bias;
    for (d, value) in hidden.iter_mut().enumerate() {
        *value *= inverse;
        let weights = &model.weights[d * CLASSES..(d + 1) * CLASSES];
        for class in 0..CLASSES {
            logits[class] += *value * weights[class];
        }
    }
    logits
}

/// What one optimisation step reports.
struct StepOutcome {
    /// Weighted cross-entropy before the update.
    loss: f32,
    /// Feature occurrences in the bag.
    occurrences: f32,
}

/// Scratch buffers, AdaGrad accumulators and lazy-L2 bookkeeping.
struct Optimizer {
    dim: usize,
    adagrad: bool,
    hidden: Vec<f32>,
    grad_hidden: Vec<f32>,
    l2_embeddings: f32,
    l2_output: f32,
    /// Row-wise AdaGrad: running sum of each embedding row's mean squared gradient.
    row_squares: Vec<f32>,
    /// The accumulators of the current bag's rows, read before the forward pass.
    previous_squares: Vec<f32>,
    /// Element-wise AdaGrad sums of the output layer and bias.
    weight_squares: Vec<f32>,
    bias_squares: [f32; CLASSES],
    /// Σ ln(1 − lr·λ) over all steps so far: the log of the decay a row untouched since the start
    /// would owe.
    log_decay: f64,
    /// `log_decay` at each row's last catch-up.
    row_log_decay: Vec<f64>,
}

/// Keeps AdaGrad's first steps finite.
const ADAGRAD_EPSILON: f32 = 1e-8;

impl Optimizer {
    fn new(model: &HashedModel, config: &TrainConfig) -> Self {
        let adagrad = config.optimizer == OptimizerKind::Adagrad;
        Self {
            dim: model.dim,
            adagrad,
            hidden: vec![0.0; model.dim],
            grad_hidden: vec![0.0; model.dim],
            l2_embeddings: config.l2_embeddings,
            l2_output: config.l2_output,
            row_squares: if adagrad {
                vec![0.0; model.buckets]
            } else {
                Vec::new()
            },
            previous_squares: Vec::new(),
            weight_squares: if adagrad {
                vec![0.0; model.dim * CLASSES]
            } else {
                Vec::new()
            },
            bias_squares: [0.0; CLASSES],
            log_decay: 0.0,
            row_log_decay: if config.l2_embeddings > 0.0 {
                vec![0.0; model.buckets]
            } else {
                Vec::new()
            },
        }
    }

    /// Applies the decay row `row` missed since its last catch-up.
    fn catch_up(&mut self, model: &mut HashedModel, row: usize) {
        let owed = self.log_decay - self.row_log_decay[row];
        if owed != 0.0 {
            let factor = owed.exp() as f32;
            for value in &mut model.embeddings[row * self.dim..(row + 1) * self.dim] {
                *value *= factor;
            }
            self.row_log_decay[row] = self.log_decay;
        }
    }

    /// Brings every row up to date (end of an epoch, before validation and snapshots).
    fn catch_up_all(&mut self, model: &mut HashedModel) {
        if self.row_log_decay.is_empty() {
            return;
        }
        for row in 1..model.buckets {
            self.catch_up(model, row);
        }
    }

    /// One step on one example.
    fn step(
        &mut self,
        model: &mut HashedModel,
        entries: &[Entry],
        label: usize,
        weight: f32,
        learning_rate: f32,
    ) -> StepOutcome {
        let dim = self.dim;
        if !self.row_log_decay.is_empty() {
            for entry in entries {
                self.catch_up(model, entry.row as usize);
            }
        }
        if self.adagrad {
            // Independent loads issued together: their cache misses overlap with each other and with
            // the row loads of the forward pass, and the update below then hits the cache.
            self.previous_squares.clear();
            self.previous_squares.extend(
                entries
                    .iter()
                    .map(|entry| self.row_squares[entry.row as usize]),
            );
        }
        let logits = forward(model, entries, &mut self.hidden);
        let probabilities = softmax(logits.map(f64::from));
        let loss = -(probabilities[label].max(1e-30)).ln() as f32 * weight;
        let mut gradient = [0.0f32; CLASSES];
        for class in 0..CLASSES {
            let target = if class == label { 1.0 } else { 0.0 };
            gradient[class] = weight * (probabilities[class] as f32 - target);
        }

        let output_decay = 1.0 - learning_rate * self.l2_output;
        for d in 0..dim {
            let weights = &mut model.weights[d * CLASSES..(d + 1) * CLASSES];
            let mut back = 0.0f32;
            for class in 0..CLASSES {
                back += weights[class] * gradient[class];
                let grad = gradient[class] * self.hidden[d];
                let rate = if self.adagrad {
                    let square = &mut self.weight_squares[d * CLASSES + class];
                    *square += grad * grad;
                    learning_rate / (square.sqrt() + ADAGRAD_EPSILON)
                } else {
                    learning_rate
                };
                weights[class] = weights[class] * output_decay - rate * grad;
            }
            self.grad_hidden[d] = back;
        }
        for ((bias, square), grad) in model
            .bias
            .iter_mut()
            .zip(&mut self.bias_squares)
            .zip(gradient)
        {
            let rate = if self.adagrad {
                *square += grad * grad;
                learning_rate / (square.sqrt() + ADAGRAD_EPSILON)
            } else {
                learning_rate
            };
            *bias -= rate * grad;
        }

        let occurrences: f32 = entries.iter().map(|entry| entry.count).sum();
        let inverse = 1.0 / occurrences;
        let mean_square = if self.adagrad {
            self.grad_hidden.iter().map(|grad| grad * grad).sum::<f32>() / dim as f32
        } else {
            0.0
        };
        for (index, entry) in entries.iter().enumerate() {
            let share = entry.count * inverse;
            let row = entry.row as usize;
            let rate = if self.adagrad {
                let square = self.previous_squares[index] + share * share * mean_square;
                self.row_squares[row] = square;
                learning_rate / (square.sqrt() + ADAGRAD_EPSILON)
            } else {
                learning_rate
            };
            let scale = rate * share;
            let values = &mut model.embeddings[row * dim..(row + 1) * dim];
            for (value, grad) in values.iter_mut().zip(&self.grad_hidden) {
                *value -= scale * grad;
            }
        }
        if !self.row_log_decay.is_empty() {
            self.log_decay += f64::from(1.0 - learning_rate * self.l2_embeddings).ln();
        }
        StepOutcome { loss, occurrences }
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and the same on every platform.
/// Public so the burn trainer (`sentiflow-burn`) draws its initialisation, shuffles and dropout from the
/// same seeded stream.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.0;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `0..bound` (multiply-shift; the bias is below 2⁻³² for our sizes).
    pub fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let other = self.below(last + 1);
            items.swap(last, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::featurize::FeaturizerConfig;

    fn example(text: &str, label: usize) -> Example {
        Example {
            text: text.to_owned(),
            label,
            weight: 1.0,
        }
    }

    fn small_featurizer() -> Featurizer {
        let config = FeaturizerConfig {
            buckets: 1 << 12,
            char_ngram_min: 0,
            lexicon_features: false,
            ..FeaturizerConfig::default()
        };
        Featurizer::new(config, None).unwrap()
    }

    #[test]
    fn rng_reference_values_are_stable() {
        // xoshiro256** from splitmix64(0): fixed forever, so seeds mean the same on every platform.
        let mut rng = Rng::new(0);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        let mut again = Rng::new(0);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
        let mut bounded = Rng::new(7);
        assert!((0..1000).all(|_| bounded.below(5) < 5));
        let mut items: Vec<usize> = (0..50).collect();
        Rng::new(3).shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(items, sorted, "a shuffle of 50 items moved something");
    }

    #[test]
    fn class_weights_balance_the_classes() {
        let data = [
            example("a", 0),
            example("b", 0),
            example("c", 0),
            example("d", 1),
            example("e", 2),
            example("f", 2),
        ];
        let balanced = class_weights(&data, ClassWeighting::InverseFrequency).unwrap();
        // total 6, classes 3: 6/(3·3), 6/(3·1), 6/(3·2).
        assert_eq!(balanced, [2.0 / 3.0, 2.0, 1.0]);
        assert_eq!(
            class_weights(&data, ClassWeighting::None).unwrap(),
            [1.0; 3]
        );
        let roots = class_weights(&data, ClassWeighting::SqrtInverseFrequency).unwrap();
        let weighted_mean = (roots[0] * 3.0 + roots[1] + roots[2] * 2.0) / 6.0;
        assert!((weighted_mean - 1.0).abs() < 1e-6);
        assert!(roots[1] > roots[2] && roots[2] > roots[0]);
        let missing = class_weights(&data[..4], ClassWeighting::None).unwrap_err();
        assert!(
            matches!(
                missing,
                TrainError::MissingClass {
                    class: 2,
                    name: "positive"
                }
            ),
            "{missing}"
        );
    }

    #[test]
    fn lazy_l2_matches_dense_decay_for_an_untouched_row() {
        let featurizer = small_featurizer();
        let mut model = HashedModel::zeros(featurizer.config().buckets, 4);
        model.embeddings[4 * 7..4 * 8].copy_from_slice(&[1.0, -1.0, 0.5, 2.0]);
        let config = TrainConfig {
            dim: 4,
            l2_embeddings: 0.1,
            ..TrainConfig::default()
        };
        let mut optimizer = Optimizer::new(&model, &config);
        let mut expected = [1.0f32, -1.0, 0.5, 2.0];
        for learning_rate in [0.5f32, 0.25, 0.1] {
            optimizer.step(
                &mut model,
                &[Entry { row: 3, count: 1.0 }],
                0,
                1.0,
                learning_rate,
            );
            for value in &mut expected {
                *value *= 1.0 - learning_rate * 0.1;
            }
        }
        optimizer.catch_up_all(&mut model);
        for (actual, expected) in model.embeddings[28..32].iter().zip(expected) {
            assert!((actual - expected).abs() < 1e-6, "{actual} vs {expected}");
        }
    }

    #[test]
    fn a_step_moves_the_prediction_towards_the_label() {
        let mut model = HashedModel::zeros(16, 4);
        for (index, value) in model.embeddings[4..].iter_mut().enumerate() {
            *value = ((index % 7) as f32 - 3.0) / 10.0;
        }
        let config = TrainConfig {
            dim: 4,
            ..TrainConfig::default()
        };
        let mut optimizer = Optimizer::new(&model, &config);
        let entries = [3, 5, 9].map(|row| Entry { row, count: 1.0 });
        let before = model.predict_ids(&[3, 5, 9])[2];
        let first_loss = optimizer.step(&mut model, &entries, 2, 1.0, 0.5).loss;
        let mut last_loss = first_loss;
        for _ in 0..20 {
            last_loss = optimizer.step(&mut model, &entries, 2, 1.0, 0.5).loss;
        }
        assert!(model.predict_ids(&[3, 5, 9])[2] > before);
        assert!(last_loss < first_loss);
        assert_eq!(
            &model.embeddings[..4],
            &[0.0; 4],
            "the padding row is never touched"
        );
    }

    /// The verdicts of a run whose epochs score `macro_f1s`, up to and including a stop.
    fn verdicts(config: &TrainConfig, macro_f1s: &[f64]) -> Vec<EpochVerdict> {
        let mut selection = EpochSelection::new(config);
        let mut verdicts = Vec::new();
        for (index, f1) in macro_f1s.iter().enumerate() {
            let verdict = selection.observe(index + 1, *f1);
            verdicts.push(verdict);
            if verdict == EpochVerdict::Stop {
                break;
            }
        }
        verdicts
    }

    #[test]
    fn epochs_before_min_epochs_are_never_kept_nor_counted_against_patience() {
        use EpochVerdict::{Continue, Keep, Stop};
        let config = TrainConfig {
            epochs: 8,
            min_epochs: 4,
            patience: 2,
            ..TrainConfig::default()
        };
        // Epoch 1 scores best by chance: not kept, and epochs 2-3 do not use up patience.
        assert_eq!(
            verdicts(&config, &[0.70, 0.58, 0.59, 0.59, 0.61, 0.61, 0.60, 0.65]),
            [Continue, Continue, Continue, Keep, Keep, Continue, Stop]
        );
        // Ties keep the earlier epoch; patience 0 never stops.
        let patient = TrainConfig {
            patience: 0,
            ..config.clone()
        };
        assert_eq!(
            verdicts(&patient, &[0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.3, 0.2]),
            [
                Continue, Continue, Continue, Keep, Continue, Continue, Continue, Continue
            ]
        );
        // 0 and 1 make every epoch eligible, as before the option existed.
        for min_epochs in [0, 1] {
            let any = TrainConfig {
                min_epochs,
                ..config.clone()
            };
            assert_eq!(
                verdicts(&any, &[0.70, 0.58, 0.59, 0.71]),
                [Keep, Continue, Stop]
            );
        }
    }

    #[test]
    fn a_configuration_without_min_epochs_reads_as_every_epoch_eligible() {
        // The `train_config` of a model card written before the option (up's v1 of 2026-12-07 00:05).
        let older = r#"{"dim":32,"epochs":8,"learning_rate":0.01,"schedule":"linear","optimizer":"adagrad","class_weighting":"inverse_frequency","l2_embeddings":0.0,"l2_output":0.0,"feature_dropout":0.3,"patience":3,"seed":42}"#;
        let config: TrainConfig = serde_json::from_str(older).unwrap();
        assert_eq!(config.min_epochs, 1);
        assert_eq!(
            config,
            TrainConfig {
                min_epochs: 1,
                ..TrainConfig::default()
            }
        );
        // New configurations carry the field, so they read back as written.
        let current = TrainConfig::default();
        let json = serde_json::to_string(&current).unwrap();
        assert!(json.contains(r#""min_epochs":4"#), "{json}");
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), current);
        // An empty object is still the full default apart from that field's absent value.
        let empty: TrainConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.min_epochs, 1);
    }

    #[test]
    fn min_epochs_is_capped_at_the_planned_epochs() {
        let config = TrainConfig {
            epochs: 3,
            min_epochs: 10,
            ..TrainConfig::default()
        };
        assert_eq!(
            verdicts(&config, &[0.9, 0.8, 0.1]),
            [
                EpochVerdict::Continue,
                EpochVerdict::Continue,
                EpochVerdict::Keep
            ]
        );
        // A real run keeps a late epoch even when an early one validates better.
        let featurizer = small_featurizer();
        let data = [
            example("bad awful terrible", 0),
            example("the flight is at noon", 1),
            example("great thanks lovely", 2),
        ];
        let trained = train(&featurizer, &data, &data, &config).unwrap();
        assert_eq!(trained.best_epoch, 3);
        assert_eq!(trained.history.len(), 3);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let featurizer = small_featurizer();
        let config = TrainConfig {
            epochs: 1,
            ..TrainConfig::default()
        };
        let good = [
            example("bad awful", 0),
            example("the flight", 1),
            example("great thanks", 2),
        ];
        let cases: Vec<(Vec<Example>, Vec<Example>, TrainConfig, &str)> = vec![
            (vec![], good.to_vec(), config.clone(), "empty_training_set"),
            (
                good.to_vec(),
                vec![],
                config.clone(),
                "empty_validation_set",
            ),
            (
                good[..2].to_vec(),
                good.to_vec(),
                config.clone(),
                "missing_class",
            ),
            (
                vec![example("x", 3)],
                good.to_vec(),
                config.clone(),
                "invalid_label",
            ),
            (
                vec![Example {
                    weight: f32::NAN,
                    ..example("x", 0)
                }],
                good.to_vec(),
                config.clone(),
                "invalid_weight",
            ),
            (
                good.to_vec(),
                good.to_vec(),
                TrainConfig {
                    dim: 0,
                    ..config.clone()
                },
                "invalid_config",
            ),
            (
                good.to_vec(),
                good.to_vec(),
                TrainConfig {
                    feature_dropout: 1.0,
                    ..config.clone()
                },
                "invalid_config",
            ),
            (
                good.to_vec(),
                good.to_vec(),
                TrainConfig {
                    learning_rate: -1.0,
                    ..config.clone()
                },
                "invalid_config",
            ),
        ];
        for (training, validation, config, kind) in cases {
            let error = train(&featurizer, &training, &validation, &config).unwrap_err();
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn validation_split_is_stable_and_about_the_requested_size() {
        let chosen = (0..10_000)
            .filter(|row| is_validation_row(&format!("row-{row}"), 0.1))
            .count();
        assert!((900..1100).contains(&chosen), "{chosen}");
        assert_eq!(
            is_validation_row("tweet 570306133677760513", 0.1),
            is_validation_row("tweet 570306133677760513", 0.1)
        );
        assert!(!is_validation_row("anything", 0.0));
        assert!(is_validation_row("anything", 1.0));
    }
}
