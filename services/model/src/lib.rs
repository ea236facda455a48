//! Text processing shared by ingest, trainer and server: one normaliser, one redactor, one language
//! detector and one lexicon scorer, so training and serving can never see differently cleaned text.
//!
//! # Layout
//! - [`text`]: the versioned normaliser ([`clean`], [`NORMALIZER_VERSION`]) and the dedupe
//!   fingerprint ([`text_fingerprint`]).
//! - [`pii`]: redaction of e-mail addresses, phone numbers and payment-card numbers ([`redact`]).
//! - [`lang`]: language detection with ISO 639-1 codes ([`detect`]).
//! - [`lexicon`]: VADER-style lexicon scoring used for weak labels ([`Lexicon`]).
//! - [`hashed`]: weights and reference forward pass of the hashed embedding-bag family.
//! - [`featurize`]: raw text → hashed feature ids, the one code path of training and serving
//!   ([`featurize::Featurizer`], [`featurize::FEATURIZER_VERSION`]).
//! - [`seen`]: the bitmap of feature ids a hashed model saw in training, behind serving's OOV rate
//!   ([`seen::SeenFeatures`]).
//! - [`train`]: the sparse-SGD CPU trainer of the hashed family ([`train::train`]).
//! - [`encoder`]: the encoder family: WordPiece tokenisation ([`encoder::EncoderTokenizer`]), frozen
//!   MiniLM embeddings through ORT ([`encoder::FrozenEncoder`]) and the linear head's trainer
//!   ([`encoder::train_head`]).
//! - [`eval`]: precision, recall, F1, macro-F1, confusion matrix and calibration error
//!   ([`eval::evaluate`]).
//! - [`onnx`]: ONNX protobuf types, model metadata and family ([`onnx::Family`]), the exporters of
//!   both families and load-time checks.
//! - [`runtime`]: ONNX Runtime loading (once per process), sessions on a device proven by a warm-up,
//!   batched prediction.
//! - `spans` (private): copy-on-write helpers the cleaning and redaction steps share.
//!
//! # Contract
//! [`clean`] is idempotent (`clean(clean(x).text).text == clean(x).text`) and its output has no
//! control characters, no runs of more than three identical characters other than digits, single
//! spaces only and no leading or trailing whitespace. Any change of its output for any input must bump
//! [`NORMALIZER_VERSION`], because dedupe fingerprints and trained models depend on it.

pub mod encoder;
pub mod eval;
pub mod featurize;
pub mod hashed;
pub mod lang;
pub mod lexicon;
pub mod onnx;
pub mod parallel;
pub mod pii;
#[cfg(test)]
mod robustness;
pub mod runtime;
pub mod seen;
mod spans;
pub mod text;
pub mod train;

pub use lang::{Detected, detect};
pub use lexicon::{Lexicon, LexiconError, Polarity, SentimentScores};
pub use pii::{Redactions, redact};
pub use text::{Cleaned, NORMALIZER_VERSION, clean, text_fingerprint};
