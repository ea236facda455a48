//! The feature ids a hashed model saw in training, as a bitmap stored next to the model
//! (`seen_features.bin`): serving measures each text's out-of-vocabulary rate against it, the share of
//! its features no training row had, which the drift monitor watches.

use crate::featurize::Featurizer;

/// File name of the bitmap in a model's registry directory.
pub const SEEN_FEATURES_FILE: &str = "seen_features.bin";

/// First bytes of the file (format version 1).
const MAGIC: &[u8; 8] = b"SFSEEN1\n";

/// Why a bitmap file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeenFeaturesError {
    /// Not a bitmap of this format.
    #[error("not a seen-features file (bad header)")]
    BadHeader,
    /// Made for another bucket count than the model's featurizer.
    #[error("the file covers {file} buckets, the model's featurizer has {model}")]
    Buckets {
        /// Buckets in the file.
        file: u64,
        /// Buckets of the model.
        model: u64,
    },
    /// Shorter or longer than its header says.
    #[error("the file is {actual} bytes, its header implies {expected}")]
    Length {
        /// Size implied by the header.
        expected: usize,
        /// Real size.
        actual: usize,
    },
}

/// A bitmap over feature ids `0..buckets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenFeatures {
    buckets: u64,
    words: Vec<u64>,
}

impl SeenFeatures {
    /// An empty bitmap for `buckets` ids.
    pub fn new(buckets: usize) -> Self {
        Self {
            buckets: buckets as u64,
            words: vec![0; buckets.div_ceil(64)],
        }
    }

    /// The bitmap of every feature id of `texts` under `featurizer` (the training rows).
    pub fn of_texts<'a>(featurizer: &Featurizer, texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut seen = Self::new(featurizer.config().buckets);
        for text in texts {
            seen.insert(&featurizer.featurize(text));
        }
        seen
    }

    /// Marks `ids` as seen (ids outside the bitmap are ignored).
    pub fn insert(&mut self, ids: &[i64]) {
        for &id in ids {
            if let Ok(id) = u64::try_from(id)
                && id < self.buckets
            {
                self.words[(id / 64) as usize] |= 1 << (id % 64);
            }
        }
    }

    /// Whether `id` was seen.
    pub fn contains(&self, id: i64) -> bool {
        u64::try_from(id)
            .ok()
            .filter(|id| *id < self.buckets)
            .is_some_and(|id| self.words[(id / 64) as usize] & (1 << (id % 64)) != 0)
    }

    /// Share of the distinct ids of one text (padding excluded) that were never seen; `None` for a
    /// text without features.
    pub fn unseen_share(&self, ids: &[i64]) -> Option<f64> {
        let mut distinct: Vec<i64> = ids.iter().copied().filter(|&id| id > 0).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return None;
        }
        let unseen = distinct.iter().filter(|&&id| !self.contains(id)).count();
        Some(unseen as f64 / distinct.len() as f64)
    }

    /// Ids marked.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// The file bytes: magic, buckets (u64 little-endian), then the bitmap words (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16 + self.words.len() * 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.buckets.to_le_bytes());
        for word in &self.words {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    /// Parses a file made for a featurizer of `buckets` buckets.
    pub fn from_bytes(bytes: &[u8], buckets: usize) -> Result<Self, SeenFeaturesError> {
        let (Some(magic), Some(count)) = (bytes.get(..8), bytes.get(8..16)) else {
            return Err(SeenFeaturesError::BadHeader);
        };
        if magic != MAGIC {
            return Err(SeenFeaturesError::BadHeader);
        }
        let file_buckets = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        if file_buckets != buckets as u64 {
            return Err(SeenFeaturesError::Buckets {
                file: file_buckets,
                model: buckets as u64,
            });
        }
        let expected = 16 + buckets.div_ceil(64) * 8;
        if bytes.len() != expected {
            return Err(SeenFeaturesError::Length {
                expected,
                actual: bytes.len(),
            });
        }
        let words = bytes[16..]
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
            .collect();
        Ok(Self {
            buckets: file_buckets,
            words,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_share_counts_distinct_ids_and_skips_padding() {
        let mut seen = SeenFeatures::new(100);
        seen.insert(&[1, 2, 3, 3, 200, -4]);
        assert_eq!(seen.count(), 3);
        assert!(seen.contains(2) && !seen.contains(4) && !seen.contains(200));
        assert_eq!(seen.unseen_share(&[1, 2, 4, 5]), Some(0.5));
        assert_eq!(
            seen.unseen_share(&[1, 1, 1, 9, 0, 0]),
            Some(0.5),
            "distinct, no padding"
        );
        assert_eq!(seen.unseen_share(&[0, 0]), None);
        assert_eq!(seen.unseen_share(&[]), None);
    }

    #[test]
    fn file_round_trip_and_refusals() {
        let mut seen = SeenFeatures::new(130);
        seen.insert(&[0, 63, 64, 129]);
        let bytes = seen.to_bytes();
        assert_eq!(bytes.len(), 16 + 3 * 8);
        assert_eq!(SeenFeatures::from_bytes(&bytes, 130).unwrap(), seen);
        assert_eq!(
            SeenFeatures::from_bytes(&bytes, 128),
            Err(SeenFeaturesError::Buckets {
                file: 130,
                model: 128
            })
        );
        assert_eq!(
            SeenFeatures::from_bytes(&bytes[..20], 130),
            Err(SeenFeaturesError::Length {
                expected: 40,
                actual: 20
            })
        );
        assert_eq!(
            SeenFeatures::from_bytes(b"garbage", 130),
            Err(SeenFeaturesError::BadHeader)
        );
    }
}
