//! Small constructors for ONNX protobuf pieces (tensors, nodes, attributes, value infos), so graph
//! exporters read as a list of operators instead of nested `Some(..)` literals.

use super::proto::{
    AttributeProto, NodeProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_proto::DataType,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};

/// Little-endian bytes of `values`: the `raw_data` layout ONNX specifies for float tensors.
pub(crate) fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = vec![0u8; values.len() * 4];
    for (chunk, value) in bytes.chunks_exact_mut(4).zip(values) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// An initializer of `data_type` whose little-endian bytes are `raw` (`raw_data`: compact, and what
/// ORT maps without conversion).
fn raw_tensor(name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_owned()),
        data_type: Some(data_type as i32),
        dims: dims.iter().map(|dim| dim_i64(*dim)).collect(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A float initializer.
pub(crate) fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    raw_tensor(name, dims, DataType::Float, f32_le_bytes(values))
}

/// A half-precision initializer (`values` rounded to the nearest fp16).
pub(crate) fn f16_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let raw = values
        .iter()
        .flat_map(|value| half::f16::from_f32(*value).to_le_bytes())
        .collect();
    raw_tensor(name, dims, DataType::Float16, raw)
}

/// An int64 initializer (axes, constants).
pub(crate) fn i64_tensor(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    let raw = values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    raw_tensor(name, dims, DataType::Int64, raw)
}

/// A node of the default domain; its name is its first output (unique in our graphs).
pub(crate) fn node(
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: outputs.first().map(|output| (*output).to_owned()),
        op_type: Some(op_type.to_owned()),
        input: inputs.iter().map(|input| (*input).to_owned()).collect(),
        output: outputs.iter().map(|output| (*output).to_owned()).collect(),
        attribute: attributes,
        ..Default::default()
    }
}

/// An integer attribute (`axis`, `to`, `keepdims`).
pub(crate) fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// One tensor dimension: a fixed size or a named dynamic one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim<'a> {
    /// Fixed size.
    Fixed(usize),
    /// Dynamic, named (e.g. `batch`).
    Named(&'a str),
}

/// A graph input or output declaration.
pub(crate) fn value_info(name: &str, elem_type: DataType, dims: &[Dim<'_>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|dim| Dimension {
            value: Some(match dim {
                Dim::Fixed(size) => dimension::Value::DimValue(dim_i64(*size)),
                Dim::Named(name) => dimension::Value::DimParam((*name).to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `metadata_props` entry.
pub(crate) fn string_entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_owned()),
        value: Some(value.to_owned()),
    }
}

/// Tensor dimensions are int64 in ONNX; ours come from in-memory sizes, which always fit.
fn dim_i64(size: usize) -> i64 {
    i64::try_from(size).expect("in-memory tensor sizes fit in i64")
}
