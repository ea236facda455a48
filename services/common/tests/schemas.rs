//! Contract tests: Rust event types, JSON Schemas, example files and the topic catalogue agree,
//! and the schemas reject what they must (missing fields, wrong types, bad times, extras...).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use sentiflow_common::catalogue::{Catalogue, topics};
use sentiflow_common::events::{
    CleanReview, DeadLetter, Device, DeviceWanted, DriftReport, DriftStatus, Event, GateDecision,
    LabelFeedback, LabelInfo, LabelProvenance, ModelAlias, ModelFamily, ModelRef, ModelUpdate,
    NegativeAlert, Prediction, Probabilities, RawReview, Redactions, RequestedBy, RetrainRequest,
    SCHEMA_VERSION, Sentiment, Signal, SourceCoordinate, UpdateAction, Window, WindowKind,
    new_event_id,
};
use sentiflow_common::schema::{EventSchema, SchemaRegistry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The repository's `schemas/` directory.
fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// A fixed instant with sub-second precision, `minutes` after a base time.
fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
        .single()
        .expect("valid time")
        + Duration::minutes(minutes)
        + Duration::microseconds(123_456)
}

fn model() -> ModelRef {
    ModelRef {
        name: "sentiment-hashed".to_owned(),
        version: "12".to_owned(),
        family: ModelFamily::Hashed,
    }
}

fn hex64(seed: char) -> String {
    std::iter::repeat_n(seed, 64).collect()
}

fn raw_review() -> RawReview {
    let mut metadata = serde_json::Map::new();
    metadata.insert("app_version".to_owned(), json!("5.2.1"));
    metadata.insert("likes".to_owned(), json!(12));
    metadata.insert("score".to_owned(), json!(0.5));
    metadata.insert("verified".to_owned(), json!(true));
    metadata.insert("region".to_owned(), Value::Null);
    RawReview {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: Utc::now(),
        review_id: "tw-42".to_owned(),
        source: "twitter".to_owned(),
        author: "@jane".to_owned(),
        text: "Löve the new design 😍 but the app crashes on start".to_owned(),
        created_at: at(-5),
        rating: Some(4),
        label: Some(Sentiment::Positive),
        lang: Some("pt-BR".to_owned()),
        metadata: Some(metadata),
    }
}

fn clean_review() -> CleanReview {
    CleanReview {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(0),
        source_event_id: new_event_id(),
        review_id: "tw-42".to_owned(),
        source: "twitter".to_owned(),
        author_hash: hex64('a'),
        text: "löve the new design but the app crashes on start, call <phone>".to_owned(),
        text_hash: hex64('0'),
        created_at: at(-5),
        lang: "und".to_owned(),
        lang_confidence: 0.0,
        lang_allowed: true,
        label: Some(LabelInfo {
            label: Sentiment::Neutral,
            provenance: LabelProvenance::WeakLexicon,
            confidence: 0.55,
        }),
        redactions: Redactions {
            emails: 0,
            phones: 1,
            cards: 0,
        },
        normalizer_version: "norm-1".to_owned(),
        source_offset: SourceCoordinate {
            topic: "t9x.reviews.raw".to_owned(),
            partition: 2,
            offset: i64::MAX,
        },
        metadata: None,
        rating: None,
    }
}

fn dead_letter() -> DeadLetter {
    DeadLetter::new(
        "ingest",
        "schema_violation",
        "review.schema.json violated: at /text: value is longer than 10000 characters",
        SourceCoordinate {
            topic: "reviews.raw".to_owned(),
            partition: 0,
            offset: 0,
        },
        Some(&[0x00, 0xff, 0x10]),
        b"{\"text\": \"\xff\xfe not utf-8\"}",
    )
}

fn label_feedback() -> LabelFeedback {
    LabelFeedback {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(60),
        review_id: "tw-42".to_owned(),
        label: Sentiment::Negative,
        reviewer: "alice".to_owned(),
        note: Some("sarcasm".to_owned()),
    }
}

fn prediction() -> Prediction {
    let probabilities = Probabilities::from_array([0.1, 0.2, 0.7]);
    let (label, confidence) = probabilities.argmax();
    Prediction {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(1),
        source_event_id: new_event_id(),
        review_id: "tw-42".to_owned(),
        label,
        probabilities,
        confidence,
        model: model(),
        device: Device::Cpu,
        inference_latency_ms: 0.35,
        created_at: at(-5),
        text_length: 61,
        oov_rate: Some(0.125),
        lang: None,
    }
}

fn negative_alert() -> NegativeAlert {
    NegativeAlert {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(1),
        review_id: "tw-43".to_owned(),
        source_event_id: new_event_id(),
        confidence: 0.93,
        threshold: 0.9,
        model: model(),
        device: Device::Cuda,
        text: "worst service ever, never again".to_owned(),
        source: "app-store".to_owned(),
        created_at: at(-3),
    }
}

fn drift_report() -> DriftReport {
    DriftReport {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(30),
        report_id: "r-1".to_owned(),
        model: model(),
        window: Window {
            kind: WindowKind::Time,
            start: at(0),
            end: at(30),
            events: 12_345,
        },
        signals: vec![
            Signal {
                name: "label_distribution_psi".to_owned(),
                statistic: 0.12,
                warn_threshold: 0.1,
                drift_threshold: 0.25,
                p_value: None,
                status: DriftStatus::Warn,
                detail: Some("negative share up".to_owned()),
            },
            Signal {
                name: "confidence_ks".to_owned(),
                statistic: -0.0,
                warn_threshold: 0.1,
                drift_threshold: 0.2,
                p_value: Some(1.0),
                status: DriftStatus::Ok,
                detail: None,
            },
        ],
        status: DriftStatus::Warn,
        confirmed: false,
        consecutive_drift_windows: 0,
        muted: true,
    }
}

fn retrain_request() -> RetrainRequest {
    RetrainRequest {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(31),
        request_id: "req-1".to_owned(),
        reason: "operator asked".to_owned(),
        requested_by: RequestedBy::Operator,
        report_id: None,
        model: model(),
        family: ModelFamily::Encoder,
        data_from: Some(at(-10_000)),
        data_to: None,
        device_wanted: DeviceWanted::Cuda,
    }
}

fn model_update() -> ModelUpdate {
    ModelUpdate {
        schema_version: SCHEMA_VERSION,
        event_id: new_event_id(),
        event_time: at(40),
        action: UpdateAction::RolledBack,
        model: model(),
        previous_version: Some("13".to_owned()),
        alias: Some(ModelAlias::Champion),
        artifact_uri: "file:///data/models/sentiment-hashed/12/model.onnx".to_owned(),
        sha256: hex64('f'),
        featurizer_version: "hashed-ngram-1".to_owned(),
        metrics: BTreeMap::from([
            ("macro_f1".to_owned(), 0.71),
            ("recall_negative".to_owned(), 0.8),
        ]),
        gate: Some(GateDecision {
            passed: false,
            reason: "no champion yet".to_owned(),
            challenger_macro_f1: 0.71,
            champion_macro_f1: None,
            epsilon: 0.01,
            max_recall_drop: 0.02,
        }),
        detail: None,
    }
}

/// Serialises `event`, validates it, decodes it back and checks it is unchanged.
fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: &E) -> Value {
    let bytes = event.to_json_vec().expect("serialise");
    let value: Value = serde_json::from_slice(&bytes).expect("json");
    if let Err(violation) = SchemaRegistry::global().validate(E::SCHEMA, &value) {
        panic!("{violation}\n{value:#}");
    }
    event.validate().expect("Event::validate agrees");
    let back = E::decode_validated(&bytes).expect("decode");
    assert_eq!(&back, event, "{} round trip", E::SCHEMA);
    value
}

#[test]
fn every_event_type_round_trips_through_its_schema() {
    let review = round_trip(&raw_review());
    assert!(review["metadata"].is_object());
    let clean = round_trip(&clean_review());
    // Optional fields that are absent are left out, not written as null.
    assert!(clean.get("metadata").is_none() && clean.get("rating").is_none());
    // Nullable but required fields are written as null.
    let mut unlabelled = clean_review();
    unlabelled.label = None;
    assert_eq!(round_trip(&unlabelled)["label"], Value::Null);
    round_trip(&dead_letter());
    round_trip(&label_feedback());
    round_trip(&prediction());
    round_trip(&negative_alert());
    round_trip(&drift_report());
    let request = round_trip(&retrain_request());
    assert_eq!(request["report_id"], Value::Null);
    assert_eq!(request["data_to"], Value::Null);
    round_trip(&model_update());
    let mut registered = model_update();
    registered.action = UpdateAction::Registered;
    registered.previous_version = None;
    registered.alias = None;
    registered.gate = None;
    registered.metrics.clear();
    round_trip(&registered);
    let mut load_failed = model_update();
    load_failed.action = UpdateAction::LoadFailed;
    load_failed.detail = Some("infer@host-1: checksum mismatch".to_owned());
    let value = round_trip(&load_failed);
    assert_eq!(value["action"], "load_failed");
    assert_eq!(value["detail"], "infer@host-1: checksum mismatch");
}

#[test]
fn times_are_rfc3339_utc() {
    let value = serde_json::to_value(clean_review()).expect("serialise");
    assert_eq!(value["event_time"], json!("2024-05-01T12:00:00.123456Z"));
}

#[test]
fn keys_follow_the_catalogue() {
    assert_eq!(raw_review().key(), "tw-42");
    assert_eq!(clean_review().key(), "tw-42");
    assert_eq!(label_feedback().key(), "tw-42");
    assert_eq!(prediction().key(), "tw-42");
    assert_eq!(negative_alert().key(), "tw-43");
    assert_eq!(drift_report().key(), "12");
    assert_eq!(retrain_request().key(), "12");
    assert_eq!(model_update().key(), "sentiment-hashed");
    assert_eq!(dead_letter().key(), "AP8Q");
}

/// The example file for `schema`.
fn example(schema: EventSchema) -> Value {
    let path = schemas_dir()
        .join("examples")
        .join(format!("{}.json", schema.name()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes an example into its Rust type and checks the re-encoding validates and decodes equal.
fn example_fits<E: Event + PartialEq + std::fmt::Debug>() -> E {
    let value = example(E::SCHEMA);
    let bytes = serde_json::to_vec(&value).expect("bytes");
    let event = E::decode_validated(&bytes)
        .unwrap_or_else(|e| panic!("examples/{}.json: {e}", E::SCHEMA.name()));
    round_trip(&event);
    event
}

#[test]
fn example_files_validate_and_decode() {
    for schema in EventSchema::ALL {
        if let Err(violation) = SchemaRegistry::global().validate(schema, &example(schema)) {
            panic!("examples/{}.json: {violation}", schema.name());
        }
    }
    let review: RawReview = example_fits();
    assert_eq!(review.label, None);
    example_fits::<CleanReview>();
    let letter: DeadLetter = example_fits();
    assert_eq!(
        letter.original_value().expect("base64").len() as u64,
        letter.original_size_bytes
    );
    assert_eq!(
        letter.original_key().expect("base64"),
        Some(b"tw-1".to_vec())
    );
    example_fits::<LabelFeedback>();
    example_fits::<Prediction>();
    example_fits::<NegativeAlert>();
    example_fits::<DriftReport>();
    example_fits::<RetrainRequest>();
    example_fits::<ModelUpdate>();
}

/// One way to break a valid event.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// Remove the member at this JSON pointer.
    Remove(&'static str),
    /// Set the member at this JSON pointer (its parent must exist).
    Set(&'static str, fn() -> Value),
}

/// Applies `edit` to `value`.
fn apply(value: &mut Value, edit: Edit) {
    let (pointer, new) = match edit {
        Edit::Remove(pointer) => (pointer, None),
        Edit::Set(pointer, make) => (pointer, Some(make())),
    };
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = value
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent for {pointer}"));
    match (parent, new) {
        (Value::Object(map), Some(new)) => {
            map.insert(key.to_owned(), new);
        }
        (Value::Object(map), None) => {
            assert!(map.remove(key).is_some(), "nothing to remove at {pointer}");
        }
        (Value::Array(items), Some(new)) => {
            items[key.parse::<usize>().expect("index")] = new;
        }
        (other, _) => panic!("cannot edit {pointer} in {other}"),
    }
}

/// Invalid edits that apply to every event.
const COMMON_INVALID: &[(&str, Edit)] = &[
    (
        "unknown schema_version",
        Edit::Set("/schema_version", || json!(2)),
    ),
    (
        "schema_version 0",
        Edit::Set("/schema_version", || json!(0)),
    ),
    (
        "schema_version as string",
        Edit::Set("/schema_version", || json!("1")),
    ),
    ("event_id wrong type", Edit::Set("/event_id", || json!(42))),
    ("empty event_id", Edit::Set("/event_id", || json!(""))),
    (
        "event_id too long",
        Edit::Set("/event_id", || json!("e".repeat(129))),
    ),
    (
        "event_time not a time",
        Edit::Set("/event_time", || json!("yesterday")),
    ),
    (
        "event_time without offset",
        Edit::Set("/event_time", || json!("2024-05-01T12:00:00")),
    ),
    (
        "event_time with space",
        Edit::Set("/event_time", || json!("2024-05-01 12:00:00Z")),
    ),
    (
        "event_time month 13",
        Edit::Set("/event_time", || json!("2024-13-01T12:00:00Z")),
    ),
    (
        "event_time Feb 30",
        Edit::Set("/event_time", || json!("2023-02-30T12:00:00Z")),
    ),
    (
        "event_time hour 25",
        Edit::Set("/event_time", || json!("2024-05-01T25:00:00Z")),
    ),
    (
        "event_time epoch number",
        Edit::Set("/event_time", || json!(1_714_564_800)),
    ),
    ("unknown extra field", Edit::Set("/extra", || json!("x"))),
    ("missing event_id", Edit::Remove("/event_id")),
];

/// Invalid edits specific to one schema.
fn specific_invalid(schema: EventSchema) -> Vec<(&'static str, Edit)> {
    let long_text = || json!("x".repeat(10_001));
    match schema {
        EventSchema::Review => vec![
            ("oversize text", Edit::Set("/text", long_text)),
            ("empty text", Edit::Set("/text", || json!(""))),
            ("text wrong type", Edit::Set("/text", || json!(["a"]))),
            ("rating 0", Edit::Set("/rating", || json!(0))),
            ("rating 6", Edit::Set("/rating", || json!(6))),
            ("rating fractional", Edit::Set("/rating", || json!(4.5))),
            ("bad label", Edit::Set("/label", || json!("angry"))),
            (
                "label capitalised",
                Edit::Set("/label", || json!("Positive")),
            ),
            ("bad lang", Edit::Set("/lang", || json!("English"))),
            (
                "author too long",
                Edit::Set("/author", || json!("a".repeat(257))),
            ),
            ("empty source", Edit::Set("/source", || json!(""))),
            (
                "bad created_at",
                Edit::Set("/created_at", || json!("2024-05-01")),
            ),
            (
                "nested metadata",
                Edit::Set("/metadata/nested", || json!({"a": 1})),
            ),
            ("array metadata", Edit::Set("/metadata/list", || json!([1]))),
            (
                "metadata not object",
                Edit::Set("/metadata", || json!("k=v")),
            ),
            (
                "metadata over 32 keys",
                Edit::Set("/metadata", || {
                    Value::Object((0..33).map(|i| (format!("k{i}"), json!(i))).collect())
                }),
            ),
        ],
        EventSchema::CleanReview => vec![
            ("oversize text", Edit::Set("/text", long_text)),
            (
                "negative offset",
                Edit::Set("/source_offset/offset", || json!(-1)),
            ),
            (
                "negative partition",
                Edit::Set("/source_offset/partition", || json!(-1)),
            ),
            (
                "extra in source_offset",
                Edit::Set("/source_offset/extra", || json!(1)),
            ),
            (
                "bad provenance",
                Edit::Set("/label/provenance", || json!("guess")),
            ),
            (
                "label as bare string",
                Edit::Set("/label", || json!("negative")),
            ),
            (
                "confidence above 1",
                Edit::Set("/label/confidence", || json!(1.5)),
            ),
            (
                "lang_confidence negative",
                Edit::Set("/lang_confidence", || json!(-0.1)),
            ),
            (
                "short author_hash",
                Edit::Set("/author_hash", || json!("abc")),
            ),
            (
                "uppercase text_hash",
                Edit::Set("/text_hash", || json!("F".repeat(64))),
            ),
            (
                "negative redactions",
                Edit::Set("/redactions/emails", || json!(-1)),
            ),
            ("missing redaction count", Edit::Remove("/redactions/cards")),
            (
                "lang_allowed as string",
                Edit::Set("/lang_allowed", || json!("yes")),
            ),
            ("missing label (nullable, required)", Edit::Remove("/label")),
        ],
        EventSchema::DeadLetter => vec![
            (
                "sha256 not hex",
                Edit::Set("/original_sha256", || json!("z".repeat(64))),
            ),
            ("negative offset", Edit::Set("/source/offset", || json!(-1))),
            (
                "bad error_kind",
                Edit::Set("/error_kind", || json!("Schema-Violation")),
            ),
            (
                "value not base64",
                Edit::Set("/original_value_b64", || json!("not base64!")),
            ),
            (
                "value bad padding",
                Edit::Set("/original_value_b64", || json!("abc")),
            ),
            (
                "key not base64",
                Edit::Set("/original_key_b64", || json!("@@@@")),
            ),
            (
                "negative size",
                Edit::Set("/original_size_bytes", || json!(-3)),
            ),
            (
                "missing key (nullable, required)",
                Edit::Remove("/original_key_b64"),
            ),
            (
                "reason too long",
                Edit::Set("/reason", || json!("r".repeat(4097))),
            ),
        ],
        EventSchema::LabelFeedback => vec![
            ("bad label", Edit::Set("/label", || json!("mixed"))),
            ("null label", Edit::Set("/label", || Value::Null)),
            ("empty reviewer", Edit::Set("/reviewer", || json!(""))),
            (
                "note too long",
                Edit::Set("/note", || json!("n".repeat(2001))),
            ),
        ],
        EventSchema::Prediction => vec![
            ("bad label", Edit::Set("/label", || json!("meh"))),
            ("bad device", Edit::Set("/device", || json!("tpu"))),
            ("bad family", Edit::Set("/model/family", || json!("llm"))),
            ("extra in model", Edit::Set("/model/extra", || json!(1))),
            ("missing model version", Edit::Remove("/model/version")),
            (
                "probability above 1",
                Edit::Set("/probabilities/neutral", || json!(1.01)),
            ),
            (
                "missing probability",
                Edit::Remove("/probabilities/positive"),
            ),
            (
                "negative latency",
                Edit::Set("/inference_latency_ms", || json!(-1)),
            ),
            (
                "negative text_length",
                Edit::Set("/text_length", || json!(-1)),
            ),
            ("oov_rate above 1", Edit::Set("/oov_rate", || json!(2))),
            (
                "latency as string",
                Edit::Set("/inference_latency_ms", || json!("3ms")),
            ),
        ],
        EventSchema::NegativeAlert => vec![
            ("oversize text", Edit::Set("/text", long_text)),
            ("bad device", Edit::Set("/device", || json!("gpu"))),
            ("threshold above 1", Edit::Set("/threshold", || json!(90))),
        ],
        EventSchema::DriftReport => vec![
            ("bad status", Edit::Set("/status", || json!("alarm"))),
            (
                "bad window kind",
                Edit::Set("/window/kind", || json!("session")),
            ),
            (
                "bad signal status",
                Edit::Set("/signals/0/status", || json!("bad")),
            ),
            (
                "p_value above 1",
                Edit::Set("/signals/1/p_value", || json!(3)),
            ),
            ("missing p_value", Edit::Remove("/signals/0/p_value")),
            (
                "extra in signal",
                Edit::Set("/signals/0/extra", || json!(1)),
            ),
            (
                "statistic null",
                Edit::Set("/signals/0/statistic", || Value::Null),
            ),
            ("negative events", Edit::Set("/window/events", || json!(-5))),
            (
                "bad window end",
                Edit::Set("/window/end", || json!("later")),
            ),
            ("signals not array", Edit::Set("/signals", || json!({}))),
            (
                "negative drift windows",
                Edit::Set("/consecutive_drift_windows", || json!(-1)),
            ),
        ],
        EventSchema::RetrainRequest => vec![
            (
                "bad requested_by",
                Edit::Set("/requested_by", || json!("cron")),
            ),
            (
                "bad device_wanted",
                Edit::Set("/device_wanted", || json!("tpu")),
            ),
            ("bad family", Edit::Set("/family", || json!("big"))),
            (
                "bad data_from",
                Edit::Set("/data_from", || json!("last week")),
            ),
            (
                "missing data_to (nullable, required)",
                Edit::Remove("/data_to"),
            ),
        ],
        EventSchema::ModelUpdate => vec![
            ("bad action", Edit::Set("/action", || json!("deleted"))),
            ("bad alias", Edit::Set("/alias", || json!("canary"))),
            ("bad sha256", Edit::Set("/sha256", || json!("1234"))),
            (
                "metric not a number",
                Edit::Set("/metrics/macro_f1", || json!("0.7")),
            ),
            ("gate missing epsilon", Edit::Remove("/gate/epsilon")),
            ("gate extra field", Edit::Set("/gate/extra", || json!(true))),
            (
                "empty artifact_uri",
                Edit::Set("/artifact_uri", || json!("")),
            ),
        ],
    }
}

/// Valid edits: things the schemas must keep accepting.
fn specific_valid(schema: EventSchema) -> Vec<(&'static str, Edit)> {
    let max_text = || json!("é".repeat(10_000));
    let mut edits = vec![
        (
            "time with offset and nanos",
            Edit::Set("/event_time", || {
                json!("2024-05-01T14:00:00.123456789+02:00")
            }),
        ),
        (
            "leap day",
            Edit::Set("/event_time", || json!("2024-02-29T00:00:00Z")),
        ),
    ];
    edits.extend(match schema {
        EventSchema::Review => vec![
            ("text of exactly 10000 chars", Edit::Set("/text", max_text)),
            ("null rating", Edit::Set("/rating", || Value::Null)),
            ("null label", Edit::Set("/label", || Value::Null)),
            ("null lang", Edit::Set("/lang", || Value::Null)),
            ("three-letter lang", Edit::Set("/lang", || json!("eng"))),
            ("no rating", Edit::Remove("/rating")),
            ("no label", Edit::Remove("/label")),
            ("no lang", Edit::Remove("/lang")),
            ("no metadata", Edit::Remove("/metadata")),
            ("empty author", Edit::Set("/author", || json!(""))),
            (
                "any metadata key",
                Edit::Set("/metadata/any key at all", || Value::Null),
            ),
        ],
        EventSchema::CleanReview => vec![
            ("text of exactly 10000 chars", Edit::Set("/text", max_text)),
            ("unlabelled", Edit::Set("/label", || Value::Null)),
            ("und language", Edit::Set("/lang", || json!("und"))),
            ("no metadata", Edit::Remove("/metadata")),
            ("no rating", Edit::Remove("/rating")),
        ],
        EventSchema::DeadLetter => vec![
            ("no key", Edit::Set("/original_key_b64", || Value::Null)),
            (
                "explicitly not truncated",
                Edit::Set("/original_truncated", || json!(false)),
            ),
            (
                "empty value",
                Edit::Set("/original_value_b64", || json!("")),
            ),
        ],
        EventSchema::LabelFeedback => vec![
            ("null note", Edit::Set("/note", || Value::Null)),
            ("no note", Edit::Remove("/note")),
        ],
        EventSchema::Prediction => vec![
            ("no oov_rate", Edit::Remove("/oov_rate")),
            ("null lang", Edit::Set("/lang", || Value::Null)),
        ],
        EventSchema::NegativeAlert => vec![],
        EventSchema::DriftReport => vec![
            ("no detail", Edit::Remove("/signals/0/detail")),
            ("no signals", Edit::Set("/signals", || json!([]))),
            (
                "negative statistic",
                Edit::Set("/signals/0/statistic", || json!(-3.5)),
            ),
        ],
        EventSchema::RetrainRequest => vec![
            ("no report", Edit::Set("/report_id", || Value::Null)),
            ("no data_from", Edit::Set("/data_from", || Value::Null)),
        ],
        EventSchema::ModelUpdate => vec![
            ("no gate", Edit::Set("/gate", || Value::Null)),
            (
                "no champion yet",
                Edit::Set("/gate/champion_macro_f1", || Value::Null),
            ),
            ("no alias", Edit::Set("/alias", || Value::Null)),
            ("no metrics", Edit::Set("/metrics", || json!({}))),
        ],
    });
    edits
}

#[test]
fn invalid_events_are_rejected_table_driven() {
    let registry = SchemaRegistry::global();
    let mut failures = Vec::new();
    for schema in EventSchema::ALL {
        let valid = example(schema);
        let cases = COMMON_INVALID
            .iter()
            .copied()
            .chain(specific_invalid(schema));
        for (what, edit) in cases {
            let mut value = valid.clone();
            apply(&mut value, edit);
            match registry.validate(schema, &value) {
                Ok(()) => failures.push(format!("{schema}: accepted {what}")),
                Err(violation) => {
                    assert!(!violation.errors.is_empty());
                    assert!(violation.errors.iter().all(|e| e.starts_with("at /")));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_required_field_is_required() {
    let registry = SchemaRegistry::global();
    for schema in EventSchema::ALL {
        let document: Value = serde_json::from_str(schema.source()).expect("schema json");
        let required = document["required"].as_array().expect("required list");
        for field in ["schema_version", "event_id", "event_time"] {
            assert!(
                required.contains(&json!(field)),
                "{schema} must require {field}"
            );
        }
        let valid = example(schema);
        for field in required {
            let field = field.as_str().expect("field name");
            let mut value = valid.clone();
            value.as_object_mut().expect("object").remove(field);
            assert!(
                !registry.is_valid(schema, &value),
                "{schema}: accepted an event without {field}"
            );
        }
    }
}

#[test]
fn valid_variants_are_accepted() {
    let registry = SchemaRegistry::global();
    let mut failures = Vec::new();
    for schema in EventSchema::ALL {
        let valid = example(schema);
        for (what, edit) in specific_valid(schema) {
            let mut value = valid.clone();
            apply(&mut value, edit);
            if let Err(violation) = registry.validate(schema, &value) {
                failures.push(format!("{schema}: rejected {what}: {violation}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Walks a schema document and reports property definitions without a description and object
/// schemas with properties that allow additional ones.
fn lint(path: &str, node: &Value, problems: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                    problems.push(format!(
                        "{path}: object without additionalProperties: false"
                    ));
                }
                for (name, property) in properties {
                    if property
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none()
                    {
                        problems.push(format!("{path}/properties/{name}: no description"));
                    }
                }
            }
            for (key, child) in map {
                lint(&format!("{path}/{key}"), child, problems);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                lint(&format!("{path}/{i}"), child, problems);
            }
        }
        _ => {}
    }
}

#[test]
fn schema_files_follow_house_rules() {
    let mut problems = Vec::new();
    let mut files = vec![(
        "common.schema.json".to_owned(),
        sentiflow_common::schema::COMMON_SCHEMA_SOURCE.to_owned(),
    )];
    files.extend(
        EventSchema::ALL
            .iter()
            .map(|s| (s.file_name().to_owned(), s.source().to_owned())),
    );
    for (file, source) in files {
        let document: Value = serde_json::from_str(&source).expect("json");
        for key in ["$schema", "$id", "title", "description"] {
            if document.get(key).and_then(Value::as_str).is_none() {
                problems.push(format!("{file}: no {key}"));
            }
        }
        assert_eq!(
            document["$id"],
            json!(format!("https://sentiflow.dev/schemas/{file}"))
        );
        lint(&file, &document, &mut problems);
        // The embedded copy is the file on disk.
        let on_disk = std::fs::read_to_string(schemas_dir().join(&file)).expect("read");
        assert_eq!(on_disk, source, "{file} differs from the embedded copy");
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn schemas_directory_has_no_stray_schema_files() {
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(schemas_dir()).expect("schemas dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".schema.json") && name != "common.schema.json" {
            on_disk.insert(name);
        }
    }
    let known: BTreeSet<String> = EventSchema::ALL
        .iter()
        .map(|s| s.file_name().to_owned())
        .collect();
    assert_eq!(on_disk, known);
}

#[test]
fn catalogue_covers_every_topic_and_schema() {
    let catalogue = Catalogue::embedded();
    let from_disk = Catalogue::load(schemas_dir().join("topics.json")).expect("load from disk");
    assert_eq!(&from_disk, catalogue);

    let names: BTreeSet<&str> = catalogue.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, topics::ALL.into_iter().collect::<BTreeSet<_>>());

    let mut used = BTreeSet::new();
    for topic in &catalogue.topics {
        let schema = topic.event_schema().expect("known schema");
        assert!(
            schemas_dir().join(&topic.schema).is_file(),
            "{}",
            topic.schema
        );
        assert!(topic.partitions >= 1 && !topic.description.is_empty());
        assert!(
            !topic.producers.is_empty() && !topic.consumers.is_empty(),
            "{}",
            topic.name
        );
        // The key names a string field of the event (the example shows it).
        let pointer = format!("/{}", topic.key.replace('.', "/"));
        let key = example(schema).pointer(&pointer).cloned();
        assert!(
            matches!(key, Some(Value::String(_))),
            "{}: key {} is not a string field of {}",
            topic.name,
            topic.key,
            topic.schema
        );
        used.insert(schema);
    }
    assert_eq!(used, EventSchema::ALL.into_iter().collect::<BTreeSet<_>>());

    let get = |name: &str| catalogue.get(name).expect(name);
    assert_eq!(get(topics::REVIEWS_RAW).partitions, 3);
    assert_eq!(get(topics::REVIEWS_DLQ).retention_ms, 30 * 24 * 3_600_000);
    assert_eq!(
        get(topics::MODELS_UPDATES).retention_ms,
        90 * 24 * 3_600_000
    );
    assert_eq!(get(topics::DRIFT_REPORTS).retention_ms, 90 * 24 * 3_600_000);
    assert_eq!(
        get(topics::PREDICTIONS_SHADOW).schema,
        "prediction.schema.json"
    );
}

#[test]
fn rust_keys_match_catalogue_key_fields() {
    fn check<E: Event + Serialize + DeserializeOwned>(topic: &str, event: &E) {
        let spec = Catalogue::embedded().get(topic).expect(topic);
        assert_eq!(spec.event_schema(), Some(E::SCHEMA), "{topic}");
        let value = serde_json::to_value(event).expect("serialise");
        let pointer = format!("/{}", spec.key.replace('.', "/"));
        assert_eq!(
            value.pointer(&pointer),
            Some(&json!(event.key())),
            "{topic}"
        );
    }
    check(topics::REVIEWS_RAW, &raw_review());
    check(topics::REVIEWS_CLEAN, &clean_review());
    check(topics::REVIEWS_DLQ, &dead_letter());
    check(topics::LABELS_FEEDBACK, &label_feedback());
    check(topics::PREDICTIONS, &prediction());
    check(topics::PREDICTIONS_SHADOW, &prediction());
    check(topics::ALERTS_NEGATIVE, &negative_alert());
    check(topics::DRIFT_REPORTS, &drift_report());
    check(topics::RETRAIN_REQUESTS, &retrain_request());
    check(topics::MODELS_UPDATES, &model_update());
}
