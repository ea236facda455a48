//! The encoder family end to end on real files from the setup cache: the WordPiece tokenizer, frozen
//! int8 MiniLM embeddings through ORT, a head trained on real airline tweets, the composed ONNX
//! model and its parity with the Rust reference (ORT embedding + Rust head) to 1e-5.

mod common;
mod onnx_support;

use onnx_support::{minilm_int8_path, minilm_tokenizer_path, ort_env};
use sentiflow_model::encoder::head::Labelled;
use sentiflow_model::encoder::{
    BASE_MINILM_INT8, DEFAULT_MAX_LENGTH, EMBEDDING_DIM, ENCODER_FEATURIZER_VERSION, EncoderConfig,
    EncoderError, EncoderTokenizer, FrozenEncoder, HeadConfig, sha256_hex, train_head,
};
use sentiflow_model::onnx::{
    FAMILY_ENCODER, Family, ModelMetadata, OnnxError, export_encoder, read_metadata,
    verify_structure,
};
use sentiflow_model::runtime::{DeviceRequest, LoadedModel};

const TOLERANCE: f64 = 1e-5;

fn label_index(label: &str) -> usize {
    sentiflow_model::eval::CLASS_NAMES
        .iter()
        .position(|name| *name == label)
        .unwrap_or_else(|| panic!("unknown label {label}"))
}

fn config(tokenizer: &EncoderTokenizer, base: &[u8]) -> EncoderConfig {
    EncoderConfig {
        tokenizer_sha256: tokenizer.sha256().to_owned(),
        max_length: tokenizer.max_length(),
        normalizer_version: sentiflow_model::NORMALIZER_VERSION.to_owned(),
        base_model: BASE_MINILM_INT8.to_owned(),
        base_sha256: sha256_hex(base),
        fine_tuned: false,
        hashed_member: None,
    }
}

fn metadata(config: &EncoderConfig) -> ModelMetadata {
    ModelMetadata {
        name: "sentiment-encoder".to_owned(),
        version: "3".to_owned(),
        family: FAMILY_ENCODER.to_owned(),
        featurizer_version: ENCODER_FEATURIZER_VERSION.to_owned(),
        featurizer_config_hash: config.config_hash(),
        featurizer_config: config.canonical_json(),
        labels: ModelMetadata::default_labels(),
        training_snapshot: "snap-test".to_owned(),
        weights_sha256: String::new(),
        created_at: "2024-01-01T00:00:00Z".to_owned(),
    }
}

#[test]
fn tokenizing_on_several_threads_gives_the_one_thread_ids_in_input_order() {
    let tokenizer = EncoderTokenizer::from_file(&minilm_tokenizer_path(), 24).expect("tokenizer");
    let texts: Vec<String> = common::airline_rows()
        .into_iter()
        .take(500)
        .map(|row| row.text)
        .collect();
    let one_by_one: Vec<(Vec<i64>, bool)> = texts
        .iter()
        .map(|text| tokenizer.encode(text).expect("encodes"))
        .collect();
    assert!(
        one_by_one.iter().any(|(_, cut)| *cut),
        "some tweets exceed 24 tokens"
    );
    for threads in [1, 2, 7] {
        let parallel: Vec<(Vec<i64>, bool)> = tokenizer
            .encode_all(&texts, threads)
            .into_iter()
            .map(|encoded| encoded.expect("encodes"))
            .collect();
        assert_eq!(parallel, one_by_one, "{threads} threads");
    }
    // Fewer texts than one thread's share stay on the caller's thread.
    assert_eq!(tokenizer.encode_all(&texts[..3], 8).len(), 3);
    assert!(tokenizer.encode_all::<&str>(&[], 4).is_empty());
}

#[test]
fn tokenizer_gives_bert_ids_cleans_first_and_counts_truncation() {
    let path = minilm_tokenizer_path();
    let tokenizer = EncoderTokenizer::from_file(&path, DEFAULT_MAX_LENGTH).expect("tokenizer");
    // bert-base-uncased ids: [CLS] hello world ! [SEP]
    let (ids, cut) = tokenizer.encode("Hello   World!").expect("encodes");
    assert_eq!(ids, [101, 7592, 2088, 999, 102]);
    assert!(!cut);
    // The normaliser runs first: a mention becomes `@user`, a URL `<url>`.
    let (cleaned, _) = tokenizer
        .encode("@united thanks http://t.co/x")
        .expect("encodes");
    let (expected, _) = tokenizer.encode("@user thanks <url>").expect("encodes");
    assert_eq!(cleaned, expected);

    let short = EncoderTokenizer::from_file(&path, 8).expect("tokenizer");
    let batch = short
        .encode_batch(
            &["one two three four five six seven eight nine", "fine", ""],
            4,
        )
        .expect("batch");
    assert_eq!(batch.truncated, 1);
    assert_eq!(batch.cols, 8);
    assert_eq!(batch.lengths, [8, 3, 2]);

    // Grouped by padded length: every row once, in its group of equal padded width, same ids.
    let texts = [
        "a rather long text with quite a few words in it to pass sixteen tokens for sure",
        "short",
        "also short",
    ];
    let groups = tokenizer.encode_grouped(&texts, 16).expect("groups");
    assert_eq!(groups.len(), 2, "one 16-wide and one 32-wide group");
    assert_eq!(groups[0].0, [1, 2]);
    assert_eq!(groups[0].1.cols, 16);
    assert_eq!(groups[1].0, [0]);
    assert_eq!(groups[1].1.cols, 32);
    let (long_ids, _) = tokenizer.encode(texts[0]).expect("encodes");
    assert_eq!(
        &groups[1].1.input_ids[..long_ids.len()],
        long_ids.as_slice()
    );
    assert_eq!(
        batch.empty_rows().collect::<Vec<_>>(),
        [2],
        "nothing but [CLS] [SEP]"
    );
    assert_eq!(
        batch.input_ids[7], 102,
        "a truncated row still ends with [SEP]"
    );
    assert_eq!(&batch.attention_mask[8..16], &[1, 1, 1, 0, 0, 0, 0, 0]);

    // A model's tokenizer is refused when the file differs from the one it was trained with.
    let wrong = EncoderConfig {
        tokenizer_sha256: "0".repeat(64),
        ..config(&tokenizer, b"base")
    };
    assert!(matches!(
        EncoderTokenizer::for_config(&wrong, &path),
        Err(EncoderError::TokenizerMismatch { .. })
    ));
    let right = config(&tokenizer, b"base");
    assert_eq!(
        EncoderTokenizer::for_config(&right, &path)
            .expect("same file")
            .sha256(),
        tokenizer.sha256()
    );
}

#[test]
fn exported_encoder_matches_the_reference_and_its_checks_hold() {
    let env = ort_env();
    let base = std::fs::read(minilm_int8_path()).expect("base encoder");
    let tokenizer =
        EncoderTokenizer::from_file(&minilm_tokenizer_path(), DEFAULT_MAX_LENGTH).expect("tok");
    let mut encoder = FrozenEncoder::load(&env, &base, EMBEDDING_DIM, 2).expect("encoder");

    // A few hundred real airline tweets: 240 to train, 60 to validate.
    let rows: Vec<common::Row> = common::airline_rows().into_iter().take(300).collect();
    let texts: Vec<&str> = rows.iter().map(|row| row.text.as_str()).collect();
    let labels: Vec<usize> = rows.iter().map(|row| label_index(&row.label)).collect();
    let (embeddings, stats) = encoder
        .embed(&tokenizer, &texts, 32, |_| {})
        .expect("embeds");
    assert_eq!(stats.rows, 300);
    assert_eq!(embeddings.len(), 300 * EMBEDDING_DIM);
    let weights = vec![1.0f32; 300];
    let split = 240 * EMBEDDING_DIM;
    let trained = train_head(
        Labelled {
            embeddings: &embeddings[..split],
            labels: &labels[..240],
            weights: &weights[..240],
        },
        Labelled {
            embeddings: &embeddings[split..],
            labels: &labels[240..],
            weights: &weights[240..],
        },
        EMBEDDING_DIM,
        &HeadConfig {
            epochs: 15,
            batch_size: 32,
            ..HeadConfig::default()
        },
    )
    .expect("head trains");
    // Frozen MiniLM features separate airline sentiment well above chance even on 240 rows.
    assert!(
        trained.validation.macro_f1 > 0.4,
        "validation macro-F1 {}",
        trained.validation.macro_f1
    );

    let config = config(&tokenizer, &base);
    let bytes = export_encoder(&base, &trained.head, &config, &metadata(&config)).expect("export");
    assert_eq!(
        bytes,
        export_encoder(&base, &trained.head, &config, &metadata(&config)).expect("export"),
        "same inputs, same bytes"
    );
    let summary = verify_structure(&bytes).expect("valid encoder file");
    assert_eq!(summary.family, Family::Encoder);
    let stored = read_metadata(&bytes).expect("metadata");
    assert_eq!(stored.weights_sha256.len(), 64);
    assert_eq!(
        EncoderTokenizer::for_metadata(&stored, &minilm_tokenizer_path())
            .expect("tokenizer from metadata")
            .max_length(),
        DEFAULT_MAX_LENGTH
    );

    let mut model = LoadedModel::load(&env, &bytes, DeviceRequest::Cpu, 2).expect("loads");
    assert_eq!(model.family(), Family::Encoder);
    let mut max_diff = 0.0f64;
    for chunk in texts[240..].chunks(17) {
        let batch = tokenizer.encode_batch(chunk, 8).expect("batch");
        let served = model
            .predict_masked(
                &batch.input_ids,
                &batch.attention_mask,
                batch.rows,
                batch.cols,
            )
            .expect("ORT runs the encoder");
        let derived = model
            .predict(&batch.input_ids, batch.rows, batch.cols)
            .expect("mask derived from the ids");
        assert_eq!(served, derived);
        let reference = encoder
            .embed_batch(
                &batch.input_ids,
                &batch.attention_mask,
                batch.rows,
                batch.cols,
            )
            .expect("embeds");
        for (row, probabilities) in served.iter().enumerate() {
            let expected = trained
                .head
                .predict(&reference[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM]);
            for (got, want) in probabilities.iter().zip(expected) {
                max_diff = max_diff.max((f64::from(*got) - want).abs());
            }
        }
    }
    eprintln!("encoder parity: max abs diff {max_diff:e}");
    assert!(
        max_diff <= TOLERANCE,
        "ORT vs reference max abs diff {max_diff:e}"
    );

    // Tampering is caught by the structural check.
    let mut forged = metadata(&config);
    forged.weights_sha256 = "f".repeat(64);
    assert!(matches!(
        export_encoder(&base, &trained.head, &config, &forged),
        Err(OnnxError::ChecksumMismatch { .. })
    ));
    let mut wrong_config = metadata(&config);
    wrong_config.featurizer_config_hash = "0".repeat(64);
    assert!(export_encoder(&base, &trained.head, &config, &wrong_config).is_err());
    let mut hashed = metadata(&config);
    hashed.family = "hashed".to_owned();
    assert!(export_encoder(&base, &trained.head, &config, &hashed).is_err());
    let mut bad = bytes.clone();
    let needle = stored.weights_sha256.as_bytes();
    let at = bad
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("checksum is in the file");
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    assert!(matches!(
        verify_structure(&bad),
        Err(OnnxError::ChecksumMismatch { .. })
    ));
}

#[test]
fn blended_model_serves_the_weighted_average_of_its_two_files_and_its_checks_hold() {
    use sentiflow_model::encoder::{HashedMember, LinearHead};
    use sentiflow_model::featurize::{FEATURIZER_VERSION, Featurizer, FeaturizerConfig};
    use sentiflow_model::onnx::{HASHED_PREFIX, export_blend, export_hashed, weights_sha256};

    let env = ort_env();
    let base = std::fs::read(minilm_int8_path()).expect("base encoder");
    let tokenizer = EncoderTokenizer::from_file(&minilm_tokenizer_path(), 32).expect("tokenizer");
    // Seeded weights on both sides: the test is about the graph, not about training.
    let mut rng = onnx_support::Rng::new(11);
    let head = LinearHead {
        dim: EMBEDDING_DIM,
        weights: (0..EMBEDDING_DIM * 3).map(|_| rng.uniform(1.0)).collect(),
        bias: vec![0.1, -0.2, 0.05],
    };
    let featurizer_config = FeaturizerConfig {
        buckets: 1 << 12,
        lexicon_features: false,
        ..FeaturizerConfig::default()
    };
    let featurizer = Featurizer::new(featurizer_config.clone(), None).expect("featurizer");
    let hashed = onnx_support::random_model(1 << 12, 8, 5);
    let encoder_config = config(&tokenizer, &base);
    let encoder_file =
        export_encoder(&base, &head, &encoder_config, &metadata(&encoder_config)).expect("encoder");
    let weight = 0.3f32;
    let blend_config = EncoderConfig {
        hashed_member: Some(HashedMember {
            weight,
            featurizer_version: FEATURIZER_VERSION.to_owned(),
            featurizer_config: featurizer_config.clone(),
            weights_sha256: weights_sha256(&hashed),
        }),
        ..encoder_config.clone()
    };
    let blend_metadata = metadata(&blend_config);
    let blend =
        export_blend(&encoder_file, &hashed, &blend_config, &blend_metadata).expect("blend");
    assert_eq!(
        blend,
        export_blend(&encoder_file, &hashed, &blend_config, &blend_metadata).expect("blend"),
        "same inputs, same bytes"
    );
    let summary = verify_structure(&blend).expect("a valid blend");
    assert_eq!(summary.family, Family::Encoder);
    let (member, rows) = summary.hashed_member.clone().expect("the member is found");
    assert_eq!(rows, 1 << 12);
    assert_eq!(member, blend_config.hashed_member.clone().unwrap());
    assert!(
        verify_structure(&encoder_file)
            .unwrap()
            .hashed_member
            .is_none()
    );

    // Served through ORT: (1 − w) × the encoder file + w × the hashed file, row by row.
    let mut hashed_metadata = onnx_support::test_metadata("sentiment-hashed");
    hashed_metadata.featurizer_version = FEATURIZER_VERSION.to_owned();
    let hashed_file = export_hashed(&hashed, &hashed_metadata).expect("hashed");
    let mut blended = LoadedModel::load(&env, &blend, DeviceRequest::Cpu, 2).expect("blend loads");
    let mut encoder_alone = LoadedModel::load(&env, &encoder_file, DeviceRequest::Cpu, 2).unwrap();
    let mut hashed_alone = LoadedModel::load(&env, &hashed_file, DeviceRequest::Cpu, 1).unwrap();
    assert!(blended.is_blend() && !encoder_alone.is_blend());
    blended
        .warm_up(&[16, 32], 4)
        .expect("warms with padding hashed ids");
    let rows: Vec<String> = common::airline_rows()
        .into_iter()
        .take(40)
        .map(|row| row.text)
        .collect();
    let texts: Vec<&str> = rows.iter().map(String::as_str).chain(["", "🙂"]).collect();
    let mut max_diff = 0.0f64;
    for chunk in texts.chunks(9) {
        let batch = tokenizer.encode_batch(chunk, 2).expect("batch");
        let (hashed_ids, hashed_rows, hashed_cols) = featurizer.batch_padded(chunk);
        assert_eq!(hashed_rows, batch.rows);
        let served = blended
            .predict_blend(
                &batch.input_ids,
                &batch.attention_mask,
                batch.rows,
                batch.cols,
                &hashed_ids,
                hashed_cols,
            )
            .expect("ORT runs the blend");
        let encoder_part = encoder_alone
            .predict_masked(
                &batch.input_ids,
                &batch.attention_mask,
                batch.rows,
                batch.cols,
            )
            .unwrap();
        let hashed_part = hashed_alone
            .predict(&hashed_ids, hashed_rows, hashed_cols)
            .unwrap();
        for ((got, encoder_row), hashed_row) in served.iter().zip(&encoder_part).zip(&hashed_part) {
            for class in 0..3 {
                let want = f64::from(1.0 - weight) * f64::from(encoder_row[class])
                    + f64::from(weight) * f64::from(hashed_row[class]);
                max_diff = max_diff.max((f64::from(got[class]) - want).abs());
            }
        }
    }
    eprintln!("blend parity: max abs diff {max_diff:e}");
    assert!(max_diff <= 1e-6, "blend vs its parts: {max_diff:e}");

    // Each model is fed what it takes, and nothing else.
    let batch = tokenizer.encode_batch(&["fine"], 1).unwrap();
    let refused = blended.predict_masked(&batch.input_ids, &batch.attention_mask, 1, batch.cols);
    assert!(refused.unwrap_err().to_string().contains("hashed_ids"));
    assert!(blended.predict(&batch.input_ids, 1, batch.cols).is_err());
    assert!(
        encoder_alone
            .predict_blend(
                &batch.input_ids,
                &batch.attention_mask,
                1,
                batch.cols,
                &[1],
                1
            )
            .is_err()
    );
    let out_of_range = blended.predict_blend(
        &batch.input_ids,
        &batch.attention_mask,
        1,
        batch.cols,
        &[1 << 12],
        1,
    );
    assert!(out_of_range.unwrap_err().to_string().contains("outside"));

    // Refusals: a member checksum that is not the hashed model's, a blend of a blend, a config that
    // is not the encoder file's, metadata without the member.
    let mut forged_member = blend_config.clone();
    forged_member.hashed_member.as_mut().unwrap().weights_sha256 = "0".repeat(64);
    assert!(matches!(
        export_blend(
            &encoder_file,
            &hashed,
            &forged_member,
            &metadata(&forged_member)
        ),
        Err(OnnxError::ChecksumMismatch { .. })
    ));
    assert!(export_blend(&blend, &hashed, &blend_config, &blend_metadata).is_err());
    let other_length = EncoderConfig {
        max_length: 48,
        ..blend_config.clone()
    };
    assert!(
        export_blend(
            &encoder_file,
            &hashed,
            &other_length,
            &metadata(&other_length)
        )
        .is_err()
    );
    assert!(
        export_blend(
            &encoder_file,
            &hashed,
            &encoder_config,
            &metadata(&encoder_config)
        )
        .is_err()
    );
    // A file rewritten after the fact with its whole-graph checksum recomputed: the member's own
    // checksum refuses changed member weights, and the wiring check refuses shares that are not the
    // config's weight.
    let rewritten = |change: &dyn Fn(&mut sentiflow_model::onnx::proto::GraphProto)| {
        use prost::Message as _;
        let mut model = sentiflow_model::onnx::proto::ModelProto::decode(blend.as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        change(graph);
        let checksum = sentiflow_model::onnx::graph_weights_sha256(graph);
        for entry in &mut model.metadata_props {
            if entry.key.as_deref() == Some("weights_sha256") {
                entry.value = Some(checksum.clone());
            }
        }
        model.encode_to_vec()
    };
    let set_tensor =
        |graph: &mut sentiflow_model::onnx::proto::GraphProto, name: &str, values: &[f32]| {
            let tensor = graph
                .initializer
                .iter_mut()
                .find(|tensor| tensor.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{name} is in the blend"));
            tensor.raw_data = Some(
                values
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect(),
            );
        };
    let bias = format!("{HASHED_PREFIX}bias");
    let other_bias = rewritten(&|graph| set_tensor(graph, &bias, &[9.0, 0.0, -9.0]));
    match verify_structure(&other_bias) {
        Err(OnnxError::ChecksumMismatch { declared, .. }) => {
            assert_eq!(
                declared,
                weights_sha256(&hashed),
                "the member's checksum refused it"
            );
        }
        other => panic!("expected the member's checksum to refuse it, got {other:?}"),
    }
    let other_share = rewritten(&|graph| set_tensor(graph, "sentiflow_blend/hashed_share", &[0.9]));
    let error = verify_structure(&other_share).unwrap_err();
    assert!(
        matches!(&error, OnnxError::Structure(message) if message.contains("hashed_share")),
        "{error}"
    );
    assert!(
        verify_structure(&rewritten(&|_| {})).is_ok(),
        "unchanged: accepted"
    );
}
