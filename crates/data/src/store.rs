//! `SequenceStore`: every sequence's events in CSR layout, sorted by time
//! within a sequence (stable on input order), with aligned columns.

use std::ops::Range;

use rayon::prelude::*;

use crate::{Error, Result};

mod group;

/// Sequences in CSR layout: `offsets[s]..offsets[s + 1]` index the events of
/// sequence `s` in every aligned column.
///
/// Invariants (checked by [`SequenceStore::validate`]): `offsets` starts at 0,
/// is non-decreasing and ends at `n_events`; every present column has
/// `n_events` entries; times are non-decreasing inside each sequence; item
/// ids are never 0 (0 is the padding id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceStore {
    /// CSR offsets, `n_seq + 1` entries.
    pub offsets: Vec<usize>,
    /// Dense id (in the `seq` vocabulary) of each stored sequence.
    pub seq_ids: Vec<u32>,
    /// Dense item id of each event (lectures: id in the lecture vocabulary).
    pub items: Vec<u32>,
    /// Event time in milliseconds.
    pub times: Vec<i64>,
    /// Explicit ratings.
    pub ratings: Option<Vec<f32>>,
    /// Answer correctness: 1, 0, or -1 where there is no answer (lectures).
    pub labels: Option<Vec<i8>>,
    /// Event kind ([`crate::table::KIND_ITEM`] or [`crate::table::KIND_LECTURE`]).
    pub kinds: Option<Vec<u8>>,
    /// Bundle / task-container id (raw, meaningful within a sequence).
    pub groups: Option<Vec<i64>>,
    /// Prior question elapsed time in ms, NaN where missing.
    pub elapsed: Option<Vec<f32>>,
    /// Prior question had explanation: 1, 0, or -1 where missing.
    pub explained: Option<Vec<i8>>,
    /// Normalised time gap to the previous event of the sequence
    /// (`log1p` seconds, z-scored on the training split); 0 on first events.
    pub gaps: Option<Vec<f32>>,
}

impl SequenceStore {
    /// Number of sequences.
    pub fn n_seq(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Number of events over all sequences.
    pub fn n_events(&self) -> usize {
        self.items.len()
    }

    /// Event index range of sequence `s`.
    pub fn range(&self, s: usize) -> Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// Length of sequence `s`.
    pub fn len_of(&self, s: usize) -> usize {
        self.offsets[s + 1] - self.offsets[s]
    }

    /// Items of sequence `s`.
    pub fn items_of(&self, s: usize) -> &[u32] {
        &self.items[self.range(s)]
    }

    /// Times of sequence `s`.
    pub fn times_of(&self, s: usize) -> &[i64] {
        &self.times[self.range(s)]
    }

    /// Checks the invariants listed on the type.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first broken invariant.
    pub fn validate(&self) -> Result<()> {
        let n = self.n_events();
        let bad = |m: String| Err(Error::Invalid(format!("sequence store: {m}")));
        if self.offsets.first() != Some(&0) {
            return bad("offsets must start at 0".into());
        }
        if *self.offsets.last().unwrap_or(&0) != n {
            return bad(format!("last offset {:?} != {n} events", self.offsets.last()));
        }
        if self.offsets.windows(2).any(|w| w[0] > w[1]) {
            return bad("offsets decrease".into());
        }
        if self.seq_ids.len() != self.n_seq() {
            return bad(format!("{} seq ids for {} sequences", self.seq_ids.len(), self.n_seq()));
        }
        let lens = [
            ("times", Some(self.times.len())),
            ("ratings", self.ratings.as_ref().map(Vec::len)),
            ("labels", self.labels.as_ref().map(Vec::len)),
            ("kinds", self.kinds.as_ref().map(Vec::len)),
            ("groups", self.groups.as_ref().map(Vec::len)),
            ("elapsed", self.elapsed.as_ref().map(Vec::len)),
            ("explained", self.explained.as_ref().map(Vec::len)),
            ("gaps", self.gaps.as_ref().map(Vec::len)),
        ];
        for (name, len) in lens {
            if let Some(len) = len {
                if len != n {
                    return bad(format!("column {name} has {len} entries, expected {n}"));
                }
            }
        }
        if let Some(i) = self.items.iter().position(|&x| x == 0) {
            return bad(format!("event {i} has item id 0 (the padding id)"));
        }
        for s in 0..self.n_seq() {
            if self.times_of(s).windows(2).any(|w| w[0] > w[1]) {
                return bad(format!("sequence {s} is not sorted by time"));
            }
        }
        Ok(())
    }
}

/// Events in input order, already encoded, before grouping: the input of
/// [`SequenceStore::from_events`]. Optional columns as on [`SequenceStore`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Events {
    /// Dense sequence id of each event (1-based; 0 never appears).
    pub seq: Vec<u32>,
    /// Dense item id of each event.
    pub items: Vec<u32>,
    /// Event time in milliseconds.
    pub times: Vec<i64>,
    /// Explicit ratings.
    pub ratings: Option<Vec<f32>>,
    /// Answer correctness.
    pub labels: Option<Vec<i8>>,
    /// Event kind.
    pub kinds: Option<Vec<u8>>,
    /// Bundle id.
    pub groups: Option<Vec<i64>>,
    /// Prior elapsed time.
    pub elapsed: Option<Vec<f32>>,
    /// Prior explanation flag.
    pub explained: Option<Vec<i8>>,
}

/// Below this many events one thread groups faster than several.
const PARALLEL_MIN_EVENTS: usize = 1 << 16;

impl SequenceStore {
    /// Groups events by sequence id (counting sort on `seq`, parallel with
    /// rayon, stable on input order), then sorts each sequence by time
    /// (stable). Sequences appear in ascending seq id; ids with no events are
    /// absent.
    ///
    /// Two cache-friendly passes (see the `group` module). Each input
    /// column's buffer becomes the output column, so memory beyond the input
    /// is one `u32` permutation and two bucket-order buffers (32- and 64-bit)
    /// that all columns share: 16 bytes per event.
    ///
    /// # Errors
    /// [`Error::Invalid`] when a column's length differs from `seq`'s, when a
    /// sequence or item id is 0 (the padding id), or when there are more than
    /// `u32::MAX` events.
    pub fn from_events(events: Events) -> Result<SequenceStore> {
        group::group_events(events)
    }

    /// Keeps the events where `keep[i]` is true (sequences left empty
    /// disappear); all columns follow. Derived columns (`gaps`) are carried
    /// as they are, so recompute them after removing events.
    ///
    /// # Panics
    /// If `keep.len() != self.n_events()` (a caller bug, not bad input).
    pub fn retain(&self, keep: &[bool]) -> SequenceStore {
        let (offsets, seq_ids) = self.kept_shape(keep);
        let kept = kept_per_chunk(keep);
        SequenceStore {
            offsets,
            seq_ids,
            items: compact(&self.items, keep, &kept),
            times: compact(&self.times, keep, &kept),
            ratings: self.ratings.as_ref().map(|c| compact(c, keep, &kept)),
            labels: self.labels.as_ref().map(|c| compact(c, keep, &kept)),
            kinds: self.kinds.as_ref().map(|c| compact(c, keep, &kept)),
            groups: self.groups.as_ref().map(|c| compact(c, keep, &kept)),
            elapsed: self.elapsed.as_ref().map(|c| compact(c, keep, &kept)),
            explained: self.explained.as_ref().map(|c| compact(c, keep, &kept)),
            gaps: self.gaps.as_ref().map(|c| compact(c, keep, &kept)),
        }
    }

    /// [`retain`](Self::retain) in place: no second copy of the columns,
    /// for stores that are consumed anyway (filters, splits).
    ///
    /// # Panics
    /// If `keep.len() != self.n_events()` (a caller bug, not bad input).
    pub fn retain_in_place(&mut self, keep: &[bool]) {
        let (offsets, seq_ids) = self.kept_shape(keep);
        self.offsets = offsets;
        self.seq_ids = seq_ids;
        let kept = kept_per_chunk(keep);
        compact_in_place(&mut self.items, keep, &kept);
        compact_in_place(&mut self.times, keep, &kept);
        for c in [&mut self.ratings, &mut self.elapsed, &mut self.gaps].into_iter().flatten() {
            compact_in_place(c, keep, &kept);
        }
        for c in [&mut self.labels, &mut self.explained].into_iter().flatten() {
            compact_in_place(c, keep, &kept);
        }
        if let Some(c) = &mut self.kinds {
            compact_in_place(c, keep, &kept);
        }
        if let Some(c) = &mut self.groups {
            compact_in_place(c, keep, &kept);
        }
    }

    /// Offsets and sequence ids after keeping the events where `keep` is true.
    fn kept_shape(&self, keep: &[bool]) -> (Vec<usize>, Vec<u32>) {
        assert_eq!(
            keep.len(),
            self.n_events(),
            "retain: keep mask has {} entries for {} events",
            keep.len(),
            self.n_events()
        );
        let kept_per_seq: Vec<usize> =
            (0..self.n_seq()).into_par_iter().map(|s| keep[self.range(s)].iter().filter(|&&k| k).count()).collect();
        let mut offsets = Vec::with_capacity(self.n_seq() + 1);
        let mut seq_ids = Vec::new();
        offsets.push(0);
        let mut end = 0;
        for (s, &k) in kept_per_seq.iter().enumerate() {
            if k > 0 {
                end += k;
                offsets.push(end);
                seq_ids.push(self.seq_ids[s]);
            }
        }
        (offsets, seq_ids)
    }
}

impl SequenceStore {
    /// Calls `f(s, &mut out[range(s)])` for every sequence `s`, in parallel
    /// over chunks of consecutive sequences: per-sequence work on an
    /// event-aligned column (a mask, a part, a feature) without any
    /// per-sequence allocation.
    ///
    /// # Panics
    /// If `out.len() != self.n_events()` (a caller bug).
    pub fn par_for_each_sequence_mut<T, F>(&self, out: &mut [T], f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync,
    {
        let n = self.n_events();
        assert_eq!(out.len(), n, "per-sequence column has {} entries for {n} events", out.len());
        let n_seq = self.n_seq();
        if n_seq == 0 {
            return;
        }
        // A few chunks per thread balance the load when sequence lengths vary.
        let n_chunks = if n < PARALLEL_MIN_EVENTS { 1 } else { (4 * rayon::current_num_threads()).min(n_seq) };
        let mut bounds = vec![0usize];
        for c in 1..n_chunks {
            let target = n * c / n_chunks;
            let b = self.offsets[..n_seq].partition_point(|&o| o < target);
            bounds.push(b.max(*bounds.last().unwrap_or(&0)));
        }
        bounds.push(n_seq);
        let ranges: Vec<Range<usize>> = bounds.windows(2).map(|w| self.offsets[w[0]]..self.offsets[w[1]]).collect();
        let slices = disjoint_slices(out, &ranges);
        slices.into_par_iter().enumerate().for_each(|(c, slice)| {
            let base = self.offsets[bounds[c]];
            for s in bounds[c]..bounds[c + 1] {
                f(s, &mut slice[self.offsets[s] - base..self.offsets[s + 1] - base]);
            }
        });
    }
}

/// Mutable slices of `xs` at ascending, non-overlapping `ranges`.
fn disjoint_slices<'a, T>(mut xs: &'a mut [T], ranges: &[Range<usize>]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut at = 0;
    for r in ranges {
        let (_, rest) = xs.split_at_mut(r.start - at);
        let (slice, rest) = rest.split_at_mut(r.len());
        out.push(slice);
        xs = rest;
        at = r.end;
    }
    out
}

/// Events per chunk when compacting columns.
const COMPACT_CHUNK: usize = 1 << 16;

/// How many events `keep` keeps in each chunk of [`COMPACT_CHUNK`].
pub(crate) fn kept_per_chunk(keep: &[bool]) -> Vec<usize> {
    keep.par_chunks(COMPACT_CHUNK).map(|k| k.iter().filter(|&&x| x).count()).collect()
}

/// The entries of `col` where `keep` is true, in order, in parallel: each
/// chunk knows from `kept` (of [`kept_per_chunk`]) where its output starts.
fn compact<T: Copy + Default + Send + Sync>(col: &[T], keep: &[bool], kept: &[usize]) -> Vec<T> {
    let mut out = vec![T::default(); kept.iter().sum()];
    let mut slices = Vec::with_capacity(kept.len());
    let mut rest = &mut out[..];
    for &k in kept {
        let (slice, tail) = rest.split_at_mut(k);
        slices.push(slice);
        rest = tail;
    }
    slices.into_par_iter().zip(col.par_chunks(COMPACT_CHUNK)).zip(keep.par_chunks(COMPACT_CHUNK)).for_each(
        |((out, col), keep)| {
            let kept_values = col.iter().zip(keep).filter(|(_, &k)| k).map(|(&v, _)| v);
            out.iter_mut().zip(kept_values).for_each(|(o, v)| *o = v);
        },
    );
    out
}

/// Keeps the entries of `col` where `keep` is true, in order, in place:
/// every chunk compacts itself in parallel, then the chunks' kept prefixes
/// slide down in one sequential sweep of `copy_within` (a `memmove`).
pub(crate) fn compact_in_place<T: Copy + Send + Sync>(col: &mut Vec<T>, keep: &[bool], kept: &[usize]) {
    col.par_chunks_mut(COMPACT_CHUNK).zip(keep.par_chunks(COMPACT_CHUNK)).for_each(|(c, k)| {
        let mut w = 0;
        for r in 0..c.len() {
            if k[r] {
                c[w] = c[r];
                w += 1;
            }
        }
    });
    let mut end = 0;
    for (c, &k) in kept.iter().enumerate() {
        let start = c * COMPACT_CHUNK;
        col.copy_within(start..start + k, end);
        end += k;
    }
    col.truncate(end);
    col.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn events(seq: &[u32], items: &[u32], times: &[i64]) -> Events {
        Events { seq: seq.to_vec(), items: items.to_vec(), times: times.to_vec(), ..Events::default() }
    }

    #[test]
    fn groups_by_id_and_sorts_by_time_keeping_ties_in_input_order() {
        let mut e = events(&[3, 1, 3, 1, 3, 1], &[10, 11, 12, 13, 14, 15], &[5, 2, 5, 1, 3, 2]);
        e.ratings = Some(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let s = SequenceStore::from_events(e).unwrap();
        // seq 1: inputs 1 (t2), 3 (t1), 5 (t2) -> 3, 1, 5; seq 3: 0 (t5), 2 (t5), 4 (t3) -> 4, 0, 2.
        assert_eq!(s.seq_ids, vec![1, 3]);
        assert_eq!(s.offsets, vec![0, 3, 6]);
        assert_eq!(s.items, vec![13, 11, 15, 14, 10, 12]);
        assert_eq!(s.times, vec![1, 2, 2, 3, 5, 5]);
        assert_eq!(s.ratings, Some(vec![3.0, 1.0, 5.0, 4.0, 0.0, 2.0]));
        assert_eq!(s.labels, None);
        s.validate().unwrap();
    }

    #[test]
    fn empty_input_gives_an_empty_valid_store() {
        let s = SequenceStore::from_events(Events::default()).unwrap();
        assert_eq!(s.offsets, vec![0]);
        assert_eq!(s.n_seq(), 0);
        s.validate().unwrap();
    }

    #[test]
    fn rejects_bad_events() {
        let mut e = events(&[1, 2], &[1, 1], &[0, 0]);
        e.kinds = Some(vec![0]);
        let msg = SequenceStore::from_events(e).unwrap_err().to_string();
        assert!(msg.contains("kinds has 1 entries, expected 2"), "{msg}");
        let msg = SequenceStore::from_events(events(&[1, 0], &[1, 1], &[0, 0])).unwrap_err().to_string();
        assert!(msg.contains("event 1 has sequence id 0"), "{msg}");
        let msg = SequenceStore::from_events(events(&[1, 1], &[1, 0], &[0, 0])).unwrap_err().to_string();
        assert!(msg.contains("event 1 has item id 0"), "{msg}");
        let msg = SequenceStore::from_events(events(&[1], &[1, 2], &[0, 0])).unwrap_err().to_string();
        assert!(msg.contains("items has 2 entries"), "{msg}");
    }

    /// Random events whose `groups` column holds the input index, so every
    /// output event can be traced back.
    fn random_events(rng: &mut Rng, n: usize, n_ids: u64, sorted_times: bool) -> Events {
        let seq: Vec<u32> = (0..n).map(|_| 1 + rng.below(n_ids) as u32).collect();
        let times: Vec<i64> = if sorted_times {
            (0..n as i64).map(|i| i / 3).collect()
        } else {
            (0..n).map(|_| rng.below(50) as i64).collect()
        };
        Events {
            items: (0..n).map(|_| 1 + rng.below(1000) as u32).collect(),
            groups: Some((0..n as i64).collect()),
            seq,
            times,
            ..Events::default()
        }
    }

    fn check_grouping(e: &Events, s: &SequenceStore) {
        s.validate().unwrap();
        assert!(s.seq_ids.windows(2).all(|w| w[0] < w[1]), "seq ids ascending");
        let origin = s.groups.as_ref().unwrap();
        let mut seen = vec![false; e.seq.len()];
        for sq in 0..s.n_seq() {
            assert!(s.len_of(sq) > 0);
            for j in s.range(sq) {
                let i = origin[j] as usize;
                assert!(!seen[i], "event {i} twice");
                seen[i] = true;
                assert_eq!(e.seq[i], s.seq_ids[sq]);
                assert_eq!((e.items[i], e.times[i]), (s.items[j], s.times[j]));
            }
            // Ties in time keep input order.
            for w in s.range(sq).collect::<Vec<_>>().windows(2) {
                if s.times[w[0]] == s.times[w[1]] {
                    assert!(origin[w[0]] < origin[w[1]]);
                }
            }
        }
        assert!(seen.iter().all(|&x| x), "every event present");
    }

    #[test]
    fn random_events_are_each_grouped_once_in_order() {
        let mut rng = Rng::new(11);
        let e = random_events(&mut rng, 100_000, 5_000, false);
        let s = SequenceStore::from_events(e.clone()).unwrap();
        check_grouping(&e, &s);
        for seed in 0..60 {
            let mut rng = Rng::new(seed);
            let n = rng.below(400) as usize;
            let n_ids = 1 + rng.below(40);
            let e = random_events(&mut rng, n, n_ids, seed % 2 == 0);
            check_grouping(&e, &SequenceStore::from_events(e.clone()).unwrap());
        }
    }

    #[test]
    fn retain_drops_events_and_emptied_sequences() {
        let mut e = events(&[1, 1, 2, 2, 3], &[1, 2, 3, 4, 5], &[0, 1, 0, 1, 0]);
        e.labels = Some(vec![1, 0, 1, 0, 1]);
        let s = SequenceStore::from_events(e).unwrap();
        let r = s.retain(&[true, false, false, false, true]);
        assert_eq!(r.offsets, vec![0, 1, 2]);
        assert_eq!(r.seq_ids, vec![1, 3]);
        assert_eq!(r.items, vec![1, 5]);
        assert_eq!(r.times, vec![0, 0]);
        assert_eq!(r.labels, Some(vec![1, 1]));
        r.validate().unwrap();
        let none = s.retain(&[false; 5]);
        assert_eq!(none.n_seq(), 0);
        assert_eq!(none.offsets, vec![0]);
        none.validate().unwrap();
        assert_eq!(s.retain(&[true; 5]), s);
    }

    #[test]
    fn retain_in_place_equals_retain() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let n = [0, 30, 200_000][seed as usize % 3];
            let n_ids = 1 + rng.below(2000);
            let mut e = random_events(&mut rng, n, n_ids, seed % 2 == 0);
            e.labels = Some((0..n).map(|i| (i % 3) as i8).collect());
            let s = SequenceStore::from_events(e).unwrap();
            let p = rng.uniform();
            let keep: Vec<bool> = (0..s.n_events()).map(|_| rng.bernoulli(p)).collect();
            let mut t = s.clone();
            t.retain_in_place(&keep);
            assert_eq!(t, s.retain(&keep));
            t.validate().unwrap();
        }
    }

    #[test]
    fn per_sequence_work_sees_each_sequence_range() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let n = [0, 50, 70_000][seed as usize % 3];
            let n_ids = 1 + rng.below(3000);
            let e = random_events(&mut rng, n, n_ids, true);
            let s = SequenceStore::from_events(e).unwrap();
            let mut out = vec![(0usize, 0usize); s.n_events()];
            s.par_for_each_sequence_mut(&mut out, |sq, o| {
                o.iter_mut().enumerate().for_each(|(k, x)| *x = (sq, k));
            });
            for sq in 0..s.n_seq() {
                for (k, j) in s.range(sq).enumerate() {
                    assert_eq!(out[j], (sq, k));
                }
            }
        }
    }
}
