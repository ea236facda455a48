//! Reproducibility of the trainer: the same examples, featurizer, config and seed give bit-identical
//! weights (and the same curve), a different seed gives different weights.

mod quality_data;

use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};
use sentiflow_model::hashed::HashedModel;
use sentiflow_model::train::{Example, TrainConfig, TrainedModel, train};

/// Every weight as little-endian bytes: equality here is bit-identity, NaN and -0.0 included.
fn weight_bytes(model: &HashedModel) -> Vec<u8> {
    model
        .embeddings
        .iter()
        .chain(&model.weights)
        .chain(&model.bias)
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// The curve without the wall-clock fields.
fn curve(trained: &TrainedModel) -> Vec<(usize, f32, u64, u64)> {
    trained
        .history
        .iter()
        .map(|record| {
            (
                record.epoch,
                record.learning_rate,
                record.train_loss.to_bits(),
                record.validation_macro_f1.to_bits(),
            )
        })
        .collect()
}

/// 1,500 airline tweets, every 4th held out for validation.
fn small_data() -> (Vec<Example>, Vec<Example>) {
    let rows: Vec<Example> = quality_data::airline_rows()
        .into_iter()
        .step_by(7)
        .take(1_500)
        .map(|row| Example {
            text: row.text,
            label: row.label,
            weight: 1.0,
        })
        .collect();
    let (validation, training): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .enumerate()
        .partition(|(index, _)| index % 4 == 0);
    (
        training.into_iter().map(|(_, example)| example).collect(),
        validation.into_iter().map(|(_, example)| example).collect(),
    )
}

#[test]
fn same_seed_gives_bit_identical_weights() {
    let featurizer = Featurizer::new(
        FeaturizerConfig {
            buckets: 1 << 15,
            ..FeaturizerConfig::default()
        },
        Some(quality_data::installed_lexicon()),
    )
    .expect("valid featurizer");
    let (training, validation) = small_data();
    let config = TrainConfig {
        dim: 8,
        epochs: 3,
        patience: 0,
        ..TrainConfig::default()
    };

    let first = train(&featurizer, &training, &validation, &config).expect("trains");
    let second = train(&featurizer, &training, &validation, &config).expect("trains");
    assert_eq!(
        weight_bytes(&first.model),
        weight_bytes(&second.model),
        "weights differ between identical runs"
    );
    assert_eq!(curve(&first), curve(&second));
    assert_eq!(first.best_epoch, second.best_epoch);
    assert_eq!(first.validation, second.validation);
    assert_eq!(
        first.featurizer_config_hash,
        featurizer.config().config_hash()
    );
    assert_eq!(
        &first.model.embeddings[..8],
        &[0.0; 8],
        "the padding row stays zero"
    );

    let reseeded = train(
        &featurizer,
        &training,
        &validation,
        &TrainConfig {
            seed: 7,
            ..config.clone()
        },
    )
    .expect("trains");
    assert_ne!(
        weight_bytes(&first.model),
        weight_bytes(&reseeded.model),
        "the seed has no effect"
    );

    // Plain SGD without dropout is deterministic too.
    let sgd = TrainConfig {
        optimizer: sentiflow_model::train::OptimizerKind::Sgd,
        learning_rate: 0.2,
        feature_dropout: 0.0,
        ..config
    };
    let sgd_first = train(&featurizer, &training, &validation, &sgd).expect("trains");
    let sgd_second = train(&featurizer, &training, &validation, &sgd).expect("trains");
    assert_eq!(
        weight_bytes(&sgd_first.model),
        weight_bytes(&sgd_second.model)
    );
}
