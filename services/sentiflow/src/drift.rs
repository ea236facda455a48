//! `sentiflow drift run|mute|unmute|status` and `sentiflow retrain`: the drift service and the
//! operator's levers on retraining (every decision lands in `drift.reports` / `retrain.requests`).
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::time::Duration;

use anyhow::Context;
use sentiflow_common::config::{KafkaArgs, RedisArgs, TelemetryArgs};
use sentiflow_common::events::DeviceWanted;
use sentiflow_common::store::RedisStore;
use sentiflow_common::telemetry;
use sentiflow_drift::DriftConfig;
use sentiflow_drift::control::{self, Control, OperatorOutcome};

use crate::models::RegistryArgs;

/// `sentiflow drift …`.
#[derive(clap::Subcommand, Debug)]
pub enum DriftCommand {
    /// Run the drift service (predictions → drift.reports / retrain.requests; /dashboard).
    Run(Box<DriftConfig>),
    /// Suppress drift-triggered retrain requests for a while (reports say `muted: true`).
    Mute {
        /// Redis the drift service uses.
        #[command(flatten)]
        redis: RedisArgs,
        /// How long: a number with a unit, e.g. 90s, 30m, 1h, 2d.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Duration,
        /// Why (shown on /dashboard and /api/reports).
        #[arg(long, default_value = "muted by an operator")]
        reason: String,
    },
    /// Lift a mute.
    Unmute {
        /// Redis the drift service uses.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Show the mute, and the cooldown and retrain lock of a model.
    Status {
        /// Redis the drift service uses.
        #[command(flatten)]
        redis: RedisArgs,
        /// Model name.
        #[arg(long, default_value = "sentiment-hashed")]
        model_name: String,
    },
}

/// Flags of `sentiflow retrain`.
#[derive(clap::Args, Debug)]
pub struct RetrainArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Registry location (to find the serving version).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Why the retrain is requested (recorded in the request).
    #[arg(long)]
    pub reason: String,
    /// Model name to retrain.
    #[arg(long, default_value = "sentiment-hashed")]
    pub model_name: String,
    /// Version to replace (default: the champion).
    #[arg(long, default_value = "champion")]
    pub version: String,
    /// Device to train on.
    #[arg(long, default_value = "auto")]
    pub device_wanted: DeviceWanted,
    /// Retrain lock time to live, seconds (one retrain at a time per model).
    #[arg(long, default_value_t = 7200)]
    pub lock_ttl_secs: u64,
    /// Replace the retrain lock of a running retrain.
    #[arg(long)]
    pub force: bool,
}

/// Parses `90s`, `30m`, `1h`, `2d` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a number with a unit (90s, 30m, 1h, 2d), got {text:?}"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} (use s, m, h or d)")),
    };
    if number == 0 {
        return Err("the duration must be positive".to_owned());
    }
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

fn control(redis: &RedisArgs) -> anyhow::Result<Control> {
    Ok(Control::new(
        RedisStore::connect_lazy(redis).context("redis")?,
    ))
}

/// Runs `sentiflow drift …`.
pub async fn run(
    command: DriftCommand,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if !matches!(command, DriftCommand::Run(_)) {
        telemetry::init_tracing(&TelemetryArgs {
            log_filter: "warn".to_owned(),
            ..TelemetryArgs::ephemeral()
        });
    }
    match command {
        DriftCommand::Run(config) => {
            telemetry::init_tracing(&config.telemetry);
            tracing::info!(?config, "starting drift");
            sentiflow_drift::run(*config, shutdown).await?;
        }
        DriftCommand::Mute {
            redis,
            duration,
            reason,
        } => {
            control(&redis)?.mute(duration, &reason).await?;
            println!(
                "drift-triggered retraining muted for {} s: {reason}",
                duration.as_secs()
            );
        }
        DriftCommand::Unmute { redis } => {
            if control(&redis)?.unmute().await? {
                println!("unmuted");
            } else {
                println!("was not muted");
            }
        }
        DriftCommand::Status { redis, model_name } => {
            let control = control(&redis)?;
            match control.mute_status().await? {
                Some(mute) => println!("muted: {} ({})", seconds_left(mute.ttl_secs), mute.reason),
                None => println!("not muted"),
            }
            match control.cooldown_left(&model_name).await? {
                Some(left) => println!("{model_name}: cooldown, {}", seconds_left(left)),
                None => println!("{model_name}: no cooldown"),
            }
            match control.lock_holder(&model_name).await? {
                Some(holder) => println!("{model_name}: retrain lock held by request {holder}"),
                None => println!("{model_name}: retrain lock free"),
            }
        }
    }
    Ok(())
}

/// Runs `sentiflow retrain`.
pub async fn retrain(args: RetrainArgs) -> anyhow::Result<()> {
    let registry = args.registry.open()?;
    let record = registry
        .resolve(&args.model_name, &args.version)
        .await
        .with_context(|| format!("resolving {}@{}", args.model_name, args.version))?;
    let control = control(&args.registry.redis)?;
    let outcome = control::operator_retrain(
        &args.kafka,
        &control,
        record.model_ref(),
        &args.reason,
        args.device_wanted,
        Duration::from_secs(args.lock_ttl_secs),
        args.force,
    )
    .await?;
    match outcome {
        OperatorOutcome::Published(request) => println!(
            "retrain requested: {} ({} v{}, device {})",
            request.request_id, request.model.name, request.model.version, request.device_wanted
        ),
        OperatorOutcome::Locked { holder } => {
            anyhow::bail!(
                "a retrain of {} is already running (request {holder}); wait for it or pass --force",
                args.model_name
            )
        }
    }
    Ok(())
}

/// "N s left", or "no expiry" for a key without one (set by hand).
fn seconds_left(seconds: u64) -> String {
    if seconds == u64::MAX {
        "no expiry".to_owned()
    } else {
        format!("{seconds} s left")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_and_retrain_commands_parse() {
        use clap::{CommandFactory, Parser};
        crate::cli::Cli::command().debug_assert();
        let cli = crate::cli::Cli::parse_from([
            "sentiflow",
            "drift",
            "mute",
            "--for",
            "1h",
            "--reason",
            "relabelling",
        ]);
        assert!(matches!(
            cli.command,
            crate::cli::Command::Drift {
                command: DriftCommand::Mute { duration, .. }
            } if duration == Duration::from_secs(3600)
        ));
        let cli = crate::cli::Cli::parse_from([
            "sentiflow",
            "retrain",
            "--reason",
            "new labels",
            "--version",
            "v2",
            "--force",
        ]);
        let crate::cli::Command::Retrain(args) = cli.command else {
            panic!("retrain parses");
        };
        assert_eq!((args.version.as_str(), args.force), ("v2", true));
        let cli = crate::cli::Cli::parse_from([
            "sentiflow",
            "drift",
            "run",
            "--window-events",
            "500",
            "--threshold",
            "class_mix_psi=0.2,0.3",
        ]);
        let crate::cli::Command::Drift {
            command: DriftCommand::Run(config),
        } = cli.command
        else {
            panic!("drift run parses");
        };
        assert_eq!(config.window_events, 500);
        assert_eq!(config.threshold_table()["class_mix_psi"].drift, 0.3);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
