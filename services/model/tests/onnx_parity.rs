//! Parity of the exported hashed model with the Rust reference: every model the exporter writes is run
//! through ONNX Runtime (CPU) and must agree with `HashedModel::predict_ids` to 1e-5.

mod onnx_support;

use onnx_support::{Rng, ort_env, random_batch, random_model, test_metadata};
use sentiflow_model::hashed::HashedModel;
use sentiflow_model::onnx::{export_hashed, read_metadata, weights_sha256};
use sentiflow_model::runtime::{Device, DeviceRequest, LoadedModel};

const TOLERANCE: f64 = 1e-5;

/// Max |ORT − reference| over every class of every row of one batch.
fn batch_diff(
    session: &mut LoadedModel,
    model: &HashedModel,
    ids: &[i64],
    rows: usize,
    cols: usize,
) -> f64 {
    let predicted = session
        .predict(ids, rows, cols)
        .expect("ORT runs the batch");
    assert_eq!(predicted.len(), rows);
    let mut max_diff = 0.0f64;
    for (row, probabilities) in ids.chunks_exact(cols).zip(&predicted) {
        let expected = model.predict_ids(row);
        for (got, want) in probabilities.iter().zip(expected) {
            max_diff = max_diff.max((f64::from(*got) - want).abs());
        }
    }
    max_diff
}

#[test]
fn exported_models_match_the_reference_on_ort_cpu() {
    let env = ort_env();
    let shapes = [(2, 1), (17, 3), (1000, 16), (1 << 12, 32), (1 << 16, 64)];
    let mut overall = 0.0f64;
    for (index, &(buckets, dim)) in shapes.iter().enumerate() {
        let model = random_model(buckets, dim, 1000 + index as u64);
        let bytes = export_hashed(&model, &test_metadata("parity")).expect("export");
        let mut session =
            LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 1).expect("load on CPU");
        assert_eq!(session.device(), Device::Cpu);
        assert_eq!(session.summary().vocab_size, Some(buckets));
        let mut rng = Rng::new(7 + index as u64);
        for rows in [1, 2, 3, 7, 16, 33, 64] {
            for cols in [1, 5, 32, 256] {
                let ids = random_batch(rows, cols, buckets, &mut rng);
                let diff = batch_diff(&mut session, &model, &ids, rows, cols);
                assert!(
                    diff <= TOLERANCE,
                    "{buckets}x{dim}, batch {rows}x{cols}: max abs diff {diff:e}"
                );
                overall = overall.max(diff);
            }
        }
    }
    eprintln!("parity: max abs diff over all models and batches = {overall:e}");
}

#[test]
fn padding_only_rows_give_softmax_of_the_bias() {
    let env = ort_env();
    let mut model = random_model(50, 8, 3);
    model.bias = [1.5, -0.5, 0.25];
    let bytes = export_hashed(&model, &test_metadata("bias")).expect("export");
    let mut session = LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 1).expect("load");
    let predicted = session.predict(&[0; 12], 3, 4).expect("predict");
    let expected = sentiflow_model::hashed::softmax(model.bias.map(f64::from));
    for row in predicted {
        for (got, want) in row.iter().zip(expected) {
            assert!(
                (f64::from(*got) - want).abs() <= TOLERANCE,
                "{row:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn rows_do_not_depend_on_their_batch_or_padding() {
    let env = ort_env();
    let model = random_model(300, 12, 11);
    let bytes = export_hashed(&model, &test_metadata("batch")).expect("export");
    let mut session = LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 2).expect("load");
    let row = [5i64, 17, 5, 299, 1];
    let alone = session.predict(&row, 1, row.len()).expect("alone")[0];
    let mut padded = row.to_vec();
    padded.resize(64, 0);
    let mut batch = random_batch(8, 64, 300, &mut Rng::new(1));
    batch[3 * 64..4 * 64].copy_from_slice(&padded);
    let in_batch = session.predict(&batch, 8, 64).expect("batch")[3];
    for (a, b) in alone.iter().zip(in_batch) {
        assert!((a - b).abs() <= 1e-6, "{alone:?} vs {in_batch:?}");
    }
}

#[test]
fn metadata_round_trips_through_the_file_and_the_session() {
    let env = ort_env();
    let model = random_model(64, 4, 21);
    let metadata = test_metadata("round-trip");
    let bytes = export_hashed(&model, &metadata).expect("export");
    let read = read_metadata(&bytes).expect("read metadata");
    let expected = sentiflow_model::onnx::ModelMetadata {
        weights_sha256: weights_sha256(&model),
        ..metadata
    };
    assert_eq!(read, expected);
    let session = LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 1).expect("load");
    assert_eq!(session.metadata(), &expected);
}

#[test]
fn export_is_byte_deterministic() {
    let model = random_model(1 << 12, 16, 5);
    let metadata = test_metadata("deterministic");
    let first = export_hashed(&model, &metadata).expect("export");
    let second = export_hashed(&model.clone(), &metadata.clone()).expect("export again");
    assert_eq!(
        first, second,
        "same model and metadata must give the same bytes"
    );

    let mut changed = model.clone();
    changed.embeddings[16 * 7 + 3] += 1e-3;
    let third = export_hashed(&changed, &metadata).expect("export changed");
    assert_ne!(first, third);
    assert_ne!(weights_sha256(&model), weights_sha256(&changed));
}
