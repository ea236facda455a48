//! Every statistic of the drift signals against values computed with scipy 1.17 / scikit-learn 1.9 and
//! committed in `fixtures/statistics.json` (generator: `fixtures/gen_statistics.py`; not run by tests).

use sentiflow_drift::stats;
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/statistics.json"
    ))
    .expect("fixture file");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn counts(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Relative closeness with an absolute floor for values near zero.
fn close(actual: f64, expected: f64, rel: f64, what: &str) {
    let tolerance = rel * expected.abs().max(1e-12) + 1e-300;
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: got {actual:e}, scipy says {expected:e}"
    );
}

#[test]
fn chi_square_homogeneity_and_cramers_v_match_scipy() {
    let data = fixture();
    let cases = data["chi_square"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let reference = counts(&case["reference"]);
        let window = counts(&case["window"]);
        let chi = stats::chi_square_homogeneity(&reference, &window).unwrap();
        let what = format!("{reference:?} vs {window:?}");
        close(
            chi.statistic,
            case["statistic"].as_f64().unwrap(),
            1e-9,
            &what,
        );
        assert_eq!(u64::from(chi.dof), case["dof"].as_u64().unwrap(), "{what}");
        close(chi.p_value, case["p_value"].as_f64().unwrap(), 1e-6, &what);
        close(
            chi.cramers_v,
            case["cramers_v"].as_f64().unwrap(),
            1e-9,
            &what,
        );
    }
}

#[test]
fn g_test_of_the_sequential_scan_matches_scipy() {
    let data = fixture();
    let cases = data["g_test"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let reference = counts(&case["reference"]);
        let window = counts(&case["window"]);
        let test = sentiflow_drift::sequential::g_test(&reference, &window).unwrap();
        let what = format!("G {reference:?} vs {window:?}");
        close(
            test.statistic,
            case["statistic"].as_f64().unwrap(),
            1e-9,
            &what,
        );
        assert_eq!(u64::from(test.dof), case["dof"].as_u64().unwrap(), "{what}");
        close(
            test.p_value(),
            case["p_value"].as_f64().unwrap(),
            1e-6,
            &what,
        );
    }
}

#[test]
fn chi_square_survival_matches_scipy() {
    for case in fixture()["chi2_sf"].as_array().unwrap() {
        let x = case["x"].as_f64().unwrap();
        let dof = case["dof"].as_f64().unwrap();
        close(
            stats::chi2_sf(x, dof),
            case["sf"].as_f64().unwrap(),
            1e-8,
            &format!("chi2.sf({x}, {dof})"),
        );
    }
}

#[test]
fn psi_and_jensen_shannon_match_numpy_and_scipy() {
    let data = fixture();
    for case in data["psi"].as_array().unwrap() {
        let (r, w) = (counts(&case["reference"]), counts(&case["window"]));
        let psi = stats::psi(&r, &w, case["epsilon"].as_f64().unwrap()).unwrap();
        close(
            psi,
            case["psi"].as_f64().unwrap(),
            1e-9,
            &format!("psi {r:?} {w:?}"),
        );
    }
    for case in data["jensen_shannon"].as_array().unwrap() {
        let (r, w) = (counts(&case["reference"]), counts(&case["window"]));
        let js = stats::jensen_shannon_distance(&r, &w).unwrap();
        let expected = case["distance_base2"].as_f64().unwrap();
        assert!(
            (js - expected).abs() < 1e-7,
            "js {r:?} {w:?}: {js} vs {expected}"
        );
    }
}

#[test]
fn kolmogorov_distribution_matches_scipy() {
    for case in fixture()["kolmogorov"].as_array().unwrap() {
        let lambda = case["lambda"].as_f64().unwrap();
        let expected = case["sf"].as_f64().unwrap();
        let actual = stats::kolmogorov_sf(lambda);
        assert!(
            (actual - expected).abs() < 1e-10,
            "kolmogorov({lambda}): {actual} vs {expected}"
        );
    }
}

#[test]
fn two_sample_ks_matches_scipy() {
    for case in fixture()["ks"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let ks = stats::ks_two_sample(&a, &b).unwrap();
        close(
            ks.statistic,
            case["statistic"].as_f64().unwrap(),
            1e-12,
            name,
        );
        let expected = case["p_value_stephens"].as_f64().unwrap();
        assert!(
            (ks.p_value - expected).abs() < 1e-9,
            "{name}: p {} vs {expected}",
            ks.p_value
        );
        // Stephens' approximation stays near scipy's own asymptotic p-value.
        let scipy = case["scipy_asymp_p_value"].as_f64().unwrap();
        assert!(
            (ks.p_value - scipy).abs() < 0.05,
            "{name}: p {} vs scipy asymp {scipy}",
            ks.p_value
        );
    }
}

#[test]
fn entropy_matches_scipy() {
    for case in fixture()["entropy"].as_array().unwrap() {
        let p = floats(&case["p"]);
        close(
            stats::entropy(&p),
            case["entropy_nats"].as_f64().unwrap(),
            1e-12,
            &format!("entropy {p:?}"),
        );
    }
}

#[test]
fn macro_f1_and_recall_match_sklearn() {
    for case in fixture()["classification"].as_array().unwrap() {
        let truth = counts(&case["truth"]);
        let predicted = counts(&case["predicted"]);
        let pairs: Vec<(usize, usize)> = predicted
            .iter()
            .zip(&truth)
            .map(|(p, t)| (*p as usize, *t as usize))
            .collect();
        let (macro_f1, recall) = stats::classification_scores(&pairs, 3);
        close(
            macro_f1,
            case["macro_f1"].as_f64().unwrap(),
            1e-12,
            "macro-F1",
        );
        for (actual, expected) in recall.iter().zip(floats(&case["recall"])) {
            close(*actual, expected, 1e-12, "recall");
        }
    }
}
