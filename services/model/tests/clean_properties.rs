//! Property checks of the normaliser on generated text built from the fragments that interact
//! across its steps (entities, mojibake pieces, controls, separators, digits, `@`, `www.`), which
//! real data sets rarely combine.

use sentiflow_model::clean;

/// Fragments chosen so that deleting, decoding or capping one can complete a pattern in another.
const FRAGMENTS: &[&str] = &[
    "a", "o", "w", ".", "www", "http://", "x.co/", "@", "name", "user", "5", "55", "555", "-", " ",
    "  ", "\n", "\t", "\u{a0}", "\u{1}", "\u{9d}", "\u{8f}", "\u{200b}", "&", "amp;", "&amp;",
    "&lt;", "&#", "x27;", "\\u", "2019", "Ã", "©", "â", "€", "™", "ð", "Ÿ", "˜", "‚", "Â",
    "e\u{301}", "\u{301}", "!", "!!", "?", "<", ">", "url", "<url>", "#", "+1", "(", ")", "4111",
    "1111", "😂", "RT ", ":", "com", "b@c.io", "\u{85}", "A", "\u{30a}", "“", "Ñ", "…", "É",
];

/// A small deterministic generator (xorshift64*) so failures reproduce without a dependency.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn text(&mut self) -> String {
        let length = 1 + self.next() % 12;
        (0..length)
            .map(|_| FRAGMENTS[(self.next() % FRAGMENTS.len() as u64) as usize])
            .collect()
    }
}

#[test]
fn clean_is_idempotent_and_keeps_its_contract_on_generated_text() {
    let mut generator = Generator(0x5eed_1234_abcd_ef01);
    let mut failures = Vec::new();
    for _ in 0..50_000 {
        let raw = generator.text();
        let once = clean(&raw).text;
        let twice = clean(&once).text;
        let has_control = once.chars().any(char::is_control);
        let untrimmed = once != once.trim() || once.contains("  ");
        if twice != once || has_control || untrimmed {
            failures.push(format!("raw {raw:?}\n  once  {once:?}\n  twice {twice:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} generated texts break idempotence or the contract; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
