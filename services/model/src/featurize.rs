//! The featurizer of the `hashed` family: raw review text → hashed feature ids in `1..buckets`. Training
//! and serving both call [`Featurizer::featurize`], which runs [`crate::clean`] itself, so the two can
//! never see differently prepared text.
//!
//! # Rules (all part of [`FEATURIZER_VERSION`])
//! 1. **Cleaning**: [`crate::clean`] (its own version, [`crate::NORMALIZER_VERSION`], is recorded
//!    separately).
//! 2. **Tokens**, scanned from the cleaned text (case preserved until a word is lowercased):
//!    - a whitespace-separated chunk that is an ASCII emoticon (`:)`, `:-(`, `;D`, `<3`, `xD`, `-_-`,
//!      optionally followed by `.`, `,`, `!` or `?`) is one token in a canonical form: nose removed,
//!      repeated mouth collapsed, letters uppercased (`:-)))` → `:)`, `:p` → `:P`);
//!    - the placeholders of [`crate::text::PLACEHOLDERS`] (`<url>`, `@user`, `<email>`, `<phone>`,
//!      `<card>`) are tokens as they are;
//!    - words are runs of letters, digits and `_`, continued over an apostrophe (`'` or `’`) that is
//!      followed by a letter; they are lowercased and `’` becomes `'`; all-digit words become the
//!      token `<num>`, which is not a word (no character n-grams, never negated);
//!    - a run of `!` or of `?` is one token `!` or `?`;
//!    - every other non-ASCII character that is not a letter, digit, general punctuation, a variation
//!      selector, a joiner, a skin-tone modifier or U+FFFD (emoji, ♥, ★) is a token of its own;
//!    - everything else (`#`, quotes, brackets, dashes) only separates tokens.
//! 3. **Negation scope**: after a negator ([`NEGATORS`] or any word ending in `n't`), words get the
//!    prefix `neg_` until the next `.`, `,`, `:`, `;`, `!`, `?`, `…`, the word `but` (itself unmarked),
//!    or the end of the text; an emoticon followed by such punctuation also ends it. The negator itself
//!    is not marked, but a negator inside a scope is (and the scope goes on). Placeholders, emoticons
//!    and symbols are never marked.
//! 4. **Features**, each hashed with a one-byte namespace so different kinds never share a string:
//!    lexicon prior tokens (rule 5), word n-grams of order 1..=`word_ngrams` over the (marked) tokens,
//!    then character n-grams of lengths `char_ngram_min..=char_ngram_max` of `<word>` for each word
//!    (unmarked; the whole `<word>` is skipped because the unigram already covers it).
//! 5. **Lexicon priors** (with a [`Lexicon`] and `lexicon_features`): for every token with a lexicon
//!    valence (looked up as it is, then lowercased, for emoticons like `XD`), a token for its rounded valence (sign flipped inside a negation scope), one token for the
//!    count of positive and one for the count of negative lexicon tokens (capped at 3), and copies
//!    standing for VADER's compound score `c` of the cleaned text, so many that they make up
//!    `lexicon_share` of the bag. Mean pooling then turns them into a fixed-weight vote, whatever the
//!    text length: the model learns how far to trust the lexicon. `lexicon_compound_encoding` says
//!    what the copies are: `bins`, the token of `c`'s bin (`lexicon_compound_bins` equal-width bins
//!    over `[-1, 1]`); `linear`, the anchor tokens `lin+`, `lin-` and `lin0` in proportion to
//!    `max(c, 0)`, `max(−c, 0)` and `1 − |c|` (rounded), so the vote is linear in `c` and `|c|`;
//!    `bins_and_linear` (the default since 2026-12-07), half the copies (rounded down) as bins and
//!    the rest as linear.
//! 6. **Ids**: FNV-1a 64 over `namespace byte ‖ token bytes` (bigrams joined by a space), finalised by
//!    murmur3's `fmix64`, then `1 + hash mod (buckets − 1)`; id 0 is [`PADDING_ID`]. The hash is
//!    fixed and portable (no per-process seed).
//! 7. **Order and cap**: the compound copies first (`lin+`, `lin-`, `lin0`, then the bin token), then
//!    the other lexicon tokens, unigrams,
//!    higher n-grams and character n-grams, in text order. Without lexicon features everything after
//!    the first `max_features` ids is dropped; with them the non-compound ids are cut to
//!    `⌊(1 − lexicon_share) · max_features⌋` first, so the copies always fit. Text without any token
//!    gives no ids at all.
//!
//! Any change that alters the ids emitted for any input (a rule above, the hash, the namespaces) must
//! bump [`FEATURIZER_VERSION`]; a change of defaults alone changes [`FeaturizerConfig::config_hash`]
//! instead, and so does a new option whose absent value keeps the old ids (as
//! `lexicon_compound_encoding` = `bins`: left out of the JSON, so older configurations keep their
//! hash; a build that predates an option refuses a configuration naming it, as an unknown field).
//! Serving refuses a model whose featurizer version it does not implement.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hashed::PADDING_ID;
use crate::lexicon::Lexicon;
use crate::text::{PLACEHOLDERS, clean};

/// Version of the feature ids this module emits; see the module documentation for the bump rule.
pub const FEATURIZER_VERSION: &str = "feat-v1";

/// Row lengths serving pads batches to, so that ONNX Runtime only ever sees a few input shapes.
pub const PAD_LENGTHS: [usize; 4] = [32, 64, 128, 256];

/// Words that open a negation scope (besides every word ending in `n't`).
pub const NEGATORS: [&str; 27] = [
    "not", "no", "never", "cannot", "nothing", "nobody", "none", "nowhere", "neither", "nor",
    "without", "aint", "arent", "cant", "couldnt", "didnt", "doesnt", "dont", "hadnt", "hasnt",
    "havent", "isnt", "shouldnt", "wasnt", "werent", "wont", "wouldnt",
];

/// Prefix of words inside a negation scope.
const NEGATION_PREFIX: &str = "neg_";

/// The token all-digit words are folded to.
const NUMBER_TOKEN: &str = "<num>";

/// Namespaces that keep different kinds of features apart in the hash space.
mod namespace {
    pub const WORD_NGRAM: u8 = b'w';
    pub const CHAR_NGRAM: u8 = b'c';
    pub const LEXICON_WORD: u8 = b'l';
    pub const LEXICON_COUNT: u8 = b'n';
    pub const LEXICON_COMPOUND: u8 = b'p';
}

/// Why a featurizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FeaturizerError {
    /// A configuration value is out of range.
    #[error("invalid featurizer configuration: {0}")]
    InvalidConfig(String),
    /// Lexicon features are on but no lexicon was given.
    #[error("featurizer configuration asks for lexicon features but no lexicon was given")]
    LexiconMissing,
}

/// What the featurizer emits. Every field changes the ids, so the whole struct goes into
/// [`FeaturizerConfig::config_hash`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturizerConfig {
    /// Rows of the embedding table including the padding row: ids are `1..buckets`.
    pub buckets: usize,
    /// Highest word n-gram order (0 = none, 1 = unigrams only, 2 = also bigrams, …).
    pub word_ngrams: usize,
    /// Shortest character n-gram inside a word; 0 turns character n-grams off.
    pub char_ngram_min: usize,
    /// Longest character n-gram inside a word.
    pub char_ngram_max: usize,
    /// Cap on ids per text; must fit the largest of [`PAD_LENGTHS`] so serving never truncates.
    pub max_features: usize,
    /// Whether words in a negation scope get the `neg_` prefix.
    pub negation: bool,
    /// Whether the lexicon prior tokens of rule 5 are emitted (needs a [`Lexicon`]).
    pub lexicon_features: bool,
    /// Equal-width bins of VADER's compound score over `[-1, 1]`.
    pub lexicon_compound_bins: usize,
    /// Share of the bag given to the compound copies, in `[0, 0.9]`; 0 emits one copy.
    pub lexicon_share: f32,
    /// How the compound score fills its share of the bag (rule 5). Configurations written before
    /// this field existed lack it and read as [`CompoundEncoding::Bins`], which is left out of the
    /// JSON (and so of [`FeaturizerConfig::config_hash`]): their ids and hashes are unchanged.
    #[serde(default, skip_serializing_if = "CompoundEncoding::is_bins")]
    pub lexicon_compound_encoding: CompoundEncoding,
}

/// How VADER's compound score `c` enters the bag (rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompoundEncoding {
    /// Every copy is the token of the score's bin: a free vote per bin (the only encoding before
    /// 2026-12-06).
    #[default]
    Bins,
    /// The copies are split between a positive, a negative and a zero anchor token in proportion
    /// to `max(c, 0)`, `max(−c, 0)` and `1 − |c|`: the vote is linear in `c` and `|c|`, so it
    /// cannot learn one corpus's odd bins.
    Linear,
    /// Half the copies (rounded down) are the bin token, the others split as `linear`.
    BinsAndLinear,
}

impl CompoundEncoding {
    fn is_bins(&self) -> bool {
        *self == Self::Bins
    }

    /// The name used in the configuration JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bins => "bins",
            Self::Linear => "linear",
            Self::BinsAndLinear => "bins_and_linear",
        }
    }
}

impl Default for FeaturizerConfig {
    fn default() -> Self {
        Self {
            buckets: 1 << 19,
            word_ngrams: 2,
            char_ngram_min: 3,
            char_ngram_max: 5,
            max_features: 256,
            negation: true,
            lexicon_features: true,
            lexicon_compound_bins: 20,
            lexicon_share: 0.5,
            lexicon_compound_encoding: CompoundEncoding::BinsAndLinear,
        }
    }
}

impl FeaturizerConfig {
    /// For serving text of the training domain (retraining on the stream's own labels): a smaller
    /// lexicon share lets the words speak. With [`crate::train::TrainConfig::in_domain`] it measured
    /// 0.73 macro-F1 on the time-ordered airline split but 0.53 on TweetEval; the defaults measured
    /// 0.66 and 0.57. Measured with the `bins` lexicon vote, which it keeps.
    pub fn in_domain() -> Self {
        Self {
            lexicon_share: 0.25,
            lexicon_compound_encoding: CompoundEncoding::Bins,
            ..Self::default()
        }
    }

    /// Checks ranges; [`Featurizer::new`] calls it.
    pub fn validate(&self) -> Result<(), FeaturizerError> {
        let invalid = |reason: String| Err(FeaturizerError::InvalidConfig(reason));
        if self.buckets < 2 || i64::try_from(self.buckets).is_err() {
            return invalid(format!("buckets must be at least 2, got {}", self.buckets));
        }
        if self.word_ngrams > 4 {
            return invalid(format!(
                "word_ngrams must be 0..=4, got {}",
                self.word_ngrams
            ));
        }
        if self.char_ngram_min > 0
            && (self.char_ngram_min > self.char_ngram_max || self.char_ngram_max > 8)
        {
            return invalid(format!(
                "character n-gram range {}..={} must satisfy 1 <= min <= max <= 8",
                self.char_ngram_min, self.char_ngram_max
            ));
        }
        let largest_pad = PAD_LENGTHS[PAD_LENGTHS.len() - 1];
        if self.max_features == 0 || self.max_features > largest_pad {
            return invalid(format!(
                "max_features must be 1..={largest_pad}, got {}",
                self.max_features
            ));
        }
        if self.lexicon_features && self.lexicon_compound_bins == 0 {
            return invalid("lexicon_compound_bins must be at least 1".to_owned());
        }
        if !(0.0..=0.9).contains(&self.lexicon_share) {
            return invalid(format!(
                "lexicon_share must be in [0, 0.9], got {}",
                self.lexicon_share
            ));
        }
        Ok(())
    }

    /// Hex sha256 of the canonical JSON `{"version": FEATURIZER_VERSION, "config": self}` (fields in
    /// declaration order): the identity of the id space, for the model card and the ONNX metadata.
    /// Two models are only comparable, and a model only servable, under the same hash.
    pub fn config_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// `{"version":…,"config":{…}}` with the fields in declaration order, exactly as `serde_json`
    /// writes it (a unit test holds the two together, so a new field cannot be forgotten here).
    /// Written by hand because the library does not otherwise need a JSON dependency.
    pub fn canonical_json(&self) -> String {
        format!(
            "{{\"version\":\"{FEATURIZER_VERSION}\",\"config\":{{\"buckets\":{},\"word_ngrams\":{},\
             \"char_ngram_min\":{},\"char_ngram_max\":{},\"max_features\":{},\"negation\":{},\
             \"lexicon_features\":{},\"lexicon_compound_bins\":{},\"lexicon_share\":{:?}{}}}}}",
            self.buckets,
            self.word_ngrams,
            self.char_ngram_min,
            self.char_ngram_max,
            self.max_features,
            self.negation,
            self.lexicon_features,
            self.lexicon_compound_bins,
            self.lexicon_share,
            match self.lexicon_compound_encoding {
                CompoundEncoding::Bins => String::new(),
                other => format!(",\"lexicon_compound_encoding\":\"{}\"", other.as_str()),
            },
        )
    }
}

/// The text → ids function shared by training and serving.
#[derive(Debug, Clone)]
pub struct Featurizer {
    config: FeaturizerConfig,
    lexicon: Option<Lexicon>,
    /// Reduction modulo `buckets - 1`, the id space after the padding id.
    slots: FastModulo,
}

/// What kind of token a [`Token`] is; decides which features it yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// A lowercased word: gets character n-grams and may be negated.
    Word,
    /// A placeholder, emoticon, `!`/`?` or symbol: used as it is.
    Other,
}

/// One token of the cleaned text: a span of its [`Tokens`] buffer.
#[derive(Debug, Clone, Copy)]
struct Token {
    /// Start of the token as hashed for word n-grams (with the negation prefix when negated).
    start: usize,
    /// Start of the token without the negation prefix (for lexicon look-ups and character n-grams).
    surface_start: usize,
    /// End of both.
    end: usize,
    kind: TokenKind,
    negated: bool,
}

/// The tokens of one text, their characters in one buffer (one allocation per text, not per token).
#[derive(Debug, Default)]
struct Tokens {
    buffer: String,
    spans: Vec<Token>,
}

impl Tokens {
    fn text(&self, token: &Token) -> &str {
        &self.buffer[token.start..token.end]
    }

    fn surface(&self, token: &Token) -> &str {
        &self.buffer[token.surface_start..token.end]
    }

    fn push_other(&mut self, text: &str) {
        let start = self.buffer.len();
        self.buffer.push_str(text);
        self.spans.push(Token {
            start,
            surface_start: start,
            end: self.buffer.len(),
            kind: TokenKind::Other,
            negated: false,
        });
    }

    fn push_word(&mut self, word: &str, negated: bool) {
        let start = self.buffer.len();
        if negated {
            self.buffer.push_str(NEGATION_PREFIX);
        }
        let surface_start = self.buffer.len();
        self.buffer.push_str(word);
        self.spans.push(Token {
            start,
            surface_start,
            end: self.buffer.len(),
            kind: TokenKind::Word,
            negated,
        });
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl Featurizer {
    /// A featurizer for `config`; `lexicon` is required when `config.lexicon_features` is on and
    /// ignored otherwise.
    pub fn new(
        config: FeaturizerConfig,
        lexicon: Option<Lexicon>,
    ) -> Result<Self, FeaturizerError> {
        config.validate()?;
        let lexicon = if config.lexicon_features {
            Some(lexicon.ok_or(FeaturizerError::LexiconMissing)?)
        } else {
            None
        };
        let slots = FastModulo::new((config.buckets - 1) as u64);
        Ok(Self {
            config,
            lexicon,
            slots,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FeaturizerConfig {
        &self.config
    }

    /// Feature ids of one raw text, in the deterministic order of the module documentation, at most
    /// `max_features` of them, each in `1..buckets`. Text without tokens (empty, only punctuation)
    /// gives no ids.
    pub fn featurize(&self, raw_text: &str) -> Vec<i64> {
        self.featurize_counted(raw_text).0
    }

    /// [`Featurizer::featurize`] of a text that is already the output of [`clean`] of this
    /// [`crate::NORMALIZER_VERSION`] (a `reviews.clean` event's text when its `normalizer_version`
    /// matches): the same ids, since cleaning is idempotent, without cleaning it a second time.
    pub fn featurize_cleaned(&self, cleaned: &str) -> Vec<i64> {
        self.features_of_cleaned(cleaned).0
    }

    /// [`Featurizer::featurize`] plus the number of tokens of the cleaned text (the trainer's
    /// tokens/s counts these, as fastText counts words).
    pub fn featurize_counted(&self, raw_text: &str) -> (Vec<i64>, usize) {
        self.features_of_cleaned(&clean(raw_text).text)
    }

    fn features_of_cleaned(&self, cleaned: &str) -> (Vec<i64>, usize) {
        let tokens = tokenize(cleaned, self.config.negation);
        if tokens.is_empty() {
            // Nothing to say: an all-padding row, which the model answers with its bias.
            return (Vec::new(), 0);
        }
        let mut sink = IdSink::new(&self.config);

        let mut compound = None;
        if let Some(lexicon) = &self.lexicon {
            compound = Some(self.lexicon_tokens(lexicon, cleaned, &tokens, &mut sink));
        }
        self.word_ngrams(&tokens, &mut sink);
        self.char_ngrams(&tokens, &mut sink);

        let mut ids = sink.ids;
        if let Some(compound_value) = compound {
            let bin = compound_bin(compound_value, self.config.lexicon_compound_bins);
            let mut text = SmallText::new();
            let _ = write!(text, "{bin}");
            let compound_id = self.id(namespace::LEXICON_COMPOUND, &[text.as_bytes()]);
            let share = f64::from(self.config.lexicon_share);
            let budget = self.config.max_features;
            // The other features keep (1 − share) of the budget; the copies then make up `share` of
            // the bag: c / (c + n) = share.
            // At least one slot stays for the copies (a share of 0 still emits one).
            let others_budget = (((1.0 - share) * budget as f64).floor() as usize)
                .max(1)
                .min(budget - 1);
            ids.truncate(others_budget);
            let wanted = (share / (1.0 - share) * ids.len() as f64).round() as usize;
            let copies = wanted.clamp(1, budget - ids.len());
            let (bin_copies, linear_copies) = match self.config.lexicon_compound_encoding {
                CompoundEncoding::Bins => (copies, 0),
                CompoundEncoding::Linear => (0, copies),
                CompoundEncoding::BinsAndLinear => (copies / 2, copies - copies / 2),
            };
            let counts = linear_anchor_counts(compound_value, linear_copies);
            // The default (`bins`) hashes no anchor.
            let anchors = LINEAR_ANCHORS.iter().zip(counts).flat_map(|(name, count)| {
                let id = (count > 0).then(|| self.id(namespace::LEXICON_COMPOUND, &[name]));
                id.into_iter()
                    .flat_map(move |id| std::iter::repeat_n(id, count))
            });
            let copies = anchors.chain(std::iter::repeat_n(compound_id, bin_copies));
            // In place: the sink reserved the whole budget, so this moves ids without reallocating.
            ids.splice(0..0, copies);
        }
        ids.truncate(self.config.max_features);
        (ids, tokens.len())
    }

    /// Featurizes `texts` once each and pads them as serving does ([`pad_rows`]). Returns
    /// `(ids, rows, cols)`, the shape of the ONNX input.
    pub fn batch_padded<S: AsRef<str>>(&self, texts: &[S]) -> (Vec<i64>, usize, usize) {
        let features: Vec<Vec<i64>> = texts
            .iter()
            .map(|text| self.featurize(text.as_ref()))
            .collect();
        pad_rows(&features)
    }

    /// Featurizes `texts` into one row-major `[rows][cols]` matrix padded with [`PADDING_ID`], where
    /// `cols = pad_to`; rows longer than `pad_to` are cut (choose `pad_to` with [`pad_length`] to
    /// avoid that). Returns `(ids, rows, cols)`, the shape of the ONNX input.
    pub fn batch<S: AsRef<str>>(&self, texts: &[S], pad_to: usize) -> (Vec<i64>, usize, usize) {
        let mut ids = vec![PADDING_ID; texts.len() * pad_to];
        for (row, text) in ids.chunks_mut(pad_to.max(1)).zip(texts) {
            let features = self.featurize(text.as_ref());
            let kept = features.len().min(pad_to);
            row[..kept].copy_from_slice(&features[..kept]);
        }
        (ids, texts.len(), pad_to)
    }

    /// Rule 5 except the compound copies, which are added last; returns VADER's compound score.
    fn lexicon_tokens(
        &self,
        lexicon: &Lexicon,
        cleaned: &str,
        tokens: &Tokens,
        sink: &mut IdSink,
    ) -> f64 {
        let mut positive = 0usize;
        let mut negative = 0usize;
        for token in &tokens.spans {
            let surface = tokens.surface(token);
            // Emoticons keep their case (`:D`), the lexicon lists some only in lower case (`xd`).
            // Words are lowercased already: only a token lowercasing changes needs the second look-up.
            let Some(valence) = lexicon.valence(surface).or_else(|| {
                changes_when_lowercased(surface)
                    .then(|| lexicon.valence(&surface.to_lowercase()))
                    .flatten()
            }) else {
                continue;
            };
            let signed = if token.negated { -valence } else { valence };
            if signed > 0.0 {
                positive += 1;
            } else if signed < 0.0 {
                negative += 1;
            }
            let rounded = signed.round() as i64;
            let mut text = SmallText::new();
            let _ = write!(text, "{rounded:+}");
            sink.push(self.id(namespace::LEXICON_WORD, &[text.as_bytes()]));
        }
        for (name, count) in [("pos", positive), ("neg", negative)] {
            let capped = count.min(3);
            let mut text = SmallText::new();
            let _ = write!(text, "{name}{capped}");
            sink.push(self.id(namespace::LEXICON_COUNT, &[text.as_bytes()]));
        }
        lexicon.score(cleaned).compound
    }

    /// Rule 4: word n-grams of order 1..=word_ngrams, all unigrams first, then bigrams, …
    fn word_ngrams(&self, tokens: &Tokens, sink: &mut IdSink) {
        for order in 1..=self.config.word_ngrams {
            for window in tokens.spans.windows(order) {
                let mut hash = FeatureHash::new(namespace::WORD_NGRAM);
                for (position, token) in window.iter().enumerate() {
                    if position > 0 {
                        hash.write(b" ");
                    }
                    hash.write(tokens.text(token).as_bytes());
                }
                sink.push(hash.id(&self.slots));
            }
        }
    }

    /// Rule 4: character n-grams of `<word>` for each word token.
    fn char_ngrams(&self, tokens: &Tokens, sink: &mut IdSink) {
        let (min, max) = (self.config.char_ngram_min, self.config.char_ngram_max);
        if min == 0 {
            return;
        }
        let mut bounded = String::new();
        let mut boundaries = Vec::new();
        for token in tokens
            .spans
            .iter()
            .filter(|token| token.kind == TokenKind::Word)
        {
            bounded.clear();
            bounded.push('<');
            bounded.push_str(tokens.surface(token));
            bounded.push('>');
            boundaries.clear();
            boundaries.extend(bounded.char_indices().map(|(index, _)| index));
            boundaries.push(bounded.len());
            let chars = boundaries.len() - 1;
            for length in min..=max.min(chars) {
                for start in 0..=chars - length {
                    if length == chars {
                        continue; // the whole `<word>`: the unigram covers it
                    }
                    let slice = &bounded[boundaries[start]..boundaries[start + length]];
                    sink.push(self.id(namespace::CHAR_NGRAM, &[slice.as_bytes()]));
                }
            }
        }
    }

    fn id(&self, namespace: u8, parts: &[&[u8]]) -> i64 {
        let mut hash = FeatureHash::new(namespace);
        for part in parts {
            hash.write(part);
        }
        hash.id(&self.slots)
    }
}

/// Lemire's "faster remainder by direct computation" for a divisor fixed at construction: exact for
/// every 64-bit numerator (a 128-bit magic number), and a few multiplications instead of a 64-bit
/// division per feature id.
#[derive(Debug, Clone, Copy)]
struct FastModulo {
    divisor: u64,
    magic: u128,
}

impl FastModulo {
    fn new(divisor: u64) -> Self {
        assert!(divisor > 0, "modulo by zero");
        Self {
            divisor,
            // ceil(2^128 / d), computed without overflow as floor((2^128 - 1) / d) + 1.
            magic: (u128::MAX / u128::from(divisor)).wrapping_add(1),
        }
    }

    fn reduce(&self, value: u64) -> u64 {
        if self.divisor == 1 {
            return 0;
        }
        let low_bits = self.magic.wrapping_mul(u128::from(value));
        // The high 128 bits of the 256-bit product low_bits × d, of which the top 64 are the result.
        let divisor = u128::from(self.divisor);
        let bottom = ((low_bits & u128::from(u64::MAX)) * divisor) >> 64;
        let top = (low_bits >> 64) * divisor;
        ((top + bottom) >> 64) as u64
    }
}

/// A stack buffer for the few short labels hashed into lexicon ids (`+2`, `pos3`, `7`).
struct SmallText {
    bytes: [u8; 24],
    len: usize,
}

impl SmallText {
    fn new() -> Self {
        Self {
            bytes: [0; 24],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Write for SmallText {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether `text.to_lowercase()` differs from `text` (without allocating).
fn changes_when_lowercased(text: &str) -> bool {
    text.chars().any(|ch| {
        let mut lower = ch.to_lowercase();
        !(lower.next() == Some(ch) && lower.next().is_none())
    })
}

/// Collects ids up to the cap, so long texts cost no more than `max_features` hashes.
struct IdSink {
    ids: Vec<i64>,
    cap: usize,
}

impl IdSink {
    fn new(config: &FeaturizerConfig) -> Self {
        Self {
            ids: Vec::with_capacity(config.max_features),
            cap: config.max_features,
        }
    }

    fn push(&mut self, id: i64) {
        if self.ids.len() < self.cap {
            self.ids.push(id);
        }
    }
}

/// Featurized rows as one row-major `[rows][cols]` matrix padded with [`PADDING_ID`], `cols` the
/// [`pad_length`] of the longest row (the few serving shapes the ONNX session sees; a longer row is
/// cut). Returns `(ids, rows, cols)`, the shape of the ONNX input.
pub fn pad_rows<R: AsRef<[i64]>>(rows: &[R]) -> (Vec<i64>, usize, usize) {
    let longest = rows.iter().map(|row| row.as_ref().len()).max().unwrap_or(0);
    let cols = pad_length(longest);
    let mut ids = vec![PADDING_ID; rows.len() * cols];
    for (out, row) in ids.chunks_mut(cols).zip(rows) {
        let kept = row.as_ref().len().min(cols);
        out[..kept].copy_from_slice(&row.as_ref()[..kept]);
    }
    (ids, rows.len(), cols)
}

/// The smallest of [`PAD_LENGTHS`] that holds `longest_row` ids, or the largest one when none does.
pub fn pad_length(longest_row: usize) -> usize {
    PAD_LENGTHS
        .iter()
        .copied()
        .find(|&length| length >= longest_row)
        .unwrap_or(PAD_LENGTHS[PAD_LENGTHS.len() - 1])
}

/// The tokens `linear` splits the compound copies between: positive, negative, zero.
const LINEAR_ANCHORS: [&[u8]; 3] = [b"lin+", b"lin-", b"lin0"];

/// How many of `copies` go to each of [`LINEAR_ANCHORS`] for a compound score: `max(c, 0)`,
/// `max(−c, 0)` and `1 − |c|` of them, rounded, summing to `copies`.
fn linear_anchor_counts(compound: f64, copies: usize) -> [usize; 3] {
    let compound = compound.clamp(-1.0, 1.0);
    let signed = (compound.abs() * copies as f64).round() as usize;
    let rest = copies - signed;
    if compound >= 0.0 {
        [signed, 0, rest]
    } else {
        [0, signed, rest]
    }
}

/// Bin of a compound score in `[-1, 1]` among `bins` equal-width bins (1.0 falls in the last one).
fn compound_bin(compound: f64, bins: usize) -> usize {
    let position = (compound.clamp(-1.0, 1.0) + 1.0) / 2.0 * bins as f64;
    (position.floor() as usize).min(bins - 1)
}

/// FNV-1a 64 of `bytes` finalised by murmur3's `fmix64`: the portable hash behind feature ids, also
/// used for stable data splits.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash = FeatureHash(FeatureHash::OFFSET_BASIS);
    hash.write(bytes);
    hash.finish()
}

/// FNV-1a 64 with a namespace byte, finalised by murmur3's `fmix64` so that the low bits used by the
/// modulo are well mixed even for short strings.
struct FeatureHash(u64);

impl FeatureHash {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(namespace: u8) -> Self {
        let mut hash = Self(Self::OFFSET_BASIS);
        hash.write(&[namespace]);
        hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        let mut mixed = self.0;
        mixed ^= mixed >> 33;
        mixed = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd);
        mixed ^= mixed >> 33;
        mixed = mixed.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        mixed ^= mixed >> 33;
        mixed
    }

    /// `1 + hash mod (buckets - 1)`: never the padding id (`slots` reduces modulo `buckets - 1`).
    fn id(&self, slots: &FastModulo) -> i64 {
        (1 + slots.reduce(self.finish())) as i64
    }
}

/// Rule 2 and 3: the tokens of a cleaned text, with negation marks when `negation` is on.
fn tokenize(cleaned: &str, negation: bool) -> Tokens {
    let mut tokens = Tokens {
        buffer: String::with_capacity(cleaned.len() + 16),
        spans: Vec::with_capacity(cleaned.len() / 4 + 1),
    };
    let mut word = String::new();
    let mut in_scope = false;
    for chunk in cleaned.split(' ').filter(|chunk| !chunk.is_empty()) {
        if let Some((emoticon, ends_scope)) = emoticon(chunk) {
            tokens.push_other(&emoticon);
            in_scope &= !ends_scope;
            continue;
        }
        let mut rest = chunk;
        while let Some(ch) = rest.chars().next() {
            if let Some(placeholder) = PLACEHOLDERS.iter().find(|p| rest.starts_with(**p)) {
                tokens.push_other(placeholder);
                rest = &rest[placeholder.len()..];
            } else if ch.is_alphanumeric() || ch == '_' {
                let length = word_length(rest);
                normalize_word(&rest[..length], &mut word);
                rest = &rest[length..];
                // "but" closes a scope before it could be marked itself.
                if word == "but" {
                    in_scope = false;
                }
                let negated = negation && in_scope;
                if negation && is_negator(&word) {
                    in_scope = true;
                }
                if word == NUMBER_TOKEN {
                    tokens.push_other(NUMBER_TOKEN);
                } else {
                    tokens.push_word(&word, negated);
                }
            } else if ch == '!' || ch == '?' {
                tokens.push_other(if ch == '!' { "!" } else { "?" });
                rest = rest.trim_start_matches(ch);
                in_scope = false;
            } else {
                if matches!(ch, '.' | ',' | ':' | ';' | '…') {
                    in_scope = false;
                } else if is_symbol(ch) {
                    tokens.push_other(&rest[..ch.len_utf8()]);
                }
                rest = &rest[ch.len_utf8()..];
            }
        }
    }
    tokens
}

/// Byte length of the word at the start of `text`: letters, digits and `_`, continued over an
/// apostrophe that is followed by a letter.
fn word_length(text: &str) -> usize {
    let mut end = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((index, ch)) = chars.next() {
        let continues = ch.is_alphanumeric()
            || ch == '_'
            || (matches!(ch, '\'' | '’')
                && end > 0
                && chars.peek().is_some_and(|(_, next)| next.is_alphabetic()));
        if !continues {
            break;
        }
        end = index + ch.len_utf8();
    }
    end
}

/// Lowercase, `’` → `'`, all-digit words → `<num>`; written into `out` (a reused buffer).
fn normalize_word(word: &str, out: &mut String) {
    out.clear();
    if word.chars().all(|ch| ch.is_ascii_digit()) {
        out.push_str(NUMBER_TOKEN);
        return;
    }
    out.extend(
        word.chars()
            .flat_map(char::to_lowercase)
            .map(|ch| if ch == '’' { '\'' } else { ch }),
    );
}

fn is_negator(word: &str) -> bool {
    word.ends_with("n't") || NEGATORS.contains(&word)
}

/// Non-ASCII characters that are tokens of their own: emoji and other symbols.
fn is_symbol(ch: char) -> bool {
    !ch.is_ascii()
        && !ch.is_alphanumeric()
        && !matches!(
            ch,
            '\u{80}'..='\u{bf}'          // Latin-1 punctuation and spacing (« » ¡ ¿ NBSP)
            | '\u{300}'..='\u{36f}'      // combining diacritics
            | '\u{2000}'..='\u{206f}'    // general punctuation (quotes, dashes, …, joiners)
            | '\u{fe00}'..='\u{fe0f}'    // variation selectors
            | '\u{1f3fb}'..='\u{1f3ff}'  // skin-tone modifiers
            | '\u{e0020}'..='\u{e007f}'  // emoji tag characters
            | '\u{fffd}'                 // replacement character of undecodable bytes
        )
}

/// The canonical emoticon of a whole chunk, and whether trailing punctuation after it ends a
/// negation scope; `None` when the chunk is not an emoticon.
fn emoticon(chunk: &str) -> Option<(String, bool)> {
    let core = chunk.trim_end_matches(['.', ',', '!', '?']);
    let ends_scope = core.len() != chunk.len();
    canonical_emoticon(core).map(|canonical| (canonical, ends_scope))
}

/// Rule 2's emoticon grammar: `[<>]? eyes nose? mouth+`, `mouth+ nose? eyes`, `<3`, `</3`, `xD`,
/// `-_-`, `^_^`, `o_O`.
fn canonical_emoticon(core: &str) -> Option<String> {
    const EYES: &[char] = &[':', ';', '='];
    const NOSES: &[char] = &['-', 'o', '\'', '^'];
    const MOUTHS: &[char] = &[
        ')', ']', '(', '[', 'D', 'd', 'P', 'p', '/', '\\', '|', '*', '3', 'O', 'o', 'S', 's', '@',
    ];
    const REVERSED_MOUTHS: &[char] = &[')', '(', ']', '['];
    match core {
        "<3" | "<33" | "<333" => return Some("<3".to_owned()),
        "</3" => return Some("</3".to_owned()),
        "-_-" | "^_^" | "^^" | "o_o" | "o_O" | "O_o" | "O_O" => {
            return Some(core.to_ascii_lowercase());
        }
        _ => {}
    }
    if core.len() >= 2
        && core.len() <= 4
        && core.is_ascii()
        && matches!(core.as_bytes()[0], b'x' | b'X')
        && core[1..].chars().all(|ch| ch == 'D')
    {
        return Some("XD".to_owned());
    }
    let chars: Vec<char> = core.chars().collect();
    if chars.len() < 2 || chars.len() > 8 {
        return None;
    }
    let mut start = 0;
    if matches!(chars[0], '<' | '>') {
        start = 1;
    }
    // eyes nose? mouth+
    if start < chars.len() && EYES.contains(&chars[start]) {
        let eyes = chars[start];
        let mut position = start + 1;
        if position < chars.len() && NOSES.contains(&chars[position]) && position + 1 < chars.len()
        {
            position += 1;
        }
        let mouth = &chars[position..];
        if !mouth.is_empty() && mouth.iter().all(|ch| *ch == mouth[0]) && MOUTHS.contains(&mouth[0])
        {
            let mouth_char = mouth[0].to_ascii_uppercase();
            return Some(format!("{eyes}{mouth_char}"));
        }
        return None;
    }
    // mouth+ nose? eyes, as in `(:` or `(-:`
    let last = chars[chars.len() - 1];
    if EYES.contains(&last) && start == 0 {
        let mut end = chars.len() - 1;
        if end > 1 && NOSES.contains(&chars[end - 1]) {
            end -= 1;
        }
        let mouth = &chars[..end];
        if !mouth.is_empty()
            && mouth.iter().all(|ch| *ch == mouth[0])
            && REVERSED_MOUTHS.contains(&mouth[0])
        {
            return Some(format!("{}{last}", mouth[0]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few lexicon entries with their real VADER valences.
    fn small_lexicon() -> Lexicon {
        Lexicon::parse(
            "good\t1.9\nbad\t-2.5\ngreat\t3.1\nlike\t2.0\n:)\t2.0\n:(\t-1.9\nlost\t-1.3\nxd\t2.7\n",
        )
        .unwrap()
    }

    fn tokens_of(raw: &str) -> Vec<String> {
        let tokens = tokenize(&clean(raw).text, true);
        tokens
            .spans
            .iter()
            .map(|token| tokens.text(token).to_owned())
            .collect()
    }

    fn featurizer(config: FeaturizerConfig) -> Featurizer {
        let lexicon = config.lexicon_features.then(small_lexicon);
        Featurizer::new(config, lexicon).unwrap()
    }

    /// Words only, no lexicon, no character n-grams: easy to count.
    fn words_only() -> FeaturizerConfig {
        FeaturizerConfig {
            char_ngram_min: 0,
            lexicon_features: false,
            ..FeaturizerConfig::default()
        }
    }

    #[test]
    fn tokenizer_rules() {
        let cases: &[(&str, &[&str])] = &[
            (
                "Great flight!!! Thanks @united",
                &["great", "flight", "!", "thanks", "@user"],
            ),
            (
                "Flight 1234 delayed 3 hrs",
                &["flight", "<num>", "delayed", "<num>", "hrs"],
            ),
            (
                "#Coachella2015 was AMAZING 😍😍",
                &["coachella2015", "was", "amazing", "😍", "😍"],
            ),
            (
                "xD :-))) <3 ;p (: -_- :(.",
                &["XD", ":)", "<3", ";P", "(:", "-_-", ":("],
            ),
            ("9:30 am", &["<num>", "<num>", "am"]),
            ("users' bags", &["users", "bags"]),
            ("I can’t wait", &["i", "can't", "neg_wait"]),
            (
                "Email me at someone@example.com",
                &["email", "me", "at", "<email>"],
            ),
            ("see http://t.co/abc now", &["see", "<url>", "now"]),
            ("Café olé", &["café", "olé"]),
            ("Really?!?", &["really", "?", "!", "?"]),
            (
                "“quoted” — dash… (brackets)",
                &["quoted", "dash", "brackets"],
            ),
            ("♥ ★ ✈️", &["♥", "★", "✈"]),
            ("", &[]),
            ("... !!", &["!"]),
        ];
        for (raw, expected) in cases {
            assert_eq!(tokens_of(raw), *expected, "tokens of {raw:?}");
        }
    }

    #[test]
    fn negation_scope_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("not good. great", &["not", "neg_good", "great"]),
            ("not 2 good", &["not", "<num>", "neg_good"]),
            (
                "I don't like it, but ok",
                &["i", "don't", "neg_like", "neg_it", "but", "ok"],
            ),
            (
                "don't like it but ok",
                &["don't", "neg_like", "neg_it", "but", "ok"],
            ),
            (
                "never again :( sad",
                &["never", "neg_again", ":(", "neg_sad"],
            ),
            ("never again :(. sad", &["never", "neg_again", ":(", "sad"]),
            ("no way! yes", &["no", "neg_way", "!", "yes"]),
            (
                "nothing works without wifi",
                &["nothing", "neg_works", "neg_without", "neg_wifi"],
            ),
            ("isnt it; fine", &["isnt", "neg_it", "fine"]),
            (
                "cannot @user <url> wait",
                &["cannot", "@user", "<url>", "neg_wait"],
            ),
            ("notable knowledge", &["notable", "knowledge"]),
        ];
        for (raw, expected) in cases {
            assert_eq!(tokens_of(raw), *expected, "tokens of {raw:?}");
        }
        let tokens = tokenize("not good", false);
        let unmarked: Vec<&str> = tokens
            .spans
            .iter()
            .map(|token| tokens.text(token))
            .collect();
        assert_eq!(unmarked, ["not", "good"], "negation off leaves words alone");
    }

    #[test]
    fn emoticon_grammar() {
        let cases = [
            (":)", Some(":)")),
            (":-)", Some(":)")),
            (":D", Some(":D")),
            (":d", Some(":D")),
            ("=))", Some("=)")),
            (">:(", Some(":(")),
            (":'(", Some(":(")),
            (":o", Some(":O")),
            ("(-:", Some("(:")),
            ("XDD", Some("XD")),
            ("</3", Some("</3")),
            ("o_O", Some("o_o")),
            (":", None),
            ("::", None),
            ("D:", None),
            ("xd", None),
            (":)x", None),
            ("hello", None),
        ];
        for (chunk, expected) in cases {
            assert_eq!(
                canonical_emoticon(chunk).as_deref(),
                expected,
                "emoticon {chunk:?}"
            );
        }
    }

    #[test]
    fn word_and_character_ngram_counts() {
        let words = featurizer(words_only());
        assert_eq!(words.featurize("a b c").len(), 5, "3 unigrams + 2 bigrams");
        let unigrams = featurizer(FeaturizerConfig {
            word_ngrams: 1,
            ..words_only()
        });
        assert_eq!(unigrams.featurize("a b c").len(), 3);
        let trigrams = featurizer(FeaturizerConfig {
            word_ngrams: 3,
            ..words_only()
        });
        assert_eq!(trigrams.featurize("a b c").len(), 6);

        let chars = featurizer(FeaturizerConfig {
            word_ngrams: 0,
            char_ngram_min: 3,
            char_ngram_max: 5,
            ..words_only()
        });
        // "<good>": 4 trigrams, 3 four-grams, 2 five-grams.
        assert_eq!(chars.featurize("good").len(), 9);
        // "<ab>": 2 trigrams; the 4-gram is the whole word and left to the unigram.
        assert_eq!(chars.featurize("ab").len(), 2);
        // Character n-grams count characters, not bytes.
        assert_eq!(chars.featurize("café").len(), 9);
        // Placeholders, emoticons and symbols get none; negated words get the unmarked word's.
        assert_eq!(chars.featurize("@user :) ♥ 42").len(), 0);
        // "<not>" has 3 trigrams and 2 four-grams.
        assert_eq!(
            chars.featurize("not good")[5..],
            chars.featurize("good")[..]
        );
    }

    #[test]
    fn lexicon_tokens_and_compound_share() {
        let config = FeaturizerConfig {
            lexicon_features: true,
            lexicon_share: 0.5,
            lexicon_compound_encoding: CompoundEncoding::Bins,
            ..words_only()
        };
        let with_lexicon = featurizer(config.clone());
        let ids = with_lexicon.featurize("good flight but lost bag");
        let words = featurizer(words_only()).featurize("good flight but lost bag");
        // 9 word n-grams + 2 valence tokens (good, lost) + 2 count tokens = 13 others, 13 copies.
        assert_eq!(ids.len(), 26);
        assert!(
            ids[..13].iter().all(|&id| id == ids[0]),
            "the compound-bin copies come first"
        );
        assert_eq!(
            ids[ids.len() - words.len()..],
            words[..],
            "word n-grams follow the lexicon tokens"
        );

        // A negated lexicon word flips the sign of its valence token: "not good" ≈ valence −2.
        let lexicon_only = featurizer(FeaturizerConfig {
            word_ngrams: 0,
            lexicon_share: 0.0,
            ..config
        });
        let negated = lexicon_only.featurize("not good");
        let plain_bad = lexicon_only.featurize("bad");
        assert_eq!(
            negated[1],
            lexicon_only.id(namespace::LEXICON_WORD, &[b"-2"])
        );
        assert_eq!(
            plain_bad[1],
            lexicon_only.id(namespace::LEXICON_WORD, &[b"-3"])
        );
        assert_eq!(
            negated.len(),
            4,
            "one compound copy, one valence token, two counts"
        );
        // `XD` is listed as `xd`: found through the lower-case fallback (valence 2.7 → +3).
        let laughing = lexicon_only.featurize("XD");
        assert_eq!(
            laughing[1],
            lexicon_only.id(namespace::LEXICON_WORD, &[b"+3"])
        );
    }

    #[test]
    fn compound_bins_cover_the_range() {
        assert_eq!(compound_bin(-1.0, 20), 0);
        assert_eq!(compound_bin(-0.95, 20), 0);
        assert_eq!(compound_bin(-0.85, 20), 1);
        assert_eq!(compound_bin(0.0, 20), 10);
        assert_eq!(compound_bin(0.999, 20), 19);
        assert_eq!(compound_bin(1.0, 20), 19);
        assert_eq!(compound_bin(7.0, 20), 19, "clamped");
    }

    #[test]
    fn ids_are_in_range_deterministic_and_capped() {
        let featurizer = featurizer(FeaturizerConfig {
            buckets: 97,
            max_features: 40,
            ..FeaturizerConfig::default()
        });
        let text = "The crew was GREAT but the flight was delayed 3 hours and I lost my bag :( never again!!! <url>";
        let ids = featurizer.featurize(text);
        assert_eq!(ids.len(), 40);
        assert!(ids.iter().all(|&id| (1..97).contains(&id)), "{ids:?}");
        assert_eq!(ids, featurizer.featurize(text));
        assert_eq!(featurizer.featurize(""), Vec::<i64>::new());
        assert_eq!(featurizer.featurize(" ... "), Vec::<i64>::new());

        // A lexicon share of 0 keeps one slot for its single copy, also when the rest fills the cap.
        let no_share = |max_features| {
            self::featurizer(FeaturizerConfig {
                buckets: 97,
                max_features,
                lexicon_share: 0.0,
                ..FeaturizerConfig::default()
            })
        };
        let copy = no_share(256).featurize(text)[0];
        for max_features in [1, 12] {
            let ids = no_share(max_features).featurize(text);
            assert_eq!(ids.len(), max_features);
            assert_eq!(ids[0], copy, "the copy comes first");
        }
    }

    /// Serving may receive text that ingest already cleaned; `clean` is idempotent, so the ids match.
    #[test]
    fn raw_and_cleaned_text_give_the_same_ids() {
        let featurizer = featurizer(FeaturizerConfig::default());
        for raw in [
            "@United   thanks &amp; NOOOOO http://x.co/1",
            "cafe\u{301} 😍 call 555-123-4567",
            "I can’t",
        ] {
            assert_eq!(
                featurizer.featurize(raw),
                featurizer.featurize(&clean(raw).text),
                "{raw:?}"
            );
        }
    }

    /// Pins the hash and a few ids. If this fails, the emitted ids changed: bump
    /// [`FEATURIZER_VERSION`] and update the expected values.
    #[test]
    fn fast_modulo_equals_the_remainder() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let divisors = [
            1,
            2,
            3,
            7,
            (1 << 19) - 1,
            (1 << 20) - 1,
            (1 << 21) - 1,
            1_000_003,
            u64::from(u32::MAX),
            u64::MAX / 3,
            u64::MAX,
        ];
        for divisor in divisors {
            let modulo = FastModulo::new(divisor);
            for value in [
                0,
                1,
                divisor - 1,
                divisor,
                divisor.wrapping_add(1),
                u64::MAX,
            ] {
                assert_eq!(modulo.reduce(value), value % divisor, "{value} % {divisor}");
            }
            for _ in 0..20_000 {
                let value = next();
                assert_eq!(modulo.reduce(value), value % divisor, "{value} % {divisor}");
            }
        }
    }

    #[test]
    fn lowercase_change_detection_matches_to_lowercase() {
        for text in [
            ":D", "xd", "XD", "<3", "ǅ", "Σ", "ß", "İ", "ok", "", "😀", ":P",
        ] {
            assert_eq!(
                changes_when_lowercased(text),
                text.to_lowercase() != text,
                "{text:?}"
            );
        }
        let mut text = SmallText::new();
        write!(text, "{:+}", -3i64).unwrap();
        assert_eq!(text.as_bytes(), b"-3");
    }

    #[test]
    fn ids_are_pinned_for_this_version() {
        assert_eq!(FEATURIZER_VERSION, "feat-v1");
        assert_eq!(stable_hash(b""), PINNED_EMPTY_HASH);
        assert_eq!(stable_hash(b"sentiflow"), PINNED_SENTIFLOW_HASH);
        // Models trained before `lexicon_compound_encoding` existed read as `bins`: their ids must
        // never change.
        let bins = featurizer(FeaturizerConfig {
            buckets: 1 << 20,
            lexicon_compound_encoding: CompoundEncoding::Bins,
            ..FeaturizerConfig::default()
        });
        assert_eq!(bins.featurize("Not good :("), PINNED_NOT_GOOD_IDS);
        // The default splits the 23 copies: 12 as `linear` (VADER's compound of "Not good :(" is 0,
        // as in VADER itself: all 12 on the zero anchor), then 11 bin copies.
        let default = featurizer(FeaturizerConfig {
            buckets: 1 << 20,
            ..FeaturizerConfig::default()
        });
        let ids = default.featurize("Not good :(");
        let anchor = |name: &[u8]| default.id(namespace::LEXICON_COMPOUND, &[name]);
        let anchors = [anchor(b"lin+"), anchor(b"lin-"), anchor(b"lin0")];
        assert_eq!(anchors, PINNED_LINEAR_ANCHORS);
        assert_eq!(ids[..12], [anchors[2]; 12]);
        assert_eq!(ids[12..23], PINNED_NOT_GOOD_IDS[..11]);
        assert_eq!(
            ids[23..],
            PINNED_NOT_GOOD_IDS[23..],
            "the other ids as before"
        );
    }

    #[test]
    fn linear_anchor_counts_follow_the_compound_score() {
        assert_eq!(linear_anchor_counts(0.0, 12), [0, 0, 12]);
        assert_eq!(linear_anchor_counts(1.0, 12), [12, 0, 0]);
        assert_eq!(linear_anchor_counts(-0.5, 12), [0, 6, 6]);
        assert_eq!(linear_anchor_counts(0.26, 10), [3, 0, 7], "rounded");
        assert_eq!(linear_anchor_counts(-3.0, 5), [0, 5, 0], "clamped");
        assert_eq!(linear_anchor_counts(0.7, 0), [0, 0, 0]);
    }

    #[test]
    fn compound_encodings_share_the_copies_and_keep_the_other_ids() {
        let text = "good flight but lost bag";
        let with = |encoding| {
            featurizer(FeaturizerConfig {
                lexicon_features: true,
                lexicon_compound_encoding: encoding,
                ..words_only()
            })
        };
        let bins = with(CompoundEncoding::Bins).featurize(text);
        let compound = Lexicon::score(&small_lexicon(), &clean(text).text).compound;
        let copies = 13;
        for encoding in [CompoundEncoding::Linear, CompoundEncoding::BinsAndLinear] {
            let featurizer = with(encoding);
            let ids = featurizer.featurize(text);
            assert_eq!(
                ids.len(),
                bins.len(),
                "{encoding:?}: the same share of the bag"
            );
            assert_eq!(
                ids[copies..],
                bins[copies..],
                "{encoding:?}: other ids unchanged"
            );
            let (bin_copies, linear_copies) = match encoding {
                CompoundEncoding::Linear => (0, copies),
                _ => (copies / 2, copies - copies / 2),
            };
            let counts = linear_anchor_counts(compound, linear_copies);
            for (anchor, count) in LINEAR_ANCHORS.iter().zip(counts) {
                let id = featurizer.id(namespace::LEXICON_COMPOUND, &[anchor]);
                assert_eq!(
                    ids[..copies].iter().filter(|&&other| other == id).count(),
                    count,
                    "{encoding:?}: {}",
                    String::from_utf8_lossy(anchor)
                );
            }
            assert_eq!(
                ids[..copies].iter().filter(|&&id| id == bins[0]).count(),
                bin_copies,
                "{encoding:?}: bin copies"
            );
        }
        assert!(
            linear_anchor_counts(compound, copies)[1] > 0,
            "after `but` the text scores negative: {compound}"
        );
    }

    // Cross-checked with an independent Python implementation of FNV-1a 64 + fmix64.
    const PINNED_EMPTY_HASH: u64 = 17_280_346_270_528_514_342;
    const PINNED_SENTIFLOW_HASH: u64 = 5_931_917_140_695_248_535;
    /// 23 compound-bin copies, the valence tokens of `neg_good` and `:(` (both −2), the counts
    /// `pos0` and `neg2`, the unigrams `not`, `neg_good`, `:(` (cross-checked in Python), the bigrams,
    /// then the character n-grams of `not` and `good`.
    /// The ids of `lin+`, `lin-` and `lin0` in 2^20 buckets (cross-checked in Python).
    const PINNED_LINEAR_ANCHORS: [i64; 3] = [988580, 163856, 547771];
    const PINNED_NOT_GOOD_IDS: &[i64] = &[
        56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898,
        56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 56898, 832481, 832481,
        163809, 955182, 528341, 511398, 401566, 880078, 1001399, 782180, 288645, 1047143, 461847,
        524472, 550331, 598560, 498697, 906373, 325403, 932410, 484844, 927295, 981662,
    ];

    #[test]
    fn config_validation() {
        let invalid = [
            FeaturizerConfig {
                buckets: 1,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                word_ngrams: 5,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                char_ngram_min: 4,
                char_ngram_max: 3,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                char_ngram_max: 9,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                max_features: 0,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                max_features: 257,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                lexicon_compound_bins: 0,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                lexicon_share: 0.95,
                ..FeaturizerConfig::default()
            },
            FeaturizerConfig {
                lexicon_share: -0.1,
                ..FeaturizerConfig::default()
            },
        ];
        for config in invalid {
            let error = Featurizer::new(config.clone(), Some(small_lexicon())).unwrap_err();
            assert!(
                matches!(error, FeaturizerError::InvalidConfig(_)),
                "{config:?}: {error}"
            );
        }
        let missing = Featurizer::new(FeaturizerConfig::default(), None).unwrap_err();
        assert!(matches!(missing, FeaturizerError::LexiconMissing));
        assert!(
            Featurizer::new(words_only(), None).is_ok(),
            "no lexicon needed without lexicon features"
        );
    }

    /// `config_hash` of the default configuration of feat-v1 before `lexicon_compound_encoding`.
    const PINNED_BINS_DEFAULT_CONFIG_HASH: &str =
        "3211e7fe7c84f95ce744d07a11b9ef26bb7f20f1e16b4bf28183047a8ef2988f";

    #[test]
    fn config_hash_is_canonical_and_sensitive() {
        let config = FeaturizerConfig::default();
        #[derive(Serialize)]
        struct Canonical<'a> {
            version: &'a str,
            config: &'a FeaturizerConfig,
        }
        let expected = serde_json::to_string(&Canonical {
            version: FEATURIZER_VERSION,
            config: &config,
        })
        .unwrap();
        assert_eq!(
            config.canonical_json(),
            expected,
            "hand-written canonical JSON drifted from serde"
        );
        assert_eq!(config.config_hash().len(), 64);
        assert_eq!(
            config.config_hash(),
            FeaturizerConfig::default().config_hash()
        );
        let other = FeaturizerConfig {
            lexicon_share: 0.25,
            ..FeaturizerConfig::default()
        };
        assert_ne!(config.config_hash(), other.config_hash());
        let round_trip: FeaturizerConfig =
            serde_json::from_str(&serde_json::to_string(&other).unwrap()).unwrap();
        assert_eq!(round_trip, other);
        let partial: FeaturizerConfig = serde_json::from_str(r#"{"buckets": 1024}"#).unwrap();
        assert_eq!(
            partial,
            FeaturizerConfig {
                buckets: 1024,
                lexicon_compound_encoding: CompoundEncoding::Bins,
                ..FeaturizerConfig::default()
            },
            "a configuration without the encoding was written before it existed: bins"
        );
        // The canonical JSON (and so the hash) of such a configuration is what it was before the
        // field existed, and the field appears as soon as it is not `bins`.
        let before = FeaturizerConfig {
            lexicon_compound_encoding: CompoundEncoding::Bins,
            ..FeaturizerConfig::default()
        };
        assert_eq!(
            before.canonical_json(),
            "{\"version\":\"feat-v1\",\"config\":{\"buckets\":524288,\"word_ngrams\":2,\
             \"char_ngram_min\":3,\"char_ngram_max\":5,\"max_features\":256,\"negation\":true,\
             \"lexicon_features\":true,\"lexicon_compound_bins\":20,\"lexicon_share\":0.5}}"
        );
        assert_eq!(
            before.config_hash(),
            PINNED_BINS_DEFAULT_CONFIG_HASH,
            "the hash the registry's older models carry"
        );
        assert!(
            config.canonical_json().ends_with(
                r#""lexicon_share":0.5,"lexicon_compound_encoding":"bins_and_linear"}}"#
            )
        );
        for encoding in [CompoundEncoding::Linear, CompoundEncoding::BinsAndLinear] {
            let config = FeaturizerConfig {
                lexicon_compound_encoding: encoding,
                ..FeaturizerConfig::default()
            };
            let round_trip: FeaturizerConfig =
                serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
            assert_eq!(round_trip, config);
            assert_eq!(
                config.canonical_json(),
                serde_json::to_string(&Canonical {
                    version: FEATURIZER_VERSION,
                    config: &config,
                })
                .unwrap()
            );
            assert_ne!(config.config_hash(), before.config_hash());
        }
        assert!(
            serde_json::from_str::<FeaturizerConfig>(r#"{"lexicon_compound_encoding": "bin"}"#)
                .is_err(),
            "an unknown encoding is an error"
        );
        assert!(
            serde_json::from_str::<FeaturizerConfig>(r#"{"bucket": 1024}"#).is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn batch_pads_with_zeros_to_fixed_lengths() {
        let featurizer = featurizer(words_only());
        let texts = ["good", "a b c", ""];
        let (ids, rows, cols) = featurizer.batch(&texts, 8);
        assert_eq!((rows, cols, ids.len()), (3, 8, 24));
        assert_eq!(ids[..1], featurizer.featurize("good")[..]);
        assert!(ids[1..8].iter().all(|&id| id == PADDING_ID));
        assert_eq!(ids[8..13], featurizer.featurize("a b c")[..]);
        assert!(ids[16..].iter().all(|&id| id == PADDING_ID));
        let (cut, _, _) = featurizer.batch(&["a b c"], 2);
        assert_eq!(
            cut,
            featurizer.featurize("a b c")[..2],
            "rows longer than pad_to are cut"
        );

        for (longest, expected) in [
            (0, 32),
            (1, 32),
            (32, 32),
            (33, 64),
            (200, 256),
            (256, 256),
            (900, 256),
        ] {
            assert_eq!(pad_length(longest), expected, "pad length for {longest}");
        }
        assert!(FeaturizerConfig::default().max_features <= PAD_LENGTHS[PAD_LENGTHS.len() - 1]);
    }

    #[test]
    fn padded_batches_take_the_serving_length_of_their_longest_row() {
        let featurizer = featurizer(words_only());
        let texts = ["good", "a b c", ""];
        let (ids, rows, cols) = featurizer.batch_padded(&texts);
        assert_eq!((ids.clone(), rows, cols), featurizer.batch(&texts, 32));
        let long: Vec<i64> = (1..=40).collect();
        let (ids, rows, cols) = pad_rows(&[long.clone(), vec![7]]);
        assert_eq!((rows, cols), (2, 64));
        assert_eq!(ids[..40], long[..]);
        assert!(ids[40..64].iter().all(|&id| id == PADDING_ID));
        assert_eq!(ids[64], 7);
        let too_long: Vec<i64> = (1..=300).collect();
        let (ids, _, cols) = pad_rows(std::slice::from_ref(&too_long));
        assert_eq!(
            (cols, &ids[..]),
            (256, &too_long[..256]),
            "cut at the largest length"
        );
        assert_eq!(pad_rows::<Vec<i64>>(&[]), (Vec::new(), 0, 32));
    }
}
