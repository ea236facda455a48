//! ONNX graph of a fine-tuned encoder-family model, written operator by operator from
//! [`BertClassifierWeights`]: BERT embeddings, post-norm transformer layers (exact GELU), masked mean
//! pooling, `Gemm` head and `Softmax`. fp32 (or fp16 weights and activations, the variant for the CUDA
//! execution provider, with the logits cast back to fp32 before the softmax), opset 17, the same
//! contract as every encoder model.

use prost::Message;

use super::build::{Dim, f16_tensor, f32_tensor, i64_tensor, int_attribute, node, value_info};
use super::encoder::{check_encoder_metadata, seal_encoder_model};
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    attribute_proto::AttributeType, tensor_proto::DataType,
};
use super::{ATTENTION_MASK_NAME, INPUT_NAME, IR_VERSION, ModelMetadata, OPSET_VERSION, OnnxError};
use crate::encoder::EncoderConfig;
use crate::encoder::bert::{BertClassifierWeights, DenseWeights, NormWeights};

/// Value that masked attention scores are replaced with before the softmax (burn's `min_float`,
/// which the fine-tuner uses: the exported graph computes what was trained).
pub const ATTENTION_MASK_FILL: f32 = -1.0e4;

/// Numeric precision of an exported encoder graph. Inputs (int64 ids and mask) and the output (fp32
/// probabilities) are the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BertPrecision {
    /// fp32 weights and activations: the served default, parity ≤ 1e-4 with the burn forward pass.
    #[default]
    F32,
    /// fp16 weights and activations (LayerNorm, softmax and the final softmax's logits included in
    /// fp16 except the last cast): for the CUDA execution provider's tensor cores; half the bytes.
    F16,
}

impl BertPrecision {
    /// `fp32` or `fp16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "fp32",
            Self::F16 => "fp16",
        }
    }
}

/// Writes `weights` as a served encoder-family model (`input_ids`, `attention_mask` →
/// `probabilities`) with `metadata` (family `encoder`, `featurizer_config` = `config`'s canonical
/// JSON; `weights_sha256` filled in when empty, checked otherwise). Same weights, same bytes.
pub fn export_bert_classifier(
    weights: &BertClassifierWeights,
    config: &EncoderConfig,
    metadata: &ModelMetadata,
) -> Result<Vec<u8>, OnnxError> {
    export_bert_classifier_as(weights, config, metadata, BertPrecision::F32)
}

/// [`export_bert_classifier`] in the given precision.
pub fn export_bert_classifier_as(
    weights: &BertClassifierWeights,
    config: &EncoderConfig,
    metadata: &ModelMetadata,
    precision: BertPrecision,
) -> Result<Vec<u8>, OnnxError> {
    weights.validate().map_err(OnnxError::InvalidModel)?;
    check_encoder_metadata(config, metadata)?;
    if config.max_length > weights.config.max_position_embeddings {
        return Err(OnnxError::InvalidModel(format!(
            "max_length {} exceeds the {} positions the encoder has",
            config.max_length, weights.config.max_position_embeddings
        )));
    }
    let bytes: u64 = (weights.parameter_count() as u64) * 4;
    if bytes > super::MAX_INITIALIZER_BYTES {
        return Err(OnnxError::TooLarge {
            bytes,
            limit: super::MAX_INITIALIZER_BYTES,
        });
    }
    let mut builder = GraphBuilder {
        precision,
        ..GraphBuilder::default()
    };
    builder.graph(weights);
    let token_dims = [Dim::Named("batch"), Dim::Named("tokens")];
    let mut model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET_VERSION),
        }],
        graph: Some(GraphProto {
            node: builder.nodes,
            initializer: builder.initializers,
            input: vec![
                value_info(INPUT_NAME, DataType::Int64, &token_dims),
                value_info(ATTENTION_MASK_NAME, DataType::Int64, &token_dims),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let doc = format!(
        "sentiflow encoder family: fine-tuned {} ({} layers, hidden {}, {}) + masked mean pooling + \
         linear head + softmax",
        config.base_model,
        weights.config.num_hidden_layers,
        weights.config.hidden_size,
        precision.as_str()
    );
    seal_encoder_model(&mut model, config, metadata, doc)?;
    Ok(model.encode_to_vec())
}

/// Accumulates nodes and initializers in topological order.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    precision: BertPrecision,
}

impl GraphBuilder {
    fn graph(&mut self, weights: &BertClassifierWeights) {
        let config = &weights.config;
        let hidden = config.hidden_size;
        self.constants(weights);

        // Embeddings: word + position (0..tokens) + token type 0, then LayerNorm.
        self.weight(
            "bert.word_embeddings",
            &[config.vocab_size, hidden],
            &weights.word_embeddings,
        );
        self.weight(
            "bert.position_embeddings",
            &[config.max_position_embeddings, hidden],
            &weights.position_embeddings,
        );
        self.weight(
            "bert.token_type_embedding",
            &[hidden],
            &weights.token_type_embedding,
        );
        self.op("Gather", &["bert.word_embeddings", INPUT_NAME], "emb.word");
        self.op("Shape", &[INPUT_NAME], "emb.shape");
        self.op_with(
            "Gather",
            &["emb.shape", "const.one_i64"],
            "emb.tokens",
            vec![int_attribute("axis", 0)],
        );
        self.op(
            "Range",
            &["const.zero_i64", "emb.tokens", "const.one_i64"],
            "emb.positions",
        );
        self.op(
            "Gather",
            &["bert.position_embeddings", "emb.positions"],
            "emb.position",
        );
        self.op("Add", &["emb.word", "emb.position"], "emb.word_position");
        self.op(
            "Add",
            &["emb.word_position", "bert.token_type_embedding"],
            "emb.sum",
        );
        let mut x = self.layer_norm(
            "emb.sum",
            "bert.embedding_norm",
            &weights.embedding_norm,
            config.layer_norm_eps,
        );

        // Attention mask [B,1,1,T] (true = real token), shared by every layer.
        self.op_with(
            "Cast",
            &[ATTENTION_MASK_NAME],
            "mask.bool",
            vec![int_attribute("to", DataType::Bool as i64)],
        );
        self.op("Unsqueeze", &["mask.bool", "const.axes_1_2"], "mask.keys");

        for (index, layer) in weights.layers.iter().enumerate() {
            let p = format!("layer{index}");
            let q = self.dense(&x, &format!("{p}.query"), &layer.query);
            let k = self.dense(&x, &format!("{p}.key"), &layer.key);
            let v = self.dense(&x, &format!("{p}.value"), &layer.value);
            let q = self.split_heads(&q, &format!("{p}.q"), [0, 2, 1, 3]);
            let k = self.split_heads(&k, &format!("{p}.k"), [0, 2, 3, 1]);
            let v = self.split_heads(&v, &format!("{p}.v"), [0, 2, 1, 3]);
            self.op("MatMul", &[&q, &k], &format!("{p}.scores_raw"));
            self.op(
                "Div",
                &[&format!("{p}.scores_raw"), "const.sqrt_head_dim"],
                &format!("{p}.scores"),
            );
            self.op(
                "Where",
                &["mask.keys", &format!("{p}.scores"), "const.mask_fill"],
                &format!("{p}.scores_masked"),
            );
            self.op_with(
                "Softmax",
                &[&format!("{p}.scores_masked")],
                &format!("{p}.attention"),
                vec![int_attribute("axis", -1)],
            );
            self.op(
                "MatMul",
                &[&format!("{p}.attention"), &v],
                &format!("{p}.context_heads"),
            );
            self.op_with(
                "Transpose",
                &[&format!("{p}.context_heads")],
                &format!("{p}.context_tokens"),
                vec![ints_attribute("perm", &[0, 2, 1, 3])],
            );
            self.op(
                "Reshape",
                &[&format!("{p}.context_tokens"), "const.shape_hidden"],
                &format!("{p}.context"),
            );
            let attended = self.dense(
                &format!("{p}.context"),
                &format!("{p}.attention_output"),
                &layer.attention_output,
            );
            self.op("Add", &[&x, &attended], &format!("{p}.attention_residual"));
            let x1 = self.layer_norm(
                &format!("{p}.attention_residual"),
                &format!("{p}.attention_norm"),
                &layer.attention_norm,
                config.layer_norm_eps,
            );
            let inner = self.dense(&x1, &format!("{p}.intermediate"), &layer.intermediate);
            // Exact GELU: 0.5 · x · (1 + erf(x / √2)).
            self.op(
                "Div",
                &[&inner, "const.sqrt_2"],
                &format!("{p}.gelu_scaled"),
            );
            self.op(
                "Erf",
                &[&format!("{p}.gelu_scaled")],
                &format!("{p}.gelu_erf"),
            );
            self.op(
                "Add",
                &[&format!("{p}.gelu_erf"), "const.one_f32"],
                &format!("{p}.gelu_gate"),
            );
            self.op(
                "Mul",
                &[&inner, &format!("{p}.gelu_gate")],
                &format!("{p}.gelu_double"),
            );
            self.op(
                "Mul",
                &[&format!("{p}.gelu_double"), "const.half"],
                &format!("{p}.gelu"),
            );
            let out = self.dense(&format!("{p}.gelu"), &format!("{p}.output"), &layer.output);
            self.op("Add", &[&x1, &out], &format!("{p}.output_residual"));
            x = self.layer_norm(
                &format!("{p}.output_residual"),
                &format!("{p}.output_norm"),
                &layer.output_norm,
                config.layer_norm_eps,
            );
        }

        // Masked mean pooling as a batched MatMul `[B,1,T] x [B,T,H]`; a row without tokens pools
        // to zeros instead of dividing by zero.
        self.op_with(
            "Cast",
            &[ATTENTION_MASK_NAME],
            "pool.mask",
            vec![int_attribute("to", self.float_type() as i64)],
        );
        self.op("Unsqueeze", &["pool.mask", "const.axis_1"], "pool.mask_row");
        self.op("MatMul", &["pool.mask_row", &x], "pool.sum_3d");
        self.op("Squeeze", &["pool.sum_3d", "const.axis_1"], "pool.sum");
        self.op_with(
            "ReduceSum",
            &["pool.mask", "const.axis_1"],
            "pool.count",
            vec![int_attribute("keepdims", 1)],
        );
        self.op("Max", &["pool.count", "const.one_f32"], "pool.divisor");
        self.op("Div", &["pool.sum", "pool.divisor"], "pool.mean");
        let head = &weights.head;
        self.weight("head.weight", &[head.d_in, head.d_out], &head.weight);
        self.weight("head.bias", &[head.d_out], &head.bias);
        self.op(
            "Gemm",
            &["pool.mean", "head.weight", "head.bias"],
            "head.logits",
        );
        let logits = match self.precision {
            BertPrecision::F32 => "head.logits",
            BertPrecision::F16 => {
                self.op_with(
                    "Cast",
                    &["head.logits"],
                    "head.logits_f32",
                    vec![int_attribute("to", DataType::Float as i64)],
                );
                "head.logits_f32"
            }
        };
        self.op_with(
            "Softmax",
            &[logits],
            super::OUTPUT_NAME,
            vec![int_attribute("axis", -1)],
        );
    }

    fn constants(&mut self, weights: &BertClassifierWeights) {
        let config = &weights.config;
        let head_dim = config.head_dim();
        self.initializers.extend([
            i64_tensor("const.zero_i64", &[], &[0]),
            i64_tensor("const.one_i64", &[], &[1]),
            i64_tensor("const.axis_1", &[1], &[1]),
            i64_tensor("const.axes_1_2", &[2], &[1, 2]),
            i64_tensor(
                "const.shape_heads",
                &[4],
                &[0, 0, to_i64(config.num_attention_heads), to_i64(head_dim)],
            ),
            i64_tensor(
                "const.shape_hidden",
                &[3],
                &[0, 0, to_i64(config.hidden_size)],
            ),
        ]);
        // After the int64 constants, as the fp32 files always had them (same bytes as before).
        let float_constants = [
            ("const.one_f32", 1.0),
            ("const.half", 0.5),
            ("const.sqrt_2", std::f32::consts::SQRT_2),
            ("const.sqrt_head_dim", (head_dim as f32).sqrt()),
            ("const.mask_fill", ATTENTION_MASK_FILL),
        ];
        for (name, value) in float_constants {
            self.weight(name, &[], &[value]);
        }
    }

    fn op(&mut self, op_type: &str, inputs: &[&str], output: &str) {
        self.op_with(op_type, inputs, output, vec![]);
    }

    fn op_with(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) {
        self.nodes
            .push(node(op_type, inputs, &[output], attributes));
    }

    /// A float initializer in the graph's precision.
    fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        self.initializers.push(match self.precision {
            BertPrecision::F32 => f32_tensor(name, dims, values),
            BertPrecision::F16 => f16_tensor(name, dims, values),
        });
    }

    /// The element type of the graph's float tensors.
    fn float_type(&self) -> DataType {
        match self.precision {
            BertPrecision::F32 => DataType::Float,
            BertPrecision::F16 => DataType::Float16,
        }
    }

    /// `input · weight + bias`; returns the output name.
    fn dense(&mut self, input: &str, name: &str, dense: &DenseWeights) -> String {
        let weight = format!("{name}.weight");
        let bias = format!("{name}.bias");
        self.weight(&weight, &[dense.d_in, dense.d_out], &dense.weight);
        self.weight(&bias, &[dense.d_out], &dense.bias);
        let product = format!("{name}.matmul");
        self.op("MatMul", &[input, &weight], &product);
        let output = format!("{name}.out");
        self.op("Add", &[&product, &bias], &output);
        output
    }

    /// `[B,T,H]` → `[B,T,heads,head_dim]` → transposed by `perm`; returns the output name.
    fn split_heads(&mut self, input: &str, name: &str, perm: [i64; 4]) -> String {
        let split = format!("{name}.split");
        self.op("Reshape", &[input, "const.shape_heads"], &split);
        let output = format!("{name}.heads");
        self.op_with(
            "Transpose",
            &[&split],
            &output,
            vec![ints_attribute("perm", &perm)],
        );
        output
    }

    fn layer_norm(&mut self, input: &str, name: &str, norm: &NormWeights, epsilon: f64) -> String {
        let gamma = format!("{name}.gamma");
        let beta = format!("{name}.beta");
        self.weight(&gamma, &[norm.gamma.len()], &norm.gamma);
        self.weight(&beta, &[norm.beta.len()], &norm.beta);
        let output = format!("{name}.out");
        self.op_with(
            "LayerNormalization",
            &[input, &gamma, &beta],
            &output,
            vec![
                int_attribute("axis", -1),
                AttributeProto {
                    name: Some("epsilon".to_owned()),
                    r#type: Some(AttributeType::Float as i32),
                    #[allow(
                        clippy::cast_possible_truncation,
                        reason = "ONNX stores epsilon as f32"
                    )]
                    f: Some(epsilon as f32),
                    ..Default::default()
                },
            ],
        );
        output
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn to_i64(value: usize) -> i64 {
    i64::try_from(value).expect("model dimensions fit in i64")
}
