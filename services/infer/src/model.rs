//! A served model: checksum-verified ONNX bytes → the featurizer it was trained with + one ONNX Runtime
//! session per worker, scoring batches on blocking threads; the slot that swaps models atomically; and
//! the start-up probe that finds out which device ONNX Runtime really gives this process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sentiflow_common::cache::CacheDir;
use sentiflow_common::events::{self, ModelFamily, ModelRef};
use sentiflow_model::encoder::EncoderTokenizer;
use sentiflow_model::encoder::tokenize::group_by_padded_length;
use sentiflow_model::featurize::{FEATURIZER_VERSION, Featurizer, PAD_LENGTHS, pad_rows};
use sentiflow_model::hashed::{CLASSES, HashedModel, PADDING_ID};
use sentiflow_model::onnx::{self, FAMILY_HASHED, Family, ModelMetadata};
use sentiflow_model::runtime::{
    BLEND_HASHED_COLS, Device, DeviceRequest, LoadedModel, OrtEnvironment, RuntimeError,
};
use sentiflow_model::seen::{SEEN_FEATURES_FILE, SeenFeatures};
use tokio::sync::watch;

use crate::error::LoadError;

/// How to build the sessions of a served model.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// The device to ask for (after the start-up probe: `Cpu` when `auto` already fell back).
    pub device: DeviceRequest,
    /// Sessions (one per inference worker).
    pub workers: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Largest batch the service sends; warmed up before the model takes traffic.
    pub max_batch: usize,
}

/// Model inputs of a batch of texts ([`ServingModel::prepare`]).
#[derive(Debug)]
pub struct PreparedTexts {
    rows: PreparedRows,
}

#[derive(Debug)]
enum PreparedRows {
    /// Hashed n-gram ids per text.
    Hashed(Vec<Vec<i64>>),
    /// WordPiece ids (with `[CLS]`/`[SEP]`) and whether the text was truncated, or the tokenizer's
    /// error; for a blended model also the hashed member's ids per text.
    Encoder(Vec<Result<(Vec<i64>, bool), String>>, Option<Vec<Vec<i64>>>),
}

impl PreparedTexts {
    /// Rows prepared.
    pub fn len(&self) -> usize {
        match &self.rows {
            PreparedRows::Hashed(rows) => rows.len(),
            PreparedRows::Encoder(rows, _) => rows.len(),
        }
    }

    /// Whether no row is prepared.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether row `index` has nothing to score: an encoder-family text that tokenizes to `[CLS]
    /// [SEP]` only (or that the tokenizer failed on). Hashed rows always score (an empty bag gives
    /// the bias, as trained).
    pub fn has_nothing_to_score(&self, index: usize) -> bool {
        match &self.rows {
            PreparedRows::Hashed(_) => false,
            PreparedRows::Encoder(rows, _) => {
                rows[index].as_ref().map_or(true, |(ids, _)| ids.len() <= 2)
            }
        }
    }

    /// Keeps the rows whose `keep` flag is set, in order.
    ///
    /// # Panics
    /// When `keep` has another length than the rows.
    pub fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len(), "one flag per row");
        fn retain_rows<T>(rows: &mut Vec<T>, keep: &[bool]) {
            let mut flags = keep.iter();
            rows.retain(|_| *flags.next().expect("one flag per row"));
        }
        match &mut self.rows {
            PreparedRows::Hashed(rows) => retain_rows(rows, keep),
            PreparedRows::Encoder(rows, hashed) => {
                retain_rows(rows, keep);
                if let Some(hashed) = hashed {
                    retain_rows(hashed, keep);
                }
            }
        }
    }
}

/// Class probabilities of one text, in `Sentiment::index` order.
pub type ClassProbabilities = [f32; CLASSES];

/// How a family turns text into the model's inputs (the same code as training: one path, no skew).
enum Preprocess {
    /// Hashed n-gram ids.
    Hashed(Featurizer),
    /// WordPiece ids + attention mask (boxed: the tokenizer is large and built once per model), and
    /// for a blended model the featurizer of its hashed member.
    Encoder(Box<EncoderTokenizer>, Option<Featurizer>),
}

/// A batch's tokenizing threads; counts the batch as being prepared until dropped.
struct TokenizeShare<'a> {
    threads: usize,
    preparing: &'a AtomicUsize,
}

impl Drop for TokenizeShare<'_> {
    fn drop(&mut self) {
        self.preparing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Encoder batches are padded to a multiple of this many tokens, so ORT sees few shapes.
const ENCODER_PAD_MULTIPLE: usize = 16;

/// A model ready to take traffic.
pub struct ServingModel {
    model: ModelRef,
    sha256: String,
    metadata: ModelMetadata,
    device: Device,
    fallback_reason: Option<String>,
    preprocess: Preprocess,
    /// A blended encoder model's share of its hashed member.
    blend_hashed_weight: Option<f64>,
    /// Feature ids the hashed model saw in training (its `seen_features.bin`), for the OOV rate.
    seen: Option<SeenFeatures>,
    sessions: Mutex<Vec<LoadedModel>>,
    session_returned: Condvar,
    /// The host's cores: one batch's texts are tokenized on its share of them (encoder family), since
    /// on a GPU host tokenizing, not the session run, bounds throughput.
    cores: usize,
    /// Batches being prepared right now; they share the cores (the service keeps many in flight).
    preparing: AtomicUsize,
    loaded_at: DateTime<Utc>,
    load_time: Duration,
}

impl std::fmt::Debug for ServingModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServingModel")
            .field("model", &self.model)
            .field("device", &self.device)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl ServingModel {
    /// Builds `spec.workers` sessions of `onnx` (whose checksum the caller verified against the
    /// registry), rebuilds its featurizer from the metadata, and warms every padded shape the service
    /// will send (batch 1 and `spec.max_batch` at each padded length), so the first real request pays
    /// no allocation. Blocking: call from a blocking thread.
    ///
    /// `expected` names the registry record the bytes came from: an artifact whose own metadata names
    /// another model or version is refused (a misplaced or swapped file).
    pub fn load(
        env: &OrtEnvironment,
        onnx_bytes: &[u8],
        sha256: &str,
        expected: &ModelRef,
        spec: &LoadSpec,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        let runtime_error = |error: RuntimeError| match error {
            RuntimeError::CudaUnavailable(reason) => LoadError::Cuda(reason),
            other => LoadError::Runtime(other.to_string()),
        };
        let first = LoadedModel::load(env, onnx_bytes, spec.device, spec.intra_threads)
            .map_err(runtime_error)?;
        let metadata = first.metadata().clone();
        if metadata.name != expected.name || metadata.version != expected.version {
            return Err(LoadError::Unsupported(format!(
                "the artifact says it is {} {}, the registry says {} {}",
                metadata.name, metadata.version, expected.name, expected.version
            )));
        }
        let (family, preprocess) = match first.family() {
            Family::Hashed => (
                ModelFamily::Hashed,
                Preprocess::Hashed(
                    sentiflow_trainer::pipeline::featurizer_for(&metadata)
                        .map_err(|error| LoadError::Unsupported(error.to_string()))?,
                ),
            ),
            Family::Encoder => {
                let tokenizer = CacheDir::from_env()
                    .map_err(|error| LoadError::Unsupported(error.to_string()))
                    .and_then(|cache| {
                        EncoderTokenizer::for_metadata(&metadata, &cache.minilm_tokenizer())
                            .map_err(|error| LoadError::Unsupported(error.to_string()))
                    })?;
                let member = match &first.summary().hashed_member {
                    Some((member, _)) => Some(
                        sentiflow_trainer::pipeline::member_featurizer(member)
                            .map_err(|error| LoadError::Unsupported(error.to_string()))?,
                    ),
                    None => None,
                };
                (
                    ModelFamily::Encoder,
                    Preprocess::Encoder(Box::new(tokenizer), member),
                )
            }
        };
        let device = first.device();
        let fallback_reason = first.fallback_reason().map(str::to_owned);
        // The f32 weight through its shortest decimal form, so JSON shows 0.3, not 0.30000001…
        let blend_hashed_weight = first
            .summary()
            .hashed_member
            .as_ref()
            .and_then(|(member, _)| member.weight.to_string().parse::<f64>().ok());
        let mut sessions = Vec::with_capacity(spec.workers);
        sessions.push(first);
        while sessions.len() < spec.workers.max(1) {
            let replica = sessions[0]
                .replicate(env, onnx_bytes)
                .map_err(runtime_error)?;
            sessions.push(replica);
        }
        let lengths: Vec<usize> = match &preprocess {
            Preprocess::Hashed(_) => PAD_LENGTHS.to_vec(),
            Preprocess::Encoder(tokenizer, _) => {
                (1..=tokenizer.max_length().div_ceil(ENCODER_PAD_MULTIPLE))
                    .map(|multiple| multiple * ENCODER_PAD_MULTIPLE)
                    .collect()
            }
        };
        for session in &mut sessions {
            for batch in [1, spec.max_batch.max(1)] {
                session.warm_up(&lengths, batch).map_err(runtime_error)?;
            }
        }
        Ok(Self {
            model: ModelRef {
                family,
                ..expected.clone()
            },
            sha256: sha256.to_owned(),
            metadata,
            device,
            fallback_reason,
            preprocess,
            blend_hashed_weight,
            seen: None,
            sessions: Mutex::new(sessions),
            session_returned: Condvar::new(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            preparing: AtomicUsize::new(0),
            loaded_at: Utc::now(),
            load_time: started.elapsed(),
        })
    }

    /// Attaches the bitmap of feature ids the model saw in training (its registry file
    /// `seen_features.bin`, checksum already verified), so every prediction carries its OOV rate.
    /// Ignored for the encoder family, whose WordPiece vocabulary covers every text.
    pub fn with_seen_features(mut self, bytes: Option<&[u8]>) -> Result<Self, LoadError> {
        if let (Some(bytes), Preprocess::Hashed(featurizer)) = (bytes, &self.preprocess) {
            let seen =
                SeenFeatures::from_bytes(bytes, featurizer.config().buckets).map_err(|error| {
                    LoadError::Unsupported(format!("{SEEN_FEATURES_FILE}: {error}"))
                })?;
            self.seen = Some(seen);
        }
        Ok(self)
    }

    /// Whether predictions carry an OOV rate (a hashed model registered with its seen features).
    pub fn reports_oov(&self) -> bool {
        self.seen.is_some()
    }

    /// For a blended encoder model, the share of its hashed member in the served average.
    pub fn blend_hashed_weight(&self) -> Option<f64> {
        self.blend_hashed_weight
    }

    /// The registry reference (name, version, family).
    pub fn model_ref(&self) -> &ModelRef {
        &self.model
    }

    /// sha256 of the served artifact.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Metadata stored in the ONNX file.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// The device the sessions really run on (decided from a warm-up, not from the flag).
    pub fn device(&self) -> Device {
        self.device
    }

    /// The device in event form.
    pub fn event_device(&self) -> events::Device {
        event_device(self.device)
    }

    /// Why CUDA is not used although `auto` asked for it.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// When the model started serving.
    pub fn loaded_at(&self) -> DateTime<Utc> {
        self.loaded_at
    }

    /// How long loading, replicating and warming took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Class probabilities of `texts` (raw or clean: the featurizer normalises either way), padded to
    /// one of the warmed lengths. Blocking: waits for a free session, then runs ONNX Runtime.
    pub fn score<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<ClassProbabilities>, RuntimeError> {
        Ok(self.score_texts(texts, &vec![false; texts.len()])?.0)
    }

    /// [`ServingModel::score`] where `already_clean[i]` says that `texts[i]` is the output of this
    /// build's normaliser (a `reviews.clean` event of the current `normalizer_version`: the hashed
    /// featurizer skips its own cleaning pass for those rows, which gives the same ids), plus each
    /// text's OOV rate: the share of its distinct feature ids the model never saw in training (`None`
    /// without a seen-features file, for the encoder family, and for a text without features).
    ///
    /// # Panics
    /// When the two slices differ in length.
    pub fn score_with_oov<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        already_clean: &[bool],
    ) -> Result<(Vec<ClassProbabilities>, Vec<Option<f64>>), RuntimeError> {
        assert_eq!(texts.len(), already_clean.len(), "one flag per text");
        self.score_texts(texts, already_clean)
    }

    /// The model inputs of `texts` (see [`ServingModel::score_with_oov`] for `already_clean`), built
    /// once: the caller can set aside rows with nothing to score, then score the rest from the same
    /// inputs ([`ServingModel::score_prepared`]) without preprocessing them again.
    ///
    /// # Panics
    /// When the two slices differ in length.
    pub fn prepare<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        already_clean: &[bool],
    ) -> PreparedTexts {
        assert_eq!(texts.len(), already_clean.len(), "one flag per text");
        let featurize = |featurizer: &Featurizer, text: &str, clean: bool| {
            if clean {
                featurizer.featurize_cleaned(text)
            } else {
                featurizer.featurize(text)
            }
        };
        let rows = match &self.preprocess {
            Preprocess::Hashed(featurizer) => PreparedRows::Hashed(
                texts
                    .iter()
                    .zip(already_clean)
                    .map(|(text, &clean)| featurize(featurizer, text.as_ref(), clean))
                    .collect(),
            ),
            Preprocess::Encoder(tokenizer, member) => {
                let share = self.tokenize_share();
                PreparedRows::Encoder(
                    tokenizer
                        .encode_all(texts, share.threads)
                        .into_iter()
                        .map(|encoded| encoded.map_err(|error| error.to_string()))
                        .collect(),
                    // On the batch's share of the cores too: serially it would add a few ms per
                    // batch of 256 on a GPU host, where preparing bounds throughput.
                    member.as_ref().map(|featurizer| {
                        let flagged: Vec<(&S, bool)> =
                            texts.iter().zip(already_clean.iter().copied()).collect();
                        sentiflow_model::parallel::map_ordered(
                            &flagged,
                            share.threads,
                            64,
                            |(text, clean)| featurize(featurizer, text.as_ref(), *clean),
                        )
                    }),
                )
            }
        };
        PreparedTexts { rows }
    }

    /// This batch's share of the cores: all of them for a lone batch (its latency), fewer while other
    /// batches are being prepared too (they already spread over the cores).
    fn tokenize_share(&self) -> TokenizeShare<'_> {
        let concurrent = self.preparing.fetch_add(1, Ordering::Relaxed) + 1;
        TokenizeShare {
            threads: (self.cores / concurrent).max(1),
            preparing: &self.preparing,
        }
    }

    /// Class probabilities and OOV rates of prepared texts (one session run per padded length for
    /// the encoder family, one run for the hashed family). Blocking.
    ///
    /// # Errors
    /// A text the tokenizer failed on ([`RuntimeError::BadInput`]), or ONNX Runtime failing.
    pub fn score_prepared(
        &self,
        prepared: PreparedTexts,
    ) -> Result<(Vec<ClassProbabilities>, Vec<Option<f64>>), RuntimeError> {
        match prepared.rows {
            PreparedRows::Encoder(encoded, hashed) => {
                if encoded.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let encoded = encoded
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(RuntimeError::BadInput)?;
                let count = encoded.len();
                // Grouped by token length: attention costs grow with the padded length, so one
                // long text must not make the whole micro-batch long.
                let groups = group_by_padded_length(encoded, ENCODER_PAD_MULTIPLE);
                let truncated: usize = groups.iter().map(|(_, batch)| batch.truncated).sum();
                if truncated > 0 {
                    metrics::counter!("sentiflow_infer_truncated_texts_total")
                        .increment(truncated as u64);
                }
                let mut rows: Vec<ClassProbabilities> = vec![[0.0; CLASSES]; count];
                let mut session = self.checkout();
                for (positions, batch) in &groups {
                    let scored = match &hashed {
                        None => session.predict_masked(
                            &batch.input_ids,
                            &batch.attention_mask,
                            batch.rows,
                            batch.cols,
                        )?,
                        Some(hashed) => {
                            // One width for every batch: the shapes warm-up prepared.
                            let mut hashed_ids = vec![PADDING_ID; batch.rows * BLEND_HASHED_COLS];
                            for (row, position) in hashed_ids
                                .chunks_exact_mut(BLEND_HASHED_COLS)
                                .zip(positions)
                            {
                                let ids = &hashed[*position];
                                let kept = ids.len().min(BLEND_HASHED_COLS);
                                row[..kept].copy_from_slice(&ids[..kept]);
                            }
                            session.predict_blend(
                                &batch.input_ids,
                                &batch.attention_mask,
                                batch.rows,
                                batch.cols,
                                &hashed_ids,
                                BLEND_HASHED_COLS,
                            )?
                        }
                    };
                    for (position, row) in positions.iter().zip(scored) {
                        rows[*position] = row;
                    }
                }
                Ok((rows, vec![None; count]))
            }
            PreparedRows::Hashed(features) => {
                if features.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let (ids, rows, cols) = pad_rows(&features);
                let oov = features
                    .iter()
                    .map(|row| self.seen.as_ref().and_then(|seen| seen.unseen_share(row)))
                    .collect();
                let mut session = self.checkout();
                Ok((session.predict(&ids, rows, cols)?, oov))
            }
        }
    }

    fn score_texts<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        already_clean: &[bool],
    ) -> Result<(Vec<ClassProbabilities>, Vec<Option<f64>>), RuntimeError> {
        self.score_prepared(self.prepare(texts, already_clean))
    }

    /// Takes a free session, waiting while all are busy; it goes back when the guard drops.
    fn checkout(&self) -> SessionGuard<'_> {
        let mut sessions = lock(&self.sessions);
        loop {
            if let Some(session) = sessions.pop() {
                return SessionGuard {
                    owner: self,
                    session: Some(session),
                };
            }
            sessions = self
                .session_returned
                .wait(sessions)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A session on loan to one scoring call; returned to the pool on drop, even when scoring panicked.
struct SessionGuard<'a> {
    owner: &'a ServingModel,
    session: Option<LoadedModel>,
}

impl std::ops::Deref for SessionGuard<'_> {
    type Target = LoadedModel;

    fn deref(&self) -> &LoadedModel {
        self.session.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for SessionGuard<'_> {
    fn deref_mut(&mut self) -> &mut LoadedModel {
        self.session.as_mut().expect("present until drop")
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            lock(&self.owner.sessions).push(session);
            self.owner.session_returned.notify_one();
        }
    }
}

/// The device of the runtime in the form events carry.
pub fn event_device(device: Device) -> events::Device {
    match device {
        Device::Cpu => events::Device::Cpu,
        Device::Cuda => events::Device::Cuda,
    }
}

/// The model being served (None until the first one loads). Swapping is one `send_replace`: batches
/// that already hold the old `Arc` finish on it, every batch formed afterwards gets the new one.
#[derive(Debug, Clone)]
pub struct ModelSlot {
    sender: Arc<watch::Sender<Option<Arc<ServingModel>>>>,
}

impl Default for ModelSlot {
    fn default() -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl ModelSlot {
    /// The model serving now.
    pub fn current(&self) -> Option<Arc<ServingModel>> {
        self.sender.borrow().clone()
    }

    /// Puts `model` into service; returns the one it replaced.
    pub fn swap(&self, model: Arc<ServingModel>) -> Option<Arc<ServingModel>> {
        self.sender.send_replace(Some(model))
    }

    /// Takes the model out of service (the shadow slot, when the challenger goes away).
    pub fn clear(&self) -> Option<Arc<ServingModel>> {
        self.sender.send_replace(None)
    }

    /// Waits until a model is serving.
    pub async fn wait_for_model(&self) -> Arc<ServingModel> {
        let mut receiver = self.sender.subscribe();
        loop {
            if let Some(model) = receiver.borrow_and_update().clone() {
                return model;
            }
            if receiver.changed().await.is_err() {
                // The sender lives as long as `self`; keep the signature total anyway.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What the start-up probe found out about the device.
#[derive(Debug, Clone)]
pub struct DeviceProbe {
    /// The device ONNX Runtime really ran the probe model on.
    pub device: Device,
    /// Why CUDA is not used although `auto` asked for it.
    pub fallback_reason: Option<String>,
}

impl DeviceProbe {
    /// The request to use for real models: once `auto` fell back to CPU, ask for CPU directly (the
    /// reason is already known and logged; every model load would otherwise repeat the attempt).
    pub fn request_for_models(&self, asked: DeviceRequest) -> DeviceRequest {
        match (asked, self.device) {
            (DeviceRequest::Auto, Device::Cpu) => DeviceRequest::Cpu,
            (asked, _) => asked,
        }
    }
}

/// Runs a tiny generated model of the served family on the requested device, so the device is known
/// (and `--device cuda` without a usable GPU refuses to start) before any real model exists.
pub fn probe_device(
    env: &OrtEnvironment,
    request: DeviceRequest,
    intra_threads: usize,
) -> Result<DeviceProbe, RuntimeError> {
    let mut model = HashedModel::zeros(64, 4);
    model.bias = [0.1, 0.0, -0.1];
    let metadata = ModelMetadata {
        name: "device-probe".to_owned(),
        version: "v0".to_owned(),
        family: FAMILY_HASHED.to_owned(),
        featurizer_version: FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: String::new(),
        featurizer_config: String::new(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: "none".to_owned(),
        weights_sha256: String::new(),
        created_at: "1970-01-01T00:00:00Z".to_owned(),
    };
    let bytes = onnx::export_hashed(&model, &metadata)?;
    let loaded = LoadedModel::load(env, &bytes, request, intra_threads)?;
    Ok(DeviceProbe {
        device: loaded.device(),
        fallback_reason: loaded.fallback_reason().map(str::to_owned),
    })
}
