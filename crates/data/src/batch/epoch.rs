//! The per-epoch row order shared by the row batchers ([`super::Windows`],
//! [`super::ShiftedWindows`], [`super::Pairs`]): a list of row ids (event
//! indices as `u32`), reshuffled with a seeded generator at every rewind when
//! shuffling, handed out `batch_size` rows at a time; the last batch may be
//! partial and is kept.
//!
//! The generator is the batcher's only one: a batcher that also draws per
//! row (negatives) takes it from [`EpochOrder::next_rows_with_rng`], so the
//! shuffle and the draws stay one seeded stream.

use crate::rng::Rng;

/// Row ids in epoch order and the cursor of the current epoch.
#[derive(Debug, Clone)]
pub(crate) struct EpochOrder {
    rows: Vec<u32>,
    next: usize,
    batch_size: usize,
    shuffle: bool,
    rng: Rng,
}

impl EpochOrder {
    /// An order over `rows` (in the given order unless `shuffle`), already
    /// rewound to the start of the first epoch; `batch_size` must be positive.
    pub(crate) fn new(rows: Vec<u32>, batch_size: usize, shuffle: bool, seed: u64) -> Self {
        let mut order = EpochOrder { rows, next: 0, batch_size, shuffle, rng: Rng::new(seed) };
        order.rewind();
        order
    }

    /// Number of rows per epoch.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Number of batches per epoch, the partial last one included.
    pub(crate) fn n_batches(&self) -> usize {
        self.rows.len().div_ceil(self.batch_size)
    }

    /// Starts a new epoch (with a new shuffle when shuffling).
    pub(crate) fn rewind(&mut self) {
        self.next = 0;
        if self.shuffle {
            self.rng.shuffle(&mut self.rows);
        }
    }

    /// The next batch's rows, or `None` at the end of the epoch.
    pub(crate) fn next_rows(&mut self) -> Option<&[u32]> {
        self.next_rows_with_rng().map(|(rows, _)| rows)
    }

    /// The next batch's rows with the generator, for draws made per row.
    pub(crate) fn next_rows_with_rng(&mut self) -> Option<(&[u32], &mut Rng)> {
        let end = self.rows.len().min(self.next + self.batch_size);
        if self.next >= end {
            return None;
        }
        let start = std::mem::replace(&mut self.next, end);
        Some((&self.rows[start..end], &mut self.rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch of one epoch, concatenated, with the batch sizes.
    fn epoch(order: &mut EpochOrder) -> (Vec<u32>, Vec<usize>) {
        let (mut rows, mut sizes) = (Vec::new(), Vec::new());
        while let Some(batch) = order.next_rows() {
            rows.extend_from_slice(batch);
            sizes.push(batch.len());
        }
        order.rewind();
        (rows, sizes)
    }

    #[test]
    fn unshuffled_order_keeps_rows_and_the_partial_last_batch() {
        let mut order = EpochOrder::new(vec![7, 3, 9, 1, 4], 2, false, 0);
        assert_eq!((order.len(), order.n_batches()), (5, 3));
        assert_eq!(epoch(&mut order), (vec![7, 3, 9, 1, 4], vec![2, 2, 1]));
        assert_eq!(epoch(&mut order), (vec![7, 3, 9, 1, 4], vec![2, 2, 1]));
        let mut empty = EpochOrder::new(Vec::new(), 3, true, 0);
        assert_eq!((empty.len(), empty.n_batches()), (0, 0));
        assert!(empty.next_rows().is_none());
    }

    #[test]
    fn shuffles_are_permutations_that_change_by_epoch_and_repeat_by_seed() {
        let rows: Vec<u32> = (0..50).collect();
        let mut order = EpochOrder::new(rows.clone(), 7, true, 11);
        let (first, sizes) = epoch(&mut order);
        assert_eq!(sizes, vec![7, 7, 7, 7, 7, 7, 7, 1]);
        let (second, _) = epoch(&mut order);
        for shuffled in [&first, &second] {
            let mut sorted = shuffled.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, rows);
        }
        assert_ne!(first, rows, "the first epoch is shuffled");
        assert_ne!(first, second, "every epoch is reshuffled");
        let mut again = EpochOrder::new(rows.clone(), 7, true, 11);
        assert_eq!((epoch(&mut again).0, epoch(&mut again).0), (first.clone(), second));
        let mut other = EpochOrder::new(rows, 7, true, 12);
        assert_ne!(epoch(&mut other).0, first, "another seed, another order");
    }

    #[test]
    fn the_generator_continues_after_the_shuffle() {
        let mut order = EpochOrder::new((0..10).collect(), 4, true, 5);
        let mut reference = Rng::new(5);
        let mut shuffled: Vec<u32> = (0..10).collect();
        reference.shuffle(&mut shuffled);
        let (rows, rng) = order.next_rows_with_rng().unwrap();
        assert_eq!(rows, &shuffled[..4]);
        assert_eq!(rng.below(1000), reference.below(1000));
    }
}
