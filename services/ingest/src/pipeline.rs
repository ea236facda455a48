//! The per-message transformation of ingest, free of I/O: bytes → validated review → cleaned, redacted,
//! language-checked, labelled `CleanReview`, or a [`Rejection`] for the dead-letter topic.

use chrono::Utc;
use hmac::{Hmac, Mac};
use sentiflow_common::events::{
    CleanReview, RawReview, Redactions, SCHEMA_VERSION, SourceCoordinate,
};
use sentiflow_common::schema::{EventSchema, SchemaRegistry};
use sentiflow_model::{lang, text};
use sha2::Sha256;

use crate::config::LangPolicy;
use crate::error::Rejection;
use crate::label::Labeller;

/// Namespace of the deterministic ids of clean events (UUID v5 of the raw event id), so a re-processed
/// message yields the same clean event id and downstream consumers can deduplicate by it.
const CLEAN_EVENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5e47_1f10_c1ea_4e00_9a3b_2d6c_7e8f_0a1b);

/// Longest text of a clean review in characters (`clean_review.schema.json`, `maxLength`).
pub const MAX_CLEAN_TEXT_CHARS: usize = 10_000;

/// Everything needed to turn one raw message into a clean review.
#[derive(Debug)]
pub struct Processor {
    /// Largest accepted payload in bytes.
    pub max_payload_bytes: usize,
    /// Key of the author HMAC.
    pub author_hash_key: Vec<u8>,
    /// Allowed languages; empty allows all.
    pub lang_allow: Vec<String>,
    /// What to do with other languages.
    pub lang_policy: LangPolicy,
    /// Labelling rules.
    pub labeller: Labeller,
}

impl Processor {
    /// Validates and transforms one message.
    pub fn process(
        &self,
        payload: Option<&[u8]>,
        source: &SourceCoordinate,
    ) -> Result<CleanReview, Rejection> {
        let raw = self.parse(payload)?;
        let cleaned = text::clean(&raw.text);
        if !text::has_content(&cleaned.text) {
            return Err(Rejection::EmptyAfterCleaning);
        }
        // Checked here rather than by validating the whole event: downstream consumers validate
        // against `clean_review.schema.json` and would dead-letter a review ingest accepted.
        let chars = cleaned.text.chars().count();
        if chars > MAX_CLEAN_TEXT_CHARS {
            return Err(Rejection::TooLongAfterCleaning {
                chars,
                limit: MAX_CLEAN_TEXT_CHARS,
            });
        }
        let (lang, lang_confidence) = detect_language(&cleaned.text, raw.lang.as_deref());
        let lang_allowed =
            lang == "und" || self.lang_allow.is_empty() || self.lang_allow.contains(&lang);
        if !lang_allowed && self.lang_policy == LangPolicy::Dlq {
            return Err(Rejection::LanguageNotAllowed {
                lang,
                allowed: self.lang_allow.clone(),
            });
        }
        let label = self.labeller.label(raw.label, raw.rating, &cleaned.text);
        let text_hash = text::text_fingerprint(&cleaned.text);
        let redactions = Redactions {
            emails: cleaned.redactions.emails,
            phones: cleaned.redactions.phones,
            cards: cleaned.redactions.cards,
        };
        Ok(CleanReview {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::new_v5(&CLEAN_EVENT_NAMESPACE, raw.event_id.as_bytes())
                .to_string(),
            event_time: Utc::now(),
            source_event_id: raw.event_id,
            review_id: raw.review_id,
            source: raw.source,
            author_hash: self.author_hash(&raw.author),
            text: cleaned.text,
            text_hash,
            created_at: raw.created_at,
            lang,
            lang_confidence,
            lang_allowed,
            label,
            redactions,
            normalizer_version: text::NORMALIZER_VERSION.to_owned(),
            source_offset: source.clone(),
            metadata: raw.metadata,
            rating: raw.rating,
        })
    }

    /// Size, encoding, JSON, version and schema checks, in that order (cheapest and clearest first).
    fn parse(&self, payload: Option<&[u8]>) -> Result<RawReview, Rejection> {
        let bytes = payload.ok_or(Rejection::EmptyPayload)?;
        if bytes.len() > self.max_payload_bytes {
            return Err(Rejection::Oversize {
                size: bytes.len(),
                limit: self.max_payload_bytes,
            });
        }
        let json = std::str::from_utf8(bytes)
            .map_err(|error| Rejection::InvalidUtf8(error.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|error| Rejection::NotJson(error.to_string()))?;
        match value.get("schema_version") {
            Some(version) if version.as_u64() != Some(u64::from(SCHEMA_VERSION)) => {
                return Err(Rejection::UnknownSchemaVersion(version.to_string()));
            }
            _ => {}
        }
        SchemaRegistry::global()
            .validate(EventSchema::Review, &value)
            .map_err(|violation| Rejection::SchemaViolation(violation.to_string()))?;
        serde_json::from_value(value).map_err(|error| Rejection::SchemaViolation(error.to_string()))
    }

    /// Keyed hash of the author id: stable per key, not reversible without it.
    fn author_hash(&self, author: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.author_hash_key)
            .expect("HMAC accepts any key length");
        mac.update(author.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Detected language, falling back to the producer's hint when detection is unsure; "und" when unknown.
///
/// An unreliable guess is never used to reject: short tweets are often misdetected, and "und" is allowed.
fn detect_language(cleaned: &str, hint: Option<&str>) -> (String, f64) {
    let hint = hint.map(|hint| hint.split('-').next().unwrap_or(hint).to_ascii_lowercase());
    match (lang::detect(cleaned), hint) {
        (Some(detected), _) if detected.reliable => (detected.lang, detected.confidence),
        (_, Some(hint)) => (hint, 0.0),
        (Some(detected), None) => ("und".to_owned(), detected.confidence),
        (None, None) => ("und".to_owned(), 0.0),
    }
}

#[cfg(test)]
mod tests {
    use sentiflow_common::events::{LabelProvenance, Sentiment};
    use sentiflow_model::lexicon::Lexicon;

    use super::*;

    fn processor(lang_policy: LangPolicy) -> Processor {
        let lexicon =
            Lexicon::parse("great\t3.1\t0.8\t[3, 3]\nterrible\t-2.5\t0.5\t[-3, -2]\n").unwrap();
        Processor {
            max_payload_bytes: 65_536,
            author_hash_key: b"unit-test-author-key".to_vec(),
            lang_allow: vec!["en".to_owned()],
            lang_policy,
            labeller: Labeller::new(lexicon, 0.5),
        }
    }

    fn source() -> SourceCoordinate {
        SourceCoordinate {
            topic: "reviews.raw".to_owned(),
            partition: 2,
            offset: 41,
        }
    }

    fn review(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value = serde_json::json!({
            "schema_version": 1,
            "event_id": "evt-1",
            "event_time": "2026-11-25T12:00:00Z",
            "review_id": "r-1",
            "source": "twitter",
            "author": "@alice",
            "text": "@united the crew was great, thanks! Mail me at alice@example.com",
            "created_at": "2026-11-25T11:59:00Z"
        });
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_valid_review_becomes_a_schema_valid_clean_event() {
        let clean = processor(LangPolicy::Mark)
            .process(Some(&review(|_| {})), &source())
            .unwrap();
        let value = serde_json::to_value(&clean).unwrap();
        SchemaRegistry::global()
            .validate(EventSchema::CleanReview, &value)
            .unwrap();
        assert_eq!(clean.source_event_id, "evt-1");
        assert_eq!(clean.source_offset, source());
        assert!(clean.text.starts_with("@user "), "{}", clean.text);
        assert!(
            clean.text.contains("<email>") && !clean.text.contains("alice@example.com"),
            "{}",
            clean.text
        );
        assert_eq!(clean.redactions.emails, 1);
        assert_eq!(clean.author_hash.len(), 64);
        assert_ne!(clean.author_hash, "@alice");
        let label = clean.label.unwrap();
        assert_eq!(
            (label.label, label.provenance),
            (Sentiment::Positive, LabelProvenance::WeakLexicon)
        );
        assert_eq!(clean.normalizer_version, text::NORMALIZER_VERSION);
    }

    #[test]
    fn clean_event_ids_are_deterministic_and_author_hashes_keyed() {
        let first = processor(LangPolicy::Mark)
            .process(Some(&review(|_| {})), &source())
            .unwrap();
        let again = processor(LangPolicy::Mark)
            .process(Some(&review(|_| {})), &source())
            .unwrap();
        assert_eq!(
            first.event_id, again.event_id,
            "a redelivered message keeps its clean event id"
        );
        assert_eq!(first.author_hash, again.author_hash);
        let mut other_key = processor(LangPolicy::Mark);
        other_key.author_hash_key = b"another-key-entirely".to_vec();
        let other = other_key.process(Some(&review(|_| {})), &source()).unwrap();
        assert_ne!(
            first.author_hash, other.author_hash,
            "the hash depends on the key"
        );
    }

    #[test]
    fn every_rejection_kind_is_reported() {
        let processor = processor(LangPolicy::Dlq);
        let spanish = "El servicio de esta aerolínea es malísimo, nunca más vuelvo a volar con ellos porque siempre llegan tarde";
        let table: Vec<(Option<Vec<u8>>, &str)> = vec![
            (None, "empty_payload"),
            (Some(vec![b' '; 65_537]), "oversize"),
            (Some(vec![b'"', 0xff, b'"']), "invalid_utf8"),
            (Some(b"{\"schema_version\": 1,".to_vec()), "invalid_json"),
            (
                Some(review(|v| v["schema_version"] = serde_json::json!(2))),
                "unknown_schema_version",
            ),
            (
                Some(review(|v| v["schema_version"] = serde_json::json!("1"))),
                "unknown_schema_version",
            ),
            (
                Some(review(|v| {
                    v.as_object_mut().unwrap().remove("review_id");
                })),
                "schema_violation",
            ),
            (
                Some(review(|v| v["rating"] = serde_json::json!(9))),
                "schema_violation",
            ),
            (
                Some(review(|v| v["text"] = serde_json::json!(""))),
                "schema_violation",
            ),
            (
                Some(review(|v| {
                    v["event_time"] = serde_json::json!("2026-13-45")
                })),
                "schema_violation",
            ),
            (
                Some(review(|v| {
                    v["text"] = serde_json::json!("   @bob https://x.co/a ... !!")
                })),
                "empty_after_cleaning",
            ),
            (
                // 10,000 characters in, 17,500 out: each `@a ` becomes `@user `.
                Some(review(|v| {
                    v["text"] = serde_json::json!(format!("{}good", "@a ".repeat(3_332)))
                })),
                "too_long_after_cleaning",
            ),
            (
                Some(review(|v| v["text"] = serde_json::json!(spanish))),
                "language_not_allowed",
            ),
        ];
        for (payload, kind) in table {
            let rejection = processor
                .process(payload.as_deref(), &source())
                .unwrap_err();
            assert_eq!(rejection.kind(), kind, "{rejection}");
            assert!(!rejection.to_string().is_empty());
        }
    }

    #[test]
    fn other_languages_are_marked_under_the_mark_policy() {
        let spanish = "El servicio de esta aerolínea es malísimo, nunca más vuelvo a volar con ellos porque siempre llegan tarde";
        let clean = processor(LangPolicy::Mark)
            .process(
                Some(&review(|v| v["text"] = serde_json::json!(spanish))),
                &source(),
            )
            .unwrap();
        assert_eq!(clean.lang, "es");
        assert!(!clean.lang_allowed);
    }

    #[test]
    fn ratings_and_source_labels_beat_the_lexicon() {
        let processor = processor(LangPolicy::Mark);
        let rated = processor
            .process(
                Some(&review(|v| v["rating"] = serde_json::json!(1))),
                &source(),
            )
            .unwrap();
        let label = rated.label.unwrap();
        assert_eq!(
            (label.label, label.provenance),
            (Sentiment::Negative, LabelProvenance::SourceRating)
        );
        let labelled = processor
            .process(
                Some(&review(|v| v["label"] = serde_json::json!("neutral"))),
                &source(),
            )
            .unwrap();
        assert_eq!(
            labelled.label.unwrap().provenance,
            LabelProvenance::SourceLabel
        );
    }

    #[test]
    fn content_check_ignores_placeholders_and_punctuation() {
        for (text, expected) in [
            ("@user <url>", false),
            ("... !!!", false),
            ("<email> <phone>", false),
            ("ok", true),
            ("😂😂", true),
            ("@user 5", true),
        ] {
            assert_eq!(text::has_content(text), expected, "{text:?}");
        }
    }
}
