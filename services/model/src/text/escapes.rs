//! Decoding of HTML character references and literal `\uXXXX` escapes that scrapers and JSON
//! double-encoding leave in social-media text (`&amp;`, `&#39;`, `Don\u2019t`).

use std::borrow::Cow;

use super::mojibake::cp1252_char;

/// The longest named reference we know (`&thinsp;`) is 8 characters including `&` and `;`; numeric
/// references up to `&#x10FFFF;` are 10. Anything longer is not a reference.
const MAX_REFERENCE_LEN: usize = 10;

/// Decodes HTML character references and literal `\uXXXX` escapes until none is left.
///
/// Decoding repeats because double-escaped text (`&amp;lt;`) is common and a single pass would
/// leave a reference that the next call of [`super::clean`] decodes, breaking idempotence. Every
/// pass that changes something makes the text shorter, so the loop ends.
pub fn decode_escapes(text: &str) -> Cow<'_, str> {
    let mut decoded = match decode_once(text) {
        Some(decoded) => decoded,
        None => return Cow::Borrowed(text),
    };
    while let Some(again) = decode_once(&decoded) {
        decoded = again;
    }
    Cow::Owned(decoded)
}

/// One left-to-right decoding pass; `None` when nothing was decoded.
fn decode_once(text: &str) -> Option<String> {
    if !text.contains('&') && !text.contains("\\u") {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while let Some(start) = rest.find(['&', '\\']) {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let decoded = if candidate.starts_with('&') {
            decode_reference(candidate)
        } else {
            decode_unicode_escape(candidate)
        };
        match decoded {
            Some((decoded_char, consumed)) => {
                out.push(decoded_char);
                rest = &candidate[consumed..];
                changed = true;
            }
            None => {
                // The trigger characters are ASCII, so skipping one byte keeps us on a boundary.
                out.push_str(&candidate[..1]);
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Decodes the character reference at the start of `text` (which starts with `&`), returning the
/// character and the number of bytes consumed.
fn decode_reference(text: &str) -> Option<(char, usize)> {
    let window = &text.as_bytes()[..text.len().min(MAX_REFERENCE_LEN + 1)];
    let semicolon = window.iter().position(|&byte| byte == b';')?;
    let body = &text[1..semicolon];
    let decoded = match body.strip_prefix('#') {
        Some(number) => decode_numeric_reference(number)?,
        None => named_reference(body)?,
    };
    Some((decoded, semicolon + 1))
}

/// Decodes the digits of `&#NNN;` or `&#xHHH;`.
fn decode_numeric_reference(number: &str) -> Option<char> {
    let code = match number.strip_prefix(['x', 'X']) {
        Some(hex) => parse_digits(hex, 16)?,
        None => parse_digits(number, 10)?,
    };
    // Browsers read references to the C1 range as Windows-1252, because that is what the authors
    // of such pages meant (`&#146;` is an apostrophe); we follow the HTML standard here.
    if let Ok(byte) = u8::try_from(code)
        && (0x80..=0x9F).contains(&byte)
    {
        return cp1252_char(byte).or(char::from_u32(code));
    }
    char::from_u32(code).filter(|&decoded| decoded != '\0')
}

/// Parses a non-empty run of digits in `radix`, rejecting signs and overflow.
fn parse_digits(digits: &str, radix: u32) -> Option<u32> {
    if digits.is_empty() || !digits.chars().all(|digit| digit.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// Decodes a literal `\uXXXX` escape (and a following low surrogate escape when the first is a
/// high surrogate) at the start of `text`.
fn decode_unicode_escape(text: &str) -> Option<(char, usize)> {
    let first = parse_unicode_escape(text)?;
    if !(0xD800..=0xDBFF).contains(&first) {
        return char::from_u32(first)
            .filter(|&decoded| decoded != '\0')
            .map(|decoded| (decoded, 6));
    }
    let second = parse_unicode_escape(text.get(6..)?)?;
    if !(0xDC00..=0xDFFF).contains(&second) {
        return None;
    }
    let combined = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
    char::from_u32(combined).map(|decoded| (decoded, 12))
}

/// Reads the four hex digits of a `\uXXXX` escape at the start of `text`.
fn parse_unicode_escape(text: &str) -> Option<u32> {
    let hex = text.strip_prefix("\\u")?.get(..4)?;
    parse_digits(hex, 16)
}

/// The named references that occur in scraped social-media text: the XML five, HTML's Latin-1
/// set and common typography. The full HTML list has over two thousand names that never appear.
fn named_reference(name: &str) -> Option<char> {
    let decoded = match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "thinsp" => '\u{2009}',
        "zwnj" => '\u{200c}',
        "zwj" => '\u{200d}',
        "shy" => '\u{ad}',
        "hellip" => '…',
        "ndash" => '–',
        "mdash" => '—',
        "lsquo" => '‘',
        "rsquo" => '’',
        "sbquo" => '‚',
        "ldquo" => '“',
        "rdquo" => '”',
        "bdquo" => '„',
        "laquo" => '«',
        "raquo" => '»',
        "lsaquo" => '‹',
        "rsaquo" => '›',
        "bull" => '•',
        "middot" => '·',
        "dagger" => '†',
        "prime" => '′',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "curren" => '¤',
        "deg" => '°',
        "plusmn" => '±',
        "times" => '×',
        "divide" => '÷',
        "micro" => 'µ',
        "para" => '¶',
        "sect" => '§',
        "iexcl" => '¡',
        "iquest" => '¿',
        "frac12" => '½',
        "frac14" => '¼',
        "frac34" => '¾',
        "sup1" => '¹',
        "sup2" => '²',
        "sup3" => '³',
        "ordf" => 'ª',
        "ordm" => 'º',
        "not" => '¬',
        "macr" => '¯',
        "acute" => '´',
        "cedil" => '¸',
        "uml" => '¨',
        "brvbar" => '¦',
        "hearts" => '♥',
        "spades" => '♠',
        "clubs" => '♣',
        "diams" => '♦',
        "larr" => '←',
        "rarr" => '→',
        "uarr" => '↑',
        "darr" => '↓',
        "harr" => '↔',
        "Agrave" => 'À',
        "Aacute" => 'Á',
        "Acirc" => 'Â',
        "Atilde" => 'Ã',
        "Auml" => 'Ä',
        "Aring" => 'Å',
        "AElig" => 'Æ',
        "Ccedil" => 'Ç',
        "Egrave" => 'È',
        "Eacute" => 'É',
        "Ecirc" => 'Ê',
        "Euml" => 'Ë',
        "Igrave" => 'Ì',
        "Iacute" => 'Í',
        "Icirc" => 'Î',
        "Iuml" => 'Ï',
        "ETH" => 'Ð',
        "Ntilde" => 'Ñ',
        "Ograve" => 'Ò',
        "Oacute" => 'Ó',
        "Ocirc" => 'Ô',
        "Otilde" => 'Õ',
        "Ouml" => 'Ö',
        "Oslash" => 'Ø',
        "Ugrave" => 'Ù',
        "Uacute" => 'Ú',
        "Ucirc" => 'Û',
        "Uuml" => 'Ü',
        "Yacute" => 'Ý',
        "THORN" => 'Þ',
        "szlig" => 'ß',
        "agrave" => 'à',
        "aacute" => 'á',
        "acirc" => 'â',
        "atilde" => 'ã',
        "auml" => 'ä',
        "aring" => 'å',
        "aelig" => 'æ',
        "ccedil" => 'ç',
        "egrave" => 'è',
        "eacute" => 'é',
        "ecirc" => 'ê',
        "euml" => 'ë',
        "igrave" => 'ì',
        "iacute" => 'í',
        "icirc" => 'î',
        "iuml" => 'ï',
        "eth" => 'ð',
        "ntilde" => 'ñ',
        "ograve" => 'ò',
        "oacute" => 'ó',
        "ocirc" => 'ô',
        "otilde" => 'õ',
        "ouml" => 'ö',
        "oslash" => 'ø',
        "ugrave" => 'ù',
        "uacute" => 'ú',
        "ucirc" => 'û',
        "uuml" => 'ü',
        "yacute" => 'ý',
        "thorn" => 'þ',
        "yuml" => 'ÿ',
        "OElig" => 'Œ',
        "oelig" => 'œ',
        "Scaron" => 'Š',
        "scaron" => 'š',
        "Yuml" => 'Ÿ',
        _ => return None,
    };
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_references_and_escapes() {
        let cases = [
            ("plain text", "plain text"),
            ("Q&amp;A", "Q&A"),
            ("I &lt;3 pre-flight", "I <3 pre-flight"),
            ("a &gt; b", "a > b"),
            ("&quot;hi&quot;", "\"hi\""),
            ("it&#39;s", "it's"),
            ("it&#x27;s", "it's"),
            ("it&#X27;s", "it's"),
            ("it&apos;s", "it's"),
            ("a&nbsp;b", "a\u{a0}b"),
            ("caf&eacute;", "café"),
            ("wait&hellip;", "wait…"),
            ("&#128514;", "😂"),
            ("&#x1F602;", "😂"),
            // C1 references mean Windows-1252 (what the page author typed).
            ("don&#146;t", "don’t"),
            // Double escaping is decoded to the end so clean() stays idempotent.
            ("&amp;amp;", "&"),
            ("&amp;lt;3", "<3"),
            // Not references: left alone.
            ("AT&T", "AT&T"),
            ("fish & chips; beer", "fish & chips; beer"),
            ("&unknown;", "&unknown;"),
            ("&#;", "&#;"),
            ("&#0;", "&#0;"),
            ("&#xD800;", "&#xD800;"),
            ("&#99999999999;", "&#99999999999;"),
            ("&#-1;", "&#-1;"),
            ("&", "&"),
            ("&amp", "&amp"),
            // Literal JSON escapes left by a double-encoding scraper (real TweetEval rows).
            ("Rui En\\u2019s ex boyfriend", "Rui En’s ex boyfriend"),
            (
                "framed for murder probably\\u002c by",
                "framed for murder probably, by",
            ),
            ("\\ud83d\\ude02", "😂"),
            ("\\ud83d alone", "\\ud83d alone"),
            ("\\u12", "\\u12"),
            ("C:\\users", "C:\\users"),
            ("\\u0026amp;", "&"),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_escapes(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn borrows_when_nothing_to_decode() {
        assert!(matches!(decode_escapes("AT&T rocks"), Cow::Borrowed(_)));
        assert!(matches!(
            decode_escapes("no escapes at all"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn real_rows_with_entities() {
        // Real rows of airline_tweets.csv.gz and tweeteval_val.jsonl.gz.
        let cases = [
            (
                "@VirginAmerica I &lt;3 pretty graphics. so much better than minimal iconography. :D",
                "@VirginAmerica I <3 pretty graphics. so much better than minimal iconography. :D",
            ),
            (
                "Hillary urges help for Syrian refugees: &lt;p&gt;Hillary Clinton",
                "Hillary urges help for Syrian refugees: <p>Hillary Clinton",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_escapes(input), expected);
        }
    }
}
