//! VADER lexicon scoring (Hutto & Gilbert 2014, the rules of vaderSentiment 3.3.2), used by ingest
//! to give unlabelled reviews a weak label.
//!
//! The scorer follows the reference implementation rule by rule, including its quirks (for example
//! how it locates a sentiment when applying the "but" rule), so that its output matches published
//! VADER scores; scores are not rounded. Emoji are scored through their descriptions only when an
//! emoji lexicon was added with [`Lexicon::with_emoji_descriptions`], as VADER does.

mod rules;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use rules::{
    AFTER_BUT_WEIGHT, ALL_CAPS_INCREMENT, BEFORE_BUT_WEIGHT, EXCLAMATION_INCREMENT,
    MAX_EXCLAMATIONS, MAX_QUESTION_EMPHASIS, NEGATION_SCALAR, NORMALIZATION_ALPHA,
    QUESTION_INCREMENT, booster, is_negation, special_case,
};

/// VADER's threshold on the compound score between neutral and positive (or negative).
pub const POLARITY_THRESHOLD: f64 = 0.05;

/// Largest absolute mean valence in a VADER lexicon (ratings run from -4 to +4).
const MAX_VALENCE: f64 = 4.0;

/// Why a lexicon could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read lexicon {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The contents have no entries at all.
    #[error("lexicon is empty")]
    Empty,
    /// A line is blank or not `token<TAB>mean[<TAB>std<TAB>[ratings]]`.
    #[error("lexicon line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// A sentiment lexicon (token → mean valence) with VADER's scoring rules.
#[derive(Clone, Default)]
pub struct Lexicon {
    // FxHash: every scored word costs several look-ups, and SipHash's DoS resistance buys nothing
    // for a lexicon loaded from a checksummed file.
    valences: FxHashMap<String, f64>,
    emoji_descriptions: FxHashMap<char, String>,
}

impl fmt::Debug for Lexicon {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Lexicon")
            .field("tokens", &self.valences.len())
            .field("emoji", &self.emoji_descriptions.len())
            .finish()
    }
}

/// VADER's scores of one text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SentimentScores {
    /// Proportion of the text that is negative, in `[0, 1]`.
    pub negative: f64,
    /// Proportion of the text that is neutral, in `[0, 1]`.
    pub neutral: f64,
    /// Proportion of the text that is positive, in `[0, 1]`.
    pub positive: f64,
    /// Normalised sum of all valences in `[-1, 1]`.
    pub compound: f64,
}

/// A three-way sentiment label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Polarity {
    /// Negative sentiment.
    Negative,
    /// Neither positive nor negative.
    Neutral,
    /// Positive sentiment.
    Positive,
}

impl Polarity {
    /// The label as the schemas spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negative => "negative",
            Self::Neutral => "neutral",
            Self::Positive => "positive",
        }
    }
}

impl fmt::Display for Polarity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl SentimentScores {
    /// VADER's usual labelling: compound ≥ 0.05 positive, ≤ -0.05 negative, neutral between.
    pub fn polarity(&self) -> Polarity {
        if self.compound >= POLARITY_THRESHOLD {
            Polarity::Positive
        } else if self.compound <= -POLARITY_THRESHOLD {
            Polarity::Negative
        } else {
            Polarity::Neutral
        }
    }
}

impl Lexicon {
    /// Reads a lexicon in the `vader_lexicon.txt` format (see [`Lexicon::parse`]).
    pub fn load(path: &Path) -> Result<Self, LexiconError> {
        let contents = std::fs::read_to_string(path).map_err(|source| LexiconError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&contents)
    }

    /// Parses the `vader_lexicon.txt` format: one entry per line, `token<TAB>mean<TAB>std<TAB>[raw
    /// ratings]` (the last two fields optional), CRLF or LF line ends. Blank lines, a missing or
    /// non-numeric mean, a mean outside [-4, 4] and malformed optional fields are errors with their
    /// line number: they mean a truncated or corrupted download. A token listed twice keeps its last
    /// value, as in VADER (the real file lists `lol`, `ok` and a few emoticons twice).
    pub fn parse(contents: &str) -> Result<Self, LexiconError> {
        let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
        let body = contents.trim_end_matches(['\r', '\n']);
        if body.trim().is_empty() {
            return Err(LexiconError::Empty);
        }
        let mut valences = FxHashMap::default();
        for (index, line) in body.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (token, mean) = parse_entry(line).map_err(|reason| LexiconError::Malformed {
                line: index + 1,
                reason,
            })?;
            valences.insert(token.to_owned(), mean);
        }
        Ok(Self {
            valences,
            emoji_descriptions: FxHashMap::default(),
        })
    }

    /// Adds VADER's emoji lexicon (`emoji_utf8_lexicon.txt`: `emoji<TAB>description` per line), so
    /// that emoji are scored through the words of their descriptions ("😂" → "face with tears of
    /// joy"). Like VADER, only single-code-point emoji are replaced.
    pub fn with_emoji_descriptions(mut self, contents: &str) -> Result<Self, LexiconError> {
        let body = contents.trim_end_matches(['\r', '\n']);
        for (index, line) in body.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let malformed = |reason: &str| LexiconError::Malformed {
                line: index + 1,
                reason: reason.to_owned(),
            };
            let (emoji, description) = line
                .split_once('\t')
                .ok_or_else(|| malformed("no tab between emoji and description"))?;
            let description = description.split('\t').next().unwrap_or_default().trim();
            if description.is_empty() {
                return Err(malformed("empty description"));
            }
            let mut chars = emoji.trim().chars();
            if let (Some(single), None) = (chars.next(), chars.next()) {
                self.emoji_descriptions
                    .insert(single, description.to_owned());
            }
        }
        if self.emoji_descriptions.is_empty() {
            return Err(LexiconError::Empty);
        }
        Ok(self)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.valences.len()
    }

    /// Whether the lexicon has no tokens (never true for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.valences.is_empty()
    }

    /// Mean valence of a token as listed (case-sensitive; the scorer looks tokens up lowercased).
    pub fn valence(&self, token: &str) -> Option<f64> {
        self.valences.get(token).copied()
    }

    fn contains(&self, lowered_token: &str) -> bool {
        self.valences.contains_key(lowered_token)
    }

    /// Scores `text` with VADER's rules: lexicon valences of the lowercased tokens, boosters and
    /// dampeners, ALL-CAPS emphasis, negation within three tokens, "no", "least", idioms, the
    /// contrastive "but", and exclamation and question mark emphasis.
    pub fn score(&self, text: &str) -> SentimentScores {
        let described = self.describe_emoji(text);
        let text = described.trim();
        let words: Vec<&str> = text
            .split_whitespace()
            .map(strip_punctuation_unless_emoticon)
            .collect();
        let lowered: Vec<Cow<'_, str>> = words.iter().map(|word| lowercase(word)).collect();
        let is_cap_diff = mixes_all_caps(&words);

        let mut sentiments = Vec::with_capacity(words.len());
        for (index, lowered_word) in lowered.iter().enumerate() {
            let starts_kind_of =
                lowered_word == "kind" && lowered.get(index + 1).is_some_and(|next| next == "of");
            if booster(lowered_word).is_some() || starts_kind_of {
                sentiments.push(0.0);
                continue;
            }
            sentiments.push(self.sentiment_valence(&words, &lowered, is_cap_diff, index));
        }
        apply_but_rule(&lowered, &mut sentiments);
        score_valence(&sentiments, text)
    }

    /// VADER's `polarity_scores` first step: emoji replaced by their descriptions.
    fn describe_emoji<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.emoji_descriptions.is_empty()
            || !text
                .chars()
                .any(|ch| self.emoji_descriptions.contains_key(&ch))
        {
            return Cow::Borrowed(text);
        }
        let mut described = String::with_capacity(text.len() * 2);
        let mut previous_was_space = true;
        for ch in text.chars() {
            match self.emoji_descriptions.get(&ch) {
                Some(description) => {
                    // VADER separates a description from what precedes it, not from what follows.
                    if !previous_was_space {
                        described.push(' ');
                    }
                    described.push_str(description);
                    previous_was_space = false;
                }
                None => {
                    described.push(ch);
                    previous_was_space = ch == ' ';
                }
            }
        }
        Cow::Owned(described)
    }

    /// Valence of the token at `index` after VADER's modifiers (`sentiment_valence`).
    fn sentiment_valence(
        &self,
        words: &[&str],
        lowered: &[Cow<'_, str>],
        is_cap_diff: bool,
        index: usize,
    ) -> f64 {
        let lowered_word = lowered[index].as_ref();
        let Some(base) = self.valence(lowered_word) else {
            return 0.0;
        };
        let mut valence = base;
        let word_at = |offset: usize| lowered[index - offset].as_ref();

        // "no" before another lexicon word negates it instead of counting on its own.
        if lowered_word == "no"
            && lowered
                .get(index + 1)
                .is_some_and(|next| self.contains(next))
        {
            valence = 0.0;
        }
        if (index > 0 && word_at(1) == "no")
            || (index > 1 && word_at(2) == "no")
            || (index > 2 && word_at(3) == "no" && matches!(word_at(1), "or" | "nor"))
        {
            valence = base * NEGATION_SCALAR;
        }

        if is_all_caps(words[index]) && is_cap_diff {
            if valence > 0.0 {
                valence += ALL_CAPS_INCREMENT;
            } else {
                valence -= ALL_CAPS_INCREMENT;
            }
        }

        for distance in 1..=3 {
            if index < distance || self.contains(word_at(distance)) {
                continue;
            }
            let mut scalar = booster_scalar(
                words[index - distance],
                word_at(distance),
                valence,
                is_cap_diff,
            );
            // Modifiers further away count less.
            if distance == 2 {
                scalar *= 0.95;
            } else if distance == 3 {
                scalar *= 0.9;
            }
            valence += scalar;
            valence = negation_check(valence, lowered, distance, index);
            if distance == 3 {
                valence = special_idioms_check(valence, lowered, index);
            }
        }

        least_check(valence, lowered, index, |word| self.contains(word))
    }
}

/// One field-checked line of the lexicon file.
fn parse_entry(line: &str) -> Result<(&str, f64), String> {
    if line.trim().is_empty() {
        return Err("blank line".to_owned());
    }
    let mut fields = line.split('\t');
    let token = fields.next().unwrap_or_default();
    if token.is_empty() || token.trim() != token {
        return Err(format!("token {token:?} is empty or padded with spaces"));
    }
    let mean_field = fields
        .next()
        .ok_or_else(|| format!("token {token:?} has no tab-separated mean valence"))?;
    let mean: f64 = mean_field
        .trim()
        .parse()
        .map_err(|_| format!("mean valence {mean_field:?} of {token:?} is not a number"))?;
    if !mean.is_finite() || mean.abs() > MAX_VALENCE {
        return Err(format!(
            "mean valence {mean} of {token:?} is outside [-4, 4]"
        ));
    }
    if let Some(std_field) = fields.next() {
        let valid_std = std_field
            .trim()
            .parse::<f64>()
            .is_ok_and(|std| std.is_finite() && std >= 0.0);
        if !valid_std {
            return Err(format!(
                "standard deviation {std_field:?} of {token:?} is not a non-negative number"
            ));
        }
    }
    if let Some(ratings) = fields.next() {
        let ratings = ratings.trim();
        if !(ratings.starts_with('[') && ratings.ends_with(']')) {
            return Err(format!(
                "raw ratings {ratings:?} of {token:?} are not a [..] list"
            ));
        }
    }
    if fields.next().is_some() {
        return Err(format!("token {token:?} has more than four fields"));
    }
    Ok((token, mean))
}

/// VADER's `_strip_punc_if_word`: strips ASCII punctuation from both ends unless that leaves two
/// characters or fewer, in which case the token was probably an emoticon (`:)`, `:-D`).
fn strip_punctuation_unless_emoticon(token: &str) -> &str {
    let stripped = token.trim_matches(|ch: char| ch.is_ascii_punctuation());
    if stripped.chars().count() <= 2 {
        token
    } else {
        stripped
    }
}

/// Lowercase without a copy when the word has no uppercase letters.
fn lowercase(word: &str) -> Cow<'_, str> {
    if word.chars().any(|ch| ch.is_uppercase()) {
        Cow::Owned(word.to_lowercase())
    } else {
        Cow::Borrowed(word)
    }
}

/// Python's `str.isupper()`: at least one cased character and no lowercase one.
fn is_all_caps(word: &str) -> bool {
    let mut has_upper = false;
    for ch in word.chars() {
        if ch.is_lowercase() {
            return false;
        }
        has_upper |= ch.is_uppercase();
    }
    has_upper
}

/// VADER's `allcap_differential`: some, but not all, words are ALL CAPS. Only then is ALL CAPS
/// emphasis rather than a shouting style.
fn mixes_all_caps(words: &[&str]) -> bool {
    let all_caps = words.iter().filter(|word| is_all_caps(word)).count();
    all_caps > 0 && all_caps < words.len()
}

/// VADER's `scalar_inc_dec`: the booster or dampener effect of a preceding word, signed like the
/// valence it modifies and emphasised when the booster itself is in ALL CAPS.
fn booster_scalar(word: &str, lowered_word: &str, valence: f64, is_cap_diff: bool) -> f64 {
    let Some(increment) = booster(lowered_word) else {
        return 0.0;
    };
    let mut scalar = if valence < 0.0 { -increment } else { increment };
    if is_all_caps(word) && is_cap_diff {
        if valence > 0.0 {
            scalar += ALL_CAPS_INCREMENT;
        } else {
            scalar -= ALL_CAPS_INCREMENT;
        }
    }
    scalar
}

/// VADER's `_negation_check` for the word `distance` tokens before `index`, including its special
/// cases "never so/this" (intensifies) and "without doubt" (does not negate). The condition for
/// distance 3 keeps the reference implementation's operator precedence: "so"/"this" right before
/// the word intensifies on its own.
fn negation_check(valence: f64, lowered: &[Cow<'_, str>], distance: usize, index: usize) -> f64 {
    let word_at = |offset: usize| lowered[index - offset].as_ref();
    let intensifier = |word: &str| word == "so" || word == "this";
    match distance {
        1 if is_negation(word_at(1)) => valence * NEGATION_SCALAR,
        2 if word_at(2) == "never" && intensifier(word_at(1)) => valence * 1.25,
        2 if word_at(2) == "without" && word_at(1) == "doubt" => valence,
        2 if is_negation(word_at(2)) => valence * NEGATION_SCALAR,
        3 if (word_at(3) == "never" && intensifier(word_at(2))) || intensifier(word_at(1)) => {
            valence * 1.25
        }
        3 if word_at(3) == "without" && (word_at(2) == "doubt" || word_at(1) == "doubt") => valence,
        3 if is_negation(word_at(3)) => valence * NEGATION_SCALAR,
        _ => valence,
    }
}

/// VADER's `_special_idioms_check` (only called with three words before `index`): idioms that set
/// the valence ("the shit", "bad ass", "yeah right") and two-word dampeners ("kind of").
fn special_idioms_check(valence: f64, lowered: &[Cow<'_, str>], index: usize) -> f64 {
    let phrase = |from: usize, to: usize| -> String {
        lowered[from..=to]
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join(" ")
    };
    let one_zero = phrase(index - 1, index);
    let two_one_zero = phrase(index - 2, index);
    let two_one = phrase(index - 2, index - 1);
    let three_two_one = phrase(index - 3, index - 1);
    let three_two = phrase(index - 3, index - 2);

    let mut valence = valence;
    if let Some(idiom) = [
        &one_zero,
        &two_one_zero,
        &two_one,
        &three_two_one,
        &three_two,
    ]
    .into_iter()
    .find_map(|sequence| special_case(sequence))
    {
        valence = idiom;
    }
    if index + 1 < lowered.len()
        && let Some(idiom) = special_case(&phrase(index, index + 1))
    {
        valence = idiom;
    }
    if index + 2 < lowered.len()
        && let Some(idiom) = special_case(&phrase(index, index + 2))
    {
        valence = idiom;
    }
    for n_gram in [&three_two_one, &three_two, &two_one] {
        if let Some(increment) = booster(n_gram) {
            valence += increment;
        }
    }
    valence
}

/// VADER's `_least_check`: "least good" negates, "at least" and "very least" do not.
fn least_check(
    valence: f64,
    lowered: &[Cow<'_, str>],
    index: usize,
    in_lexicon: impl Fn(&str) -> bool,
) -> f64 {
    let previous_is_least = index > 0 && lowered[index - 1] == "least" && !in_lexicon("least");
    if !previous_is_least {
        return valence;
    }
    if index > 1 && matches!(lowered[index - 2].as_ref(), "at" | "very") {
        valence
    } else {
        valence * NEGATION_SCALAR
    }
}

/// VADER's `_but_check`: sentiment before the first "but" counts half, after it one and a half.
///
/// The reference implementation finds each sentiment by value (`list.index`), so when two tokens
/// share a value the first one can be reweighted twice; this reproduces that so that scores match.
fn apply_but_rule(lowered: &[Cow<'_, str>], sentiments: &mut [f64]) {
    let Some(but_index) = lowered.iter().position(|word| word == "but") else {
        return;
    };
    for position in 0..sentiments.len() {
        let sentiment = sentiments[position];
        let first_equal = sentiments
            .iter()
            .position(|&other| other == sentiment)
            .unwrap_or(position);
        if first_equal < but_index {
            sentiments[first_equal] = sentiment * BEFORE_BUT_WEIGHT;
        } else if first_equal > but_index {
            sentiments[first_equal] = sentiment * AFTER_BUT_WEIGHT;
        }
    }
}

/// Emphasis that exclamation and question marks add to the magnitude of the sum.
fn punctuation_emphasis(text: &str) -> f64 {
    let exclamations = text.matches('!').count().min(MAX_EXCLAMATIONS);
    let questions = text.matches('?').count();
    let question_emphasis = match questions {
        0 | 1 => 0.0,
        2 | 3 => questions as f64 * QUESTION_INCREMENT,
        _ => MAX_QUESTION_EMPHASIS,
    };
    exclamations as f64 * EXCLAMATION_INCREMENT + question_emphasis
}

/// VADER's `normalize`: maps a sum of valences into [-1, 1].
fn normalize(sum: f64) -> f64 {
    (sum / (sum * sum + NORMALIZATION_ALPHA).sqrt()).clamp(-1.0, 1.0)
}

/// VADER's `score_valence`: compound score and positive/negative/neutral proportions.
fn score_valence(sentiments: &[f64], text: &str) -> SentimentScores {
    if sentiments.is_empty() {
        return SentimentScores {
            negative: 0.0,
            neutral: 0.0,
            positive: 0.0,
            compound: 0.0,
        };
    }
    let emphasis = punctuation_emphasis(text);
    let mut sum: f64 = sentiments.iter().sum();
    if sum > 0.0 {
        sum += emphasis;
    } else if sum < 0.0 {
        sum -= emphasis;
    }
    let compound = normalize(sum);

    // Each sentiment word also counts as one neutral-sized unit, as in VADER.
    let mut positive_sum = 0.0;
    let mut negative_sum = 0.0;
    let mut neutral_count = 0.0;
    for &sentiment in sentiments {
        if sentiment > 0.0 {
            positive_sum += sentiment + 1.0;
        } else if sentiment < 0.0 {
            negative_sum += sentiment - 1.0;
        } else {
            neutral_count += 1.0;
        }
    }
    if positive_sum > negative_sum.abs() {
        positive_sum += emphasis;
    } else if positive_sum < negative_sum.abs() {
        negative_sum -= emphasis;
    }
    let total = positive_sum + negative_sum.abs() + neutral_count;
    SentimentScores {
        negative: (negative_sum / total).abs(),
        neutral: (neutral_count / total).abs(),
        positive: (positive_sum / total).abs(),
        compound,
    }
}

#[cfg(test)]
mod tests;
