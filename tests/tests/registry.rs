//! The model registry against a real Redis: register, promote, roll back, list, and refuse a tampered
//! artifact; a failed registration leaves nothing behind; `sentiflow dataset prune` keeps the snapshots
//! registered versions were trained on; `sentiflow models prune` keeps what serving and rollback need.

use std::collections::BTreeMap;

use sentiflow_common::config::RedisArgs;
use sentiflow_common::events::{ModelAlias, ModelFamily, UpdateAction};
use sentiflow_common::schema::{EventSchema, SchemaRegistry};
use sentiflow_common::store::RedisStore;
use sentiflow_trainer::dataset::{DatasetRow, Origin, SnapshotStore};
use sentiflow_trainer::registry::{NewModel, Promotion, Registry, RegistryError};

fn new_model(name: &str, payload: &[u8], macro_f1: f64) -> NewModel {
    NewModel {
        name: name.to_owned(),
        version: None,
        family: ModelFamily::Hashed,
        onnx: payload.to_vec(),
        featurizer_version: "feat-test".to_owned(),
        snapshot_id: "snap-test".to_owned(),
        trained_on: "cpu".to_owned(),
        metrics: BTreeMap::from([("macro_f1".to_owned(), macro_f1)]),
        gate: None,
        files: vec![
            ("card.json".to_owned(), b"{}".to_vec()),
            ("card.md".to_owned(), b"# card".to_vec()),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_promote_rollback_and_checksum_refusal() {
    let redis_server = sentiflow_tests::redis();
    let store =
        RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), "reg-test")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path().join("models"), store);

    let first = registry
        .register(new_model("sentiment-hashed", b"onnx-one", 0.61))
        .await
        .unwrap();
    let second = registry
        .register(new_model("sentiment-hashed", b"onnx-two", 0.63))
        .await
        .unwrap();
    assert_eq!(
        (first.version.as_str(), second.version.as_str()),
        ("v1", "v2")
    );
    assert!(std::path::Path::new(&second.artifact_uri).ends_with("sentiment-hashed/v2/model.onnx"));
    assert!(
        dir.path()
            .join("models/sentiment-hashed/v2/card.md")
            .exists()
    );
    // Every extra file is recorded with its sha256 (the ONNX file's is `sha256`).
    assert_eq!(
        second.files,
        BTreeMap::from([
            (
                "card.json".to_owned(),
                "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".to_owned()
            ),
            (
                "card.md".to_owned(),
                "7db092b7c2f68f372b3b21e875b3811de556a34c8c797f9682e637d5526166a8".to_owned()
            ),
        ])
    );
    assert_eq!(
        registry.names().await.unwrap(),
        vec!["sentiment-hashed".to_owned()]
    );
    assert_eq!(
        registry.versions("sentiment-hashed").await.unwrap(),
        vec![first.clone(), second.clone()]
    );

    assert_eq!(
        registry.promote("sentiment-hashed", "v1").await.unwrap(),
        None
    );
    assert_eq!(
        registry.promote("sentiment-hashed", "v2").await.unwrap(),
        Some("v1".to_owned())
    );
    assert_eq!(
        registry
            .resolve("sentiment-hashed", "champion")
            .await
            .unwrap(),
        second
    );
    let (from, to) = registry.rollback("sentiment-hashed").await.unwrap();
    assert_eq!((from.as_str(), to.as_str()), ("v2", "v1"));
    assert_eq!(
        registry
            .alias("sentiment-hashed", ModelAlias::Champion)
            .await
            .unwrap()
            .as_deref(),
        Some("v1")
    );
    assert!(matches!(
        registry.rollback("sentiment-hashed").await,
        Err(RegistryError::NoHistory(_))
    ));

    // A promotion conditional on the champion a retrain was gated against (v1 serves now).
    let champion = || async {
        registry
            .alias("sentiment-hashed", ModelAlias::Champion)
            .await
            .unwrap()
    };
    assert_eq!(
        registry
            .promote_over("sentiment-hashed", "v2", Some("v0"))
            .await
            .unwrap(),
        Promotion::ChampionChanged {
            current: Some("v1".to_owned())
        }
    );
    assert_eq!(
        registry
            .promote_over("sentiment-hashed", "v2", None)
            .await
            .unwrap(),
        Promotion::ChampionChanged {
            current: Some("v1".to_owned())
        },
        "gated against no champion, but one serves"
    );
    assert_eq!(champion().await.as_deref(), Some("v1"), "nothing changed");
    assert_eq!(
        registry
            .promote_over("sentiment-hashed", "v2", Some("v1"))
            .await
            .unwrap(),
        Promotion::Promoted {
            previous: Some("v1".to_owned())
        }
    );
    assert_eq!(
        registry
            .promote_over("sentiment-hashed", "v2", Some("v1"))
            .await
            .unwrap(),
        Promotion::Unchanged {
            previous: Some("v2".to_owned())
        },
        "a replay changes nothing"
    );
    assert_eq!(champion().await.as_deref(), Some("v2"));
    let (from, to) = registry.rollback("sentiment-hashed").await.unwrap();
    assert_eq!(
        (from.as_str(), to.as_str()),
        ("v2", "v1"),
        "one history entry"
    );

    // The update event of a promotion validates against its schema.
    let event = second.update_event(
        UpdateAction::Promoted,
        Some("v1".to_owned()),
        Some(ModelAlias::Champion),
    );
    SchemaRegistry::global()
        .validate(
            EventSchema::ModelUpdate,
            &serde_json::to_value(&event).unwrap(),
        )
        .unwrap();

    assert_eq!(registry.load_verified(&first).await.unwrap(), b"onnx-one");
    std::fs::write(&first.artifact_uri, b"tampered").unwrap();
    let error = registry.load_verified(&first).await.unwrap_err();
    assert_eq!(error.kind(), "checksum", "{error}");

    assert!(matches!(
        registry.promote("sentiment-hashed", "v9").await,
        Err(RegistryError::NotFound(_))
    ));
    let error = registry
        .register(new_model("../escape", b"x", 0.1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "invalid_name");
    let mut bad_file = new_model("sentiment-hashed", b"x", 0.1);
    bad_file
        .files
        .push(("../../etc/passwd".to_owned(), b"x".to_vec()));
    assert_eq!(
        registry.register(bad_file).await.unwrap_err().kind(),
        "invalid_name"
    );
    // A file may not replace model.onnx, nor be given twice.
    for clash in ["model.onnx", "card.md"] {
        let mut twice = new_model("sentiment-hashed", b"x", 0.1);
        twice.files.push((clash.to_owned(), b"other".to_vec()));
        assert_eq!(
            registry.register(twice).await.unwrap_err().kind(),
            "invalid_name",
            "{clash}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models/sentiment-hashed"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "only v1 and v2: {leftovers:?}");
}

/// `sentiflow <group> prune --data-dir … --redis-url …` with `--redis-key-prefix prefix` unless `extra`
/// names another, then `extra`.
fn prune_command_line(
    group: &str,
    data_dir: &str,
    redis_url: &str,
    prefix: &str,
    extra: &[&str],
) -> sentiflow::cli::Cli {
    use clap::Parser as _;
    let mut args = vec![
        "sentiflow",
        group,
        "prune",
        "--data-dir",
        data_dir,
        "--redis-url",
        redis_url,
    ];
    if !extra.contains(&"--redis-key-prefix") {
        args.extend(["--redis-key-prefix", prefix]);
    }
    args.extend_from_slice(extra);
    sentiflow::cli::Cli::try_parse_from(args).expect("CLI flags")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_prune_keeps_what_registered_versions_were_trained_on() {
    use clap::Parser as _;
    let redis_server = sentiflow_tests::redis();
    let prefix = "prune-test";
    let dir = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::new(dir.path().join("snapshots"));
    let rows: Vec<DatasetRow> = (0..60)
        .map(|index| DatasetRow {
            review_id: format!("r{index}"),
            text: format!("review {index}"),
            label: sentiflow_common::events::Sentiment::from_index(index % 3).unwrap(),
            provenance: sentiflow_common::events::LabelProvenance::SourceLabel,
            confidence: 1.0,
            created_at: chrono::Utc::now(),
            source: "test".to_owned(),
        })
        .collect();
    let mut ids = Vec::new();
    for _ in 0..4 {
        // Snapshot ids order by their millisecond; a pause keeps the write order.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let origin = Origin::File {
            path: "test".into(),
            sha256: "0".repeat(64),
        };
        ids.push(snapshots.write(&rows, origin).unwrap().snapshot_id);
    }
    // Two days old: only the registry and --keep-latest protect them. (A manifest is not under a
    // checksum of its own; its files are.)
    for id in &ids {
        let path = dir.path().join("snapshots").join(id).join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["created_at"] = serde_json::json!(chrono::Utc::now() - chrono::Duration::days(2));
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    }
    let embeddings = dir.path().join("embeddings").join(&ids[1]).join("config");
    std::fs::create_dir_all(&embeddings).unwrap();
    std::fs::write(embeddings.join("train.f32"), [0u8; 16]).unwrap();
    let store = RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), prefix)).unwrap();
    let registry = Registry::new(dir.path().join("models"), store);
    let mut trained = new_model("sentiment-hashed", b"onnx-one", 0.61);
    trained.snapshot_id = ids[0].clone();
    registry.register(trained).await.unwrap();

    let data_dir = dir.path().to_str().unwrap().to_owned();
    let prune = |redis_url: String, extra: &[&str]| {
        let cli = prune_command_line("dataset", &data_dir, &redis_url, prefix, extra);
        let sentiflow::cli::Command::Dataset { command } = cli.command else {
            panic!("parsed as a dataset command")
        };
        tokio::task::spawn_blocking(move || sentiflow::dataset::run(command))
    };
    let keep_one = ["--keep-latest", "1"];
    prune(
        redis_server.url(),
        &[&keep_one[..], &["--dry-run"]].concat(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        snapshots.list().unwrap().len(),
        4,
        "a dry run removes nothing"
    );
    prune(
        redis_server.url(),
        &[&keep_one[..], &["--min-age-hours", "72"]].concat(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        snapshots.list().unwrap().len(),
        4,
        "snapshots younger than --min-age-hours stay"
    );
    // A key prefix with no registry behind it must not read as "no model needs any snapshot".
    let error = prune(
        redis_server.url(),
        &[&keep_one[..], &["--redis-key-prefix", "elsewhere"]].concat(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("lists no model version"),
        "{error:#}"
    );
    // Redis unreachable: the references are unknown, so nothing goes.
    let error = prune(
        "redis://127.0.0.1:1/".to_owned(),
        &[&keep_one[..], &["--redis-timeout-ms", "300"]].concat(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("nothing was removed"),
        "{error:#}"
    );
    assert_eq!(snapshots.list().unwrap().len(), 4);
    assert!(
        sentiflow::cli::Cli::try_parse_from([
            "sentiflow",
            "dataset",
            "prune",
            "--min-age-hours",
            "0"
        ])
        .is_err(),
        "an age below one hour is refused"
    );

    prune(redis_server.url(), &keep_one).await.unwrap().unwrap();
    assert_eq!(
        snapshots.list().unwrap(),
        [ids[0].clone(), ids[3].clone()],
        "the registered version's snapshot and the newest stay"
    );
    assert!(
        snapshots
            .read(&ids[0], sentiflow_trainer::dataset::Split::Train)
            .is_ok()
    );
    assert!(
        !dir.path().join("embeddings").join(&ids[1]).exists(),
        "a removed snapshot's embedding cache goes with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_prune_keeps_aliases_rollback_history_newest_and_young_versions() {
    use clap::Parser as _;
    use redis::AsyncCommands as _;
    use sentiflow_trainer::registry::{Removal, VersionPruneEntry, VersionVerdict};
    let redis_server = sentiflow_tests::redis();
    let prefix = "models-prune-test";
    let dir = tempfile::tempdir().unwrap();
    let models_dir = dir.path().join("models");
    let store = RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), prefix)).unwrap();
    let registry = Registry::new(&models_dir, store);
    const NAME: &str = "sentiment-hashed";
    for index in 1..=8 {
        registry
            .register(new_model(NAME, format!("onnx-{index}").as_bytes(), 0.6))
            .await
            .unwrap();
    }
    registry
        .register(new_model("sentiment-encoder", b"encoder", 0.6))
        .await
        .unwrap();
    for version in ["v1", "v2", "v3", "v4"] {
        registry.promote(NAME, version).await.unwrap();
    }
    registry.set_challenger(NAME, "v5").await.unwrap();
    assert_eq!(registry.history(NAME).await.unwrap(), ["v3", "v2", "v1"]);
    // Two days old, all but v8 and the encoder: only aliases, history and --keep-latest protect them.
    let mut redis = redis::Client::open(redis_server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for index in 1..=7 {
        let key = format!("{prefix}:registry:{NAME}:record:v{index}");
        let json: String = redis.get(&key).await.unwrap();
        let mut record: serde_json::Value = serde_json::from_str(&json).unwrap();
        record["registered_at"] = serde_json::json!(chrono::Utc::now() - chrono::Duration::days(2));
        let () = redis.set(&key, record.to_string()).await.unwrap();
    }
    // A registration that crashed between its rename and its Redis write, and one that crashed
    // while writing, both two days ago.
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    for leftover in ["v99", ".tmp-crashed"] {
        let path = models_dir.join(NAME).join(leftover);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("model.onnx"), b"orphan").unwrap();
        std::fs::File::open(&path)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }

    let data_dir = dir.path().to_str().unwrap().to_owned();
    let prune = |redis_url: String, extra: &[&str]| {
        let cli = prune_command_line("models", &data_dir, &redis_url, prefix, extra);
        let sentiflow::cli::Command::Models { command } = cli.command else {
            panic!("parsed as a models command")
        };
        sentiflow::models::run(command)
    };
    let on_disk = || {
        let mut versions: Vec<String> = std::fs::read_dir(models_dir.join(NAME))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        versions
    };
    let all_there = on_disk();
    let policy = ["--keep-latest", "2", "--keep-history", "2"];
    prune(redis_server.url(), &[&policy[..], &["--dry-run"]].concat())
        .await
        .unwrap();
    assert_eq!(on_disk(), all_there, "a dry run removes nothing");
    prune(
        redis_server.url(),
        &[&policy[..], &["--min-age-hours", "72"]].concat(),
    )
    .await
    .unwrap();
    assert_eq!(
        registry.versions(NAME).await.unwrap().len(),
        8,
        "versions younger than --min-age-hours stay"
    );
    let error = prune(
        redis_server.url(),
        &[&policy[..], &["--redis-key-prefix", "elsewhere"]].concat(),
    )
    .await
    .unwrap_err();
    assert!(format!("{error:#}").contains("lists no model"), "{error:#}");
    let error = prune(
        "redis://127.0.0.1:1/".to_owned(),
        &[&policy[..], &["--redis-timeout-ms", "300"]].concat(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("nothing was removed"),
        "{error:#}"
    );
    for refused in [
        ["--keep-history", "0"],
        ["--min-age-hours", "0"],
        ["--keep-outcomes-days", "30"],
    ] {
        assert!(
            sentiflow::cli::Cli::try_parse_from(
                [&["sentiflow", "models", "prune"][..], &refused[..]].concat()
            )
            .is_err(),
            "{refused:?} is refused"
        );
    }
    assert_eq!(on_disk(), all_there);

    // A retrain (trainer stopped between recording its outcome and announcing it) will still make v6
    // the challenger when it finishes: v6 stays until the outcome is announced.
    let outcomes = sentiflow_trainer::OutcomeLog::new(
        RedisStore::connect_lazy(&RedisArgs::local(&redis_server.url(), prefix)).unwrap(),
    );
    let mut pending = sentiflow_trainer::RetrainOutcome {
        request_id: "req-1".to_owned(),
        request_event_id: "evt-1".to_owned(),
        reason: "drift".to_owned(),
        outcome: sentiflow_trainer::OutcomeKind::Rejected,
        message: String::new(),
        model_name: NAME.to_owned(),
        version: Some("v6".to_owned()),
        previous_champion: Some("v4".to_owned()),
        snapshot_id: None,
        snapshot_rows: None,
        data_range: String::new(),
        curation: String::new(),
        recipe: String::new(),
        gate: None,
        metrics: BTreeMap::new(),
        seconds: 1.0,
        decided_at: chrono::Utc::now() - chrono::Duration::days(2),
        events: Vec::new(),
        applied: false,
        announced: false,
    };
    outcomes.put(&pending).await.unwrap();
    prune(redis_server.url(), &policy).await.unwrap();
    // v4 champion, v5 challenger, v3 and v2 the first two rollbacks, v7 and v8 the newest, v6 held by
    // the retrain; v1 (third in the history) goes, the unregistered v99 stays, the stale temp
    // directory goes.
    let kept: Vec<String> = registry
        .versions(NAME)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.version)
        .collect();
    assert_eq!(kept, ["v2", "v3", "v4", "v5", "v6", "v7", "v8"]);
    pending.announced = true;
    outcomes.put(&pending).await.unwrap();
    // Outcomes older than --keep-outcomes-days (90) are forgotten once announced, not before.
    let old_outcome = |request_id: &str, announced: bool| sentiflow_trainer::RetrainOutcome {
        request_id: request_id.to_owned(),
        version: None,
        decided_at: chrono::Utc::now() - chrono::Duration::days(100),
        announced,
        ..pending.clone()
    };
    outcomes.put(&old_outcome("req-old", true)).await.unwrap();
    outcomes
        .put(&old_outcome("req-old-unannounced", false))
        .await
        .unwrap();
    prune(redis_server.url(), &policy).await.unwrap();
    let remembered: Vec<String> = outcomes.all().await.unwrap().into_keys().collect();
    assert_eq!(remembered, ["req-1", "req-old-unannounced"]);
    // Announced: v6 goes now.
    let kept: Vec<String> = registry
        .versions(NAME)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.version)
        .collect();
    assert_eq!(kept, ["v2", "v3", "v4", "v5", "v7", "v8"]);
    assert_eq!(on_disk(), ["v2", "v3", "v4", "v5", "v7", "v8", "v99"]);
    assert_eq!(registry.history(NAME).await.unwrap(), ["v3", "v2"]);
    assert!(matches!(
        registry.get(NAME, "v6").await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(
        matches!(
            registry.promote(NAME, "v6").await,
            Err(RegistryError::NotFound(_))
        ),
        "a pruned version cannot be promoted"
    );
    assert_eq!(
        registry.versions("sentiment-encoder").await.unwrap().len(),
        1,
        "another name's newest stays"
    );
    for record in registry.versions(NAME).await.unwrap() {
        assert!(registry.load_verified(&record).await.is_ok(), "{record:?}");
    }

    prune(
        redis_server.url(),
        &[&policy[..], &["--remove-unregistered"]].concat(),
    )
    .await
    .unwrap();
    assert_eq!(on_disk(), ["v2", "v3", "v4", "v5", "v7", "v8"]);

    // Rollback walks the history that is left; the removed v1 was taken out of it.
    assert_eq!(
        registry.rollback(NAME).await.unwrap(),
        ("v4".to_owned(), "v3".to_owned())
    );
    // A history entry whose version disappeared anyway (deleted by hand) is skipped, not restored.
    let () = redis
        .lpush(format!("{prefix}:registry:{NAME}:history"), "v6")
        .await
        .unwrap();
    assert_eq!(
        registry.rollback(NAME).await.unwrap(),
        ("v3".to_owned(), "v2".to_owned())
    );
    assert!(matches!(
        registry.rollback(NAME).await,
        Err(RegistryError::NoHistory(_))
    ));

    // A version that became champion, challenger or the next rollback after the plan marked it is
    // kept by the removal's atomic check.
    registry.promote(NAME, "v7").await.unwrap();
    registry.set_challenger(NAME, "v8").await.unwrap();
    assert_eq!(registry.history(NAME).await.unwrap(), ["v2"]);
    for (version, reason) in [
        ("v7", "became champion"),
        ("v8", "became challenger"),
        ("v2", "became rollback history"),
    ] {
        let planned = VersionPruneEntry {
            name: NAME.to_owned(),
            version: version.to_owned(),
            registered: true,
            registered_at: None,
            snapshot_id: None,
            directory: models_dir.join(NAME).join(version),
            bytes: 0,
            verdict: VersionVerdict::Remove,
        };
        assert_eq!(
            registry.remove_version(&planned, 1).await.unwrap(),
            Removal::Kept(reason.to_owned())
        );
        assert!(registry.get(NAME, version).await.is_ok());
        assert!(
            models_dir
                .join(NAME)
                .join(version)
                .join("model.onnx")
                .exists()
        );
    }

    // Run where the records' artifact paths do not exist (a host outside the deployment's mounts):
    // refused, nothing removed.
    let moved = dir.path().join("models-elsewhere");
    std::fs::rename(&models_dir, &moved).unwrap();
    let error = prune(redis_server.url(), &["--keep-latest", "0"])
        .await
        .unwrap_err();
    std::fs::rename(&moved, &models_dir).unwrap();
    assert!(
        format!("{error:#}").contains("directories exists here"),
        "{error:#}"
    );
    assert_eq!(registry.versions(NAME).await.unwrap().len(), 6);
}
