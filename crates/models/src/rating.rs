//! Rating prediction from histories: the batch every rating model reads,
//! the [`RatingModel`] trait, the median baseline and matrix factorisation
//! with biases. The BST transformer lives in [`crate::bst`].
//!
//! A [`RatingBatch`] row is one rating event: who rated (user id and the
//! user's categorical features), which movie (and its genres), the `h`
//! events before it in the same user's history (left-padded with item 0)
//! with the ratings given there (as rating-value ids, 0 at padding), and
//! the rating to predict.

use candle_core::{Device, Tensor};
use seqrec_data::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{self, Params};

/// One mini-batch of rating events (row-major where 2-D).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RatingBatch {
    /// User id of each row (1-based; 0 = unknown).
    pub users: Vec<u32>,
    /// Categorical user features, feature-major: `user_features[f][row]` (0 = missing).
    pub user_features: Vec<Vec<u32>>,
    /// History width `h` (events before the target).
    pub history_len: usize,
    /// `rows × h` history items, left-padded with 0.
    pub history: Vec<u32>,
    /// `rows × h` rating-value ids of the history (0 at padding).
    pub history_ratings: Vec<u32>,
    /// Target item of each row.
    pub targets: Vec<u32>,
    /// `rows × n_genres` genre weights of each target (a row sums to 1, or
    /// is all 0 for a movie without genres); empty when genres are off.
    pub genres: Vec<f32>,
    /// The rating to predict.
    pub ratings: Vec<f32>,
}

impl RatingBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.targets.len()
    }

    /// Checks that every column has one entry per row.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] naming the column.
    pub fn check(&self) -> Result<()> {
        let n = self.rows();
        let h = self.history_len;
        let mut bad = Vec::new();
        if self.users.len() != n {
            bad.push("users");
        }
        if self.ratings.len() != n {
            bad.push("ratings");
        }
        if self.history.len() != n * h {
            bad.push("history");
        }
        if self.history_ratings.len() != n * h {
            bad.push("history_ratings");
        }
        if self.user_features.iter().any(|f| f.len() != n) {
            bad.push("user_features");
        }
        if n > 0 && !self.genres.len().is_multiple_of(n) {
            bad.push("genres");
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Invalid(format!("rating batch of {n} rows: wrong length of {}", bad.join(", "))))
        }
    }
}

/// A model that predicts ratings.
pub trait RatingModel {
    /// Predicted rating of each row, `[rows]`. `train` carries the dropout
    /// random stream in training mode (batch norm then uses and updates
    /// batch statistics); `None` is evaluation mode.
    ///
    /// # Errors
    /// A malformed batch or a failing op.
    fn predict(&mut self, batch: &RatingBatch, train: Option<&mut Rng>) -> Result<Tensor>;

    /// Parameters and buffers.
    fn params(&self) -> &Params;

    /// Parameters and buffers, mutably (loading checkpoints).
    fn params_mut(&mut self) -> &mut Params;
}

/// The median of the training ratings (for an even count the mean of the
/// two middle values, as pandas computes it).
///
/// # Errors
/// No ratings, or a non-finite one.
pub fn median_rating(ratings: &[f32]) -> Result<f32> {
    if ratings.iter().any(|r| !r.is_finite()) {
        return Err(ModelError::Invalid("median of ratings: a rating is not a finite number".into()));
    }
    let mut v = ratings.to_vec();
    if v.is_empty() {
        return Err(ModelError::Invalid("median of ratings: no training ratings".into()));
    }
    let mid = (v.len() - 1) / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    let lower = *m;
    if v.len() % 2 == 1 {
        return Ok(lower);
    }
    // Even count: the mean of the two middle values, as pandas' median.
    let upper = v[mid + 1..].iter().copied().fold(f32::INFINITY, f32::min);
    Ok((lower + upper) / 2.0)
}

/// Optional output range: `σ(x)·(hi − lo) + lo`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OutputRange {
    /// Lowest prediction.
    pub lo: f32,
    /// Highest prediction.
    pub hi: f32,
}

impl OutputRange {
    /// Squashes raw scores into the range.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(nn::sigmoid(x)?.affine(f64::from(self.hi - self.lo), f64::from(self.lo))?)
    }
}

/// Sizes of the matrix factorisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MfShape {
    /// User ids (largest id + 1).
    pub n_users: usize,
    /// Item ids (largest id + 1).
    pub n_items: usize,
    /// Factors per user and item.
    pub n_factors: usize,
    /// Standard deviation of the initial factors (biases start at 0).
    pub init_std: f64,
    /// Output range, if any.
    pub range: Option<OutputRange>,
}

/// Matrix factorisation with user and item biases:
/// `r̂ = ⟨p_u, q_i⟩ + b_u + b_i` (optionally squashed into a range).
#[derive(Debug)]
pub struct Mf {
    params: Params,
    users: Tensor,
    items: Tensor,
    user_bias: Tensor,
    item_bias: Tensor,
    range: Option<OutputRange>,
}

impl Mf {
    /// A freshly initialised model.
    ///
    /// # Errors
    /// A zero size or a failing op.
    pub fn new(shape: &MfShape, seed: u64, dev: &Device) -> Result<Self> {
        if shape.n_users == 0 || shape.n_items == 0 || shape.n_factors == 0 {
            return Err(ModelError::Invalid(format!("matrix factorisation: zero size in {shape:?}")));
        }
        let mut rng = Rng::fork(seed, 0x4d46);
        let mut params = Params::new();
        let f = shape.n_factors;
        let users = params.normal("user_factors", &[shape.n_users, f], shape.init_std, &mut rng, dev)?;
        let items = params.normal("item_factors", &[shape.n_items, f], shape.init_std, &mut rng, dev)?;
        let user_bias = params.constant("user_bias", &[shape.n_users], 0.0, dev)?;
        let item_bias = params.constant("item_bias", &[shape.n_items], 0.0, dev)?;
        Ok(Mf { params, users, items, user_bias, item_bias, range: shape.range })
    }
}

fn ids(v: &[u32], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, v.len(), dev)?)
}

impl RatingModel for Mf {
    fn predict(&mut self, batch: &RatingBatch, _train: Option<&mut Rng>) -> Result<Tensor> {
        batch.check()?;
        let dev = self.users.device().clone();
        let (u, i) = (ids(&batch.users, &dev)?, ids(&batch.targets, &dev)?);
        let dot = (self.users.index_select(&u, 0)? * self.items.index_select(&i, 0)?)?.sum(1)?;
        let x = ((dot + self.user_bias.index_select(&u, 0)?)? + self.item_bias.index_select(&i, 0)?)?;
        match &self.range {
            Some(r) => r.apply(&x),
            None => Ok(x),
        }
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_rating(&[5.0, 1.0, 4.0]).unwrap(), 4.0);
        assert_eq!(median_rating(&[5.0, 1.0, 4.0, 3.0]).unwrap(), 3.5);
        assert_eq!(median_rating(&[4.0, 4.0, 1.0, 5.0]).unwrap(), 4.0);
        assert!(median_rating(&[]).is_err());
        assert!(median_rating(&[1.0, f32::NAN]).is_err());
    }

    #[test]
    fn mf_prediction_is_dot_plus_biases() {
        let dev = Device::Cpu;
        let shape = MfShape { n_users: 3, n_items: 4, n_factors: 2, init_std: 0.5, range: None };
        let mut mf = Mf::new(&shape, 7, &dev).unwrap();
        let t = mf.params().named_tensors();
        let p: Vec<Vec<f32>> = t["user_factors"].to_vec2().unwrap();
        let q: Vec<Vec<f32>> = t["item_factors"].to_vec2().unwrap();
        let mut loaded = t.clone();
        loaded.insert("user_bias".into(), Tensor::new(&[0.0f32, 0.5, -1.0], &dev).unwrap());
        loaded.insert("item_bias".into(), Tensor::new(&[0.0f32, 0.25, 2.0, 1.0], &dev).unwrap());
        mf.params_mut().load(&loaded).unwrap();
        let batch =
            RatingBatch { users: vec![1, 2], targets: vec![3, 1], ratings: vec![0.0, 0.0], ..Default::default() };
        let got: Vec<f32> = mf.predict(&batch, None).unwrap().to_vec1().unwrap();
        let want =
            [p[1][0] * q[3][0] + p[1][1] * q[3][1] + 0.5 + 1.0, p[2][0] * q[1][0] + p[2][1] * q[1][1] - 1.0 + 0.25];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        mf.range = Some(OutputRange { lo: 0.5, hi: 5.5 });
        let squashed: Vec<f32> = mf.predict(&batch, None).unwrap().to_vec1().unwrap();
        for (s, w) in squashed.iter().zip(want) {
            let e = 1.0 / (1.0 + (-w).exp()) * 5.0 + 0.5;
            assert!((s - e).abs() < 1e-5);
        }
    }

    #[test]
    fn malformed_batches_are_errors() {
        let b = RatingBatch { users: vec![1], targets: vec![1, 2], ratings: vec![1.0, 2.0], ..Default::default() };
        let e = b.check().unwrap_err().to_string();
        assert!(e.contains("users"), "{e}");
    }
}
