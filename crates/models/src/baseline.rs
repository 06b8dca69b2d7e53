//! The two baselines reported beside every sequential model: most popular
//! and first-order Markov, both fitted on the training events only.
//!
//! [`MostPopular`] scores each item by its training support, whatever the
//! session. [`Markov`] scores candidate `j` after item `i` by the number of
//! times `j` directly followed `i` in a training sequence, plus
//! `support(j) · ε` with `ε = 1 / (max support + 1)`: that term is below 1,
//! so popularity only orders items with equal transition counts and never
//! outweighs one transition. After an item never followed by anything in
//! training, Markov falls back to popularity. Both read only the current
//! input, so they carry no state between steps and need no reset.

use rayon::prelude::*;
use seqrec_data::split::Part;
use seqrec_data::{Error, SequenceStore};

use crate::next_item::SessionScorer;

/// Checks the parts mask and the item ids of `store` against `n_ids`.
fn check_fit(store: &SequenceStore, parts: &[Part], n_ids: usize, what: &str) -> Result<(), Error> {
    if parts.len() != store.n_events() {
        return Err(Error::Invalid(format!(
            "{what}: {} parts for {} events, expected one part per event",
            parts.len(),
            store.n_events()
        )));
    }
    if let Some((e, &x)) = store.items.iter().enumerate().find(|(_, &x)| x == 0 || x as usize >= n_ids) {
        return Err(Error::Invalid(format!("{what}: item id {x} at event {e}, expected 1..{n_ids}")));
    }
    Ok(())
}

/// Training support of every id (index 0, padding, stays 0).
pub(crate) fn training_support(store: &SequenceStore, parts: &[Part], n_ids: usize) -> Vec<u64> {
    let mut support = vec![0u64; n_ids];
    for (&x, &p) in store.items.iter().zip(parts) {
        if p == Part::Train {
            support[x as usize] += 1;
        }
    }
    support
}

/// Checks the shapes of a stateless scorer's step.
fn check_step(inputs: &[u32], scores: &[f64], n_ids: usize, what: &str) -> Result<(), Error> {
    if scores.len() != inputs.len() * n_ids {
        return Err(Error::Invalid(format!(
            "{what}: {} scores for {} rows of {n_ids} ids",
            scores.len(),
            inputs.len()
        )));
    }
    Ok(())
}

/// Scores every item by its number of training events.
#[derive(Debug, Clone, PartialEq)]
pub struct MostPopular {
    support: Vec<u64>,
    /// The support as scores, copied into every row.
    row: Vec<f64>,
}

impl MostPopular {
    /// Counts the training events (part [`Part::Train`]) of each id `1..n_ids`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `parts` is not aligned with the events or an
    /// item id is padding or at least `n_ids`.
    pub fn fit(store: &SequenceStore, parts: &[Part], n_ids: usize) -> Result<Self, Error> {
        check_fit(store, parts, n_ids, "most popular")?;
        let support = training_support(store, parts, n_ids);
        let row = support.iter().map(|&c| c as f64).collect();
        Ok(MostPopular { support, row })
    }

    /// Training support of each id (index 0 is padding).
    pub fn support(&self) -> &[u64] {
        &self.support
    }
}

impl SessionScorer for MostPopular {
    type Score = f64;
    type Error = Error;

    fn n_ids(&self) -> usize {
        self.row.len()
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

    fn step(&mut self, inputs: &[u32], scores: &mut [f64]) -> Result<(), Error> {
        check_step(inputs, scores, self.row.len(), "most popular")?;
        scores.par_chunks_mut(self.row.len()).for_each(|out| out.copy_from_slice(&self.row));
        Ok(())
    }
}

impl crate::window_eval::WindowScorer for MostPopular {
    fn n_ids(&self) -> usize {
        self.row.len()
    }

    fn window_len(&self) -> usize {
        1
    }

    fn score_windows(
        &mut self,
        batch: &seqrec_data::batch::WindowBatch,
        scores: &mut Vec<f32>,
    ) -> crate::error::Result<()> {
        scores.clear();
        for _ in 0..batch.rows() {
            scores.extend(self.support.iter().map(|&c| c as f32));
        }
        Ok(())
    }
}

/// First-order Markov chain: training transition counts from the current
/// item, popularity breaking ties (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Markov {
    support: Vec<u64>,
    /// CSR over source items: successors of `i` are `next[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    /// Successor ids, ascending within each source.
    next: Vec<u32>,
    /// Transition counts, aligned with `next`.
    counts: Vec<u64>,
    /// `support(j) · ε` for every id: the scores after an item with no successor.
    base: Vec<f64>,
    epsilon: f64,
}

impl Markov {
    /// Counts the transitions between consecutive events of a sequence that
    /// are both training events, and the training support of each id `1..n_ids`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the store's offsets are inconsistent, `parts`
    /// is not aligned with the events or an item id is padding or at least
    /// `n_ids`.
    pub fn fit(store: &SequenceStore, parts: &[Part], n_ids: usize) -> Result<Self, Error> {
        store.validate()?;
        check_fit(store, parts, n_ids, "markov")?;
        let support = training_support(store, parts, n_ids);
        // Pairs packed as (from << 32 | to) so one sort groups and orders them.
        let mut pairs: Vec<u64> = Vec::new();
        for q in 0..store.n_seq() {
            let r = store.range(q);
            for e in r.start + 1..r.end {
                if parts[e - 1] == Part::Train && parts[e] == Part::Train {
                    pairs.push((store.items[e - 1] as u64) << 32 | store.items[e] as u64);
                }
            }
        }
        pairs.par_sort_unstable();
        let mut offsets = vec![0usize; n_ids + 1];
        let (mut next, mut counts) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < pairs.len() {
            let run = pairs[i..].iter().take_while(|&&p| p == pairs[i]).count();
            offsets[(pairs[i] >> 32) as usize + 1] += 1;
            next.push(pairs[i] as u32);
            counts.push(run as u64);
            i += run;
        }
        for k in 1..offsets.len() {
            offsets[k] += offsets[k - 1];
        }
        let max_support = support.iter().copied().max().unwrap_or(0);
        let epsilon = 1.0 / (max_support as f64 + 1.0);
        let base = support.iter().map(|&c| c as f64 * epsilon).collect();
        Ok(Markov { support, offsets, next, counts, base, epsilon })
    }

    /// Training support of each id (index 0 is padding).
    pub fn support(&self) -> &[u64] {
        &self.support
    }

    /// The weight `ε` of popularity: `1 / (max support + 1)`.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// Successors of `item` in training and their counts, successors ascending.
    pub fn transitions(&self, item: u32) -> (&[u32], &[u64]) {
        let i = item as usize;
        if i + 1 >= self.offsets.len() {
            return (&[], &[]);
        }
        let r = self.offsets[i]..self.offsets[i + 1];
        (&self.next[r.clone()], &self.counts[r])
    }
}

impl SessionScorer for Markov {
    type Score = f64;
    type Error = Error;

    fn n_ids(&self) -> usize {
        self.base.len()
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

    fn step(&mut self, inputs: &[u32], scores: &mut [f64]) -> Result<(), Error> {
        let n_ids = self.base.len();
        check_step(inputs, scores, n_ids, "markov")?;
        let this = &*self;
        scores.par_chunks_mut(n_ids).zip(inputs.par_iter()).for_each(|(out, &x)| {
            out.copy_from_slice(&this.base);
            let (next, counts) = this.transitions(x);
            next.iter().zip(counts).for_each(|(&j, &c)| out[j as usize] += c as f64);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use seqrec_data::synth::sessions::{SessionsConfig, SyntheticSessions};
    use seqrec_eval::{RankingAccumulator, RankingMetrics, TieMode};

    use super::*;
    use crate::next_item::tests::store_of;
    use crate::next_item::{evaluate_sessions, EvalConfig, PrefixScorer};
    use Part::{Test, Train};

    /// A: 1 2 3 2 (train), B: 2 3 | 4 (last test), C: 4 1 (train), D: 4 | 1 (last test).
    fn tiny() -> (SequenceStore, Vec<Part>) {
        store_of(&[
            (&[1, 2, 3, 2], &[Train; 4]),
            (&[2, 3, 4], &[Train, Train, Test]),
            (&[4, 1], &[Train, Train]),
            (&[4, 1], &[Train, Test]),
        ])
    }

    fn metrics(ranks: &[f64], ks: &[usize]) -> RankingMetrics {
        let mut acc = RankingAccumulator::new(ks);
        acc.add_ranks(ranks);
        acc.finish()
    }

    #[test]
    fn hand_computed_counts() {
        let (store, parts) = tiny();
        let pop = MostPopular::fit(&store, &parts, 6).unwrap();
        // test events (B's 4, D's 1) are not counted; id 5 never occurs.
        assert_eq!(pop.support(), &[0, 2, 3, 2, 2, 0]);
        let markov = Markov::fit(&store, &parts, 6).unwrap();
        assert_eq!(markov.support(), pop.support());
        assert_eq!(markov.epsilon(), 0.25);
        // A gives 1→2, 2→3, 3→2; B gives 2→3 (3→4 ends in a test event); C gives 4→1.
        assert_eq!(markov.transitions(1), (&[2u32][..], &[1u64][..]));
        assert_eq!(markov.transitions(2), (&[3u32][..], &[2u64][..]));
        assert_eq!(markov.transitions(3), (&[2u32][..], &[1u64][..]));
        assert_eq!(markov.transitions(4), (&[1u32][..], &[1u64][..]));
        assert_eq!(markov.transitions(5), (&[][..], &[][..]));
        assert_eq!(markov.transitions(99), (&[][..], &[][..]));
        let mut m = markov.clone();
        let mut scores = vec![0.0; 12];
        m.step(&[2, 5], &mut scores).unwrap();
        assert_eq!(&scores[1..6], &[0.5, 0.75, 2.5, 0.5, 0.0]);
        // after an item never followed in training: popularity alone.
        assert_eq!(&scores[7..12], &[0.5, 0.75, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn hand_computed_rankings() {
        let (store, parts) = tiny();
        let cfg = EvalConfig { ks: vec![1, 3], tie_mode: TieMode::Median };
        // B: 4 after 3 — both: 2 above, 1 and 3 tied with it → 3.
        // D: 1 after 4 — Markov 1.5 is first → 1; popularity: 2 above, 3 and 4 tied → 3.
        let mut markov = Markov::fit(&store, &parts, 6).unwrap();
        let mut pop = MostPopular::fit(&store, &parts, 6).unwrap();
        for batch in [1, 2, 64] {
            let got = evaluate_sessions(&store, &parts, Test, &mut markov, batch, &cfg).unwrap();
            assert_eq!(got, metrics(&[3.0, 1.0], &cfg.ks), "batch {batch}");
            let got = evaluate_sessions(&store, &parts, Test, &mut pop, batch, &cfg).unwrap();
            assert_eq!(got, metrics(&[3.0, 3.0], &cfg.ks), "batch {batch}");
        }
    }

    #[test]
    fn popularity_never_outweighs_one_transition() {
        // item 2 occurs 50 times, never after 1; item 3 follows 1 once.
        let many = [2u32; 50];
        let (store, parts) = store_of(&[(&many, &[Train; 50]), (&[1, 3], &[Train, Train]), (&[1, 3], &[Train, Test])]);
        let mut markov = Markov::fit(&store, &parts, 4).unwrap();
        assert_eq!(markov.epsilon(), 1.0 / 51.0);
        let got = evaluate_sessions(&store, &parts, Test, &mut markov, 4, &EvalConfig::default()).unwrap();
        assert_eq!(got.mrr(20), Some(1.0));
        let mut pop = MostPopular::fit(&store, &parts, 4).unwrap();
        let got = evaluate_sessions(&store, &parts, Test, &mut pop, 4, &EvalConfig::default()).unwrap();
        assert_eq!(got.mrr(20), Some(1.0 / 3.0)); // 2 and 1 (supports 50 and 2) above 3 (support 1)
    }

    #[test]
    fn bad_input_is_an_error() {
        let (store, parts) = tiny();
        assert!(MostPopular::fit(&store, &parts, 5).is_ok());
        assert!(MostPopular::fit(&store, &parts, 4).is_err());
        assert!(Markov::fit(&store, &parts, 4).unwrap_err().to_string().contains("item id 4"));
        assert!(Markov::fit(&store, &parts[1..], 6).is_err());
        let mut pop = MostPopular::fit(&store, &parts, 6).unwrap();
        assert!(pop.step(&[1], &mut [0.0; 5]).is_err());
    }

    /// The synthetic sessions' last-day split as a store with the generator's
    /// own ids (training sessions, then the filtered test sessions).
    fn split_store(data: &SyntheticSessions) -> (SequenceStore, Vec<Part>) {
        let split = data.last_day_split();
        let mut s = SequenceStore { offsets: vec![0], ..Default::default() };
        let mut parts = Vec::new();
        let test = (0..split.test.len()).map(|i| (split.test[i], split.test_session(i), Test));
        let train = split.train.iter().map(|&q| (q, data.items_of(q), Train));
        for (q, items, part) in train.chain(test) {
            s.items.extend_from_slice(items);
            // the filtered test sessions keep their start; times only order sessions here.
            s.times.extend(std::iter::repeat_n(data.times_of(q)[0], items.len()));
            parts.extend(std::iter::repeat_n(part, items.len()));
            s.offsets.push(s.items.len());
            s.seq_ids.push(q as u32 + 1);
        }
        (s, parts)
    }

    /// Recall@20 and MRR@20 of most popular, Markov and the oracle.
    fn three_scores(cfg: &SessionsConfig) -> [(f64, f64); 3] {
        let data = cfg.generate().unwrap();
        let (store, parts) = split_store(&data);
        let n_ids = cfg.n_items + 1;
        let eval = EvalConfig::default();
        let at20 = |m: RankingMetrics| (m.recall(20).unwrap(), m.mrr(20).unwrap());
        let mut pop = MostPopular::fit(&store, &parts, n_ids).unwrap();
        let mut markov = Markov::fit(&store, &parts, n_ids).unwrap();
        let mut oracle = PrefixScorer::new(&data.world, n_ids);
        let report = data.oracle_report();
        let oracle_metrics = evaluate_sessions(&store, &parts, Test, &mut oracle, 64, &eval).unwrap();
        assert_eq!(at20(oracle_metrics.clone()), (report.recall_at_20, report.mrr_at_20));
        [
            at20(evaluate_sessions(&store, &parts, Test, &mut pop, 64, &eval).unwrap()),
            at20(evaluate_sessions(&store, &parts, Test, &mut markov, 64, &eval).unwrap()),
            at20(oracle_metrics),
        ]
    }

    #[test]
    fn markov_beats_popularity_and_the_oracle_beats_markov() {
        let cfg =
            SessionsConfig { n_items: 300, n_topics: 6, n_sessions: 3000, days: 10.0, ..SessionsConfig::default() };
        let [pop, markov, oracle] = three_scores(&cfg);
        assert!(markov.0 > pop.0 + 0.05 && markov.1 > pop.1 + 0.02, "markov {markov:?} vs popular {pop:?}");
        assert!(oracle.0 > markov.0 + 0.02 && oracle.1 > markov.1 + 0.01, "oracle {oracle:?} vs markov {markov:?}");
    }

    /// The numbers on the default synthetic sessions (docs/benchmarks.md), printed by
    /// `cargo test -p seqrec-models --lib default_synthetic -- --nocapture`.
    #[test]
    fn default_synthetic_sessions_numbers() {
        let [pop, markov, oracle] = three_scores(&SessionsConfig::default());
        for (name, (r, m)) in [("most popular", pop), ("markov", markov), ("oracle", oracle)] {
            println!("{name:>12}: recall@20 {r:.4}  mrr@20 {m:.4}");
        }
        assert!(oracle.0 > markov.0 + 0.05 && markov.0 > pop.0 + 0.2, "{pop:?} {markov:?} {oracle:?}");
        assert!(oracle.1 > markov.1 + 0.02 && markov.1 > pop.1 + 0.1, "{pop:?} {markov:?} {oracle:?}");
    }
}
