//! Filters over a `SequenceStore`: minimum sequence length, minimum item
//! support (iterated to a fixed point), collapsing consecutive repeats, and
//! dropping sequences made of one repeated item.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::store::SequenceStore;
mod support;

use support::{is_item_event, item_support, ItemSupport};

/// Which filters to apply (all off by default). Recipe section `[filter]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Drop sequences shorter than this (0 or 1: keep all).
    pub min_seq_len: usize,
    /// Drop items seen fewer than this many times (0 or 1: keep all);
    /// re-applied with `min_seq_len` until nothing changes.
    pub min_item_support: usize,
    /// Replace runs of the same item in a sequence by their first event.
    pub collapse_repeats: bool,
    /// Drop sequences whose events all have the same item.
    pub drop_single_item_seqs: bool,
}

/// Events, sequences and distinct items of a store (items: ids of
/// [`KIND_ITEM`](crate::table::KIND_ITEM) events, or of all events when
/// there is no `kinds` column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    /// Number of events.
    pub events: usize,
    /// Number of sequences.
    pub sequences: usize,
    /// Number of distinct item ids.
    pub items: usize,
}

impl StoreCounts {
    /// The counts of `store`.
    pub fn of(store: &SequenceStore) -> Self {
        StoreCounts {
            events: store.n_events(),
            sequences: store.n_seq(),
            items: item_support(store).iter().filter(|&&c| c > 0).count(),
        }
    }
}

/// What one filter removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Events removed.
    pub events: usize,
    /// Sequences left empty and removed.
    pub sequences: usize,
}

/// What [`apply`] did, filter by filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilterReport {
    /// Counts before filtering.
    pub before: StoreCounts,
    /// Counts after filtering.
    pub after: StoreCounts,
    /// Rounds of (support, length) run to reach the fixed point (0 when both are off).
    pub iterations: usize,
    /// Removed by `collapse_repeats` (never whole sequences: a run keeps its first event).
    pub collapse_repeats: Removed,
    /// Removed by `drop_single_item_seqs`.
    pub single_item_seqs: Removed,
    /// Removed by `min_item_support`, over all rounds (sequences: those it emptied).
    pub item_support: Removed,
    /// Distinct items dropped by `min_item_support`.
    pub rare_items: usize,
    /// Removed by `min_seq_len`, over all rounds.
    pub seq_len: Removed,
}

/// Applies the filters of `cfg` in this order: collapse repeats → drop
/// single-item sequences → (item support, sequence length) repeated until
/// nothing changes.
///
/// Support counts only [`KIND_ITEM`](crate::table::KIND_ITEM) events (all
/// events without a `kinds` column) and drops only those: lectures are
/// never rare. Length counts all events of a sequence, lectures included.
/// Single-item sequences are not looked for again after support has run.
/// Every filter only clears a keep mask; the store is compacted once, at
/// the end.
pub fn apply(store: SequenceStore, cfg: &FilterConfig) -> (SequenceStore, FilterReport) {
    // Support is counted once, then kept up to date as events are cleared:
    // one pass over the events instead of one per round.
    let support = ItemSupport::new(&store);
    let mut report = FilterReport {
        before: StoreCounts { events: store.n_events(), sequences: store.n_seq(), items: support.distinct() },
        ..FilterReport::default()
    };
    let mut keep = vec![true; store.n_events()];
    if cfg.collapse_repeats {
        report.collapse_repeats = mark_repeats(&store, &mut keep, &support);
    }
    if cfg.drop_single_item_seqs {
        report.single_item_seqs = mark_single_item_seqs(&store, &mut keep, &support);
    }
    let support_on = cfg.min_item_support > 1;
    let length_on = cfg.min_seq_len > 1;
    let mut another_round = support_on || length_on;
    while another_round {
        report.iterations += 1;
        let rare = if support_on {
            let min = cfg.min_item_support as u32;
            let counts = support.snapshot();
            report.rare_items += counts.par_iter().filter(|&&c| c > 0 && c < min).count();
            // A table of bools, not the counts: smaller, so lookups stay in cache.
            counts.par_iter().map(|&c| c < min).collect()
        } else {
            Vec::new()
        };
        let round = Round {
            store: &store,
            support: &support,
            rare: &rare,
            min_len: if length_on { cfg.min_seq_len } else { 0 },
        };
        let removed = round.run(&mut keep);
        report.item_support.events += removed.support.events;
        report.item_support.sequences += removed.support.sequences;
        report.seq_len.events += removed.length.events;
        report.seq_len.sequences += removed.length.sequences;
        // Support removes items whole and leaves every other item's count as
        // it was, so a round in which length removes nothing is a fixed point.
        another_round = support_on && length_on && removed.length.events > 0;
    }
    let mut store = store;
    if keep.par_iter().any(|&k| !k) {
        store.retain_in_place(&keep);
    }
    report.after = StoreCounts { events: store.n_events(), sequences: store.n_seq(), items: support.distinct() };
    (store, report)
}

/// Whether event `i` and event `j` have the same item (and the same kind:
/// item and lecture ids come from different vocabularies).
fn same_item(store: &SequenceStore, i: usize, j: usize) -> bool {
    store.items[i] == store.items[j] && store.kinds.as_ref().is_none_or(|k| k[i] == k[j])
}

/// Sums of removals gathered from parallel per-sequence work.
#[derive(Debug, Default)]
struct RemovedCounter {
    events: AtomicUsize,
    sequences: AtomicUsize,
}

impl RemovedCounter {
    fn add(&self, events: usize, sequences: usize) {
        if events > 0 {
            self.events.fetch_add(events, Ordering::Relaxed);
        }
        if sequences > 0 {
            self.sequences.fetch_add(sequences, Ordering::Relaxed);
        }
    }

    fn into_removed(self) -> Removed {
        Removed { events: self.events.into_inner(), sequences: self.sequences.into_inner() }
    }
}

/// Clears every event that repeats the item of the event before it.
fn mark_repeats(store: &SequenceStore, keep: &mut [bool], support: &ItemSupport) -> Removed {
    let removed = RemovedCounter::default();
    store.par_for_each_sequence_mut(keep, |s, k| {
        let start = store.offsets[s];
        let mut n = 0;
        for (j, k) in k.iter_mut().enumerate().skip(1) {
            if *k && same_item(store, start + j, start + j - 1) {
                *k = false;
                support.clear(store, start + j);
                n += 1;
            }
        }
        removed.add(n, 0);
    });
    removed.into_removed()
}

/// Clears the sequences whose events all have the same item. Collapsing
/// keeps every run's first event, so this gives the same answer before or
/// after collapsing.
fn mark_single_item_seqs(store: &SequenceStore, keep: &mut [bool], support: &ItemSupport) -> Removed {
    let removed = RemovedCounter::default();
    store.par_for_each_sequence_mut(keep, |s, k| {
        let r = store.range(s);
        if r.clone().all(|i| same_item(store, i, r.start)) {
            let kept = clear_all(store, support, r.start, k);
            removed.add(kept, usize::from(kept > 0));
        }
    });
    removed.into_removed()
}

/// Clears the kept events of `k` (events `start..`); returns how many.
fn clear_all(store: &SequenceStore, support: &ItemSupport, start: usize, k: &mut [bool]) -> usize {
    let mut n = 0;
    for (j, k) in k.iter_mut().enumerate() {
        if *k {
            *k = false;
            support.clear(store, start + j);
            n += 1;
        }
    }
    n
}

/// Removals of one (support, length) round.
#[derive(Debug, Default)]
struct RoundRemovals {
    support: Removed,
    length: Removed,
}

/// One (support, length) round.
#[derive(Debug)]
struct Round<'a> {
    store: &'a SequenceStore,
    support: &'a ItemSupport,
    /// Per item id: rare at the start of the round (empty: support is off).
    rare: &'a [bool],
    /// Sequences with fewer kept events are cleared (0: length is off).
    min_len: usize,
}

impl Round<'_> {
    /// Clears kept item events of rare items, then every sequence left with
    /// fewer than `min_len` kept events.
    fn run(&self, keep: &mut [bool]) -> RoundRemovals {
        let store = self.store;
        let support = RemovedCounter::default();
        let length = RemovedCounter::default();
        store.par_for_each_sequence_mut(keep, |s, k| {
            let start = store.offsets[s];
            let before = k.iter().filter(|&&x| x).count();
            if before == 0 {
                return;
            }
            let mut kept = before;
            if !self.rare.is_empty() {
                for (j, k) in k.iter_mut().enumerate() {
                    let i = start + j;
                    if *k && is_item_event(store, i) && self.rare[store.items[i] as usize] {
                        *k = false;
                        self.support.clear(store, i);
                        kept -= 1;
                    }
                }
            }
            support.add(before - kept, usize::from(kept == 0));
            if kept > 0 && kept < self.min_len {
                clear_all(store, self.support, start, k);
                length.add(kept, 1);
            }
        });
        RoundRemovals { support: support.into_removed(), length: length.into_removed() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::Events;
    use crate::table::{KIND_ITEM, KIND_LECTURE};

    /// A store with one sequence per slice of items, times 0, 1, 2, ...
    fn store(seqs: &[&[u32]]) -> SequenceStore {
        let mut e = Events::default();
        for (s, items) in seqs.iter().enumerate() {
            for (t, &it) in items.iter().enumerate() {
                e.seq.push(s as u32 + 1);
                e.items.push(it);
                e.times.push(t as i64);
            }
        }
        SequenceStore::from_events(e).unwrap()
    }

    fn sequences(s: &SequenceStore) -> Vec<Vec<u32>> {
        (0..s.n_seq()).map(|q| s.items_of(q).to_vec()).collect()
    }

    #[test]
    fn nothing_configured_changes_nothing() {
        let s = store(&[&[1, 1, 2], &[3]]);
        let (out, r) = apply(s.clone(), &FilterConfig::default());
        assert_eq!(out, s);
        assert_eq!(r.iterations, 0);
        let counts = StoreCounts { events: 4, sequences: 2, items: 3 };
        assert_eq!((r.before, r.after), (counts, counts));
    }

    #[test]
    fn collapse_keeps_the_first_event_of_each_run() {
        let s = store(&[&[1, 1, 2, 2, 2, 1], &[3, 3]]);
        let cfg = FilterConfig { collapse_repeats: true, ..FilterConfig::default() };
        let (out, r) = apply(s, &cfg);
        assert_eq!(sequences(&out), vec![vec![1, 2, 1], vec![3]]);
        assert_eq!(out.times, vec![0, 2, 5, 0]);
        assert_eq!(r.collapse_repeats, Removed { events: 4, sequences: 0 });
    }

    #[test]
    fn collapse_tells_lectures_from_items_with_the_same_id() {
        let mut s = store(&[&[5, 5, 5]]);
        s.kinds = Some(vec![KIND_ITEM, KIND_LECTURE, KIND_LECTURE]);
        let cfg = FilterConfig { collapse_repeats: true, ..FilterConfig::default() };
        let (out, _) = apply(s, &cfg);
        assert_eq!(out.kinds, Some(vec![KIND_ITEM, KIND_LECTURE]));
    }

    #[test]
    fn single_item_sequences_are_dropped() {
        let s = store(&[&[1, 1], &[1, 2], &[3], &[4, 4, 4]]);
        let cfg = FilterConfig { drop_single_item_seqs: true, ..FilterConfig::default() };
        let (out, r) = apply(s, &cfg);
        assert_eq!(sequences(&out), vec![vec![1, 2]]);
        assert_eq!(out.seq_ids, vec![2]);
        assert_eq!(r.single_item_seqs, Removed { events: 6, sequences: 3 });
    }

    #[test]
    fn support_counts_and_drops_only_item_events() {
        // Item 2 occurs once as an item (rare) and once as a lecture (kept,
        // and not counted toward item 2's support); item 4 occurs once.
        let mut s = store(&[&[1, 2, 2, 3], &[1, 3, 4]]);
        s.kinds = Some(vec![KIND_ITEM, KIND_ITEM, KIND_LECTURE, KIND_ITEM, KIND_ITEM, KIND_ITEM, KIND_ITEM]);
        let cfg = FilterConfig { min_item_support: 2, ..FilterConfig::default() };
        let (out, r) = apply(s, &cfg);
        assert_eq!(sequences(&out), vec![vec![1, 2, 3], vec![1, 3]]);
        assert_eq!(out.kinds, Some(vec![KIND_ITEM, KIND_LECTURE, KIND_ITEM, KIND_ITEM, KIND_ITEM]));
        assert_eq!(r.item_support, Removed { events: 2, sequences: 0 });
        assert_eq!(r.rare_items, 2);
        assert_eq!(r.iterations, 1);
        assert_eq!(r.before.items, 4);
        assert_eq!(r.after.items, 2);
    }

    #[test]
    fn length_counts_all_events() {
        let mut s = store(&[&[1, 2], &[1], &[3, 4, 5]]);
        s.kinds = Some(vec![KIND_ITEM, KIND_LECTURE, KIND_ITEM, KIND_ITEM, KIND_ITEM, KIND_ITEM]);
        let cfg = FilterConfig { min_seq_len: 2, ..FilterConfig::default() };
        let (out, r) = apply(s, &cfg);
        assert_eq!(sequences(&out), vec![vec![1, 2], vec![3, 4, 5]]);
        assert_eq!(r.seq_len, Removed { events: 1, sequences: 1 });
        assert_eq!(r.iterations, 1);
    }

    #[test]
    fn support_and_length_iterate_to_a_fixed_point() {
        // Round 1: item 1 is rare; [1, 2] becomes [2], too short, so item 2
        // (in [2, 3]) becomes rare. Round 2: [2, 3] becomes [3], too short, so
        // item 3 becomes rare. Round 3: [3, 5, 5] becomes [5, 5]; length
        // removes nothing: done.
        let s = store(&[&[1, 2], &[2, 3], &[3, 5, 5], &[5, 6, 6]]);
        let cfg = FilterConfig { min_item_support: 2, min_seq_len: 2, ..FilterConfig::default() };
        let (out, r) = apply(s, &cfg);
        assert_eq!(sequences(&out), vec![vec![5, 5], vec![5, 6, 6]]);
        assert_eq!(out.seq_ids, vec![3, 4]);
        assert_eq!(r.iterations, 3);
        assert_eq!(r.item_support, Removed { events: 3, sequences: 0 });
        assert_eq!(r.rare_items, 3);
        assert_eq!(r.seq_len, Removed { events: 2, sequences: 2 });
        assert_eq!(r.after, StoreCounts { events: 5, sequences: 2, items: 2 });
    }

    #[test]
    fn collapse_runs_before_support() {
        // Item 1 has two events, but one run: after collapsing, support 1 < 2.
        let s = store(&[&[1, 1, 2], &[2, 3, 3]]);
        let cfg = FilterConfig {
            min_item_support: 2,
            collapse_repeats: true,
            drop_single_item_seqs: true,
            ..FilterConfig::default()
        };
        let (out, r) = apply(s, &cfg);
        assert_eq!(sequences(&out), vec![vec![2], vec![2]]);
        assert_eq!(r.collapse_repeats.events, 2);
        assert_eq!(r.single_item_seqs.events, 0);
        assert_eq!(r.item_support.events, 2);
    }

    #[test]
    fn random_stores_end_at_a_fixed_point() {
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let n_seq = 1 + rng.below(60) as usize;
            let seqs: Vec<Vec<u32>> = (0..n_seq)
                .map(|_| {
                    let len = 1 + rng.below(8) as usize;
                    (0..len).map(|_| 1 + rng.below(25) as u32).collect()
                })
                .collect();
            let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            let cfg = FilterConfig {
                min_item_support: 1 + rng.below(5) as usize,
                min_seq_len: 1 + rng.below(5) as usize,
                collapse_repeats: rng.bernoulli(0.5),
                drop_single_item_seqs: rng.bernoulli(0.5),
            };
            let (out, r) = apply(store(&refs), &cfg);
            out.validate().unwrap();
            let support = item_support(&out);
            assert!(out.items.iter().all(|&i| support[i as usize] >= cfg.min_item_support as u32));
            assert!((0..out.n_seq()).all(|q| out.len_of(q) >= cfg.min_seq_len));
            assert_eq!(r.after, StoreCounts::of(&out));
            let removed =
                r.collapse_repeats.events + r.single_item_seqs.events + r.item_support.events + r.seq_len.events;
            assert_eq!(r.before.events - r.after.events, removed);
            // Every kept sequence is a subsequence of its input sequence.
            for q in 0..out.n_seq() {
                let input = &seqs[out.seq_ids[q] as usize - 1];
                let mut it = input.iter();
                assert!(out.items_of(q).iter().all(|x| it.any(|y| y == x)));
            }
            // Support and length alone change nothing more.
            let again = FilterConfig { collapse_repeats: false, drop_single_item_seqs: false, ..cfg };
            let (out2, r2) = apply(out.clone(), &again);
            assert_eq!(out2, out, "seed {seed}");
            assert!(r2.iterations <= 1);
        }
    }
}
