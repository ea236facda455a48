//! Language detection for cleaned review text, with ISO 639-1 codes (`en`, `es`, …) that the
//! rest of the system and the schemas use.

use serde::{Deserialize, Serialize};
use whatlang::Lang;

use crate::text::PLACEHOLDERS;

/// Fewer words than this (after removing mentions, URLs, digits) give no detection at all: the
/// trigram statistics of two words say little.
pub const MIN_WORDS: usize = 3;

/// A detected language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detected {
    /// ISO 639-1 code where the language has one (all languages whatlang knows do), else ISO 639-3.
    pub lang: String,
    /// whatlang's confidence in `[0, 1]`.
    pub confidence: f64,
    /// whatlang's own judgement that the detection can be trusted.
    pub reliable: bool,
}

/// Detects the language of `text` (raw or cleaned). Mentions, URLs, placeholders, digits and the
/// `#` of hashtags are ignored; `None` when fewer than [`MIN_WORDS`] words with letters remain or
/// whatlang cannot decide.
pub fn detect(text: &str) -> Option<Detected> {
    let content = detectable_content(text)?;
    let info = whatlang::detect(&content)?;
    Some(Detected {
        lang: iso_639_1(info.lang()).to_owned(),
        confidence: info.confidence(),
        reliable: info.is_reliable(),
    })
}

/// The words of `text` that say something about its language, or `None` when there are fewer
/// than [`MIN_WORDS`].
fn detectable_content(text: &str) -> Option<String> {
    let mut content = String::with_capacity(text.len());
    let mut words = 0;
    for token in text.split_whitespace() {
        if is_language_neutral(token) {
            continue;
        }
        let word: String = token
            .chars()
            .filter(|ch| !ch.is_ascii_digit() && *ch != '#')
            .collect();
        if !word.chars().any(char::is_alphabetic) {
            continue;
        }
        if !content.is_empty() {
            content.push(' ');
        }
        content.push_str(&word);
        words += 1;
    }
    (words >= MIN_WORDS).then_some(content)
}

/// Tokens that are the same in every language: mentions, URLs and placeholders.
fn is_language_neutral(token: &str) -> bool {
    let lowered_prefix = token.get(..4).map(str::to_ascii_lowercase);
    token.starts_with('@')
        || lowered_prefix.as_deref() == Some("http")
        || lowered_prefix.as_deref() == Some("www.")
        || PLACEHOLDERS
            .iter()
            .any(|placeholder| token.contains(placeholder))
}

/// The ISO 639-1 code of a whatlang language. The match is exhaustive so that a whatlang upgrade
/// with new languages fails to compile here instead of leaking three-letter codes.
pub fn iso_639_1(lang: Lang) -> &'static str {
    match lang {
        Lang::Epo => "eo",
        Lang::Eng => "en",
        Lang::Rus => "ru",
        Lang::Cmn => "zh",
        Lang::Spa => "es",
        Lang::Por => "pt",
        Lang::Ita => "it",
        Lang::Ben => "bn",
        Lang::Fra => "fr",
        Lang::Deu => "de",
        Lang::Ukr => "uk",
        Lang::Kat => "ka",
        Lang::Ara => "ar",
        Lang::Hin => "hi",
        Lang::Jpn => "ja",
        Lang::Heb => "he",
        Lang::Yid => "yi",
        Lang::Pol => "pl",
        Lang::Amh => "am",
        Lang::Jav => "jv",
        Lang::Kor => "ko",
        Lang::Nob => "nb",
        Lang::Dan => "da",
        Lang::Swe => "sv",
        Lang::Fin => "fi",
        Lang::Tur => "tr",
        Lang::Nld => "nl",
        Lang::Hun => "hu",
        Lang::Ces => "cs",
        Lang::Ell => "el",
        Lang::Bul => "bg",
        Lang::Bel => "be",
        Lang::Mar => "mr",
        Lang::Kan => "kn",
        Lang::Ron => "ro",
        Lang::Slv => "sl",
        Lang::Hrv => "hr",
        Lang::Srp => "sr",
        Lang::Mkd => "mk",
        Lang::Lit => "lt",
        Lang::Lav => "lv",
        Lang::Est => "et",
        Lang::Tam => "ta",
        Lang::Vie => "vi",
        Lang::Urd => "ur",
        Lang::Tha => "th",
        Lang::Guj => "gu",
        Lang::Uzb => "uz",
        Lang::Pan => "pa",
        Lang::Aze => "az",
        Lang::Ind => "id",
        Lang::Tel => "te",
        Lang::Pes => "fa",
        Lang::Mal => "ml",
        Lang::Ori => "or",
        Lang::Mya => "my",
        Lang::Nep => "ne",
        Lang::Sin => "si",
        Lang::Khm => "km",
        Lang::Tuk => "tk",
        Lang::Aka => "ak",
        Lang::Zul => "zu",
        Lang::Sna => "sn",
        Lang::Afr => "af",
        Lang::Lat => "la",
        Lang::Slk => "sk",
        Lang::Cat => "ca",
        Lang::Tgl => "tl",
        Lang::Hye => "hy",
        Lang::Cym => "cy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_languages() {
        let cases = [
            (
                "The flight was delayed for three hours and nobody told us anything",
                "en",
            ),
            ("El vuelo se retrasó tres horas y nadie nos dijo nada", "es"),
            (
                "Le vol a été retardé de trois heures et personne ne nous a rien dit",
                "fr",
            ),
            (
                "Der Flug hatte drei Stunden Verspätung und niemand hat uns etwas gesagt",
                "de",
            ),
            (
                "Il volo è stato ritardato di tre ore e nessuno ci ha detto niente",
                "it",
            ),
            ("O voo atrasou três horas e ninguém nos disse nada", "pt"),
            (
                "De vlucht had drie uur vertraging en niemand heeft ons iets verteld",
                "nl",
            ),
            (
                "Мы очень долго ждали в аэропорту, потому что рейс задержали, а сотрудники ничего не объясняли",
                "ru",
            ),
        ];
        for (text, expected) in cases {
            let detected = detect(text).unwrap_or_else(|| panic!("no language for {text:?}"));
            assert_eq!(detected.lang, expected, "text {text:?}");
            assert!((0.0..=1.0).contains(&detected.confidence));
        }
    }

    #[test]
    fn ignores_mentions_urls_and_placeholders() {
        // Real airline row after clean(): the mention and the URL must not sway detection.
        let detected = detect("@user I’m having trouble adding this flight my wife booked to my Elevate account. Help? <url>")
            .expect("english text");
        assert_eq!(detected.lang, "en");
        assert_eq!(
            detectable_content(
                "@user @AmericanAir #delayed again 2015 <url> http://t.co/x <phone> really"
            )
            .as_deref(),
            Some("delayed again really")
        );
    }

    #[test]
    fn short_texts_have_no_language() {
        let cases = [
            "",
            "   ",
            "ok thanks",
            "@user <url> <email> 12345",
            "@united @delta hi",
            "😂😂😂 !!!",
            "123 456 789",
        ];
        for text in cases {
            assert_eq!(detect(text), None, "text {text:?}");
        }
    }

    #[test]
    fn maps_every_language_to_two_letters() {
        for &lang in Lang::all() {
            let code = iso_639_1(lang);
            assert_eq!(code.len(), 2, "{lang:?}");
            assert!(code.chars().all(|ch| ch.is_ascii_lowercase()), "{lang:?}");
        }
    }
}
