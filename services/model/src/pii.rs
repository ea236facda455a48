//! Redaction of personal data in free text: e-mail addresses, phone numbers and payment-card
//! numbers become the placeholders `<email>`, `<phone>` and `<card>`.
//!
//! The patterns favour precision on the numbers that social-media text is full of (years, prices,
//! times, flight and booking numbers) while catching the formats people really write phone and card
//! numbers in. Bare digit runs are a phone number only with a `+` country code: a ten-digit run
//! without separators is as often a booking reference as a phone number.

use std::borrow::Cow;
use std::ops::AddAssign;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::spans::{OnReject, apply_step, char_at, char_before, replace_accepted};

/// Replaces an e-mail address.
pub const EMAIL_PLACEHOLDER: &str = "<email>";
/// Replaces a phone number.
pub const PHONE_PLACEHOLDER: &str = "<phone>";
/// Replaces a payment-card number.
pub const CARD_PLACEHOLDER: &str = "<card>";

/// How many items of each kind were redacted from one text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redactions {
    /// E-mail addresses replaced by `<email>`.
    pub emails: u32,
    /// Phone numbers replaced by `<phone>`.
    pub phones: u32,
    /// Luhn-valid card numbers replaced by `<card>`.
    pub cards: u32,
}

impl Redactions {
    /// Total number of redacted items.
    pub fn total(&self) -> u32 {
        self.emails + self.phones + self.cards
    }
}

impl AddAssign for Redactions {
    fn add_assign(&mut self, other: Self) {
        self.emails += other.emails;
        self.phones += other.phones;
        self.cards += other.cards;
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}",
    )
    .expect("e-mail pattern is valid")
});

/// Digit groups joined by single spaces or dashes: the shapes card numbers are written in.
static DIGIT_CHAIN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:[ \-][0-9]+)*").expect("digit chain pattern is valid"));

/// `+` country code, an optional bracketed area code and up to six further digit groups.
static INTERNATIONAL_PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\+[0-9]{1,3}(?:[ .\-]?\([0-9]{1,4}\))?(?:[ .\-]?[0-9]{1,4}){2,6}")
        .expect("international phone pattern is valid")
});

/// North American numbers with separators: `1-555-123-4567`, `(555) 123-4567`, `555.123.4567`.
static NORTH_AMERICAN_PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\b1[ .\-])?(?:\([0-9]{3}\)[ .\-]?|[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}")
        .expect("north american phone pattern is valid")
});

/// E.164 allows at most 15 digits; fewer than 8 including the country code is not a full number.
const INTERNATIONAL_DIGITS: std::ops::RangeInclusive<usize> = 8..=15;
/// ISO/IEC 7812 card numbers have 13 to 19 digits.
const CARD_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// Replaces e-mail addresses, card numbers and phone numbers (in that order, because card and
/// phone patterns would otherwise eat the digits of an address or a card) with placeholders.
pub fn redact(text: &str) -> (String, Redactions) {
    let (redacted, redactions) = redact_cow(text);
    (redacted.into_owned(), redactions)
}

/// [`redact`] without a copy when there is nothing to redact.
pub(crate) fn redact_cow(text: &str) -> (Cow<'_, str>, Redactions) {
    let mut redactions = Redactions::default();
    let mut redacted = Cow::Borrowed(text);
    if text.contains('@') {
        redacted = apply_step(redacted, |text| {
            let (out, count) = redact_emails(text);
            redactions.emails = count;
            out
        });
    }
    if text.bytes().any(|byte| byte.is_ascii_digit()) {
        redacted = apply_step(redacted, |text| {
            let (out, count) = redact_cards(text);
            redactions.cards = count;
            out
        });
        redacted = apply_step(redacted, |text| {
            let (out, count) = redact_phones(text);
            redactions.phones = count;
            out
        });
    }
    (redacted, redactions)
}

/// Replaces e-mail addresses with `<email>`.
pub fn redact_emails(text: &str) -> (Cow<'_, str>, u32) {
    replace_accepted(
        text,
        &EMAIL,
        EMAIL_PLACEHOLDER,
        OnReject::SkipMatch,
        |_, start, end| Some((start, end)),
    )
}

/// Replaces Luhn-valid runs of 13 to 19 digits, optionally grouped by single spaces or dashes,
/// with `<card>`.
pub fn redact_cards(text: &str) -> (Cow<'_, str>, u32) {
    replace_accepted(
        text,
        &DIGIT_CHAIN,
        CARD_PLACEHOLDER,
        OnReject::SkipMatch,
        |text, start, end| {
            let glued_start = char_before(text, start).is_some_and(char::is_alphanumeric);
            let glued_end = char_at(text, end).is_some_and(char::is_alphanumeric);
            find_card_in_chain(&text[start..end], glued_start, glued_end)
                .map(|(from, to)| (start + from, start + to))
        },
    )
}

/// The longest run of whole digit groups in `chain` that is shaped like a card number and passes
/// the Luhn check, as a byte range of `chain`. A first or last group glued to a word (`id4111…`,
/// `visa13 4222…`) belongs to that word and is never part of a card.
fn find_card_in_chain(chain: &str, glued_start: bool, glued_end: bool) -> Option<(usize, usize)> {
    let digit_count = chain.bytes().filter(u8::is_ascii_digit).count();
    if digit_count < *CARD_DIGITS.start() {
        return None;
    }
    let groups: Vec<(usize, usize)> = group_spans(chain).collect();
    let first_allowed = usize::from(glued_start);
    let end_allowed = groups.len() - usize::from(glued_end);
    let mut best: Option<(usize, usize, usize)> = None;
    for first in first_allowed..end_allowed {
        let mut digits = 0;
        for last in first..end_allowed {
            digits += groups[last].1 - groups[last].0;
            if digits > *CARD_DIGITS.end() {
                break;
            }
            let window = &groups[first..=last];
            let longer = best.is_none_or(|(_, _, best_digits)| digits > best_digits);
            if CARD_DIGITS.contains(&digits)
                && longer
                && is_card_shaped(window)
                && passes_luhn(&chain[window[0].0..window[window.len() - 1].1])
            {
                best = Some((window[0].0, window[window.len() - 1].1, digits));
            }
        }
    }
    best.map(|(from, to, _)| (from, to))
}

/// Byte spans of the digit groups of a chain like `4111 1111-1111 1111`.
fn group_spans(chain: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut offset = 0;
    chain.split([' ', '-']).map(move |group| {
        let span = (offset, offset + group.len());
        offset += group.len() + 1;
        span
    })
}

/// Card numbers are printed contiguously or in groups of 3 to 6 digits (4-4-4-4, Amex 4-6-5);
/// the last group may be shorter (4-4-4-4-3). Rejecting other groupings keeps lists of small
/// numbers from passing the Luhn check by chance.
fn is_card_shaped(groups: &[(usize, usize)]) -> bool {
    if groups.len() == 1 {
        return true;
    }
    let (last, leading) = groups.split_last().expect("window is never empty");
    leading
        .iter()
        .all(|(from, to)| (3..=6).contains(&(to - from)))
        && (1..=6).contains(&(last.1 - last.0))
}

/// The Luhn (mod 10) check of all digits in `number`.
fn passes_luhn(number: &str) -> bool {
    let mut sum = 0;
    for (position, digit) in number.bytes().rev().filter(u8::is_ascii_digit).enumerate() {
        let mut value = u32::from(digit - b'0');
        if position % 2 == 1 {
            value *= 2;
            if value > 9 {
                value -= 9;
            }
        }
        sum += value;
    }
    sum % 10 == 0
}

/// Replaces phone numbers with `<phone>`: `+` international numbers of 8 to 15 digits and North
/// American numbers written with separators.
pub fn redact_phones(text: &str) -> (Cow<'_, str>, u32) {
    let (international, international_count) = replace_accepted(
        text,
        &INTERNATIONAL_PHONE,
        PHONE_PLACEHOLDER,
        OnReject::RescanInside,
        accept_international_phone,
    );
    let mut north_american_count = 0;
    let redacted = apply_step(international, |text| {
        let (out, count) = replace_accepted(
            text,
            &NORTH_AMERICAN_PHONE,
            PHONE_PLACEHOLDER,
            OnReject::RescanInside,
            accept_north_american_phone,
        );
        north_american_count = count;
        out
    });
    (redacted, international_count + north_american_count)
}

/// Accepts an international match standing alone, dropping trailing digit groups that take it past
/// 15 digits (a year or count written right after the number).
fn accept_international_phone(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if char_before(text, start).is_some_and(|before| before.is_alphanumeric() || before == '+') {
        return None;
    }
    let mut end = end;
    loop {
        let candidate = &text[start..end];
        let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
        if digits <= *INTERNATIONAL_DIGITS.end() {
            let stands_alone = !continues_number(text, end);
            return (INTERNATIONAL_DIGITS.contains(&digits) && stands_alone)
                .then_some((start, end));
        }
        let last_separator = candidate.rfind([' ', '.', '-'])?;
        end = start + last_separator;
    }
}

/// Accepts a North American match that is not part of a longer number (`21-555-123-4567`,
/// `555-123-4567-89`, a version string or an IP address).
fn accept_north_american_phone(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let before = char_before(text, start);
    let part_of_longer_number = before
        .is_some_and(|before| before.is_alphanumeric() || before == '+')
        || before.is_some_and(|before| matches!(before, '.' | '-'))
            && char_before(text, start - 1).is_some_and(|ch| ch.is_ascii_digit())
        || continues_number(text, end);
    (!part_of_longer_number).then_some((start, end))
}

/// Whether the text at `end` continues a number: a letter or digit, or a separator and a digit.
fn continues_number(text: &str, end: usize) -> bool {
    match char_at(text, end) {
        Some(next) if next.is_alphanumeric() => true,
        Some('.' | '-' | '/' | ',') => char_at(text, end + 1).is_some_and(|ch| ch.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_emails() {
        let cases = [
            (
                "mail me at john.doe+x@example.co.uk now",
                "mail me at <email> now",
                1,
            ),
            ("JOHN@EXAMPLE.COM", "<email>", 1),
            ("a@b.co and c_d@e-f.org", "<email> and <email>", 2),
            ("(bob@x.io)", "(<email>)", 1),
            ("@united thanks", "@united thanks", 0),
            ("user@localhost", "user@localhost", 0),
            ("john@example.c", "john@example.c", 0),
            ("no at sign", "no at sign", 0),
        ];
        for (input, expected, count) in cases {
            let (out, redactions) = redact(input);
            assert_eq!(out, expected, "input {input:?}");
            assert_eq!(redactions.emails, count, "input {input:?}");
        }
    }

    #[test]
    fn redacts_phones() {
        let cases = [
            ("call +1 (555) 123-4567 now", "call <phone> now"),
            ("call 555-123-4567", "call <phone>"),
            ("call 555.123.4567.", "call <phone>."),
            ("call 555 123 4567", "call <phone>"),
            ("(800) 428-4322", "<phone>"),
            ("(631)891-5722", "<phone>"),
            ("1-800-433-7300", "<phone>"),
            ("+1-703-464-0200", "<phone>"),
            ("+44 20 7946 0958", "<phone>"),
            ("+49 30 123456", "<phone>"),
            ("+33 1 23 45 67 89", "<phone>"),
            ("+15551234567", "<phone>"),
            ("+44 20 7946 0958 2015", "<phone> 2015"),
            // Not phone numbers.
            ("in 2015-2016", "in 2015-2016"),
            ("costs $1,234.56", "costs $1,234.56"),
            ("at 10:30-11:45", "at 10:30-11:45"),
            ("on 2015-02-24", "on 2015-02-24"),
            ("flight 1234", "flight 1234"),
            ("555-1234", "555-1234"),
            ("ref 2013070799", "ref 2013070799"),
            ("ip 153.69.214.203", "ip 153.69.214.203"),
            ("21-555-123-4567", "21-555-123-4567"),
            ("555-123-4567-89", "555-123-4567-89"),
            ("v555.123.4567", "v555.123.4567"),
            ("+100 points", "+100 points"),
            ("+2.5 today", "+2.5 today"),
            ("ISBN 978-0-306-40615-7", "ISBN 978-0-306-40615-7"),
            ("123-45-6789", "123-45-6789"),
        ];
        for (input, expected) in cases {
            let (out, redactions) = redact(input);
            assert_eq!(out, expected, "input {input:?}");
            assert_eq!(
                redactions.phones,
                u32::from(out.contains(PHONE_PLACEHOLDER)),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn redacts_cards() {
        let cases = [
            ("card 4111 1111 1111 1111 thanks", "card <card> thanks"),
            ("card 4111-1111-1111-1111", "card <card>"),
            ("card 4111111111111111.", "card <card>."),
            ("amex 3782 822463 10005", "amex <card>"),
            ("visa13 4222222222222", "visa13 <card>"),
            ("ref 12 4111 1111 1111 1111", "ref 12 <card>"),
            ("4111 1111 1111 1111 and 2", "<card> and 2"),
            // Luhn fails.
            ("card 4111 1111 1111 1112", "card 4111 1111 1111 1112"),
            // Too short / too long.
            ("411111111111", "411111111111"),
            ("41111111111111111111", "41111111111111111111"),
            // Small numbers that happen to pass Luhn are not card shaped.
            ("1 2 3 4 5 6 7 8 9 0 1 2 3 0", "1 2 3 4 5 6 7 8 9 0 1 2 3 0"),
            ("id4111111111111111", "id4111111111111111"),
        ];
        for (input, expected) in cases {
            let (out, redactions) = redact(input);
            assert_eq!(out, expected, "input {input:?}");
            assert_eq!(
                redactions.cards,
                u32::from(out.contains(CARD_PLACEHOLDER)),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn luhn_check() {
        let cases = [
            ("4111111111111111", true),
            ("4111 1111 1111 1111", true),
            ("378282246310005", true),
            ("79927398713", true),
            ("79927398710", false),
            ("4111111111111112", false),
        ];
        for (number, valid) in cases {
            assert_eq!(passes_luhn(number), valid, "number {number}");
        }
    }

    #[test]
    fn redacts_real_rows() {
        // Real rows of airline_tweets.csv.gz.
        let cases = [
            (
                "@USAirways you keep suggesting people call 800-428-4322 but we just end up on hold for hours. You seriously don't have a better method?!",
                "@USAirways you keep suggesting people call <phone> but we just end up on hold for hours. You seriously don't have a better method?!",
            ),
            (
                "@SouthwestAir @LukeWyckoff: her name is Jane and she wanted was a call. 617-653-3040",
                "@SouthwestAir @LukeWyckoff: her name is Jane and she wanted was a call. <phone>",
            ),
            (
                "@JetBlue my phone number when you have any news for me is (631)891-5722",
                "@JetBlue my phone number when you have any news for me is <phone>",
            ),
            (
                "@AmericanAir Embassy Suites\n13341 Woodland Park Drive\nHerndon, Virginia, 20171 \nUS \n+1-703-464-0200",
                "@AmericanAir Embassy Suites\n13341 Woodland Park Drive\nHerndon, Virginia, 20171 \nUS \n<phone>",
            ),
            (
                "@USAirways on hold with 800-428-4322. Flight from DSM to DCA was Cancelled Flighted (4473). Know when it will fly?",
                "@USAirways on hold with <phone>. Flight from DSM to DCA was Cancelled Flighted (4473). Know when it will fly?",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input).0, expected);
        }
    }

    #[test]
    fn counts_and_borrows() {
        let (out, redactions) =
            redact_cow("mail a@b.co or call 555-123-4567, card 4111 1111 1111 1111");
        assert_eq!(out, "mail <email> or call <phone>, card <card>");
        assert_eq!(
            redactions,
            Redactions {
                emails: 1,
                phones: 1,
                cards: 1
            }
        );
        assert_eq!(redactions.total(), 3);
        let (out, redactions) = redact_cow("nothing personal in 2015");
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(redactions, Redactions::default());
    }
}
