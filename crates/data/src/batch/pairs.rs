//! (user, item, target) rows for matrix factorisation and NCF.
//!
//! Each selected event is one positive row: user = the sequence's id from
//! `seq_ids`, its item, and target = its rating when the store has ratings,
//! else its label when it has labels (events whose label is negative, i.e.
//! lectures without an answer, give no row), else 1.0. Each positive is
//! followed by `n_neg` negative rows (target 0.0) whose items are drawn
//! uniformly from `1..=n_items`, optionally rejecting items that occur
//! anywhere in the user's sequence (at most `max_tries` draws, then the last
//! draw is kept so that a user who has seen every item cannot stall the
//! epoch). A batch holds `batch_size` positives, so `batch_size × (1 +
//! n_neg)` rows; positives come in store order or in a seeded shuffle, and
//! negatives are drawn afresh every epoch. The last batch may be partial
//! and is kept.

use serde::{Deserialize, Serialize};

use super::epoch::EpochOrder;
use super::{check_positive, check_row_store, seq_of, Targets};
use crate::{Error, Result, SequenceStore};

/// Settings of [`Pairs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsConfig {
    /// Positives per batch.
    pub batch_size: usize,
    /// Negative rows per positive.
    pub n_neg: usize,
    /// Reject negatives that occur in the user's sequence.
    pub exclude_seen: bool,
    /// Most draws per negative when rejecting.
    pub max_tries: usize,
    /// Shuffle the positives (again at every [`Pairs::rewind`]).
    pub shuffle: bool,
    /// Seed of the shuffle and of the negatives.
    pub seed: u64,
}

impl Default for PairsConfig {
    fn default() -> Self {
        PairsConfig { batch_size: 1024, n_neg: 0, exclude_seen: false, max_tries: 20, shuffle: false, seed: 0 }
    }
}

/// A batch of rows: each positive followed by its negatives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairBatch {
    /// User (sequence id) of each row.
    pub users: Vec<u32>,
    /// Item of each row.
    pub items: Vec<u32>,
    /// Target of each row (0.0 on negatives).
    pub targets: Vec<f32>,
    /// Event index (in the store) of each positive, one per group of
    /// `1 + n_neg` rows.
    pub positive_event: Vec<usize>,
}

impl PairBatch {
    /// Number of rows (positives and negatives).
    pub fn rows(&self) -> usize {
        self.users.len()
    }

    fn clear(&mut self) {
        self.users.clear();
        self.items.clear();
        self.targets.clear();
        self.positive_event.clear();
    }
}

/// The distinct items of each sequence, sorted, in CSR layout.
#[derive(Debug, Clone, Default)]
struct SeenItems {
    offsets: Vec<usize>,
    items: Vec<u32>,
}

impl SeenItems {
    fn new(store: &SequenceStore) -> Self {
        let mut seen = SeenItems { offsets: vec![0], items: Vec::new() };
        for s in 0..store.n_seq() {
            let start = seen.items.len();
            seen.items.extend_from_slice(store.items_of(s));
            seen.items[start..].sort_unstable();
            let mut kept = start;
            for i in start..seen.items.len() {
                if i == start || seen.items[i] != seen.items[kept - 1] {
                    seen.items[kept] = seen.items[i];
                    kept += 1;
                }
            }
            seen.items.truncate(kept);
            seen.offsets.push(kept);
        }
        seen
    }

    fn contains(&self, s: usize, item: u32) -> bool {
        self.items[self.offsets[s]..self.offsets[s + 1]].binary_search(&item).is_ok()
    }
}

/// (user, item, target) rows with sampled negatives.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    store: &'a SequenceStore,
    config: PairsConfig,
    n_items: u64,
    /// Positive event indices in epoch order; its generator also draws the negatives.
    order: EpochOrder,
    seen: Option<SeenItems>,
    batch: PairBatch,
}

impl<'a> Pairs<'a> {
    /// Rows for the events of `store` chosen by `targets`; negatives are
    /// drawn from the `n_items` real items (ids `1..=n_items`).
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when the batch size is 0, negatives are
    /// asked for with `n_items` 0, the store's offsets are inconsistent or
    /// it has more than `u32::MAX` events, or the part mask does not cover
    /// every event.
    pub fn new(store: &'a SequenceStore, targets: Targets<'a>, n_items: usize, config: &PairsConfig) -> Result<Self> {
        let what = "pairs";
        check_positive(config.batch_size, "pair batch size")?;
        if config.n_neg > 0 && n_items == 0 {
            return Err(Error::Invalid(format!(
                "pairs: {} negatives per positive asked for over 0 items, expected at least 1 item",
                config.n_neg
            )));
        }
        check_row_store(store, &targets, what)?;
        let answered = |e: usize| match (&store.ratings, &store.labels) {
            (None, Some(labels)) => labels[e] >= 0,
            _ => true,
        };
        let order = (0..store.n_events()).filter(|&e| targets.selects(e) && answered(e)).map(|e| e as u32).collect();
        let seen = (config.exclude_seen && config.n_neg > 0).then(|| SeenItems::new(store));
        Ok(Pairs {
            store,
            config: config.clone(),
            n_items: n_items as u64,
            order: EpochOrder::new(order, config.batch_size, config.shuffle, config.seed),
            seen,
            batch: PairBatch::default(),
        })
    }

    /// Number of positives per epoch.
    pub fn n_positives(&self) -> usize {
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
    pub fn next_batch(&mut self) -> Option<&PairBatch> {
        let Pairs { store, config, n_items, order, seen, batch } = self;
        let (rows, rng) = order.next_rows_with_rng()?;
        batch.clear();
        for &e in rows {
            let e = e as usize;
            let s = seq_of(&store.offsets, e);
            let user = store.seq_ids[s];
            let target = match (&store.ratings, &store.labels) {
                (Some(ratings), _) => ratings[e],
                (None, Some(labels)) => f32::from(labels[e]),
                (None, None) => 1.0,
            };
            batch.users.push(user);
            batch.items.push(store.items[e]);
            batch.targets.push(target);
            batch.positive_event.push(e);
            for _ in 0..config.n_neg {
                let mut item = 1 + rng.below(*n_items) as u32;
                if let Some(seen) = seen {
                    for _ in 1..config.max_tries {
                        if !seen.contains(s, item) {
                            break;
                        }
                        item = 1 + rng.below(*n_items) as u32;
                    }
                }
                batch.users.push(user);
                batch.items.push(item);
                batch.targets.push(0.0);
            }
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

    fn config(batch_size: usize, n_neg: usize) -> PairsConfig {
        PairsConfig { batch_size, n_neg, ..Default::default() }
    }

    #[test]
    fn hand_computed_rows_in_order() {
        // Users 1: [1, 2, 3], 2: [4, 5]; ratings item / 2.
        let store = store_of(&[&[1, 2, 3], &[4, 5]]);
        let mut p = Pairs::new(&store, Targets::All, 5, &config(2, 0)).unwrap();
        let mut got = Vec::new();
        while let Some(b) = p.next_batch() {
            got.push((b.users.clone(), b.items.clone(), b.targets.clone(), b.positive_event.clone()));
        }
        let expect = vec![
            (vec![1, 1], vec![1, 2], vec![0.5, 1.0], vec![0, 1]),
            (vec![1, 2], vec![3, 4], vec![1.5, 2.0], vec![2, 3]),
            (vec![2], vec![5], vec![2.5], vec![4]),
        ];
        assert_eq!(got, expect);
    }

    #[test]
    fn labels_are_targets_and_unanswered_events_give_no_row() {
        let mut store = store_of(&[&[1, 2, 3], &[4]]);
        store.ratings = None;
        store.labels = Some(vec![1, -1, 0, 1]);
        let parts = [Part::Train, Part::Train, Part::Train, Part::Test];
        let mut p = Pairs::new(&store, Targets::of(&parts, &[Part::Train]), 5, &config(8, 0)).unwrap();
        let b = p.next_batch().unwrap();
        assert_eq!((b.items.clone(), b.targets.clone()), (vec![1, 3], vec![1.0, 0.0]));
        store.labels = None;
        let mut p = Pairs::new(&store, Targets::All, 5, &config(8, 0)).unwrap();
        assert_eq!(p.next_batch().unwrap().targets, vec![1.0; 4]);
    }

    #[test]
    fn negatives_follow_their_positive_and_avoid_seen_items() {
        let store = store_of(&[&[1, 2, 3, 2]]);
        let cfg = PairsConfig { exclude_seen: true, max_tries: 100, ..config(4, 2) };
        let mut p = Pairs::new(&store, Targets::All, 4, &cfg).unwrap();
        let b = p.next_batch().unwrap();
        assert_eq!(b.rows(), 12);
        assert_eq!(b.items, vec![1, 4, 4, 2, 4, 4, 3, 4, 4, 2, 4, 4]);
        assert_eq!(b.targets, [[1.0f32 / 2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.5, 0.0, 0.0], [1.0, 0.0, 0.0]].concat());
        // Without exclusion every item is drawn.
        let mut p = Pairs::new(&store, Targets::All, 4, &config(4, 50)).unwrap();
        let b = p.next_batch().unwrap();
        let mut drawn = [0usize; 5];
        b.items.iter().zip(&b.targets).filter(|(_, &t)| t == 0.0).for_each(|(&i, _)| drawn[i as usize] += 1);
        assert_eq!(drawn[0], 0);
        assert!(drawn[1..].iter().all(|&n| n > 20), "{drawn:?}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let store = store_of(&[&[1, 2]]);
        assert!(Pairs::new(&store, Targets::All, 3, &config(0, 0)).is_err());
        assert!(Pairs::new(&store, Targets::All, 0, &config(2, 1)).is_err());
        let parts = [Part::Train];
        assert!(Pairs::new(&store, Targets::of(&parts, &[Part::Train]), 3, &config(2, 0)).is_err());
    }

    fn check_random(seed: u64) {
        let n_items = 20;
        let mut rng = Rng::new(seed);
        let store = random_store(&mut rng, seed);
        let parts = random_parts(&mut rng, &store);
        let select = [Part::Train];
        let targets = if seed.is_multiple_of(2) { Targets::of(&parts, &select) } else { Targets::All };
        let n_neg = rng.below(3) as usize;
        let cfg = PairsConfig {
            batch_size: 1 + rng.below(10) as usize,
            n_neg,
            exclude_seen: seed % 4 < 2,
            max_tries: 200,
            shuffle: seed.is_multiple_of(3),
            seed,
        };
        let mut p = Pairs::new(&store, targets, n_items, &cfg).unwrap();
        let seen_items = SeenItems::new(&store);
        let mut seen = vec![0usize; store.n_events()];
        let (mut batches, mut positives) = (0, 0);
        while let Some(b) = p.next_batch() {
            batches += 1;
            let groups = b.positive_event.len();
            assert!(groups >= 1 && groups <= cfg.batch_size);
            assert_eq!(b.rows(), groups * (1 + n_neg));
            for (g, &e) in b.positive_event.iter().enumerate() {
                let s = seq_of(&store.offsets, e);
                let row = g * (1 + n_neg);
                assert_eq!((b.users[row], b.items[row]), (store.seq_ids[s], store.items[e]));
                let expect = match (&store.ratings, &store.labels) {
                    (Some(r), _) => r[e],
                    (None, Some(l)) => l[e] as f32,
                    (None, None) => 1.0,
                };
                assert_eq!(b.targets[row], expect);
                for k in row + 1..row + 1 + n_neg {
                    assert_eq!((b.users[k], b.targets[k]), (store.seq_ids[s], 0.0));
                    assert!((1..=n_items as u32).contains(&b.items[k]));
                    let distinct = seen_items.offsets[s + 1] - seen_items.offsets[s];
                    if cfg.exclude_seen && distinct <= 15 {
                        assert!(!seen_items.contains(s, b.items[k]), "seed {seed}: seen item drawn");
                    }
                }
                seen[e] += 1;
            }
            positives += groups;
        }
        assert_eq!(positives, p.n_positives());
        assert_eq!(batches, p.n_batches(), "seed {seed}: partial batch dropped");
        for e in 0..store.n_events() {
            let answered = store.ratings.is_some() || store.labels.as_ref().is_none_or(|l| l[e] >= 0);
            let expect = (targets.selects(e) && answered) as usize;
            assert_eq!(seen[e], expect, "seed {seed}: event {e} is a positive {} times", seen[e]);
        }
    }

    #[test]
    fn random_stores_keep_every_invariant() {
        for seed in 0..300 {
            check_random(seed);
        }
    }

    #[test]
    fn seen_items_are_sorted_and_distinct() {
        let store = store_of(&[&[3, 1, 3, 2], &[], &[5, 5]]);
        let seen = SeenItems::new(&store);
        assert_eq!((seen.offsets.clone(), seen.items.clone()), (vec![0, 3, 3, 4], vec![1, 2, 3, 5]));
        assert!(seen.contains(0, 2) && !seen.contains(0, 5) && !seen.contains(1, 1));
    }
}
