//! Session-parallel mini-batches (GRU4Rec; Hidasi et al. 2016, "Session-based
//! Recommendations with Recurrent Neural Networks", arXiv:1511.06939,
//! section 3.1.1).
//!
//! B slots each hold one session. At every step each slot emits one pair
//! (input = its current event, target = the next event of the same session).
//! A slot whose session has no pair left takes the next session of the given
//! order and reports `reset` so the model zeroes that hidden-state row.
//! Sessions with fewer than two events give no pair and are skipped. Once no
//! session is left to load, finished slots are removed: the batch shrinks
//! (never padded, never truncated) and `keep` tells the model which row of
//! the previous step's hidden state each current row continues. The epoch
//! ends when every pair has been emitted.
//!
//! With [`Targets::Parts`], a session is read only up to its last selected
//! target and sessions without one are skipped; pairs before it whose target
//! is not selected are still emitted (they advance the hidden state) with
//! `is_target` false.
//!
//! ```
//! use seqrec_data::batch::{SessionParallel, SessionParallelConfig, Targets};
//! use seqrec_data::SequenceStore;
//!
//! // Sessions [1, 2, 3], [4, 5], [6, 7, 8, 9].
//! let store = SequenceStore {
//!     offsets: vec![0, 3, 5, 9],
//!     seq_ids: vec![1, 2, 3],
//!     items: (1..=9).collect(),
//!     times: (0..9).collect(),
//!     ..Default::default()
//! };
//! let config = SessionParallelConfig { batch_size: 2 };
//! let mut batches = SessionParallel::new(&store, vec![0, 1, 2], Targets::All, &config)?;
//! let step = batches.next_step().unwrap();
//! assert_eq!((step.inputs.clone(), step.targets.clone()), (vec![1, 4], vec![2, 5]));
//! let step = batches.next_step().unwrap();
//! assert_eq!((step.inputs.clone(), step.reset.clone()), (vec![2, 6], vec![false, true]));
//! assert!(!step.needs_gather(2));
//! let step = batches.next_step().unwrap(); // session 0 is done: the batch shrinks
//! assert_eq!((step.inputs.clone(), step.keep.clone()), (vec![7], vec![1]));
//! assert!(step.needs_gather(2));
//! # Ok::<(), seqrec_data::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use super::lanes::Lanes;
use super::{check_order, check_positive, check_store, Targets};
use crate::{Result, SequenceStore};

/// Settings of [`SessionParallel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionParallelConfig {
    /// Number of slots (the batch size until sessions run out).
    pub batch_size: usize,
}

impl Default for SessionParallelConfig {
    fn default() -> Self {
        SessionParallelConfig { batch_size: 32 }
    }
}

/// One step: a row per active slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionStep {
    /// Item of each row's current event.
    pub inputs: Vec<u32>,
    /// Item of the next event of the same session.
    pub targets: Vec<u32>,
    /// Event index (in the store) of each target.
    pub target_event: Vec<usize>,
    /// Whether the target is selected (always true with [`Targets::All`]).
    pub is_target: Vec<bool>,
    /// Sequence index of each row.
    pub seq_index: Vec<usize>,
    /// True where the row starts a new session: its hidden state must be zeroed.
    pub reset: Vec<bool>,
    /// Row of the previous step whose hidden state this row continues
    /// (the identity on the first step, where every row resets).
    pub keep: Vec<usize>,
}

impl SessionStep {
    /// Number of rows (active slots).
    pub fn rows(&self) -> usize {
        self.inputs.len()
    }

    /// True when the previous step's per-row state (`prev_rows` rows) must be
    /// gathered by [`SessionStep::keep`] because rows were removed.
    pub fn needs_gather(&self, prev_rows: usize) -> bool {
        self.rows() != prev_rows || self.keep.iter().enumerate().any(|(i, &k)| i != k)
    }

    /// Replaces `out` with the rows that start a session (their state must be zeroed).
    pub fn reset_rows_into(&self, out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.reset.iter().enumerate().filter(|(_, &r)| r).map(|(i, _)| i));
    }

    fn clear(&mut self) {
        self.inputs.clear();
        self.targets.clear();
        self.target_event.clear();
        self.is_target.clear();
        self.seq_index.clear();
    }
}

/// GRU4Rec's session-parallel batcher over a store.
#[derive(Debug, Clone)]
pub struct SessionParallel<'a> {
    store: &'a SequenceStore,
    targets: Targets<'a>,
    lanes: Lanes,
    step: SessionStep,
}

impl<'a> SessionParallel<'a> {
    /// A batcher over the sessions of `order` (sequence indices, e.g.
    /// [`super::order_by_first_time`]), in that order.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when the batch size is 0, the store's
    /// offsets are inconsistent, `order` names a sequence twice or one out
    /// of range, or the part mask does not cover every event.
    pub fn new(
        store: &'a SequenceStore,
        order: Vec<usize>,
        targets: Targets<'a>,
        config: &SessionParallelConfig,
    ) -> Result<Self> {
        let what = "session-parallel batches";
        check_positive(config.batch_size, "session-parallel batch size")?;
        check_store(store, what)?;
        check_order(&order, store, what)?;
        targets.check(store)?;
        Ok(SessionParallel {
            store,
            targets,
            lanes: Lanes::new(order, config.batch_size),
            step: SessionStep::default(),
        })
    }

    /// The next step, or `None` once every pair of the epoch was emitted.
    pub fn next_step(&mut self) -> Option<&SessionStep> {
        let SessionParallel { store, targets, lanes, step } = self;
        // A session's inputs run from its first event to the event before its
        // last selected target.
        let span = |s: usize| {
            let r = store.range(s);
            let last = targets.last_in(r.start + 1..r.end)?;
            Some((r.start, last))
        };
        if !lanes.schedule(span, &mut step.keep, &mut step.reset) {
            step.clear();
            step.keep.clear();
            step.reset.clear();
            return None;
        }
        step.clear();
        for c in lanes.cursors_mut() {
            let t = c.pos + 1;
            step.inputs.push(store.items[c.pos]);
            step.targets.push(store.items[t]);
            step.target_event.push(t);
            step.is_target.push(targets.selects(t));
            step.seq_index.push(c.seq);
            c.pos = t;
        }
        Some(&self.step)
    }

    /// Starts a new epoch over the same order.
    pub fn rewind(&mut self) {
        self.lanes.rewind();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_stores::{random_order, random_parts, random_store, store_of};
    use super::*;
    use crate::rng::Rng;
    use crate::split::Part;

    type Row = (u32, u32, usize, bool, bool, usize);

    /// Every step as rows of (input, target, target event, is_target, reset, keep).
    fn run(sp: &mut SessionParallel) -> Vec<Vec<Row>> {
        let mut steps = Vec::new();
        while let Some(s) = sp.next_step() {
            let rows = (0..s.rows())
                .map(|r| {
                    let t = (s.inputs[r], s.targets[r], s.target_event[r]);
                    (t.0, t.1, t.2, s.is_target[r], s.reset[r], s.keep[r])
                })
                .collect();
            steps.push(rows);
        }
        steps
    }

    #[test]
    fn hand_computed_three_sessions_two_slots() {
        let store = store_of(&[&[1, 2, 3], &[4, 5], &[6, 7, 8, 9]]);
        let config = SessionParallelConfig { batch_size: 2 };
        let mut sp = SessionParallel::new(&store, vec![0, 1, 2], Targets::All, &config).unwrap();
        let expect: Vec<Vec<Row>> = vec![
            vec![(1, 2, 1, true, true, 0), (4, 5, 4, true, true, 1)],
            vec![(2, 3, 2, true, false, 0), (6, 7, 6, true, true, 1)],
            vec![(7, 8, 7, true, false, 1)],
            vec![(8, 9, 8, true, false, 0)],
        ];
        assert_eq!(run(&mut sp), expect);
        assert!(sp.next_step().is_none());
        sp.rewind();
        assert_eq!(run(&mut sp), expect);
    }

    #[test]
    fn hand_computed_with_test_mask_and_short_sessions() {
        // Session 1 has one event and session 2 no test target: both skipped.
        // Session 0 is read up to its last test event (2) only; its first pair
        // advances the state without being a target.
        let store = store_of(&[&[1, 2, 3, 4], &[5], &[6, 7], &[8, 9]]);
        use Part::{Test, Train};
        let parts = [Train, Train, Test, Train, Test, Test, Train, Train, Test];
        let config = SessionParallelConfig { batch_size: 3 };
        let t = Targets::of(&parts, &[Test]);
        let mut sp = SessionParallel::new(&store, vec![1, 2, 0, 3], t, &config).unwrap();
        let expect: Vec<Vec<Row>> =
            vec![vec![(1, 2, 1, false, true, 0), (8, 9, 8, true, true, 1)], vec![(2, 3, 2, true, false, 0)]];
        assert_eq!(run(&mut sp), expect);
    }

    #[test]
    fn bad_input_is_an_error() {
        let store = store_of(&[&[1, 2]]);
        let ok = SessionParallelConfig { batch_size: 2 };
        let zero = SessionParallelConfig { batch_size: 0 };
        assert!(SessionParallel::new(&store, vec![0], Targets::All, &zero).is_err());
        assert!(SessionParallel::new(&store, vec![0, 0], Targets::All, &ok).is_err());
        assert!(SessionParallel::new(&store, vec![1], Targets::All, &ok).is_err());
        let parts = [Part::Train];
        let t = Targets::of(&parts, &[Part::Train]);
        assert!(SessionParallel::new(&store, vec![0], t, &ok).is_err());
        let empty = SequenceStore::default();
        let mut sp = SessionParallel::new(&empty, vec![], Targets::All, &ok).unwrap();
        assert!(sp.next_step().is_none());
    }

    /// Checks the scheme's invariants on one random store, order, mask and width.
    fn check_random(seed: u64) {
        let mut rng = Rng::new(seed);
        let store = random_store(&mut rng, seed);
        let parts = random_parts(&mut rng, &store);
        let order = random_order(&mut rng, &store);
        let select = [Part::Train, Part::Valid];
        let masked = seed.is_multiple_of(2);
        let targets = if masked { Targets::of(&parts, &select) } else { Targets::All };
        let width = 1 + rng.below(6) as usize;
        let config = SessionParallelConfig { batch_size: width };
        let mut sp = SessionParallel::new(&store, order.clone(), targets, &config).unwrap();

        // Expected: each ordered session's events up to its last selected target.
        let mut expected_targets = vec![0usize; store.n_events()];
        let mut n_pairs = 0;
        let mut loaded_seqs = Vec::new();
        for &s in &order {
            let r = store.range(s);
            if let Some(last) = targets.last_in(r.start + 1..r.end) {
                loaded_seqs.push(s);
                n_pairs += last - r.start;
                (r.start + 1..=last).filter(|&e| targets.selects(e)).for_each(|e| expected_targets[e] = 1);
            }
        }

        let mut seen_as_target = vec![0usize; store.n_events()];
        let mut seen_as_pair = vec![0usize; store.n_events()];
        let mut prev: Vec<(usize, usize)> = Vec::new(); // (seq, target event) per row
        let mut started = Vec::new();
        let mut pairs = 0;
        let mut step_no = 0;
        while let Some(st) = sp.next_step() {
            let rows = st.rows();
            assert!(rows >= 1 && rows <= width, "seed {seed}: {rows} rows");
            let aligned = [st.targets.len(), st.target_event.len(), st.is_target.len(), st.seq_index.len()];
            assert!(aligned.iter().chain([st.reset.len(), st.keep.len()].iter()).all(|&n| n == rows));
            if step_no == 0 {
                assert_eq!(rows, width.min(loaded_seqs.len()), "seed {seed}: first step");
            } else {
                // Never grows; keep lists surviving rows in order.
                assert!(rows <= prev.len());
                assert!(st.keep.windows(2).all(|w| w[0] < w[1]), "seed {seed}: keep not increasing");
            }
            let shrank = step_no > 0 && rows < prev.len();
            for r in 0..rows {
                let (s, t) = (st.seq_index[r], st.target_event[r]);
                let range = store.range(s);
                // Input and target are consecutive events of one sequence.
                assert!(range.start < t && t < range.end, "seed {seed}: event {t} outside seq {s}");
                assert_eq!((st.inputs[r], st.targets[r]), (store.items[t - 1], store.items[t]));
                assert_eq!(st.is_target[r], targets.selects(t));
                // Reset exactly when the row starts a sequence at its first event.
                assert_eq!(st.reset[r], t == range.start + 1, "seed {seed}: reset at event {t}");
                if st.reset[r] {
                    started.push(s);
                } else {
                    let (ps, pt) = prev[st.keep[r]];
                    assert_eq!((ps, pt + 1), (s, t), "seed {seed}: row {r} does not continue");
                }
                if step_no == 0 {
                    assert_eq!(st.keep[r], r);
                }
                seen_as_pair[t] += 1;
                seen_as_target[t] += st.is_target[r] as usize;
                pairs += 1;
            }
            if shrank {
                // Shrinks only once nothing is left to load.
                assert_eq!(started.len(), loaded_seqs.len(), "seed {seed}: shrank early");
            }
            prev = (0..rows).map(|r| (st.seq_index[r], st.target_event[r])).collect();
            step_no += 1;
        }
        assert_eq!(pairs, n_pairs, "seed {seed}: epoch ended early");
        assert!(seen_as_pair.iter().all(|&n| n <= 1));
        assert_eq!(seen_as_target, expected_targets, "seed {seed}");
        assert_eq!(started, loaded_seqs, "seed {seed}: sessions not taken in order");
        if !masked {
            // Every event except each session's first is a target exactly once.
            for &s in &order {
                let r = store.range(s);
                assert!(r.clone().all(|e| seen_as_target[e] == (e > r.start) as usize));
            }
        }
    }

    #[test]
    fn random_stores_keep_every_invariant() {
        for seed in 0..300 {
            check_random(seed);
        }
    }
}
