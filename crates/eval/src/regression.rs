//! Regression metrics for ratings: MAE, MSE and RMSE.

use serde::{Deserialize, Serialize};

/// Mean absolute error; `None` when empty.
///
/// # Panics
/// If the slices differ in length (a caller bug).
pub fn mae<S: Copy + Into<f64>>(pred: &[S], target: &[S]) -> Option<f64> {
    let mut acc = RegressionAccumulator::new();
    acc.add_batch(pred, target);
    acc.finish().mae
}

/// Mean squared error; `None` when empty.
///
/// # Panics
/// If the slices differ in length (a caller bug).
pub fn mse<S: Copy + Into<f64>>(pred: &[S], target: &[S]) -> Option<f64> {
    let mut acc = RegressionAccumulator::new();
    acc.add_batch(pred, target);
    acc.finish().mse
}

/// Root mean squared error; `None` when empty.
///
/// # Panics
/// If the slices differ in length (a caller bug).
pub fn rmse<S: Copy + Into<f64>>(pred: &[S], target: &[S]) -> Option<f64> {
    mse(pred, target).map(f64::sqrt)
}

/// Streaming sums of absolute and squared errors (in `f64`; a NaN
/// prediction makes every metric NaN, which is what it should do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegressionAccumulator {
    n: u64,
    sum_abs: f64,
    sum_sq: f64,
}

impl RegressionAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one prediction and its target.
    pub fn add(&mut self, pred: f64, target: f64) {
        let e = pred - target;
        self.n += 1;
        self.sum_abs += e.abs();
        self.sum_sq += e * e;
    }

    /// Adds a batch.
    ///
    /// # Panics
    /// If the slices differ in length (a caller bug).
    pub fn add_batch<S: Copy + Into<f64>>(&mut self, pred: &[S], target: &[S]) {
        assert_eq!(pred.len(), target.len(), "regression: predictions and targets differ in length");
        for (&p, &t) in pred.iter().zip(target) {
            self.add(p.into(), t.into());
        }
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &RegressionAccumulator) {
        self.n += other.n;
        self.sum_abs += other.sum_abs;
        self.sum_sq += other.sum_sq;
    }

    /// The metrics so far (`None` when empty).
    pub fn finish(&self) -> RegressionMetrics {
        let n = self.n as f64;
        let nonempty = self.n > 0;
        RegressionMetrics {
            n: self.n,
            mae: nonempty.then(|| self.sum_abs / n),
            mse: nonempty.then(|| self.sum_sq / n),
            rmse: nonempty.then(|| (self.sum_sq / n).sqrt()),
        }
    }
}

/// Finished regression metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Number of predictions.
    pub n: u64,
    /// Mean absolute error.
    pub mae: Option<f64>,
    /// Mean squared error.
    pub mse: Option<f64>,
    /// Root mean squared error.
    pub rmse: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // errors +1, -2, 0, +0.5: |e| sum 3.5, e^2 sum 5.25.
        let p = [4.0f32, 1.0, 3.0, 5.0];
        let t = [3.0f32, 3.0, 3.0, 4.5];
        assert_eq!(mae(&p, &t), Some(3.5 / 4.0));
        assert_eq!(mse(&p, &t), Some(5.25 / 4.0));
        assert_eq!(rmse(&p, &t), Some((5.25f64 / 4.0).sqrt()));
        assert_eq!(mae::<f64>(&[], &[]), None);
        let mut a = RegressionAccumulator::new();
        a.add_batch(&p[..1], &t[..1]);
        let mut b = RegressionAccumulator::new();
        b.add_batch(&p[1..], &t[1..]);
        a.merge(&b);
        let m = a.finish();
        assert_eq!((m.n, m.mae, m.mse), (4, Some(0.875), Some(1.3125)));
        assert!(RegressionAccumulator::new().finish().rmse.is_none());
    }
}
