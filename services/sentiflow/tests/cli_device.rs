//! The `sentiflow` binary on this GPU-less machine: `train --device cuda` exits non-zero with a clear
//! message before touching any snapshot or registry; `bench train` and `bench drift` without their
//! baselines say how to install them; `status` exits 2 naming an unreachable service, 3 when it
//! cannot ask.

use std::process::Command;

fn sentiflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sentiflow"))
}

#[test]
fn train_device_cuda_without_a_gpu_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let output = sentiflow()
        .args(["train", "--device", "cuda", "--no-announce", "--data-dir"])
        .arg(dir.path())
        // Nothing listens here: the device check must fail before Redis or Kafka are needed.
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit status {}", output.status);
    assert!(
        stderr.contains("--device cuda: no usable CUDA GPU"),
        "stderr: {stderr}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn train_help_lists_the_devices() {
    let output = sentiflow().args(["train", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for device in ["auto", "cpu", "cuda", "burn-cpu"] {
        assert!(help.contains(device), "{device} missing from: {help}");
    }
}

#[test]
fn bench_train_without_the_baseline_says_how_to_install_it() {
    let cache = tempfile::tempdir().unwrap();
    let output = sentiflow()
        .args(["bench", "train", "--limit", "10"])
        .env("SENTIFLOW_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("infra/setup.sh --bench"),
        "stderr: {stderr}"
    );
}

#[test]
fn bench_drift_without_river_says_how_to_install_it() {
    let cache = tempfile::tempdir().unwrap();
    let output = sentiflow()
        .args(["bench", "drift", "--stationary-events", "10"])
        .env("SENTIFLOW_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("River (the ADWIN baseline) is not installed")
            && stderr.contains("infra/setup.sh --bench"),
        "stderr: {stderr}"
    );
}

#[test]
fn status_exits_two_when_a_service_is_unreachable_and_says_which() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = sentiflow()
        .args(["status", "--services", "drift", "--drift-url"])
        .arg(format!("http://127.0.0.1:{closed_port}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("drift    unreachable")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("ingest"),
        "only the services asked: {stdout}"
    );
    assert!(stderr.contains("drift unreachable"), "{stderr}");

    // Could not ask (a bad value, a bad flag): 3, never read as a finding.
    for args in [
        &["status", "--timeout-secs", "0"][..],
        &["status", "--services", "ingest,nothing"][..],
        &["status", "--service", "ingest"][..],
    ] {
        let output = sentiflow().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    let output = sentiflow().args(["status", "--help"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Exit status: 0"));
}
