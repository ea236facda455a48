//! The versioned text normaliser that training and serving share, and the fingerprint that ingest
//! uses to drop retweets and near-identical copies.
//!
//! [`clean`] runs these steps, each a function below with its own tests:
//! 1. [`decode_escapes`]: HTML character references and literal `\uXXXX` escapes.
//! 2. [`repair_mojibake`]: UTF-8 that was decoded as Windows-1252 or Latin-1.
//! 3. [`normalize_whitespace`]: control and invisible formatting characters removed, whitespace
//!    (newlines, tabs, NBSP) collapsed to single spaces, ends trimmed.
//! 4. [`normalize_nfc`]: Unicode NFC.
//! 5. [`replace_urls`]: `http(s)://…` and `www.…` become `<url>`.
//! 6. [`crate::pii::redact`]: e-mail, card and phone numbers become `<email>`, `<card>`, `<phone>`.
//! 7. [`replace_mentions`]: `@name` becomes `@user`.
//! 8. [`cap_elongations`]: runs of more than three identical characters (digits excepted) are cut
//!    to three.
//!
//! Case is preserved because it carries sentiment (`GREAT` vs `great`).
//!
//! The order differs from the obvious one in three places, each for idempotence: entities are
//! decoded before mojibake is repaired (an `&nbsp;` can be part of a mojibake sequence), whitespace
//! is collapsed before patterns are matched (so a phone number split by an NBSP is found on the
//! first pass, not the second), and mentions are replaced after redaction (so `a@b.com@name` does not
//! turn into a mention once the address is gone). Steps that delete characters (control characters,
//! elongations) or recompose them (NFC) can join fragments into a new pattern; when one of them
//! changed the text, the whole pipeline runs again on its output, so `clean` reaches a fixed point.

mod escapes;
mod mojibake;

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

pub use escapes::decode_escapes;
pub use mojibake::repair_mojibake;

use crate::pii::{self, Redactions};
use crate::spans::{OnReject, apply_step, char_at, char_before, replace_accepted};

/// Version of the output of [`clean`]. Bump it whenever `clean` returns something different for
/// any input: dedupe fingerprints, dataset snapshots and trained models record it.
pub const NORMALIZER_VERSION: &str = "norm-v1";

/// Replaces a URL.
pub const URL_PLACEHOLDER: &str = "<url>";
/// Replaces a user mention.
pub const MENTION_PLACEHOLDER: &str = "@user";
/// Every placeholder [`clean`] can emit, for consumers that must skip them (language detection,
/// fingerprints, featurizers).
pub const PLACEHOLDERS: [&str; 5] = [
    URL_PLACEHOLDER,
    MENTION_PLACEHOLDER,
    pii::EMAIL_PLACEHOLDER,
    pii::PHONE_PLACEHOLDER,
    pii::CARD_PLACEHOLDER,
];

/// True when a cleaned text has something besides placeholders, punctuation and whitespace: the
/// rule for "empty after cleaning", shared by ingest (dead letter) and dataset import (skip).
pub fn has_content(cleaned: &str) -> bool {
    cleaned
        .split_whitespace()
        .filter(|word| !PLACEHOLDERS.contains(word))
        .any(|word| {
            word.chars()
                .any(|c| !c.is_ascii_punctuation() && !c.is_whitespace())
        })
}

/// Longest run of one character that survives [`cap_elongations`] ("sooo", "!!!").
pub const MAX_REPEAT: usize = 3;

/// Safety bound on re-runs of the pipeline; real text needs at most two passes.
const MAX_PASSES: usize = 4;

/// Result of [`clean`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaned {
    /// The normalised text; may be empty.
    pub text: String,
    /// What PII redaction removed.
    pub redactions: Redactions,
    /// Whether mojibake was repaired.
    pub mojibake_repaired: bool,
    /// URLs replaced by `<url>`.
    pub urls: u32,
    /// User mentions, all of which read `@user` in `text`.
    pub mentions: u32,
}

/// Normalises one raw text. See the module documentation for the steps; the result is idempotent
/// (`clean(&clean(x).text).text == clean(x).text`).
pub fn clean(raw: &str) -> Cleaned {
    let mut pass = clean_pass(raw);
    let mut cleaned = Cleaned {
        text: String::new(),
        redactions: pass.redactions,
        mojibake_repaired: pass.mojibake_repaired,
        urls: pass.urls,
        mentions: pass.mentions_found,
    };
    let mut passes = 1;
    while pass.may_have_formed_new_patterns && passes < MAX_PASSES {
        let next = clean_pass(&pass.text);
        cleaned.redactions += next.redactions;
        cleaned.mojibake_repaired |= next.mojibake_repaired;
        cleaned.urls += next.urls;
        // Mentions already read `@user` after the first pass; count only newly formed ones.
        cleaned.mentions += next.mentions_rewritten;
        pass = next;
        passes += 1;
    }
    cleaned.text = pass.text;
    cleaned
}

/// What one run of the pipeline produced.
struct Pass {
    text: String,
    redactions: Redactions,
    mojibake_repaired: bool,
    urls: u32,
    mentions_found: u32,
    mentions_rewritten: u32,
    /// A step deleted or recomposed characters, which can join fragments into new patterns.
    may_have_formed_new_patterns: bool,
}

fn clean_pass(raw: &str) -> Pass {
    let text = apply_step(Cow::Borrowed(raw), decode_escapes);
    let mut mojibake_repaired = false;
    let text = apply_step(text, |text| {
        let repaired = repair_mojibake(text);
        mojibake_repaired = matches!(repaired, Cow::Owned(_));
        repaired
    });

    let mut removed_characters = false;
    let text = apply_step(text, |text| {
        let (normalized, removed) = normalize_whitespace(text);
        removed_characters = removed;
        normalized
    });
    let mut recomposed = false;
    let text = apply_step(text, |text| {
        let composed = normalize_nfc(text);
        recomposed = matches!(composed, Cow::Owned(_));
        composed
    });

    let mut urls = 0;
    let text = apply_step(text, |text| {
        let (replaced, count) = replace_urls(text);
        urls = count;
        replaced
    });
    let mut redactions = Redactions::default();
    let text = apply_step(text, |text| {
        let (redacted, found) = pii::redact_cow(text);
        redactions = found;
        redacted
    });
    let mut mentions = MentionCounts::default();
    let text = apply_step(text, |text| {
        let (replaced, counts) = replace_mentions(text);
        mentions = counts;
        replaced
    });
    let mut elongations_capped = false;
    let text = apply_step(text, |text| {
        let capped = cap_elongations(text);
        elongations_capped = matches!(capped, Cow::Owned(_));
        capped
    });

    Pass {
        text: text.into_owned(),
        redactions,
        mojibake_repaired,
        urls,
        mentions_found: mentions.found,
        mentions_rewritten: mentions.rewritten,
        may_have_formed_new_patterns: removed_characters || recomposed || elongations_capped,
    }
}

/// Removes control characters and invisible formatting characters, turns every run of whitespace
/// (including newlines, tabs, NBSP and other Unicode spaces) into one ASCII space and trims both
/// ends. Returns the text and whether any character was removed (not just turned into a space).
///
/// Zero-width joiners, non-joiners and variation selectors are kept: they are part of emoji and
/// of the spelling of some languages.
pub fn normalize_whitespace(text: &str) -> (Cow<'_, str>, bool) {
    if is_whitespace_normal(text) {
        return (Cow::Borrowed(text), false);
    }
    let mut out = String::with_capacity(text.len());
    let mut removed = false;
    let mut pending_space = false;
    for ch in text.chars() {
        if ch.is_whitespace() {
            pending_space = true;
        } else if is_removable_invisible(ch) {
            removed = true;
        } else {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(ch);
        }
    }
    (Cow::Owned(out), removed)
}

/// Fast check that [`normalize_whitespace`] has nothing to do.
fn is_whitespace_normal(text: &str) -> bool {
    let mut previous_was_space = true;
    for ch in text.chars() {
        let is_space = ch == ' ';
        if (is_space && previous_was_space)
            || (!is_space && (ch.is_whitespace() || is_removable_invisible(ch)))
        {
            return false;
        }
        previous_was_space = is_space;
    }
    !previous_was_space || text.is_empty()
}

/// Control characters (C0, DEL, C1) and invisible formatting characters that only hide or spoof
/// text: zero-width space, word joiner, byte-order mark, soft hyphen and bidirectional controls.
fn is_removable_invisible(ch: char) -> bool {
    ch.is_control()
        || matches!(
            ch,
            '\u{ad}' | '\u{200b}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
        )
}

/// Unicode canonical composition (NFC), without a copy when the text already is NFC.
pub fn normalize_nfc(text: &str) -> Cow<'_, str> {
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

static URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?:https?://|w{3,}[0-9]{0,3}\.)[^\s<>"]+"#).expect("url pattern is valid")
});

/// Replaces `http://`, `https://` and `www.` URLs with `<url>`, leaving trailing sentence
/// punctuation outside. Returns the text and the number of URLs.
pub fn replace_urls(text: &str) -> (Cow<'_, str>, u32) {
    replace_accepted(
        text,
        &URL,
        URL_PLACEHOLDER,
        OnReject::RescanInside,
        |text, start, end| {
            let found = &text[start..end];
            let has_scheme = found
                .get(..4)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http"));
            // `www.` glued to a word or an e-mail (`bob@www.example.com`) is left for the e-mail
            // pattern; a scheme is unambiguous wherever it starts.
            let glued = char_before(text, start)
                .is_some_and(|before| before.is_alphanumeric() || "@.-_".contains(before));
            if !has_scheme && glued {
                return None;
            }
            let trimmed = trim_url_end(found);
            let body_start = if has_scheme {
                found.find("//").map_or(found.len(), |slashes| slashes + 2)
            } else {
                found.find('.').map_or(found.len(), |dot| dot + 1)
            };
            (trimmed.len() > body_start).then_some((start, start + trimmed.len()))
        },
    )
}

/// Drops sentence punctuation that follows a URL (`see http://x.co/a.` ends at `a`), keeping a
/// closing parenthesis that closes one inside the URL (Wikipedia links).
fn trim_url_end(url: &str) -> &str {
    let mut trimmed = url;
    while let Some(last) = trimmed.chars().next_back() {
        let trailing_punctuation = matches!(
            last,
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '’' | '”' | '»' | '…' | ']' | '}' | '*'
        ) || (last == ')'
            && trimmed.matches('(').count() < trimmed.matches(')').count());
        if !trailing_punctuation {
            break;
        }
        trimmed = &trimmed[..trimmed.len() - last.len_utf8()];
    }
    trimmed
}

static MENTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"@[A-Za-z0-9_]+").expect("mention pattern is valid"));

/// Mentions seen by [`replace_mentions`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MentionCounts {
    /// All mentions, including ones that already read `@user`.
    pub found: u32,
    /// Mentions whose handle was rewritten to `@user`.
    pub rewritten: u32,
}

/// Replaces user mentions (`@name`, `.@name`, `RT@name`) with `@user`, following Twitter's rule
/// that a mention is not glued to a word (`john@example.com` is not one). A handle that already
/// reads `user` counts as a mention but is not copied.
pub fn replace_mentions(text: &str) -> (Cow<'_, str>, MentionCounts) {
    let mut counts = MentionCounts::default();
    if !text.contains('@') {
        return (Cow::Borrowed(text), counts);
    }
    let mut out = String::new();
    let mut copied_up_to = 0;
    for found in MENTION.find_iter(text) {
        if !is_mention_boundary(text, found.start(), found.end()) {
            continue;
        }
        counts.found += 1;
        if found.as_str() == MENTION_PLACEHOLDER {
            continue;
        }
        counts.rewritten += 1;
        out.push_str(&text[copied_up_to..found.start()]);
        out.push_str(MENTION_PLACEHOLDER);
        copied_up_to = found.end();
    }
    if counts.rewritten == 0 {
        return (Cow::Borrowed(text), counts);
    }
    out.push_str(&text[copied_up_to..]);
    (Cow::Owned(out), counts)
}

/// Twitter's mention boundary: not preceded by a letter, digit or one of `_!#$%&*@` (except the
/// retweet marker `RT`), and not followed by another `@` (then it is part of an address).
fn is_mention_boundary(text: &str, start: usize, end: usize) -> bool {
    if char_at(text, end) == Some('@') {
        return false;
    }
    let Some(before) = char_before(text, start) else {
        return true;
    };
    if !(before.is_alphanumeric() || "_!#$%&*@".contains(before)) {
        return true;
    }
    let prefix = &text[..start];
    let retweet_marker = prefix.len() >= 2
        && prefix.is_char_boundary(prefix.len() - 2)
        && prefix[prefix.len() - 2..].eq_ignore_ascii_case("rt");
    retweet_marker && char_before(prefix, prefix.len() - 2).is_none_or(|ch| !ch.is_alphanumeric())
}

/// Cuts every run of more than [`MAX_REPEAT`] identical characters to [`MAX_REPEAT`]
/// ("soooooo" → "sooo", "!!!!!!" → "!!!", "😂😂😂😂" → "😂😂😂").
///
/// Digits are not elongations: capping them would turn the real rows "flt 2222" into "flt 222"
/// and "over 150000 miles" into "over 1500 miles", changing facts that reviewers read.
pub fn cap_elongations(text: &str) -> Cow<'_, str> {
    let Some(first_excess) = find_excess_repeat(text) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first_excess]);
    let mut previous = None;
    let mut run = 0;
    // Re-count the run that reaches the first excess character.
    for ch in text[..first_excess].chars().rev() {
        if previous.is_none() {
            previous = Some(ch);
        }
        if Some(ch) != previous {
            break;
        }
        run += 1;
    }
    for ch in text[first_excess..].chars() {
        if Some(ch) == previous {
            run += 1;
        } else {
            previous = Some(ch);
            run = 1;
        }
        if run <= MAX_REPEAT || ch.is_numeric() {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// Byte offset of the first non-digit character that makes a run longer than [`MAX_REPEAT`].
fn find_excess_repeat(text: &str) -> Option<usize> {
    let mut previous = None;
    let mut run = 0;
    for (index, ch) in text.char_indices() {
        if Some(ch) == previous {
            run += 1;
            if run > MAX_REPEAT && !ch.is_numeric() {
                return Some(index);
            }
        } else {
            previous = Some(ch);
            run = 1;
        }
    }
    None
}

static FINGERPRINT_PUNCTUATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{P}\p{Sm}\p{Sc}\p{Sk}\x{FE0E}\x{FE0F}\x{200D}]+")
        .expect("punctuation pattern is valid")
});
static FINGERPRINT_APOSTROPHES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\w)['’‘`](\w)").expect("apostrophe pattern is valid"));

/// The text that [`text_fingerprint`] hashes: lowercase, without placeholders, a leading retweet
/// marker, punctuation, emoji modifiers or apostrophes inside words, with single spaces.
///
/// `RT @user: Great flight!! <url>` and `great flight` give the same key; emoji stay, because a
/// copy with 😡 instead of 😂 is a different opinion.
pub fn dedupe_key(cleaned_text: &str) -> String {
    let mut lowered = cleaned_text.to_lowercase();
    for placeholder in PLACEHOLDERS {
        if lowered.contains(placeholder) {
            lowered = lowered.replace(placeholder, " ");
        }
    }
    let joined = FINGERPRINT_APOSTROPHES.replace_all(&lowered, "$1$2");
    let spaced = FINGERPRINT_PUNCTUATION.replace_all(&joined, " ");
    let mut words = spaced.split_whitespace().peekable();
    if words.peek() == Some(&"rt") {
        words.next();
    }
    let mut key = String::with_capacity(spaced.len());
    for word in words {
        if !key.is_empty() {
            key.push(' ');
        }
        key.push_str(word);
    }
    key
}

/// SHA-256 (lowercase hex) of [`dedupe_key`]: retweets and near-identical copies of a cleaned text
/// collide, so ingest can drop them. Texts whose key is empty (only placeholders or punctuation)
/// all share one fingerprint.
pub fn text_fingerprint(cleaned_text: &str) -> String {
    hex::encode(Sha256::digest(dedupe_key(cleaned_text).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_whitespace_and_controls() {
        let cases = [
            ("plain text", "plain text", false),
            ("  padded  ", "padded", false),
            ("a\n\nb\tc\r\nd", "a b c d", false),
            ("a\u{a0}b\u{2003}c\u{3000}d", "a b c d", false),
            ("bell\u{7}ring", "bellring", true),
            ("zero\u{200b}width", "zerowidth", true),
            ("\u{feff}bom", "bom", true),
            ("c1\u{85}nel", "c1 nel", false),
            ("c1\u{9d}ctl", "c1ctl", true),
            ("rtl\u{202e}spoof", "rtlspoof", true),
            ("soft\u{ad}hyphen", "softhyphen", true),
            (
                "family 👨\u{200d}👩\u{200d}👧 ❤\u{fe0f}",
                "family 👨\u{200d}👩\u{200d}👧 ❤\u{fe0f}",
                false,
            ),
            (" \u{0} \n ", "", true),
            ("", "", false),
        ];
        for (input, expected, removed) in cases {
            let (out, was_removed) = normalize_whitespace(input);
            assert_eq!(out, expected, "input {input:?}");
            assert_eq!(was_removed, removed, "input {input:?}");
        }
        assert!(matches!(
            normalize_whitespace("already normal").0,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn composes_nfc() {
        let cases = [
            ("cafe\u{301}", "café"),
            ("café", "café"),
            ("A\u{30a}", "Å"),
            ("plain", "plain"),
            ("\u{212b}", "Å"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_nfc(input), expected, "input {input:?}");
        }
        assert!(matches!(normalize_nfc("café"), Cow::Borrowed(_)));
    }

    #[test]
    fn replaces_urls() {
        let cases = [
            ("see http://t.co/abc123", "see <url>", 1),
            ("see https://example.com/a?b=c&d=e#f.", "see <url>.", 1),
            ("HTTP://EXAMPLE.COM/X, then", "<url>, then", 1),
            ("visit www.example.com!", "visit <url>!", 1),
            ("(https://en.wikipedia.org/wiki/Foo_(bar))", "(<url>)", 1),
            ("two http://a.co/x http://b.co/y", "two <url> <url>", 2),
            ("truncated http://t.co/abc…", "truncated <url>…", 1),
            ("glued:http://t.co/x", "glued:<url>", 1),
            ("wwww.example.com", "<url>", 1),
            ("bob@www.example.com", "bob@www.example.com", 0),
            ("@www.http://x.co/a", "@www.<url>", 1),
            ("awww.cute", "awww.cute", 0),
            ("http://", "http://", 0),
            ("http://.", "http://.", 0),
            ("the www is big", "the www is big", 0),
        ];
        for (input, expected, count) in cases {
            let (out, urls) = replace_urls(input);
            assert_eq!(out, expected, "input {input:?}");
            assert_eq!(urls, count, "input {input:?}");
        }
    }

    #[test]
    fn replaces_mentions() {
        let cases = [
            ("@united thanks", "@user thanks", 1, 1),
            (
                "thanks @united and @AmericanAir!",
                "thanks @user and @user!",
                2,
                2,
            ),
            (".@united lost my bag", ".@user lost my bag", 1, 1),
            ("RT @jetblue: great", "RT @user: great", 1, 1),
            ("RT@jetblue great", "RT@user great", 1, 1),
            ("(@SouthwestAir)", "(@user)", 1, 1),
            ("@user already", "@user already", 1, 0),
            ("@user's seat", "@user's seat", 1, 0),
            ("@united's seat", "@user's seat", 1, 1),
            ("john@example.com", "john@example.com", 0, 0),
            ("@name@example.com", "@name@example.com", 0, 0),
            ("#@tag", "#@tag", 0, 0),
            ("@ alone", "@ alone", 0, 0),
            ("art@gallery", "art@gallery", 0, 0),
        ];
        for (input, expected, found, rewritten) in cases {
            let (out, counts) = replace_mentions(input);
            assert_eq!(out, expected, "input {input:?}");
            assert_eq!(
                counts,
                MentionCounts { found, rewritten },
                "input {input:?}"
            );
        }
        assert!(matches!(replace_mentions("@user hi").0, Cow::Borrowed(_)));
    }

    #[test]
    fn caps_elongations() {
        let cases = [
            ("soooooo good", "sooo good"),
            ("sooo good", "sooo good"),
            ("!!!!!!", "!!!"),
            ("????!!!!", "???!!!"),
            ("yesss", "yesss"),
            ("😂😂😂😂😂", "😂😂😂"),
            ("NOOOOOOO", "NOOO"),
            ("aaaabbbbcccc", "aaabbbccc"),
            ("1000000", "1000000"),
            ("flt 2222!!!!", "flt 2222!!!"),
            ("99.99999999%", "99.99999999%"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(cap_elongations(input), expected, "input {input:?}");
        }
        assert!(matches!(cap_elongations("fine"), Cow::Borrowed(_)));
    }

    #[test]
    fn cleans_end_to_end() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("Great flight!!!!!! 😂😂😂😂", "Great flight!!! 😂😂😂"),
            (
                "@united you are the WORST &amp; I'm sooooo mad http://t.co/x",
                "@user you are the WORST & I'm sooo mad <url>",
            ),
            ("cafÃ© &amp; donâ€™t", "café & don’t"),
            ("line one\nline two\t\tend", "line one line two end"),
            (
                "mail me: a.b@example.com, or call +1 (555) 123-4567",
                "mail me: <email>, or call <phone>",
            ),
            ("card 4111 1111 1111 1111 pls", "card <card> pls"),
            ("cafe\u{301}", "café"),
            // A phone number split by an NBSP is found on the first pass.
            ("call 555-123&nbsp;4567", "call <phone>"),
            // Fragments joined by deleting characters are found too (idempotence).
            ("wwwww.example.com", "<url>"),
            ("5555-123-4567", "5555-123-4567"),
            ("noooooo 555-123-4567", "nooo <phone>"),
            ("&am\u{1}p;", "&"),
            ("a@b.com@name", "<email>@user"),
            ("Rui En\\u2019s ex", "Rui En’s ex"),
        ];
        for (input, expected) in cases {
            let cleaned = clean(input);
            assert_eq!(cleaned.text, expected, "input {input:?}");
            assert_eq!(
                clean(&cleaned.text).text,
                cleaned.text,
                "idempotence for {input:?}"
            );
        }
    }

    #[test]
    fn reports_what_it_did() {
        let cleaned =
            clean("RT @a: @b ðŸ˜‚ see http://x.co/1 and www.y.com, mail c@d.io 555-123-4567");
        assert_eq!(
            cleaned.text,
            "RT @user: @user 😂 see <url> and <url>, mail <email> <phone>"
        );
        assert!(cleaned.mojibake_repaired);
        assert_eq!(cleaned.urls, 2);
        assert_eq!(cleaned.mentions, 2);
        assert_eq!(
            cleaned.redactions,
            Redactions {
                emails: 1,
                phones: 1,
                cards: 0
            }
        );

        let again = clean(&cleaned.text);
        assert_eq!(again.text, cleaned.text);
        assert!(!again.mojibake_repaired);
        assert_eq!(again.urls, 0);
        assert_eq!(again.mentions, 2);
        assert_eq!(again.redactions, Redactions::default());
    }

    #[test]
    fn counts_mentions_once_across_passes() {
        // The elongation forces a second pass; the mention must not be counted twice.
        let cleaned = clean("@united noooooo");
        assert_eq!(cleaned.text, "@user nooo");
        assert_eq!(cleaned.mentions, 1);
    }

    #[test]
    fn cleans_real_rows() {
        // Real rows of airline_tweets.csv.gz and tweeteval_val.jsonl.gz.
        let cases = [
            (
                "@VirginAmerica I &lt;3 pretty graphics. so much better than minimal iconography. :D",
                "@user I <3 pretty graphics. so much better than minimal iconography. :D",
            ),
            (
                "@AmericanAir Embassy Suites\n13341 Woodland Park Drive\nHerndon, Virginia, 20171 \nUS \n+1-703-464-0200",
                "@user Embassy Suites 13341 Woodland Park Drive Herndon, Virginia, 20171 US <phone>",
            ),
            (
                "@VirginAmerica I’m having trouble adding this flight my wife booked to my Elevate account. Help? http://t.co/pX8hQOKS3R",
                "@user I’m having trouble adding this flight my wife booked to my Elevate account. Help? <url>",
            ),
            (
                "Omg this show is so predictable even for the 3rd ep. Rui En\\u2019s ex boyfriend was framed for murder probably\\u002c by the rich guy.",
                "Omg this show is so predictable even for the 3rd ep. Rui En’s ex boyfriend was framed for murder probably, by the rich guy.",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(clean(input).text, expected);
        }
    }

    #[test]
    fn cleans_real_rows_seen_through_cp1252() {
        let row = "@united I just sent an email to Customer Care, telling them I may have to break up with you 😢. I sincerely hope they can help me!!";
        let garbled = mojibake::tests::to_mojibake(row);
        let cleaned = clean(&garbled);
        assert!(cleaned.mojibake_repaired);
        assert_eq!(cleaned.text, clean(row).text);
    }

    #[test]
    fn fingerprints_collide_for_copies() {
        let same = [
            "Great flight, thanks!",
            "RT @user: Great flight, thanks! <url>",
            "rt @user great flight thanks",
            "great   flight... thanks!!!",
            "@user @user Great flight; thanks",
        ];
        let expected = text_fingerprint(same[0]);
        assert_eq!(expected.len(), 64);
        for text in same {
            assert_eq!(dedupe_key(text), "great flight thanks", "text {text:?}");
            assert_eq!(text_fingerprint(text), expected, "text {text:?}");
        }
        let different = [
            "Great flight, thanks! 😡",
            "Bad flight, thanks!",
            "great flights thanks",
            "artful flight thanks",
        ];
        for text in different {
            assert_ne!(text_fingerprint(text), expected, "text {text:?}");
        }
        let keys = [
            ("I don't like it", "i dont like it"),
            ("I don’t like it", "i dont like it"),
            ("❤\u{fe0f} it", "❤ it"),
            ("<url>", ""),
            ("RT", ""),
            ("Art is nice", "art is nice"),
        ];
        for (text, key) in keys {
            assert_eq!(dedupe_key(text), key, "text {text:?}");
        }
    }
}
