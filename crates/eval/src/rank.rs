//! The rank of a target among scored candidates, with ties handled
//! explicitly.
//!
//! A model that gives many items the same score (a constant model, a
//! saturated softmax, a popularity count) must not be rewarded for it, so the
//! rank is computed from two counts: `n_greater`, the candidates scoring
//! strictly higher than the target, and `n_equal`, those scoring exactly the
//! same (the target itself not included). [`TieMode`] says where inside the
//! block of ties the target is placed.
//!
//! NaN policy: a NaN score is never allowed to improve a rank. A target whose
//! score is NaN gets the worst rank (the number of candidates), whatever the
//! mode; another candidate whose score is NaN counts as scoring higher than
//! the target.

use serde::{Deserialize, Serialize};

/// Where the target is placed among the candidates that tie with it.
///
/// GRU4Rec's evaluation calls [`TieMode::Optimistic`] `standard` and
/// [`TieMode::Pessimistic`] `conservative`; both names are accepted when
/// deserialising.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieMode {
    /// Ahead of every tie: `n_greater + 1` (GRU4Rec's `standard`).
    #[serde(alias = "standard")]
    Optimistic,
    /// Behind every tie: `n_greater + n_equal + 1` (GRU4Rec's `conservative`).
    #[serde(alias = "conservative")]
    Pessimistic,
    /// In the middle of the ties: `n_greater + n_equal / 2 + 1`, the average of
    /// the two above and the expected rank under a random tie-break; may be
    /// fractional (`x.5`).
    #[default]
    #[serde(alias = "average")]
    Median,
}

impl TieMode {
    /// GRU4Rec's `standard` mode, which is [`TieMode::Optimistic`].
    pub const STANDARD: TieMode = TieMode::Optimistic;
}

/// A score type that can be ranked (`f32` or `f64`).
pub trait Score: Copy + PartialOrd {
    /// True for NaN.
    fn is_nan_score(self) -> bool;
}

impl Score for f32 {
    fn is_nan_score(self) -> bool {
        self.is_nan()
    }
}

impl Score for f64 {
    fn is_nan_score(self) -> bool {
        self.is_nan()
    }
}

/// The 1-based rank from the counts of candidates scoring strictly higher
/// (`n_greater`) and equal (`n_equal`, the target excluded).
pub fn rank_from_counts(n_greater: usize, n_equal: usize, mode: TieMode) -> f64 {
    let g = n_greater as f64;
    match mode {
        TieMode::Optimistic => g + 1.0,
        TieMode::Pessimistic => g + n_equal as f64 + 1.0,
        TieMode::Median => g + n_equal as f64 / 2.0 + 1.0,
    }
}

/// Counts `(n_greater, n_equal)` of the candidates other than `target`
/// against the target's score; NaN candidates count as greater.
///
/// # Panics
/// If `target >= scores.len()` (a caller bug).
// `!(s <= t)` on purpose: it is "greater or NaN" in one comparison that vectorises.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn tie_counts<S: Score>(scores: &[S], target: usize) -> (usize, usize) {
    let t = scores[target];
    if t.is_nan_score() {
        // Nothing equals NaN; only NaN candidates count as greater.
        let nan = scores.iter().enumerate().filter(|&(i, s)| i != target && s.is_nan_score()).count();
        return (nan, 0);
    }
    // Branch-free over every entry, the target included, so that the loop
    // vectorises (full ranking spends its time here): `!(s <= t)` is
    // "greater or NaN". Counted in u32 blocks (vector lanes), summed in usize.
    let (mut greater, mut equal) = (0usize, 0usize);
    for block in scores.chunks(1 << 20) {
        let (mut g, mut e) = (0u32, 0u32);
        for &s in block {
            g += u32::from(!(s <= t));
            e += u32::from(s == t);
        }
        greater += g as usize;
        equal += e as usize;
    }
    // The target itself scored equal (t is not NaN).
    (greater, equal - 1)
}

/// The 1-based rank of `scores[target]` among all of `scores` (higher score =
/// better), ties placed by `mode`. A NaN target score gets the worst rank,
/// `scores.len()`.
///
/// ```
/// use seqrec_eval::{rank, TieMode};
/// let scores = [0.9f32, 0.5, 0.5, 0.1, 0.5];
/// assert_eq!(rank(&scores, 2, TieMode::Optimistic), 2.0);
/// assert_eq!(rank(&scores, 2, TieMode::Pessimistic), 4.0);
/// assert_eq!(rank(&scores, 2, TieMode::Median), 3.0);
/// ```
///
/// # Panics
/// If `target >= scores.len()` (a caller bug).
pub fn rank<S: Score>(scores: &[S], target: usize, mode: TieMode) -> f64 {
    if scores[target].is_nan_score() {
        return scores.len() as f64;
    }
    let (greater, equal) = tie_counts(scores, target);
    rank_from_counts(greater, equal, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_to_ranks_by_mode() {
        assert_eq!(rank_from_counts(0, 0, TieMode::Optimistic), 1.0);
        assert_eq!(rank_from_counts(3, 4, TieMode::Optimistic), 4.0);
        assert_eq!(rank_from_counts(3, 4, TieMode::Pessimistic), 8.0);
        assert_eq!(rank_from_counts(3, 4, TieMode::Median), 6.0);
        assert_eq!(rank_from_counts(3, 3, TieMode::Median), 5.5);
        assert_eq!(TieMode::STANDARD, TieMode::Optimistic);
    }

    /// The branch-free counting equals the definition written as branches,
    /// with ties, NaN candidates and NaN targets, in f32 and f64.
    #[test]
    fn counts_equal_the_branchy_definition() {
        fn naive<S: Score>(s: &[S], target: usize) -> (usize, usize) {
            let t = s[target];
            let (mut g, mut e) = (0, 0);
            for (i, &x) in s.iter().enumerate() {
                if i == target {
                    continue;
                }
                if x > t || x.is_nan_score() {
                    g += 1;
                } else if x == t {
                    e += 1;
                }
            }
            (g, e)
        }
        let mut x = 17u64;
        for len in [1usize, 2, 7, 64, 1000] {
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    match (x >> 60) % 8 {
                        0 => f32::NAN,
                        1 | 2 => 0.5,
                        _ => ((x >> 33) % 7) as f32 * 0.25,
                    }
                })
                .collect();
            let w: Vec<f64> = v.iter().map(|&a| f64::from(a)).collect();
            for target in 0..len {
                assert_eq!(tie_counts(&v, target), naive(&v, target), "f32 len {len} target {target}");
                assert_eq!(tie_counts(&w, target), naive(&w, target), "f64 len {len} target {target}");
            }
        }
    }

    #[test]
    fn ranks_with_ties_by_hand() {
        // target 0.5 at index 2: one above (0.9), two equal (indices 1 and 4), one below.
        let s = [0.9f32, 0.5, 0.5, 0.1, 0.5];
        assert_eq!(tie_counts(&s, 2), (1, 2));
        assert_eq!(rank(&s, 2, TieMode::Optimistic), 2.0);
        assert_eq!(rank(&s, 2, TieMode::Pessimistic), 4.0);
        assert_eq!(rank(&s, 2, TieMode::Median), 3.0);
        assert_eq!(rank(&s, 0, TieMode::Pessimistic), 1.0);
        assert_eq!(rank(&s, 3, TieMode::Median), 5.0);
        // a constant model: median puts the target in the middle of all n.
        let c = [0.0f64; 10];
        assert_eq!(rank(&c, 7, TieMode::Median), 5.5);
        assert_eq!(rank(&c, 7, TieMode::Optimistic), 1.0);
        assert_eq!(rank(&c, 7, TieMode::Pessimistic), 10.0);
    }

    #[test]
    fn nan_never_helps() {
        let s = [f32::NAN, 0.2, 0.1];
        assert_eq!(rank(&s, 0, TieMode::Optimistic), 3.0);
        // the NaN candidate counts above the target.
        assert_eq!(rank(&s, 1, TieMode::Optimistic), 2.0);
        assert_eq!(rank(&s, 2, TieMode::Median), 3.0);
        let single = [f64::NAN];
        assert_eq!(rank(&single, 0, TieMode::Median), 1.0);
    }

    #[test]
    fn serde_names_and_aliases() {
        let parse = |s: &str| serde_json::from_str::<TieMode>(&format!("\"{s}\"")).unwrap();
        assert_eq!(parse("standard"), TieMode::Optimistic);
        assert_eq!(parse("optimistic"), TieMode::Optimistic);
        assert_eq!(parse("conservative"), TieMode::Pessimistic);
        assert_eq!(parse("median"), TieMode::Median);
        assert_eq!(parse("average"), TieMode::Median);
        assert_eq!(serde_json::to_string(&TieMode::Median).unwrap(), "\"median\"");
        assert_eq!(TieMode::default(), TieMode::Median);
    }
}
