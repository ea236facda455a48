//! Blended encoder-family graphs: a finished encoder model and a hashed model in one ONNX file whose
//! `probabilities` are `(1 − w)·encoder + w·hashed`, so serving, the registry and the gate handle the
//! average of both families as one model of the `encoder` family.
//!
//! The hashed graph is added with every name prefixed by [`HASHED_PREFIX`]; its input becomes the
//! third graph input [`HASHED_IDS_NAME`] (int64 `[batch, features]`, the hashed featurizer's ids,
//! padding 0). The member is recorded in the metadata's encoder config
//! ([`crate::encoder::HashedMember`]), from which serving rebuilds its featurizer.

use std::collections::HashSet;

use prost::Message;

use super::build::{Dim, f32_le_bytes, f32_tensor, node, value_info};
use super::encoder::{check_encoder_metadata, seal_encoder_model};
use super::proto::{GraphProto, ModelProto, tensor_proto::DataType};
use super::{
    INPUT_NAME, MAX_INITIALIZER_BYTES, ModelMetadata, OUTPUT_NAME, OnnxError, weights_sha256,
};
use crate::encoder::{EncoderConfig, HashedMember};
use crate::hashed::{CLASSES, HashedModel};

/// Name of a blended graph's third input: the hashed member's feature ids, int64 `[batch, features]`.
pub const HASHED_IDS_NAME: &str = "hashed_ids";

/// Prefix of every node, value and initializer name of the hashed member inside a blended graph.
pub const HASHED_PREFIX: &str = "sentiflow_hashed/";

/// The encoder part's probabilities inside a blended graph (its `probabilities`, renamed).
const ENCODER_PROBABILITIES: &str = "sentiflow_blend/encoder_probabilities";
const ENCODER_SHARE: &str = "sentiflow_blend/encoder_share";
const HASHED_SHARE: &str = "sentiflow_blend/hashed_share";
const ENCODER_PART: &str = "sentiflow_blend/encoder_part";
const HASHED_PART: &str = "sentiflow_blend/hashed_part";

/// The name a value of the hashed graph takes inside the blend.
fn hashed_name(name: &str) -> String {
    match name {
        INPUT_NAME => HASHED_IDS_NAME.to_owned(),
        "" => String::new(),
        other => format!("{HASHED_PREFIX}{other}"),
    }
}

/// Writes the blend of `encoder_onnx` (a finished encoder-family file of this crate's exporters,
/// frozen or fine-tuned) and `hashed`. `config` is the encoder file's own config plus the
/// [`crate::encoder::HashedMember`] (its weight, featurizer and `weights_sha256`, which must be the
/// hashed model's); `metadata` names the blend (family `encoder`, `featurizer_config` = `config`'s
/// canonical JSON and hash; `weights_sha256` over every initializer of the blend, filled in when
/// empty). The same inputs give the same bytes.
pub fn export_blend(
    encoder_onnx: &[u8],
    hashed: &HashedModel,
    config: &EncoderConfig,
    metadata: &ModelMetadata,
) -> Result<Vec<u8>, OnnxError> {
    let member = config.hashed_member.as_ref().ok_or_else(|| {
        OnnxError::Metadata("a blend's encoder config must name its hashed member".to_owned())
    })?;
    check_encoder_metadata(config, metadata)?;
    hashed.check_shape().map_err(OnnxError::InvalidModel)?;
    // Both models' weights go into one protobuf message, which readers cap at 2 GiB.
    let member_bytes = ((hashed.buckets + CLASSES) * hashed.dim + CLASSES) as u64 * 4;
    let total = member_bytes.saturating_add(encoder_onnx.len() as u64);
    if total > MAX_INITIALIZER_BYTES {
        return Err(OnnxError::TooLarge {
            bytes: total,
            limit: MAX_INITIALIZER_BYTES,
        });
    }
    if member.featurizer_config.buckets != hashed.buckets {
        return Err(OnnxError::InvalidModel(format!(
            "the member's featurizer has {} buckets, the hashed model {}",
            member.featurizer_config.buckets, hashed.buckets
        )));
    }
    let actual = weights_sha256(hashed);
    if member.weights_sha256 != actual {
        return Err(OnnxError::ChecksumMismatch {
            declared: member.weights_sha256.clone(),
            actual,
        });
    }
    let encoder_config = super::read_metadata(encoder_onnx)
        .and_then(|encoder_metadata| {
            crate::encoder::tokenize::encoder_config(&encoder_metadata)
                .map_err(|error| OnnxError::Metadata(error.to_string()))
        })
        .map_err(|error| OnnxError::Metadata(format!("the encoder file: {error}")))?;
    if encoder_config.hashed_member.is_some() {
        return Err(OnnxError::Metadata(
            "the encoder file is a blend already".to_owned(),
        ));
    }
    if encoder_config != config.encoder_only() {
        return Err(OnnxError::Metadata(
            "the blend's encoder config must be the encoder file's config plus the member"
                .to_owned(),
        ));
    }

    let mut model =
        ModelProto::decode(encoder_onnx).map_err(|error| OnnxError::Decode(error.to_string()))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Structure("the encoder file has no graph".to_owned()))?;
    let taken: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|node| node.output.iter().map(String::as_str))
        .chain(graph.initializer.iter().filter_map(|t| t.name.as_deref()))
        .chain(graph.input.iter().filter_map(|input| input.name.as_deref()))
        .chain(graph.node.iter().filter_map(|node| node.name.as_deref()))
        .collect();
    if let Some(clash) = taken.iter().find(|name| {
        name.starts_with(HASHED_PREFIX)
            || name.starts_with("sentiflow_blend/")
            || **name == HASHED_IDS_NAME
    }) {
        return Err(OnnxError::Structure(format!(
            "the encoder graph already defines `{clash}`"
        )));
    }
    // Node names are unique in a graph too: the encoder's softmax is named after its output.
    for node in &mut graph.node {
        if node.name.as_deref() == Some(OUTPUT_NAME) {
            node.name = Some(ENCODER_PROBABILITIES.to_owned());
        }
        for output in &mut node.output {
            if output == OUTPUT_NAME {
                ENCODER_PROBABILITIES.clone_into(output);
            }
        }
    }

    let mut member_graph = super::hashed::graph(hashed);
    for node in &mut member_graph.node {
        node.name = node.name.as_deref().map(hashed_name);
        for value in node.input.iter_mut().chain(node.output.iter_mut()) {
            *value = hashed_name(value);
        }
    }
    for tensor in &mut member_graph.initializer {
        tensor.name = tensor.name.as_deref().map(hashed_name);
    }
    graph.node.append(&mut member_graph.node);
    graph.initializer.append(&mut member_graph.initializer);
    graph.input.push(value_info(
        HASHED_IDS_NAME,
        DataType::Int64,
        &[Dim::Named("batch"), Dim::Named("features")],
    ));
    let hashed_probabilities = hashed_name(OUTPUT_NAME);
    graph
        .initializer
        .push(f32_tensor(ENCODER_SHARE, &[], &[1.0 - member.weight]));
    graph
        .initializer
        .push(f32_tensor(HASHED_SHARE, &[], &[member.weight]));
    graph.node.extend([
        node(
            "Mul",
            &[ENCODER_PROBABILITIES, ENCODER_SHARE],
            &[ENCODER_PART],
            vec![],
        ),
        node(
            "Mul",
            &[&hashed_probabilities, HASHED_SHARE],
            &[HASHED_PART],
            vec![],
        ),
        node("Add", &[ENCODER_PART, HASHED_PART], &[OUTPUT_NAME], vec![]),
    ]);
    let doc = format!(
        "sentiflow encoder family, blended: {} ({}) × {} + hashed n-gram embedding bag × {}",
        config.base_model,
        if config.fine_tuned {
            "fine-tuned"
        } else {
            "frozen, trained head"
        },
        1.0 - member.weight,
        member.weight
    );
    seal_encoder_model(&mut model, config, metadata, doc)?;
    Ok(model.encode_to_vec())
}

/// Checks that a blended graph computes what its config says: `probabilities` is the `Add` of the
/// encoder part and the hashed part, each a `Mul` of that model's probabilities by a share
/// initializer holding exactly `1 − weight` and `weight`. [`super::verify_structure`] runs it, so a
/// file cannot advertise one weight (in `/healthz`, the card) and compute with another.
pub(super) fn check_blend_wiring(
    graph: &GraphProto,
    member: &HashedMember,
) -> Result<(), OnnxError> {
    let structure = |message: String| Err(OnnxError::Structure(message));
    let producer = |output: &str| {
        graph
            .node
            .iter()
            .find(|node| node.output.iter().any(|name| name == output))
    };
    let hashed_probabilities = hashed_name(OUTPUT_NAME);
    for (output, op, inputs) in [
        (OUTPUT_NAME, "Add", [ENCODER_PART, HASHED_PART]),
        (ENCODER_PART, "Mul", [ENCODER_PROBABILITIES, ENCODER_SHARE]),
        (
            HASHED_PART,
            "Mul",
            [hashed_probabilities.as_str(), HASHED_SHARE],
        ),
    ] {
        let Some(node) = producer(output) else {
            return structure(format!("a blend without a node producing `{output}`"));
        };
        if node.op_type.as_deref() != Some(op) || node.input != inputs {
            return structure(format!(
                "a blend's `{output}` must be {op}({inputs:?}), found {}({:?})",
                node.op_type.as_deref().unwrap_or(""),
                node.input
            ));
        }
    }
    for (name, value) in [
        (ENCODER_SHARE, 1.0 - member.weight),
        (HASHED_SHARE, member.weight),
    ] {
        let holds = graph
            .initializer
            .iter()
            .find(|tensor| tensor.name.as_deref() == Some(name))
            .and_then(|tensor| tensor.raw_data.as_deref())
            == Some(f32_le_bytes(&[value]).as_slice());
        if !holds {
            return structure(format!(
                "a blend's `{name}` must hold {value} (the config's weight is {})",
                member.weight
            ));
        }
    }
    Ok(())
}
