//! Checks the scorer with the real VADER lexicon installed by the project setup: known
//! vaderSentiment 3.3.2 outputs, and the macro-F1 of the weak labeller on the shared data sets.

mod common;

use sentiflow_model::{Lexicon, Polarity, clean};

/// The lexicon the setup installs; a missing file is a setup failure, not a reason to skip.
fn installed_lexicon() -> Lexicon {
    let path = common::installed_lexicon_path();
    assert!(
        path.is_file(),
        "VADER lexicon not found at {}: the project setup installs it there from the PyPI wheel \
         vadersentiment==3.3.2 (set SENTIFLOW_CACHE_DIR to use another cache directory)",
        path.display()
    );
    Lexicon::load(&path).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn real_lexicon_loads_completely() {
    let lexicon = installed_lexicon();
    // 7,520 lines, of which a few list the same token twice.
    assert!(lexicon.len() > 7_400, "only {} tokens", lexicon.len());
    assert_eq!(lexicon.valence("good"), Some(1.9));
    assert_eq!(lexicon.valence(":)"), Some(2.0));
    assert_eq!(lexicon.valence("can't stand"), Some(-2.0));
}

#[test]
fn matches_published_vader_scores() {
    // (text, compound, positive, neutral, negative) as vaderSentiment 3.3.2 prints them (rounded to
    // 4 and 3 decimals), without its emoji lexicon.
    let cases = [
        (
            "VADER is smart, handsome, and funny.",
            0.8316,
            0.746,
            0.254,
            0.0,
        ),
        (
            "VADER is smart, handsome, and funny!",
            0.8439,
            0.752,
            0.248,
            0.0,
        ),
        (
            "VADER is very smart, handsome, and funny.",
            0.8545,
            0.701,
            0.299,
            0.0,
        ),
        (
            "VADER is VERY SMART, handsome, and FUNNY.",
            0.9227,
            0.754,
            0.246,
            0.0,
        ),
        (
            "VADER is not smart, handsome, nor funny.",
            -0.7424,
            0.0,
            0.354,
            0.646,
        ),
        ("The book was good.", 0.4404, 0.492, 0.508, 0.0),
        ("The book was kind of good.", 0.3832, 0.343, 0.657, 0.0),
        (
            "At least it isn't a horrible book.",
            0.431,
            0.322,
            0.678,
            0.0,
        ),
        (
            "The plot was good, but the characters are uncompelling and the dialog is not great.",
            -0.7042,
            0.094,
            0.579,
            0.327,
        ),
        ("Today SUX!", -0.5461, 0.0, 0.221, 0.779),
        (
            "Today only kinda sux! But I'll get by, lol",
            0.5249,
            0.317,
            0.556,
            0.127,
        ),
        ("Make sure you :) or :D today!", 0.8633, 0.706, 0.294, 0.0),
        ("Not bad at all", 0.431, 0.487, 0.513, 0.0),
        (
            "@user thanks for the lost bag, worst airline ever <url>",
            -0.5423,
            0.178,
            0.429,
            0.393,
        ),
    ];
    let lexicon = installed_lexicon();
    for (text, compound, positive, neutral, negative) in cases {
        let scores = lexicon.score(text);
        let close = (scores.compound - compound).abs() <= 0.000_05
            && (scores.positive - positive).abs() <= 0.000_5
            && (scores.neutral - neutral).abs() <= 0.000_5
            && (scores.negative - negative).abs() <= 0.000_5;
        assert!(
            close,
            "{text:?}: got {scores:?}, VADER gives compound {compound} pos {positive} neu {neutral} neg {negative}"
        );
    }
    assert_eq!(
        lexicon.score("Not bad at all").polarity(),
        Polarity::Positive
    );
}

/// Macro-averaged F1 over the three classes, with the confusion counts for the report.
fn macro_f1(pairs: &[(Polarity, Polarity)]) -> f64 {
    let classes = [Polarity::Negative, Polarity::Neutral, Polarity::Positive];
    let f1_scores = classes.map(|class| {
        let true_positives = pairs
            .iter()
            .filter(|(gold, predicted)| *gold == class && *predicted == class)
            .count() as f64;
        let predicted = pairs
            .iter()
            .filter(|(_, predicted)| *predicted == class)
            .count() as f64;
        let actual = pairs.iter().filter(|(gold, _)| *gold == class).count() as f64;
        if true_positives == 0.0 {
            return 0.0;
        }
        let precision = true_positives / predicted;
        let recall = true_positives / actual;
        2.0 * precision * recall / (precision + recall)
    });
    f1_scores.iter().sum::<f64>() / classes.len() as f64
}

fn gold_label(label: &str) -> Polarity {
    match label {
        "negative" => Polarity::Negative,
        "neutral" => Polarity::Neutral,
        "positive" => Polarity::Positive,
        other => panic!("unknown label {other:?}"),
    }
}

#[test]
fn macro_f1_helper() {
    use Polarity::{Negative, Neutral, Positive};
    assert_eq!(
        macro_f1(&[
            (Negative, Negative),
            (Neutral, Neutral),
            (Positive, Positive)
        ]),
        1.0
    );
    assert_eq!(macro_f1(&[(Negative, Positive), (Positive, Negative)]), 0.0);
    // Negative: P 1, R 0.5, F1 2/3; positive: P 0.5, R 1, F1 2/3; neutral absent: 0.
    let pairs = [
        (Negative, Negative),
        (Negative, Positive),
        (Positive, Positive),
    ];
    assert!((macro_f1(&pairs) - 4.0 / 9.0).abs() < 1e-12);
}

#[test]
fn weak_labeller_macro_f1_on_shared_data() {
    let lexicon = installed_lexicon();
    let mut airline_f1 = 0.0;
    for (name, rows) in common::all_data_sets() {
        let pairs: Vec<(Polarity, Polarity)> = rows
            .iter()
            .map(|row| {
                (
                    gold_label(&row.label),
                    lexicon.score(&clean(&row.text).text).polarity(),
                )
            })
            .collect();
        let f1 = macro_f1(&pairs);
        eprintln!(
            "weak labeller (VADER compound ±0.05 on clean() text) macro-F1 on {name}: {f1:.4} over {} rows",
            rows.len()
        );
        if name == "airline" {
            airline_f1 = f1;
        }
    }
    assert!(
        airline_f1 >= 0.45,
        "weak labeller macro-F1 on airline tweets is {airline_f1:.4}, below 0.45"
    );
}
