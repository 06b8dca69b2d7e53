//! Next-item evaluation over history windows, for the models that read a
//! user's last `len` events at once (SASRec, the embedding-GRU): the shared
//! scoring path of the per-user leave-last-one-out protocol.
//!
//! Every event of the evaluated part is a target; its window holds the up to
//! `len` events just before it in the same sequence, of any part (the test
//! target sees the validation event and the training history). The scorer
//! scores every id `1..n_ids`; the target's rank counts the ids scoring
//! strictly higher and places it among the ties by [`TieMode`] (median by
//! default), exactly as [`crate::next_item::evaluate_sessions`] does.
//!
//! Options, both off by default and both reported in [`WindowEvalReport`]:
//! - `exclude_history`: the ids the user interacted with before the target
//!   (the target's own id never) are removed from the candidates;
//! - `sampled`: the target is ranked against `n` sampled negatives instead
//!   of the catalogue (uniform or by training popularity, never an id of the
//!   user's sequence, without replacement), as papers that report
//!   "HR@10 over 100 negatives" do. The report's `protocol` says so loudly:
//!   these numbers are not comparable to full-ranking ones.

use rayon::prelude::*;
use seqrec_data::batch::{Targets, WindowBatch, Windows, WindowsConfig};
use seqrec_data::rng::{AliasTable, Rng};
use seqrec_data::split::Part;
use seqrec_data::{Error, SequenceStore};
use seqrec_eval::{rank, rank_from_counts, RankingAccumulator, RankingMetrics, TieMode};
use serde::{Deserialize, Serialize};

use crate::baseline::training_support;
use crate::error::{ModelError, Result};

/// A model that scores every id as the next item after a history window.
pub trait WindowScorer {
    /// Width of a score row: the number of ids, padding id 0 included.
    fn n_ids(&self) -> usize;

    /// History width the model reads.
    fn window_len(&self) -> usize;

    /// Writes `batch.rows() × n_ids` scores (row-major; entry 0 of a row is
    /// ignored) for the history windows of `batch`. Higher is better.
    ///
    /// # Errors
    /// Any failing op of the model.
    fn score_windows(&mut self, batch: &WindowBatch, scores: &mut Vec<f32>) -> Result<()>;
}

/// How sampled negatives are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeDraw {
    /// Every id equally likely.
    Uniform,
    /// Proportional to the id's count in the training part.
    Popularity,
}

/// Sampled-negative evaluation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampledEval {
    /// Negatives per target (papers use 99 or 100).
    pub n: usize,
    /// How they are drawn.
    pub draw: NegativeDraw,
    /// Seed (each target draws from its own stream, so results do not depend
    /// on the batch size).
    #[serde(default)]
    pub seed: u64,
}

/// Settings of [`evaluate_windows`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowEvalConfig {
    /// Cut-offs K of HR@K, MRR@K and NDCG@K.
    pub ks: Vec<usize>,
    /// Placement of the target among tied scores.
    pub tie_mode: TieMode,
    /// Remove the ids of the user's earlier events from the candidates.
    pub exclude_history: bool,
    /// Rank against sampled negatives instead of the full catalogue.
    pub sampled: Option<SampledEval>,
    /// Windows scored at once.
    pub batch_size: usize,
}

impl Default for WindowEvalConfig {
    fn default() -> Self {
        WindowEvalConfig {
            ks: vec![5, 10, 20],
            tie_mode: TieMode::Median,
            exclude_history: false,
            sampled: None,
            batch_size: 512,
        }
    }
}

impl WindowEvalConfig {
    /// A one-line description of the protocol, loud when it is sampled.
    pub fn protocol(&self) -> String {
        let mut s = match &self.sampled {
            None => "full ranking over every item".to_owned(),
            Some(sm) => format!(
                "SAMPLED: target ranked against {} {} negatives only (not comparable to full ranking)",
                sm.n,
                match sm.draw {
                    NegativeDraw::Uniform => "uniformly drawn",
                    NegativeDraw::Popularity => "popularity-drawn",
                }
            ),
        };
        if self.exclude_history {
            s.push_str("; the user's earlier items excluded");
        }
        s
    }
}

/// What [`evaluate_windows`] measured, with the protocol it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEvalReport {
    /// The metrics.
    pub metrics: RankingMetrics,
    /// The protocol in words ([`WindowEvalConfig::protocol`]).
    pub protocol: String,
    /// Whether the ranking was over sampled negatives.
    pub sampled: bool,
    /// Whether earlier items were excluded.
    pub exclude_history: bool,
}

/// Ranks every event of part `which` with `scorer` over its history window.
///
/// # Errors
/// [`ModelError::Invalid`] when the store is inconsistent, `parts` is not
/// aligned with it, the batch size or a cut-off is 0, a target or history
/// id is outside `1..n_ids` (naming the event), or sampling asks for more
/// negatives than the catalogue has outside some user's items; any error
/// of the scorer.
pub fn evaluate_windows<S: WindowScorer + ?Sized>(
    store: &SequenceStore,
    parts: &[Part],
    which: Part,
    scorer: &mut S,
    cfg: &WindowEvalConfig,
) -> Result<WindowEvalReport> {
    let n_ids = scorer.n_ids();
    if n_ids < 2 {
        return Err(ModelError::Invalid(format!("window evaluation: scorer has {n_ids} ids, expected at least 2")));
    }
    if cfg.ks.is_empty() || cfg.ks.contains(&0) {
        return Err(ModelError::Invalid(format!("window evaluation: cut-offs {:?}, expected positive K", cfg.ks)));
    }
    store.validate()?;
    if let Some(e) = store.items.iter().position(|&x| x == 0 || x as usize >= n_ids) {
        return Err(ModelError::Invalid(format!(
            "window evaluation: item id {} at event {e}, expected 1..{n_ids} (the model's vocabulary)",
            store.items[e]
        )));
    }
    let draws = match &cfg.sampled {
        None => None,
        Some(sm) => Some(Draws::new(store, parts, n_ids, sm)?),
    };
    let select = [which];
    let wcfg = WindowsConfig {
        len: scorer.window_len(),
        batch_size: cfg.batch_size,
        skip_first: true,
        shuffle: false,
        seed: 0,
    };
    let mut windows = Windows::new(store, Targets::of(parts, &select), &wcfg)?;
    let mut acc = RankingAccumulator::new(&cfg.ks);
    let mut scores = Vec::new();
    let mut ranks = Vec::new();
    while let Some(batch) = windows.next_batch() {
        scorer.score_windows(batch, &mut scores)?;
        if scores.len() != batch.rows() * n_ids {
            return Err(ModelError::Invalid(format!(
                "window evaluation: the scorer wrote {} scores for {} rows × {n_ids} ids",
                scores.len(),
                batch.rows()
            )));
        }
        let rank_row = |r: usize| -> f64 {
            let event = batch.target_event[r];
            let target = batch.targets[r] as usize;
            let row = &scores[r * n_ids..(r + 1) * n_ids];
            let seq = store.range(batch.seq_index[r]);
            match &draws {
                Some(d) => d.rank(row, target, event, &store.items[seq], cfg),
                None if cfg.exclude_history => {
                    let mut row = row.to_vec();
                    for &x in &store.items[seq.start..event] {
                        if x as usize != target {
                            row[x as usize] = f32::NEG_INFINITY;
                        }
                    }
                    rank_excluding(&row, target, cfg.tie_mode)
                }
                None => rank(&row[1..], target - 1, cfg.tie_mode),
            }
        };
        ranks.clear();
        ranks.par_extend((0..batch.rows()).into_par_iter().map(rank_row));
        acc.add_ranks(&ranks);
    }
    Ok(WindowEvalReport {
        metrics: acc.finish(),
        protocol: cfg.protocol(),
        sampled: cfg.sampled.is_some(),
        exclude_history: cfg.exclude_history,
    })
}

/// Rank of `row[target]` among ids `1..` whose score is not −∞ (excluded).
fn rank_excluding(row: &[f32], target: usize, mode: TieMode) -> f64 {
    let t = row[target];
    let (mut greater, mut equal) = (0usize, 0usize);
    for (i, &s) in row.iter().enumerate().skip(1) {
        if i == target || s == f32::NEG_INFINITY {
            continue;
        }
        if s > t || s.is_nan() {
            greater += 1;
        } else if s == t {
            equal += 1;
        }
    }
    if t.is_nan() {
        return (greater + equal + 1) as f64;
    }
    rank_from_counts(greater, equal, mode)
}

/// Negative draws of the sampled protocol.
struct Draws {
    n: usize,
    seed: u64,
    table: Option<AliasTable>,
    n_ids: usize,
}

impl Draws {
    fn new(store: &SequenceStore, parts: &[Part], n_ids: usize, sm: &SampledEval) -> Result<Self> {
        if sm.n == 0 {
            return Err(ModelError::Invalid("sampled evaluation: `n` is 0, expected at least 1 negative".into()));
        }
        if parts.len() != store.items.len() {
            return Err(Error::Invalid(format!(
                "sampled evaluation: {} parts for {} events",
                parts.len(),
                store.items.len()
            ))
            .into());
        }
        // Candidates of a draw: every item (uniform) or the items seen in training (popularity).
        let mut weights: Vec<f64> = match sm.draw {
            NegativeDraw::Uniform => vec![1.0; n_ids],
            NegativeDraw::Popularity => training_support(store, parts, n_ids).into_iter().map(|c| c as f64).collect(),
        };
        weights[0] = 0.0;
        let n_candidates = weights.iter().filter(|&&w| w > 0.0).count();
        for s in 0..store.n_seq() {
            let mut own: Vec<u32> = store.items[store.range(s)].to_vec();
            own.sort_unstable();
            own.dedup();
            let left = n_candidates - own.iter().filter(|&&x| weights[x as usize] > 0.0).count();
            if left < sm.n {
                return Err(ModelError::Invalid(format!(
                    "sampled evaluation: {} negatives asked, but user {} leaves only {left} candidate items",
                    sm.n,
                    store.seq_ids.get(s).copied().unwrap_or_default()
                )));
            }
        }
        let table = (sm.draw == NegativeDraw::Popularity).then(|| AliasTable::new(&weights));
        Ok(Draws { n: sm.n, seed: sm.seed, table, n_ids })
    }

    fn rank(&self, row: &[f32], target: usize, event: usize, user: &[u32], cfg: &WindowEvalConfig) -> f64 {
        let mut rng = Rng::fork(self.seed ^ 0x5A3D_1E5A, event as u64);
        let mut chosen: Vec<u32> = Vec::with_capacity(self.n);
        let mut small = Vec::with_capacity(self.n + 1);
        small.push(row[target]);
        while chosen.len() < self.n {
            let x = match &self.table {
                Some(t) => t.sample(&mut rng),
                None => 1 + rng.below(self.n_ids as u64 - 1) as usize,
            } as u32;
            if x == 0 || user.contains(&x) || chosen.contains(&x) {
                continue;
            }
            chosen.push(x);
            small.push(row[x as usize]);
        }
        rank(&small, 0, cfg.tie_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores id `x` by how often `x` follows the window's last item in a
    /// fixed table; a hand-checkable scorer.
    struct Successor {
        n_ids: usize,
        len: usize,
    }

    impl WindowScorer for Successor {
        fn n_ids(&self) -> usize {
            self.n_ids
        }
        fn window_len(&self) -> usize {
            self.len
        }
        fn score_windows(&mut self, batch: &WindowBatch, scores: &mut Vec<f32>) -> Result<()> {
            scores.clear();
            for r in 0..batch.rows() {
                let last = batch.history[(r + 1) * batch.len - 1];
                // the successor of `last` scores 2, ids below it 1, the rest 0.
                scores.extend((0..self.n_ids).map(|x| {
                    if x == last as usize % (self.n_ids - 1) + 1 {
                        2.0
                    } else if x < last as usize {
                        1.0
                    } else {
                        0.0
                    }
                }));
            }
            Ok(())
        }
    }

    fn store() -> (SequenceStore, Vec<Part>) {
        // user 1: 1 2 3 4 (4 test, 3 valid); user 2: 5 1 3 (3 test, 1 valid).
        let store = SequenceStore {
            offsets: vec![0, 4, 7],
            seq_ids: vec![1, 2],
            items: vec![1, 2, 3, 4, 5, 1, 3],
            times: (0..7).collect(),
            ..Default::default()
        };
        use Part::*;
        (store, vec![Train, Train, Valid, Test, Train, Valid, Test])
    }

    #[test]
    fn full_ranking_matches_hand_computed_ranks() {
        let (store, parts) = store();
        let mut s = Successor { n_ids: 6, len: 2 };
        let cfg = WindowEvalConfig { ks: vec![1, 3], batch_size: 1, ..Default::default() };
        let r = evaluate_windows(&store, &parts, Part::Test, &mut s, &cfg).unwrap();
        // user 1: last = 3, its successor 4 is the target and scores 2: rank 1.
        // user 2: last = 1, its successor 2 scores 2; the target 3 scores 0 tied with
        // ids 1, 4, 5: median rank 1 + 1 + 3/2 = 3.5, a miss at K = 3.
        let m = r.metrics;
        assert_eq!(m.n, 2);
        assert_eq!(m.recall(1), Some(0.5));
        assert_eq!(m.recall(3), Some(0.5));
        assert!((m.mrr(3).unwrap() - 0.5).abs() < 1e-12);
        assert!(!r.sampled);
        assert_eq!(r.protocol, "full ranking over every item");
        // batch size does not matter
        let cfg8 = WindowEvalConfig { batch_size: 8, ..cfg.clone() };
        assert_eq!(evaluate_windows(&store, &parts, Part::Test, &mut s, &cfg8).unwrap().metrics, m);
    }

    #[test]
    fn excluding_history_removes_earlier_items_but_never_the_target() {
        let (store, parts) = store();
        let mut s = Successor { n_ids: 6, len: 2 };
        let cfg = WindowEvalConfig { ks: vec![3], exclude_history: true, ..Default::default() };
        let r = evaluate_windows(&store, &parts, Part::Test, &mut s, &cfg).unwrap();
        // user 2's target 3: candidates 2, 4 (5 and 1 were seen): 2 scores higher, 4 ties → 2.5.
        assert!((r.metrics.mrr(3).unwrap() - (1.0 + 1.0 / 2.5) / 2.0).abs() < 1e-12);
        assert!(r.protocol.contains("excluded"));
    }

    #[test]
    fn sampled_protocol_is_loud_and_never_draws_the_users_items() {
        let mut items = Vec::new();
        let mut offsets = vec![0];
        for u in 0..20u32 {
            items.extend([1 + u % 5, 6 + u % 7, 20 + u]);
            offsets.push(items.len());
        }
        let n = items.len();
        let store = SequenceStore {
            offsets,
            seq_ids: (1..=20).collect(),
            items,
            times: (0..n as i64).collect(),
            ..Default::default()
        };
        let parts: Vec<Part> = (0..n).map(|e| if e % 3 == 2 { Part::Test } else { Part::Train }).collect();
        // A scorer that scores the target above everything the user touched and
        // equal to nothing else: with negatives drawn outside the user's items,
        // the target's score id-order is what decides.
        struct ById;
        impl WindowScorer for ById {
            fn n_ids(&self) -> usize {
                60
            }
            fn window_len(&self) -> usize {
                2
            }
            fn score_windows(&mut self, batch: &WindowBatch, scores: &mut Vec<f32>) -> Result<()> {
                scores.clear();
                for _ in 0..batch.rows() {
                    scores.extend((0..60).map(|x| x as f32));
                }
                Ok(())
            }
        }
        for draw in [NegativeDraw::Uniform, NegativeDraw::Popularity] {
            let cfg = WindowEvalConfig {
                ks: vec![1],
                sampled: Some(SampledEval { n: 10, draw, seed: 3 }),
                ..Default::default()
            };
            let r = evaluate_windows(&store, &parts, Part::Test, &mut ById, &cfg).unwrap();
            assert!(r.sampled && r.protocol.starts_with("SAMPLED"), "{}", r.protocol);
            // targets are ids 20..39; every rank is in 1..=11.
            assert_eq!(r.metrics.n, 20);
            let again = evaluate_windows(&store, &parts, Part::Test, &mut ById, &cfg).unwrap();
            assert_eq!(again.metrics, r.metrics, "seeded");
        }
        // popularity draws only training items: every negative is one of ids
        // 1..=12 here, all scoring below the targets → HR@1 = 1.
        let cfg = WindowEvalConfig {
            ks: vec![1],
            sampled: Some(SampledEval { n: 3, draw: NegativeDraw::Popularity, seed: 1 }),
            ..Default::default()
        };
        let r = evaluate_windows(&store, &parts, Part::Test, &mut ById, &cfg).unwrap();
        assert_eq!(r.metrics.recall(1), Some(1.0));
        let too_many = WindowEvalConfig {
            sampled: Some(SampledEval { n: 58, draw: NegativeDraw::Uniform, seed: 0 }),
            ..Default::default()
        };
        let err = evaluate_windows(&store, &parts, Part::Test, &mut ById, &too_many).unwrap_err();
        assert!(err.to_string().contains("58 negatives asked, but user 1 leaves only 56"), "{err}");
        // popularity: 12 training items, a user holds 2 of them → 10 left.
        let pop = WindowEvalConfig {
            sampled: Some(SampledEval { n: 11, draw: NegativeDraw::Popularity, seed: 0 }),
            ..Default::default()
        };
        let err = evaluate_windows(&store, &parts, Part::Test, &mut ById, &pop).unwrap_err();
        assert!(err.to_string().contains("leaves only 10"), "{err}");
    }

    #[test]
    fn an_item_beyond_the_vocabulary_is_an_error_naming_the_event() {
        let (store, parts) = store();
        let mut s = Successor { n_ids: 5, len: 2 };
        let err = evaluate_windows(&store, &parts, Part::Test, &mut s, &WindowEvalConfig::default()).unwrap_err();
        assert!(err.to_string().contains("item id 5 at event 4"), "{err}");
    }
}
