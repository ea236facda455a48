//! ONNX Runtime sessions for serving: the runtime library loaded once per process, the device decided
//! from what the session really did (never from the flag), and batched `predict` over padded ids.
//!
//! # Threads
//! [`LoadedModel::predict`] takes `&mut self` because ORT's `Session::run` does: serving keeps one
//! [`LoadedModel`] per worker thread (each with its own `intra_threads`) instead of sharing one
//! behind a lock. [`OrtEnvironment`] is cheap to clone and shared by all of them.
//!
//! # Device honesty
//! `auto` and `cuda` register the CUDA execution provider with `error_on_failure`, build the session,
//! run a profiled warm-up inference and read ORT's profile to see which provider ran each node. Only
//! if registration, session creation and the warm-up all succeed and the compute nodes ran on CUDA is
//! the device [`Device::Cuda`]. Otherwise `auto` logs a warning and builds a CPU session (the reason is
//! kept in [`LoadedModel::fallback_reason`]) and `cuda` fails with [`RuntimeError::CudaUnavailable`].
//! A missing cuDNN, for one, only shows at the first run, which is why the warm-up is part of loading.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::hashed::{CLASSES, PADDING_ID};
use crate::onnx::{self, GraphSummary, ModelMetadata, OUTPUT_NAME, OnnxError};

/// The ONNX Runtime version `infra/setup.sh` installs (and this crate is tested against).
pub const ORT_VERSION: &str = "1.31.1";

/// Width serving pads a blend's `hashed_ids` to: the widest of [`crate::featurize::PAD_LENGTHS`],
/// which every featurizer's `max_features` fits. One width means one input shape per token length,
/// all of them warmed up ([`LoadedModel::warm_up`]); the hashed part's cost is small beside the
/// encoder's.
pub const BLEND_HASHED_COLS: usize =
    crate::featurize::PAD_LENGTHS[crate::featurize::PAD_LENGTHS.len() - 1];

/// Operators whose placement decides the device: if any of them runs on the CPU in a CUDA session,
/// the model is not really served by the GPU. Shape arithmetic (`Shape`, small `Gather`s, `Concat`)
/// is left out on purpose: ORT keeps it on the host by design.
const COMPUTE_OPS: &[&str] = &[
    "Gemm",
    "MatMul",
    "FusedMatMul",
    "Softmax",
    "ReduceSum",
    "ReduceMean",
    "LayerNormalization",
    "SkipLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
];

/// Provider name ORT's profile uses for the CUDA execution provider.
const CUDA_PROVIDER: &str = "CUDAExecutionProvider";

/// Why ONNX Runtime could not load or run a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The ONNX Runtime shared library is missing or unusable.
    #[error(
        "cannot load ONNX Runtime from {}: {message} (infra/setup.sh installs libonnxruntime.so.{ORT_VERSION} \
         under $SENTIFLOW_CACHE_DIR/onnxruntime/{ORT_VERSION}/)",
        path.display()
    )]
    Library {
        /// The path that was tried.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The process-wide ORT environment could not be created.
    #[error("ONNX Runtime environment: {0}")]
    Environment(String),
    /// The file is not a model this service accepts.
    #[error(transparent)]
    Model(#[from] OnnxError),
    /// ORT could not build a CPU session for the model.
    #[error("cannot build an ONNX Runtime session: {0}")]
    Session(String),
    /// `--device cuda` was asked for and the CUDA execution provider did not really work.
    #[error("CUDA was requested but is not available: {0}")]
    CudaUnavailable(String),
    /// The ids passed to `predict` do not form a valid batch.
    #[error("invalid model input: {0}")]
    BadInput(String),
    /// ORT failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model ran but its output breaks the contract (shape, non-finite or unnormalised values).
    #[error("invalid model output: {0}")]
    BadOutput(String),
}

impl RuntimeError {
    /// Stable snake_case name, used as the metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Library { .. } => "ort_library",
            Self::Environment(_) => "ort_environment",
            Self::Model(error) => error.kind(),
            Self::Session(_) => "session_build",
            Self::CudaUnavailable(_) => "cuda_unavailable",
            Self::BadInput(_) => "bad_input",
            Self::Inference(_) => "inference",
            Self::BadOutput(_) => "bad_output",
        }
    }
}

/// The ONNX Runtime environment of this process: the shared library plus ORT's global state.
/// Clones share it; create it with [`init`].
#[derive(Clone)]
pub struct OrtEnvironment {
    /// ORT's environment handle; every session is built under it.
    env: Environment,
    /// Canonical path of the loaded library, to refuse a second, different one.
    library: PathBuf,
}

impl fmt::Debug for OrtEnvironment {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OrtEnvironment")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl OrtEnvironment {
    /// Canonical path of the loaded shared library.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// ORT's build description (version, git commit, compile flags), for start-up logs.
    pub fn build_info(&self) -> &'static str {
        ort::info()
    }
}

/// The environment, once created: ORT allows one library and one environment per process.
static ENVIRONMENT: Mutex<Option<OrtEnvironment>> = Mutex::new(None);

/// Loads the ONNX Runtime shared library at `dylib_path` (e.g.
/// `$SENTIFLOW_CACHE_DIR/onnxruntime/1.31.1/libonnxruntime.so.1.31.1`) and creates the process-wide
/// environment. Later calls with the same library return the same environment; a different library
/// is refused, because a process can load only one. A failed attempt can be retried.
pub fn init(dylib_path: &Path) -> Result<OrtEnvironment, RuntimeError> {
    let library_error = |message: String| RuntimeError::Library {
        path: dylib_path.to_path_buf(),
        message,
    };
    let library = dylib_path
        .canonicalize()
        .map_err(|error| library_error(error.to_string()))?;
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(existing) = slot.as_ref() {
        if existing.library == library {
            return Ok(existing.clone());
        }
        return Err(RuntimeError::Environment(format!(
            "this process already loaded ONNX Runtime from {}; it cannot also load {}",
            existing.library.display(),
            library.display()
        )));
    }
    let env = ort::init_from(&library)
        .map_err(|error| library_error(error.to_string()))?
        .with_name("sentiflow")
        .with_telemetry(false)
        .build()
        .map_err(|error| RuntimeError::Environment(error.to_string()))?;
    tracing::info!(library = %library.display(), build = ort::info(), "loaded ONNX Runtime");
    let environment = OrtEnvironment { env, library };
    *slot = Some(environment.clone());
    Ok(environment)
}

/// The device asked for (`--device auto|cpu|cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    /// CUDA when it really works, otherwise CPU (with a warning and a recorded reason).
    #[default]
    Auto,
    /// CPU only; CUDA is not tried.
    Cpu,
    /// CUDA or nothing: loading fails when CUDA does not really work.
    Cuda,
}

impl DeviceRequest {
    /// `auto`, `cpu` or `cuda`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown device `{other}`; expected auto, cpu or cuda"
            )),
        }
    }
}

/// The device a session really runs on (the `device` metric label and prediction field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// ORT's CPU execution provider.
    Cpu,
    /// ORT's CUDA execution provider, with the compute nodes confirmed on it.
    Cuda,
}

impl Device {
    /// `cpu` or `cuda`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Which provider ran each node during the profiled warm-up of a CUDA session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Number of nodes per provider (e.g. `CUDAExecutionProvider` → 12).
    pub nodes_by_provider: BTreeMap<String, usize>,
    /// Compute operators (see the module docs) that ran on a provider other than CUDA.
    pub compute_ops_off_cuda: Vec<String>,
}

impl Placement {
    /// Reads ORT's profile (a JSON array of trace events; node events carry `args.provider` and
    /// `args.op_name`).
    fn from_profile(profile: &str) -> Result<Self, String> {
        let events: Vec<serde_json::Value> = serde_json::from_str(profile)
            .map_err(|error| format!("profile is not a JSON array: {error}"))?;
        let mut placement = Self::default();
        for event in &events {
            let is_kernel = event.get("cat").and_then(|cat| cat.as_str()) == Some("Node")
                && event
                    .get("name")
                    .and_then(|name| name.as_str())
                    .is_some_and(|name| name.ends_with("_kernel_time"));
            let args = event.get("args");
            let provider = args
                .and_then(|args| args.get("provider"))
                .and_then(|value| value.as_str());
            let (true, Some(provider)) = (is_kernel, provider) else {
                continue;
            };
            *placement
                .nodes_by_provider
                .entry(provider.to_owned())
                .or_default() += 1;
            let op = args
                .and_then(|args| args.get("op_name"))
                .and_then(|value| value.as_str())
                .unwrap_or("");
            if provider != CUDA_PROVIDER && COMPUTE_OPS.contains(&op) {
                placement.compute_ops_off_cuda.push(op.to_owned());
            }
        }
        Ok(placement)
    }

    /// CUDA really ran the model: some nodes on CUDA and no compute operator elsewhere.
    pub fn is_cuda(&self) -> bool {
        self.nodes_by_provider
            .get(CUDA_PROVIDER)
            .copied()
            .unwrap_or(0)
            > 0
            && self.compute_ops_off_cuda.is_empty()
    }
}

/// A model ready to serve: an ORT session on a known device, plus the metadata read from the file.
/// One per worker thread (see the module docs).
pub struct LoadedModel {
    /// The ORT session; `run` needs `&mut`.
    session: Session,
    /// The device the session really runs on.
    device: Device,
    /// Why CUDA was not used although `auto` asked for it.
    fallback_reason: Option<String>,
    /// Metadata and shape facts from [`onnx::verify_structure`].
    summary: GraphSummary,
    /// Node placement seen in the profiled warm-up of a CUDA session.
    placement: Option<Placement>,
    /// Intra-op threads of the session, reused by [`LoadedModel::replicate`].
    intra_threads: usize,
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("LoadedModel")
            .field("name", &self.summary.metadata.name)
            .field("version", &self.summary.metadata.version)
            .field("device", &self.device)
            .field("fallback_reason", &self.fallback_reason)
            .finish_non_exhaustive()
    }
}

/// A session builder with the options every session gets.
pub(crate) fn session_builder(
    env: &OrtEnvironment,
    intra_threads: usize,
) -> Result<SessionBuilder, String> {
    Session::builder(&env.env)
        .map_err(|error| error.to_string())?
        .with_intra_threads(intra_threads)
        .map_err(|error| error.to_string())
}

/// Distinguishes the profile files of sessions built concurrently in one process.
static PROFILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes profile files ORT may have started under `prefix` (it appends `_<timestamp>.json`) when
/// the session never got far enough to hand back the name.
fn remove_profiles(prefix: &Path) {
    let (Some(directory), Some(stem)) = (prefix.parent(), prefix.file_name()) else {
        return;
    };
    let stem = format!("{}_", stem.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&stem) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl LoadedModel {
    /// Checks `onnx_bytes` against the sentiflow contract ([`onnx::verify_structure`]), builds a
    /// session on the requested device (see the module docs for how the device is decided) with
    /// `intra_threads` threads for intra-op parallelism (1, or 0, = only the calling thread), and runs
    /// one warm-up inference that must return valid probabilities. Further sessions for more worker
    /// threads: [`LoadedModel::replicate`].
    pub fn load(
        env: &OrtEnvironment,
        onnx_bytes: &[u8],
        request: DeviceRequest,
        intra_threads: usize,
    ) -> Result<Self, RuntimeError> {
        let summary = onnx::verify_structure(onnx_bytes)?;
        let intra_threads = intra_threads.max(1);
        if request != DeviceRequest::Cpu {
            match Self::load_cuda(env, onnx_bytes, intra_threads, &summary) {
                Ok(model) => {
                    tracing::info!(
                        model = %model.summary.metadata.name,
                        version = %model.summary.metadata.version,
                        placement = ?model.placement.as_ref().map(|placement| &placement.nodes_by_provider),
                        "model loaded on CUDA"
                    );
                    return Ok(model);
                }
                Err(reason) if request == DeviceRequest::Cuda => {
                    return Err(RuntimeError::CudaUnavailable(reason));
                }
                Err(reason) => {
                    tracing::warn!(%reason, "CUDA is not available; serving on CPU");
                    let mut model = Self::load_cpu(env, onnx_bytes, intra_threads, summary)?;
                    model.fallback_reason = Some(reason);
                    return Ok(model);
                }
            }
        }
        Self::load_cpu(env, onnx_bytes, intra_threads, summary)
    }

    fn load_cpu(
        env: &OrtEnvironment,
        onnx_bytes: &[u8],
        intra_threads: usize,
        summary: GraphSummary,
    ) -> Result<Self, RuntimeError> {
        let session = session_builder(env, intra_threads)
            .and_then(|mut builder| {
                builder
                    .commit_from_memory(onnx_bytes)
                    .map_err(|error| error.to_string())
            })
            .map_err(RuntimeError::Session)?;
        let mut model = Self {
            session,
            device: Device::Cpu,
            fallback_reason: None,
            summary,
            placement: None,
            intra_threads,
        };
        model.warm_up(&[1], 1)?;
        Ok(model)
    }

    /// Builds and proves a CUDA session; the error is the reason CUDA cannot be used.
    fn load_cuda(
        env: &OrtEnvironment,
        onnx_bytes: &[u8],
        intra_threads: usize,
        summary: &GraphSummary,
    ) -> Result<Self, String> {
        let profile_prefix = std::env::temp_dir().join(format!(
            "sentiflow-ort-profile-{}-{}",
            std::process::id(),
            PROFILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let builder = session_builder(env, intra_threads)
            .and_then(|builder| {
                builder
                    .with_profiling(&profile_prefix)
                    .map_err(|error| error.to_string())
            })
            .map_err(|error| format!("cannot prepare a session: {error}"))?;
        let mut builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|error| format!("registering the CUDA execution provider failed: {error}"))?;
        let session = builder.commit_from_memory(onnx_bytes).map_err(|error| {
            remove_profiles(&profile_prefix);
            format!("building a CUDA session failed: {error}")
        })?;
        let mut model = Self {
            session,
            device: Device::Cuda,
            fallback_reason: None,
            summary: summary.clone(),
            placement: None,
            intra_threads,
        };
        let warm_up = model.warm_up(&[1], 1);
        // Profiling must be ended (and its file removed) whatever the warm-up did.
        let profile = model
            .session
            .end_profiling()
            .map_err(|error| error.to_string())
            .and_then(|file| {
                let text =
                    std::fs::read_to_string(&file).map_err(|error| format!("{file}: {error}"));
                let _ = std::fs::remove_file(&file);
                text
            });
        warm_up.map_err(|error| format!("the CUDA warm-up inference failed: {error}"))?;
        let profile = profile.map_err(|error| {
            format!("cannot read ORT's profile to confirm node placement: {error}")
        })?;
        let placement = Placement::from_profile(&profile).map_err(|error| {
            format!("cannot read ORT's profile to confirm node placement: {error}")
        })?;
        if !placement.is_cuda() {
            return Err(format!(
                "the CUDA session ran its compute nodes elsewhere (nodes by provider {:?}, off CUDA: {:?})",
                placement.nodes_by_provider, placement.compute_ops_off_cuda
            ));
        }
        model.placement = Some(placement);
        Ok(model)
    }

    /// Another session of the same model on the device this one proved, for one more worker thread:
    /// skips the structural check and the CUDA/CPU decision (a CUDA replica still proves its
    /// placement). `onnx_bytes` must be the bytes this model was loaded from; their metadata is
    /// compared as a guard.
    pub fn replicate(&self, env: &OrtEnvironment, onnx_bytes: &[u8]) -> Result<Self, RuntimeError> {
        let metadata = onnx::read_metadata(onnx_bytes)?;
        if metadata != self.summary.metadata {
            return Err(RuntimeError::Session(format!(
                "replicate got the bytes of {} {}, not of {} {}",
                metadata.name,
                metadata.version,
                self.summary.metadata.name,
                self.summary.metadata.version
            )));
        }
        let summary = self.summary.clone();
        let mut replica = match self.device {
            Device::Cpu => Self::load_cpu(env, onnx_bytes, self.intra_threads, summary)?,
            Device::Cuda => Self::load_cuda(env, onnx_bytes, self.intra_threads, &summary)
                .map_err(RuntimeError::CudaUnavailable)?,
        };
        replica.fallback_reason.clone_from(&self.fallback_reason);
        Ok(replica)
    }

    /// The device the session really runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Why CUDA was not used although `auto` asked for it (`None` when CUDA runs or CPU was asked for).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The metadata stored in the ONNX file.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.summary.metadata
    }

    /// Shape facts about the graph, including the id range the model accepts.
    pub fn summary(&self) -> &GraphSummary {
        &self.summary
    }

    /// Which provider ran each node in the warm-up (CUDA sessions only).
    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    /// Class probabilities for `rows` rows of `cols` ids each (row-major, padded with
    /// [`PADDING_ID`]). Ids must lie in `0..vocab_size`: ONNX `Gather` would wrap negative ids
    /// around silently. An encoder-family model gets the attention mask derived from the ids
    /// (1 where the id is not [`PADDING_ID`], which is also BERT's `[PAD]`); use
    /// [`LoadedModel::predict_masked`] to pass one explicitly. A blend is refused: it needs
    /// [`LoadedModel::predict_blend`].
    pub fn predict(
        &mut self,
        ids: &[i64],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<[f32; CLASSES]>, RuntimeError> {
        self.refuse_blend()?;
        if self.summary.family.needs_attention_mask() {
            let mask: Vec<i64> = ids.iter().map(|id| i64::from(*id != PADDING_ID)).collect();
            self.run(ids, Some(&mask), None, rows, cols)
        } else {
            self.run(ids, None, None, rows, cols)
        }
    }

    /// Whether the file is a blended encoder model ([`crate::onnx::export_blend`]), which also takes
    /// the hashed member's ids: see [`LoadedModel::predict_blend`].
    pub fn is_blend(&self) -> bool {
        self.summary.hashed_member.is_some()
    }

    fn refuse_blend(&self) -> Result<(), RuntimeError> {
        if self.is_blend() {
            return Err(RuntimeError::BadInput(format!(
                "a blended model also takes `{}`: score it with predict_blend",
                onnx::HASHED_IDS_NAME
            )));
        }
        Ok(())
    }

    /// Class probabilities of a blended encoder model: [`LoadedModel::predict_masked`]'s token ids
    /// and mask (`rows × cols`) plus the hashed member's feature ids (`rows × hashed_cols`, padded
    /// with [`PADDING_ID`], each below the member's bucket count).
    pub fn predict_blend(
        &mut self,
        ids: &[i64],
        attention_mask: &[i64],
        rows: usize,
        cols: usize,
        hashed_ids: &[i64],
        hashed_cols: usize,
    ) -> Result<Vec<[f32; CLASSES]>, RuntimeError> {
        let Some((_, buckets)) = &self.summary.hashed_member else {
            return Err(RuntimeError::BadInput(
                "this model is not a blend: it takes no hashed ids".to_owned(),
            ));
        };
        check_mask(ids, attention_mask)?;
        if rows.checked_mul(hashed_cols) != Some(hashed_ids.len()) || (rows > 0 && hashed_cols == 0)
        {
            return Err(RuntimeError::BadInput(format!(
                "{} hashed ids do not form {rows} rows of {hashed_cols} (pad with 0)",
                hashed_ids.len()
            )));
        }
        let limit = i64::try_from(*buckets).unwrap_or(i64::MAX);
        if let Some(position) = hashed_ids.iter().position(|id| !(0..limit).contains(id)) {
            return Err(RuntimeError::BadInput(format!(
                "hashed id {} at row {}, column {} is outside 0..{limit}",
                hashed_ids[position],
                position / hashed_cols,
                position % hashed_cols
            )));
        }
        self.run(
            ids,
            Some(attention_mask),
            Some((hashed_ids, hashed_cols)),
            rows,
            cols,
        )
    }

    /// [`LoadedModel::predict`] with an explicit attention mask (`rows × cols`, 1 = token,
    /// 0 = padding), as [`crate::encoder::TokenBatch`] carries it. Only encoder-family models take
    /// a mask; a hashed model refuses one.
    pub fn predict_masked(
        &mut self,
        ids: &[i64],
        attention_mask: &[i64],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<[f32; CLASSES]>, RuntimeError> {
        if !self.summary.family.needs_attention_mask() {
            return Err(RuntimeError::BadInput(format!(
                "a `{}` model takes no attention mask",
                self.summary.family
            )));
        }
        self.refuse_blend()?;
        check_mask(ids, attention_mask)?;
        self.run(ids, Some(attention_mask), None, rows, cols)
    }

    fn run(
        &mut self,
        ids: &[i64],
        attention_mask: Option<&[i64]>,
        hashed: Option<(&[i64], usize)>,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<[f32; CLASSES]>, RuntimeError> {
        if rows.checked_mul(cols) != Some(ids.len()) {
            return Err(RuntimeError::BadInput(format!(
                "{} ids do not form {rows} rows of {cols}",
                ids.len()
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        if cols == 0 {
            return Err(RuntimeError::BadInput(
                "rows need at least one column (pad with 0)".to_owned(),
            ));
        }
        let limit = self
            .summary
            .vocab_size
            .map_or(i64::MAX, |size| i64::try_from(size).unwrap_or(i64::MAX));
        if let Some(position) = ids.iter().position(|id| !(0..limit).contains(id)) {
            return Err(RuntimeError::BadInput(format!(
                "id {} at row {}, column {} is outside 0..{limit}",
                ids[position],
                position / cols,
                position % cols
            )));
        }
        let input = TensorRef::from_array_view(([rows, cols], ids))
            .map_err(|error| RuntimeError::BadInput(error.to_string()))?;
        fn tensor(
            values: &[i64],
            rows: usize,
            cols: usize,
        ) -> Result<TensorRef<'_, i64>, RuntimeError> {
            TensorRef::from_array_view(([rows, cols], values))
                .map_err(|error| RuntimeError::BadInput(error.to_string()))
        }
        let outputs = match (attention_mask, hashed) {
            (None, _) => self.session.run(ort::inputs![onnx::INPUT_NAME => input]),
            (Some(mask), None) => self.session.run(ort::inputs![
                onnx::INPUT_NAME => input,
                onnx::ATTENTION_MASK_NAME => tensor(mask, rows, cols)?,
            ]),
            (Some(mask), Some((hashed_ids, hashed_cols))) => self.session.run(ort::inputs![
                onnx::INPUT_NAME => input,
                onnx::ATTENTION_MASK_NAME => tensor(mask, rows, cols)?,
                onnx::HASHED_IDS_NAME => tensor(hashed_ids, rows, hashed_cols)?,
            ]),
        }
        .map_err(|error| RuntimeError::Inference(error.to_string()))?;
        let output = outputs
            .get(OUTPUT_NAME)
            .ok_or_else(|| RuntimeError::BadOutput(format!("no output named `{OUTPUT_NAME}`")))?;
        let (shape, values) = output
            .try_extract_tensor::<f32>()
            .map_err(|error| RuntimeError::BadOutput(error.to_string()))?;
        let expected = [rows as i64, CLASSES as i64];
        if shape[..] != expected[..] {
            return Err(RuntimeError::BadOutput(format!(
                "output shape {shape:?}, expected {expected:?}"
            )));
        }
        Ok(values
            .chunks_exact(CLASSES)
            .map(|row| [row[0], row[1], row[2]])
            .collect())
    }

    /// The model family (from the metadata): decides how texts become inputs.
    pub fn family(&self) -> onnx::Family {
        self.summary.family
    }

    /// Runs one all-padding batch of `batch` rows for every padded length in `lengths` and checks the
    /// outputs are probabilities. ORT allocates per new input shape (and the CUDA EP grows its arena),
    /// so serving warms every shape it will use before taking traffic; call once per batch size.
    pub fn warm_up(&mut self, lengths: &[usize], batch: usize) -> Result<(), RuntimeError> {
        let batch = batch.max(1);
        for &length in lengths {
            let ids = vec![PADDING_ID; batch * length];
            let probabilities = if self.is_blend() {
                let mask = vec![0; ids.len()];
                let hashed_ids = vec![PADDING_ID; batch * BLEND_HASHED_COLS];
                self.run(
                    &ids,
                    Some(&mask),
                    Some((&hashed_ids, BLEND_HASHED_COLS)),
                    batch,
                    length,
                )?
            } else {
                self.predict(&ids, batch, length)?
            };
            if let Some(row) = probabilities.iter().find(|row| {
                row.iter().any(|value| !value.is_finite())
                    || (row.iter().sum::<f32>() - 1.0).abs() > 1e-3
            }) {
                return Err(RuntimeError::BadOutput(format!(
                    "warm-up at length {length} gave {row:?}, which are not probabilities"
                )));
            }
        }
        Ok(())
    }
}

/// An attention mask must hold one 0 or 1 per id.
fn check_mask(ids: &[i64], attention_mask: &[i64]) -> Result<(), RuntimeError> {
    if attention_mask.len() != ids.len() || attention_mask.iter().any(|m| !(0..=1).contains(m)) {
        return Err(RuntimeError::BadInput(format!(
            "the attention mask must hold {} zeros and ones, one per id",
            ids.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like ORT 1.31's profile (trimmed): session events, node events with `args.provider`.
    fn profile(gemm_provider: &str) -> String {
        format!(
            r#"[
{{"cat" : "Session","pid" :1,"tid" :1,"dur" :7,"ts" :1,"ph" : "X","name" :"session_initialization","args" : {{}}}},
{{"cat" : "Node","pid" :1,"tid" :1,"dur" :1,"ts" :2,"ph" : "X","name" :"token_vectors_fence_before","args" : {{"op_name" : "Gather"}}}},
{{"cat" : "Node","pid" :1,"tid" :1,"dur" :5,"ts" :3,"ph" : "X","name" :"token_vectors_kernel_time","args" : {{"op_name" : "Gather","provider" : "CUDAExecutionProvider"}}}},
{{"cat" : "Node","pid" :1,"tid" :1,"dur" :5,"ts" :4,"ph" : "X","name" :"is_padding_kernel_time","args" : {{"op_name" : "Equal","provider" : "CPUExecutionProvider"}}}},
{{"cat" : "Node","pid" :1,"tid" :1,"dur" :5,"ts" :5,"ph" : "X","name" :"logits_kernel_time","args" : {{"op_name" : "Gemm","provider" : "{gemm_provider}"}}}},
{{"cat" : "Session","pid" :1,"tid" :1,"dur" :9,"ts" :6,"ph" : "X","name" :"model_run","args" : {{}}}}
]"#
        )
    }

    #[test]
    fn placement_counts_kernel_events_per_provider() {
        let placement = Placement::from_profile(&profile("CUDAExecutionProvider")).expect("parses");
        assert_eq!(
            placement.nodes_by_provider.get("CUDAExecutionProvider"),
            Some(&2)
        );
        assert_eq!(
            placement.nodes_by_provider.get("CPUExecutionProvider"),
            Some(&1)
        );
        assert!(
            placement.is_cuda(),
            "host-side Equal does not make it a CPU model"
        );
    }

    #[test]
    fn compute_nodes_on_cpu_mean_not_cuda() {
        let placement = Placement::from_profile(&profile("CPUExecutionProvider")).expect("parses");
        assert_eq!(placement.compute_ops_off_cuda, ["Gemm"]);
        assert!(!placement.is_cuda());
        assert!(!Placement::default().is_cuda(), "no node on CUDA at all");
        assert!(Placement::from_profile("not json").is_err());
    }
}
