//! The grouping behind [`SequenceStore::from_events`]: a stable, parallel,
//! cache-friendly counting sort of events by sequence id, then by time.
//!
//! A one-pass counting sort moves every event to a random place of a
//! 100M-entry array; each move is then a cache and TLB miss, and the misses
//! are the whole cost. So the sort runs in two passes. Pass A distributes
//! each column into buckets of `2^shift` consecutive ids (at most
//! [`MAX_BUCKETS`] of them): it reads the input in order and appends to one
//! write stream per bucket. Pass B orders each bucket, small enough for the
//! cache, by id and then by time, giving one `u32` permutation that every
//! column follows within its bucket. Pass A writes through atomic cells
//! (relaxed stores are plain stores) so that input chunks scatter in
//! parallel into their disjoint but interleaved slots without `unsafe`.

use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicI8, AtomicU32, AtomicU8, Ordering::Relaxed};

use rayon::prelude::*;

use super::{disjoint_slices, Events, SequenceStore, PARALLEL_MIN_EVENTS};
use crate::{Error, Result};

/// Events per bucket that pass B aims at: the bucket's keys, times and
/// permutation then fit in a core's L2 cache.
const BUCKET_EVENTS: usize = 1 << 15;

/// Most buckets (write streams) in pass A: more thrash the TLB.
const MAX_BUCKETS: usize = 1024;

/// Sequences longer than this are sorted by time in parallel: one learner
/// or one bot can hold most of the events.
const LONG_SEQUENCE: usize = 1 << 16;

/// Groups `events` into a store (see [`SequenceStore::from_events`]).
pub(super) fn group_events(events: Events) -> Result<SequenceStore> {
    check_event_columns(&events)?;
    let max_id = events.seq.par_iter().copied().max().unwrap_or(0);
    let plan = Plan::new(events.seq.len(), max_id);
    Ok(group_with(events, &plan))
}

/// How the sort cuts its work.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Bucket of id `s`: `s >> shift`.
    shift: u32,
    /// `(max_id >> shift) + 1`.
    n_buckets: usize,
    /// Events per input chunk in pass A.
    chunk_len: usize,
}

impl Plan {
    fn new(n: usize, max_id: u32) -> Plan {
        let target = (n / BUCKET_EVENTS).clamp(1, MAX_BUCKETS) as u64;
        let ids_per_bucket = (max_id as u64 + 1).div_ceil(target).next_power_of_two();
        let n_chunks = if n < PARALLEL_MIN_EVENTS { 1 } else { 4 * rayon::current_num_threads() };
        let shift = ids_per_bucket.trailing_zeros().min(31);
        Plan::with(max_id, shift, n.div_ceil(n_chunks))
    }

    fn with(max_id: u32, shift: u32, chunk_len: usize) -> Plan {
        Plan { shift, n_buckets: (max_id >> shift) as usize + 1, chunk_len: chunk_len.max(1) }
    }

    fn bucket(&self, id: u32) -> usize {
        (id >> self.shift) as usize
    }

    /// Ids of bucket `b`, clipped to `max_id`.
    fn ids_of(&self, b: usize, max_id: u32) -> Range<u64> {
        let lo = (b as u64) << self.shift;
        lo..(lo + (1u64 << self.shift)).min(max_id as u64 + 1)
    }
}

fn group_with(events: Events, plan: &Plan) -> SequenceStore {
    let Events { seq, items, times, ratings, labels, kinds, groups, elapsed, explained } = events;
    let max_id = seq.par_iter().copied().max().unwrap_or(0);
    let slots = BucketSlots::count(&seq, plan);
    // Two bucket-order buffers serve every column of their width in turn:
    // 32-bit (sequence ids, then items, ratings, elapsed) and 64-bit
    // (times, then groups).
    let n = seq.len();
    let cells32: Vec<AtomicU32> = new_cells(n);
    let cells64: Vec<AtomicI64> = new_cells(n);
    slots.scatter(&seq, &seq, &cells32);
    slots.scatter(&times, &seq, &cells64);
    let Ordered { offsets, seq_ids, perm } = order_buckets(&cells32, &cells64, plan, &slots.bounds, max_id);
    let follow = Follow { seq: &seq, slots: &slots, perm: &perm };
    let times = follow.gather_into(times, &cells64);
    let items = follow.column(items, &cells32);
    let ratings = ratings.map(|c| follow.column(c, &cells32));
    let elapsed = elapsed.map(|c| follow.column(c, &cells32));
    let groups = groups.map(|c| follow.column(c, &cells64));
    drop((cells32, cells64));
    SequenceStore {
        times,
        items,
        ratings,
        elapsed,
        groups,
        labels: labels.map(|c| follow.column(c, &new_cells(n))),
        kinds: kinds.map(|c| follow.column(c, &new_cells(n))),
        explained: explained.map(|c| follow.column(c, &new_cells(n))),
        gaps: None,
        offsets,
        seq_ids,
    }
}

/// `n` zeroed atomic cells, touched in parallel.
fn new_cells<A: Default + Send>(n: usize) -> Vec<A> {
    (0..n).into_par_iter().map(|_| A::default()).collect()
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
    // `any` first: rayon's `position_first` is many times slower, and only
    // the error message needs the position.
    for (name, ids) in [("sequence", &e.seq), ("item", &e.items)] {
        if ids.par_iter().any(|&x| x == 0) {
            let i = ids.iter().position(|&x| x == 0).unwrap_or(0);
            return Err(Error::Invalid(format!(
                "events: event {i} has {name} id 0, expected ids from 1 (0 is the padding id)"
            )));
        }
    }
    Ok(())
}

/// Pass A's layout: where each input chunk's events of each bucket go.
#[derive(Debug)]
struct BucketSlots {
    plan: Plan,
    /// `starts[c * n_buckets + b]`: first slot of chunk `c`'s events of bucket `b`.
    starts: Vec<u32>,
    /// Bucket `b` owns slots `bounds[b]..bounds[b + 1]`.
    bounds: Vec<usize>,
}

impl BucketSlots {
    fn count(seq: &[u32], plan: &Plan) -> BucketSlots {
        let nb = plan.n_buckets;
        let counts: Vec<u32> = seq
            .par_chunks(plan.chunk_len)
            .flat_map_iter(|chunk| {
                let mut h = vec![0u32; nb];
                for &id in chunk {
                    h[plan.bucket(id)] += 1;
                }
                h
            })
            .collect();
        let n_chunks = counts.len() / nb;
        let mut starts = vec![0u32; counts.len()];
        let mut bounds = Vec::with_capacity(nb + 1);
        let mut at = 0u32;
        // Bucket-major, chunk-minor: within a bucket, earlier chunks come
        // first, which keeps the distribution stable on input order.
        for b in 0..nb {
            bounds.push(at as usize);
            for c in 0..n_chunks {
                starts[c * nb + b] = at;
                at += counts[c * nb + b];
            }
        }
        bounds.push(at as usize);
        BucketSlots { plan: *plan, starts, bounds }
    }

    /// Pass A for one column: writes `col` into `cells` in bucket order,
    /// stable within a bucket (every cell is written once).
    fn scatter<T: Cell>(&self, col: &[T], seq: &[u32], cells: &[T::Atomic]) {
        let plan = &self.plan;
        col.par_chunks(plan.chunk_len)
            .zip(seq.par_chunks(plan.chunk_len))
            .zip(self.starts.par_chunks(plan.n_buckets))
            .for_each(|((col, seq), starts)| {
                let mut next = starts.to_vec();
                for (&v, &id) in col.iter().zip(seq) {
                    let slot = &mut next[plan.bucket(id)];
                    T::store(&cells[*slot as usize], v);
                    *slot += 1;
                }
            });
    }
}

/// Output of pass B.
#[derive(Debug)]
struct Ordered {
    offsets: Vec<usize>,
    seq_ids: Vec<u32>,
    /// `perm[j]`: the bucket-order slot of output event `j` (in `j`'s bucket).
    perm: Vec<u32>,
}

/// Pass B: orders every bucket by id, then each sequence by time.
fn order_buckets(keys: &[AtomicU32], times: &[AtomicI64], plan: &Plan, bounds: &[usize], max_id: u32) -> Ordered {
    let mut perm = vec![0u32; keys.len()];
    let ranges: Vec<Range<usize>> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
    let slices = disjoint_slices(&mut perm, &ranges);
    let per_bucket: Vec<(Vec<u32>, Vec<u32>)> = slices
        .into_par_iter()
        .zip(ranges.par_iter())
        .enumerate()
        .map(|(b, (out, r))| {
            let bucket = Bucket {
                keys: &keys[r.clone()],
                times: &times[r.clone()],
                base: r.start as u32,
                ids: plan.ids_of(b, max_id),
            };
            bucket.order(out)
        })
        .collect();
    let n_seq = per_bucket.iter().map(|(ids, _)| ids.len()).sum();
    let mut offsets = Vec::with_capacity(n_seq + 1);
    let mut seq_ids = Vec::with_capacity(n_seq);
    offsets.push(0);
    let mut end = 0;
    for (ids, lens) in per_bucket {
        seq_ids.extend(ids);
        for len in lens {
            end += len as usize;
            offsets.push(end);
        }
    }
    Ordered { offsets, seq_ids, perm }
}

/// One bucket of pass B: its slots `base..base + keys.len()`.
#[derive(Debug)]
struct Bucket<'a> {
    keys: &'a [AtomicU32],
    times: &'a [AtomicI64],
    base: u32,
    ids: Range<u64>,
}

/// The sequences of one bucket after ordering by id: ids, event counts,
/// and whether each one's events are out of time order.
#[derive(Debug, Default)]
struct BucketSequences {
    ids: Vec<u32>,
    lens: Vec<u32>,
    unsorted: Vec<bool>,
}

impl BucketSequences {
    fn push(&mut self, id: u32, len: u32) {
        self.ids.push(id);
        self.lens.push(len);
    }
}

impl Bucket<'_> {
    /// Fills `out` with this bucket's slots in (id, time, input) order;
    /// returns the ids present and their event counts.
    fn order(&self, out: &mut [u32]) -> (Vec<u32>, Vec<u32>) {
        let n_ids = (self.ids.end - self.ids.start) as usize;
        // Sparse ids (far more ids than events) would make the histogram
        // larger than the data: sort by comparison then.
        let seqs = if n_ids <= 4 * self.keys.len() + 1024 {
            self.counting_sort(out, n_ids)
        } else {
            self.comparison_sort(out)
        };
        let time = |slot: u32| self.times[(slot - self.base) as usize].load(Relaxed);
        let mut start = 0;
        for (&len, &unsorted) in seqs.lens.iter().zip(&seqs.unsorted) {
            let end = start + len as usize;
            if unsorted {
                // The slot breaks ties: slots follow input order.
                let seq = &mut out[start..end];
                if seq.len() > LONG_SEQUENCE {
                    seq.par_sort_unstable_by_key(|&slot| (time(slot), slot));
                } else {
                    seq.sort_unstable_by_key(|&slot| (time(slot), slot));
                }
            }
            start = end;
        }
        (seqs.ids, seqs.lens)
    }

    /// A counting sort over the bucket's ids that also notes, reading times
    /// in slot order, which sequences are out of time order (most are not,
    /// and need no sort).
    fn counting_sort(&self, out: &mut [u32], n_ids: usize) -> BucketSequences {
        let lo = self.ids.start as u32;
        let local = |k: &AtomicU32| (k.load(Relaxed) - lo) as usize;
        let mut next = vec![0u32; n_ids];
        for k in self.keys {
            next[local(k)] += 1;
        }
        let mut seqs = BucketSequences::default();
        let mut at = 0u32;
        for (d, c) in next.iter_mut().enumerate() {
            let count = *c;
            *c = at;
            if count > 0 {
                seqs.push(lo + d as u32, count);
                at += count;
            }
        }
        let mut last_time = vec![i64::MIN; n_ids];
        let mut disorder = vec![false; n_ids];
        for (pos, (k, t)) in self.keys.iter().zip(self.times).enumerate() {
            let d = local(k);
            let t = t.load(Relaxed);
            disorder[d] |= t < last_time[d];
            last_time[d] = t;
            out[next[d] as usize] = self.base + pos as u32;
            next[d] += 1;
        }
        seqs.unsorted = seqs.ids.iter().map(|&id| disorder[(id - lo) as usize]).collect();
        seqs
    }

    fn comparison_sort(&self, out: &mut [u32]) -> BucketSequences {
        let key = |slot: u32| self.keys[(slot - self.base) as usize].load(Relaxed);
        let time = |slot: u32| self.times[(slot - self.base) as usize].load(Relaxed);
        out.iter_mut().enumerate().for_each(|(pos, o)| *o = self.base + pos as u32);
        out.sort_unstable_by_key(|&slot| (key(slot), slot));
        let mut seqs = BucketSequences::default();
        for (j, &slot) in out.iter().enumerate() {
            let k = key(slot);
            match seqs.ids.last() {
                Some(&last) if last == k => {
                    if let (Some(len), Some(u)) = (seqs.lens.last_mut(), seqs.unsorted.last_mut()) {
                        *len += 1;
                        *u |= time(slot) < time(out[j - 1]);
                    }
                }
                _ => {
                    seqs.push(k, 1);
                    seqs.unsorted.push(false);
                }
            }
        }
        seqs
    }
}

/// Moves every column along pass A and the permutation of pass B.
#[derive(Debug)]
struct Follow<'a> {
    seq: &'a [u32],
    slots: &'a BucketSlots,
    perm: &'a [u32],
}

impl Follow<'_> {
    /// The column in output order, through `cells` (bucket order), written
    /// over the input's own buffer.
    fn column<T: Cell>(&self, col: Vec<T>, cells: &[T::Atomic]) -> Vec<T> {
        self.slots.scatter(&col, self.seq, cells);
        self.gather_into(col, cells)
    }

    /// Fills `out` from `cells` in output order; reads stay within one
    /// bucket at a time, so in cache.
    fn gather_into<T: Cell>(&self, mut out: Vec<T>, cells: &[T::Atomic]) -> Vec<T> {
        out.par_iter_mut().zip(self.perm.par_iter()).for_each(|(o, &slot)| *o = T::load(&cells[slot as usize]));
        out
    }
}

/// A column value with an atomic twin for pass A's parallel scatter.
trait Cell: Copy + Send + Sync {
    /// The atomic twin.
    type Atomic: Default + Send + Sync;
    fn store(cell: &Self::Atomic, v: Self);
    fn load(cell: &Self::Atomic) -> Self;
}

macro_rules! cell_through {
    ($t:ty, $atomic:ty, $to:expr, $from:expr) => {
        impl Cell for $t {
            type Atomic = $atomic;
            fn store(cell: &$atomic, v: $t) {
                cell.store($to(v), Relaxed)
            }
            fn load(cell: &$atomic) -> $t {
                $from(cell.load(Relaxed))
            }
        }
    };
}

cell_through!(u32, AtomicU32, |v| v, |v| v);
cell_through!(i64, AtomicI64, |v| v, |v| v);
cell_through!(i8, AtomicI8, |v| v, |v| v);
cell_through!(u8, AtomicU8, |v| v, |v| v);
cell_through!(f32, AtomicU32, f32::to_bits, f32::from_bits);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The reference: a stable sort of input indices by (seq, time).
    fn reference(e: &Events) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..e.seq.len()).collect();
        idx.sort_by_key(|&i| (e.seq[i], e.times[i]));
        idx
    }

    fn random_events(rng: &mut Rng, n: usize, max_id: u64) -> Events {
        Events {
            seq: (0..n).map(|_| 1 + rng.below(max_id) as u32).collect(),
            items: (0..n).map(|_| 1 + rng.below(9) as u32).collect(),
            times: (0..n).map(|_| rng.below(6) as i64).collect(),
            ratings: Some((0..n).map(|i| i as f32 * 0.5).collect()),
            labels: Some((0..n).map(|i| (i % 3) as i8 - 1).collect()),
            kinds: Some((0..n).map(|i| (i % 2) as u8).collect()),
            groups: Some((0..n as i64).collect()),
            elapsed: Some((0..n).map(|i| -(i as f32)).collect()),
            explained: Some((0..n).map(|i| (i % 5) as i8).collect()),
        }
    }

    fn check(e: &Events, s: &SequenceStore) {
        let idx = reference(e);
        let pick = |col: &[u32]| idx.iter().map(|&i| col[i]).collect::<Vec<_>>();
        assert_eq!(s.items, pick(&e.items));
        assert_eq!(s.times, idx.iter().map(|&i| e.times[i]).collect::<Vec<_>>());
        assert_eq!(s.groups.as_deref(), Some(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()[..]));
        let ratings = e.ratings.as_ref().unwrap();
        assert_eq!(s.ratings, Some(idx.iter().map(|&i| ratings[i]).collect()));
        let labels = e.labels.as_ref().unwrap();
        assert_eq!(s.labels, Some(idx.iter().map(|&i| labels[i]).collect()));
        let kinds = e.kinds.as_ref().unwrap();
        assert_eq!(s.kinds, Some(idx.iter().map(|&i| kinds[i]).collect()));
        let elapsed = e.elapsed.as_ref().unwrap();
        assert_eq!(s.elapsed, Some(idx.iter().map(|&i| elapsed[i]).collect()));
        let explained = e.explained.as_ref().unwrap();
        assert_eq!(s.explained, Some(idx.iter().map(|&i| explained[i]).collect()));
        let mut ids: Vec<u32> = e.seq.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(s.seq_ids, ids);
        for q in 0..s.n_seq() {
            assert!(s.range(q).all(|j| e.seq[idx[j]] == s.seq_ids[q]));
        }
        s.validate().unwrap();
    }

    #[test]
    fn every_plan_gives_the_reference_order() {
        for seed in 0..30 {
            let mut rng = Rng::new(seed);
            let n = rng.below(500) as usize;
            let max_id = 1 + rng.below(60);
            let e = random_events(&mut rng, n, max_id);
            let top = e.seq.iter().copied().max().unwrap_or(0);
            for (shift, chunk_len) in [(0, 1000), (0, 7), (2, 13), (3, 1), (31, 50)] {
                let plan = Plan::with(top, shift, chunk_len);
                check(&e, &group_with(e.clone(), &plan));
            }
            check(&e, &group_events(e.clone()).unwrap());
        }
    }

    #[test]
    fn long_sequences_sort_in_parallel_and_stay_stable() {
        let mut rng = Rng::new(9);
        let e = random_events(&mut rng, LONG_SEQUENCE + 5000, 2);
        check(&e, &group_events(e.clone()).unwrap());
    }

    #[test]
    fn sparse_ids_sort_by_comparison() {
        let mut rng = Rng::new(3);
        let mut e = random_events(&mut rng, 300, 5);
        for s in e.seq.iter_mut() {
            *s = u32::MAX - *s * 1_000_003;
        }
        let top = e.seq.iter().copied().max().unwrap_or(0);
        check(&e, &group_with(e.clone(), &Plan::with(top, 31, 40)));
        check(&e, &group_events(e.clone()).unwrap());
    }

    #[test]
    fn plans_for_large_inputs_use_many_buckets_of_cache_size() {
        let p = Plan::new(100_000_000, 2_500_000);
        assert!(p.n_buckets <= MAX_BUCKETS && p.n_buckets >= MAX_BUCKETS / 2, "{p:?}");
        let p = Plan::new(1_000_000, 2_500_000);
        assert!(p.n_buckets <= 30 && p.n_buckets >= 15, "{p:?}");
        let p = Plan::new(10, u32::MAX);
        assert_eq!(p.n_buckets, 2);
    }
}
