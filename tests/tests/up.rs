//! End-to-end smoke test of `sentiflow up`: its own Kafka and Redis, topics from the catalogue, ingest,
//! a bootstrap champion trained and promoted and served by infer, a replay of real corpus rows, and the
//! reconciliations (clean + dead letters + duplicates = consumed; one prediction per clean review), and
//! the trainer running beside them and stopping cleanly.

use std::time::Duration;

use sentiflow::corpus::CorpusFormat;
use sentiflow::up::{UpArgs, up};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_replays_a_corpus_and_reconciles() {
    sentiflow_tests::init_logs();
    let data_dir = tempfile::tempdir().unwrap();
    let args = UpArgs {
        data_dir: data_dir.path().join("local"),
        fresh: true,
        kafka_port: free_port(),
        redis_port: free_port(),
        ingest_http_addr: "127.0.0.1:0".parse().unwrap(),
        infer_http_addr: "127.0.0.1:0".parse().unwrap(),
        drift_http_addr: "127.0.0.1:0".parse().unwrap(),
        trainer_http_addr: "127.0.0.1:0".parse().unwrap(),
        device: sentiflow_infer::config::DeviceArg::Auto,
        corpus: Some(sentiflow_tests::shared_data("airline_tweets.csv.gz")),
        format: CorpusFormat::Auto,
        limit: Some(3000),
        rate: None,
        no_replay: false,
        no_bootstrap: false,
        bootstrap_limit: Some(3000),
        exit_after_replay: true,
    };
    let result =
        tokio::time::timeout(Duration::from_secs(240), up(args, CancellationToken::new())).await;
    result
        .expect("up finished in time")
        .expect("up replayed and reconciled");
}
