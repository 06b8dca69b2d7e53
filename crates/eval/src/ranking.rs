//! Recall@K, MRR@K and NDCG@K over a stream of target ranks.
//!
//! Each target contributes its rank `r` (1-based, possibly fractional under
//! [`TieMode::Median`]). Convention for every cut-off `K`, applied to
//! fractional ranks as they are: the target is a hit when `r <= K`; a hit
//! adds `1` to Recall@K (= HR@K, one target per event), `1 / r` to MRR@K and
//! `1 / log2(r + 1)` to NDCG@K (the ideal DCG of one relevant item is 1);
//! a miss adds 0 to all three. So a median rank of 20.5 is a miss at K = 20.
//!
//! Sums are kept in 64.64 fixed point (`i128`), which makes them exactly
//! associative: results do not depend on how targets were batched or how
//! accumulators of parallel workers were merged.

use serde::{Deserialize, Serialize};

use crate::rank::{rank, Score, TieMode};

/// Fixed-point scale of the per-target terms (all in `[0, 1]`).
const SCALE: f64 = 18_446_744_073_709_551_616.0; // 2^64

fn to_fixed(x: f64) -> i128 {
    (x * SCALE).round() as i128
}

fn from_fixed(sum: i128, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    sum as f64 / SCALE / n as f64
}

/// Streaming ranking metrics at a fixed set of cut-offs.
///
/// ```
/// use seqrec_eval::RankingAccumulator;
/// let mut a = RankingAccumulator::new(&[1, 5]);
/// a.add_ranks(&[1.0, 4.0]);
/// let mut b = RankingAccumulator::new(&[1, 5]);
/// b.add_rank(8.0);
/// a.merge(&b);
/// let m = a.finish();
/// assert_eq!(m.recall(5), Some(2.0 / 3.0));
/// assert_eq!(m.mrr(5), Some((1.0 + 0.25) / 3.0));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankingAccumulator {
    ks: Vec<usize>,
    n: u64,
    hits: Vec<u64>,
    rr: Vec<i128>,
    dcg: Vec<i128>,
    /// Sum of ranks in half units (ranks are multiples of 0.5 from every
    /// [`TieMode`]; other values are rounded to the nearest half).
    rank_halves: u128,
}

impl RankingAccumulator {
    /// An empty accumulator for the cut-offs `ks` (sorted and de-duplicated).
    pub fn new(ks: &[usize]) -> Self {
        let mut ks = ks.to_vec();
        ks.sort_unstable();
        ks.dedup();
        let m = ks.len();
        RankingAccumulator { ks, n: 0, hits: vec![0; m], rr: vec![0; m], dcg: vec![0; m], rank_halves: 0 }
    }

    /// The cut-offs, ascending.
    pub fn ks(&self) -> &[usize] {
        &self.ks
    }

    /// Number of targets added so far.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// True before the first target.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Adds one target by its 1-based rank; a rank below 1 or NaN (never
    /// produced by [`rank`]) is counted as a miss at every cut-off.
    pub fn add_rank(&mut self, r: f64) {
        self.n += 1;
        if r.is_nan() || r < 1.0 {
            return;
        }
        self.rank_halves += (r * 2.0).round() as u128;
        let rr = to_fixed(1.0 / r);
        let dcg = to_fixed(1.0 / (r + 1.0).log2());
        for (i, &k) in self.ks.iter().enumerate() {
            if r <= k as f64 {
                self.hits[i] += 1;
                self.rr[i] += rr;
                self.dcg[i] += dcg;
            }
        }
    }

    /// Adds every rank of `ranks`.
    pub fn add_ranks(&mut self, ranks: &[f64]) {
        ranks.iter().for_each(|&r| self.add_rank(r));
    }

    /// Ranks `scores[target]` among all `scores` with `mode` and adds it.
    ///
    /// # Panics
    /// If `target >= scores.len()` (a caller bug).
    pub fn add_scores<S: Score>(&mut self, scores: &[S], target: usize, mode: TieMode) {
        self.add_rank(rank(scores, target, mode));
    }

    /// Folds `other` (same cut-offs) into `self`.
    ///
    /// # Panics
    /// If the cut-offs differ (a caller bug).
    pub fn merge(&mut self, other: &RankingAccumulator) {
        assert_eq!(self.ks, other.ks, "merging ranking accumulators with different cut-offs");
        self.n += other.n;
        self.rank_halves += other.rank_halves;
        for i in 0..self.ks.len() {
            self.hits[i] += other.hits[i];
            self.rr[i] += other.rr[i];
            self.dcg[i] += other.dcg[i];
        }
    }

    /// The metrics so far (all zero when no target was added).
    pub fn finish(&self) -> RankingMetrics {
        let at = self
            .ks
            .iter()
            .enumerate()
            .map(|(i, &k)| MetricsAtK {
                k,
                recall: if self.n == 0 { 0.0 } else { self.hits[i] as f64 / self.n as f64 },
                mrr: from_fixed(self.rr[i], self.n),
                ndcg: from_fixed(self.dcg[i], self.n),
            })
            .collect();
        let mean_rank = if self.n == 0 { 0.0 } else { self.rank_halves as f64 / 2.0 / self.n as f64 };
        RankingMetrics { n: self.n, mean_rank, at }
    }
}

/// Ranking metrics at one cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricsAtK {
    /// The cut-off.
    pub k: usize,
    /// Recall@K (= HR@K with one target per event).
    pub recall: f64,
    /// MRR@K.
    pub mrr: f64,
    /// NDCG@K.
    pub ndcg: f64,
}

/// The finished ranking metrics, serialisable into run summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    /// Number of targets.
    pub n: u64,
    /// Mean rank over all targets (invalid ranks excluded from the sum).
    pub mean_rank: f64,
    /// One entry per cut-off, ascending.
    pub at: Vec<MetricsAtK>,
}

impl RankingMetrics {
    /// The metrics at cut-off `k`, if it was requested.
    pub fn at_k(&self, k: usize) -> Option<&MetricsAtK> {
        self.at.iter().find(|m| m.k == k)
    }

    /// Recall@`k`, if requested.
    pub fn recall(&self, k: usize) -> Option<f64> {
        self.at_k(k).map(|m| m.recall)
    }

    /// MRR@`k`, if requested.
    pub fn mrr(&self, k: usize) -> Option<f64> {
        self.at_k(k).map(|m| m.mrr)
    }

    /// NDCG@`k`, if requested.
    pub fn ndcg(&self, k: usize) -> Option<f64> {
        self.at_k(k).map(|m| m.ndcg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_metrics() {
        // ranks 1, 3, 6 and 2.5 (a median tie) at K = 1, 5.
        let mut acc = RankingAccumulator::new(&[5, 1, 5]);
        assert_eq!(acc.ks(), &[1, 5]);
        acc.add_ranks(&[1.0, 3.0, 6.0, 2.5]);
        let m = acc.finish();
        assert_eq!(m.n, 4);
        assert!(close(m.mean_rank, 12.5 / 4.0));
        let m1 = m.at_k(1).unwrap();
        assert!(close(m1.recall, 0.25) && close(m1.mrr, 0.25) && close(m1.ndcg, 0.25));
        let m5 = m.at_k(5).unwrap();
        assert!(close(m5.recall, 0.75));
        assert!(close(m5.mrr, (1.0 + 1.0 / 3.0 + 1.0 / 2.5) / 4.0));
        assert!(close(m5.ndcg, (1.0 + 0.5 + 1.0 / 3.5f64.log2()) / 4.0));
        assert_eq!(m.recall(7), None);
    }

    #[test]
    fn fractional_rank_just_past_k_is_a_miss() {
        let mut acc = RankingAccumulator::new(&[20]);
        acc.add_rank(20.5);
        acc.add_rank(20.0);
        let m = acc.finish();
        assert!(close(m.recall(20).unwrap(), 0.5));
        assert!(close(m.mrr(20).unwrap(), 1.0 / 20.0 / 2.0));
    }

    #[test]
    fn scores_with_ties_go_through_the_mode() {
        let scores = [0.3f32, 0.3, 0.3, 0.1];
        let mut opt = RankingAccumulator::new(&[1]);
        opt.add_scores(&scores, 0, TieMode::Optimistic);
        let mut pes = RankingAccumulator::new(&[1]);
        pes.add_scores(&scores, 0, TieMode::Pessimistic);
        let mut med = RankingAccumulator::new(&[2]);
        med.add_scores(&scores, 0, TieMode::Median);
        assert_eq!(opt.finish().recall(1), Some(1.0));
        assert_eq!(pes.finish().recall(1), Some(0.0));
        assert_eq!(med.finish().mrr(2), Some(0.5));
    }

    #[test]
    fn empty_and_invalid() {
        let acc = RankingAccumulator::new(&[10]);
        assert!(acc.is_empty());
        let m = acc.finish();
        assert_eq!((m.n, m.at[0].recall, m.at[0].mrr), (0, 0.0, 0.0));
        let mut acc = RankingAccumulator::new(&[10]);
        acc.add_rank(f64::NAN);
        acc.add_rank(0.0);
        acc.add_rank(1.0);
        assert_eq!(acc.len(), 3);
        assert!(close(acc.finish().recall(10).unwrap(), 1.0 / 3.0));
    }

    #[test]
    fn batching_and_merging_do_not_change_results() {
        // ranks with awkward reciprocals (1/3, 1/7, ...) so float order would matter.
        let ranks: Vec<f64> = (0..1000).map(|i| 1.0 + ((i * 37) % 29) as f64 * 0.5).collect();
        let mut whole = RankingAccumulator::new(&[1, 5, 10, 20]);
        whole.add_ranks(&ranks);
        let reference = whole.finish();
        for batch in [1usize, 3, 64, 999] {
            let mut total = RankingAccumulator::new(&[1, 5, 10, 20]);
            // merge the batches in reverse order to also shuffle the summation order.
            for chunk in ranks.chunks(batch).rev() {
                let mut part = RankingAccumulator::new(&[20, 10, 5, 1]);
                part.add_ranks(chunk);
                total.merge(&part);
            }
            assert_eq!(total, whole, "batch size {batch}");
            assert_eq!(total.finish(), reference);
        }
    }

    #[test]
    fn serialises_to_json_and_back() {
        let mut acc = RankingAccumulator::new(&[20]);
        acc.add_rank(2.0);
        let m = acc.finish();
        assert!(close(m.ndcg(20).unwrap(), 1.0 / 3f64.log2()));
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"recall\":1.0"), "{json}");
        let back: RankingMetrics = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
