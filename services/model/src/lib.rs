//! Text processing shared by ingest, trainer and server: one normaliser, one redactor, one language
//! detector and one lexicon scorer, so training and serving can never see differently cleaned text.
//!
//! # Layout
//! - [`text`]: the versioned normaliser ([`clean`], [`NORMALIZER_VERSION`]) and the dedupe
//!   fingerprint ([`text_fingerprint`]).
//! - [`pii`]: redaction of e-mail addresses, phone numbers and payment-card numbers ([`redact`]).
//! - [`lang`]: language detection with ISO 639-1 codes ([`detect`]).
//! - [`lexicon`]: VADER-style lexicon scoring used for weak labels ([`Lexicon`]).
//! - `spans` (private): copy-on-write helpers the cleaning and redaction steps share.
//!
//! # Contract
//! [`clean`] is idempotent (`clean(clean(x).text).text == clean(x).text`) and its output has no
//! control characters, no runs of more than three identical characters other than digits, single
//! spaces only and no leading or trailing whitespace. Any change of its output for any input must bump
//! [`NORMALIZER_VERSION`], because dedupe fingerprints and trained models depend on it.

pub mod lang;
pub mod lexicon;
pub mod pii;
mod spans;
pub mod text;

pub use lang::{Detected, detect};
pub use lexicon::{Lexicon, LexiconError, Polarity, SentimentScores};
pub use pii::{Redactions, redact};
pub use text::{Cleaned, NORMALIZER_VERSION, clean, text_fingerprint};
