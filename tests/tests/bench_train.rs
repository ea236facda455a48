//! `sentiflow bench train` on a small slice of the real corpora: both systems train on the same split,
//! are scored on the same rows, and the report carries consistent figures (no speed is asserted).
//! Needs the bench component of the setup cache (`infra/test.sh` installs it).

use sentiflow::bench::train::{TrainBenchArgs, run};

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
