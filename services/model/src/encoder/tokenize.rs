//! Raw text → padded `(input_ids, attention_mask)` batches for encoder-family models: the normaliser
//! ([`crate::clean`]) then all-MiniLM-L6-v2's WordPiece tokenizer (`tokenizer.json`, offline), with
//! `[CLS]`/`[SEP]`, truncation to `max_length` (counted) and right padding with id 0.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use super::{ENCODER_FEATURIZER_VERSION, EncoderConfig, EncoderError, read_file, sha256_hex};
use crate::onnx::{Family, ModelMetadata};

/// Fewest texts [`EncoderTokenizer::encode_all`] hands one thread: below this, spawning costs more
/// than it saves.
pub const MIN_TEXTS_PER_THREAD: usize = 32;

/// Padding id of BERT vocabularies (`[PAD]`); its attention-mask entry is 0.
pub const PAD_ID: i64 = 0;

/// A tokenized batch, row-major, ready for ONNX Runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, `rows × cols`, right-padded with [`PAD_ID`].
    pub input_ids: Vec<i64>,
    /// 1 for a real token, 0 for padding, `rows × cols`.
    pub attention_mask: Vec<i64>,
    /// Number of texts.
    pub rows: usize,
    /// Padded length (the longest row, rounded up to the requested multiple).
    pub cols: usize,
    /// Tokens per row before padding, `[CLS]` and `[SEP]` included (2 means the text had no token).
    pub lengths: Vec<usize>,
    /// Rows cut to `max_length` (serving counts them in a metric).
    pub truncated: usize,
}

impl TokenBatch {
    /// Rows whose text produced no token besides `[CLS]` and `[SEP]` (empty after cleaning).
    pub fn empty_rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.lengths
            .iter()
            .enumerate()
            .filter(|(_, length)| **length <= 2)
            .map(|(row, _)| row)
    }
}

/// The tokenizer of an encoder-family model. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct EncoderTokenizer {
    /// The WordPiece tokenizer with padding off and truncation at `max_length`.
    tokenizer: Tokenizer,
    /// Longest sequence, special tokens included.
    max_length: usize,
    /// sha256 of the `tokenizer.json` it was built from.
    sha256: String,
}

impl std::fmt::Debug for EncoderTokenizer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EncoderTokenizer")
            .field("max_length", &self.max_length)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl EncoderTokenizer {
    /// Builds the tokenizer from the bytes of a `tokenizer.json`. The file's own padding and
    /// truncation settings are replaced: no padding (batches pad themselves), truncation at
    /// `max_length`.
    pub fn from_bytes(json: &[u8], max_length: usize) -> Result<Self, EncoderError> {
        if max_length < 3 {
            return Err(EncoderError::Config(format!(
                "max_length {max_length} leaves no room for a token between [CLS] and [SEP]"
            )));
        }
        let mut tokenizer = Tokenizer::from_bytes(json)
            .map_err(|error| EncoderError::Tokenizer(error.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..TruncationParams::default()
            }))
            .map_err(|error| EncoderError::Tokenizer(error.to_string()))?;
        Ok(Self {
            tokenizer,
            max_length,
            sha256: sha256_hex(json),
        })
    }

    /// [`Self::from_bytes`] of a file.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, EncoderError> {
        Self::from_bytes(&read_file(path)?, max_length)
    }

    /// The tokenizer an encoder-family model was trained with: `config`'s max length, from the file
    /// at `path`, which must hash to `config.tokenizer_sha256`.
    pub fn for_config(config: &EncoderConfig, path: &Path) -> Result<Self, EncoderError> {
        config.validate()?;
        let bytes = read_file(path)?;
        let actual = sha256_hex(&bytes);
        if actual != config.tokenizer_sha256 {
            return Err(EncoderError::TokenizerMismatch {
                expected: config.tokenizer_sha256.clone(),
                actual,
                path: path.display().to_string(),
            });
        }
        Self::from_bytes(&bytes, config.max_length)
    }

    /// The tokenizer for a model, from its ONNX metadata: checks the family and featurizer version,
    /// parses the [`EncoderConfig`] (its hash must match) and loads `tokenizer_path` (the cache's
    /// `tokenizer.json`), refusing a file with another checksum.
    pub fn for_metadata(
        metadata: &ModelMetadata,
        tokenizer_path: &Path,
    ) -> Result<Self, EncoderError> {
        let config = encoder_config(metadata)?;
        Self::for_config(&config, tokenizer_path)
    }

    /// Longest sequence fed to the model, `[CLS]` and `[SEP]` included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// sha256 of the `tokenizer.json` this tokenizer was built from.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Token ids of one raw text (cleaned first), special tokens included, truncated; and whether
    /// it was truncated.
    pub fn encode(&self, raw_text: &str) -> Result<(Vec<i64>, bool), EncoderError> {
        let cleaned = crate::clean(raw_text).text;
        let encoding = self
            .tokenizer
            .encode(cleaned.as_str(), true)
            .map_err(|error| EncoderError::Tokenizer(error.to_string()))?;
        let ids = encoding.get_ids().iter().map(|id| i64::from(*id)).collect();
        Ok((ids, !encoding.get_overflowing().is_empty()))
    }

    /// [`EncoderTokenizer::encode`] of every text, in input order, on up to `threads` scoped threads
    /// (at least [`MIN_TEXTS_PER_THREAD`] texts each, so a small batch stays on the caller's
    /// thread). On a GPU host tokenizing is the serving path's bottleneck: one thread tokenizes
    /// ~18k tweets/s while the CUDA EP scores a batch of 256 in ~2.5 ms (~100k rows/s).
    pub fn encode_all<S: AsRef<str> + Sync>(
        &self,
        raw_texts: &[S],
        threads: usize,
    ) -> Vec<Result<(Vec<i64>, bool), EncoderError>> {
        crate::parallel::map_ordered(raw_texts, threads, MIN_TEXTS_PER_THREAD, |text| {
            self.encode(text.as_ref())
        })
    }

    /// Tokenizes raw texts (each cleaned first) into one batch padded to the longest row, rounded
    /// up to a multiple of `pad_multiple` (1 = no rounding; serving pads to a few fixed lengths so
    /// ORT sees few shapes) and never beyond `max_length` rounded up likewise.
    pub fn encode_batch(
        &self,
        raw_texts: &[&str],
        pad_multiple: usize,
    ) -> Result<TokenBatch, EncoderError> {
        let mut rows = Vec::with_capacity(raw_texts.len());
        let mut truncated = 0;
        for text in raw_texts {
            let (ids, cut) = self.encode(text)?;
            truncated += usize::from(cut);
            rows.push(ids);
        }
        Ok(pad(rows, pad_multiple, truncated))
    }

    /// Tokenizes raw texts into batches grouped by padded length (the longest row rounded up to a
    /// multiple of `pad_multiple`), so short texts are not padded to the longest text of the whole
    /// micro-batch. Each group holds the input positions of its rows, in input order; groups come
    /// shortest first.
    pub fn encode_grouped(
        &self,
        raw_texts: &[&str],
        pad_multiple: usize,
    ) -> Result<Vec<(Vec<usize>, TokenBatch)>, EncoderError> {
        let encoded = self
            .encode_all(raw_texts, 1)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        Ok(group_by_padded_length(encoded, pad_multiple))
    }
}

/// Already-encoded rows (ids, truncated) packed into batches grouped by padded length, as
/// [`EncoderTokenizer::encode_grouped`] does: each group holds the input positions of its rows, in
/// input order; groups come shortest first.
pub fn group_by_padded_length(
    encoded: Vec<(Vec<i64>, bool)>,
    pad_multiple: usize,
) -> Vec<(Vec<usize>, TokenBatch)> {
    let multiple = pad_multiple.max(1);
    /// Rows of one padded width, before packing.
    #[derive(Default)]
    struct Group {
        positions: Vec<usize>,
        rows: Vec<Vec<i64>>,
        truncated: usize,
    }
    let mut groups: std::collections::BTreeMap<usize, Group> = std::collections::BTreeMap::new();
    for (position, (ids, cut)) in encoded.into_iter().enumerate() {
        let group = groups
            .entry(ids.len().div_ceil(multiple) * multiple)
            .or_default();
        group.positions.push(position);
        group.rows.push(ids);
        group.truncated += usize::from(cut);
    }
    groups
        .into_values()
        .map(|group| (group.positions, pad(group.rows, multiple, group.truncated)))
        .collect()
}

/// Packs token rows into a right-padded batch.
fn pad(rows: Vec<Vec<i64>>, pad_multiple: usize, truncated: usize) -> TokenBatch {
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let cols = longest.div_ceil(pad_multiple.max(1)) * pad_multiple.max(1);
    let mut input_ids = vec![PAD_ID; rows.len() * cols];
    let mut attention_mask = vec![0; rows.len() * cols];
    let mut lengths = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        input_ids[index * cols..index * cols + row.len()].copy_from_slice(row);
        attention_mask[index * cols..index * cols + row.len()].fill(1);
        lengths.push(row.len());
    }
    TokenBatch {
        input_ids,
        attention_mask,
        rows: rows.len(),
        cols,
        lengths,
        truncated,
    }
}

/// The [`EncoderConfig`] of an encoder-family model's metadata, after checking the family, the
/// featurizer version and the config hash.
pub fn encoder_config(metadata: &ModelMetadata) -> Result<EncoderConfig, EncoderError> {
    let family = metadata
        .family_kind()
        .map_err(|error| EncoderError::Config(error.to_string()))?;
    if family != Family::Encoder {
        return Err(EncoderError::Config(format!(
            "model {} {} is of family `{}`, not `encoder`",
            metadata.name, metadata.version, metadata.family
        )));
    }
    if metadata.featurizer_version != ENCODER_FEATURIZER_VERSION {
        return Err(EncoderError::Config(format!(
            "model needs featurizer {}, this build implements {ENCODER_FEATURIZER_VERSION}",
            metadata.featurizer_version
        )));
    }
    let config: EncoderConfig = serde_json::from_str(&metadata.featurizer_config)
        .map_err(|error| EncoderError::Config(format!("featurizer_config: {error}")))?;
    if config.config_hash() != metadata.featurizer_config_hash {
        return Err(EncoderError::Config(
            "featurizer_config does not match its recorded hash".to_owned(),
        ));
    }
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_rounds_up_and_masks_real_tokens_only() {
        let batch = pad(vec![vec![101, 7, 102], vec![101, 102]], 4, 1);
        assert_eq!(batch.rows, 2);
        assert_eq!(batch.cols, 4);
        assert_eq!(batch.input_ids, [101, 7, 102, 0, 101, 102, 0, 0]);
        assert_eq!(batch.attention_mask, [1, 1, 1, 0, 1, 1, 0, 0]);
        assert_eq!(batch.lengths, [3, 2]);
        assert_eq!(batch.truncated, 1);
        assert_eq!(batch.empty_rows().collect::<Vec<_>>(), [1]);
        let empty = pad(Vec::new(), 8, 0);
        assert_eq!((empty.rows, empty.cols), (0, 0));
    }

    #[test]
    fn tiny_max_length_is_refused() {
        assert!(matches!(
            EncoderTokenizer::from_bytes(b"{}", 2),
            Err(EncoderError::Config(_))
        ));
        assert!(matches!(
            EncoderTokenizer::from_bytes(b"not json", 64),
            Err(EncoderError::Tokenizer(_))
        ));
    }
}
