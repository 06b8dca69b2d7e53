//! Full-ranking next-item evaluation over session-parallel batches
//! (GRU4Rec's protocol; Hidasi et al. 2016, arXiv:1511.06939, and the
//! authors' `evaluation.py`), for any model that reads one event per session
//! per step.
//!
//! A sequence is evaluated when it holds at least one event of the evaluated
//! part. Its inputs run from its first event, so with leave-last-one-out the
//! training history before the held-out event is fed; only events of the
//! evaluated part are targets (with a last-day split, every event after the
//! first of a test session). The state of a slot is zero whenever it starts
//! a sequence. Every id `1..n_ids` is ranked (0 is padding, never a
//! candidate); the rank counts the candidates scoring strictly higher and
//! those scoring equal (the target excluded) and places the target among the
//! ties by [`TieMode`]. Ranks are summed exactly, so the result does not
//! depend on the batch size or the thread count.
//!
//! [`PrefixScorer`] runs any [`NextItemScorer`] (a function of the whole
//! prefix, such as the synthetic sessions' oracle) through the same loop.

use rayon::prelude::*;
use seqrec_data::batch::{order_by_first_time, SessionParallel, SessionParallelConfig, Targets};
use seqrec_data::split::Part;
use seqrec_data::synth::sessions::NextItemScorer;
use seqrec_data::vocab::Vocab;
use seqrec_data::{Error, SequenceStore};
use seqrec_eval::{rank, rank_from_counts, RankingAccumulator, RankingMetrics, Score, TieMode};
use serde::{Deserialize, Serialize};

/// A model that scores every id as the next item, one event per slot per
/// step, keeping a state per slot.
///
/// Per step the evaluation calls, in this order: [`Self::start`] (first step
/// only) or [`Self::gather`] (only when the rows changed), [`Self::reset`]
/// (only when some row starts a sequence), then [`Self::step`].
pub trait SessionScorer {
    /// Score type (`f32` for networks, `f64` for counts and probabilities).
    type Score: Score + Default + Send + Sync;
    /// Error of the model; data errors of the loop convert into it.
    type Error: From<Error>;

    /// Width of a score row: the number of ids, padding id 0 included.
    fn n_ids(&self) -> usize;

    /// Prepares `rows` slots, every state zero.
    fn start(&mut self, rows: usize) -> Result<(), Self::Error>;

    /// The rows changed: new row `i` continues old row `keep[i]` (increasing).
    fn gather(&mut self, keep: &[usize]) -> Result<(), Self::Error>;

    /// Zeroes the state of `rows`, which start a new sequence.
    fn reset(&mut self, rows: &[usize]) -> Result<(), Self::Error>;

    /// Feeds `inputs` (one item per row) and writes every entry of `scores`
    /// (`inputs.len()` rows × [`Self::n_ids`], row-major; entry 0 of a row is
    /// ignored). Higher is better.
    fn step(&mut self, inputs: &[u32], scores: &mut [Self::Score]) -> Result<(), Self::Error>;

    /// Where the scorer can count without writing score rows (a GPU kernel
    /// over the item table): feeds `inputs` and returns, per row, the number
    /// of ids `1..n_ids` other than the row's target scoring above it (or
    /// NaN), the number scoring exactly the same, and whether the target's
    /// own score is NaN. `None`, with nothing fed, when it cannot; the
    /// evaluation then calls [`SessionScorer::step`].
    fn step_counts(&mut self, inputs: &[u32], targets: &[u32]) -> Result<Option<Vec<TargetCounts>>, Self::Error> {
        let _ = (inputs, targets);
        Ok(None)
    }
}

/// What [`SessionScorer::step_counts`] returns for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetCounts {
    /// Ids scoring strictly above the target, or NaN.
    pub greater: usize,
    /// Ids scoring exactly the target's score, the target excluded.
    pub equal: usize,
    /// The target's score is NaN (it then gets the worst rank).
    pub target_nan: bool,
}

/// Settings of [`evaluate_sessions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Cut-offs K of Recall@K, MRR@K and NDCG@K (default `[20]`).
    pub ks: Vec<usize>,
    /// Placement of the target among tied scores (default median).
    pub tie_mode: TieMode,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { ks: vec![20], tie_mode: TieMode::Median }
    }
}

/// Ranks every event of part `which` against all ids with `scorer`, feeding
/// each evaluated sequence from its start through `batch_size` session-parallel
/// slots (sequences in order of their first event).
///
/// # Errors
/// [`Error::Invalid`] (converted to the scorer's error) when the store is
/// inconsistent ([`SequenceStore::validate`]), `batch_size` is 0, `parts` is
/// not aligned with the store's events, the scorer has fewer than 2 ids
/// (padding and one item), or an input or target is padding or outside
/// `1..n_ids`; any error of the scorer.
pub fn evaluate_sessions<S: SessionScorer + ?Sized>(
    store: &SequenceStore,
    parts: &[Part],
    which: Part,
    scorer: &mut S,
    batch_size: usize,
    cfg: &EvalConfig,
) -> Result<RankingMetrics, S::Error> {
    let n_ids = scorer.n_ids();
    if n_ids < 2 {
        return Err(Error::Invalid(format!("next-item evaluation: scorer has {n_ids} ids, expected at least 2")).into());
    }
    // also makes the first-time order below safe to compute.
    store.validate()?;
    let select = [which];
    let config = SessionParallelConfig { batch_size };
    let mut batches = SessionParallel::new(store, order_by_first_time(store), Targets::of(parts, &select), &config)?;
    let mut acc = RankingAccumulator::new(&cfg.ks);
    let mut scores: Vec<S::Score> = Vec::new();
    let mut resets: Vec<usize> = Vec::new();
    let mut ranks: Vec<f64> = Vec::new();
    let mut prev_rows = 0usize;
    while let Some(step) = batches.next_step() {
        let rows = step.rows();
        if prev_rows == 0 {
            scorer.start(rows)?;
        } else if step.needs_gather(prev_rows) {
            scorer.gather(&step.keep)?;
        }
        step.reset_rows_into(&mut resets);
        if !resets.is_empty() {
            scorer.reset(&resets)?;
        }
        // inputs are events before their targets; both must be rankable ids.
        let events = step.target_event.iter().map(|&e| e - 1).chain(step.target_event.iter().copied());
        let items = step.inputs.iter().chain(&step.targets);
        if let Some((x, e)) = items.zip(events).find(|(&x, _)| x == 0 || x as usize >= n_ids) {
            let message =
                format!("next-item evaluation: item id {x} at event {e}, expected 1..{n_ids} (the scorer's ids)");
            return Err(Error::Invalid(message).into());
        }
        let mode = cfg.tie_mode;
        if let Some(counts) = scorer.step_counts(&step.inputs, &step.targets)? {
            if counts.len() != rows {
                let message = format!("next-item evaluation: {} counts for {rows} rows", counts.len());
                return Err(Error::Invalid(message).into());
            }
            ranks.clear();
            ranks.extend((0..rows).filter(|&r| step.is_target[r]).map(|r| {
                let c = counts[r];
                // NaN policy of `rank`: a NaN target is ranked last among the n_ids − 1 candidates.
                if c.target_nan {
                    (n_ids - 1) as f64
                } else {
                    rank_from_counts(c.greater, c.equal, mode)
                }
            }));
            acc.add_ranks(&ranks);
            prev_rows = rows;
            continue;
        }
        scores.resize(rows * n_ids, S::Score::default());
        scorer.step(&step.inputs, &mut scores)?;
        let rank_row = |r: usize| {
            let row = &scores[r * n_ids + 1..(r + 1) * n_ids];
            rank(row, step.targets[r] as usize - 1, mode)
        };
        let targets = (0..rows).filter(|&r| step.is_target[r]);
        ranks.clear();
        if rows > 1 {
            ranks.par_extend(targets.collect::<Vec<_>>().into_par_iter().map(rank_row));
        } else {
            ranks.extend(targets.map(rank_row));
        }
        acc.add_ranks(&ranks);
        prev_rows = rows;
    }
    Ok(acc.finish())
}

/// Runs a [`NextItemScorer`] (a function of the whole prefix) as a
/// [`SessionScorer`]: each slot keeps its prefix, translated into the
/// scorer's ids.
#[derive(Debug)]
pub struct PrefixScorer<'a, S: NextItemScorer + ?Sized> {
    scorer: &'a S,
    /// The scorer's id of each of our ids (index 0, padding, unused).
    to_scorer: Vec<u32>,
    /// Length of the scorer's output (its ids, padding included).
    n_scorer_ids: usize,
    /// Each slot's prefix in the scorer's ids.
    prefixes: Vec<Vec<u32>>,
}

impl<'a, S: NextItemScorer + ?Sized> PrefixScorer<'a, S> {
    /// An adapter whose ids are the scorer's own, `0..n_ids`.
    pub fn new(scorer: &'a S, n_ids: usize) -> Self {
        PrefixScorer { scorer, to_scorer: (0..n_ids as u32).collect(), n_scorer_ids: n_ids, prefixes: Vec::new() }
    }

    /// An adapter whose id `d` is the scorer's id `to_scorer[d]`, the scorer
    /// writing `n_scorer_ids` scores.
    ///
    /// # Errors
    /// [`Error::Invalid`] when a mapped id is outside `1..n_scorer_ids`.
    pub fn with_ids(scorer: &'a S, to_scorer: Vec<u32>, n_scorer_ids: usize) -> Result<Self, Error> {
        if let Some((d, &x)) = to_scorer.iter().enumerate().skip(1).find(|(_, &x)| x == 0 || x as usize >= n_scorer_ids)
        {
            return Err(Error::Invalid(format!(
                "prefix scorer: id {d} maps to scorer id {x}, expected 1..{n_scorer_ids}"
            )));
        }
        Ok(PrefixScorer { scorer, to_scorer, n_scorer_ids, prefixes: Vec::new() })
    }

    /// An adapter for a dataset's item vocabulary whose integer keys are the
    /// scorer's ids (as for a generator's TSV read back).
    ///
    /// # Errors
    /// [`Error::Invalid`] when a key is not an integer in `1..n_scorer_ids`.
    pub fn from_vocab(scorer: &'a S, vocab: &Vocab, n_scorer_ids: usize) -> Result<Self, Error> {
        let mut to_scorer = vec![0u32];
        for id in 1..vocab.n_ids() as u32 {
            let key = vocab.raw(id).unwrap_or_default();
            let x = key.parse::<u32>().map_err(|_| {
                Error::Invalid(format!("prefix scorer: vocabulary key {key:?} of id {id}, expected an integer item id"))
            })?;
            to_scorer.push(x);
        }
        Self::with_ids(scorer, to_scorer, n_scorer_ids)
    }
}

impl<S: NextItemScorer + ?Sized> SessionScorer for PrefixScorer<'_, S> {
    type Score = f64;
    type Error = Error;

    fn n_ids(&self) -> usize {
        self.to_scorer.len()
    }

    fn start(&mut self, rows: usize) -> Result<(), Error> {
        self.prefixes = vec![Vec::new(); rows];
        Ok(())
    }

    fn gather(&mut self, keep: &[usize]) -> Result<(), Error> {
        let mut old = std::mem::take(&mut self.prefixes);
        let n_old = old.len();
        for &k in keep {
            let p = old.get_mut(k).ok_or_else(|| {
                Error::Invalid(format!("prefix scorer: keep names row {k}, expected one below {n_old}"))
            })?;
            self.prefixes.push(std::mem::take(p));
        }
        Ok(())
    }

    fn reset(&mut self, rows: &[usize]) -> Result<(), Error> {
        for &r in rows {
            self.prefixes.get_mut(r).ok_or_else(|| Error::Invalid(format!("prefix scorer: reset of row {r}")))?.clear();
        }
        Ok(())
    }

    fn step(&mut self, inputs: &[u32], scores: &mut [f64]) -> Result<(), Error> {
        let n_ids = self.to_scorer.len();
        if inputs.len() != self.prefixes.len() || scores.len() != inputs.len() * n_ids {
            return Err(Error::Invalid(format!(
                "prefix scorer: {} inputs and {} scores for {} rows of {n_ids} ids",
                inputs.len(),
                scores.len(),
                self.prefixes.len()
            )));
        }
        for (p, &x) in self.prefixes.iter_mut().zip(inputs) {
            let mapped = self.to_scorer.get(x as usize).copied().filter(|_| x != 0);
            p.push(mapped.ok_or_else(|| Error::Invalid(format!("prefix scorer: input {x}, expected 1..{n_ids}")))?);
        }
        let (scorer, to_scorer, n_scorer_ids) = (self.scorer, &self.to_scorer, self.n_scorer_ids);
        scores.par_chunks_mut(n_ids).zip(self.prefixes.par_iter()).for_each_init(
            || vec![0.0f64; n_scorer_ids],
            |buf, (row, prefix)| {
                scorer.score(prefix, buf);
                row[0] = f64::NEG_INFINITY;
                row.iter_mut().zip(to_scorer).skip(1).for_each(|(s, &x)| *s = buf[x as usize]);
            },
        );
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use seqrec_data::dataset::Dataset;
    use seqrec_data::io::scratch_dir;
    use seqrec_data::prepare::prepare;
    use seqrec_data::recipe::Recipe;
    use seqrec_data::synth::sessions::SessionsConfig;

    use super::*;
    use Part::{Test, Train, Valid};

    /// A store of `seqs` (items and parts per event), times increasing.
    pub(crate) fn store_of(seqs: &[(&[u32], &[Part])]) -> (SequenceStore, Vec<Part>) {
        let mut s = SequenceStore { offsets: vec![0], ..Default::default() };
        let mut parts = Vec::new();
        for (i, (items, p)) in seqs.iter().enumerate() {
            assert_eq!(items.len(), p.len());
            s.items.extend_from_slice(items);
            parts.extend_from_slice(p);
            s.times.extend((0..items.len() as i64).map(|t| 100 * i as i64 + t));
            s.offsets.push(s.items.len());
            s.seq_ids.push(i as u32 + 1);
        }
        (s, parts)
    }

    fn mix(h: u64, x: u64) -> u64 {
        let mut z = h ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Score of id `j` after a history hashed to `h`: few levels, so many ties.
    fn hashed_score(h: u64, j: usize) -> f32 {
        (mix(h, j as u64) % 5) as f32
    }

    /// A recurrent stand-in: the state of a row hashes its whole history, so
    /// any mistake in reset or gather changes the scores.
    struct HashScorer {
        n_ids: usize,
        state: Vec<u64>,
    }

    impl SessionScorer for HashScorer {
        type Score = f32;
        type Error = Error;
        fn n_ids(&self) -> usize {
            self.n_ids
        }
        fn start(&mut self, rows: usize) -> Result<(), Error> {
            self.state = vec![0; rows];
            Ok(())
        }
        fn gather(&mut self, keep: &[usize]) -> Result<(), Error> {
            self.state = keep.iter().map(|&k| self.state[k]).collect();
            Ok(())
        }
        fn reset(&mut self, rows: &[usize]) -> Result<(), Error> {
            rows.iter().for_each(|&r| self.state[r] = 0);
            Ok(())
        }
        fn step(&mut self, inputs: &[u32], scores: &mut [f32]) -> Result<(), Error> {
            for (r, &x) in inputs.iter().enumerate() {
                self.state[r] = mix(self.state[r], x as u64);
                let row = &mut scores[r * self.n_ids..(r + 1) * self.n_ids];
                row.iter_mut().enumerate().for_each(|(j, s)| *s = hashed_score(self.state[r], j));
            }
            Ok(())
        }
    }

    /// The same function of the prefix, for [`PrefixScorer`].
    struct HashOfPrefix;

    impl NextItemScorer for HashOfPrefix {
        fn score(&self, prefix: &[u32], out: &mut [f64]) {
            let h = prefix.iter().fold(0, |h, &x| mix(h, x as u64));
            out.iter_mut().enumerate().for_each(|(j, s)| *s = hashed_score(h, j) as f64);
        }
    }

    /// Ranks by brute force: every `which` event after a sequence's first,
    /// scored from the hash of all events before it.
    fn brute_force(
        store: &SequenceStore,
        parts: &[Part],
        which: Part,
        n_ids: usize,
        cfg: &EvalConfig,
    ) -> RankingMetrics {
        let mut acc = RankingAccumulator::new(&cfg.ks);
        for q in 0..store.n_seq() {
            let r = store.range(q);
            for e in (r.start + 1..r.end).filter(|&e| parts[e] == which) {
                let h = store.items[r.start..e].iter().fold(0, |h, &x| mix(h, x as u64));
                let scores: Vec<f32> = (1..n_ids).map(|j| hashed_score(h, j)).collect();
                acc.add_rank(rank(&scores, store.items[e] as usize - 1, cfg.tie_mode));
            }
        }
        acc.finish()
    }

    /// Sessions of every shape: last-day (all test), leave-last-one-out,
    /// validation then test, no test event, a single event, an empty one.
    fn mixed_store(n_ids: u32) -> (SequenceStore, Vec<Part>) {
        let mut seqs: Vec<(Vec<u32>, Vec<Part>)> = Vec::new();
        for i in 0..200u32 {
            let len = 1 + (mix(7, i as u64) % 9) as usize;
            let items: Vec<u32> = (0..len).map(|j| 1 + (mix(i as u64, j as u64) % (n_ids as u64 - 1)) as u32).collect();
            let parts = match i % 5 {
                0 => vec![Test; len],
                1 => (0..len).map(|j| if j + 1 == len { Test } else { Train }).collect(),
                2 => (0..len).map(|j| [Train, Valid, Test][(j + 3).saturating_sub(len)]).collect(),
                3 => vec![Train; len],
                _ => (0..len).map(|j| if j % 2 == 1 { Test } else { Train }).collect(),
            };
            seqs.push((items, parts));
        }
        seqs.push((vec![], vec![]));
        let refs: Vec<(&[u32], &[Part])> = seqs.iter().map(|(a, b)| (&a[..], &b[..])).collect();
        store_of(&refs)
    }

    #[test]
    fn results_do_not_depend_on_batch_size_and_match_brute_force() {
        let n_ids = 40;
        let (store, parts) = mixed_store(n_ids as u32);
        for mode in [TieMode::Optimistic, TieMode::Pessimistic, TieMode::Median] {
            let cfg = EvalConfig { ks: vec![1, 5, 20], tie_mode: mode };
            for which in [Test, Valid] {
                let want = brute_force(&store, &parts, which, n_ids, &cfg);
                assert!(want.n > 20, "{} targets", want.n);
                for batch in [1, 3, 64] {
                    let mut scorer = HashScorer { n_ids, state: vec![] };
                    let got = evaluate_sessions(&store, &parts, which, &mut scorer, batch, &cfg).unwrap();
                    assert_eq!(got, want, "{mode:?} {which:?} batch {batch}");
                    let mut prefix = PrefixScorer::new(&HashOfPrefix, n_ids);
                    let got = evaluate_sessions(&store, &parts, which, &mut prefix, batch, &cfg).unwrap();
                    assert_eq!(got, want, "prefix {mode:?} {which:?} batch {batch}");
                }
            }
        }
    }

    /// Fixed scores per input item, for hand-computed ranks.
    struct Table(Vec<[f32; 5]>);

    impl SessionScorer for Table {
        type Score = f32;
        type Error = Error;
        fn n_ids(&self) -> usize {
            5
        }
        fn start(&mut self, _rows: usize) -> Result<(), Error> {
            Ok(())
        }
        fn gather(&mut self, _keep: &[usize]) -> Result<(), Error> {
            Ok(())
        }
        fn reset(&mut self, _rows: &[usize]) -> Result<(), Error> {
            Ok(())
        }
        fn step(&mut self, inputs: &[u32], scores: &mut [f32]) -> Result<(), Error> {
            for (row, &x) in scores.chunks_mut(5).zip(inputs) {
                row.copy_from_slice(&self.0[x as usize]);
            }
            Ok(())
        }
    }

    #[test]
    fn hand_computed_ranks_and_ties() {
        // After 1: item 2 first, 3 and 4 tied second. After 2: all of 1..4 tied.
        // The padding column's huge score must not count.
        let table = vec![[0.0; 5], [9.0, 0.0, 3.0, 1.0, 1.0], [9.0, 2.0, 2.0, 2.0, 2.0], [0.0; 5], [0.0; 5]];
        let (store, parts) = store_of(&[(&[1, 2, 4], &[Train, Test, Test]), (&[1, 3], &[Train, Test])]);
        // targets: 2 after 1 (rank 1), 4 after 2 (3 ties: 1, 2.5, 4), 3 after 1 (1 tie above 0: 2, 2.5, 3).
        let cases = [
            (TieMode::Optimistic, [1.0, 1.0, 2.0]),
            (TieMode::Median, [1.0, 2.5, 2.5]),
            (TieMode::Pessimistic, [1.0, 4.0, 3.0]),
        ];
        for (mode, ranks) in cases {
            let cfg = EvalConfig { ks: vec![1, 2, 3], tie_mode: mode };
            let got = evaluate_sessions(&store, &parts, Test, &mut Table(table.clone()), 2, &cfg).unwrap();
            let mut want = RankingAccumulator::new(&[1, 2, 3]);
            want.add_ranks(&ranks);
            assert_eq!(got, want.finish(), "{mode:?}");
        }
        let got = evaluate_sessions(&store, &parts, Test, &mut Table(table), 1, &EvalConfig::default()).unwrap();
        assert_eq!(got.n, 3);
        assert_eq!(got.recall(20), Some(1.0));
        assert!((got.mrr(20).unwrap() - (1.0 + 1.0 / 2.5 + 1.0 / 2.5) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_an_error() {
        let (store, parts) = store_of(&[(&[1, 2, 7], &[Train, Test, Test])]);
        let cfg = EvalConfig::default();
        let mut scorer = HashScorer { n_ids: 5, state: vec![] };
        let e = evaluate_sessions(&store, &parts, Test, &mut scorer, 2, &cfg).unwrap_err().to_string();
        assert!(e.contains("item id 7") && e.contains("event 2"), "{e}");
        assert!(evaluate_sessions(&store, &parts, Test, &mut scorer, 0, &cfg).is_err());
        assert!(evaluate_sessions(&store, &parts[..2], Test, &mut scorer, 2, &cfg).is_err());
        let mut tiny = HashScorer { n_ids: 1, state: vec![] };
        assert!(evaluate_sessions(&store, &parts, Test, &mut tiny, 2, &cfg).is_err());
        assert!(PrefixScorer::with_ids(&HashOfPrefix, vec![0, 1, 5], 5).is_err());
        // no target at all: zero metrics, not an error.
        let got = evaluate_sessions(&store, &parts, Valid, &mut scorer, 2, &cfg).unwrap();
        assert_eq!(got.n, 0);
    }

    /// The oracle through this loop on the prepared dataset of its own TSV
    /// gives exactly its report: the protocol matches the generator's.
    #[test]
    fn oracle_through_the_loop_matches_its_report_on_the_prepared_tsv() {
        let d = scratch_dir("models-next-item");
        let cfg =
            SessionsConfig { n_items: 300, n_topics: 6, n_sessions: 3000, days: 10.0, ..SessionsConfig::default() };
        let data = cfg.generate().unwrap();
        data.write_gru4rec_tsv(&d.join("sessions.tsv")).unwrap();
        let recipe_path = d.join("recipe.toml");
        let text =
            "format = \"gru4rec\"\n[interactions]\npath = \"sessions.tsv\"\n[split]\nkind = \"last_days\"\ndays = 1\n";
        std::fs::write(&recipe_path, text).unwrap();
        prepare(&Recipe::load(&recipe_path).unwrap(), &d.join("prepared")).unwrap();
        let ds = Dataset::open(&d.join("prepared")).unwrap();
        let vocab = &ds.vocabs["item"];
        // every item occurs, so both rank the same candidates.
        assert_eq!(vocab.len(), cfg.n_items);
        let report = data.oracle_report();
        let mut oracle = PrefixScorer::from_vocab(&data.world, vocab, cfg.n_items + 1).unwrap();
        let eval = EvalConfig { ks: vec![1, 5, 10, 20], tie_mode: TieMode::Median };
        let got = evaluate_sessions(&ds.events.store, &ds.events.parts, Test, &mut oracle, 50, &eval).unwrap();
        assert_eq!(got.n, report.n_targets);
        assert_eq!(got.recall(20), Some(report.recall_at_20));
        assert_eq!(got.mrr(20), Some(report.mrr_at_20));
        assert_eq!(got, report.metrics);
    }
}
