//! Filters over a `SequenceStore`: minimum sequence length, minimum item
//! support (iterated to a fixed point), collapsing consecutive repeats, and
//! dropping sequences made of one repeated item.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::store::SequenceStore;
use crate::table::KIND_ITEM;

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
/// [`KIND_ITEM`] events, or of all events when there is no `kinds` column).
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
/// Support counts only [`KIND_ITEM`] events (all events without a `kinds`
/// column) and drops only those: lectures are never rare. Length counts all
/// events of a sequence, lectures included. Single-item sequences are not
/// looked for again after support has run.
pub fn apply(store: SequenceStore, cfg: &FilterConfig) -> (SequenceStore, FilterReport) {
    let mut report = FilterReport { before: StoreCounts::of(&store), ..FilterReport::default() };
    let mut store = store;
    if cfg.collapse_repeats {
        let keep = repeat_mask(&store);
        store = retain_counted(store, &keep, &mut report.collapse_repeats);
    }
    if cfg.drop_single_item_seqs {
        let keep = single_item_mask(&store);
        store = retain_counted(store, &keep, &mut report.single_item_seqs);
    }
    let support_on = cfg.min_item_support > 1;
    let length_on = cfg.min_seq_len > 1;
    let mut another_round = support_on || length_on;
    while another_round {
        report.iterations += 1;
        let mut keep = vec![true; store.n_events()];
        if support_on {
            let support = item_support(&store);
            let min = cfg.min_item_support as u64;
            report.rare_items += support.iter().filter(|&&c| c > 0 && c < min).count();
            let rare = |i: usize| is_item_event(&store, i) && support[store.items[i] as usize] < min;
            keep.par_iter_mut().enumerate().for_each(|(i, k)| *k = !rare(i));
        }
        let removed = strike_short_sequences(&store, &mut keep, if length_on { cfg.min_seq_len } else { 0 });
        report.item_support.events += removed.support.events;
        report.item_support.sequences += removed.support.sequences;
        report.seq_len.events += removed.length.events;
        report.seq_len.sequences += removed.length.sequences;
        if removed.support.events + removed.length.events > 0 {
            store = store.retain(&keep);
        }
        // Support removes items whole and leaves every other item's count as
        // it was, so a round in which length removes nothing is a fixed point.
        another_round = support_on && length_on && removed.length.events > 0;
    }
    report.after = StoreCounts::of(&store);
    (store, report)
}

fn is_item_event(store: &SequenceStore, i: usize) -> bool {
    store.kinds.as_ref().is_none_or(|k| k[i] == KIND_ITEM)
}

/// Events per item id (index = id), counting only item events.
fn item_support(store: &SequenceStore) -> Vec<u64> {
    let n = store.n_events();
    let n_ids = store.items.par_iter().copied().max().map_or(0, |m| m as usize + 1);
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1 << 16);
    (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut h = vec![0u64; n_ids];
            for i in c * chunk..((c + 1) * chunk).min(n) {
                if is_item_event(store, i) {
                    h[store.items[i] as usize] += 1;
                }
            }
            h
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_else(|| vec![0u64; n_ids])
}

/// Whether event `i` and event `j` have the same item (and the same kind:
/// item and lecture ids come from different vocabularies).
fn same_item(store: &SequenceStore, i: usize, j: usize) -> bool {
    store.items[i] == store.items[j] && store.kinds.as_ref().is_none_or(|k| k[i] == k[j])
}

/// Keeps the first event of each run of the same item.
fn repeat_mask(store: &SequenceStore) -> Vec<bool> {
    let mut keep = vec![true; store.n_events()];
    store.par_for_each_sequence_mut(&mut keep, |s, k| {
        let start = store.offsets[s];
        for (j, k) in k.iter_mut().enumerate().skip(1) {
            *k = !same_item(store, start + j, start + j - 1);
        }
    });
    keep
}

/// Drops the sequences whose events all have the same item.
fn single_item_mask(store: &SequenceStore) -> Vec<bool> {
    let mut keep = vec![true; store.n_events()];
    store.par_for_each_sequence_mut(&mut keep, |s, k| {
        let r = store.range(s);
        if r.clone().all(|i| same_item(store, i, r.start)) {
            k.fill(false);
        }
    });
    keep
}

/// Removals of one (support, length) round.
#[derive(Debug, Default)]
struct RoundRemovals {
    support: Removed,
    length: Removed,
}

/// Given `keep` after the support pass, also strikes the sequences with
/// fewer than `min_len` kept events, and tells what each pass removed.
fn strike_short_sequences(store: &SequenceStore, keep: &mut [bool], min_len: usize) -> RoundRemovals {
    let support_events = AtomicUsize::new(0);
    let support_seqs = AtomicUsize::new(0);
    let length_events = AtomicUsize::new(0);
    let length_seqs = AtomicUsize::new(0);
    store.par_for_each_sequence_mut(keep, |_, k| {
        let kept = k.iter().filter(|&&x| x).count();
        support_events.fetch_add(k.len() - kept, Ordering::Relaxed);
        if kept == 0 {
            support_seqs.fetch_add(1, Ordering::Relaxed);
        } else if kept < min_len {
            length_events.fetch_add(kept, Ordering::Relaxed);
            length_seqs.fetch_add(1, Ordering::Relaxed);
            k.fill(false);
        }
    });
    RoundRemovals {
        support: Removed { events: support_events.into_inner(), sequences: support_seqs.into_inner() },
        length: Removed { events: length_events.into_inner(), sequences: length_seqs.into_inner() },
    }
}

/// `store.retain(keep)`, adding what it removed to `removed`.
fn retain_counted(store: SequenceStore, keep: &[bool], removed: &mut Removed) -> SequenceStore {
    let kept = keep.iter().filter(|&&k| k).count();
    if kept == keep.len() {
        return store;
    }
    let out = store.retain(keep);
    removed.events += store.n_events() - kept;
    removed.sequences += store.n_seq() - out.n_seq();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::Events;
    use crate::table::KIND_LECTURE;

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
            assert!(out.items.iter().all(|&i| support[i as usize] >= cfg.min_item_support as u64));
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
