//! Publishes corpus records to `reviews.raw` with bounded in-flight sends, an optional rate limit and a
//! progress bar; returns only when every record was acknowledged by the broker.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use sentiflow_common::kafka::{self, ResilientProducer};

use crate::corpus::Record;

/// Most sends awaiting acknowledgement at once (bounds memory, keeps the producer's batches full).
const MAX_IN_FLIGHT: usize = 20_000;

/// What a replay did.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySummary {
    /// Records acknowledged by the broker.
    pub published: u64,
    /// Wall time from the first send to the last acknowledgement.
    pub elapsed: Duration,
}

impl ReplaySummary {
    /// Acknowledged records per second.
    pub fn rate(&self) -> f64 {
        self.published as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A progress bar on stderr, hidden when `visible` is false (tests, non-interactive runs).
pub fn progress_bar(total: u64, message: &'static str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Publishes `records` to `topic`. `rate` limits records per second (None = as fast as the broker takes them).
pub async fn publish(
    producer: &ResilientProducer,
    topic: &str,
    records: &[Record],
    rate: Option<u32>,
    bar: &ProgressBar,
) -> Result<ReplaySummary, rdkafka::error::KafkaError> {
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut published = 0u64;
    for (index, record) in records.iter().enumerate() {
        if let Some(rate) = rate.filter(|rate| *rate > 0) {
            let due = started + Duration::from_secs_f64(index as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        let future = producer
            .enqueue(topic, Some(record.key.as_bytes()), &record.payload, None)
            .await?;
        in_flight.push(kafka::await_delivery(future));
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(result) = in_flight.next().await {
                result?;
                published += 1;
                bar.inc(1);
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        result?;
        published += 1;
        bar.inc(1);
    }
    Ok(ReplaySummary {
        published,
        elapsed: started.elapsed(),
    })
}
