//! `SequenceStore`: every sequence's events in CSR layout, sorted by time
//! within a sequence (stable on input order), with aligned columns.

use std::ops::Range;

use rayon::prelude::*;

use crate::{Error, Result};

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

/// Most key ranges the scatter uses: every range scans the whole `seq`
/// column, so more ranges than this cost more reads than they save.
const MAX_SCATTER_PARTS: usize = 8;

impl SequenceStore {
    /// Groups events by sequence id (counting sort on `seq`, parallel with
    /// rayon, stable on input order), then sorts each sequence by time
    /// (stable). Sequences appear in ascending seq id; ids with no events are
    /// absent.
    ///
    /// Memory beyond the output columns is one `u32` permutation plus a
    /// `u32` counter per sequence id, so ids should be dense (vocabulary ids):
    /// the largest id, not the number of sequences, sizes the counters.
    /// Each input column is freed as soon as it has been gathered.
    ///
    /// # Errors
    /// [`Error::Invalid`] when a column's length differs from `seq`'s, when a
    /// sequence or item id is 0 (the padding id), or when there are more than
    /// `u32::MAX` events.
    pub fn from_events(events: Events) -> Result<SequenceStore> {
        check_event_columns(&events)?;
        let n = events.seq.len();
        let n_parts =
            if n < PARALLEL_MIN_EVENTS { 1 } else { rayon::current_num_threads().clamp(1, MAX_SCATTER_PARTS) };
        let Grouping { offsets, seq_ids, mut perm } = group_permutation(&events.seq, n_parts)?;
        drop(events.seq);

        let times_in = events.times;
        let mut times = gather(&times_in, &perm);
        sort_sequences_by_time(&offsets, &mut perm, &mut times, &times_in);
        drop(times_in);

        Ok(SequenceStore {
            items: gather(&events.items, &perm),
            ratings: events.ratings.map(|c| gather(&c, &perm)),
            labels: events.labels.map(|c| gather(&c, &perm)),
            kinds: events.kinds.map(|c| gather(&c, &perm)),
            groups: events.groups.map(|c| gather(&c, &perm)),
            elapsed: events.elapsed.map(|c| gather(&c, &perm)),
            explained: events.explained.map(|c| gather(&c, &perm)),
            gaps: None,
            offsets,
            seq_ids,
            times,
        })
    }

    /// Keeps the events where `keep[i]` is true (sequences left empty
    /// disappear); all columns follow. Derived columns (`gaps`) are carried
    /// as they are, so recompute them after removing events.
    ///
    /// # Panics
    /// If `keep.len() != self.n_events()` (a caller bug, not bad input).
    pub fn retain(&self, keep: &[bool]) -> SequenceStore {
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
        SequenceStore {
            offsets,
            seq_ids,
            items: compact(&self.items, keep),
            times: compact(&self.times, keep),
            ratings: self.ratings.as_ref().map(|c| compact(c, keep)),
            labels: self.labels.as_ref().map(|c| compact(c, keep)),
            kinds: self.kinds.as_ref().map(|c| compact(c, keep)),
            groups: self.groups.as_ref().map(|c| compact(c, keep)),
            elapsed: self.elapsed.as_ref().map(|c| compact(c, keep)),
            explained: self.explained.as_ref().map(|c| compact(c, keep)),
            gaps: self.gaps.as_ref().map(|c| compact(c, keep)),
        }
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

fn check_event_columns(e: &Events) -> Result<()> {
    let n = e.seq.len();
    let lens = [
        ("items", Some(e.items.len())),
        ("times", Some(e.times.len())),
        ("ratings", e.ratings.as_ref().map(Vec::len)),
        ("labels", e.labels.as_ref().map(Vec::len)),
        ("kinds", e.kinds.as_ref().map(Vec::len)),
        ("groups", e.groups.as_ref().map(Vec::len)),
        ("elapsed", e.elapsed.as_ref().map(Vec::len)),
        ("explained", e.explained.as_ref().map(Vec::len)),
    ];
    for (name, len) in lens {
        if let Some(len) = len {
            if len != n {
                return Err(Error::Invalid(format!(
                    "events: column {name} has {len} entries, expected {n} (one per seq entry)"
                )));
            }
        }
    }
    if u32::try_from(n).is_err() {
        return Err(Error::Invalid(format!("events: {n} events, at most {} can be grouped", u32::MAX)));
    }
    if let Some(i) = e.items.par_iter().position_first(|&x| x == 0) {
        return Err(Error::Invalid(format!(
            "events: event {i} has item id 0, expected ids from 1 (0 is the padding id)"
        )));
    }
    Ok(())
}

/// The CSR shape of the grouped store and the permutation that produces it:
/// `perm[j]` is the input index of output event `j`.
#[derive(Debug)]
struct Grouping {
    offsets: Vec<usize>,
    seq_ids: Vec<u32>,
    perm: Vec<u32>,
}

/// Counting sort of event indices by `seq`, stable on input order.
///
/// Pass 1 counts events per id (one histogram per chunk, summed). Pass 2
/// scatters: the id range is cut into `n_parts` key ranges of about equal
/// event counts; each range owns a contiguous slice of the output, and its
/// thread scans all of `seq` in order, placing only its own ids. That keeps
/// the scatter parallel, stable and free of shared writes.
fn group_permutation(seq: &[u32], n_parts: usize) -> Result<Grouping> {
    let n = seq.len();
    let max_id = seq.par_iter().copied().max().unwrap_or(0) as usize;
    let mut counts = id_histogram(seq, max_id + 1, n_parts);
    if counts[0] > 0 {
        let i = seq.iter().position(|&s| s == 0).unwrap_or(0);
        return Err(Error::Invalid(format!(
            "events: event {i} has sequence id 0, expected ids from 1 (0 is the padding id)"
        )));
    }

    let n_seq = counts.iter().filter(|&&c| c > 0).count();
    let mut offsets = Vec::with_capacity(n_seq + 1);
    let mut seq_ids = Vec::with_capacity(n_seq);
    offsets.push(0);
    // `counts` becomes the exclusive prefix sum: the first output slot of each id.
    let mut start = 0u32;
    for (id, c) in counts.iter_mut().enumerate() {
        let count = *c;
        *c = start;
        if count > 0 {
            start += count;
            offsets.push(start as usize);
            seq_ids.push(id as u32);
        }
    }
    let mut starts = counts;

    let mut perm = vec![0u32; n];
    // Key-range boundaries: range p covers ids bounds[p]..bounds[p + 1].
    let mut bounds = vec![0usize];
    for p in 1..n_parts {
        let target = (n as u64 * p as u64 / n_parts as u64) as u32;
        let b = starts.partition_point(|&st| st < target).max(*bounds.last().unwrap_or(&0));
        bounds.push(b);
    }
    bounds.push(starts.len());

    let mut jobs = Vec::with_capacity(n_parts);
    let (mut cursors_rest, mut out_rest) = (&mut starts[..], &mut perm[..]);
    let mut consumed_events = 0u32;
    for p in 0..n_parts {
        let (lo, hi) = (bounds[p], bounds[p + 1]);
        let (cursors, rest) = cursors_rest.split_at_mut(hi - lo);
        cursors_rest = rest;
        // The first slot of the next range's first id ends this range's output.
        let part_end = cursors_rest.first().copied().unwrap_or(n as u32);
        let (out, rest) = out_rest.split_at_mut((part_end - consumed_events) as usize);
        out_rest = rest;
        jobs.push((lo, cursors, out, consumed_events));
        consumed_events = part_end;
    }
    jobs.into_par_iter().for_each(|(lo, cursors, out, base)| {
        let width = cursors.len();
        for (i, &s) in seq.iter().enumerate() {
            let k = (s as usize).wrapping_sub(lo);
            if k < width {
                let c = &mut cursors[k];
                out[(*c - base) as usize] = i as u32;
                *c += 1;
            }
        }
    });
    Ok(Grouping { offsets, seq_ids, perm })
}

/// Events per id in `0..n_ids`, counted in `n_chunks` chunks in parallel.
fn id_histogram(ids: &[u32], n_ids: usize, n_chunks: usize) -> Vec<u32> {
    let chunk = ids.len().div_ceil(n_chunks.max(1)).max(1);
    ids.par_chunks(chunk)
        .map(|c| {
            let mut h = vec![0u32; n_ids];
            for &s in c {
                h[s as usize] += 1;
            }
            h
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_else(|| vec![0u32; n_ids])
}

/// Sorts, by time and stably, the sequences whose times are out of order:
/// most inputs are already sorted, so only those are touched.
fn sort_sequences_by_time(offsets: &[usize], perm: &mut [u32], times: &mut [i64], times_in: &[i64]) {
    let unsorted: Vec<usize> = (0..offsets.len().saturating_sub(1))
        .into_par_iter()
        .filter(|&s| times[offsets[s]..offsets[s + 1]].windows(2).any(|w| w[0] > w[1]))
        .collect();
    if unsorted.is_empty() {
        return;
    }
    let ranges: Vec<Range<usize>> = unsorted.iter().map(|&s| offsets[s]..offsets[s + 1]).collect();
    let perm_slices = disjoint_slices(perm, &ranges);
    let time_slices = disjoint_slices(times, &ranges);
    perm_slices.into_par_iter().zip(time_slices).for_each(|(p, t)| {
        // The input index breaks ties, which keeps equal times in input order.
        p.sort_unstable_by_key(|&i| (times_in[i as usize], i));
        t.iter_mut().zip(p.iter()).for_each(|(t, &i)| *t = times_in[i as usize]);
    });
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

/// `col[perm[j]]` for every `j`, in parallel.
fn gather<T: Copy + Send + Sync>(col: &[T], perm: &[u32]) -> Vec<T> {
    perm.par_iter().map(|&i| col[i as usize]).collect()
}

/// The entries of `col` where `keep` is true, in order, in parallel.
fn compact<T: Copy + Send + Sync>(col: &[T], keep: &[bool]) -> Vec<T> {
    col.par_chunks(PARALLEL_MIN_EVENTS)
        .zip(keep.par_chunks(PARALLEL_MIN_EVENTS))
        .flat_map_iter(|(c, k)| c.iter().zip(k).filter(|(_, &k)| k).map(|(&v, _)| v))
        .collect()
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
    fn key_range_scatter_matches_a_single_range() {
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let n = rng.below(300) as usize;
            let n_ids = 1 + rng.below(30);
            let seq: Vec<u32> = (0..n).map(|_| 1 + rng.below(n_ids) as u32).collect();
            let one = group_permutation(&seq, 1).unwrap();
            // A stable counting sort equals a stable sort of the indices by id.
            let mut expect: Vec<u32> = (0..n as u32).collect();
            expect.sort_by_key(|&i| seq[i as usize]);
            assert_eq!(one.perm, expect);
            for parts in [2, 3, 5, 8] {
                let many = group_permutation(&seq, parts).unwrap();
                assert_eq!(many.perm, one.perm, "seed {seed}, {parts} parts");
                assert_eq!((&many.offsets, &many.seq_ids), (&one.offsets, &one.seq_ids));
            }
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
