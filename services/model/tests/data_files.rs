//! Runs the normaliser over every row of the shared data sets and checks its invariants, so that
//! real-world text (broken encodings, entities, emoji, phone numbers) cannot panic it or break its
//! contract.

mod common;

use sentiflow_model::{clean, detect, text_fingerprint};

/// Why a cleaned row breaks the contract of `clean`, if it does.
fn contract_violation(cleaned: &str) -> Option<String> {
    if let Some(control) = cleaned.chars().find(|ch| ch.is_control()) {
        return Some(format!("control character {control:?}"));
    }
    if cleaned.contains("â€") {
        return Some("mojibake `â€` left".to_owned());
    }
    if cleaned != cleaned.trim() || cleaned.contains("  ") {
        return Some("untrimmed or double space".to_owned());
    }
    let mut previous = None;
    let mut run = 0;
    for ch in cleaned.chars() {
        run = if Some(ch) == previous { run + 1 } else { 1 };
        previous = Some(ch);
        // Digits are exempt by design: "flt 2222" must not become "flt 222".
        if run > 3 && !ch.is_numeric() {
            return Some(format!("run of more than three {ch:?}"));
        }
    }
    let again = clean(cleaned).text;
    (again != cleaned).then(|| format!("not idempotent: second clean gives {again:?}"))
}

#[test]
fn clean_keeps_its_contract_on_every_row() {
    let mut violations = Vec::new();
    for (name, rows) in common::all_data_sets() {
        let mut mojibake = 0;
        let mut urls = 0;
        let mut mentions = 0;
        let mut redacted = sentiflow_model::Redactions::default();
        let mut empty = 0;
        let mut replacement_characters = 0;
        for (index, row) in rows.iter().enumerate() {
            let cleaned = clean(&row.text);
            if let Some(violation) = contract_violation(&cleaned.text) {
                violations.push(format!(
                    "{name} row {index}: {violation}\n  raw: {:?}\n  clean: {:?}",
                    row.text, cleaned.text
                ));
            }
            mojibake += u32::from(cleaned.mojibake_repaired);
            urls += cleaned.urls;
            mentions += cleaned.mentions;
            redacted += cleaned.redactions;
            empty += u32::from(cleaned.text.is_empty());
            replacement_characters += u32::from(cleaned.text.contains('\u{fffd}'));
        }
        eprintln!(
            "{name}: {} rows, mojibake repaired in {mojibake}, {urls} urls, {mentions} mentions, {redacted:?}, \
             {empty} empty, {replacement_characters} with U+FFFD (undecodable bytes in the file)",
            rows.len()
        );
    }
    assert!(
        violations.is_empty(),
        "{} rows break the contract of clean(); first ones:\n{}",
        violations.len(),
        violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The text a producer that decodes UTF-8 as Windows-1252 (Latin-1 for the five undefined bytes)
/// would send; written independently of the crate's own table as a cross-check.
fn seen_through_cp1252(text: &str) -> String {
    const HIGH: &str = "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8d}Ž\u{8f}\u{90}‘’“”•–—˜™š›œ\u{9d}žŸ";
    let high: Vec<char> = HIGH.chars().collect();
    text.bytes()
        .map(|byte| match byte {
            0x80..=0x9F => high[usize::from(byte - 0x80)],
            _ => char::from(byte),
        })
        .collect()
}

#[test]
fn repairs_every_row_seen_through_cp1252_once_or_twice() {
    let mut garbled_rows = 0;
    let mut mismatches = Vec::new();
    for (name, rows) in [
        ("airline", common::airline_rows()),
        ("tweeteval", common::tweeteval_rows()),
    ] {
        for (index, row) in rows.iter().enumerate() {
            if row.text.is_ascii() {
                continue;
            }
            garbled_rows += 1;
            let expected = clean(&row.text);
            let garbled_once = seen_through_cp1252(&row.text);
            for garbled in [seen_through_cp1252(&garbled_once), garbled_once] {
                let repaired = clean(&garbled);
                if repaired.text != expected.text || !repaired.mojibake_repaired {
                    mismatches.push(format!(
                        "{name} row {index}:\n  want {:?}\n  got  {:?}",
                        expected.text, repaired.text
                    ));
                }
            }
        }
    }
    eprintln!(
        "{garbled_rows} non-ASCII rows garbled through Windows-1252, {} not restored",
        mismatches.len()
    );
    assert!(
        garbled_rows > 500,
        "expected many non-ASCII rows, got {garbled_rows}"
    );
    assert!(
        mismatches.is_empty(),
        "{} rows not restored:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn detects_english_on_most_rows() {
    // All three sets are English tweets; detection on short tweets is noisy, but most must be
    // English and every detection must carry a two-letter code.
    for (name, rows) in common::all_data_sets() {
        let mut detected = 0;
        let mut english = 0;
        for row in &rows {
            if let Some(language) = detect(&clean(&row.text).text) {
                assert_eq!(language.lang.len(), 2, "{name}: {language:?}");
                detected += 1;
                english += usize::from(language.lang == "en");
            }
        }
        let english_share = english as f64 / detected as f64;
        eprintln!(
            "{name}: language detected for {detected}/{} rows, {:.1}% English",
            rows.len(),
            100.0 * english_share
        );
        assert!(
            english_share > 0.8,
            "{name}: only {:.1}% detected as English",
            100.0 * english_share
        );
    }
}

#[test]
fn fingerprints_find_retweet_copies() {
    // The airline set has retweets and copies; fingerprints must find some, and must not lump
    // together a large share of distinct tweets.
    let rows = common::airline_rows();
    let mut fingerprints = std::collections::HashSet::new();
    for row in &rows {
        fingerprints.insert(text_fingerprint(&clean(&row.text).text));
    }
    let duplicates = rows.len() - fingerprints.len();
    eprintln!(
        "airline: {} rows, {} distinct fingerprints, {duplicates} duplicates",
        rows.len(),
        fingerprints.len()
    );
    assert!(duplicates > 0, "no copies found");
    assert!(
        duplicates < rows.len() / 10,
        "{duplicates} duplicates is implausibly many"
    );
}
