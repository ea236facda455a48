//! all-MiniLM-L6-v2 + masked mean pooling + a linear head as a burn module, generic over the backend:
//! BERT embeddings (word, position, token type 0, LayerNorm) and burn's post-norm `TransformerEncoder`
//! (GELU, eps 1e-12), built from and read back into [`BertClassifierWeights`] for the ONNX writer.

use burn::module::{Module, Param};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use sentiflow_model::encoder::bert::{
    BertClassifierWeights, BertConfig, BertLayerWeights, DenseWeights, NormWeights,
};

use crate::BurnError;

/// The encoder-family classifier: text ids → BERT → masked mean → linear → logits.
#[derive(Module, Debug)]
pub struct BertClassifier<B: Backend> {
    /// `[vocab, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_positions, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// Row 0 of the token-type table, `[hidden]`.
    pub token_type_embedding: Param<Tensor<B, 1>>,
    /// LayerNorm of the summed embeddings.
    pub embedding_norm: LayerNorm<B>,
    /// Dropout after the embeddings (active only while training).
    pub embedding_dropout: Dropout,
    /// The transformer layers.
    pub encoder: TransformerEncoder<B>,
    /// `[hidden, 3]` classifier on the pooled output.
    pub head: Linear<B>,
}

/// A padded batch on the device: ids `[batch, tokens]` and the mask (1 = token, 0 = padding).
#[derive(Debug, Clone)]
pub struct DeviceBatch<B: Backend> {
    /// Token ids.
    pub ids: Tensor<B, 2, Int>,
    /// 1.0 for real tokens, 0.0 for padding.
    pub mask: Tensor<B, 2>,
}

impl<B: Backend> DeviceBatch<B> {
    /// Right-pads `rows` (token ids, `[CLS]`/`[SEP]` included) with 0 to the longest row.
    pub fn from_rows(rows: &[&[i64]], device: &B::Device) -> Self {
        let cols = rows.iter().map(|row| row.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; rows.len() * cols];
        let mut mask = vec![0f32; rows.len() * cols];
        for (index, row) in rows.iter().enumerate() {
            ids[index * cols..index * cols + row.len()].copy_from_slice(row);
            mask[index * cols..index * cols + row.len()].fill(1.0);
        }
        Self::from_padded(&ids, &mask, rows.len(), cols, device)
    }

    /// A batch already padded to `rows × cols`.
    pub fn from_padded(
        ids: &[i64],
        mask: &[f32],
        rows: usize,
        cols: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            ids: Tensor::from_data(TensorData::new(ids.to_vec(), [rows, cols]), device),
            mask: Tensor::from_data(TensorData::new(mask.to_vec(), [rows, cols]), device),
        }
    }
}

impl<B: Backend> BertClassifier<B> {
    /// Uploads `weights` to `device`; `dropout` is the training-time rate of embeddings, attention
    /// and feed-forward outputs (BERT's 0.1).
    pub fn from_weights(
        weights: &BertClassifierWeights,
        dropout: f64,
        device: &B::Device,
    ) -> Result<Self, BurnError> {
        weights.validate().map_err(BurnError::Shape)?;
        let config = weights.config;
        let hidden = config.hidden_size;
        let encoder_config = TransformerEncoderConfig::new(
            hidden,
            config.intermediate_size,
            config.num_attention_heads,
            config.num_hidden_layers,
        )
        .with_dropout(dropout)
        .with_norm_first(false)
        .with_layer_norm_eps(config.layer_norm_eps);
        let mut encoder = encoder_config.init::<B>(device);
        for (layer, source) in encoder.layers.iter_mut().zip(&weights.layers) {
            layer.mha.query = linear(&source.query, device);
            layer.mha.key = linear(&source.key, device);
            layer.mha.value = linear(&source.value, device);
            layer.mha.output = linear(&source.attention_output, device);
            layer.norm_1 = layer_norm(&source.attention_norm, config.layer_norm_eps, device);
            layer.pwff.linear_inner = linear(&source.intermediate, device);
            layer.pwff.linear_outer = linear(&source.output, device);
            layer.norm_2 = layer_norm(&source.output_norm, config.layer_norm_eps, device);
        }
        let embedding = |values: &[f32], rows: usize| {
            let mut module = EmbeddingConfig::new(1, hidden).init::<B>(device);
            module.weight = param2(values, [rows, hidden], device);
            module
        };
        Ok(Self {
            word_embeddings: embedding(&weights.word_embeddings, config.vocab_size),
            position_embeddings: embedding(
                &weights.position_embeddings,
                config.max_position_embeddings,
            ),
            token_type_embedding: param1(&weights.token_type_embedding, device),
            embedding_norm: layer_norm(&weights.embedding_norm, config.layer_norm_eps, device),
            embedding_dropout: DropoutConfig::new(dropout).init(),
            encoder,
            head: linear(&weights.head, device),
        })
    }

    /// Downloads the weights (shape `config`) for the ONNX writer.
    pub fn to_weights(&self, config: BertConfig) -> Result<BertClassifierWeights, BurnError> {
        let layers = self
            .encoder
            .layers
            .iter()
            .map(|layer| {
                Ok(BertLayerWeights {
                    query: dense(&layer.mha.query)?,
                    key: dense(&layer.mha.key)?,
                    value: dense(&layer.mha.value)?,
                    attention_output: dense(&layer.mha.output)?,
                    attention_norm: norm(&layer.norm_1)?,
                    intermediate: dense(&layer.pwff.linear_inner)?,
                    output: dense(&layer.pwff.linear_outer)?,
                    output_norm: norm(&layer.norm_2)?,
                })
            })
            .collect::<Result<Vec<_>, BurnError>>()?;
        let weights = BertClassifierWeights {
            config,
            word_embeddings: values(self.word_embeddings.weight.val())?,
            position_embeddings: values(self.position_embeddings.weight.val())?,
            token_type_embedding: values(self.token_type_embedding.val())?,
            embedding_norm: norm(&self.embedding_norm)?,
            layers,
            head: dense(&self.head)?,
        };
        weights.validate().map_err(BurnError::Shape)?;
        Ok(weights)
    }

    /// Mean-pooled last hidden states `[batch, hidden]` (padding excluded; an all-padding row pools to
    /// zeros, as in the ONNX graph).
    pub fn pooled(&self, batch: &DeviceBatch<B>) -> Tensor<B, 2> {
        let [rows, cols] = batch.ids.dims();
        let device = batch.ids.device();
        let words = self.word_embeddings.forward(batch.ids.clone()); // [B,T,H]
        let positions = Tensor::<B, 1, Int>::arange(0..cols as i64, &device)
            .reshape([1, cols])
            .repeat_dim(0, rows);
        let positions = self.position_embeddings.forward(positions); // [B,T,H]
        let token_type = self
            .token_type_embedding
            .val()
            .unsqueeze_dim::<2>(0)
            .unsqueeze_dim::<3>(0);
        let embedded = self.embedding_norm.forward(words + positions + token_type);
        let embedded = self.embedding_dropout.forward(embedded);
        let padding = batch.mask.clone().equal_elem(0.0);
        let hidden = self
            .encoder
            .forward(TransformerEncoderInput::new(embedded).mask_pad(padding)); // [B,T,H]
        // Masked sum as the ONNX graph computes it: [B,1,T] x [B,T,H].
        let sum: Tensor<B, 2> = batch
            .mask
            .clone()
            .unsqueeze_dim::<3>(1)
            .matmul(hidden)
            .squeeze_dim(1);
        let count = batch.mask.clone().sum_dim(1).clamp_min(1.0); // [B,1]
        sum / count
    }

    /// Logits `[batch, 3]`.
    pub fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 2> {
        self.head.forward(self.pooled(batch))
    }
}

fn param1<B: Backend>(values: &[f32], device: &B::Device) -> Param<Tensor<B, 1>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        device,
    ))
}

fn param2<B: Backend>(
    values: &[f32],
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        device,
    ))
}

fn linear<B: Backend>(source: &DenseWeights, device: &B::Device) -> Linear<B> {
    let mut module = LinearConfig::new(source.d_in, source.d_out).init::<B>(device);
    module.weight = param2(&source.weight, [source.d_in, source.d_out], device);
    module.bias = Some(param1(&source.bias, device));
    module
}

fn layer_norm<B: Backend>(source: &NormWeights, epsilon: f64, device: &B::Device) -> LayerNorm<B> {
    let mut module = LayerNormConfig::new(source.gamma.len())
        .with_epsilon(epsilon)
        .init::<B>(device);
    module.gamma = param1(&source.gamma, device);
    module.beta = Some(param1(&source.beta, device));
    module
}

fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, BurnError> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|error| BurnError::Tensor(format!("{error:?}")))
}

fn dense<B: Backend>(module: &Linear<B>) -> Result<DenseWeights, BurnError> {
    let [d_in, d_out] = module.weight.dims();
    Ok(DenseWeights {
        d_in,
        d_out,
        weight: values(module.weight.val())?,
        bias: match &module.bias {
            Some(bias) => values(bias.val())?,
            None => vec![0.0; d_out],
        },
    })
}

fn norm<B: Backend>(module: &LayerNorm<B>) -> Result<NormWeights, BurnError> {
    let gamma = values(module.gamma.val())?;
    let beta = match &module.beta {
        Some(beta) => values(beta.val())?,
        None => vec![0.0; gamma.len()],
    };
    Ok(NormWeights { gamma, beta })
}
