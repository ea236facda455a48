//! Mean-pooled sentence embeddings from a frozen base encoder through ONNX Runtime: the features the
//! head trainer learns from, and the Rust reference side of the encoder parity test (embedding from
//! ORT + [`super::LinearHead::predict`] in Rust).

use std::fmt;
use std::time::Instant;

use ort::session::Session;
use ort::value::TensorRef;

use super::{EncoderError, EncoderTokenizer};
use crate::onnx::{ATTENTION_MASK_NAME, EMBEDDING_OUTPUT, INPUT_NAME, pooled_encoder};
use crate::runtime::{OrtEnvironment, session_builder};

/// What one [`FrozenEncoder::embed`] call did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedStats {
    /// Texts embedded.
    pub rows: usize,
    /// Texts cut to the tokenizer's `max_length`.
    pub truncated: usize,
    /// Wall-clock seconds (tokenisation included).
    pub seconds: f64,
}

impl EmbedStats {
    /// Texts per second.
    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The base encoder + masked mean pooling ([`pooled_encoder`]) in a CPU ORT session.
pub struct FrozenEncoder {
    /// The pooled graph's session (`run` needs `&mut`).
    session: Session,
    /// Width of the embeddings.
    dim: usize,
}

impl fmt::Debug for FrozenEncoder {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("FrozenEncoder")
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl FrozenEncoder {
    /// Composes the pooled graph from the base encoder's ONNX bytes and builds a CPU session with
    /// `intra_threads` threads.
    pub fn load(
        env: &OrtEnvironment,
        base_onnx: &[u8],
        dim: usize,
        intra_threads: usize,
    ) -> Result<Self, EncoderError> {
        let pooled =
            pooled_encoder(base_onnx).map_err(|error| EncoderError::Runtime(error.to_string()))?;
        let session = session_builder(env, intra_threads.max(1))
            .and_then(|mut builder| {
                builder
                    .commit_from_memory(&pooled)
                    .map_err(|error| error.to_string())
            })
            .map_err(EncoderError::Runtime)?;
        Ok(Self { session, dim })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row-major `[rows, dim]` embeddings of one tokenized batch.
    pub fn embed_batch(
        &mut self,
        input_ids: &[i64],
        attention_mask: &[i64],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>, EncoderError> {
        let runtime = |error: &dyn fmt::Display| EncoderError::Runtime(error.to_string());
        if rows == 0 {
            return Ok(Vec::new());
        }
        if input_ids.len() != rows * cols || attention_mask.len() != rows * cols || cols == 0 {
            return Err(EncoderError::Runtime(format!(
                "{} ids and {} mask values do not form {rows} rows of {cols}",
                input_ids.len(),
                attention_mask.len()
            )));
        }
        let ids = TensorRef::from_array_view(([rows, cols], input_ids))
            .map_err(|error| runtime(&error))?;
        let mask = TensorRef::from_array_view(([rows, cols], attention_mask))
            .map_err(|error| runtime(&error))?;
        let outputs = self
            .session
            .run(ort::inputs![INPUT_NAME => ids, ATTENTION_MASK_NAME => mask])
            .map_err(|error| runtime(&error))?;
        let output = outputs
            .get(EMBEDDING_OUTPUT)
            .ok_or_else(|| EncoderError::Runtime(format!("no output `{EMBEDDING_OUTPUT}`")))?;
        let (shape, values) = output
            .try_extract_tensor::<f32>()
            .map_err(|error| runtime(&error))?;
        if shape[..] != [rows as i64, self.dim as i64][..] {
            return Err(EncoderError::Runtime(format!(
                "embedding shape {shape:?}, expected [{rows}, {}]",
                self.dim
            )));
        }
        Ok(values.to_vec())
    }

    /// Row-major `[texts, dim]` embeddings of raw texts (cleaned and tokenized by `tokenizer`), in
    /// input order. Texts are embedded in batches of `batch_size` sorted by token length, so little
    /// padding is computed; `progress` is called with the rows done after each batch.
    pub fn embed(
        &mut self,
        tokenizer: &EncoderTokenizer,
        texts: &[&str],
        batch_size: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<(Vec<f32>, EmbedStats), EncoderError> {
        let started = Instant::now();
        let mut encoded = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for text in texts {
            let (ids, cut) = tokenizer.encode(text)?;
            truncated += usize::from(cut);
            encoded.push(ids);
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|index| (encoded[*index].len(), *index));
        let mut embeddings = vec![0.0f32; texts.len() * self.dim];
        let mut done = 0;
        for batch in order.chunks(batch_size.max(1)) {
            let cols = batch
                .iter()
                .map(|index| encoded[*index].len())
                .max()
                .unwrap_or(1)
                .max(1);
            let mut ids = vec![0i64; batch.len() * cols];
            let mut mask = vec![0i64; batch.len() * cols];
            for (row, index) in batch.iter().enumerate() {
                let tokens = &encoded[*index];
                ids[row * cols..row * cols + tokens.len()].copy_from_slice(tokens);
                mask[row * cols..row * cols + tokens.len()].fill(1);
            }
            let values = self.embed_batch(&ids, &mask, batch.len(), cols)?;
            for (row, index) in batch.iter().enumerate() {
                embeddings[index * self.dim..(index + 1) * self.dim]
                    .copy_from_slice(&values[row * self.dim..(row + 1) * self.dim]);
            }
            done += batch.len();
            progress(done);
        }
        Ok((
            embeddings,
            EmbedStats {
                rows: texts.len(),
                truncated,
                seconds: started.elapsed().as_secs_f64(),
            },
        ))
    }
}
