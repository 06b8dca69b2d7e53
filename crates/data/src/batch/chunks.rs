//! Long histories cut into consecutive chunks for truncated backpropagation
//! through time (the learner histories of knowledge tracing).
//!
//! B lanes each walk one sequence chunk by chunk, at most `len` events per
//! chunk; the recurrent state carries over from one chunk of a lane to the
//! next. A lane whose sequence is used up takes the next sequence of the
//! given order and reports `reset`; once none is left, finished lanes are
//! removed and `keep` names each remaining lane's previous row, as in
//! [`super::SessionParallel`]. Chunks are right-padded to `len` (only a
//! sequence's last chunk can be short). Every event of every sequence
//! appears in exactly one chunk, so a 20,000-event history loses nothing.
//! With [`Targets::Parts`] a sequence is read up to its last selected event
//! only and sequences without one are skipped; the loss mask comes from
//! gathering the part column with [`ChunkStep::gather`].

use serde::{Deserialize, Serialize};

use super::lanes::Lanes;
use super::{check_order, check_positive, check_store, gather_row, Targets};
use crate::{Result, SequenceStore};

/// Settings of [`Chunks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunksConfig {
    /// Most events per chunk (the truncation length).
    pub len: usize,
    /// Number of lanes (the batch size until sequences run out).
    pub batch_size: usize,
}

impl Default for ChunksConfig {
    fn default() -> Self {
        ChunksConfig { len: 100, batch_size: 64 }
    }
}

/// One step: a chunk per active lane, row-major `rows × len`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkStep {
    /// Chunk width.
    pub len: usize,
    /// Items of the chunk's events, right-padded with 0.
    pub items: Vec<u32>,
    /// Event index (in the store) of each chunk's first event; the chunk
    /// holds the events `start .. start + valid`.
    pub start: Vec<usize>,
    /// Number of real events in each chunk (1..=len).
    pub valid: Vec<usize>,
    /// Sequence index of each row.
    pub seq_index: Vec<usize>,
    /// True where the lane starts a new sequence: its state must be zeroed.
    pub reset: Vec<bool>,
    /// Row of the previous step whose state this row continues
    /// (the identity on the first step, where every row resets).
    pub keep: Vec<usize>,
}

impl ChunkStep {
    /// Number of rows (active lanes).
    pub fn rows(&self) -> usize {
        self.start.len()
    }

    /// Fills `out` with any store column over the chunk positions
    /// (`rows × len`, `pad` at padding), e.g. labels, kinds, gaps or parts.
    pub fn gather<T: Copy>(&self, column: &[T], pad: T, out: &mut Vec<T>) {
        out.clear();
        for (&a, &v) in self.start.iter().zip(&self.valid) {
            gather_row(column, a, v, self.len, pad, false, out);
        }
    }

    /// Fills `out` with `rows × len` flags, true at real events.
    pub fn valid_mask(&self, out: &mut Vec<bool>) {
        out.clear();
        for &v in &self.valid {
            out.extend((0..self.len).map(|p| p < v));
        }
    }

    fn clear(&mut self) {
        self.items.clear();
        self.start.clear();
        self.valid.clear();
        self.seq_index.clear();
    }
}

/// Truncated-BPTT chunks over sequences taken in a fixed order.
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    store: &'a SequenceStore,
    targets: Targets<'a>,
    lanes: Lanes,
    step: ChunkStep,
}

impl<'a> Chunks<'a> {
    /// A batcher over the sequences of `order` (sequence indices), in that order.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when `len` or the batch size is 0, the
    /// store's offsets are inconsistent, `order` names a sequence twice or
    /// one out of range, or the part mask does not cover every event.
    pub fn new(
        store: &'a SequenceStore,
        order: Vec<usize>,
        targets: Targets<'a>,
        config: &ChunksConfig,
    ) -> Result<Self> {
        let what = "chunks";
        check_positive(config.len, "chunk length")?;
        check_positive(config.batch_size, "chunk batch size")?;
        check_store(store, what)?;
        check_order(&order, store, what)?;
        targets.check(store)?;
        Ok(Chunks {
            store,
            targets,
            lanes: Lanes::new(order, config.batch_size),
            step: ChunkStep { len: config.len, ..Default::default() },
        })
    }

    /// The next step, or `None` once every event of the epoch was emitted.
    pub fn next_step(&mut self) -> Option<&ChunkStep> {
        let Chunks { store, targets, lanes, step } = self;
        let span = |s: usize| {
            let r = store.range(s);
            let last = targets.last_in(r.clone())?;
            Some((r.start, last + 1))
        };
        step.clear();
        if !lanes.schedule(span, &mut step.keep, &mut step.reset) {
            return None;
        }
        let len = step.len;
        for c in lanes.cursors_mut() {
            let valid = (c.end - c.pos).min(len);
            gather_row(&store.items, c.pos, valid, len, 0, false, &mut step.items);
            step.start.push(c.pos);
            step.valid.push(valid);
            step.seq_index.push(c.seq);
            c.pos += valid;
        }
        Some(&self.step)
    }

    /// Starts a new epoch over the same order.
    pub fn rewind(&mut self) {
        self.lanes.rewind();
    }
}

/// An order of the sequences under which every lane of [`Chunks`] carries
/// about the same number of chunks and meets its sequences in random order.
///
/// Longest-first orders end every epoch on the shortest sequences (the last
/// hundreds of steps all fresh starts); a random order leaves a long
/// sequence drawn late alone in the batch for its whole length. Here the
/// sequences are dealt to `batch_size` lanes longest first, each to the
/// lane with the least work so far (LPT: no lane ends more than the longest
/// sequence's chunk count after the average), each lane's sequences are
/// shuffled, and the order is the one in which [`Chunks`] then loads them
/// (its lanes refill in row order; a lane whose own list runs out takes the
/// last sequence of the fullest list). Sequences without a selected event
/// come last (`Chunks` skips them).
pub fn balanced_order(
    store: &SequenceStore,
    targets: Targets<'_>,
    config: &ChunksConfig,
    rng: &mut crate::rng::Rng,
) -> Vec<usize> {
    let (len, width) = (config.len.max(1), config.batch_size.max(1));
    let chunks: Vec<usize> = (0..store.n_seq())
        .map(|s| {
            let r = store.range(s);
            targets.last_in(r.clone()).map_or(0, |last| (last + 1 - r.start).div_ceil(len))
        })
        .collect();
    let mut by_size: Vec<usize> = (0..store.n_seq()).filter(|&s| chunks[s] > 0).collect();
    rng.shuffle(&mut by_size);
    by_size.sort_by_key(|&s| std::cmp::Reverse(chunks[s]));
    // Deal longest first to the least-loaded lane (ties: lowest lane).
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); width];
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> =
        (0..width).map(|l| std::cmp::Reverse((0, l))).collect();
    for &s in &by_size {
        let std::cmp::Reverse((load, lane)) = heap.pop().expect("width > 0");
        queues[lane].push(s);
        heap.push(std::cmp::Reverse((load + chunks[s], lane)));
    }
    let mut left: Vec<usize> = queues.iter().map(|q| q.iter().map(|&s| chunks[s]).sum()).collect();
    for q in &mut queues {
        rng.shuffle(q);
    }
    // Replay the lanes' refills: rows stay lanes while sequences remain.
    let mut order = Vec::with_capacity(store.n_seq());
    let mut busy = vec![0usize; width];
    let take = |lane: usize, queues: &mut [Vec<usize>], left: &mut [usize]| -> Option<usize> {
        let from = if queues[lane].is_empty() {
            (0..width).filter(|&l| !queues[l].is_empty()).max_by_key(|&l| (left[l], std::cmp::Reverse(l)))?
        } else {
            lane
        };
        let s = queues[from].pop()?;
        left[from] -= chunks[s];
        Some(s)
    };
    while order.len() < by_size.len() {
        for (lane, b) in busy.iter_mut().enumerate() {
            if *b == 0 {
                if let Some(s) = take(lane, &mut queues, &mut left) {
                    order.push(s);
                    *b = chunks[s];
                }
            }
        }
        busy.iter_mut().for_each(|b| *b = b.saturating_sub(1));
    }
    order.extend((0..store.n_seq()).filter(|&s| chunks[s] == 0));
    order
}

#[cfg(test)]
mod tests {
    use super::super::test_stores::{random_order, random_parts, random_store, store_of};
    use super::*;
    use crate::rng::Rng;
    use crate::split::Part;

    fn config(len: usize, batch_size: usize) -> ChunksConfig {
        ChunksConfig { len, batch_size }
    }

    #[test]
    fn hand_computed_chunks() {
        // Sequences [1, 2, 3], [4, 5], [6, 7, 8, 9] (events 0-2, 3-4, 5-8).
        let store = store_of(&[&[1, 2, 3], &[4, 5], &[6, 7, 8, 9]]);
        let mut c = Chunks::new(&store, vec![0, 1, 2], Targets::All, &config(2, 2)).unwrap();
        type Step = (Vec<u32>, Vec<usize>, Vec<usize>, Vec<bool>, Vec<usize>);
        let mut got: Vec<Step> = Vec::new();
        let mut labels = Vec::new();
        while let Some(s) = c.next_step() {
            got.push((s.items.clone(), s.start.clone(), s.valid.clone(), s.reset.clone(), s.keep.clone()));
            let mut l = Vec::new();
            s.gather(&store.times, -1, &mut l);
            labels.push(l);
        }
        let expect: Vec<Step> = vec![
            (vec![1, 2, 4, 5], vec![0, 3], vec![2, 2], vec![true, true], vec![0, 1]),
            (vec![3, 0, 6, 7], vec![2, 5], vec![1, 2], vec![false, true], vec![0, 1]),
            (vec![8, 9], vec![7], vec![2], vec![false], vec![1]),
        ];
        assert_eq!(got, expect);
        assert_eq!(labels, vec![vec![0, 1, 3, 4], vec![2, -1, 5, 6], vec![7, 8]]);
        c.rewind();
        let s = c.next_step().unwrap();
        let mut mask = Vec::new();
        s.valid_mask(&mut mask);
        assert_eq!(mask, vec![true; 4]);
    }

    #[test]
    fn part_mask_stops_at_the_last_selected_event() {
        let store = store_of(&[&[1, 2, 3, 4, 5], &[6, 7]]);
        let parts = [Part::Train, Part::Test, Part::Train, Part::Test, Part::Test, Part::Test, Part::Test];
        let mut c = Chunks::new(&store, vec![1, 0], Targets::of(&parts, &[Part::Train]), &config(2, 4)).unwrap();
        let s = c.next_step().unwrap();
        assert_eq!((s.items.clone(), s.seq_index.clone()), (vec![1, 2], vec![0]));
        let s = c.next_step().unwrap();
        assert_eq!((s.items.clone(), s.valid.clone()), (vec![3, 0], vec![1]));
        assert!(c.next_step().is_none());
    }

    #[test]
    fn bad_input_is_an_error() {
        let store = store_of(&[&[1, 2]]);
        assert!(Chunks::new(&store, vec![0], Targets::All, &config(0, 2)).is_err());
        assert!(Chunks::new(&store, vec![0], Targets::All, &config(2, 0)).is_err());
        assert!(Chunks::new(&store, vec![3], Targets::All, &config(2, 2)).is_err());
    }

    fn check_random(seed: u64) {
        let mut rng = Rng::new(seed);
        let store = random_store(&mut rng, seed);
        let parts = random_parts(&mut rng, &store);
        let order = random_order(&mut rng, &store);
        let select = [Part::Train];
        let masked = seed.is_multiple_of(2);
        let targets = if masked { Targets::of(&parts, &select) } else { Targets::All };
        let cfg = config(1 + rng.below(7) as usize, 1 + rng.below(6) as usize);
        let len = cfg.len;
        let mut c = Chunks::new(&store, order.clone(), targets, &cfg).unwrap();

        let mut expected = vec![0usize; store.n_events()];
        let mut loaded = Vec::new();
        for &s in &order {
            let r = store.range(s);
            if let Some(last) = targets.last_in(r.clone()) {
                loaded.push(s);
                expected[r.start..=last].iter_mut().for_each(|x| *x = 1);
            }
        }
        let mut seen = vec![0usize; store.n_events()];
        let mut prev: Vec<(usize, usize)> = Vec::new(); // (seq, next event) per row
        let mut started = Vec::new();
        let mut step_no = 0;
        while let Some(st) = c.next_step() {
            let rows = st.rows();
            assert!(rows >= 1 && rows <= cfg.batch_size);
            assert_eq!(st.items.len(), rows * len);
            assert_eq!((st.reset.len(), st.keep.len(), st.seq_index.len()), (rows, rows, rows));
            if step_no == 0 {
                assert_eq!(rows, cfg.batch_size.min(loaded.len()));
            } else {
                assert!(rows <= prev.len());
            }
            let shrank = step_no > 0 && rows < prev.len();
            for r in 0..rows {
                let (s, a, v) = (st.seq_index[r], st.start[r], st.valid[r]);
                let range = store.range(s);
                // A chunk is contiguous inside one sequence.
                assert!(v >= 1 && v <= len && range.start <= a && a + v <= range.end, "seed {seed}");
                let row = &st.items[r * len..(r + 1) * len];
                assert_eq!(&row[..v], &store.items[a..a + v]);
                assert!(row[v..].iter().all(|&i| i == 0));
                assert_eq!(st.reset[r], a == range.start, "seed {seed}: reset at event {a}");
                if st.reset[r] {
                    started.push(s);
                } else {
                    assert_eq!(prev[st.keep[r]], (s, a), "seed {seed}: row {r} does not continue");
                }
                seen[a..a + v].iter_mut().for_each(|x| *x += 1);
            }
            if shrank {
                assert_eq!(started.len(), loaded.len(), "seed {seed}: shrank early");
            }
            // Only a sequence's last chunk may be short.
            for r in 0..rows {
                let last = st.start[r] + st.valid[r];
                let end = targets.last_in(store.range(st.seq_index[r])).unwrap() + 1;
                assert!(st.valid[r] == len || last == end, "seed {seed}: short chunk mid-sequence");
            }
            prev = (0..rows).map(|r| (st.seq_index[r], st.start[r] + st.valid[r])).collect();
            step_no += 1;
        }
        assert_eq!(seen, expected, "seed {seed}: events not covered exactly once");
        assert_eq!(started, loaded, "seed {seed}: sequences not taken in order");
        if !masked {
            let total: usize = order.iter().map(|&s| store.len_of(s)).sum();
            assert_eq!(seen.iter().sum::<usize>(), total);
        }
    }

    #[test]
    fn random_stores_keep_every_invariant() {
        for seed in 0..300 {
            check_random(seed);
        }
    }

    /// Steps of `Chunks` over `order`: (rows, sequences started) per step.
    fn replay(
        store: &SequenceStore,
        order: Vec<usize>,
        targets: Targets<'_>,
        cfg: &ChunksConfig,
    ) -> Vec<(usize, Vec<usize>)> {
        let mut c = Chunks::new(store, order, targets, cfg).unwrap();
        let mut steps = Vec::new();
        while let Some(st) = c.next_step() {
            let started = (0..st.rows()).filter(|&r| st.reset[r]).map(|r| st.seq_index[r]).collect();
            steps.push((st.rows(), started));
        }
        steps
    }

    #[test]
    fn balanced_order_keeps_every_lane_busy_to_the_end() {
        let len = 4;
        let cfg = config(len, 8);
        // Heavy-tailed lengths; sequence 17 long, but shorter than a lane's share.
        let mut rng = Rng::new(3);
        let mut seqs: Vec<Vec<u32>> = (0..300)
            .map(|_| {
                let n = ((rng.normal() * 1.3).exp() * 6.0).round().clamp(1.0, 400.0) as usize;
                vec![1; n]
            })
            .collect();
        seqs[17] = vec![1; 160];
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let store = store_of(&refs);
        let chunks = |s: usize| store.len_of(s).div_ceil(len);
        let total: usize = (0..store.n_seq()).map(chunks).sum();
        let longest = (0..store.n_seq()).map(chunks).max().unwrap();
        assert!(chunks(17) * 2 < total / cfg.batch_size, "{} vs {total}", chunks(17));
        let mut first_steps = std::collections::BTreeSet::new();
        for seed in 0..10 {
            let order = balanced_order(&store, Targets::All, &cfg, &mut Rng::new(seed));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..store.n_seq()).collect::<Vec<_>>(), "every sequence once");
            let steps = replay(&store, order.clone(), Targets::All, &cfg);
            // The replay of the refills is exact: Chunks starts them in this order.
            let started: Vec<usize> = steps.iter().flat_map(|(_, s)| s.clone()).collect();
            assert_eq!(started, order);
            // LPT: the batch thins out for at most the longest sequence's chunks,
            // and the epoch is at most that much longer than a perfect split.
            let tail = steps.iter().filter(|(rows, _)| *rows < cfg.batch_size).count();
            assert!(tail <= longest, "seed {seed}: {tail} thin steps");
            assert!(steps.len() <= total.div_ceil(cfg.batch_size) + longest, "seed {seed}: {} steps", steps.len());
            first_steps.insert(steps.iter().position(|(_, s)| s.contains(&17)).unwrap());
        }
        // Lanes meet their sequences in random order: a long one starts at different times.
        assert!(first_steps.len() >= 5, "{first_steps:?}");

        // Longest first, for contrast, ends on fresh short sequences.
        let mut by_len: Vec<usize> = (0..store.n_seq()).collect();
        by_len.sort_by_key(|&s| std::cmp::Reverse(store.len_of(s)));
        let steps = replay(&store, by_len, Targets::All, &cfg);
        let last_full = steps.iter().rposition(|(rows, _)| *rows == cfg.batch_size).unwrap();
        assert!(steps[last_full - 5..=last_full].iter().all(|(_, s)| !s.is_empty()));

        // Sequences without a selected event come last.
        let mut parts = vec![Part::Train; store.n_events()];
        store.range(5).for_each(|e| parts[e] = Part::Test);
        let select = [Part::Train];
        let order = balanced_order(&store, Targets::of(&parts, &select), &cfg, &mut Rng::new(1));
        assert_eq!(order.last(), Some(&5));
    }

    #[test]
    fn a_long_history_loses_nothing() {
        let items: Vec<u32> = (0..20_000).map(|i| 1 + i % 97).collect();
        let store = store_of(&[&items, &[5, 6]]);
        let mut c = Chunks::new(&store, vec![0, 1], Targets::All, &config(64, 1)).unwrap();
        let (mut n, mut steps) = (0, 0);
        while let Some(s) = c.next_step() {
            n += s.valid.iter().sum::<usize>();
            steps += 1;
        }
        assert_eq!((n, steps), (20_002, 20_000usize.div_ceil(64) + 1));
    }
}
