//! The GPU training path of the `hashed` family: the same model as generic burn code, trained on CUDA
//! when a probe finds a usable driver, and on burn's ndarray CPU backend in CI so the path cannot rot.
//!
//! # Layout
//! - [`probe`]: is CUDA really there (driver, devices, NVRTC)? Asked before burn's CUDA backend is used.
//! - [`model`]: [`HashedBag`], the embedding bag as a burn module, convertible to and from
//!   [`sentiflow_model::hashed::HashedModel`] (which the ONNX exporter writes).
//! - [`encoder`]: [`BertClassifier`], all-MiniLM-L6-v2 + mean pooling + head as a burn module, built
//!   from and read back into [`sentiflow_model::encoder::bert::BertClassifierWeights`].
//! - [`finetune`]: [`fine_tune`]: AdamW, warm-up + linear decay, class weights, clipping, early stopping.
//! - [`train`]: mini-batch training with the sparse trainer's configuration and result types.

pub mod encoder;
pub mod finetune;
pub mod model;
pub mod probe;
pub mod train;

pub use encoder::BertClassifier;
pub use finetune::{FineTuneConfig, FineTuned, TokenizedExample, fine_tune};
pub use model::HashedBag;
pub use probe::CudaProbe;
pub use train::{BurnConfig, train};

/// burn's CPU backend (inference: no autodiff).
pub type NdArrayInference = burn::backend::NdArray<f32>;
/// burn's CPU backend with autodiff: the GPU code path, testable without a GPU.
pub type NdArrayBackend = burn::backend::Autodiff<NdArrayInference>;
/// burn's CUDA backend with autodiff. Touch it only after [`probe::cuda`] said yes.
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>;

/// Where a burn training run executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurnDevice {
    /// burn's ndarray backend on the CPU.
    NdArray,
    /// The first CUDA GPU.
    Cuda,
}

impl BurnDevice {
    /// Name for logs, model cards and the registry (`burn-cpu`, `cuda`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NdArray => "burn-cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Trains on `device`. For CUDA the probe must have found a usable driver, otherwise this returns
/// [`BurnError::CudaUnavailable`] instead of letting the backend panic.
pub fn train_on(
    device: BurnDevice,
    featurizer: &sentiflow_model::featurize::Featurizer,
    training: &[sentiflow_model::train::Example],
    validation: &[sentiflow_model::train::Example],
    config: &sentiflow_model::train::TrainConfig,
    burn: &BurnConfig,
) -> Result<sentiflow_model::train::TrainedModel, BurnError> {
    match device {
        BurnDevice::NdArray => train::<NdArrayBackend>(
            featurizer,
            training,
            validation,
            config,
            burn,
            &Default::default(),
        ),
        BurnDevice::Cuda => match probe::cuda() {
            CudaProbe::Available { .. } => train::<CudaBackend>(
                featurizer,
                training,
                validation,
                config,
                burn,
                &burn::backend::cuda::CudaDevice::new(0),
            ),
            CudaProbe::Unavailable(reason) => Err(BurnError::CudaUnavailable(reason.clone())),
        },
    }
}

/// Fine-tunes the encoder classifier on `device` (non-generic, so burn's code is compiled, and
/// optimised, in this crate). For CUDA the probe must have found a usable driver, otherwise this
/// returns [`BurnError::CudaUnavailable`] instead of letting the backend panic.
pub fn fine_tune_on(
    device: BurnDevice,
    initial: &sentiflow_model::encoder::bert::BertClassifierWeights,
    training: &[TokenizedExample],
    validation: &[TokenizedExample],
    config: &FineTuneConfig,
    progress: impl FnMut(&finetune::FineTuneEpoch),
) -> Result<FineTuned, BurnError> {
    match device {
        BurnDevice::NdArray => fine_tune::<NdArrayBackend>(
            initial,
            training,
            validation,
            config,
            &Default::default(),
            progress,
        ),
        BurnDevice::Cuda => match probe::cuda() {
            CudaProbe::Available { .. } => fine_tune::<CudaBackend>(
                initial,
                training,
                validation,
                config,
                &burn::backend::cuda::CudaDevice::new(0),
                progress,
            ),
            CudaProbe::Unavailable(reason) => Err(BurnError::CudaUnavailable(reason.clone())),
        },
    }
}

/// Class probabilities of `examples` under `weights` on `device` (no dropout), in input order;
/// non-generic for the same reason as [`fine_tune_on`].
pub fn predict_on(
    device: BurnDevice,
    weights: &sentiflow_model::encoder::bert::BertClassifierWeights,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Result<Vec<[f64; sentiflow_model::hashed::CLASSES]>, BurnError> {
    match device {
        BurnDevice::NdArray => {
            let device = Default::default();
            let model = BertClassifier::<NdArrayInference>::from_weights(weights, 0.0, &device)?;
            finetune::predict(&model, examples, batch_size, &device)
        }
        BurnDevice::Cuda => match probe::cuda() {
            CudaProbe::Available { .. } => {
                let device = burn::backend::cuda::CudaDevice::new(0);
                let model = BertClassifier::<burn::backend::Cuda<f32, i32>>::from_weights(
                    weights, 0.0, &device,
                )?;
                finetune::predict(&model, examples, batch_size, &device)
            }
            CudaProbe::Unavailable(reason) => Err(BurnError::CudaUnavailable(reason.clone())),
        },
    }
}

/// Why burn training could not run.
#[derive(Debug, thiserror::Error)]
pub enum BurnError {
    /// The shared trainer checks failed (empty sets, missing class, bad labels, bad config).
    #[error(transparent)]
    Train(#[from] sentiflow_model::train::TrainError),
    /// A burn-only setting is out of range.
    #[error("invalid burn training configuration: {0}")]
    InvalidConfig(String),
    /// A model's vectors do not match its declared shape.
    #[error("invalid model shape: {0}")]
    Shape(String),
    /// Reading a tensor back from the device failed.
    #[error("tensor read-back failed: {0}")]
    Tensor(String),
    /// CUDA was asked for but the probe found no usable driver.
    #[error("CUDA is not usable: {0}")]
    CudaUnavailable(String),
}

impl BurnError {
    /// Stable short name, for metric labels and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Train(error) => error.kind(),
            Self::InvalidConfig(_) => "invalid_config",
            Self::Shape(_) => "invalid_shape",
            Self::Tensor(_) => "tensor_read_back",
            Self::CudaUnavailable(_) => "cuda_unavailable",
        }
    }
}
