//! The hashed embedding bag as a burn module, generic over the backend: the same computation as
//! [`HashedModel::predict_ids`] and the exported ONNX graph (embedding gather → padding mask → masked
//! mean → linear → softmax), with conversions to and from [`HashedModel`] for the exporter.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use sentiflow_model::hashed::{CLASSES, HashedModel, PADDING_ID};

use crate::BurnError;

/// A hashed n-gram embedding bag → masked mean → linear → softmax.
#[derive(Module, Debug)]
pub struct HashedBag<B: Backend> {
    /// `[buckets, dim]`; row 0 (padding) never receives a gradient, as it is masked out.
    pub embeddings: Param<Tensor<B, 2>>,
    /// `[dim, CLASSES]`, the ONNX Gemm's B matrix.
    pub weights: Param<Tensor<B, 2>>,
    /// `[CLASSES]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> HashedBag<B> {
    /// Uploads `model`'s weights to `device`.
    pub fn from_model(model: &HashedModel, device: &B::Device) -> Result<Self, BurnError> {
        model.check_shape().map_err(BurnError::Shape)?;
        let tensor2 = |values: &[f32], shape: [usize; 2]| {
            Param::from_tensor(Tensor::<B, 2>::from_data(
                TensorData::new(values.to_vec(), shape),
                device,
            ))
        };
        Ok(Self {
            embeddings: tensor2(&model.embeddings, [model.buckets, model.dim]),
            weights: tensor2(&model.weights, [model.dim, CLASSES]),
            bias: Param::from_tensor(Tensor::<B, 1>::from_data(
                TensorData::new(model.bias.to_vec(), [CLASSES]),
                device,
            )),
        })
    }

    /// Downloads the weights into the exporter's in-memory form.
    pub fn to_model(&self) -> Result<HashedModel, BurnError> {
        let [buckets, dim] = self.embeddings.dims();
        let values = |tensor: Tensor<B, 2>| -> Result<Vec<f32>, BurnError> {
            tensor
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|error| BurnError::Tensor(format!("{error:?}")))
        };
        let bias = values(self.bias.val().reshape([1, CLASSES]))?;
        let model = HashedModel {
            buckets,
            dim,
            embeddings: values(self.embeddings.val())?,
            weights: values(self.weights.val())?,
            bias: [bias[0], bias[1], bias[2]],
        };
        model.check_shape().map_err(BurnError::Shape)?;
        Ok(model)
    }

    /// Logits `[batch, CLASSES]` of a padded id matrix `[batch, tokens]` (an all-padding row gives the
    /// bias, as in the reference and the ONNX graph).
    pub fn logits(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let vectors = burn::tensor::module::embedding(self.embeddings.val(), ids.clone()); // [B,T,D]
        let mask = ids.not_equal_elem(PADDING_ID).float(); // [B,T]
        // The ONNX graph's masked sum: [B,1,T] x [B,T,D].
        let sum: Tensor<B, 2> = mask
            .clone()
            .unsqueeze_dim::<3>(1)
            .matmul(vectors)
            .squeeze_dim(1); // [B,D]
        let count = mask.sum_dim(1).clamp_min(1.0); // [B,1]
        let pooled = sum / count;
        pooled.matmul(self.weights.val()) + self.bias.val().unsqueeze_dim(0)
    }

    /// Class probabilities `[batch, CLASSES]`.
    pub fn probabilities(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        softmax(self.logits(ids), 1)
    }
}

/// A padded `[rows, cols]` id matrix as an int tensor of the backend's int type.
pub fn ids_tensor<B: Backend>(
    ids: Vec<i64>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(ids, [rows, cols]).convert::<B::IntElem>(),
        device,
    )
}

/// Probabilities of a padded id matrix as rows of f64 (for evaluation and parity checks).
pub fn predict_ids<B: Backend>(
    model: &HashedBag<B>,
    ids: Vec<i64>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Result<Vec<[f64; CLASSES]>, BurnError> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    let values = model
        .probabilities(ids_tensor::<B>(ids, rows, cols, device))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|error| BurnError::Tensor(format!("{error:?}")))?;
    Ok(values
        .chunks_exact(CLASSES)
        .map(|row| [row[0], row[1], row[2]].map(f64::from))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn model() -> HashedModel {
        let mut model = HashedModel::zeros(6, 2);
        for (index, value) in model.embeddings[2..].iter_mut().enumerate() {
            *value = (index as f32 - 4.0) / 3.0;
        }
        model.weights = vec![0.5, -1.0, 0.25, 2.0, 0.0, -0.75];
        model.bias = [0.1, -0.2, 0.3];
        model
    }

    #[test]
    fn forward_matches_the_reference_and_round_trips() {
        let reference = model();
        let device = Default::default();
        let bag = HashedBag::<B>::from_model(&reference, &device).unwrap();
        assert_eq!(bag.to_model().unwrap(), reference, "upload + download");
        // Padding anywhere, repeats, an all-padding row.
        let rows: [&[i64]; 3] = [&[1, 2, 0, 5], &[3, 3, 3, 0], &[0, 0, 0, 0]];
        let ids: Vec<i64> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        let predicted = predict_ids(&bag, ids, 3, 4, &device).unwrap();
        for (row, probabilities) in rows.iter().zip(&predicted) {
            let expected = reference.predict_ids(row);
            for (a, b) in probabilities.iter().zip(expected) {
                assert!((a - b).abs() < 1e-6, "{probabilities:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut broken = model();
        broken.weights.pop();
        let error = HashedBag::<B>::from_model(&broken, &Default::default()).unwrap_err();
        assert!(error.to_string().contains("weights"), "{error}");
    }
}
