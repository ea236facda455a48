//! The monitoring files in `infra/`: the Prometheus config and alert rules pass `promtool check`, the
//! rules pass their unit tests (`promtool test rules`), and every sentiflow metric that the rules and
//! the Grafana dashboard query is one the services really export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("infra/prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package; infra/setup.sh installs it)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_config_and_rules_are_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "rules.yml"]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "rules_test.yml"]);
}

/// Every metric name the services export: string literals `"sentiflow_…"` in their sources, with the
/// `sentiflow_{}_…` templates of the shared plumbing expanded for each service.
fn exported_metrics() -> BTreeSet<String> {
    let literal = regex::Regex::new(r#""(sentiflow_[a-z_]+)""#).unwrap();
    let template = regex::Regex::new(r"sentiflow_\{\}_([a-z_]+)").unwrap();
    let mut names = BTreeSet::new();
    let mut stack = vec![repo_root().join("services")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                names.extend(literal.captures_iter(&source).map(|c| c[1].to_owned()));
                for c in template.captures_iter(&source) {
                    for service in ["ingest", "infer", "drift", "trainer"] {
                        names.insert(format!("sentiflow_{service}_{}", &c[1]));
                    }
                }
            }
        }
    }
    names
}

/// Metric names in PromQL text, with `sentiflow_(a|b)_x` alternations expanded.
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let alternation = regex::Regex::new(r"sentiflow_\(([a-z|]+)\)_([a-z_]+)").unwrap();
    let plain = regex::Regex::new(r"sentiflow_[a-z_]+").unwrap();
    let mut names = BTreeSet::new();
    for c in alternation.captures_iter(text) {
        for service in c[1].split('|') {
            names.insert(format!("sentiflow_{service}_{}", &c[2]));
        }
    }
    let without = alternation.replace_all(text, "");
    names.extend(plain.find_iter(&without).map(|m| m.as_str().to_owned()));
    names
}

fn assert_all_exported(file: &Path, queried: &BTreeSet<String>) {
    let exported = exported_metrics();
    assert!(!queried.is_empty(), "{} queries no metric", file.display());
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "{} queries metrics no service exports: {missing:?}",
        file.display()
    );
}

#[test]
fn alert_rules_only_name_exported_metrics() {
    let path = repo_root().join("infra/prometheus/rules.yml");
    let rules = std::fs::read_to_string(&path).unwrap();
    let expressions: String = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_all_exported(&path, &queried_metrics(&expressions));
}

#[test]
fn grafana_dashboard_only_queries_exported_metrics() {
    let path = repo_root().join("infra/grafana/dashboards/sentiflow-drift.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut expressions = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push_str(target["expr"].as_str().unwrap());
            expressions.push('\n');
        }
    }
    let queried = queried_metrics(&expressions);
    for needed in [
        "sentiflow_drift_signal_statistic",
        "sentiflow_drift_status",
        "sentiflow_infer_predictions_total",
        "sentiflow_drift_consumer_lag_messages",
        "sentiflow_drift_retrain_requests_total",
        "sentiflow_infer_model_info",
        "sentiflow_infer_device_info",
    ] {
        assert!(queried.contains(needed), "the dashboard shows {needed}");
    }
    assert_all_exported(&path, &queried);
}

#[test]
fn the_metric_name_check_catches_a_made_up_metric() {
    let queried = queried_metrics("rate(sentiflow_drift_made_up_total[5m])");
    assert!(!queried.is_subset(&exported_metrics()));
}
