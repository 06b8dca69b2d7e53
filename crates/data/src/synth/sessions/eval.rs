//! The test protocol of the synthetic sessions (GRU4Rec's) and the oracle's
//! report.
//!
//! Split: with `t_max` the last event time, sessions whose first event is at
//! or after `t_max − 86,400,000 ms` are test, the rest training. In each test
//! session, events whose item never occurs in a training session are
//! removed, and sessions left with fewer than 2 events are dropped. Every
//! event after the first of a remaining test session is a target, predicted
//! from the (filtered) events before it; all `n_items` items are ranked and
//! ties take the median rank.
//!
//! The oracle is exact on unfiltered prefixes; when an unseen item was
//! removed from a test session its later prefixes are no longer samples of
//! the process (`n_removed_events` in the report says how often; with the
//! defaults it is rare).

use std::path::Path;

use rayon::prelude::*;
use seqrec_eval::{rank, RankingAccumulator, RankingMetrics, TieMode};
use serde::{Deserialize, Serialize};

use super::{SessionWorld, SessionsConfig, SyntheticSessions, DAY_MS};
use crate::io::write_atomic;
use crate::{Error, Result};

/// Training sessions and filtered test sessions of the last-day protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct LastDaySplit {
    /// First test time: sessions starting at or after it are test (ms).
    pub test_from_ms: i64,
    /// Indices of training sessions.
    pub train: Vec<usize>,
    /// Indices of the kept test sessions.
    pub test: Vec<usize>,
    /// CSR offsets of the filtered test sessions' items (`test.len() + 1`).
    pub test_offsets: Vec<usize>,
    /// Items of the filtered test sessions.
    pub test_items: Vec<u32>,
    /// Test events removed because their item is absent from training.
    pub n_removed_events: usize,
    /// Test sessions dropped for being shorter than 2 after the removal.
    pub n_dropped_sessions: usize,
}

impl LastDaySplit {
    /// Items of the `i`-th kept test session (after filtering).
    pub fn test_session(&self, i: usize) -> &[u32] {
        &self.test_items[self.test_offsets[i]..self.test_offsets[i + 1]]
    }

    /// Number of targets: every event after the first of each test session.
    pub fn n_targets(&self) -> usize {
        self.test_items.len() - self.test.len()
    }
}

impl SyntheticSessions {
    /// Splits by GRU4Rec's protocol (see the module documentation).
    pub fn last_day_split(&self) -> LastDaySplit {
        let t_max = self.times_ms.iter().copied().max().unwrap_or(0);
        let test_from_ms = t_max - DAY_MS;
        let (mut train, mut candidates) = (Vec::new(), Vec::new());
        for s in 0..self.n_sessions() {
            if self.times_of(s).first().is_some_and(|&t| t >= test_from_ms) {
                candidates.push(s);
            } else {
                train.push(s);
            }
        }
        let mut seen = vec![false; self.world.n_items() + 1];
        for &s in &train {
            self.items_of(s).iter().for_each(|&x| seen[x as usize] = true);
        }
        let mut split = LastDaySplit {
            test_from_ms,
            train,
            test: Vec::new(),
            test_offsets: vec![0],
            test_items: Vec::new(),
            n_removed_events: 0,
            n_dropped_sessions: 0,
        };
        for s in candidates {
            let kept: Vec<u32> = self.items_of(s).iter().copied().filter(|&x| seen[x as usize]).collect();
            split.n_removed_events += self.items_of(s).len() - kept.len();
            if kept.len() < 2 {
                split.n_dropped_sessions += 1;
                continue;
            }
            split.test.push(s);
            split.test_items.extend_from_slice(&kept);
            split.test_offsets.push(split.test_items.len());
        }
        split
    }

    /// The oracle's metrics on the last-day test split.
    pub fn oracle_report(&self) -> SessionsOracleReport {
        let split = self.last_day_split();
        let metrics = evaluate_next_item(&split, self.world.n_items(), &REPORT_KS, TieMode::Median, &self.world);
        SessionsOracleReport {
            recall_at_20: metrics.recall(20).unwrap_or(0.0),
            mrr_at_20: metrics.mrr(20).unwrap_or(0.0),
            n_targets: metrics.n,
            n_train_sessions: split.train.len(),
            n_test_sessions: split.test.len(),
            n_removed_events: split.n_removed_events,
            n_dropped_sessions: split.n_dropped_sessions,
            tie_mode: TieMode::Median,
            metrics,
            config: self.config.clone(),
        }
    }

    /// Computes [`Self::oracle_report`] and writes it as pretty JSON.
    ///
    /// # Errors
    /// [`Error::Io`] on write failure (nothing is left at `path`).
    pub fn write_oracle_json(&self, path: &Path) -> Result<()> {
        let report = self.oracle_report();
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| Error::Invalid(format!("serialising the oracle report: {e}")))?;
        write_atomic(path, |f| {
            use std::io::Write;
            f.write_all(&json).map_err(|e| Error::io(path, e))
        })
    }
}

/// Cut-offs reported besides 20.
const REPORT_KS: [usize; 4] = [1, 5, 10, 20];

/// Anything that scores every item as the next one after a prefix.
pub trait NextItemScorer: Sync {
    /// Writes a score for each item id into `out` (`out.len() == n_items + 1`;
    /// entry 0, the padding id, is ignored). Higher is better.
    fn score(&self, prefix: &[u32], out: &mut [f64]);
}

impl NextItemScorer for SessionWorld {
    fn score(&self, prefix: &[u32], out: &mut [f64]) {
        let mut state = super::OraclePrefix::new(self);
        for &x in prefix {
            // prefixes from the split hold valid ids; an invalid one leaves
            // the state as it was, which can only make the oracle worse.
            let _ = state.push(x);
        }
        state.predict(out);
    }
}

/// Ranks every target of the split's test sessions with `scorer` (all
/// `n_items` items ranked, ties by `mode`), in parallel over sessions; the
/// result does not depend on the thread count.
pub fn evaluate_next_item<S: NextItemScorer + ?Sized>(
    split: &LastDaySplit,
    n_items: usize,
    ks: &[usize],
    mode: TieMode,
    scorer: &S,
) -> RankingMetrics {
    let acc = (0..split.test.len())
        .into_par_iter()
        .fold(
            || (RankingAccumulator::new(ks), vec![0.0f64; n_items + 1]),
            |(mut acc, mut scores), i| {
                let items = split.test_session(i);
                for j in 1..items.len() {
                    scorer.score(&items[..j], &mut scores);
                    acc.add_rank(rank(&scores[1..], items[j] as usize - 1, mode));
                }
                (acc, scores)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(
            || RankingAccumulator::new(ks),
            |mut a, b| {
                a.merge(&b);
                a
            },
        );
    acc.finish()
}

/// The oracle's results on the test split (`oracle.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsOracleReport {
    /// Recall@20 (= HR@20).
    #[serde(rename = "recall@20")]
    pub recall_at_20: f64,
    /// MRR@20.
    #[serde(rename = "mrr@20")]
    pub mrr_at_20: f64,
    /// Number of targets ranked.
    pub n_targets: u64,
    /// Number of training sessions.
    pub n_train_sessions: usize,
    /// Number of test sessions kept.
    pub n_test_sessions: usize,
    /// Test events removed (item unseen in training).
    pub n_removed_events: usize,
    /// Test sessions dropped (shorter than 2 after removal).
    pub n_dropped_sessions: usize,
    /// How ties were ranked.
    pub tie_mode: TieMode,
    /// Recall, MRR and NDCG at 1, 5, 10 and 20.
    pub metrics: RankingMetrics,
    /// The generator's configuration.
    pub config: SessionsConfig,
}
