//! Unseen-item removal: validation and test events whose (kind, item) never
//! occurs among training events cannot be scored fairly, so [`super::apply`]
//! removes them; for session splits, sessions left with one event go too.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use super::Part;
use crate::store::SequenceStore;

/// Which (kind, item) pairs occur among training events.
#[derive(Debug)]
pub(super) struct TrainItems {
    n_ids: usize,
    seen: Vec<bool>,
}

impl TrainItems {
    pub(super) fn of(store: &SequenceStore, parts: &[Part]) -> Self {
        let n_ids = store.items.par_iter().copied().max().map_or(0, |m| m as usize + 1);
        let n_kinds = store.kinds.as_ref().and_then(|k| k.par_iter().copied().max()).map_or(1, |m| m as usize + 1);
        let n = store.n_events();
        let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1 << 16);
        let empty = || vec![false; n_ids * n_kinds];
        let seen = (0..n.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let mut seen = empty();
                for i in c * chunk..((c + 1) * chunk).min(n) {
                    if parts[i] == Part::Train {
                        seen[key(store, n_ids, i)] = true;
                    }
                }
                seen
            })
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, &y)| *x |= y);
                a
            })
            .unwrap_or_else(empty);
        TrainItems { n_ids, seen }
    }

    pub(super) fn contains(&self, store: &SequenceStore, i: usize) -> bool {
        self.seen[key(store, self.n_ids, i)]
    }
}

/// Index of event `i`'s (kind, item) pair in a table of `n_ids` items per kind.
fn key(store: &SequenceStore, n_ids: usize, i: usize) -> usize {
    let kind = store.kinds.as_ref().map_or(0, |k| k[i] as usize);
    kind * n_ids + store.items[i] as usize
}

/// Strikes validation and test sessions with exactly one kept event; returns
/// how many.
pub(super) fn strike_single_event_sessions(store: &SequenceStore, parts: &[Part], keep: &mut [bool]) -> usize {
    let struck = AtomicUsize::new(0);
    store.par_for_each_sequence_mut(keep, |s, k| {
        if parts[store.offsets[s]] != Part::Train && k.iter().filter(|&&x| x).count() == 1 {
            k.fill(false);
            struck.fetch_add(1, Ordering::Relaxed);
        }
    });
    struck.into_inner()
}
