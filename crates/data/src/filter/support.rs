//! Item support: how many kept item events each item has, counted once in
//! parallel and then kept up to date as the filters clear events, so the
//! fixed point of (support, length) costs one pass per round, not two.

use std::sync::atomic::{AtomicU32, Ordering};

use rayon::prelude::*;

use crate::store::SequenceStore;
use crate::table::KIND_ITEM;

/// Kept item events per item id, updated as events are cleared (relaxed
/// atomic decrements from the parallel per-sequence passes).
#[derive(Debug)]
pub(super) struct ItemSupport {
    counts: Vec<AtomicU32>,
}

impl ItemSupport {
    pub(super) fn new(store: &SequenceStore) -> Self {
        ItemSupport { counts: item_support(store).into_iter().map(AtomicU32::new).collect() }
    }

    /// Notes that event `i` was cleared.
    pub(super) fn clear(&self, store: &SequenceStore, i: usize) {
        if is_item_event(store, i) {
            self.counts[store.items[i] as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> Vec<u32> {
        self.counts.par_iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    pub(super) fn distinct(&self) -> usize {
        self.counts.par_iter().filter(|c| c.load(Ordering::Relaxed) > 0).count()
    }
}

pub(super) fn is_item_event(store: &SequenceStore, i: usize) -> bool {
    store.kinds.as_ref().is_none_or(|k| k[i] == KIND_ITEM)
}

/// Events per item id (index = id), counting only item events. `u32`
/// counts (saturating) keep the histogram small enough for the cache.
pub(super) fn item_support(store: &SequenceStore) -> Vec<u32> {
    let n = store.n_events();
    let n_ids = store.items.par_iter().copied().max().map_or(0, |m| m as usize + 1);
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1 << 16);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut h = vec![0u32; n_ids];
            for i in c * chunk..((c + 1) * chunk).min(n) {
                if is_item_event(store, i) {
                    let x = &mut h[store.items[i] as usize];
                    *x = x.saturating_add(1);
                }
            }
            h
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x = x.saturating_add(*y));
            a
        })
        .unwrap_or_else(|| vec![0u32; n_ids])
}
