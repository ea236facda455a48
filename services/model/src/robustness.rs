//! Generated hostile texts through everything a service runs on a review's text (cleaning, PII
//! redaction, language detection, the lexicon, the featurizer): none may panic, since a panic on one
//! message crashes the consumer, and again after every restart on the same message.

use crate::featurize::{CompoundEncoding, Featurizer, FeaturizerConfig};
use crate::lexicon::Lexicon;
use crate::text::{self, decode_escapes};

/// Fragments that exercise the normaliser's and tokenizer's special cases, glued at random.
const FRAGMENTS: &[&str] = &[
    "&amp;",
    "&amp;amp;",
    "&lt;3",
    "&#",
    "&#x",
    "&#39;",
    "&#1114112;",
    "&#xD800;",
    "&#xFFFFFFFFF;",
    "&#0;",
    "&",
    ";",
    "\\u",
    "\\u2019",
    "\\uD83D\\uDE00",
    "\\uDE00",
    "\\uD83D",
    "\\uZZZZ",
    "\\\\u0041",
    "Ã",
    "Ã©",
    "â€™",
    "â€",
    "Â",
    "ðŸ˜€",
    "http://",
    "https://t.co/x",
    "www.",
    "@",
    "@user",
    "#",
    "#tag",
    "'",
    "’",
    "‘",
    "`",
    "n't",
    "can’t",
    "not",
    "never",
    "but",
    "very",
    "!!!",
    "???",
    "...",
    "soooooooo",
    "loooool",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "a@b.co",
    "x@y",
    "+1 (555) 123-4567",
    "555.123.4567",
    "12345678901234567890",
    ":)",
    ":(",
    ":-D",
    "<3",
    "xD",
    "\u{200D}",
    "\u{FE0F}",
    "\u{200B}",
    "\u{202E}",
    "\u{0301}",
    "\u{0000}",
    "\u{FFFD}",
    "\u{1F600}",
    "\u{1F44D}\u{1F3FD}",
    "\u{1F1FA}\u{1F1F8}",
    "\r\n",
    "\t",
    " ",
    "  ",
    "\u{00A0}",
    "\u{3000}",
    "ß",
    "İ",
    "ﬁ",
    "Ꭰ",
    "ǅ",
    "\u{0130}\u{0307}",
    "GREAT",
    "good",
    "bad",
    "like",
    "lost",
];

/// xorshift64*: deterministic, so a failure names its case.
struct Cases(u64);

impl Cases {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound as u64) as usize
    }

    /// Any scalar value, weighted towards the planes texts use.
    fn char(&mut self) -> char {
        let code = match self.below(6) {
            0 => self.below(0x80),
            1 => 0x80 + self.below(0x780),
            2 => 0x300 + self.below(0x70),
            3 => 0x1F300 + self.below(0x700),
            4 => self.below(0x10000),
            _ => self.below(0x11_0000),
        };
        char::from_u32(code as u32).unwrap_or('\u{FFFD}')
    }

    fn text(&mut self) -> String {
        let mut text = String::new();
        for _ in 0..self.below(40) {
            if self.below(3) == 0 {
                for _ in 0..=self.below(4) {
                    text.push(self.char());
                }
            } else {
                text.push_str(FRAGMENTS[self.below(FRAGMENTS.len())]);
            }
        }
        text
    }
}

fn lexicon() -> Lexicon {
    Lexicon::parse(
        "good\t1.9\nbad\t-2.5\ngreat\t3.1\nlike\t2.0\n:)\t2.0\n:(\t-1.9\nlost\t-1.3\nxd\t2.7\n<3\t1.9\n",
    )
    .expect("a valid lexicon")
}

#[test]
fn hostile_texts_never_panic_and_cleaning_is_idempotent() {
    let lexicon = lexicon();
    let featurizers: Vec<Featurizer> = [
        CompoundEncoding::Bins,
        CompoundEncoding::Linear,
        CompoundEncoding::BinsAndLinear,
    ]
    .into_iter()
    .map(|encoding| {
        let config = FeaturizerConfig {
            lexicon_compound_encoding: encoding,
            ..FeaturizerConfig::default()
        };
        Featurizer::new(config, Some(lexicon.clone())).expect("valid featurizer")
    })
    .collect();
    let mut cases = Cases(0x0BAD_F00D_DEAD_BEEF);
    for case in 0..8_000 {
        let raw = cases.text();
        let cleaned = crate::clean(&raw);
        let again = crate::clean(&cleaned.text);
        assert_eq!(
            again.text, cleaned.text,
            "case {case}: not idempotent on {raw:?}"
        );
        let _ = decode_escapes(&raw);
        let _ = text::has_content(&cleaned.text);
        let _ = text::dedupe_key(&cleaned.text);
        let _ = text::text_fingerprint(&cleaned.text);
        let _ = crate::lang::detect(&cleaned.text);
        let scores = lexicon.score(&cleaned.text);
        assert!(scores.compound.is_finite(), "case {case}: {raw:?}");
        for featurizer in &featurizers {
            let ids = featurizer.featurize(&raw);
            let buckets = featurizer.config().buckets as i64;
            assert!(
                ids.iter().all(|id| (0..buckets).contains(id)),
                "case {case}: ids out of range for {raw:?}"
            );
        }
    }
}
