//! Repair of mojibake: UTF-8 text that some system decoded as Windows-1252 or Latin-1
//! (`Ã©` for `é`, `â€™` for `’`, `ðŸ˜‚` for `😂`), possibly more than once.

use std::borrow::Cow;

/// Windows-1252 bytes 0x80..=0x9F, the only range where it differs from Latin-1. `None` marks
/// the five bytes Windows-1252 leaves undefined; decoders pass those through as C1 controls.
const CP1252_HIGH: [Option<char>; 32] = [
    Some('€'),
    None,
    Some('‚'),
    Some('ƒ'),
    Some('„'),
    Some('…'),
    Some('†'),
    Some('‡'),
    Some('ˆ'),
    Some('‰'),
    Some('Š'),
    Some('‹'),
    Some('Œ'),
    None,
    Some('Ž'),
    None,
    None,
    Some('‘'),
    Some('’'),
    Some('“'),
    Some('”'),
    Some('•'),
    Some('–'),
    Some('—'),
    Some('˜'),
    Some('™'),
    Some('š'),
    Some('›'),
    Some('œ'),
    None,
    Some('ž'),
    Some('Ÿ'),
];

/// The character Windows-1252 assigns to `byte`, `None` for its five undefined bytes.
pub fn cp1252_char(byte: u8) -> Option<char> {
    match byte {
        0x80..=0x9F => CP1252_HIGH[usize::from(byte - 0x80)],
        _ => Some(char::from(byte)),
    }
}

/// The byte a Windows-1252 (or, for C1 controls, Latin-1) decoder turned into `ch`, if any.
pub fn cp1252_byte(ch: char) -> Option<u8> {
    if let Ok(byte) = u8::try_from(ch) {
        // Latin-1 covers 0x00..=0xFF; the C1 controls in it are what lenient Windows-1252
        // decoders produce for the undefined bytes, and what Latin-1 mojibake contains.
        return Some(byte);
    }
    CP1252_HIGH
        .iter()
        .position(|&mapped| mapped == Some(ch))
        .and_then(|index| u8::try_from(index).ok())
        .map(|index| 0x80 + index)
}

/// Repairs mojibake sequences, pass after pass until none is left (text that was mis-decoded twice
/// needs two passes). Returns `Cow::Owned` only when something was repaired.
///
/// A sequence is a UTF-8 lead byte followed by its continuation bytes, all seen through
/// Windows-1252; it is replaced only when those bytes decode as UTF-8 (the round trip succeeds) to a
/// character that plausibly was the original (see [`is_plausible_original`]). Legitimate text
/// almost never contains such sequences: `Ã`, `â` or `ð` followed by `©`, `€` or `Ÿ` is not a
/// spelling of any language. Every pass replaces two to four suspicious characters by one, so the
/// count of suspicious sequences only goes down and the loop ends. Repairing until none is left
/// (rather than stopping when a pass merely moves a sequence, as `Ã‚` + NBSP does) keeps `clean`
/// idempotent: a later step cannot expose a sequence that an earlier pass left.
pub fn repair_mojibake(text: &str) -> Cow<'_, str> {
    if count_sequences(text) == 0 {
        return Cow::Borrowed(text);
    }
    let mut repaired = repair_pass(text);
    while count_sequences(&repaired) > 0 {
        repaired = repair_pass(&repaired);
    }
    Cow::Owned(repaired)
}

/// Replaces every mojibake sequence once, left to right.
fn repair_pass(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_lead_char) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        match decode_sequence(rest) {
            Some((decoded, consumed)) => {
                out.push(decoded);
                rest = &rest[consumed..];
            }
            None => {
                let lead_len = rest.chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..lead_len]);
                rest = &rest[lead_len..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// How many mojibake sequences one pass would repair; the "suspicious characters" measure.
fn count_sequences(text: &str) -> usize {
    let mut count = 0;
    let mut rest = text;
    while let Some(start) = rest.find(is_lead_char) {
        rest = &rest[start..];
        let consumed = match decode_sequence(rest) {
            Some((_, consumed)) => {
                count += 1;
                consumed
            }
            None => rest.chars().next().map_or(1, char::len_utf8),
        };
        rest = &rest[consumed..];
    }
    count
}

/// Characters whose Windows-1252 byte is a UTF-8 lead byte of a multi-byte sequence
/// (0xC2..=0xF4, i.e. `Â`..=`ô`).
fn is_lead_char(ch: char) -> bool {
    ('\u{c2}'..='\u{f4}').contains(&ch)
}

/// Decodes the mojibake sequence at the start of `text`, returning the original character and
/// the number of bytes of `text` it replaces.
fn decode_sequence(text: &str) -> Option<(char, usize)> {
    let mut chars = text.chars();
    let lead_char = chars.next()?;
    let lead = cp1252_byte(lead_char)?;
    let continuation_count = match lead {
        0xC2..=0xDF => 1,
        0xE0..=0xEF => 2,
        0xF0..=0xF4 => 3,
        _ => return None,
    };
    let mut bytes = [lead, 0, 0, 0];
    let mut consumed = lead_char.len_utf8();
    let mut first_continuation = None;
    for slot in bytes.iter_mut().skip(1).take(continuation_count) {
        let next = chars.next();
        let continuation = next
            .and_then(cp1252_byte)
            .filter(|byte| (0x80..=0xBF).contains(byte));
        let (Some(next), Some(continuation)) = (next, continuation) else {
            return decode_dangling_quote(text);
        };
        first_continuation.get_or_insert(next);
        *slot = continuation;
        consumed += next.len_utf8();
    }
    let decoded = std::str::from_utf8(&bytes[..=continuation_count])
        .ok()?
        .chars()
        .next()?;
    is_plausible_original(decoded, first_continuation?).then_some((decoded, consumed))
}

/// `â€` followed by no continuation: the third byte was one that Windows-1252 leaves undefined
/// and some system dropped it. It was almost always 0x9D (`”`), or 0x8D (a zero-width joiner) when
/// an emoji follows.
fn decode_dangling_quote(text: &str) -> Option<(char, usize)> {
    let after = text.strip_prefix("â€")?;
    let next = after.chars().next();
    if next
        .and_then(cp1252_byte)
        .is_some_and(|byte| (0x80..=0xBF).contains(&byte))
    {
        return None;
    }
    let joins_emoji = next.is_some_and(|ch| ch == 'ð' || ch >= '\u{1F000}');
    let decoded = if joins_emoji { '\u{200d}' } else { '”' };
    Some((decoded, "â€".len()))
}

/// Whether `decoded` is a character that text plausibly contained before it was mis-decoded;
/// `first_continuation` is the character that stood for the byte after the lead byte.
///
/// Latin-1, Latin Extended-A, Greek, Cyrillic, Hebrew and Arabic letters are what most two-byte
/// mojibake comes from. The rarer two-byte ranges (Latin Extended-B, IPA, modifier letters,
/// combining marks, as in the mojibake of `( ͡° ͜ʖ ͡°)`) are accepted unless the second character is
/// typographic punctuation, because a capital accented letter followed by `…`, `’` or `”`
/// (`OLÉ…`) also forms a valid two-byte sequence and must stay as it is. A C1 control is accepted
/// only from `Â` and a C1 control: that is how double encoding spells the bytes Windows-1252 leaves
/// undefined (the 0x8F of 👏), and the next pass needs it back; so are `ƒ`, `ˆ` and `˜`, the
/// Windows-1252 letters that double encoding spells with two bytes (`Æ’` for the 0x83 of 😃).
fn is_plausible_original(decoded: char, first_continuation: char) -> bool {
    let after_typographic_punctuation = matches!(
        first_continuation,
        '…' | '‘' | '’' | '“' | '”' | '•' | '›' | '»'
    );
    match decoded {
        '\u{80}'..='\u{9f}' => ('\u{80}'..='\u{9f}').contains(&first_continuation),
        '\u{a0}'..='\u{17f}'
        | '\u{370}'..='\u{3ff}'
        | '\u{400}'..='\u{4ff}'
        | '\u{5d0}'..='\u{5ea}'
        | '\u{621}'..='\u{64a}' => true,
        // Windows-1252's own letters from this range: double encoding passes through them.
        'ƒ' | 'ˆ' | '˜' => true,
        '\u{180}'..='\u{36f}' => !after_typographic_punctuation,
        '\u{800}'..='\u{d7ff}' | '\u{f900}'..='\u{fffd}' | '\u{10000}'..='\u{effff}' => true,
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a producer that decodes UTF-8 bytes as Windows-1252 (Latin-1 for undefined bytes)
    /// sends us.
    pub(crate) fn to_mojibake(text: &str) -> String {
        text.bytes()
            .map(|byte| cp1252_char(byte).unwrap_or(char::from(byte)))
            .collect()
    }

    #[test]
    fn cp1252_table_round_trips() {
        for byte in 0..=u8::MAX {
            if let Some(ch) = cp1252_char(byte) {
                assert_eq!(cp1252_byte(ch), Some(byte), "byte {byte:#x}");
            }
        }
        assert_eq!(cp1252_char(0x92), Some('’'));
        assert_eq!(cp1252_char(0x9D), None);
        assert_eq!(cp1252_byte('\u{9d}'), Some(0x9D));
        assert_eq!(cp1252_byte('😂'), None);
    }

    #[test]
    fn repairs_mojibake() {
        let cases = [
            ("café", "café"),
            ("cafÃ©", "café"),
            ("donâ€™t", "don’t"),
            ("â€œquotedâ€\u{9d}", "“quoted”"),
            ("â€œquotedâ€ dropped", "“quoted” dropped"),
            ("lol ðŸ˜‚", "lol 😂"),
            ("ðŸ‘¨â€ðŸ‘©", "👨\u{200d}👩"),
            ("Ã¼ber SchÃ¶n", "über Schön"),
            ("seÃ±or", "señor"),
            ("Ã‰tÃ©", "Été"),
            ("Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "привет"),
            ("æ—¥æœ¬", "日本"),
            ("Â£5", "£5"),
            ("â\u{9d}¤ï¸\u{8f}", "❤️"),
            // Latin-1 (not Windows-1252) mojibake: C1 controls instead of typographic characters.
            ("don\u{e2}\u{80}\u{99}t", "don’t"),
            // Double encoding needs two passes.
            ("cafÃƒÂ©", "café"),
            ("donÃ¢â‚¬â„¢t", "don’t"),
            // Legitimate text that looks a little like mojibake stays as it is.
            ("OLÉ…", "OLÉ…"),
            ("PERCHÌ”", "PERCHÌ”"),
            // Real airline row 5534's Lenny face, garbled: IPA and combining marks.
            ("( Í¡° ÍœÊ– Í¡°)", "( \u{361}° \u{35c}ʖ \u{361}°)"),
            ("Ç\u{8e}", "ǎ"),
            // Double encoding of a byte that Windows-1252 leaves undefined (👏 = F0 9F 91 8F).
            ("Ã°Å¸â€˜Â\u{8f}", "👏"),
            ("Â€ stays", "Â€ stays"),
            // Double-encoded NBSP that lost its `Â`: the first pass exposes `Â` + NBSP.
            ("Ã‚\u{a0}x", "\u{a0}x"),
            ("Ã°Å¸Ëœâ€š", "😂"),
            ("Ã°Å¸ËœÆ’", "😃"),
            ("Weiß’", "Weiß’"),
            ("Ça va? À bientôt", "Ça va? À bientôt"),
            ("naïve façade", "naïve façade"),
            ("100°C ± 2", "100°C ± 2"),
            ("ð alone", "ð alone"),
            ("Ã", "Ã"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(repair_mojibake(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn borrows_clean_text() {
        assert!(matches!(repair_mojibake("plain ascii"), Cow::Borrowed(_)));
        assert!(matches!(repair_mojibake("ça va 😂"), Cow::Borrowed(_)));
    }

    #[test]
    fn repairs_real_rows_seen_through_cp1252() {
        // Real rows of airline_tweets.csv.gz as a producer that decodes UTF-8 as Windows-1252
        // would deliver them. The data files contain no such mojibake themselves (see the
        // data_files integration test for the garbling they do contain).
        let rows = [
            "@VirginAmerica I’m having trouble adding this flight my wife booked to my Elevate account. Help? http://t.co/pX8hQOKS3R",
            "@VirginAmerica you guys messed up my seating.. I reserved seating with my friends and you guys gave my seat away ... 😡 I want free internet",
            "@VirginAmerica mood lighting on point🙌 Reclining my seat, kickin up my feet💤",
        ];
        for row in rows {
            let garbled = to_mojibake(row);
            assert_ne!(garbled, row);
            assert_eq!(repair_mojibake(&garbled), row);
        }
        assert_eq!(to_mojibake("I’m"), "Iâ€™m");
        assert_eq!(to_mojibake("😡"), "ðŸ˜¡");
    }
}
