//! The ONNX Runtime wrapper on this CPU-only machine: honest CUDA fallback (`auto` → CPU with a reason,
//! `cuda` → a clear error), input validation, warm-up, refusal of tampered files, one environment per
//! process.

mod onnx_support;

use std::time::Instant;

use onnx_support::{Rng, installed_ort_path, ort_env, random_batch, random_model, test_metadata};
use prost::Message;
use sentiflow_model::onnx::export_hashed;
use sentiflow_model::onnx::proto::ModelProto;
use sentiflow_model::runtime::{self, Device, DeviceRequest, LoadedModel, RuntimeError};

fn small_model_bytes() -> Vec<u8> {
    export_hashed(&random_model(500, 8, 2), &test_metadata("runtime")).expect("export")
}

#[test]
fn auto_falls_back_to_cpu_and_says_why() {
    let env = ort_env();
    let mut model =
        LoadedModel::load(&env, &small_model_bytes(), DeviceRequest::Auto, 1).expect("auto loads");
    assert_eq!(
        model.device(),
        Device::Cpu,
        "this machine has no usable CUDA"
    );
    let reason = model
        .fallback_reason()
        .expect("auto records why CUDA was not used");
    eprintln!("auto fallback reason: {reason}");
    assert!(reason.contains("CUDA"), "{reason}");
    assert!(model.placement().is_none());
    assert_eq!(model.predict(&[1, 2, 0], 1, 3).expect("predict").len(), 1);
}

#[test]
fn cuda_request_fails_with_a_clear_message() {
    let env = ort_env();
    let error = LoadedModel::load(&env, &small_model_bytes(), DeviceRequest::Cuda, 1)
        .expect_err("no CUDA here");
    eprintln!("cuda error: {error}");
    assert_eq!(error.kind(), "cuda_unavailable");
    assert!(
        error
            .to_string()
            .starts_with("CUDA was requested but is not available: "),
        "{error}"
    );
}

#[test]
fn cpu_request_has_no_fallback_reason() {
    let env = ort_env();
    let model =
        LoadedModel::load(&env, &small_model_bytes(), DeviceRequest::Cpu, 1).expect("cpu loads");
    assert_eq!(model.device(), Device::Cpu);
    assert_eq!(model.device().as_str(), "cpu");
    assert!(model.fallback_reason().is_none());
    assert_eq!(model.metadata().name, "runtime");
}

#[test]
fn device_request_parses_the_cli_values() {
    assert_eq!("auto".parse::<DeviceRequest>(), Ok(DeviceRequest::Auto));
    assert_eq!("CPU".parse::<DeviceRequest>(), Ok(DeviceRequest::Cpu));
    assert_eq!("cuda".parse::<DeviceRequest>(), Ok(DeviceRequest::Cuda));
    assert!("tpu".parse::<DeviceRequest>().is_err());
    assert_eq!(DeviceRequest::default(), DeviceRequest::Auto);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let env = ort_env();
    let mut model =
        LoadedModel::load(&env, &small_model_bytes(), DeviceRequest::Cpu, 1).expect("load");
    let cases: [(&[i64], usize, usize); 4] = [
        (&[1, 2, 3], 2, 2),
        (&[1, -1], 1, 2),
        (&[1, 500], 1, 2),
        (&[], 1, 0),
    ];
    for (ids, rows, cols) in cases {
        let error = model.predict(ids, rows, cols).expect_err("invalid batch");
        assert_eq!(error.kind(), "bad_input", "{ids:?} {rows}x{cols}: {error}");
    }
    assert!(model.predict(&[], 0, 16).expect("empty batch").is_empty());
    assert!(
        model.predict(&[499, 1], 1, 2).is_ok(),
        "the last bucket is valid"
    );
}

#[test]
fn warm_up_runs_every_length() {
    let env = ort_env();
    let mut model =
        LoadedModel::load(&env, &small_model_bytes(), DeviceRequest::Cpu, 1).expect("load");
    model.warm_up(&[8, 16, 32, 64, 128], 32).expect("warm-up");
}

#[test]
fn load_refuses_tampered_files() {
    let env = ort_env();
    let mut onnx = ModelProto::decode(small_model_bytes().as_slice()).expect("decode");
    let table = onnx
        .graph
        .as_mut()
        .expect("graph")
        .initializer
        .iter_mut()
        .find(|tensor| tensor.name.as_deref() == Some("embeddings"))
        .expect("table");
    table.raw_data.as_mut().expect("raw")[100] ^= 0x40;
    let error = LoadedModel::load(&env, &onnx.encode_to_vec(), DeviceRequest::Auto, 1)
        .expect_err("tampered");
    assert_eq!(error.kind(), "checksum_mismatch");
    let error =
        LoadedModel::load(&env, b"not a model", DeviceRequest::Cpu, 1).expect_err("garbage");
    assert!(matches!(error, RuntimeError::Model(_)), "{error:?}");
}

#[test]
fn one_library_per_process() {
    let first = ort_env();
    let again = ort_env();
    assert_eq!(first.library(), again.library());
    // The unversioned symlink setup creates resolves to the same library.
    let symlink = installed_ort_path().with_file_name("libonnxruntime.so");
    if symlink.exists() {
        assert_eq!(
            runtime::init(&symlink).expect("same library").library(),
            first.library()
        );
    }
    let missing =
        runtime::init(std::path::Path::new("/nonexistent/libonnxruntime.so")).expect_err("missing");
    assert_eq!(missing.kind(), "ort_library");
    assert!(missing.to_string().contains("infra/setup.sh"), "{missing}");
    let other = runtime::init(std::path::Path::new("/etc/hostname")).expect_err("a second library");
    assert_eq!(other.kind(), "ort_environment");
}

/// Throughput probe for the report, not a timed test: one thread, batch 256 × 64 tokens, a 2^18 × 32
/// model. Run with `cargo test --release -p sentiflow-model --test onnx_runtime -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, run by hand"]
fn throughput_probe() {
    let env = ort_env();
    let (buckets, dim, rows, cols) = (1usize << 18, 32usize, 256usize, 64usize);
    let bytes =
        export_hashed(&random_model(buckets, dim, 42), &test_metadata("bench")).expect("export");
    let mut model = LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 1).expect("load");
    model.warm_up(&[cols], rows).expect("warm-up");
    let mut rng = Rng::new(3);
    let batches: Vec<Vec<i64>> = (0..8)
        .map(|_| random_batch(rows, cols, buckets, &mut rng))
        .collect();
    let mut iterations = 0usize;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 5.0 {
        let ids = &batches[iterations % batches.len()];
        std::hint::black_box(model.predict(ids, rows, cols).expect("predict"));
        iterations += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "predict throughput: {:.0} rows/s ({iterations} batches of {rows}x{cols} in {seconds:.2} s, {:.3} ms/batch)",
        (iterations * rows) as f64 / seconds,
        seconds * 1e3 / iterations as f64
    );
}

#[test]
fn replicas_share_the_device_and_agree() {
    let env = ort_env();
    let bytes = small_model_bytes();
    let mut first = LoadedModel::load(&env, &bytes, DeviceRequest::Auto, 1).expect("load");
    let mut second = first.replicate(&env, &bytes).expect("replicate");
    assert_eq!(second.device(), first.device());
    assert_eq!(second.fallback_reason(), first.fallback_reason());
    assert_eq!(second.metadata(), first.metadata());
    let ids = [3i64, 4, 5, 0];
    assert_eq!(
        first.predict(&ids, 2, 2).expect("first"),
        second.predict(&ids, 2, 2).expect("second")
    );
    let other = export_hashed(&random_model(500, 8, 3), &test_metadata("other")).expect("export");
    let error = first.replicate(&env, &other).expect_err("different model");
    assert_eq!(error.kind(), "session_build");
}
