//! Checks that keep the deployment files honest without a Docker engine: the compose file parses, and
//! every `SENTIFLOW_*` variable it sets is a real environment flag of the service it configures.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::CommandFactory;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn compose_file_is_valid() {
    let output = std::process::Command::new("docker-compose")
        .arg("-f")
        .arg(repo_root().join("docker-compose.yml"))
        .args(["config", "-q"])
        .output()
        .expect("docker-compose is installed by infra/setup.sh");
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_environment_variables_are_real_flags() {
    let known: BTreeSet<String> = [
        sentiflow_ingest::IngestConfig::command(),
        sentiflow_infer::InferConfig::command(),
        sentiflow_trainer::TrainerConfig::command(),
        sentiflow_drift::DriftConfig::command(),
    ]
    .iter()
    .flat_map(|command| {
        command
            .get_arguments()
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
    })
    .collect();
    let compose = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let used: BTreeSet<String> = compose
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("SENTIFLOW_"))
        .map(str::to_owned)
        .collect();
    assert!(!used.is_empty());
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "compose sets variables no service reads: {unknown:?}"
    );
}
