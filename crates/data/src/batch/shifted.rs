//! SASRec's training windows: every position predicts the next event
//! (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation",
//! arXiv:1808.09781, section III-A).
//!
//! A window ending at target event `j` has inputs = events `j-len .. j` and
//! targets = events `j-len+1 ..= j` (the inputs shifted by one), both
//! clipped at the start of the sequence and left-padded with 0. Each
//! sequence's selected targets are covered by consecutive non-overlapping
//! windows anchored at its last selected target, so long sequences lose
//! nothing and every selected target is predicted exactly once; the
//! earliest window of a sequence is the one that is padded. With a
//! `stride` below `len` the windows overlap: they end `stride` targets
//! apart and each takes the loss at its last `stride` positions only, so a
//! target still counts once but sees at least `len − stride` events before
//! it (not just those since its window began), at `len / stride` times the
//! windows. A position
//! whose target is padding or not selected has target 0 (no loss there);
//! its input still feeds the model. Rows come in store order (earliest
//! window first within a sequence) or in a seeded shuffle; the last batch
//! may be partial and is kept.

use serde::{Deserialize, Serialize};

use super::epoch::EpochOrder;
use super::{check_positive, check_row_store, gather_before, gather_row, seq_of, Targets};
use crate::{Result, SequenceStore};

/// Settings of [`ShiftedWindows`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShiftedConfig {
    /// Window width (SASRec's maximum sequence length).
    pub len: usize,
    /// Targets between the ends of consecutive windows of a sequence (0:
    /// `len`, no overlap); each window's loss covers its last `stride` positions.
    pub stride: usize,
    /// Rows (windows) per batch.
    pub batch_size: usize,
    /// Shuffle the windows (again at every [`ShiftedWindows::rewind`]).
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
}

impl ShiftedConfig {
    /// The stride in use (`len` when 0).
    pub fn stride(&self) -> usize {
        if self.stride == 0 {
            self.len
        } else {
            self.stride
        }
    }
}

impl Default for ShiftedConfig {
    fn default() -> Self {
        ShiftedConfig { len: 50, stride: 0, batch_size: 128, shuffle: false, seed: 0 }
    }
}

/// A batch of shifted windows, row-major `rows × len`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShiftedBatch {
    /// Window width.
    pub len: usize,
    /// Input items, left-padded with 0.
    pub inputs: Vec<u32>,
    /// Target item at each position (the next event's item), 0 where there
    /// is no loss: padding or a target that is not selected.
    pub targets: Vec<u32>,
    /// Real (non-padding) input positions of each row: the events
    /// `last_event - lengths .. last_event`.
    pub lengths: Vec<usize>,
    /// Event index (in the store) of each row's last target.
    pub last_event: Vec<usize>,
    /// Sequence index of each row.
    pub seq_index: Vec<usize>,
}

impl ShiftedBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Fills `out` with any store column over the input positions
    /// (`rows × len`, `pad` at padding), e.g. gaps.
    pub fn gather_inputs<T: Copy>(&self, column: &[T], pad: T, out: &mut Vec<T>) {
        gather_before(column, &self.last_event, &self.lengths, self.len, pad, out);
    }

    fn clear(&mut self) {
        self.inputs.clear();
        self.targets.clear();
        self.lengths.clear();
        self.last_event.clear();
        self.seq_index.clear();
    }
}

/// Shifted training windows covering every selected target once.
#[derive(Debug, Clone)]
pub struct ShiftedWindows<'a> {
    store: &'a SequenceStore,
    targets: Targets<'a>,
    config: ShiftedConfig,
    /// Last target event of each window, in epoch order.
    order: EpochOrder,
    batch: ShiftedBatch,
}

impl<'a> ShiftedWindows<'a> {
    /// Windows over the targets of `store` chosen by `targets` (the first
    /// event of a sequence is never a target: nothing comes before it).
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when `len` or the batch size is 0, `stride`
    /// exceeds `len`, the store's offsets are inconsistent or it has more
    /// than `u32::MAX` events, or the part mask does not cover every event.
    pub fn new(store: &'a SequenceStore, targets: Targets<'a>, config: &ShiftedConfig) -> Result<Self> {
        let what = "shifted windows";
        check_positive(config.len, "window length")?;
        check_positive(config.batch_size, "window batch size")?;
        if config.stride > config.len {
            return Err(crate::Error::Invalid(format!(
                "shifted windows: stride {} exceeds the window length {}, expected at most the length",
                config.stride, config.len
            )));
        }
        let stride = config.stride();
        check_row_store(store, &targets, what)?;
        let mut order = Vec::new();
        for s in 0..store.n_seq() {
            let r = store.range(s);
            let first = order.len();
            let mut last = targets.last_in(r.start + 1..r.end);
            while let Some(j) = last {
                order.push(j as u32);
                let window_start = (j + 1).saturating_sub(stride).max(r.start + 1);
                last = targets.last_in(r.start + 1..window_start);
            }
            order[first..].reverse();
        }
        Ok(ShiftedWindows {
            store,
            targets,
            config: config.clone(),
            order: EpochOrder::new(order, config.batch_size, config.shuffle, config.seed),
            batch: ShiftedBatch { len: config.len, ..Default::default() },
        })
    }

    /// Number of windows (rows) per epoch.
    pub fn n_windows(&self) -> usize {
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
    pub fn next_batch(&mut self) -> Option<&ShiftedBatch> {
        let ShiftedWindows { store, targets, config, order, batch } = self;
        let rows = order.next_rows()?;
        batch.clear();
        let (len, stride) = (config.len, config.stride());
        for &j in rows {
            let j = j as usize;
            let s = seq_of(&store.offsets, j);
            let l = (j - store.offsets[s]).min(len);
            gather_row(&store.items, j - l, l, len, 0, true, &mut batch.inputs);
            batch.targets.extend(std::iter::repeat_n(0, len - l));
            // Targets before the last `stride` belong to the window before
            // (or are not selected: the earliest window has none before).
            let own = |t: usize| t + stride > j && targets.selects(t);
            batch.targets.extend((j + 1 - l..=j).map(|t| if own(t) { store.items[t] } else { 0 }));
            batch.lengths.push(l);
            batch.last_event.push(j);
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

    fn config(len: usize, batch_size: usize) -> ShiftedConfig {
        ShiftedConfig { len, batch_size, ..Default::default() }
    }

    #[test]
    fn hand_computed_windows() {
        // Sequences [1, 2, 3], [4, 5], [6, 7, 8, 9] (events 0-2, 3-4, 5-8).
        let store = store_of(&[&[1, 2, 3], &[4, 5], &[6, 7, 8, 9]]);
        let mut w = ShiftedWindows::new(&store, Targets::All, &config(2, 3)).unwrap();
        assert_eq!((w.n_windows(), w.n_batches()), (4, 2));
        let b = w.next_batch().unwrap().clone();
        assert_eq!(b.inputs, vec![1, 2, 0, 4, 0, 6]);
        assert_eq!(b.targets, vec![2, 3, 0, 5, 0, 7]);
        assert_eq!(b.lengths, vec![2, 1, 1]);
        assert_eq!(b.last_event, vec![2, 4, 6]);
        assert_eq!(b.seq_index, vec![0, 1, 2]);
        let mut times = Vec::new();
        b.gather_inputs(&store.times, -1, &mut times);
        assert_eq!(times, vec![0, 1, -1, 3, -1, 5]);
        let b = w.next_batch().unwrap();
        assert_eq!((b.inputs.clone(), b.targets.clone()), (vec![7, 8], vec![8, 9]));
        assert!(w.next_batch().is_none());
    }

    #[test]
    fn overlapping_windows_count_each_target_once() {
        // One sequence 1..=7 (events 0-6), windows of 4 ending 2 targets apart.
        let store = store_of(&[&[1, 2, 3, 4, 5, 6, 7]]);
        let cfg = ShiftedConfig { len: 4, stride: 2, batch_size: 8, ..Default::default() };
        let mut w = ShiftedWindows::new(&store, Targets::All, &cfg).unwrap();
        let b = w.next_batch().unwrap();
        assert_eq!(b.last_event, vec![2, 4, 6]);
        assert_eq!(b.inputs, vec![0, 0, 1, 2, 1, 2, 3, 4, 3, 4, 5, 6]);
        assert_eq!(b.targets, vec![0, 0, 2, 3, 0, 0, 4, 5, 0, 0, 6, 7]);
        let too_far = ShiftedConfig { stride: 5, ..cfg };
        let e = ShiftedWindows::new(&store, Targets::All, &too_far).unwrap_err().to_string();
        assert!(e.contains("stride 5 exceeds the window length 4"), "{e}");
    }

    #[test]
    fn unselected_targets_inside_a_window_are_zero() {
        let store = store_of(&[&[1, 2, 3, 4]]);
        let parts = [Part::Train, Part::Train, Part::Valid, Part::Train];
        let mut w = ShiftedWindows::new(&store, Targets::of(&parts, &[Part::Train]), &config(3, 4)).unwrap();
        let b = w.next_batch().unwrap();
        assert_eq!((b.inputs.clone(), b.targets.clone()), (vec![1, 2, 3], vec![2, 0, 4]));
    }

    #[test]
    fn bad_input_is_an_error() {
        let store = store_of(&[&[1, 2]]);
        assert!(ShiftedWindows::new(&store, Targets::All, &config(0, 2)).is_err());
        assert!(ShiftedWindows::new(&store, Targets::All, &config(2, 0)).is_err());
        let empty = SequenceStore::default();
        let mut w = ShiftedWindows::new(&empty, Targets::All, &config(2, 2)).unwrap();
        assert!(w.next_batch().is_none());
    }

    fn check_random(seed: u64) {
        let mut rng = Rng::new(seed);
        let store = random_store(&mut rng, seed);
        let parts = random_parts(&mut rng, &store);
        let select = [Part::Train, Part::Valid];
        let targets = if seed.is_multiple_of(2) { Targets::of(&parts, &select) } else { Targets::All };
        let len = 1 + rng.below(8) as usize;
        let cfg = ShiftedConfig {
            len,
            stride: if seed.is_multiple_of(3) { 0 } else { rng.below(len as u64) as usize + 1 },
            batch_size: 1 + rng.below(10) as usize,
            shuffle: seed % 4 < 2,
            seed,
        };
        let stride = cfg.stride();
        let mut w = ShiftedWindows::new(&store, targets, &cfg).unwrap();
        let mut seen = vec![0usize; store.n_events()];
        let (mut batches, mut rows) = (0, 0);
        while let Some(b) = w.next_batch() {
            batches += 1;
            let n = b.rows();
            assert!(n >= 1 && n <= cfg.batch_size);
            assert_eq!((b.inputs.len(), b.targets.len()), (n * len, n * len));
            for r in 0..n {
                let (j, s, l) = (b.last_event[r], b.seq_index[r], b.lengths[r]);
                let range = store.range(s);
                assert!(range.start < j && j < range.end, "seed {seed}: window end {j} outside seq {s}");
                assert!(targets.selects(j), "seed {seed}: window ends at an unselected target");
                assert_eq!(l, (j - range.start).min(len));
                for p in 0..len {
                    let (input, target) = (b.inputs[r * len + p], b.targets[r * len + p]);
                    if p < len - l {
                        assert_eq!((input, target), (0, 0), "seed {seed}: padding");
                        continue;
                    }
                    // Input and target are consecutive events of the same sequence.
                    let e = j + p - len;
                    assert!(e >= range.start);
                    assert_eq!(input, store.items[e]);
                    if targets.selects(e + 1) && e + 1 + stride > j {
                        assert_eq!(target, store.items[e + 1]);
                        seen[e + 1] += 1;
                        // Context: the whole history or at least len − stride + 1 events.
                        let context = e + 1 - (j - l);
                        assert!(
                            context >= (e + 1 - range.start).min(len + 1 - stride),
                            "seed {seed}: context {context}"
                        );
                    } else {
                        assert_eq!(target, 0);
                    }
                }
            }
            rows += n;
        }
        assert_eq!(rows, w.n_windows());
        assert_eq!(batches, w.n_batches(), "seed {seed}: partial batch dropped");
        for s in 0..store.n_seq() {
            for e in store.range(s) {
                let expect = (e > store.offsets[s] && targets.selects(e)) as usize;
                assert_eq!(seen[e], expect, "seed {seed}: event {e} is a target {} times", seen[e]);
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
