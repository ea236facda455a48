//! The ONNX writer and reader without ONNX Runtime: the emitted graph, the checksum and size guards, and
//! the refusal of files that break the contract.

mod onnx_support;

use prost::Message;
use sentiflow_model::hashed::HashedModel;
use sentiflow_model::onnx::proto::{
    self, ModelProto, tensor_proto::DataType, tensor_shape_proto::dimension, type_proto,
};
use sentiflow_model::onnx::{
    IR_VERSION, MAX_INITIALIZER_BYTES, ModelMetadata, OPSET_VERSION, OnnxError, export_hashed,
    read_metadata, verify_structure, weights_sha256,
};

use onnx_support::{random_model, test_metadata};

fn decode(bytes: &[u8]) -> ModelProto {
    ModelProto::decode(bytes).expect("valid protobuf")
}

fn dims(value: &proto::ValueInfoProto) -> Vec<String> {
    let Some(type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|ty| ty.value.as_ref())
    else {
        panic!("not a tensor")
    };
    tensor
        .shape
        .as_ref()
        .expect("shape")
        .dim
        .iter()
        .map(|dim| match dim.value.as_ref().expect("dim") {
            dimension::Value::DimValue(value) => value.to_string(),
            dimension::Value::DimParam(name) => name.clone(),
        })
        .collect()
}

#[test]
fn graph_follows_the_contract() {
    let model = random_model(100, 8, 1);
    let bytes = export_hashed(&model, &test_metadata("graph")).expect("export");
    let onnx = decode(&bytes);
    assert_eq!(onnx.ir_version, Some(IR_VERSION));
    assert_eq!(onnx.opset_import.len(), 1);
    assert_eq!(onnx.opset_import[0].version, Some(OPSET_VERSION));
    let graph = onnx.graph.expect("graph");
    let ops: Vec<&str> = graph
        .node
        .iter()
        .map(|node| node.op_type.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        ops,
        [
            "Gather",
            "Equal",
            "Not",
            "Cast",
            "Unsqueeze",
            "MatMul",
            "Squeeze",
            "ReduceSum",
            "Max",
            "Div",
            "Gemm",
            "Softmax"
        ]
    );
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.input[0].name.as_deref(), Some("input_ids"));
    assert_eq!(dims(&graph.input[0]), ["batch", "tokens"]);
    assert_eq!(graph.output[0].name.as_deref(), Some("probabilities"));
    assert_eq!(dims(&graph.output[0]), ["batch", "3"]);
    let embeddings = graph
        .initializer
        .iter()
        .find(|tensor| tensor.name.as_deref() == Some("embeddings"))
        .expect("table");
    assert_eq!(embeddings.dims, [100, 8]);
    assert_eq!(embeddings.data_type, Some(DataType::Float as i32));
    assert_eq!(
        embeddings.raw_data.as_ref().map(Vec::len),
        Some(100 * 8 * 4)
    );

    let summary = verify_structure(&bytes).expect("own export verifies");
    assert_eq!(summary.vocab_size, Some(100));
    assert_eq!(summary.node_count, 12);
    assert_eq!(
        (summary.ir_version, summary.opset_version),
        (IR_VERSION, OPSET_VERSION)
    );
    assert!(summary.initializer_bytes >= (100 * 8 + 8 * 3 + 3) * 4);
}

#[test]
fn checksum_covers_embeddings_weights_and_bias_in_order() {
    use sha2::{Digest, Sha256};
    let model = random_model(10, 2, 4);
    let mut hasher = Sha256::new();
    for value in model
        .embeddings
        .iter()
        .chain(&model.weights)
        .chain(&model.bias)
    {
        hasher.update(value.to_le_bytes());
    }
    assert_eq!(weights_sha256(&model), hex::encode(hasher.finalize()));
}

#[test]
fn export_refuses_bad_models_and_metadata() {
    let model = random_model(10, 2, 4);
    let metadata = test_metadata("refusals");

    let wrong_checksum = ModelMetadata {
        weights_sha256: "00".repeat(32),
        ..metadata.clone()
    };
    let error = export_hashed(&model, &wrong_checksum).expect_err("checksum mismatch");
    assert_eq!(error.kind(), "checksum_mismatch");
    let right_checksum = ModelMetadata {
        weights_sha256: weights_sha256(&model),
        ..metadata.clone()
    };
    assert!(export_hashed(&model, &right_checksum).is_ok());

    let wrong_family = ModelMetadata {
        family: "encoder".to_owned(),
        ..metadata.clone()
    };
    assert_eq!(
        export_hashed(&model, &wrong_family)
            .expect_err("family")
            .kind(),
        "onnx_metadata"
    );
    let comma_label = ModelMetadata {
        labels: vec!["a,b".into(), "c".into(), "d".into()],
        ..metadata.clone()
    };
    assert_eq!(
        export_hashed(&model, &comma_label)
            .expect_err("labels")
            .kind(),
        "onnx_metadata"
    );
    let no_name = ModelMetadata {
        name: " ".to_owned(),
        ..metadata.clone()
    };
    assert_eq!(
        export_hashed(&model, &no_name).expect_err("name").kind(),
        "onnx_metadata"
    );

    let mut short = model.clone();
    short.embeddings.pop();
    assert_eq!(
        export_hashed(&short, &metadata).expect_err("shape").kind(),
        "invalid_model"
    );
}

#[test]
fn export_refuses_models_beyond_the_protobuf_limit() {
    // Declared shape only: the size check comes before any vector is touched.
    let huge = HashedModel {
        buckets: 1 << 24,
        dim: 32,
        embeddings: Vec::new(),
        weights: Vec::new(),
        bias: [0.0; 3],
    };
    let error = export_hashed(&huge, &test_metadata("huge")).expect_err("too large");
    assert_eq!(error.kind(), "model_too_large");
    match &error {
        OnnxError::TooLarge { bytes, limit } => {
            assert!(*bytes > 2_000_000_000);
            assert_eq!(*limit, MAX_INITIALIZER_BYTES);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("2 GiB"), "{error}");
}

#[test]
fn reader_refuses_tampered_and_foreign_files() {
    let model = random_model(40, 4, 9);
    let bytes = export_hashed(&model, &test_metadata("tamper")).expect("export");

    // A weight changed after export: the file still decodes, but the checksum no longer matches.
    let mut onnx = decode(&bytes);
    let graph = onnx.graph.as_mut().expect("graph");
    let table = graph
        .initializer
        .iter_mut()
        .find(|tensor| tensor.name.as_deref() == Some("embeddings"))
        .expect("table");
    table.raw_data.as_mut().expect("raw")[40] ^= 0x01;
    let tampered = onnx.encode_to_vec();
    assert!(
        read_metadata(&tampered).is_ok(),
        "metadata alone is still readable"
    );
    assert_eq!(
        verify_structure(&tampered).expect_err("tampered").kind(),
        "checksum_mismatch"
    );

    // Truncated file.
    assert_eq!(
        verify_structure(&bytes[..bytes.len() / 2])
            .expect_err("truncated")
            .kind(),
        "onnx_decode"
    );
    // Not protobuf at all.
    assert_eq!(
        read_metadata(b"\xff\xff\xff\xff not onnx")
            .expect_err("garbage")
            .kind(),
        "onnx_decode"
    );

    // No metadata.
    let mut bare = decode(&bytes);
    bare.metadata_props.clear();
    let error = read_metadata(&bare.encode_to_vec()).expect_err("no metadata");
    assert_eq!(error.kind(), "onnx_metadata");
    assert!(error.to_string().contains("`name` is missing"), "{error}");

    // Wrong input name.
    let mut renamed = decode(&bytes);
    renamed.graph.as_mut().expect("graph").input[0].name = Some("tokens".to_owned());
    assert_eq!(
        verify_structure(&renamed.encode_to_vec())
            .expect_err("input")
            .kind(),
        "onnx_structure"
    );

    // A node reading an undefined value.
    let mut broken = decode(&bytes);
    broken.graph.as_mut().expect("graph").node[2].input[0] = "nowhere".to_owned();
    let error = verify_structure(&broken.encode_to_vec()).expect_err("dangling");
    assert!(error.to_string().contains("nowhere"), "{error}");
}

#[test]
fn metadata_reader_ignores_foreign_keys_and_rejects_duplicates() {
    let bytes = export_hashed(&random_model(8, 2, 1), &test_metadata("keys")).expect("export");
    let mut onnx = decode(&bytes);
    onnx.metadata_props.push(proto::StringStringEntryProto {
        key: Some("converter".into()),
        value: Some("x".into()),
    });
    assert!(read_metadata(&onnx.encode_to_vec()).is_ok());
    onnx.metadata_props.push(proto::StringStringEntryProto {
        key: Some("version".into()),
        value: Some("8".into()),
    });
    let error = read_metadata(&onnx.encode_to_vec()).expect_err("duplicate");
    assert!(error.to_string().contains("twice"), "{error}");
}
