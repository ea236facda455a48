//! Export of the hashed embedding-bag family to ONNX (IR 8, opset 17), computing exactly what
//! [`HashedModel::predict_ids`] computes, and the checksum of its weights.

use prost::Message;
use sha2::{Digest, Sha256};

use super::build::{
    Dim, f32_le_bytes, f32_tensor, i64_tensor, int_attribute, node, string_entry, value_info,
};
use super::proto::{GraphProto, ModelProto, OperatorSetIdProto, tensor_proto::DataType};
use super::{
    FAMILY_HASHED, INPUT_NAME, IR_VERSION, MAX_INITIALIZER_BYTES, ModelMetadata, OPSET_VERSION,
    OUTPUT_NAME, OnnxError,
};
use crate::hashed::{CLASSES, HashedModel, PADDING_ID};

/// Initializer names; [`super::verify_structure`] finds the weights by them.
pub(super) const EMBEDDINGS: &str = "embeddings";
pub(super) const WEIGHTS: &str = "weights";
pub(super) const BIAS: &str = "bias";

/// Lower-case hex sha256 over the little-endian f32 bytes of the embeddings, then the weights, then
/// the bias: the `weights_sha256` of a hashed model's metadata.
pub fn weights_sha256(model: &HashedModel) -> String {
    let mut hasher = Sha256::new();
    // Chunked so a 268 MB table is not copied whole just to be hashed.
    for values in [&model.embeddings[..], &model.weights[..], &model.bias[..]] {
        for chunk in values.chunks(16 * 1024) {
            hasher.update(f32_le_bytes(chunk));
        }
    }
    hex::encode(hasher.finalize())
}

/// Writes `model` as an ONNX file whose output agrees with [`HashedModel::predict_ids`] (to float
/// rounding). The same model and metadata always give the same bytes.
///
/// `metadata.family` must be [`FAMILY_HASHED`]; an empty `metadata.weights_sha256` is filled in, a
/// non-empty one must equal [`weights_sha256`] of the model.
///
/// Graph (`B` = batch, `T` = tokens, `D` = dim), 12 nodes:
/// `Gather(embeddings, input_ids)` → vectors `[B,T,D]`; mask = `Cast<float>(Not(Equal(input_ids, 0)))`
/// → `[B,T]`; sum = `Squeeze(MatMul(Unsqueeze(mask, 1), vectors), 1)` → `[B,D]`;
/// pooled = `sum / Max(ReduceSum(mask, 1, keepdims), 1)`; `Softmax(Gemm(pooled, weights, bias), -1)`
/// → `[B,3]`.
pub fn export_hashed(model: &HashedModel, metadata: &ModelMetadata) -> Result<Vec<u8>, OnnxError> {
    // From the declared shape, before anything is allocated or checked against the vectors.
    let bytes = (model.buckets as u64)
        .saturating_add(CLASSES as u64)
        .saturating_mul(model.dim as u64)
        .saturating_add(CLASSES as u64)
        .saturating_mul(4);
    if bytes > MAX_INITIALIZER_BYTES {
        return Err(OnnxError::TooLarge {
            bytes,
            limit: MAX_INITIALIZER_BYTES,
        });
    }
    model.check_shape().map_err(OnnxError::InvalidModel)?;
    metadata.validate()?;
    if metadata.family != FAMILY_HASHED {
        return Err(OnnxError::Metadata(format!(
            "family is `{}`, but this exporter writes `{FAMILY_HASHED}` models",
            metadata.family
        )));
    }
    let checksum = weights_sha256(model);
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

    let onnx = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET_VERSION) }],
        producer_name: Some("sentiflow-model".to_owned()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        doc_string: Some(
            "sentiflow hashed n-gram embedding bag: masked mean of embedding rows, linear layer, softmax"
                .to_owned(),
        ),
        graph: Some(graph(model)),
        metadata_props: metadata.to_props().iter().map(|(key, value)| string_entry(key, value)).collect(),
        ..Default::default()
    };
    let encoded_len = onnx.encoded_len();
    if encoded_len > i32::MAX as usize {
        // Unreachable below MAX_INITIALIZER_BYTES, but a reader would reject such a file outright.
        return Err(OnnxError::TooLarge {
            bytes: encoded_len as u64,
            limit: MAX_INITIALIZER_BYTES,
        });
    }
    Ok(onnx.encode_to_vec())
}

/// The graph; node and tensor names are fixed, so the bytes depend only on the weights.
pub(super) fn graph(model: &HashedModel) -> GraphProto {
    // Intermediate tensor names.
    const VECTORS: &str = "token_vectors";
    const IS_PADDING: &str = "is_padding";
    const NOT_PADDING: &str = "not_padding";
    const MASK: &str = "mask";
    const MASK_ROW: &str = "mask_row";
    const SUM_3D: &str = "vector_sum_3d";
    const SUM: &str = "vector_sum";
    const COUNT: &str = "token_count";
    const DIVISOR: &str = "divisor";
    const POOLED: &str = "pooled";
    const LOGITS: &str = "logits";
    // Constant initializer names.
    const PADDING: &str = "padding_id";
    const ONE: &str = "one";
    const TOKEN_AXIS: &str = "token_axis";

    let nodes = vec![
        node(
            "Gather",
            &[EMBEDDINGS, INPUT_NAME],
            &[VECTORS],
            vec![int_attribute("axis", 0)],
        ),
        node("Equal", &[INPUT_NAME, PADDING], &[IS_PADDING], vec![]),
        node("Not", &[IS_PADDING], &[NOT_PADDING], vec![]),
        node(
            "Cast",
            &[NOT_PADDING],
            &[MASK],
            vec![int_attribute("to", DataType::Float as i64)],
        ),
        // Masked sum as a batched MatMul `[B,1,T] x [B,T,D]`: the reference skips padding ids instead
        // of trusting row 0 to be zero, and one MatMul measured ~1.5x faster on ORT's CPU EP than
        // Mul + ReduceSum over the token axis (0/1 weights keep it exact up to summation order).
        node("Unsqueeze", &[MASK, TOKEN_AXIS], &[MASK_ROW], vec![]),
        node("MatMul", &[MASK_ROW, VECTORS], &[SUM_3D], vec![]),
        node("Squeeze", &[SUM_3D, TOKEN_AXIS], &[SUM], vec![]),
        node(
            "ReduceSum",
            &[MASK, TOKEN_AXIS],
            &[COUNT],
            vec![int_attribute("keepdims", 1)],
        ),
        // An all-padding row divides a zero sum by 1: logits = bias, as in the reference.
        node("Max", &[COUNT, ONE], &[DIVISOR], vec![]),
        node("Div", &[SUM, DIVISOR], &[POOLED], vec![]),
        node("Gemm", &[POOLED, WEIGHTS, BIAS], &[LOGITS], vec![]),
        node(
            "Softmax",
            &[LOGITS],
            &[OUTPUT_NAME],
            vec![int_attribute("axis", -1)],
        ),
    ];
    let initializers = vec![
        f32_tensor(EMBEDDINGS, &[model.buckets, model.dim], &model.embeddings),
        f32_tensor(WEIGHTS, &[model.dim, CLASSES], &model.weights),
        f32_tensor(BIAS, &[CLASSES], &model.bias),
        i64_tensor(PADDING, &[], &[PADDING_ID]),
        f32_tensor(ONE, &[], &[1.0]),
        i64_tensor(TOKEN_AXIS, &[1], &[1]),
    ];
    GraphProto {
        name: Some("sentiflow_hashed".to_owned()),
        node: nodes,
        initializer: initializers,
        input: vec![value_info(
            INPUT_NAME,
            DataType::Int64,
            &[Dim::Named("batch"), Dim::Named("tokens")],
        )],
        output: vec![value_info(
            OUTPUT_NAME,
            DataType::Float,
            &[Dim::Named("batch"), Dim::Fixed(CLASSES)],
        )],
        ..Default::default()
    }
}
