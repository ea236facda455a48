//! Reading ONNX files back: the metadata alone (cheap, skips the weights) and a structural check of
//! the whole graph against the sentiflow contract, run by serving before it builds a session.

use std::borrow::Cow;
use std::collections::HashSet;

use prost::Message;
use sha2::{Digest, Sha256};

use super::hashed::{BIAS, EMBEDDINGS, WEIGHTS};
use super::proto::{
    ModelProto, StringStringEntryProto, TensorProto, ValueInfoProto, tensor_proto::DataType,
    tensor_shape_proto::dimension, type_proto,
};
use super::{
    ATTENTION_MASK_NAME, Family, HASHED_IDS_NAME, HASHED_PREFIX, INPUT_NAME, MAX_LENGTH_KEY,
    ModelMetadata, OUTPUT_NAME, OnnxError, TOKENIZER_SHA256_KEY,
};
use crate::encoder::HashedMember;
use crate::hashed::CLASSES;

/// Only the `metadata_props` field (14) of `ModelProto`: prost skips the other fields without
/// copying them, so reading the metadata of a 268 MB model allocates a few strings, not the weights.
#[derive(Clone, PartialEq, Message)]
struct MetadataOnly {
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

/// Reads the [`ModelMetadata`] of an ONNX file without decoding its graph or weights.
pub fn read_metadata(bytes: &[u8]) -> Result<ModelMetadata, OnnxError> {
    let header =
        MetadataOnly::decode(bytes).map_err(|error| OnnxError::Decode(error.to_string()))?;
    metadata_from(&header.metadata_props)
}

fn metadata_from(props: &[StringStringEntryProto]) -> Result<ModelMetadata, OnnxError> {
    ModelMetadata::from_props(props.iter().map(|entry| {
        (
            entry.key.as_deref().unwrap_or(""),
            entry.value.as_deref().unwrap_or(""),
        )
    }))
}

/// What [`verify_structure`] learnt about an accepted file.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphSummary {
    /// The file's metadata.
    pub metadata: ModelMetadata,
    /// The model family, parsed from the metadata: decides the inputs (see [`Family`]).
    pub family: Family,
    /// ONNX IR version of the file.
    pub ir_version: i64,
    /// Version of the default-domain opset the graph imports.
    pub opset_version: i64,
    /// Rows of the table that `input_ids` index (the data of the `Gather` reading `input_ids`), when
    /// the graph has one: ids at or above it are invalid.
    pub vocab_size: Option<usize>,
    /// A blended encoder file's hashed member (from its encoder config) and the rows of the member's
    /// embedding table, which [`HASHED_IDS_NAME`] indexes; `None` for every other file.
    pub hashed_member: Option<(HashedMember, usize)>,
    /// Number of nodes in the graph.
    pub node_count: usize,
    /// Total bytes of initializer data.
    pub initializer_bytes: u64,
}

/// Decodes a whole ONNX file and checks it against the sentiflow contract: metadata present and
/// valid with a known family; input `input_ids` int64 of rank 2 (the encoder family also
/// `attention_mask`, same type; a blend, whose encoder config names a hashed member, also
/// `hashed_ids`); one output `probabilities` float `[batch, 3]`; every node input defined; the
/// weights hash to the declared `weights_sha256` (hashed: its three tensors; encoder: every
/// initializer), an encoder file's tokenizer and max-length entries match its config, and a blend's
/// member tensors hash to the member's `weights_sha256`, its table has the member's bucket count and
/// its shares are the member's weight. Serving runs this before building a session, so a file is
/// judged by its contents, never by its name.
pub fn verify_structure(bytes: &[u8]) -> Result<GraphSummary, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|error| OnnxError::Decode(error.to_string()))?;
    let metadata = metadata_from(&model.metadata_props)?;
    let family = metadata.family_kind()?;
    let structure = |message: String| OnnxError::Structure(message);

    let ir_version = model
        .ir_version
        .ok_or_else(|| structure("ir_version is missing".to_owned()))?;
    let opset_version = model
        .opset_import
        .iter()
        .find(|opset| {
            opset.domain.as_deref().unwrap_or("").is_empty()
                || opset.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|opset| opset.version)
        .ok_or_else(|| structure("no default-domain opset is imported".to_owned()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| structure("the model has no graph".to_owned()))?;

    let initializer_names: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|tensor| tensor.name.as_deref())
        .collect();
    // IR < 4 listed initializers among the inputs too; only the others are fed at run time.
    let fed_inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|input| !initializer_names.contains(input.name.as_deref().unwrap_or("")))
        .collect();
    let member = match family {
        Family::Hashed => None,
        Family::Encoder => {
            crate::encoder::tokenize::encoder_config(&metadata)
                .map_err(|error| OnnxError::Metadata(error.to_string()))?
                .hashed_member
        }
    };
    let expected_inputs: &[&str] = match (family.needs_attention_mask(), &member) {
        (false, _) => &[INPUT_NAME],
        (true, None) => &[INPUT_NAME, ATTENTION_MASK_NAME],
        (true, Some(_)) => &[INPUT_NAME, ATTENTION_MASK_NAME, HASHED_IDS_NAME],
    };
    let fed_names: Vec<&str> = fed_inputs
        .iter()
        .map(|input| input.name.as_deref().unwrap_or(""))
        .collect();
    let mut sorted_fed = fed_names.clone();
    sorted_fed.sort_unstable();
    let mut sorted_expected = expected_inputs.to_vec();
    sorted_expected.sort_unstable();
    if sorted_fed != sorted_expected {
        return Err(structure(format!(
            "a `{family}` model must have exactly the inputs {expected_inputs:?}, found {fed_names:?}"
        )));
    }
    for input in &fed_inputs {
        check_tensor_type(input, DataType::Int64, 2, None)?;
    }
    match graph.output.as_slice() {
        [output] if output.name.as_deref() == Some(OUTPUT_NAME) => {
            check_tensor_type(output, DataType::Float, 2, Some(CLASSES))?;
        }
        outputs => {
            return Err(structure(format!(
                "expected exactly one output `{OUTPUT_NAME}`, found {:?}",
                outputs
                    .iter()
                    .map(|output| output.name.as_deref().unwrap_or(""))
                    .collect::<Vec<_>>()
            )));
        }
    }

    // Every value a node reads must come from somewhere, and the output must be produced.
    let mut defined: HashSet<&str> = initializer_names.clone();
    defined.extend(expected_inputs.iter().copied());
    for node in &graph.node {
        defined.extend(node.output.iter().map(String::as_str));
    }
    for node in &graph.node {
        if let Some(missing) = node
            .input
            .iter()
            .find(|input| !input.is_empty() && !defined.contains(input.as_str()))
        {
            return Err(structure(format!(
                "node `{}` ({}) reads `{missing}`, which nothing defines",
                node.name.as_deref().unwrap_or(""),
                node.op_type.as_deref().unwrap_or("")
            )));
        }
    }
    if !graph
        .node
        .iter()
        .any(|node| node.output.iter().any(|output| output == OUTPUT_NAME))
    {
        return Err(structure(format!("no node produces `{OUTPUT_NAME}`")));
    }

    let initializer = |name: &str| {
        graph
            .initializer
            .iter()
            .find(|tensor| tensor.name.as_deref() == Some(name))
    };
    let table_rows = |input: &str| {
        graph
            .node
            .iter()
            .find(|node| {
                node.op_type.as_deref() == Some("Gather")
                    && node.input.get(1).map(String::as_str) == Some(input)
            })
            .and_then(|node| initializer(node.input.first()?))
            .and_then(|table| table.dims.first().copied())
            .and_then(|rows| usize::try_from(rows).ok())
    };
    let vocab_size = table_rows(INPUT_NAME);

    let hashed_member = match family {
        Family::Hashed => {
            check_hashed_weights("", &metadata.weights_sha256, &initializer)?;
            None
        }
        Family::Encoder => {
            check_encoder_file(&metadata, &model.metadata_props, graph)?;
            match member {
                None => None,
                Some(member) => {
                    // The whole graph's checksum covers the member already; this ties the member's
                    // tensors to the hashed model the config names, and the wiring to its weight.
                    check_hashed_weights(HASHED_PREFIX, &member.weights_sha256, &initializer)?;
                    super::blend::check_blend_wiring(graph, &member)?;
                    let rows = table_rows(HASHED_IDS_NAME).ok_or_else(|| {
                        structure(format!("no `Gather` reads `{HASHED_IDS_NAME}`"))
                    })?;
                    if rows != member.featurizer_config.buckets {
                        return Err(structure(format!(
                            "the hashed member's table has {rows} rows, its featurizer {} buckets",
                            member.featurizer_config.buckets
                        )));
                    }
                    Some((member, rows))
                }
            }
        }
    };

    Ok(GraphSummary {
        metadata,
        family,
        ir_version,
        opset_version,
        vocab_size,
        hashed_member,
        node_count: graph.node.len(),
        initializer_bytes: graph.initializer.iter().map(stored_bytes).sum(),
    })
}

/// Checks a declared tensor's element type, rank and (when given) fixed last dimension.
fn check_tensor_type(
    value: &ValueInfoProto,
    elem_type: DataType,
    rank: usize,
    last_dim: Option<usize>,
) -> Result<(), OnnxError> {
    let name = value.name.as_deref().unwrap_or("");
    let Some(type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|ty| ty.value.as_ref())
    else {
        return Err(OnnxError::Structure(format!(
            "`{name}` is not declared as a tensor"
        )));
    };
    if tensor.elem_type != Some(elem_type as i32) {
        return Err(OnnxError::Structure(format!(
            "`{name}` has element type {:?}, expected {}",
            tensor.elem_type.and_then(|ty| DataType::try_from(ty).ok()),
            elem_type.as_str_name()
        )));
    }
    let dims = tensor
        .shape
        .as_ref()
        .map(|shape| shape.dim.as_slice())
        .unwrap_or_default();
    if dims.len() != rank {
        return Err(OnnxError::Structure(format!(
            "`{name}` has rank {}, expected {rank}",
            dims.len()
        )));
    }
    if let Some(expected) = last_dim
        && let Some(dimension::Value::DimValue(actual)) =
            dims.last().and_then(|dim| dim.value.as_ref())
        && usize::try_from(*actual).ok() != Some(expected)
    {
        return Err(OnnxError::Structure(format!(
            "`{name}` has {actual} columns, expected {expected}"
        )));
    }
    Ok(())
}

/// The three weight initializers of a hashed model (names prefixed by `prefix`: empty for a hashed
/// file, [`HASHED_PREFIX`] for a blend's member) exist with consistent shapes and hash to `declared`
/// (the metadata's or the member's `weights_sha256`; same definition as [`super::weights_sha256`]).
fn check_hashed_weights<'a>(
    prefix: &str,
    declared: &str,
    initializer: &dyn Fn(&str) -> Option<&'a TensorProto>,
) -> Result<(), OnnxError> {
    let mut hasher = Sha256::new();
    let mut shapes = Vec::with_capacity(3);
    for name in [EMBEDDINGS, WEIGHTS, BIAS] {
        let name = format!("{prefix}{name}");
        let name = name.as_str();
        let tensor = initializer(name).ok_or_else(|| {
            OnnxError::Structure(format!("hashed model without a `{name}` initializer"))
        })?;
        if tensor.data_type != Some(DataType::Float as i32) {
            return Err(OnnxError::Structure(format!(
                "initializer `{name}` is not float"
            )));
        }
        let data = data_bytes(tensor);
        // Checked: dims come from the file, and a crafted product must not overflow.
        let elements = tensor
            .dims
            .iter()
            .try_fold(1i64, |product, dim| product.checked_mul(*dim));
        if elements
            .and_then(|count| usize::try_from(count).ok())
            .and_then(|count| count.checked_mul(4))
            != Some(data.len())
        {
            return Err(OnnxError::Structure(format!(
                "initializer `{name}` declares dims {:?} but holds {} bytes",
                tensor.dims,
                data.len()
            )));
        }
        hasher.update(&data);
        shapes.push(tensor.dims.clone());
    }
    let dim = shapes[0].get(1).copied();
    if shapes[0].len() != 2
        || shapes[1] != [dim.unwrap_or(-1), CLASSES as i64]
        || shapes[2] != [CLASSES as i64]
    {
        return Err(OnnxError::Structure(format!(
            "inconsistent hashed weight shapes {shapes:?}"
        )));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != declared {
        return Err(OnnxError::ChecksumMismatch {
            declared: declared.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// For the encoder family: every initializer hashes to `weights_sha256`, and the extra tokenizer and
/// max-length entries (when present) agree with the encoder config.
fn check_encoder_file(
    metadata: &ModelMetadata,
    props: &[StringStringEntryProto],
    graph: &super::proto::GraphProto,
) -> Result<(), OnnxError> {
    let config = crate::encoder::tokenize::encoder_config(metadata)
        .map_err(|error| OnnxError::Metadata(error.to_string()))?;
    for (key, expected) in [
        (TOKENIZER_SHA256_KEY, config.tokenizer_sha256.clone()),
        (MAX_LENGTH_KEY, config.max_length.to_string()),
    ] {
        if let Some(value) = props
            .iter()
            .find(|entry| entry.key.as_deref() == Some(key))
            .and_then(|entry| entry.value.as_deref())
            && value != expected
        {
            return Err(OnnxError::Metadata(format!(
                "`{key}` is {value}, but the encoder config says {expected}"
            )));
        }
    }
    let actual = super::graph_weights_sha256(graph);
    if actual != metadata.weights_sha256 {
        return Err(OnnxError::ChecksumMismatch {
            declared: metadata.weights_sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// The little-endian bytes of a float tensor, from `raw_data` or (as other writers may use)
/// `float_data`.
fn data_bytes(tensor: &TensorProto) -> Cow<'_, [u8]> {
    match &tensor.raw_data {
        Some(raw) => Cow::Borrowed(raw.as_slice()),
        None => Cow::Owned(super::build::f32_le_bytes(&tensor.float_data)),
    }
}

/// Bytes of data a tensor holds, whichever field stores it.
fn stored_bytes(tensor: &TensorProto) -> u64 {
    let typed = 4 * (tensor.float_data.len() + tensor.int32_data.len())
        + 8 * (tensor.int64_data.len() + tensor.double_data.len() + tensor.uint64_data.len());
    (tensor.raw_data.as_ref().map_or(0, Vec::len) + typed) as u64
}
