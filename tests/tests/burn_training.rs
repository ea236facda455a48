//! The GPU training path (generic burn code) on burn's CPU backend, on a small slice of real data: it
//! learns, it is reproducible, its ONNX export passes the structure check and matches the burn forward
//! through ONNX Runtime; and the pipeline's `burn-cpu` device registers such a model with its card.

use sentiflow::corpus::CorpusFormat;
use sentiflow_burn::model::{HashedBag, predict_ids};
use sentiflow_burn::{BurnConfig, BurnDevice, CudaProbe, NdArrayInference, train_on};
use sentiflow_common::config::RedisArgs;
use sentiflow_common::events::RawReview;
use sentiflow_common::store::RedisStore;
use sentiflow_model::eval::evaluate;
use sentiflow_model::featurize::{FEATURIZER_VERSION, Featurizer, FeaturizerConfig};
use sentiflow_model::onnx::{ModelMetadata, export_hashed, verify_structure};
use sentiflow_model::runtime::{DeviceRequest, LoadedModel};
use sentiflow_model::train::{Example, TrainConfig};
use sentiflow_trainer::dataset::LabelWeights;
use sentiflow_trainer::dataset::SnapshotStore;
use sentiflow_trainer::gate::GatePolicy;
use sentiflow_trainer::pipeline::{self, TrainDevice, TrainRequest};
use sentiflow_trainer::registry::Registry;

/// Small enough for dense AdaGrad on the CPU in a debug test run.
fn featurizer_config() -> FeaturizerConfig {
    FeaturizerConfig {
        buckets: 1 << 12,
        ..FeaturizerConfig::default()
    }
}

fn train_config() -> TrainConfig {
    TrainConfig {
        dim: 16,
        epochs: 6,
        seed: 7,
        ..TrainConfig::default()
    }
}

/// The first `rows` airline tweets, split 3:1:1 by position (train, validation, test).
fn airline_sample(rows: usize) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let records = sentiflow::corpus::read_records(
        &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
        CorpusFormat::Airline,
        Some(rows),
    )
    .unwrap();
    let (mut train, mut validation, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (index, record) in records.iter().enumerate() {
        let review: RawReview = serde_json::from_slice(&record.payload).unwrap();
        let example = Example {
            text: review.text,
            label: review.label.expect("airline rows are labelled").index(),
            weight: 1.0,
        };
        match index % 5 {
            3 => validation.push(example),
            4 => test.push(example),
            _ => train.push(example),
        }
    }
    (train, validation, test)
}

fn metadata(featurizer: &Featurizer) -> ModelMetadata {
    ModelMetadata {
        name: "burn-test".to_owned(),
        version: "1".to_owned(),
        family: "hashed".to_owned(),
        featurizer_version: FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: featurizer.config().config_hash(),
        featurizer_config: serde_json::to_string(featurizer.config()).unwrap(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: "airline-sample".to_owned(),
        weights_sha256: String::new(),
        created_at: "2015-02-24T00:00:00+00:00".to_owned(),
    }
}

#[test]
fn burn_cpu_backend_learns_exports_and_matches_onnx_runtime() {
    assert!(
        !sentiflow_burn::probe::cuda().is_available(),
        "this test machine has no GPU; the probe must say so without panicking"
    );
    let featurizer = Featurizer::new(
        featurizer_config(),
        Some(sentiflow::train::lexicon().unwrap()),
    )
    .unwrap();
    let (train, validation, test) = airline_sample(1000);
    let burn = BurnConfig::default();
    let trained = train_on(
        BurnDevice::NdArray,
        &featurizer,
        &train,
        &validation,
        &train_config(),
        &burn,
    )
    .unwrap();
    assert!(!trained.history.is_empty());
    assert!((1..=trained.history.len()).contains(&trained.best_epoch));
    assert_eq!(trained.model.buckets, 1 << 12);
    assert_eq!(
        &trained.model.embeddings[..16],
        &[0.0; 16],
        "the padding row never moves"
    );

    // Learned: held-out macro-F1 well above chance (majority class ≈ 0.26, uniform guessing ≈ 0.31).
    let texts: Vec<&str> = test.iter().map(|example| example.text.as_str()).collect();
    let labels: Vec<usize> = test.iter().map(|example| example.label).collect();
    let device = Default::default();
    let bag = HashedBag::<NdArrayInference>::from_model(&trained.model, &device).unwrap();
    let burn_probabilities =
        sentiflow_burn::train::predict_texts(&featurizer, &bag, &texts, &device).unwrap();
    let held_out = evaluate(&burn_probabilities, &labels);
    eprintln!(
        "burn-cpu: held-out macro-F1 {:.4} (validation {:.4}, best epoch {} of {})",
        held_out.macro_f1,
        trained.validation.macro_f1,
        trained.best_epoch,
        trained.history.len()
    );
    assert!(
        held_out.macro_f1 > 0.45,
        "learned: macro-F1 {}",
        held_out.macro_f1
    );

    // Same seed, same backend: bit-identical weights and ONNX bytes.
    let again = train_on(
        BurnDevice::NdArray,
        &featurizer,
        &train,
        &validation,
        &train_config(),
        &burn,
    )
    .unwrap();
    assert!(again.model == trained.model, "bit-identical weights");
    let onnx = export_hashed(&trained.model, &metadata(&featurizer)).unwrap();
    assert_eq!(
        onnx,
        export_hashed(&again.model, &metadata(&featurizer)).unwrap(),
        "bit-identical ONNX"
    );

    // The same graph as the sparse trainer's: structure check, then ORT vs the burn forward.
    let summary = verify_structure(&onnx).unwrap();
    eprintln!("exported graph: {summary:?}");
    let ort = sentiflow::train::ort_environment().expect("ONNX Runtime from the setup cache");
    let mut loaded = LoadedModel::load(&ort, &onnx, DeviceRequest::Cpu, 1).unwrap();
    let (ids, rows, cols) = featurizer.batch_padded(&texts);
    let from_ort = loaded.predict(&ids, rows, cols).unwrap();
    let from_burn = predict_ids(&bag, ids, rows, cols, &device).unwrap();
    assert_eq!(from_ort.len(), from_burn.len());
    let max_diff = from_ort
        .iter()
        .zip(&from_burn)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(a, b)| (f64::from(*a) - b).abs()))
        .fold(0.0f64, f64::max);
    eprintln!("ORT vs burn forward: max abs diff {max_diff:e} over {rows} rows");
    assert!(max_diff <= 1e-5, "parity: {max_diff}");
    assert!(
        from_burn
            .iter()
            .zip(&burn_probabilities)
            .all(|(a, b)| a == b),
        "padding to the serving length changes nothing"
    );
}

#[test]
fn burn_errors_are_clear() {
    let featurizer = Featurizer::new(
        FeaturizerConfig {
            lexicon_features: false,
            ..featurizer_config()
        },
        None,
    )
    .unwrap();
    let (train, validation, _) = airline_sample(60);
    let only_negative: Vec<Example> = train
        .iter()
        .filter(|example| example.label == 0)
        .cloned()
        .collect();
    let error = train_on(
        BurnDevice::NdArray,
        &featurizer,
        &only_negative,
        &validation,
        &train_config(),
        &BurnConfig::default(),
    )
    .unwrap_err();
    assert_eq!(error.kind(), "missing_class", "{error}");
    let error = train_on(
        BurnDevice::Cuda,
        &featurizer,
        &train,
        &validation,
        &train_config(),
        &BurnConfig::default(),
    )
    .unwrap_err();
    assert_eq!(error.kind(), "cuda_unavailable", "{error}");
    match sentiflow_burn::probe::cuda() {
        CudaProbe::Unavailable(reason) => {
            assert!(error.to_string().contains(reason.as_str()), "{error}")
        }
        CudaProbe::Available { .. } => panic!("no GPU on the test machine"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_trains_on_burn_cpu_and_registers_the_card() {
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(dir.path().join("snapshots"));
    let slice = dir.path().join("airline_slice.jsonl");
    let records = sentiflow::corpus::read_records(
        &sentiflow_tests::shared_data("airline_tweets.csv.gz"),
        CorpusFormat::Airline,
        Some(1500),
    )
    .unwrap();
    let lines: Vec<String> = records
        .iter()
        .map(|record| String::from_utf8(record.payload.clone()).unwrap())
        .collect();
    std::fs::write(&slice, lines.join("\n")).unwrap();
    let manifest = sentiflow::dataset::import(&store, &[slice], CorpusFormat::Events).unwrap();
    let redis =
        RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), "burn-test")).unwrap();
    let registry = Registry::new(dir.path().join("models"), redis);
    let ort = sentiflow::train::ort_environment().expect("ONNX Runtime from the setup cache");

    // This machine has no GPU: auto picks the sparse CPU trainer and says why.
    let auto = pipeline::choose_device(TrainDevice::Auto).unwrap();
    assert_eq!(auto.device, "cpu");
    assert!(auto.reason.contains("no usable CUDA"), "{}", auto.reason);

    let request = TrainRequest {
        snapshot_id: manifest.snapshot_id.clone(),
        model_name: "sentiment-hashed".to_owned(),
        featurizer: featurizer_config(),
        train: TrainConfig {
            epochs: 3,
            ..train_config()
        },
        burn: BurnConfig::default(),
        device: TrainDevice::BurnCpu,
        gate: GatePolicy::default(),
        label_weights: LabelWeights::default(),
    };
    let outcome = pipeline::train_and_register(
        &store,
        &registry,
        sentiflow::train::lexicon().unwrap(),
        &ort,
        &request,
    )
    .await
    .unwrap();
    assert_eq!(outcome.record.trained_on, "burn-cpu");
    assert!(
        outcome.test.macro_f1 > 0.4,
        "learned: {}",
        outcome.test.macro_f1
    );
    let card: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!(
            "models/sentiment-hashed/{}/card.json",
            outcome.record.version
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(card["device"], "burn-cpu");
    sentiflow_tests::assert_card_files(
        &dir.path()
            .join("models/sentiment-hashed")
            .join(&outcome.record.version),
        &outcome.record,
    );
    assert_eq!(
        card["burn_config"]["batch_size"],
        BurnConfig::default().batch_size
    );
    // The registered artifact passes the checksum and evaluates through ORT to the pipeline's figures.
    let onnx = registry.load_verified(&outcome.record).await.unwrap();
    let test_rows = store
        .read(
            &manifest.snapshot_id,
            sentiflow_trainer::dataset::Split::Test,
        )
        .unwrap();
    let texts: Vec<&str> = test_rows.iter().map(|row| row.text.as_str()).collect();
    let labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let through_ort = pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels).unwrap();
    assert!(
        (through_ort.macro_f1 - outcome.test.macro_f1).abs() < 1e-9,
        "ORT {} vs pipeline {}",
        through_ort.macro_f1,
        outcome.test.macro_f1
    );
}
