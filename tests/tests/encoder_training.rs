//! The encoder family's training pipeline on a few hundred real airline tweets, with a real Redis
//! registry and ONNX Runtime: a snapshot is imported, a frozen-MiniLM + linear-head model is trained,
//! registered with its card and run through ORT (its figures match the Rust reference); a second
//! run reads the cached embeddings and reproduces the weights; the hashed pipeline's evaluator
//! serves both families; `--device cuda` is refused without registering anything.

use sentiflow::corpus::CorpusFormat;
use sentiflow_common::cache::CacheDir;
use sentiflow_common::config::RedisArgs;
use sentiflow_common::events::ModelFamily;
use sentiflow_common::store::RedisStore;
use sentiflow_model::encoder::HeadConfig;
use sentiflow_model::onnx::{Family, read_metadata, verify_structure};
use sentiflow_trainer::dataset::LabelWeights;
use sentiflow_trainer::dataset::{SnapshotStore, Split};
use sentiflow_trainer::encoder::{
    EncoderFiles, EncoderTrainRequest, card_markdown, train_and_register_encoder,
};
use sentiflow_trainer::gate::GatePolicy;
use sentiflow_trainer::pipeline::{self, TrainDevice};
use sentiflow_trainer::registry::Registry;

fn request(snapshot_id: &str, cache: &std::path::Path) -> EncoderTrainRequest {
    EncoderTrainRequest {
        snapshot_id: snapshot_id.to_owned(),
        model_name: "sentiment-encoder".to_owned(),
        max_length: 48,
        head: HeadConfig {
            epochs: 12,
            batch_size: 32,
            seed: 5,
            ..HeadConfig::default()
        },
        device: TrainDevice::Auto,
        gate: GatePolicy::default(),
        label_weights: LabelWeights::default(),
        threads: 2,
        embedding_cache: Some(cache.to_path_buf()),
        blend: None,
    }
}

/// A snapshot of the first `rows` airline tweets in `dir/snapshots`.
fn airline_snapshot(
    dir: &std::path::Path,
    rows: usize,
) -> (SnapshotStore, sentiflow_trainer::dataset::Manifest) {
    let store = SnapshotStore::new(dir.join("snapshots"));
    let airline = sentiflow_tests::shared_data("airline_tweets.csv.gz");
    let slice = dir.join("airline_slice.jsonl");
    let records =
        sentiflow::corpus::read_records(&airline, CorpusFormat::Airline, Some(rows)).unwrap();
    let lines: Vec<String> = records
        .iter()
        .map(|record| String::from_utf8(record.payload.clone()).unwrap())
        .collect();
    std::fs::write(&slice, lines.join("\n")).unwrap();
    let manifest = sentiflow::dataset::import(&store, &[slice], CorpusFormat::Events).unwrap();
    (store, manifest)
}

/// `infer --family encoder` on the registry in `data_dir` (Redis prefix `prefix`), small batches.
fn infer_config(
    kafka: &sentiflow_common::config::KafkaArgs,
    redis_url: &str,
    prefix: &str,
    data_dir: &std::path::Path,
) -> sentiflow_infer::InferConfig {
    sentiflow_infer::InferConfig {
        kafka: kafka.clone(),
        redis: RedisArgs::local(redis_url, prefix),
        telemetry: sentiflow_common::config::TelemetryArgs::ephemeral(),
        api_auth: Default::default(),
        group_id: "infer-encoder".to_owned(),
        data_dir: data_dir.to_path_buf(),
        model_name: "sentiment-hashed".to_owned(),
        device: sentiflow_infer::config::DeviceArg::Auto,
        ort_dylib: None,
        workers: 1,
        intra_threads: 2,
        max_batch: 16,
        batch_wait_ms: 5,
        max_queued_batches: 2,
        pause_after_ms: 500,
        alert_threshold: 0.8,
        registry_poll_secs: 1,
        shadow_fraction: 0.0,
        http_max_texts: 8,
        http_max_text_bytes: 1_000,
        http_max_concurrent: 16,
        http_batch_texts: 256,
        encoder_model_name: "sentiment-encoder".to_owned(),
        family: sentiflow_infer::config::FamilyArg::Encoder,
    }
}

/// POSTs `texts` to infer's `/v1/predict` and checks that the served probabilities are those of the
/// encoder-family file `onnx` through ONNX Runtime (`pipeline::predict_onnx`: the gate's and `eval`'s
/// code path, which builds a blend's `hashed_ids` too), within 1e-4.
async fn assert_http_predictions_match_the_file(
    http_addr: std::net::SocketAddr,
    ort: &sentiflow_model::runtime::OrtEnvironment,
    onnx: &[u8],
    texts: &[&str],
) {
    let body = serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap();
    let (status, response) = sentiflow_tests::http_post(http_addr, "/v1/predict", &body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{response}");
    let response: serde_json::Value = serde_json::from_str(&response).unwrap();
    assert_eq!(response["model"]["family"], "encoder");
    let offline = pipeline::predict_onnx(ort, onnx, texts).unwrap();
    for (index, expected) in offline.iter().enumerate() {
        let got = &response["predictions"][index]["probabilities"];
        for (position, class) in ["negative", "neutral", "positive"].iter().enumerate() {
            let served = got[class].as_f64().unwrap();
            assert!(
                (served - expected[position]).abs() < 1e-4,
                "text {index} {class}: served {served}, offline {}",
                expected[position]
            );
        }
    }
}

/// The registry directory of `sentiment-encoder` `version` under `data_dir`, and its `card.json`.
fn encoder_card<Card: serde::de::DeserializeOwned>(
    data_dir: &std::path::Path,
    version: &str,
) -> (std::path::PathBuf, Card) {
    let card_dir = data_dir.join(format!("models/sentiment-encoder/{version}"));
    let card = serde_json::from_slice(&std::fs::read(card_dir.join("card.json")).unwrap()).unwrap();
    (card_dir, card)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoder_family_trains_registers_and_serves_through_ort() {
    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    // 400 rows: enough for every class in every split, quick to embed in a debug build.
    let (store, manifest) = airline_snapshot(dir.path(), 400);

    let redis =
        RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), "encoder-test")).unwrap();
    let registry = Registry::new(dir.path().join("models"), redis);
    let ort = sentiflow::train::ort_environment()
        .expect("ONNX Runtime from the setup cache (run infra/setup.sh)");
    let files = EncoderFiles::from_cache(&CacheDir::from_env().unwrap())
        .expect("MiniLM files from the setup cache (run infra/setup.sh)");
    let cache = dir.path().join("embeddings");

    let first = train_and_register_encoder(
        &store,
        &registry,
        &ort,
        &files,
        &request(&manifest.snapshot_id, &cache),
    )
    .await
    .unwrap();
    assert_eq!(
        first.embedding.rows as u64, manifest.rows,
        "every row embedded"
    );
    assert_eq!(first.embedding.cached_rows, 0);
    assert!(first.embedding.rows_per_second > 0.0);
    let outcome = &first.outcome;
    assert!(outcome.gate.passed, "no champion: passes");
    // Majority-class macro-F1 is about 0.26 on airline tweets (negative is ~64%).
    assert!(
        outcome.test.macro_f1 > 0.35,
        "learned something: macro-F1 {}",
        outcome.test.macro_f1
    );

    // The registered artifact is an encoder-family ONNX whose ORT figures match the Rust reference.
    let onnx = registry.load_verified(&outcome.record).await.unwrap();
    assert_eq!(verify_structure(&onnx).unwrap().family, Family::Encoder);
    let metadata = read_metadata(&onnx).unwrap();
    assert_eq!(metadata.family, "encoder");
    assert_eq!(metadata.training_snapshot, manifest.snapshot_id);
    let test_rows = store.read(&manifest.snapshot_id, Split::Test).unwrap();
    let texts: Vec<&str> = test_rows.iter().map(|row| row.text.as_str()).collect();
    let labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let through_ort = pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels).unwrap();
    assert_eq!(through_ort.confusion, outcome.test.confusion);
    assert!((through_ort.macro_f1 - outcome.test.macro_f1).abs() < 1e-9);
    let (card_dir, card): (_, serde_json::Value) =
        encoder_card(dir.path(), &outcome.record.version);
    assert_eq!(card["family"], "encoder");
    assert_eq!(card["encoder_config"]["max_length"], 48);
    assert_eq!(card["label_weights"]["human"], LabelWeights::DEFAULT_HUMAN);
    // The default (auto) keeps the encoder family's balance over the whole set.
    assert_eq!(card["label_weights"]["class_balance"], "global");
    sentiflow_tests::assert_card_files(&card_dir, &outcome.record);

    // `infer --family encoder` started before any encoder champion exists serves the hashed name
    // (here without a champion either) and says why; it switches family, without a restart, when
    // the first encoder champion is promoted.
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = infer_config(&kafka, &redis_server.url(), "encoder-test", dir.path());
    let running = sentiflow_infer::start(config, shutdown.clone())
        .await
        .unwrap();
    let slot = running.slot.clone();
    let health = running.health.clone();
    assert!(
        sentiflow_tests::eventually(std::time::Duration::from_secs(30), || health
            .snapshot()
            .to_string()
            .contains("no champion of sentiment-hashed"))
        .await,
        "{}",
        running.health.snapshot()
    );
    let before = running.health.snapshot();
    assert_eq!(before["info"]["family"], "hashed", "{before}");
    let reason = before["info"]["family_reason"].as_str().unwrap();
    assert!(
        reason.contains("sentiment-encoder has no champion")
            && reason.contains("until one is promoted"),
        "{reason}"
    );
    assert!(slot.current().is_none());

    // Second run: embeddings from the cache, the same head, gated against the first as champion.
    registry
        .promote("sentiment-encoder", &outcome.record.version)
        .await
        .unwrap();
    assert!(
        sentiflow_tests::eventually(std::time::Duration::from_secs(120), || slot
            .current()
            .is_some())
        .await,
        "infer switched to the encoder champion: {}",
        running.health.snapshot()
    );
    let after = running.health.snapshot();
    assert_eq!(after["info"]["family"], "encoder", "{after}");
    assert_eq!(after["info"]["model_name"], "sentiment-encoder", "{after}");
    assert!(
        after["info"]["family_reason"]
            .as_str()
            .unwrap()
            .contains("switched when it was promoted"),
        "{after}"
    );
    let second = train_and_register_encoder(
        &store,
        &registry,
        &ort,
        &files,
        &request(&manifest.snapshot_id, &cache),
    )
    .await
    .unwrap();
    assert_eq!(second.embedding.rows, 0);
    assert_eq!(second.embedding.cached_rows as u64, manifest.rows);
    let again = read_metadata(
        &registry
            .load_verified(&second.outcome.record)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        again.weights_sha256, metadata.weights_sha256,
        "same weights"
    );
    let champion = second.outcome.champion_test.as_ref().expect("champion ran");
    assert!((champion.macro_f1 - outcome.test.macro_f1).abs() < 1e-9);
    assert!(second.outcome.gate.passed, "{}", second.outcome.gate.reason);
    let (_, card2): (_, sentiflow_trainer::encoder::EncoderModelCard) =
        encoder_card(dir.path(), &second.outcome.record.version);
    assert!(card_markdown(&card2).contains("## Gate"));

    // --device cuda: refused, nothing registered.
    let before = registry.versions("sentiment-encoder").await.unwrap().len();
    let mut cuda = request(&manifest.snapshot_id, &cache);
    cuda.device = TrainDevice::Cuda;
    let error = train_and_register_encoder(&store, &registry, &ort, &files, &cuda)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--device cuda"), "{error}");
    assert_eq!(
        registry.versions("sentiment-encoder").await.unwrap().len(),
        before
    );

    let served = slot.current().unwrap();
    assert_eq!(
        served.model_ref().family,
        sentiflow_common::events::ModelFamily::Encoder
    );
    assert_http_predictions_match_the_file(running.http_addr, &ort, &onnx, &texts[..3]).await;

    // Through Kafka: a review predicts; one whose text has no WordPiece token (zero-width joiners
    // survive cleaning, as emoji sequences need them; the BERT normaliser drops them) is
    // dead-lettered with the reason.
    let reviews = [
        sentiflow_tests::clean_review(1, "the crew was lovely"),
        sentiflow_tests::clean_review(2, "\u{200d}\u{200c}"),
    ];
    let messages: Vec<(String, Vec<u8>)> = reviews
        .iter()
        .map(|review| {
            (
                review.review_id.clone(),
                serde_json::to_vec(review).unwrap(),
            )
        })
        .collect();
    sentiflow_tests::publish_clean(&kafka, &messages).await;
    let brokers = &sentiflow_tests::kafka().brokers;
    let topic = |name| kafka.topic(name);
    let predictions = sentiflow_tests::read_exactly(
        brokers,
        &topic(sentiflow_common::catalogue::topics::PREDICTIONS),
        1,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(2),
    )
    .await;
    let predictions = sentiflow_tests::json_payloads(&predictions);
    assert_eq!(predictions[0]["review_id"], "review-1");
    let dead = sentiflow_tests::read_exactly(
        brokers,
        &topic(sentiflow_common::catalogue::topics::REVIEWS_DLQ),
        1,
        std::time::Duration::from_secs(30),
        std::time::Duration::from_secs(1),
    )
    .await;
    let dead = sentiflow_tests::json_payloads(&dead);
    assert_eq!(dead[0]["error_kind"], "no_tokens", "{}", dead[0]);
    assert!(
        dead[0].to_string().contains("no token"),
        "the reason is given: {}",
        dead[0]
    );
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blended_encoder_trains_registers_and_serves_the_average_of_both_families() {
    use sentiflow_model::featurize::FeaturizerConfig;
    use sentiflow_model::train::TrainConfig;
    use sentiflow_trainer::encoder::{BlendRequest, EncoderModelCard};

    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = airline_snapshot(dir.path(), 400);
    let redis =
        RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), "blend-test")).unwrap();
    let registry = Registry::new(dir.path().join("models"), redis);
    let ort = sentiflow::train::ort_environment().expect("ONNX Runtime (run infra/setup.sh)");
    let files = EncoderFiles::from_cache(&CacheDir::from_env().unwrap())
        .expect("MiniLM files (run infra/setup.sh)");
    let cache = dir.path().join("embeddings");
    let blend = BlendRequest {
        weight: 0.5,
        featurizer: FeaturizerConfig {
            buckets: 1 << 16,
            ..FeaturizerConfig::default()
        },
        train: TrainConfig {
            dim: 16,
            seed: 9,
            ..TrainConfig::default()
        },
    };

    // A weight outside (0, 1) is refused before anything is read or registered.
    for weight in [0.0, 1.0, f32::NAN] {
        let mut bad = request(&manifest.snapshot_id, &cache);
        bad.blend = Some(BlendRequest {
            weight,
            ..blend.clone()
        });
        let error = train_and_register_encoder(&store, &registry, &ort, &files, &bad)
            .await
            .unwrap_err();
        assert!(
            matches!(error, pipeline::PipelineError::Config(_)),
            "{weight}: {error}"
        );
    }
    assert!(
        registry
            .versions("sentiment-encoder")
            .await
            .unwrap()
            .is_empty()
    );

    let mut blended_request = request(&manifest.snapshot_id, &cache);
    blended_request.blend = Some(blend.clone());
    let trained = train_and_register_encoder(&store, &registry, &ort, &files, &blended_request)
        .await
        .unwrap();
    let outcome = &trained.outcome;
    assert!(outcome.gate.passed, "no champion: passes");
    let onnx = registry.load_verified(&outcome.record).await.unwrap();
    let summary = verify_structure(&onnx).unwrap();
    assert_eq!(summary.family, Family::Encoder);
    let (member, rows) = summary.hashed_member.clone().expect("a blend");
    assert_eq!((member.weight, rows), (0.5, 1 << 16));

    // The card records both members; its test figures (the blend's, computed in Rust) are what ORT
    // gives for the served file on the same rows.
    let (card_dir, card): (_, EncoderModelCard) = encoder_card(dir.path(), &outcome.record.version);
    let member_card = card
        .hashed_member
        .as_ref()
        .expect("the member is in the card");
    assert_eq!(member_card.weight, 0.5);
    assert_eq!(member_card.train_config.dim, 16);
    assert_eq!(
        card.encoder_config
            .hashed_member
            .as_ref()
            .unwrap()
            .weights_sha256,
        member_card.weights_sha256
    );
    let markdown = std::fs::read_to_string(card_dir.join("card.md")).unwrap();
    assert!(
        markdown.contains("## Blend") && markdown.contains("| blend (served) |"),
        "{markdown}"
    );
    let test_rows = store.read(&manifest.snapshot_id, Split::Test).unwrap();
    let texts: Vec<&str> = test_rows.iter().map(|row| row.text.as_str()).collect();
    let labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let through_ort = pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels).unwrap();
    assert_eq!(through_ort.confusion, outcome.test.confusion);
    assert!((through_ort.macro_f1 - card.test.macro_f1).abs() < 1e-9);
    assert!(
        outcome.test.macro_f1 > 0.35,
        "learned something: {}",
        outcome.test.macro_f1
    );
    // The embeddings were cached under the encoder part's config: the encoder alone reuses them.
    let alone = train_and_register_encoder(
        &store,
        &registry,
        &ort,
        &files,
        &request(&manifest.snapshot_id, &cache),
    )
    .await
    .unwrap();
    assert_eq!(alone.embedding.rows, 0, "every split from the cache");
    assert!(
        (card.hashed_member.unwrap().encoder_test.macro_f1 - alone.outcome.test.macro_f1).abs()
            < 1e-12,
        "the card's encoder-alone figure is the encoder's"
    );

    // infer serves the promoted blend: each text's probabilities are the file's through ORT.
    registry
        .promote("sentiment-encoder", &outcome.record.version)
        .await
        .unwrap();
    let kafka = sentiflow_tests::kafka_with_topics().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = sentiflow_infer::start(
        infer_config(&kafka, &redis_server.url(), "blend-test", dir.path()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let slot = running.slot.clone();
    assert!(
        sentiflow_tests::eventually(std::time::Duration::from_secs(120), || slot
            .current()
            .is_some())
        .await,
        "{}",
        running.health.snapshot()
    );
    let health = running.health.snapshot();
    assert_eq!(
        health["info"]["model"]["blend_hashed_weight"], 0.5,
        "{health}"
    );
    assert_http_predictions_match_the_file(running.http_addr, &ort, &onnx, &texts[..4]).await;
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuned_encoder_registers_serves_through_ort_and_is_gated_against_its_champion() {
    use sentiflow_burn::BurnDevice;
    use sentiflow_model::featurize::FeaturizerConfig;
    use sentiflow_model::train::TrainConfig;
    use sentiflow_trainer::encoder::BlendRequest;
    use sentiflow_trainer::finetune::{
        EncoderMode, FineTuneConfig, FineTuneRequest, FineTunedModelCard, fine_tune_and_register,
        plan_encoder_probed,
    };

    let redis_server = sentiflow_tests::redis();
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = airline_snapshot(dir.path(), 300);
    let redis =
        RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), "finetune-test")).unwrap();
    let registry = Registry::new(dir.path().join("models"), redis);
    let ort = sentiflow::train::ort_environment().expect("ONNX Runtime (run infra/setup.sh)");
    let files = EncoderFiles::from_cache(&CacheDir::from_env().unwrap())
        .expect("MiniLM files (run infra/setup.sh)");

    // No GPU here: auto plans a frozen head and says why; --device cuda is refused.
    if !sentiflow_burn::probe::cuda().is_available() {
        let plan = plan_encoder_probed(EncoderMode::Auto, TrainDevice::Auto).unwrap();
        assert!(format!("{plan:?}").contains("no usable CUDA"), "{plan:?}");
        let error = plan_encoder_probed(EncoderMode::FineTune, TrainDevice::Cuda).unwrap_err();
        assert!(error.to_string().contains("--device cuda"), "{error}");
    }

    let request = |steps: usize| FineTuneRequest {
        snapshot_id: manifest.snapshot_id.clone(),
        model_name: "sentiment-encoder".to_owned(),
        max_length: 32,
        fine_tune: FineTuneConfig {
            epochs: 1,
            batch_size: 16,
            learning_rate: 3e-4,
            max_steps: Some(steps),
            seed: 3,
            ..FineTuneConfig::default()
        },
        max_train_rows: Some(96),
        device: BurnDevice::NdArray,
        device_reason: "test: burn's CPU backend".to_owned(),
        gate: GatePolicy::default(),
        label_weights: LabelWeights::default(),
        blend: None,
    };
    let first = fine_tune_and_register(&store, &registry, &ort, &files, &request(6))
        .await
        .unwrap();
    assert!(
        first.gate.passed,
        "no champion: passes ({})",
        first.gate.reason
    );
    assert!(first.champion_test.is_none());
    assert_eq!(first.record.trained_on, "burn-cpu");
    let onnx = registry.load_verified(&first.record).await.unwrap();
    assert_eq!(verify_structure(&onnx).unwrap().family, Family::Encoder);
    let metadata = read_metadata(&onnx).unwrap();
    assert!(
        metadata.featurizer_config.contains("\"fine_tuned\":true"),
        "{}",
        metadata.featurizer_config
    );
    assert!(metadata.featurizer_config.contains("all-MiniLM-L6-v2"));
    let (card_dir, card): (_, FineTunedModelCard) = encoder_card(dir.path(), &first.record.version);
    assert_eq!(card.device, "burn-cpu");
    assert_eq!(card.training_rows, 96, "the seeded sample");
    assert_eq!(card.history.len(), 1);
    assert_eq!(card.history[0].steps, 6);
    assert!(card.encoder_config.fine_tuned);
    assert_eq!(
        card.label_weights,
        Some(LabelWeights::default().for_family(ModelFamily::Encoder))
    );
    sentiflow_tests::assert_card_files(&card_dir, &first.record);
    let markdown = std::fs::read_to_string(card_dir.join("card.md")).unwrap();
    assert!(
        markdown.contains("fine-tuned all-MiniLM-L6-v2"),
        "{markdown}"
    );

    // The registered file through ORT gives the card's test figures.
    let test_rows = store.read(&manifest.snapshot_id, Split::Test).unwrap();
    let texts: Vec<&str> = test_rows.iter().map(|row| row.text.as_str()).collect();
    let labels: Vec<usize> = test_rows.iter().map(|row| row.label.index()).collect();
    let through_ort = pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels).unwrap();
    assert_eq!(through_ort.confusion, first.test.confusion);

    // Promoted, it is the champion the next fine-tune is gated against, on the same rows.
    registry
        .promote("sentiment-encoder", &first.record.version)
        .await
        .unwrap();
    let second = fine_tune_and_register(&store, &registry, &ort, &files, &request(3))
        .await
        .unwrap();
    let champion = second
        .champion_test
        .as_ref()
        .expect("the champion was evaluated");
    assert_eq!(
        champion.confusion, first.test.confusion,
        "same rows, same model"
    );
    assert!(
        second.gate.reason.contains("champion"),
        "{}",
        second.gate.reason
    );
    assert_ne!(second.record.version, first.record.version);

    // Blended: a hashed member trained on the whole training split (not the fine-tune's 96-row
    // sample) is appended to the fine-tuned graph, which serves the average; gated like any encoder.
    let blended = fine_tune_and_register(
        &store,
        &registry,
        &ort,
        &files,
        &FineTuneRequest {
            blend: Some(BlendRequest {
                weight: 0.4,
                featurizer: FeaturizerConfig {
                    buckets: 1 << 16,
                    ..FeaturizerConfig::default()
                },
                train: TrainConfig {
                    dim: 16,
                    seed: 3,
                    ..TrainConfig::default()
                },
            }),
            ..request(3)
        },
    )
    .await
    .unwrap();
    let onnx = registry.load_verified(&blended.record).await.unwrap();
    let summary = verify_structure(&onnx).unwrap();
    let (member, rows) = summary.hashed_member.clone().expect("a blend");
    assert_eq!((member.weight, rows), (0.4, 1 << 16));
    assert!(
        read_metadata(&onnx)
            .unwrap()
            .featurizer_config
            .contains("\"fine_tuned\":true")
    );
    let (card_dir, card): (_, FineTunedModelCard) =
        encoder_card(dir.path(), &blended.record.version);
    let member_card = card
        .hashed_member
        .as_ref()
        .expect("the member is in the card");
    assert_eq!(member_card.weight, 0.4);
    assert_eq!(member_card.weights_sha256, member.weights_sha256);
    assert_eq!(
        card.training_rows, 96,
        "the fine-tune's sample is unchanged"
    );
    let train_split = store
        .read(&manifest.snapshot_id, Split::Train)
        .unwrap()
        .len();
    assert!(train_split > 96);
    assert_eq!(
        member_card.train_rows, train_split,
        "the member learns from the whole training split"
    );
    assert!(
        blended
            .champion_test
            .as_ref()
            .is_some_and(|champion| champion.confusion == first.test.confusion),
        "gated against the champion on the same rows"
    );
    // The card's test figures (blended in Rust from the encoder through ORT) are what ORT computes
    // on the registered blend, and its encoder-alone figures are those of the unblended graph.
    let through_ort = pipeline::evaluate_onnx(&ort, &onnx, &texts, &labels).unwrap();
    assert_eq!(through_ort.confusion, blended.test.confusion);
    assert_eq!(card.test.confusion, blended.test.confusion);
    let markdown = std::fs::read_to_string(card_dir.join("card.md")).unwrap();
    assert!(
        markdown.contains("## Blend") && markdown.contains(" + 0.4 × hashed"),
        "{markdown}"
    );
}
