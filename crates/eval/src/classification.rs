//! Binary classification metrics: exact AUC, log-loss and accuracy.
//!
//! AUC is the Mann–Whitney statistic: the probability that a random positive
//! scores above a random negative, a tie counting one half. It is computed
//! exactly in O(n log n) by sorting once and walking the blocks of equal
//! scores; the pair count is kept in integers (twice the count, so that
//! half-pairs stay whole), so the result does not depend on input order.
//!
//! NaN policy: for AUC a NaN score ranks below every number (it ties with
//! `-inf` and with other NaNs); for log-loss a NaN probability costs the
//! clipped maximum `-ln(LOG_LOSS_EPS)`; for accuracy a NaN prediction is
//! wrong.

use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]` before the log.
pub const LOG_LOSS_EPS: f64 = 1e-7;

/// Sort key of a score: NaN becomes `-inf` and `-0.0` becomes `0.0`, so that
/// equal scores compare equal under `total_cmp`.
fn auc_key(x: f64) -> f64 {
    if x.is_nan() {
        f64::NEG_INFINITY
    } else if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// Exact ROC AUC of `scores` (higher = more positive) against `labels`, ties
/// counted one half; `None` when either class is absent.
///
/// ```
/// // positives 0.9 and 0.4, negatives 0.4 and 0.1: 3.5 of 4 pairs won.
/// let auc = seqrec_eval::auc(&[0.9f32, 0.4, 0.4, 0.1], &[true, true, false, false]);
/// assert_eq!(auc, Some(0.875));
/// ```
///
/// # Panics
/// If the slices differ in length (a caller bug).
pub fn auc<S: Copy + Into<f64>>(scores: &[S], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "auc: scores and labels differ in length");
    let mut pairs: Vec<(f64, bool)> = scores.iter().zip(labels).map(|(&s, &l)| (auc_key(s.into()), l)).collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let n_pos = pairs.iter().filter(|p| p.1).count() as u128;
    let n_neg = pairs.len() as u128 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // twice the number of (positive above negative) pairs, ties counting one.
    let mut twice_wins: u128 = 0;
    let mut neg_below: u128 = 0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        let (mut p, mut q) = (0u128, 0u128);
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                p += 1;
            } else {
                q += 1;
            }
            j += 1;
        }
        twice_wins += 2 * p * neg_below + p * q;
        neg_below += q;
        i = j;
    }
    Some(twice_wins as f64 / (2 * n_pos * n_neg) as f64)
}

/// The log-loss term of one prediction (clipped, NaN costs the maximum).
fn log_loss_term(p: f64, label: bool) -> f64 {
    if p.is_nan() {
        return -LOG_LOSS_EPS.ln();
    }
    let p = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
    if label {
        -p.ln()
    } else {
        -(1.0 - p).ln()
    }
}

/// Mean binary cross-entropy of probabilities `probs`, clipped to
/// `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`; `None` when empty.
///
/// # Panics
/// If the slices differ in length (a caller bug).
pub fn log_loss<S: Copy + Into<f64>>(probs: &[S], labels: &[bool]) -> Option<f64> {
    assert_eq!(probs.len(), labels.len(), "log_loss: probs and labels differ in length");
    if probs.is_empty() {
        return None;
    }
    let sum: f64 = probs.iter().zip(labels).map(|(&p, &l)| log_loss_term(p.into(), l)).sum();
    Some(sum / probs.len() as f64)
}

/// True when probability `p` predicts `label` at threshold 0.5 (`p > 0.5`
/// predicts positive, so exactly 0.5 predicts negative; NaN is wrong).
fn is_correct(p: f64, label: bool) -> bool {
    !p.is_nan() && (p > 0.5) == label
}

/// Fraction of predictions on the right side of 0.5 (`p > 0.5` is positive);
/// `None` when empty.
///
/// # Panics
/// If the slices differ in length (a caller bug).
pub fn accuracy<S: Copy + Into<f64>>(probs: &[S], labels: &[bool]) -> Option<f64> {
    assert_eq!(probs.len(), labels.len(), "accuracy: probs and labels differ in length");
    if probs.is_empty() {
        return None;
    }
    let right = probs.iter().zip(labels).filter(|(&p, &l)| is_correct(p.into(), l)).count();
    Some(right as f64 / probs.len() as f64)
}

/// Collects predictions batch by batch (or from parallel workers) and
/// finishes into [`ClassificationMetrics`]; exact AUC needs every score, so
/// this holds them all (8 bytes + 1 per prediction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassificationAccumulator {
    probs: Vec<f64>,
    labels: Vec<bool>,
}

impl ClassificationAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of predictions added.
    pub fn len(&self) -> usize {
        self.probs.len()
    }

    /// True before the first prediction.
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }

    /// Adds one predicted probability of the positive class and its label.
    pub fn add(&mut self, prob: f64, label: bool) {
        self.probs.push(prob);
        self.labels.push(label);
    }

    /// Adds a batch.
    ///
    /// # Panics
    /// If the slices differ in length (a caller bug).
    pub fn add_batch<S: Copy + Into<f64>>(&mut self, probs: &[S], labels: &[bool]) {
        assert_eq!(probs.len(), labels.len(), "add_batch: probs and labels differ in length");
        self.probs.extend(probs.iter().map(|&p| p.into()));
        self.labels.extend_from_slice(labels);
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &ClassificationAccumulator) {
        self.probs.extend_from_slice(&other.probs);
        self.labels.extend_from_slice(&other.labels);
    }

    /// The metrics over everything added. Log-loss is summed in fixed point
    /// so that the order of batches and merges cannot change it.
    pub fn finish(&self) -> ClassificationMetrics {
        const SCALE: f64 = 4_294_967_296.0; // 2^32; terms are at most -ln(1e-7) < 17
        let n = self.probs.len();
        let fixed: i128 =
            self.probs.iter().zip(&self.labels).map(|(&p, &l)| (log_loss_term(p, l) * SCALE).round() as i128).sum();
        let log_loss = (n > 0).then(|| fixed as f64 / SCALE / n as f64);
        ClassificationMetrics {
            n: n as u64,
            n_positive: self.labels.iter().filter(|&&l| l).count() as u64,
            auc: auc(&self.probs, &self.labels),
            log_loss,
            accuracy: accuracy(&self.probs, &self.labels),
        }
    }
}

/// Finished classification metrics (`None`/`null` where undefined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Number of predictions.
    pub n: u64,
    /// Number of positive labels.
    pub n_positive: u64,
    /// ROC AUC, ties counted one half (`None` when a class is absent).
    pub auc: Option<f64>,
    /// Mean clipped binary cross-entropy.
    pub log_loss: Option<f64>,
    /// Accuracy at threshold 0.5.
    pub accuracy: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// O(n^2) pair count, the definition of AUC.
    fn auc_brute(scores: &[f32], labels: &[bool]) -> f64 {
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li && !lj {
                    pairs += 1.0;
                    let (a, b) = (scores[i], scores[j]);
                    if a > b {
                        wins += 1.0;
                    } else if a == b {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_by_hand() {
        // positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4) (0.9>0.1)
        // (0.4=0.4 -> 1/2) (0.4>0.1) = 3.5 of 4.
        let s = [0.9f32, 0.4, 0.4, 0.1];
        let l = [true, true, false, false];
        assert!(close(auc(&s, &l).unwrap(), 0.875));
        assert!(close(auc(&[0.1f32, 0.9], &[true, false]).unwrap(), 0.0));
        assert!(close(auc(&[0.5f64; 6], &[true, false, true, false, false, true]).unwrap(), 0.5));
        assert_eq!(auc(&[0.1f32, 0.2], &[true, true]), None);
        assert_eq!(auc::<f32>(&[], &[]), None);
        // -0.0 and 0.0 tie; NaN sits below everything.
        assert!(close(auc(&[-0.0f32, 0.0], &[true, false]).unwrap(), 0.5));
        assert!(close(auc(&[f32::NAN, -5.0], &[true, false]).unwrap(), 0.0));
    }

    #[test]
    fn auc_matches_pairwise_count_on_random_data() {
        // a small LCG keeps the test free of dependencies.
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for trial in 0..20 {
            let n = 50 + trial * 7;
            // scores on a coarse grid, so many ties.
            let scores: Vec<f32> = (0..n).map(|_| (next() % 13) as f32 / 12.0).collect();
            let labels: Vec<bool> = scores.iter().map(|&s| (next() % 100) as f32 / 100.0 < s).collect();
            if let Some(a) = auc(&scores, &labels) {
                assert!(close(a, auc_brute(&scores, &labels)), "trial {trial}");
            }
        }
    }

    #[test]
    fn log_loss_and_accuracy_by_hand() {
        let p = [0.8f32, 0.4, 0.5, 1.0];
        let l = [true, false, true, false];
        let want = (-(0.8f64).ln() - (0.6f64).ln() - (0.5f64).ln() - LOG_LOSS_EPS.ln()) / 4.0;
        // f32 0.8 and 0.4 are not exactly 0.8 and 0.4.
        assert!((log_loss(&p, &l).unwrap() - want).abs() < 1e-7);
        // right: 0.8 (pos), 0.4 (neg); wrong: 0.5 (predicts neg), 1.0.
        assert!(close(accuracy(&p, &l).unwrap(), 0.5));
        assert!(close(log_loss(&[0.0f64], &[false]).unwrap(), -(1.0 - LOG_LOSS_EPS).ln()));
        assert!(close(log_loss(&[f64::NAN], &[true]).unwrap(), -LOG_LOSS_EPS.ln()));
        assert_eq!(accuracy(&[f64::NAN, f64::NAN], &[true, false]), Some(0.0));
        assert_eq!(log_loss::<f32>(&[], &[]), None);
    }

    #[test]
    fn accumulator_is_order_independent() {
        let p: Vec<f64> = (0..101).map(|i| ((i * 31) % 97) as f64 / 97.0).collect();
        let l: Vec<bool> = (0..101).map(|i| i % 3 == 0).collect();
        let mut whole = ClassificationAccumulator::new();
        whole.add_batch(&p, &l);
        let want = whole.finish();
        assert_eq!(want.n, 101);
        assert_eq!(want.n_positive, 34);
        assert!(close(want.auc.unwrap(), auc(&p, &l).unwrap()));
        assert!((want.log_loss.unwrap() - log_loss(&p, &l).unwrap()).abs() < 1e-9);
        let mut merged = ClassificationAccumulator::new();
        for (cp, cl) in p.chunks(10).zip(l.chunks(10)).rev() {
            let mut part = ClassificationAccumulator::new();
            for (&pi, &li) in cp.iter().zip(cl) {
                part.add(pi, li);
            }
            merged.merge(&part);
        }
        assert_eq!(merged.finish(), want);
        let empty = ClassificationAccumulator::new().finish();
        assert_eq!((empty.auc, empty.log_loss, empty.accuracy), (None, None, None));
    }
}
