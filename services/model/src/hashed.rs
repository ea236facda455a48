//! The `hashed` model family: a bag of hashed n-gram embeddings, mean-pooled, then a linear layer and a
//! softmax over the three sentiment classes (fastText-style). This struct is the in-memory form shared by
//! the trainer (which fills it), the ONNX writer (which exports it) and the parity tests (the reference).

use serde::{Deserialize, Serialize};

/// Number of output classes, in `Sentiment::index` order: negative, neutral, positive.
pub const CLASSES: usize = 3;

/// Feature id reserved for padding: its embedding row is all zeros and it is masked out of the mean.
pub const PADDING_ID: i64 = 0;

/// Weights of a hashed embedding-bag classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HashedModel {
    /// Rows of the embedding table, including the padding row 0 (feature ids are `1..buckets`).
    pub buckets: usize,
    /// Embedding width.
    pub dim: usize,
    /// Embedding table, row-major `[buckets][dim]`; row 0 stays zero.
    pub embeddings: Vec<f32>,
    /// Output layer, row-major `[dim][CLASSES]` (the ONNX Gemm's B matrix).
    pub weights: Vec<f32>,
    /// Output bias per class.
    pub bias: [f32; CLASSES],
}

impl HashedModel {
    /// An all-zero model of the given shape.
    pub fn zeros(buckets: usize, dim: usize) -> Self {
        Self {
            buckets,
            dim,
            embeddings: vec![0.0; buckets * dim],
            weights: vec![0.0; dim * CLASSES],
            bias: [0.0; CLASSES],
        }
    }

    /// Checks that the vectors match the declared shape.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.buckets < 2 || self.dim == 0 {
            return Err(format!("degenerate shape {}x{}", self.buckets, self.dim));
        }
        if self.embeddings.len() != self.buckets * self.dim {
            return Err(format!(
                "embeddings have {} values, expected {}",
                self.embeddings.len(),
                self.buckets * self.dim
            ));
        }
        if self.weights.len() != self.dim * CLASSES {
            return Err(format!(
                "weights have {} values, expected {}",
                self.weights.len(),
                self.dim * CLASSES
            ));
        }
        Ok(())
    }

    /// Reference forward pass in f64: class probabilities for one row of feature ids (padding ignored).
    /// The ONNX graph must agree with this to 1e-5.
    pub fn predict_ids(&self, ids: &[i64]) -> [f64; CLASSES] {
        let mut pooled = vec![0.0f64; self.dim];
        let mut count = 0usize;
        for &id in ids {
            if id == PADDING_ID {
                continue;
            }
            let row = usize::try_from(id).expect("feature ids are non-negative") * self.dim;
            for (sum, value) in pooled.iter_mut().zip(&self.embeddings[row..row + self.dim]) {
                *sum += f64::from(*value);
            }
            count += 1;
        }
        let denominator = count.max(1) as f64;
        let mut logits = [0.0f64; CLASSES];
        for (class, logit) in logits.iter_mut().enumerate() {
            *logit = f64::from(self.bias[class])
                + pooled
                    .iter()
                    .enumerate()
                    .map(|(d, sum)| {
                        sum / denominator * f64::from(self.weights[d * CLASSES + class])
                    })
                    .sum::<f64>();
        }
        softmax(logits)
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: [f64; CLASSES]) -> [f64; CLASSES] {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps = logits.map(|logit| (logit - max).exp());
    let total: f64 = exps.iter().sum();
    exps.map(|value| value / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_ignored_and_probabilities_sum_to_one() {
        let mut model = HashedModel::zeros(4, 2);
        model.embeddings[2..4].copy_from_slice(&[1.0, 0.0]); // id 1
        model.embeddings[4..6].copy_from_slice(&[0.0, 1.0]); // id 2
        model.weights = vec![2.0, 0.0, -2.0, -1.0, 0.0, 1.0];
        model.check_shape().unwrap();
        let with_padding = model.predict_ids(&[1, 2, 0, 0]);
        let without = model.predict_ids(&[1, 2]);
        assert_eq!(with_padding, without);
        assert!((with_padding.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(
            with_padding[0] > with_padding[2],
            "id 1 pulls towards negative more than id 2 towards positive"
        );
        assert_eq!(
            model.predict_ids(&[0, 0]),
            softmax([0.0; 3]),
            "all padding = bias only"
        );
    }
}
