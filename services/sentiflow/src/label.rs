//! `sentiflow label`: publishes human labels to `labels.feedback` (one from flags, or a CSV/JSONL file),
//! every row checked against the event contract before anything is sent.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::Utc;
use sentiflow_common::catalogue::topics;
use sentiflow_common::config::KafkaArgs;
use sentiflow_common::events::{Event as _, LabelFeedback, SCHEMA_VERSION, Sentiment};
use sentiflow_common::kafka::ResilientProducer;

use crate::corpus::Record;

/// Namespace of label event ids: the same (review, label, reviewer, note) always gets the same id, so
/// a file published twice can be told apart from a second opinion downstream.
const LABEL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x1abe_1f0e_edba_4c3d_9a0e_7b5c_2d1f_0a9b);

/// Invalid rows printed before the count of the rest.
const ROW_ERRORS_SHOWN: usize = 20;

/// Flags of `sentiflow label`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["review_id", "file"])))]
pub struct LabelArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The review to label (its `review_id`, as on `predictions` and `alerts.negative`).
    #[arg(long, requires = "label", conflicts_with = "file")]
    pub review_id: Option<String>,
    /// The label: negative, neutral or positive.
    #[arg(long, conflicts_with = "file")]
    pub label: Option<String>,
    /// A file of labels: CSV with a header holding `review_id` and `label` (optional `reviewer`,
    /// `note`), or JSONL of objects with those keys; `.gz` is read as gzip.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Who labels (user name or tool id, 1–128 characters); the default for rows without a reviewer.
    #[arg(long, env = "SENTIFLOW_REVIEWER")]
    pub reviewer: Option<String>,
    /// A note for a label given by flags (at most 2000 characters).
    #[arg(long, conflicts_with = "file")]
    pub note: Option<String>,
    /// Check every label and say how many would be published, without publishing.
    #[arg(long)]
    pub dry_run: bool,
}

/// One label as read, before it becomes an event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRow {
    review_id: String,
    label: String,
    reviewer: Option<String>,
    note: Option<String>,
}

/// Runs `sentiflow label`.
pub async fn run(args: LabelArgs) -> anyhow::Result<()> {
    let (rows, source) = match (&args.review_id, &args.file) {
        (Some(review_id), _) => (
            vec![(
                1,
                LabelRow {
                    review_id: review_id.clone(),
                    label: args.label.clone().unwrap_or_default(),
                    reviewer: None,
                    note: args.note.clone(),
                },
            )],
            "the flags".to_owned(),
        ),
        (None, Some(path)) => (read_rows(path)?, path.display().to_string()),
        (None, None) => bail!("give --review-id and --label, or --file"),
    };
    if rows.is_empty() {
        bail!("{source} holds no labels");
    }
    let now = Utc::now();
    let mut labels = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (line, row) in rows {
        match feedback(row, args.reviewer.as_deref(), now) {
            Ok(label) => labels.push(label),
            Err(reason) => errors.push(format!("{source} line {line}: {reason}")),
        }
    }
    if !errors.is_empty() {
        for error in errors.iter().take(ROW_ERRORS_SHOWN) {
            eprintln!("{error}");
        }
        if errors.len() > ROW_ERRORS_SHOWN {
            eprintln!("… and {} more", errors.len() - ROW_ERRORS_SHOWN);
        }
        bail!(
            "{} of {} labels are invalid; nothing was published",
            errors.len(),
            errors.len() + labels.len()
        );
    }
    let topic = args.kafka.topic(topics::LABELS_FEEDBACK);
    if args.dry_run {
        println!(
            "{} labels are valid (dry run: nothing published to {topic})",
            labels.len()
        );
        return Ok(());
    }
    let records: Vec<Record> = labels
        .iter()
        .map(|label| -> anyhow::Result<Record> {
            Ok(Record {
                key: label.key().to_owned(),
                payload: label.to_json_vec()?,
                lossy_utf8: false,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let producer = ResilientProducer::new(&args.kafka, "label")?;
    let bar = crate::replay::progress_bar(records.len() as u64, "published", records.len() > 1);
    let summary = crate::replay::publish(&producer, &topic, &records, None, &bar)
        .await
        .with_context(|| format!("publishing to {topic}"))?;
    bar.finish_and_clear();
    let mut counts = [0usize; 3];
    for label in &labels {
        counts[label.label.index()] += 1;
    }
    println!(
        "published {} labels to {topic} (negative {}, neutral {}, positive {}) in {:.2} s",
        summary.published,
        counts[Sentiment::Negative.index()],
        counts[Sentiment::Neutral.index()],
        counts[Sentiment::Positive.index()],
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}

/// The event for `row` (the reviewer defaulting to `reviewer`), or why it is invalid.
fn feedback(
    row: LabelRow,
    reviewer: Option<&str>,
    now: chrono::DateTime<Utc>,
) -> Result<LabelFeedback, String> {
    let label: Sentiment = row.label.trim().to_ascii_lowercase().parse().map_err(|_| {
        format!(
            "label {:?} is not one of negative, neutral, positive",
            row.label
        )
    })?;
    let reviewer = non_blank(row.reviewer.as_deref())
        .or_else(|| non_blank(reviewer))
        .ok_or("no reviewer: add a reviewer column or pass --reviewer")?;
    let note = non_blank(row.note.as_deref());
    let event = label_event(row.review_id.trim().to_owned(), label, reviewer, note, now);
    event.validate().map_err(|error| error.to_string())?;
    Ok(event)
}

/// `text` trimmed, unless that leaves nothing.
fn non_blank(text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

/// A `labels.feedback` event whose id is derived from what it says (not validated).
pub(crate) fn label_event(
    review_id: String,
    label: Sentiment,
    reviewer: String,
    note: Option<String>,
    now: chrono::DateTime<Utc>,
) -> LabelFeedback {
    let identity = format!(
        "{review_id}\u{1f}{label}\u{1f}{reviewer}\u{1f}{}",
        note.as_deref().unwrap_or_default()
    );
    LabelFeedback {
        schema_version: SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v5(&LABEL_NAMESPACE, identity.as_bytes()).to_string(),
        event_time: now,
        review_id,
        label,
        reviewer,
        note,
    }
}

/// Every label row of `path` with its 1-based line (CSV: the header is line 1) or record number.
fn read_rows(path: &Path) -> anyhow::Result<Vec<(u64, LabelRow)>> {
    let reader = crate::corpus::open(path)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.contains(".jsonl") || name.contains(".ndjson") {
        let mut rows = Vec::new();
        for (index, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let number = index as u64 + 1;
            let value: serde_json::Value = serde_json::from_str(&line).map_err(|error| {
                anyhow::anyhow!("{} line {number}: not JSON: {error}", path.display())
            })?;
            let field = |key: &str| -> Option<String> {
                value.get(key).and_then(|field| match field {
                    serde_json::Value::String(text) => Some(text.clone()),
                    serde_json::Value::Number(number) => Some(number.to_string()),
                    _ => None,
                })
            };
            rows.push((
                number,
                LabelRow {
                    review_id: field("review_id").unwrap_or_default(),
                    label: field("label").unwrap_or_default(),
                    reviewer: field("reviewer"),
                    note: field("note"),
                },
            ));
        }
        Ok(rows)
    } else if name.contains(".csv") {
        let mut csv = csv::ReaderBuilder::new()
            // Flexible: a short row is reported with its line number (a missing field).
            .flexible(true)
            .from_reader(reader);
        let headers = csv
            .headers()
            .with_context(|| format!("{} line 1: unreadable header", path.display()))?
            .clone();
        let column = |name: &str| headers.iter().position(|header| header.trim() == name);
        let (Some(id_col), Some(label_col)) = (column("review_id"), column("label")) else {
            bail!(
                "{} line 1: the header must name review_id and label columns (found {:?})",
                path.display(),
                headers.iter().collect::<Vec<_>>()
            );
        };
        let (reviewer_col, note_col) = (column("reviewer"), column("note"));
        let mut rows = Vec::new();
        for record in csv.records() {
            let record = record.with_context(|| format!("reading {}", path.display()))?;
            let line = record.position().map_or(0, csv::Position::line);
            let get = |col: Option<usize>| col.and_then(|col| record.get(col)).map(str::to_owned);
            rows.push((
                line,
                LabelRow {
                    review_id: get(Some(id_col)).unwrap_or_default(),
                    label: get(Some(label_col)).unwrap_or_default(),
                    reviewer: get(reviewer_col),
                    note: get(note_col),
                },
            ));
        }
        Ok(rows)
    } else {
        bail!(
            "cannot tell the layout of {}: name it .csv or .jsonl (optionally .gz)",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(review_id: &str, label: &str, reviewer: Option<&str>) -> LabelRow {
        LabelRow {
            review_id: review_id.to_owned(),
            label: label.to_owned(),
            reviewer: reviewer.map(str::to_owned),
            note: None,
        }
    }

    #[test]
    fn a_label_row_becomes_a_valid_event_with_a_stable_id_or_says_what_is_wrong() {
        let now = Utc::now();
        let first = feedback(row("r-1", " Negative ", None), Some("ana"), now).unwrap();
        assert_eq!(first.label, Sentiment::Negative);
        assert_eq!(
            (first.review_id.as_str(), first.reviewer.as_str()),
            ("r-1", "ana")
        );
        let again = feedback(row("r-1", "negative", None), Some("ana"), now).unwrap();
        assert_eq!(first.event_id, again.event_id, "same label, same id");
        let other = feedback(row("r-1", "positive", Some("bo")), Some("ana"), now).unwrap();
        assert_ne!(first.event_id, other.event_id);
        assert_eq!(
            other.reviewer, "bo",
            "the row's reviewer wins over the default"
        );

        let unknown = feedback(row("r-1", "angry", None), Some("ana"), now).unwrap_err();
        assert!(unknown.contains("not one of negative"), "{unknown}");
        let blank = feedback(row("r-1", "neutral", Some("  ")), Some(" "), now).unwrap_err();
        assert!(blank.contains("no reviewer"), "{blank}");
        let nobody = feedback(row("r-1", "neutral", Some("")), None, now).unwrap_err();
        assert!(nobody.contains("no reviewer"), "{nobody}");
        let no_id = feedback(row("  ", "neutral", None), Some("ana"), now).unwrap_err();
        assert!(no_id.contains("review_id"), "{no_id}");
        let long_note = LabelRow {
            note: Some("x".repeat(2001)),
            ..row("r-2", "neutral", None)
        };
        assert!(feedback(long_note, Some("ana"), now).is_err());
    }
}
