//! Left-padded history windows ending at each target (BST, embedding-GRU,
//! SASRec at evaluation).
//!
//! Every selected target event of a sequence gives one row: the up to `len`
//! events just before it in the same sequence (never crossing into another
//! sequence), left-padded with item 0, and the target itself. The first
//! event of a sequence has no history and is skipped as a target unless
//! `skip_first` is off. The history may hold events of any part (a test
//! target sees its training history). Rows come in store order or in a
//! seeded shuffle; the last batch may be partial and is kept.
//!
//! ```
//! use seqrec_data::batch::{Targets, Windows, WindowsConfig};
//! use seqrec_data::SequenceStore;
//!
//! let store = SequenceStore {
//!     offsets: vec![0, 3, 5],
//!     seq_ids: vec![1, 2],
//!     items: vec![1, 2, 3, 4, 5],
//!     times: (0..5).collect(),
//!     ..Default::default()
//! };
//! let config = WindowsConfig { len: 2, batch_size: 8, ..Default::default() };
//! let mut windows = Windows::new(&store, Targets::All, &config)?;
//! let batch = windows.next_batch().unwrap();
//! assert_eq!(batch.history, vec![0, 1, 1, 2, 0, 4]);
//! assert_eq!(batch.targets, vec![2, 3, 5]);
//! # Ok::<(), seqrec_data::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use super::epoch::EpochOrder;
use super::{check_positive, check_row_store, gather_before, gather_row, seq_of, Targets};
use crate::{Result, SequenceStore};

/// Settings of [`Windows`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsConfig {
    /// History length (window width).
    pub len: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Skip the first event of each sequence as a target (it has no history).
    pub skip_first: bool,
    /// Shuffle the rows (again at every [`Windows::rewind`]).
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig { len: 50, batch_size: 256, skip_first: true, shuffle: false, seed: 0 }
    }
}

/// A batch of windows: row-major `rows × len` history columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowBatch {
    /// Window width.
    pub len: usize,
    /// History items, left-padded with 0.
    pub history: Vec<u32>,
    /// History ratings, 0 at padding (empty when the store has no ratings).
    pub history_ratings: Vec<f32>,
    /// Number of real (non-padding) history events of each row; they are
    /// the events `target_event - lengths .. target_event`.
    pub lengths: Vec<usize>,
    /// Target item of each row.
    pub targets: Vec<u32>,
    /// Target rating of each row (empty when the store has no ratings).
    pub target_ratings: Vec<f32>,
    /// Event index (in the store) of each target.
    pub target_event: Vec<usize>,
    /// Sequence index of each row.
    pub seq_index: Vec<usize>,
}

impl WindowBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.targets.len()
    }

    /// Fills `out` with any store column over the history positions
    /// (`rows × len`, `pad` at padding), e.g. gaps or labels.
    pub fn gather_history<T: Copy>(&self, column: &[T], pad: T, out: &mut Vec<T>) {
        gather_before(column, &self.target_event, &self.lengths, self.len, pad, out);
    }

    /// Fills `out` with `rows × len` flags, true at padding positions.
    pub fn padding_mask(&self, out: &mut Vec<bool>) {
        out.clear();
        for &l in &self.lengths {
            out.extend((0..self.len).map(|p| p < self.len - l));
        }
    }

    fn clear(&mut self) {
        self.history.clear();
        self.history_ratings.clear();
        self.lengths.clear();
        self.targets.clear();
        self.target_ratings.clear();
        self.target_event.clear();
        self.seq_index.clear();
    }
}

/// Left-padded windows ending at each target.
#[derive(Debug, Clone)]
pub struct Windows<'a> {
    store: &'a SequenceStore,
    config: WindowsConfig,
    /// Target event indices in epoch order.
    order: EpochOrder,
    batch: WindowBatch,
}

impl<'a> Windows<'a> {
    /// Windows for the targets of `store` chosen by `targets`.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when `len` or the batch size is 0, the
    /// store's offsets are inconsistent or it has more than `u32::MAX`
    /// events, or the part mask does not cover every event.
    pub fn new(store: &'a SequenceStore, targets: Targets<'a>, config: &WindowsConfig) -> Result<Self> {
        let what = "windows";
        check_positive(config.len, "window length")?;
        check_positive(config.batch_size, "window batch size")?;
        check_row_store(store, &targets, what)?;
        let mut order = Vec::new();
        for s in 0..store.n_seq() {
            let r = store.range(s);
            let first = r.start + config.skip_first as usize;
            order.extend((first..r.end).filter(|&e| targets.selects(e)).map(|e| e as u32));
        }
        Ok(Windows {
            store,
            config: config.clone(),
            order: EpochOrder::new(order, config.batch_size, config.shuffle, config.seed),
            batch: WindowBatch { len: config.len, ..Default::default() },
        })
    }

    /// Number of targets (rows) per epoch.
    pub fn n_targets(&self) -> usize {
        self.order.len()
    }

    /// Number of batches per epoch, the partial last one included.
    pub fn n_batches(&self) -> usize {
        self.order.n_batches()
    }

    /// Starts a new epoch (with a new shuffle when shuffling).
    pub fn rewind(&mut self) {
        self.order.rewind();
    }

    /// The next batch, or `None` at the end of the epoch.
    pub fn next_batch(&mut self) -> Option<&WindowBatch> {
        let Windows { store, config, order, batch } = self;
        let rows = order.next_rows()?;
        batch.clear();
        for &t in rows {
            let t = t as usize;
            let s = seq_of(&store.offsets, t);
            let l = (t - store.offsets[s]).min(config.len);
            gather_row(&store.items, t - l, l, config.len, 0, true, &mut batch.history);
            if let Some(ratings) = &store.ratings {
                gather_row(ratings, t - l, l, config.len, 0.0, true, &mut batch.history_ratings);
                batch.target_ratings.push(ratings[t]);
            }
            batch.lengths.push(l);
            batch.targets.push(store.items[t]);
            batch.target_event.push(t);
            batch.seq_index.push(s);
        }
        Some(&self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_stores::{random_parts, random_store, store_of};
    use super::*;
    use crate::rng::Rng;
    use crate::split::Part;

    fn config(len: usize, batch_size: usize) -> WindowsConfig {
        WindowsConfig { len, batch_size, ..Default::default() }
    }

    #[test]
    fn hand_computed_windows() {
        // Sequences [1, 2, 3], [4, 5], [6, 7, 8, 9] (events 0-2, 3-4, 5-8); ratings item / 2.
        let store = store_of(&[&[1, 2, 3], &[4, 5], &[6, 7, 8, 9]]);
        let mut w = Windows::new(&store, Targets::All, &config(2, 4)).unwrap();
        assert_eq!((w.n_targets(), w.n_batches()), (6, 2));
        let b = w.next_batch().unwrap().clone();
        assert_eq!(b.history, vec![0, 1, 1, 2, 0, 4, 0, 6]);
        assert_eq!(b.history_ratings, vec![0.0, 0.5, 0.5, 1.0, 0.0, 2.0, 0.0, 3.0]);
        assert_eq!(b.lengths, vec![1, 2, 1, 1]);
        assert_eq!(b.targets, vec![2, 3, 5, 7]);
        assert_eq!(b.target_ratings, vec![1.0, 1.5, 2.5, 3.5]);
        assert_eq!(b.target_event, vec![1, 2, 4, 6]);
        assert_eq!(b.seq_index, vec![0, 0, 1, 2]);
        let mut mask = Vec::new();
        b.padding_mask(&mut mask);
        assert_eq!(mask, vec![true, false, false, false, true, false, true, false]);
        let mut times = Vec::new();
        b.gather_history(&store.times, -1, &mut times);
        assert_eq!(times, vec![-1, 0, 0, 1, -1, 3, -1, 5]);
        // The partial last batch is kept.
        let b = w.next_batch().unwrap();
        assert_eq!((b.history.clone(), b.targets.clone()), (vec![6, 7, 7, 8], vec![8, 9]));
        assert!(w.next_batch().is_none());
    }

    #[test]
    fn first_events_as_targets_and_part_mask() {
        let store = store_of(&[&[1, 2, 3], &[4, 5]]);
        let cfg = WindowsConfig { skip_first: false, ..config(3, 10) };
        let parts = [Part::Test, Part::Train, Part::Test, Part::Test, Part::Valid];
        let mut w = Windows::new(&store, Targets::of(&parts, &[Part::Test]), &cfg).unwrap();
        let b = w.next_batch().unwrap();
        assert_eq!(b.history, vec![0, 0, 0, 0, 1, 2, 0, 0, 0]);
        assert_eq!(b.targets, vec![1, 3, 4]);
        assert_eq!(b.lengths, vec![0, 2, 0]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let store = store_of(&[&[1, 2]]);
        assert!(Windows::new(&store, Targets::All, &config(0, 2)).is_err());
        assert!(Windows::new(&store, Targets::All, &config(2, 0)).is_err());
        let parts = [Part::Train];
        assert!(Windows::new(&store, Targets::of(&parts, &[Part::Train]), &config(2, 2)).is_err());
        let empty = SequenceStore::default();
        let mut w = Windows::new(&empty, Targets::All, &config(2, 2)).unwrap();
        assert!(w.next_batch().is_none());
    }

    fn check_random(seed: u64) {
        let mut rng = Rng::new(seed);
        let store = random_store(&mut rng, seed);
        let parts = random_parts(&mut rng, &store);
        let select = [Part::Test];
        let targets = if seed.is_multiple_of(2) { Targets::of(&parts, &select) } else { Targets::All };
        let cfg = WindowsConfig {
            len: 1 + rng.below(8) as usize,
            batch_size: 1 + rng.below(10) as usize,
            skip_first: !seed.is_multiple_of(3),
            shuffle: seed % 4 < 2,
            seed,
        };
        let mut w = Windows::new(&store, targets, &cfg).unwrap();
        let mut seen = vec![0usize; store.n_events()];
        for epoch in 0..2 {
            let (mut batches, mut rows, mut epoch_order) = (0, 0, Vec::new());
            while let Some(b) = w.next_batch() {
                batches += 1;
                let n = b.rows();
                assert!(n >= 1 && n <= cfg.batch_size);
                assert_eq!(b.history.len(), n * cfg.len);
                if store.ratings.is_some() {
                    assert_eq!(b.history_ratings.len(), n * cfg.len);
                }
                for r in 0..n {
                    let (t, s, l) = (b.target_event[r], b.seq_index[r], b.lengths[r]);
                    let range = store.range(s);
                    assert!(range.contains(&t), "seed {seed}: target {t} not in seq {s}");
                    assert_eq!(l, (t - range.start).min(cfg.len));
                    assert_eq!(b.targets[r], store.items[t]);
                    let row = &b.history[r * cfg.len..(r + 1) * cfg.len];
                    let pad = cfg.len - l;
                    assert!(row[..pad].iter().all(|&i| i == 0));
                    // History = the events just before the target, same sequence.
                    assert_eq!(&row[pad..], &store.items[t - l..t], "seed {seed}");
                    if epoch == 0 {
                        seen[t] += 1;
                    }
                    epoch_order.push(t);
                }
                rows += n;
            }
            assert_eq!(rows, w.n_targets());
            assert_eq!(batches, w.n_batches(), "seed {seed}: partial batch dropped");
            if !cfg.shuffle {
                assert!(epoch_order.windows(2).all(|p| p[0] < p[1]));
            }
            w.rewind();
        }
        for s in 0..store.n_seq() {
            for e in store.range(s) {
                let first = e == store.offsets[s] && cfg.skip_first;
                let expect = (!first && targets.selects(e)) as usize;
                assert_eq!(seen[e], expect, "seed {seed}: event {e} seen {} times", seen[e]);
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
