//! `sentiflow dlq`: the operators' side of `reviews.dlq` — a summary by service and error kind, the dead
//! letters themselves, and redrive: the original bytes sent back to their source topic once the cause is fixed.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Header;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use sentiflow_common::catalogue::{Catalogue, topics};
use sentiflow_common::config::{KafkaArgs, RedisArgs};
use sentiflow_common::events::{DeadLetter, Event as _};
use sentiflow_common::kafka::{ResilientProducer, await_delivery};
use sentiflow_common::store::RedisStore;
use sentiflow_common::trace::{self, TraceContext};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Header naming the dead letter a redriven message came from (`<dlq topic>/<partition>/<offset>`);
/// services ignore it, it is there for whoever reads the topic.
pub const REDRIVEN_FROM_HEADER: &str = "sentiflow-redriven-from";

/// Broker calls (metadata, watermarks, offsets by time).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long reading may go without a message before the end is taken as unreachable.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest reason and original shown in a table cell.
const CELL_CHARS: usize = 60;

/// `sentiflow dlq …`.
#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Count the dead letters by service, error kind and source topic (first and last time, how many
    /// were cut, how many were redriven).
    Summary(SummaryArgs),
    /// Print dead letters: the newest `--limit` that match, oldest first (a table, JSON lines, or the
    /// original values one per line to fix and replay).
    List(ListArgs),
    /// Publish the original key and value of each selected dead letter to its source topic (or
    /// `--to`) again, once the cause was fixed; each letter at most once unless `--again`.
    #[command(
        after_help = "Redrive needs --error-kind: it is for a cause that was fixed (a limit raised, a policy \
                      changed, a bug fixed). Letters whose original was cut (a value over 256 KiB, a key \
                      over 16 KiB) or is empty are skipped. Each letter is claimed in Redis (key \
                      <prefix>:dlq:redriven:<event id>) for 5 minutes before it is sent and remembered for \
                      --remember-days once the broker acknowledged it, so running the same command twice, \
                      or two at once, sends nothing twice; a letter whose publication failed is given back. \
                      Ctrl-C stops between letters; what was sent is still awaited and reported. The exit \
                      status is 1 when any letter is not redriven for sure."
    )]
    Redrive(RedriveArgs),
}

/// Which dead letters a command looks at.
#[derive(clap::Args, Debug, Clone)]
pub struct Selection {
    /// Kafka connection (the dead-letter topic is `<topic prefix>reviews.dlq`).
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Only letters of this service (ingest, infer, trainer, drift); repeatable.
    #[arg(long = "service")]
    pub services: Vec<String>,
    /// Only letters of this error kind (e.g. oversize, schema_violation); repeatable.
    #[arg(long = "error-kind")]
    pub error_kinds: Vec<String>,
    /// Only letters read from this topic (a catalogue name such as reviews.raw, or a physical name).
    #[arg(long)]
    pub source_topic: Option<String>,
    /// Only letters written at or after this time: RFC 3339 (2026-12-06T10:00:00Z) or an age (30m, 2h, 7d).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only letters written before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only letters in this W3C trace (32 hex digits: a producer's `traceparent` trace id, or the
    /// `trace_id` of ingest's 202 answer); repeatable.
    #[arg(long = "trace-id", value_parser = parse_trace_id)]
    pub trace_ids: Vec<String>,
}

fn parse_trace_id(text: &str) -> Result<String, String> {
    let id = text.trim().to_ascii_lowercase();
    if id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err("a trace id is 32 hex digits (the second field of a traceparent)".to_owned())
    }
}

/// Flags of `dlq summary`.
#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// Which letters.
    #[command(flatten)]
    pub selection: Selection,
    /// Redis, for the redriven counts (left out with a warning when it does not answer).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How `dlq list` prints.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// One row per letter.
    Table,
    /// One JSON object per line: the letter, where it sits in the topic, whether it was redriven.
    Json,
    /// The original values, one per line (UTF-8 single-line values only; others are named on stderr).
    Original,
}

/// Flags of `dlq list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Which letters.
    #[command(flatten)]
    pub selection: Selection,
    /// Redis, for the redriven column (left out with a warning when it does not answer).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The newest this many matching letters (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

/// Flags of `dlq redrive`.
#[derive(clap::Args, Debug)]
pub struct RedriveArgs {
    /// Which letters (`--error-kind` is required).
    #[command(flatten)]
    pub selection: Selection,
    /// Redis, where redriven letters are remembered.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Publish to this topic instead of each letter's source topic (a catalogue name gets the prefix).
    #[arg(long)]
    pub to: Option<String>,
    /// Say what would be published, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also letters redriven before.
    #[arg(long)]
    pub again: bool,
    /// How long a redriven letter is remembered, days (the catalogue keeps reviews.dlq at least 30
    /// days; a segment can outlive that by up to its roll time, 7 days by default).
    #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..))]
    pub remember_days: u64,
}

/// A dead letter and where it sits in the dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct FoundLetter {
    /// Partition of the dead-letter topic.
    pub dlq_partition: i32,
    /// Offset in that partition.
    pub dlq_offset: i64,
    /// Whether it was redriven (unknown when Redis was not asked or did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redriven: Option<Mark>,
    /// The W3C trace id the dead letter carries (that of the message that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Its trace context and `tracestate`, which a redriven copy continues.
    #[serde(skip)]
    pub trace: Option<(TraceContext, Option<Vec<u8>>)>,
    /// The letter.
    pub letter: DeadLetter,
}

/// What Redis remembers of a letter's redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Never redriven (or remembered no longer).
    No,
    /// Claimed by a redrive that has not seen the broker's acknowledgement yet: one going on now, or
    /// one that died (the claim lapses after [`PENDING_CLAIM_SECS`]).
    Pending,
    /// Redriven: the broker acknowledged the copy.
    Yes,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Pending => "pending",
            Self::Yes => "yes",
        }
    }
}

/// Value prefix of a claim (`pending:<run id>`); a final mark is a JSON record.
const CLAIM_PREFIX: &str = "pending";

/// A message of the dead-letter topic that is not a valid dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Why it could not be read.
    pub reason: String,
}

/// Which selected letters a read keeps in memory (a dead-letter topic can hold gigabytes of originals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every one, whole (redrive).
    All,
    /// The newest this many by time, whole (list).
    Newest(usize),
    /// Every one without its original value (summary).
    WithoutOriginals,
}

/// Unreadable messages named one by one; beyond that they are only counted.
const UNREADABLE_KEPT: usize = 100;

/// What one read of the dead-letter topic found.
#[derive(Debug, Default, Serialize)]
pub struct Scan {
    /// The physical dead-letter topic.
    pub topic: String,
    /// Messages read (from `--since`'s offsets, or the start, to the ends at the time of reading).
    pub read: u64,
    /// Dead letters that match the selection.
    pub selected: u64,
    /// The matching letters kept (see [`Keep`]), oldest first (by time, then place in the topic).
    pub letters: Vec<FoundLetter>,
    /// Messages that are not dead letters (counted, never fatal).
    pub unreadable_total: u64,
    /// The first of them.
    pub unreadable: Vec<Unreadable>,
}

/// One line of the summary.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SummaryRow {
    /// Service that wrote the letters.
    pub service: String,
    /// Their error kind.
    pub error_kind: String,
    /// The topic they were read from.
    pub source_topic: String,
    /// How many.
    pub letters: u64,
    /// How many had their original cut (cannot be redriven).
    pub truncated: u64,
    /// How many were redriven (unknown without Redis).
    pub redriven: Option<u64>,
    /// How many are claimed by a redrive not finished (unknown without Redis).
    pub pending: Option<u64>,
    /// Time of the first.
    pub first: DateTime<Utc>,
    /// Time of the last.
    pub last: DateTime<Utc>,
}

/// What a redrive did (or, dry, would do).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct RedriveReport {
    /// Letters selected.
    pub selected: u64,
    /// Published (dry run: would be), per target topic.
    pub published: BTreeMap<String, u64>,
    /// Skipped: redriven before (without `--again`).
    pub already_redriven: u64,
    /// Skipped: claimed by another redrive that has not finished (or died: its claim lapses after
    /// [`PENDING_CLAIM_SECS`]); never sent, even with `--again`.
    pub in_progress: u64,
    /// Skipped: the original was cut.
    pub truncated: u64,
    /// Skipped: the target would be the dead-letter topic itself, or the original is empty (a null or
    /// empty value) or not valid base64.
    pub not_redrivable: u64,
    /// Publications that failed (not remembered: a rerun tries them again).
    pub failed: u64,
    /// Not tried: the run was interrupted or Redis failed before them (a rerun sends them).
    pub not_attempted: u64,
    /// Published, but the mark could not be made final: its claim expires after
    /// [`PENDING_CLAIM_SECS`], and a rerun after that sends the letter again.
    pub unconfirmed_marks: u64,
    /// Why the run stopped early, if it did (the rest of the topic was then not read: `selected`
    /// counts the letters read until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Whether every selected letter was looked at (false when the run stopped early).
    pub read_to_end: bool,
    /// True for `--dry-run`.
    pub dry_run: bool,
}

impl RedriveReport {
    /// Letters published (or that would be).
    pub fn published_total(&self) -> u64 {
        self.published.values().sum()
    }

    /// Letters accounted for in one way or another (each handed-over letter lands in one count).
    fn counted(&self) -> u64 {
        self.published_total()
            + self.already_redriven
            + self.in_progress
            + self.truncated
            + self.not_redrivable
            + self.failed
            + self.not_attempted
    }
}

/// How long a redrive's claim on a letter lasts until the broker acknowledged it and the mark is made
/// final: a run that dies in between leaves claims that expire, so a later run sends those letters.
pub const PENDING_CLAIM_SECS: u64 = 300;

/// Runs `sentiflow dlq …`; `shutdown` (Ctrl-C) stops a redrive between letters.
pub async fn run(command: DlqCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        DlqCommand::Summary(args) => {
            let mut scan = read(&args.selection, Keep::WithoutOriginals).await?;
            mark_redriven(&args.redis, &mut scan.letters).await;
            print_summary(&args, &scan)
        }
        DlqCommand::List(args) => {
            let keep = match args.limit {
                0 => Keep::All,
                limit => Keep::Newest(limit),
            };
            let mut scan = read(&args.selection, keep).await?;
            if args.format != ListFormat::Original {
                mark_redriven(&args.redis, &mut scan.letters).await;
            }
            print_list(&args, &scan);
            Ok(())
        }
        DlqCommand::Redrive(args) => {
            let report = redrive(&args, &shutdown).await?;
            print_redrive(&report);
            let unfinished = report.failed
                + report.not_attempted
                + report.unconfirmed_marks
                + report.in_progress;
            if report.stopped.is_some() || (unfinished > 0 && !report.dry_run) {
                bail!(
                    "{unfinished} of {} letters read are not redriven for sure{}: run the same command again",
                    report.selected,
                    report
                        .stopped
                        .as_ref()
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

/// Parses an RFC 3339 time or an age before now (`30m`, `2h`, `7d`).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(time.with_timezone(&Utc));
    }
    let age = crate::drift::parse_duration(text)
        .map_err(|error| format!("expected an RFC 3339 time or an age like 2h: {error}"))?;
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
        .ok_or_else(|| format!("the age {text:?} is too large"))
}

/// A topic given by an operator: a catalogue name gets the prefix, anything else is taken as it is.
fn physical_topic(kafka: &KafkaArgs, topic: &str) -> String {
    if Catalogue::embedded().get(topic).is_some() {
        kafka.topic(topic)
    } else {
        topic.to_owned()
    }
}

impl Selection {
    /// Whether `letter` is selected.
    fn matches(&self, letter: &DeadLetter, source_topic: Option<&str>) -> bool {
        (self.services.is_empty() || self.services.contains(&letter.service))
            && (self.error_kinds.is_empty() || self.error_kinds.contains(&letter.error_kind))
            && source_topic.is_none_or(|topic| topic == letter.source.topic)
            && self.since.is_none_or(|since| letter.event_time >= since)
            && self.until.is_none_or(|until| letter.event_time < until)
    }
}

/// Reads the dead-letter topic from `--since` (or its start) to its ends at the time of the call,
/// keeping what `keep` says of the letters that match.
pub async fn read(selection: &Selection, keep: Keep) -> anyhow::Result<Scan> {
    let selection = selection.clone();
    tokio::task::spawn_blocking(move || read_blocking(&selection, keep)).await?
}

fn read_blocking(selection: &Selection, keep: Keep) -> anyhow::Result<Scan> {
    let mut letters = Vec::new();
    let mut scan = scan_blocking(selection, &AtomicBool::new(false), |mut found| {
        if keep == Keep::WithoutOriginals {
            found.letter.original_value_b64.clear();
        }
        letters.push(found);
        if let Keep::Newest(limit) = keep
            && letters.len() >= limit.saturating_mul(2).max(64)
        {
            keep_newest(&mut letters, limit);
        }
        true
    })?;
    if let Keep::Newest(limit) = keep {
        keep_newest(&mut letters, limit);
    }
    letters.sort_by_key(|found| {
        (
            found.letter.event_time,
            found.dlq_partition,
            found.dlq_offset,
        )
    });
    scan.letters = letters;
    Ok(scan)
}

/// Reads the dead-letter topic (from `--since`'s offsets or the start, to its ends at the time of
/// the call) and hands every letter the selection matches to `take`, in the order read; `take`
/// answering false, or `stop` set, stops the read. The [`Scan`] returned counts what was read, without letters.
fn scan_blocking(
    selection: &Selection,
    stop: &AtomicBool,
    mut take: impl FnMut(FoundLetter) -> bool,
) -> anyhow::Result<Scan> {
    let topic = selection.kafka.topic(topics::REVIEWS_DLQ);
    let source_topic = selection
        .source_topic
        .as_deref()
        .map(|topic| physical_topic(&selection.kafka, topic));
    let consumer = reader(&selection.kafka)?;
    let partitions = topic_partitions(&consumer, &topic)?;
    // Where to start and stop per partition: the ends now, so reading a busy topic terminates.
    let mut assignment = TopicPartitionList::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let starts = match selection.since {
        Some(since) => {
            let mut query = TopicPartitionList::new();
            for &partition in &partitions {
                // Broker timestamps start at 1970: an earlier time reads from the start.
                query.add_partition_offset(
                    &topic,
                    partition,
                    Offset::Offset(since.timestamp_millis().max(0)),
                )?;
            }
            Some(
                consumer
                    .offsets_for_times(query, QUERY_TIMEOUT)
                    .with_context(|| format!("finding the offsets of {topic} at {since}"))?,
            )
        }
        None => None,
    };
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, QUERY_TIMEOUT)
            .with_context(|| format!("reading the ends of {topic} partition {partition}"))?;
        let start = match starts
            .as_ref()
            .and_then(|starts| starts.find_partition(&topic, partition))
            .map(|found| found.offset())
        {
            Some(Offset::Offset(offset)) => offset.max(low),
            // No message at or after the time: nothing to read in this partition.
            Some(Offset::End) => high,
            _ => low,
        };
        if start < high {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            ends.insert(partition, high);
        }
    }
    let mut scan = Scan {
        topic: topic.clone(),
        ..Scan::default()
    };
    if ends.is_empty() {
        return Ok(scan);
    }
    consumer.assign(&assignment)?;
    let mut last_progress = Instant::now();
    let mut last_position_check = Instant::now();
    while !ends.is_empty() && !stop.load(Ordering::Relaxed) {
        if last_position_check.elapsed() >= Duration::from_secs(1) {
            last_position_check = Instant::now();
            for partition in finished(&consumer, &topic, &ends) {
                finish(&consumer, &topic, partition, &mut ends);
            }
            if ends.is_empty() {
                break;
            }
        }
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() > STALL_TIMEOUT {
                bail!(
                    "reading {topic} stalled: nothing for {} s with {} partitions unfinished ({} messages read)",
                    STALL_TIMEOUT.as_secs(),
                    ends.len(),
                    scan.read
                );
            }
            continue;
        };
        let message = result.with_context(|| format!("reading {topic}"))?;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if offset >= end {
            finish(&consumer, &topic, partition, &mut ends);
            continue;
        }
        scan.read += 1;
        match DeadLetter::decode_validated(message.payload().unwrap_or_default()) {
            Ok(letter) => {
                let trace = trace::of_message(&message);
                let in_trace = selection.trace_ids.is_empty()
                    || trace.as_ref().is_some_and(|(context, _)| {
                        selection.trace_ids.contains(&context.trace_id())
                    });
                if in_trace && selection.matches(&letter, source_topic.as_deref()) {
                    let taken = take(FoundLetter {
                        dlq_partition: partition,
                        dlq_offset: offset,
                        redriven: None,
                        trace_id: trace.as_ref().map(|(context, _)| context.trace_id()),
                        trace,
                        letter,
                    });
                    if !taken {
                        return Ok(scan);
                    }
                    scan.selected += 1;
                }
            }
            Err(error) => {
                scan.unreadable_total += 1;
                if scan.unreadable.len() < UNREADABLE_KEPT {
                    scan.unreadable.push(Unreadable {
                        partition,
                        offset,
                        reason: error.to_string(),
                    });
                }
            }
        }
        if offset + 1 >= end {
            finish(&consumer, &topic, partition, &mut ends);
        }
        // After `take` (which may have waited on a redrive), so that wait is not taken for a stall.
        last_progress = Instant::now();
    }
    Ok(scan)
}

/// Stops reading `partition`: it reached its end (pausing it keeps the fetcher off a busy partition).
fn finish(consumer: &BaseConsumer, topic: &str, partition: i32, ends: &mut BTreeMap<i32, i64>) {
    ends.remove(&partition);
    let mut paused = TopicPartitionList::new();
    paused.add_partition(topic, partition);
    if let Err(error) = consumer.pause(&paused) {
        tracing::debug!(%error, partition, "could not pause a finished partition");
    }
}

/// Keeps the newest `limit` letters (by time, then place), in no particular order.
fn keep_newest(letters: &mut Vec<FoundLetter>, limit: usize) {
    if letters.len() <= limit {
        return;
    }
    letters.sort_by(|a, b| {
        (b.letter.event_time, b.dlq_partition, b.dlq_offset).cmp(&(
            a.letter.event_time,
            a.dlq_partition,
            a.dlq_offset,
        ))
    });
    letters.truncate(limit);
}

/// A consumer that reads by assignment: its group is never joined and nothing is committed.
fn reader(kafka: &KafkaArgs) -> anyhow::Result<BaseConsumer> {
    let mut config = kafka.client_config();
    config
        .set(
            "group.id",
            format!("sentiflow-dlq-{}", uuid::Uuid::new_v4()),
        )
        .set("client.id", "sentiflow-dlq")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    sentiflow_common::kafka::override_from_options(&mut config, kafka);
    config.create().context("creating a Kafka client")
}

/// The partitions of `topic`, or a clear error when it does not exist.
fn topic_partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), QUERY_TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let found = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .filter(|found| found.error().is_none() && !found.partitions().is_empty());
    match found {
        Some(found) => Ok(found.partitions().iter().map(|p| p.id()).collect()),
        None => bail!("topic {topic} does not exist (check --kafka-brokers and --topic-prefix)"),
    }
}

/// Partitions whose position reached their end without a message at the last offsets (transaction
/// markers, deleted records).
fn finished(consumer: &BaseConsumer, topic: &str, ends: &BTreeMap<i32, i64>) -> Vec<i32> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    ends.iter()
        .filter(|&(&partition, &end)| {
            matches!(
                positions.find_partition(topic, partition).map(|found| found.offset()),
                Some(Offset::Offset(position)) if position >= end
            )
        })
        .map(|(&partition, _)| partition)
        .collect()
}

/// The Redis key remembering that the letter with `event_id` was redriven.
fn redriven_key(store: &RedisStore, event_id: &str) -> String {
    store.key(&["dlq", "redriven", event_id])
}

/// Fills in `redriven` from Redis; warns and leaves it unknown when Redis does not answer.
pub async fn mark_redriven(redis: &RedisArgs, letters: &mut [FoundLetter]) {
    if letters.is_empty() {
        return;
    }
    let event_ids: Vec<&str> = letters
        .iter()
        .map(|found| found.letter.event_id.as_str())
        .collect();
    match marks(redis, &event_ids).await {
        Ok(marks) => {
            for (found, mark) in letters.iter_mut().zip(marks) {
                found.redriven = Some(mark);
            }
        }
        Err(error) => eprintln!("warning: redriven marks left out: Redis: {error:#}"),
    }
}

/// What Redis remembers of the letters with `event_ids`, in order.
async fn marks(redis: &RedisArgs, event_ids: &[&str]) -> anyhow::Result<Vec<Mark>> {
    let store = RedisStore::connect_lazy(redis)?;
    let mut connection = store.connection();
    let mut marks = Vec::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|event_id| redriven_key(&store, event_id))
            .collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await?;
        marks.extend(values.into_iter().map(|value| match value {
            None => Mark::No,
            Some(value) if value.starts_with(CLAIM_PREFIX) => Mark::Pending,
            Some(_) => Mark::Yes,
        }));
    }
    Ok(marks)
}

/// The summary rows, by (service, error kind, source topic).
pub fn summarize(letters: &[FoundLetter]) -> Vec<SummaryRow> {
    let mut rows: BTreeMap<(String, String, String), SummaryRow> = BTreeMap::new();
    for found in letters {
        let letter = &found.letter;
        let row = rows
            .entry((
                letter.service.clone(),
                letter.error_kind.clone(),
                letter.source.topic.clone(),
            ))
            .or_insert_with(|| SummaryRow {
                service: letter.service.clone(),
                error_kind: letter.error_kind.clone(),
                source_topic: letter.source.topic.clone(),
                letters: 0,
                truncated: 0,
                redriven: Some(0),
                pending: Some(0),
                first: letter.event_time,
                last: letter.event_time,
            });
        row.letters += 1;
        row.truncated += u64::from(letter.original_truncated);
        let count = |so_far: Option<u64>, wanted: Mark| match (so_far, found.redriven) {
            (Some(count), Some(mark)) => Some(count + u64::from(mark == wanted)),
            _ => None,
        };
        row.redriven = count(row.redriven, Mark::Yes);
        row.pending = count(row.pending, Mark::Pending);
        row.first = row.first.min(letter.event_time);
        row.last = row.last.max(letter.event_time);
    }
    rows.into_values().collect()
}

fn print_summary(args: &SummaryArgs, scan: &Scan) -> anyhow::Result<()> {
    let rows = summarize(&scan.letters);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "topic": scan.topic,
                "read": scan.read,
                "selected": scan.selected,
                "groups": rows,
                "unreadable_total": scan.unreadable_total,
                "unreadable": scan.unreadable,
            }))?
        );
        return Ok(());
    }
    println!(
        "{}: {} messages read, {} dead letters selected, {} unreadable",
        scan.topic, scan.read, scan.selected, scan.unreadable_total
    );
    if rows.is_empty() {
        return Ok(());
    }
    println!(
        "{:<8} {:<24} {:<28} {:>8} {:>9} {:>9}  {:<20}  {:<20}",
        "SERVICE",
        "ERROR KIND",
        "SOURCE TOPIC",
        "LETTERS",
        "TRUNCATED",
        "REDRIVEN",
        "FIRST",
        "LAST"
    );
    for row in &rows {
        println!(
            "{:<8} {:<24} {:<28} {:>8} {:>9} {:>9}  {:<20}  {:<20}",
            cell(&row.service, 8),
            cell(&row.error_kind, 24),
            cell(&row.source_topic, 28),
            row.letters,
            row.truncated,
            match (row.redriven, row.pending) {
                (Some(redriven), Some(0)) => redriven.to_string(),
                (Some(redriven), Some(pending)) => format!("{redriven}+{pending}p"),
                _ => "?".to_owned(),
            },
            row.first.format("%Y-%m-%d %H:%M:%S"),
            row.last.format("%Y-%m-%d %H:%M:%S"),
        );
    }
    const UNREADABLE_SHOWN: usize = 10;
    for unreadable in scan.unreadable.iter().take(UNREADABLE_SHOWN) {
        println!(
            "unreadable: partition {} offset {}: {}",
            unreadable.partition,
            unreadable.offset,
            cell(&unreadable.reason, 200)
        );
    }
    if scan.unreadable_total > UNREADABLE_SHOWN as u64 {
        println!(
            "… and {} more unreadable (--json names the first {UNREADABLE_KEPT})",
            scan.unreadable_total - UNREADABLE_SHOWN as u64
        );
    }
    Ok(())
}

/// `text` on one line, control characters escaped, at most `chars` characters.
fn cell(text: &str, chars: usize) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            let escape = c.is_control();
            c.escape_default()
                .filter(move |_| escape)
                .chain(Some(c).filter(|_| !escape))
        })
        .collect();
    let mut cut: String = escaped.chars().take(chars).collect();
    if escaped.chars().count() > chars {
        cut.push('…');
    }
    cut
}

fn print_list(args: &ListArgs, scan: &Scan) {
    let shown = format!(
        "{} of {} selected letters shown ({} messages read from {}){}",
        scan.letters.len(),
        scan.selected,
        scan.read,
        scan.topic,
        if (scan.letters.len() as u64) < scan.selected {
            "; --limit 0 shows all"
        } else {
            ""
        }
    );
    match args.format {
        ListFormat::Json => {
            for found in &scan.letters {
                println!(
                    "{}",
                    serde_json::to_string(found).expect("letters always serialise")
                );
            }
        }
        ListFormat::Original => {
            for found in &scan.letters {
                let at = format!(
                    "partition {} offset {}",
                    found.dlq_partition, found.dlq_offset
                );
                match found.letter.original_value().map(String::from_utf8) {
                    _ if found.letter.original_truncated => {
                        eprintln!("skipped {at}: the original was cut");
                    }
                    Ok(Ok(text)) if !text.contains('\n') && !text.is_empty() => println!("{text}"),
                    _ => eprintln!("skipped {at}: the original is not one line of UTF-8"),
                }
            }
        }
        ListFormat::Table => {
            println!(
                "{:<10} {:<20} {:<8} {:<22} {:<26} {:>7} {:<8}  {:<40}  ORIGINAL",
                "DLQ AT", "TIME", "SERVICE", "ERROR KIND", "SOURCE", "BYTES", "REDRIVEN", "REASON"
            );
            for found in &scan.letters {
                let letter = &found.letter;
                let original = letter
                    .original_value()
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_else(|_| "(not base64)".to_owned());
                println!(
                    "{:<10} {:<20} {:<8} {:<22} {:<26} {:>7} {:<8}  {:<40}  {}",
                    format!("{}@{}", found.dlq_partition, found.dlq_offset),
                    letter.event_time.format("%Y-%m-%d %H:%M:%S"),
                    cell(&letter.service, 8),
                    cell(&letter.error_kind, 22),
                    format!(
                        "{}/{}@{}",
                        letter.source.topic, letter.source.partition, letter.source.offset
                    ),
                    letter.original_size_bytes,
                    found.redriven.map_or("?", Mark::as_str),
                    cell(&letter.reason, 40),
                    cell(&original, CELL_CHARS),
                );
            }
            println!("{shown}");
            return;
        }
    }
    // JSON and originals go to files: the count goes to stderr.
    eprintln!("{shown}");
}

/// Letters claimed, sent and finalised together: the time from claim to final mark stays far below
/// [`PENDING_CLAIM_SECS`] whatever the selection's size.
const REDRIVE_CHUNK: usize = 256;

/// Publishes the originals of the selected letters again (see [`DlqCommand::Redrive`]).
///
/// In chunks: each letter is claimed in Redis (`SET NX`, a value naming this run, for
/// [`PENDING_CLAIM_SECS`]: concurrent runs never both send it), published, and once the broker
/// acknowledged it the mark is made final for `--remember-days`; a failed publication gives this
/// run's claim back. Redis failing or `shutdown` stops before the next letter; what was sent is still
/// awaited and reported.
pub async fn redrive(
    args: &RedriveArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<RedriveReport> {
    if args.selection.error_kinds.is_empty() {
        bail!(
            "redrive needs --error-kind: name the kind of failure whose cause was fixed (see `sentiflow dlq summary`)"
        );
    }
    let store = RedisStore::connect_lazy(&args.redis).context("redis")?;
    let dlq_topic = args.selection.kafka.topic(topics::REVIEWS_DLQ);
    let target = args
        .to
        .as_deref()
        .map(|topic| physical_topic(&args.selection.kafka, topic));
    // Every target topic is checked before the first letter goes to it (a producer would otherwise
    // wait its whole timeout); `--to` before anything is read.
    let mut checked_topics = std::collections::BTreeSet::new();
    if let Some(target) = &target {
        check_topics_exist(&args.selection.kafka, std::slice::from_ref(target)).await?;
        checked_topics.insert(target.clone());
    }
    let producer = if args.dry_run {
        None
    } else {
        Some(ResilientProducer::new(&args.selection.kafka, "dlq")?)
    };
    let mut report = RedriveReport {
        dry_run: args.dry_run,
        ..RedriveReport::default()
    };
    let mut run = Redrive {
        store: &store,
        connection: store.connection(),
        claim: format!("{CLAIM_PREFIX}:{}", uuid::Uuid::new_v4()),
        remember_secs: args.remember_days.saturating_mul(86_400),
        dlq_topic: &dlq_topic,
    };
    // The letters stream from the reader in chunks, so memory holds a few chunks of originals
    // however large the dead-letter topic is.
    let (letters, mut incoming) = tokio::sync::mpsc::channel::<FoundLetter>(2 * REDRIVE_CHUNK);
    let selection = args.selection.clone();
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop_reading);
        tokio::task::spawn_blocking(move || {
            scan_blocking(&selection, &stop, |found| {
                letters.blocking_send(found).is_ok()
            })
        })
    };
    // After a stop the reader is told to end and what it had handed over is counted as not tried.
    let stop = |incoming: &mut tokio::sync::mpsc::Receiver<FoundLetter>| {
        stop_reading.store(true, Ordering::Relaxed);
        incoming.close();
    };
    let mut redis_warned = false;
    loop {
        // Ctrl-C is heard while the reader looks for matching letters, not only between chunks.
        let chunk = tokio::select! {
            biased;
            () = shutdown.cancelled(), if report.stopped.is_none() => {
                report.stopped = Some("interrupted".to_owned());
                stop(&mut incoming);
                continue;
            }
            chunk = next_chunk(&mut incoming) => chunk,
        };
        if chunk.is_empty() {
            break;
        }
        let mut chosen = choose(&chunk, target.as_deref(), &dlq_topic, &mut report);
        if report.stopped.is_some() {
            // Letters the reader had already handed over when the run stopped.
            report.not_attempted += chosen.len() as u64;
            continue;
        }
        let unchecked: Vec<String> = chosen
            .iter()
            .map(|outgoing| outgoing.topic.clone())
            .filter(|topic| !checked_topics.contains(topic))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unchecked.is_empty() {
            if let Err(error) = check_topics_exist(&args.selection.kafka, &unchecked).await {
                report.not_attempted += chosen.len() as u64;
                report.stopped = Some(format!("{error:#}"));
                stop(&mut incoming);
                continue;
            }
            checked_topics.extend(unchecked);
        }
        let event_ids: Vec<&str> = chosen
            .iter()
            .map(|outgoing| outgoing.found.letter.event_id.as_str())
            .collect();
        match marks(&args.redis, &event_ids).await {
            Ok(found) => {
                for (outgoing, mark) in chosen.iter_mut().zip(found) {
                    outgoing.mark = mark;
                }
            }
            Err(error) if args.dry_run => {
                if !redis_warned {
                    eprintln!(
                        "warning: Redis did not answer ({error:#}): counting every letter as not redriven"
                    );
                    redis_warned = true;
                }
            }
            Err(error) => {
                report.not_attempted += chosen.len() as u64;
                report.stopped = Some(format!("reading the redriven marks from Redis: {error:#}"));
                stop(&mut incoming);
                continue;
            }
        }
        let mut to_send = Vec::with_capacity(chosen.len());
        for outgoing in chosen {
            match outgoing.mark {
                // Another run may be sending it right now: never twice, even with --again.
                Mark::Pending => report.in_progress += 1,
                Mark::Yes if !args.again => report.already_redriven += 1,
                Mark::Yes | Mark::No => to_send.push(outgoing),
            }
        }
        let Some(producer) = &producer else {
            for outgoing in &to_send {
                *report.published.entry(outgoing.topic.clone()).or_default() += 1;
            }
            continue;
        };
        let stopped = if shutdown.is_cancelled() {
            report.not_attempted += to_send.len() as u64;
            Err("interrupted".to_owned())
        } else {
            run.send_chunk(producer, &to_send, &mut report, shutdown)
                .await
        };
        if let Err(stopped) = stopped {
            report.stopped = Some(stopped);
            stop(&mut incoming);
        }
    }
    match reader.await? {
        Ok(scan) => report.selected = scan.selected,
        // What was sent is still reported (and remembered in Redis: a rerun sends the rest).
        Err(error) => {
            report.selected = report.counted();
            report
                .stopped
                .get_or_insert(format!("reading the dead letters: {error:#}"));
        }
    }
    report.read_to_end = report.stopped.is_none();
    Ok(report)
}

/// The letters the reader has handed over, up to [`REDRIVE_CHUNK`] (at least one); empty once it is
/// done (or closed and drained). Cancel-safe: a letter is either returned or left in the channel.
async fn next_chunk(incoming: &mut tokio::sync::mpsc::Receiver<FoundLetter>) -> Vec<FoundLetter> {
    let mut chunk = Vec::with_capacity(REDRIVE_CHUNK);
    incoming.recv_many(&mut chunk, REDRIVE_CHUNK).await;
    chunk
}

/// The letters of `chunk` that can be redriven, with their target; the others are counted in
/// `report` (a cut original, an empty or undecodable one, or a target that is the dead-letter topic).
fn choose<'a>(
    chunk: &'a [FoundLetter],
    target: Option<&str>,
    dlq_topic: &str,
    report: &mut RedriveReport,
) -> Vec<Outgoing<'a>> {
    let mut chosen = Vec::with_capacity(chunk.len());
    for found in chunk {
        let letter = &found.letter;
        if letter.original_truncated {
            report.truncated += 1;
            continue;
        }
        let topic = target.unwrap_or(&letter.source.topic).to_owned();
        match (letter.original_key(), letter.original_value()) {
            (Ok(key), Ok(value)) if !value.is_empty() && topic != dlq_topic => {
                chosen.push(Outgoing {
                    found,
                    topic,
                    key,
                    value,
                    mark: Mark::No,
                });
            }
            _ => report.not_redrivable += 1,
        }
    }
    chosen
}

/// One redrive's Redis state: its claim value and how long final marks last.
struct Redrive<'a> {
    store: &'a RedisStore,
    connection: redis::aio::ConnectionManager,
    /// `pending:<run id>`: the value of this run's claims, so it never gives back another's.
    claim: String,
    remember_secs: u64,
    dlq_topic: &'a str,
}

impl Redrive<'_> {
    /// Claims, sends and finalises one chunk. `Err` (why) when Redis failed while claiming or
    /// `shutdown` came: the letters of the chunk not claimed are counted as not tried, the ones sent
    /// are finished first.
    async fn send_chunk(
        &mut self,
        producer: &ResilientProducer,
        chunk: &[Outgoing<'_>],
        report: &mut RedriveReport,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut deliveries = Vec::with_capacity(chunk.len());
        let mut stopped = None;
        for (position, outgoing) in chunk.iter().enumerate() {
            if shutdown.is_cancelled() {
                report.not_attempted += (chunk.len() - position) as u64;
                stopped = Some("interrupted".to_owned());
                break;
            }
            let mark = redriven_key(self.store, &outgoing.found.letter.event_id);
            // A letter redriven before (only with --again) keeps its mark until its new copy is acknowledged.
            let claimed = if outgoing.mark == Mark::Yes {
                false
            } else {
                let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                    .arg(&mark)
                    .arg(&self.claim)
                    .arg("NX")
                    .arg("EX")
                    .arg(PENDING_CLAIM_SECS)
                    .query_async(&mut self.connection)
                    .await;
                match set {
                    Ok(Some(_)) => true,
                    Ok(None) => {
                        // Claimed or finished by a run going on at the same time.
                        let now: redis::RedisResult<Option<String>> = redis::cmd("GET")
                            .arg(&mark)
                            .query_async(&mut self.connection)
                            .await;
                        match now {
                            Ok(Some(value)) if !value.starts_with(CLAIM_PREFIX) => {
                                report.already_redriven += 1;
                            }
                            _ => report.in_progress += 1,
                        }
                        continue;
                    }
                    Err(error) => {
                        report.not_attempted += (chunk.len() - position) as u64;
                        stopped = Some(format!("Redis: {error}"));
                        break;
                    }
                }
            };
            let from = format!(
                "{}/{}/{}",
                self.dlq_topic, outgoing.found.dlq_partition, outgoing.found.dlq_offset
            );
            // The copy continues the trace of the message that failed.
            let (context, state) = outgoing.found.trace.as_ref().map_or_else(
                || (TraceContext::root(), None),
                |(context, state)| (context.child(), state.as_deref()),
            );
            let headers = trace::headers(&context, state).insert(Header {
                key: REDRIVEN_FROM_HEADER,
                value: Some(from.as_bytes()),
            });
            match producer
                .enqueue(
                    &outgoing.topic,
                    outgoing.key.as_deref(),
                    &outgoing.value,
                    Some(headers),
                )
                .await
            {
                Ok(delivery) => deliveries.push((outgoing, mark, claimed, delivery)),
                Err(error) => {
                    eprintln!("could not publish {from} to {}: {error}", outgoing.topic);
                    if claimed {
                        self.give_back(&mark).await;
                    }
                    report.failed += 1;
                }
            }
        }
        for (outgoing, mark, claimed, delivery) in deliveries {
            match await_delivery(delivery).await {
                Ok(_) => {
                    *report.published.entry(outgoing.topic.clone()).or_default() += 1;
                    let record = serde_json::json!({
                        "at": Utc::now(),
                        "to": outgoing.topic,
                        "dlq_partition": outgoing.found.dlq_partition,
                        "dlq_offset": outgoing.found.dlq_offset,
                    })
                    .to_string();
                    let set: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(&mark)
                        .arg(record)
                        .arg("EX")
                        .arg(self.remember_secs)
                        .query_async(&mut self.connection)
                        .await;
                    if let Err(error) = set {
                        eprintln!(
                            "published, but the mark {mark} could not be made final: {error}"
                        );
                        report.unconfirmed_marks += 1;
                    }
                }
                Err(error) => {
                    // Not acknowledged in time: it may still have been written, so a rerun may
                    // duplicate it (consumers dedupe by event id where it matters).
                    eprintln!(
                        "a redriven message to {} was not acknowledged: {error}",
                        outgoing.topic
                    );
                    if claimed {
                        self.give_back(&mark).await;
                    }
                    report.failed += 1;
                }
            }
        }
        stopped.map_or(Ok(()), Err)
    }

    /// Deletes this run's claim on a letter whose message was not published, so a rerun sends it
    /// (left in place, the claim lapses after [`PENDING_CLAIM_SECS`]); never another run's claim or
    /// a final mark.
    async fn give_back(&mut self, mark: &str) {
        let removed: redis::RedisResult<u64> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(mark)
        .arg(&self.claim)
        .invoke_async(&mut self.connection)
        .await;
        if let Err(error) = removed {
            eprintln!(
                "could not give back the claim {mark} ({error}); it lapses in {PENDING_CLAIM_SECS} s"
            );
        }
    }
}

/// A letter about to be redriven: where to and what.
struct Outgoing<'a> {
    found: &'a FoundLetter,
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// What Redis remembers of it.
    mark: Mark,
}

/// Fails unless every topic in `targets` exists (a producer would wait its whole timeout otherwise).
async fn check_topics_exist(kafka: &KafkaArgs, targets: &[String]) -> anyhow::Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let kafka = kafka.clone();
    let targets = targets.to_vec();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer = reader(&kafka)?;
        for topic in &targets {
            topic_partitions(&consumer, topic)?;
        }
        Ok(())
    })
    .await?
}

fn print_redrive(report: &RedriveReport) {
    let verb = if report.dry_run {
        "would publish"
    } else {
        "published"
    };
    println!(
        "{} dead letters selected; {verb} {}",
        report.selected,
        report.published_total()
    );
    for (topic, count) in &report.published {
        println!("  {count:>8}  to {topic}");
    }
    let unconfirmed = format!(
        "published, but the mark is not final: a rerun after {PENDING_CLAIM_SECS} s sends them again"
    );
    for (count, why) in [
        (
            report.already_redriven,
            "skipped: redriven before (--again to send them again)",
        ),
        (
            report.in_progress,
            "skipped: claimed by a redrive not finished (or one that died: its claim lapses within 5 minutes)",
        ),
        (
            report.truncated,
            "skipped: the original was cut (a value over 256 KiB or a key over 16 KiB), its bytes are gone",
        ),
        (
            report.not_redrivable,
            "skipped: the original is empty or not base64, or the target is the dead-letter topic",
        ),
        (
            report.failed,
            "failed: not acknowledged by the broker (this run's claim given back)",
        ),
        (report.not_attempted, "not tried: the run stopped early"),
        (report.unconfirmed_marks, unconfirmed.as_str()),
    ] {
        if count > 0 {
            println!("  {count:>8}  {why}");
        }
    }
    if let Some(why) = &report.stopped {
        println!("stopped early: {why}; the letters after those read were not looked at");
    }
    if report.dry_run {
        println!("dry run: nothing was published or remembered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_stay_on_one_line_and_are_cut() {
        assert_eq!(cell("{\"a\":1}\n\tb", 60), "{\"a\":1}\\n\\tb");
        assert_eq!(cell("abcdef", 3), "abc…");
        assert_eq!(cell("héllo", 10), "héllo");
    }

    #[test]
    fn times_are_rfc3339_or_an_age() {
        assert_eq!(
            parse_time("2026-12-06T10:00:00+01:00").unwrap(),
            DateTime::parse_from_rfc3339("2026-12-06T09:00:00Z").unwrap()
        );
        let two_hours_ago = parse_time("2h").unwrap();
        let age = Utc::now() - two_hours_ago;
        assert!((7_190..=7_210).contains(&age.num_seconds()), "{age}");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("0h").is_err());
    }
}
