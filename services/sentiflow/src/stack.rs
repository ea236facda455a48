//! The four services of one local deployment wired together in-process — ingest → infer → drift, and the
//! trainer (curation + retrain loop) beside them — with the settings `sentiflow up` runs them with; the
//! end-to-end tests start the same stack against their own broker and Redis.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use sentiflow_common::config::{KafkaArgs, RedisArgs, Secret, TelemetryArgs};
use sentiflow_drift::DriftConfig;
use sentiflow_infer::InferConfig;
use sentiflow_infer::config::DeviceArg;
use sentiflow_ingest::IngestConfig;
use sentiflow_trainer::TrainerConfig;
use tokio_util::sync::CancellationToken;

/// Registry name every service of the stack works on.
pub const MODEL_NAME: &str = "sentiment-hashed";

/// The configuration of every service of a stack. [`StackConfig::local`] gives `up`'s settings; callers
/// adjust any field before [`Stack::start`].
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The ingest service.
    pub ingest: IngestConfig,
    /// The inference service.
    pub infer: InferConfig,
    /// The trainer service (curation and the retrain loop).
    pub trainer: TrainerConfig,
    /// The drift service.
    pub drift: DriftConfig,
}

impl StackConfig {
    /// `up`'s settings: consumer groups `<group_prefix>-ingest|infer|trainer|trainer-retrain|drift`,
    /// Redis keys under `redis_prefix`, models and curation under `data_dir`, HTTP on free loopback ports.
    pub fn local(
        kafka: &KafkaArgs,
        redis_url: &str,
        redis_prefix: &str,
        data_dir: &Path,
        group_prefix: &str,
        author_hash_key: Secret,
    ) -> Self {
        let redis = RedisArgs::local(redis_url, redis_prefix);
        let ingest = IngestConfig {
            kafka: kafka.clone(),
            redis: redis.clone(),
            telemetry: TelemetryArgs::ephemeral(),
            api_auth: Default::default(),
            group_id: format!("{group_prefix}-ingest"),
            max_payload_bytes: 65_536,
            max_batch: 500,
            batch_wait_ms: 20,
            dedupe_ttl_secs: 7 * 24 * 3600,
            dedupe_text: true,
            author_hash_key,
            lang_allow: vec!["en".to_owned()],
            lang_policy: sentiflow_ingest::config::LangPolicy::Mark,
            weak_label_threshold: 0.5,
            lexicon_path: None,
            http_max_reviews: 500,
            http_max_concurrent: 16,
        };
        let infer = InferConfig {
            kafka: kafka.clone(),
            redis: redis.clone(),
            telemetry: TelemetryArgs::ephemeral(),
            api_auth: Default::default(),
            group_id: format!("{group_prefix}-infer"),
            data_dir: data_dir.to_owned(),
            model_name: MODEL_NAME.to_owned(),
            device: DeviceArg::Auto,
            ort_dylib: None,
            workers: 1,
            intra_threads: 1,
            max_batch: 256,
            batch_wait_ms: 5,
            max_queued_batches: 32,
            pause_after_ms: 500,
            alert_threshold: 0.8,
            registry_poll_secs: 30,
            shadow_fraction: 0.0,
            http_max_texts: 256,
            http_max_text_bytes: 5_000,
            http_max_concurrent: 16,
            http_batch_texts: 256,
            encoder_model_name: "sentiment-encoder".to_owned(),
            family: sentiflow_infer::config::FamilyArg::Auto,
        };
        let trainer = TrainerConfig {
            group_id: format!("{group_prefix}-trainer"),
            retrain_group_id: format!("{group_prefix}-trainer-retrain"),
            model_name: MODEL_NAME.to_owned(),
            ..TrainerConfig::local(kafka.clone(), redis.clone(), data_dir.to_owned())
        };
        let mut drift = DriftConfig::local(kafka.clone(), redis);
        drift.group_id = format!("{group_prefix}-drift");
        Self {
            ingest,
            infer,
            trainer,
            drift,
        }
    }
}

/// The running services of a stack.
#[derive(Debug)]
pub struct Stack {
    /// `reviews.raw` → `reviews.clean` / `reviews.dlq`.
    pub ingest: sentiflow_ingest::Running,
    /// `reviews.clean` → `predictions` / `alerts.negative`; hot-swaps on `models.updates`.
    pub infer: sentiflow_infer::Running,
    /// Curation of `reviews.clean` + `labels.feedback`; `retrain.requests` → train → gate → promote.
    pub trainer: sentiflow_trainer::Running,
    /// `predictions` → `drift.reports`; confirmed drift → `retrain.requests`; `/dashboard`.
    pub drift: sentiflow_drift::Running,
    /// Cancelled by [`Stack::stop`] (a child of the token given to [`Stack::start`]).
    services: CancellationToken,
}

impl Stack {
    /// Starts ingest, infer, the trainer and drift, in that order; each runs until `shutdown` is
    /// cancelled or [`Stack::stop`] is called.
    pub async fn start(config: StackConfig, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let services = shutdown.child_token();
        let ingest = sentiflow_ingest::start(config.ingest, services.clone()).await?;
        let infer = sentiflow_infer::start(config.infer, services.clone()).await?;
        let trainer = sentiflow_trainer::start(config.trainer, services.clone()).await?;
        let drift = sentiflow_drift::start(config.drift, services.clone()).await?;
        Ok(Self {
            ingest,
            infer,
            trainer,
            drift,
            services,
        })
    }

    /// Stops every service (each drains and commits) and returns the first error any of them ended with.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.services.cancel();
        let mut first_error: Option<anyhow::Error> = None;
        let mut keep = |what: &str, result: anyhow::Result<()>| {
            if let Err(error) = result
                && first_error.is_none()
            {
                first_error = Some(error.context(format!("{what} failed")));
            }
        };
        keep("ingest", joined(self.ingest.task.await));
        keep("infer", joined(self.infer.task.await));
        keep("trainer", joined(self.trainer.task.await));
        keep("drift", joined(self.drift.task.await));
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Totals of a stack's services at one moment; [`Stack::wait_processed`] waits for the work published
/// after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Messages ingest consumed from `reviews.raw`.
    pub ingested: u64,
    /// Of which published to `reviews.clean`.
    pub clean: u64,
    /// Of which dead-lettered.
    pub dead_lettered: u64,
    /// Of which dropped as duplicates.
    pub duplicates: u64,
    /// Clean reviews infer consumed.
    pub scored: u64,
    /// Predictions infer published.
    pub predictions: u64,
    /// Negative alerts infer published.
    pub alerts: u64,
    /// Clean reviews infer dead-lettered.
    pub scored_dead: u64,
    /// Predictions the drift service consumed.
    pub watched: u64,
}

impl Marks {
    /// Each total minus `earlier`'s.
    pub fn since(&self, earlier: &Marks) -> Marks {
        Marks {
            ingested: self.ingested.saturating_sub(earlier.ingested),
            clean: self.clean.saturating_sub(earlier.clean),
            dead_lettered: self.dead_lettered.saturating_sub(earlier.dead_lettered),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            scored: self.scored.saturating_sub(earlier.scored),
            predictions: self.predictions.saturating_sub(earlier.predictions),
            alerts: self.alerts.saturating_sub(earlier.alerts),
            scored_dead: self.scored_dead.saturating_sub(earlier.scored_dead),
            watched: self.watched.saturating_sub(earlier.watched),
        }
    }
}

impl Stack {
    /// The services' totals now.
    pub fn marks(&self) -> Marks {
        let (ingested, clean, dead_lettered, duplicates) = self.ingest.stats.snapshot();
        let (scored, predictions, alerts, scored_dead) = self.infer.stats.snapshot();
        Marks {
            ingested,
            clean,
            dead_lettered,
            duplicates,
            scored,
            predictions,
            alerts,
            scored_dead,
            watched: self.drift.stats.predictions.load(Ordering::Relaxed),
        }
    }

    /// Waits until ingest has consumed `published` messages more than at `since`, infer has scored every
    /// clean review ingest produced since (when a model serves), and drift has consumed every prediction
    /// infer produced since. Fails when a stage makes no progress for `stall`. `visible` shows progress
    /// bars on stderr.
    pub async fn wait_processed(
        &self,
        since: &Marks,
        published: u64,
        stall: Duration,
        visible: bool,
    ) -> anyhow::Result<Marks> {
        wait_for("ingested", published, stall, visible, || {
            self.marks().since(since).ingested
        })
        .await?;
        if self.infer.slot.current().is_some() {
            let clean = self.marks().since(since).clean;
            wait_for("predicted", clean, stall, visible, || {
                self.marks().since(since).scored
            })
            .await?;
            let predictions = self.marks().since(since).predictions;
            wait_for("watched", predictions, stall, visible, || {
                self.marks().since(since).watched
            })
            .await?;
        }
        Ok(self.marks())
    }
}

/// Waits until `done()` reaches `total`, with a progress bar; fails after `stall` without progress.
pub async fn wait_for(
    what: &'static str,
    total: u64,
    stall: Duration,
    visible: bool,
    mut done: impl FnMut() -> u64,
) -> anyhow::Result<()> {
    let bar = crate::replay::progress_bar(total, what, visible);
    let mut last_progress = (Instant::now(), done());
    loop {
        let current = done();
        bar.set_position(current.min(total));
        if current >= total {
            break;
        }
        if current != last_progress.1 {
            last_progress = (Instant::now(), current);
        } else if last_progress.0.elapsed() > stall {
            bar.abandon();
            bail!(
                "no progress for {} s ({current} of {total} {what}); see the service's logs and /readyz",
                stall.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    Ok(())
}

/// A service task's end as one result.
fn joined<E>(result: Result<Result<(), E>, tokio::task::JoinError>) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(join_error) => bail!("task ended abnormally: {join_error}"),
    }
}
