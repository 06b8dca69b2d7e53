//! Batchers: plain host buffers cut from a [`SequenceStore`] for the models
//! (no candle types here).
//!
//! - [`SessionParallel`]: GRU4Rec's session-parallel mini-batches; one event
//!   per slot per step, slots reset when they take a new session, the batch
//!   shrinks at the end of the epoch instead of padding.
//! - [`Windows`]: a left-padded history window ending at each target
//!   (BST, embedding-GRU, SASRec at inference); [`ShiftedWindows`]: SASRec's
//!   training windows where every position predicts the next event.
//! - [`Chunks`]: long histories cut into consecutive chunks whose recurrent
//!   state carries over (truncated BPTT); no event is dropped.
//! - [`Pairs`]: (user, item, target) rows with sampled negatives for MF/NCF.
//!
//! Each batcher fills buffers it owns and lends them out
//! (`next_step` / `next_batch` return `Option<&Batch>`), so an epoch over
//! 100M events allocates once. `rewind` starts the next epoch (reshuffling
//! where the batcher shuffles). Which events are targets is chosen by
//! [`Targets`] over the split's per-event [`Part`]s.

mod chunks;
mod epoch;
mod lanes;
mod pairs;
mod session_parallel;
mod shifted;
mod windows;

#[cfg(test)]
mod test_stores;

pub use chunks::{balanced_order, ChunkStep, Chunks, ChunksConfig};
pub use pairs::{PairBatch, Pairs, PairsConfig};
pub use session_parallel::{SessionParallel, SessionParallelConfig, SessionStep};
pub use shifted::{ShiftedBatch, ShiftedConfig, ShiftedWindows};
pub use windows::{WindowBatch, Windows, WindowsConfig};

use crate::split::Part;
use crate::{Error, Result, SequenceStore};

/// Which events may be targets (or, for [`Chunks`], must be read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Targets<'a> {
    /// Every event.
    #[default]
    All,
    /// Events whose part (one per event, aligned with the store) is in `select`.
    Parts {
        /// The split's part of each event.
        parts: &'a [Part],
        /// The parts whose events are selected.
        select: &'a [Part],
    },
}

impl<'a> Targets<'a> {
    /// Events whose part is in `select`.
    pub fn of(parts: &'a [Part], select: &'a [Part]) -> Self {
        Targets::Parts { parts, select }
    }

    /// True when event `event` is selected.
    #[inline]
    pub fn selects(&self, event: usize) -> bool {
        match self {
            Targets::All => true,
            Targets::Parts { parts, select } => select.contains(&parts[event]),
        }
    }

    /// The last selected event in `range`, if any.
    pub(crate) fn last_in(&self, range: std::ops::Range<usize>) -> Option<usize> {
        match self {
            Targets::All => range.end.checked_sub(1).filter(|&e| e >= range.start),
            Targets::Parts { .. } => range.rev().find(|&e| self.selects(e)),
        }
    }

    /// Checks that the part mask covers every event of `store`.
    fn check(&self, store: &SequenceStore) -> Result<()> {
        match self {
            Targets::Parts { parts, .. } if parts.len() != store.n_events() => Err(Error::Invalid(format!(
                "target selection: {} parts for {} events, expected one part per event",
                parts.len(),
                store.n_events()
            ))),
            _ => Ok(()),
        }
    }
}

/// Sequence indices ordered by the time of their first event (ties and
/// empty sequences keep store order; empty ones go last): the order in
/// which GRU4Rec feeds sessions.
pub fn order_by_first_time(store: &SequenceStore) -> Vec<usize> {
    let mut order: Vec<usize> = (0..store.n_seq()).collect();
    order.sort_by_key(|&s| {
        let r = store.range(s);
        if r.is_empty() {
            (1, 0)
        } else {
            (0, store.times[r.start])
        }
    });
    order
}

/// Sequence index of event `event` (the sequence whose range holds it).
#[inline]
pub(crate) fn seq_of(offsets: &[usize], event: usize) -> usize {
    offsets.partition_point(|&o| o <= event) - 1
}

/// The checks every batcher needs so that slicing the store cannot panic:
/// offsets start at 0, never decrease and end at `n_events`; `seq_ids`,
/// `times` (when present) and `ratings` (when present) are aligned.
pub(crate) fn check_store(store: &SequenceStore, what: &str) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(format!("{what}: sequence store: {m}")));
    let n = store.n_events();
    match store.offsets.first() {
        None if n == 0 => return Ok(()),
        None => return bad(format!("no offsets for {n} events")),
        Some(&0) => {}
        Some(&o) => return bad(format!("offsets start at {o}, expected 0")),
    }
    if store.offsets.last() != Some(&n) {
        return bad(format!("last offset {:?}, expected {n} events", store.offsets.last()));
    }
    if store.offsets.windows(2).any(|w| w[0] > w[1]) {
        return bad("offsets decrease".into());
    }
    if store.seq_ids.len() != store.n_seq() {
        return bad(format!("{} seq ids for {} sequences", store.seq_ids.len(), store.n_seq()));
    }
    if let Some(r) = &store.ratings {
        if r.len() != n {
            return bad(format!("{} ratings for {n} events", r.len()));
        }
    }
    if let Some(l) = &store.labels {
        if l.len() != n {
            return bad(format!("{} labels for {n} events", l.len()));
        }
    }
    Ok(())
}

/// Checks that a size parameter is positive.
pub(crate) fn check_positive(value: usize, what: &str) -> Result<()> {
    if value == 0 {
        return Err(Error::Invalid(format!("{what} is 0, expected at least 1")));
    }
    Ok(())
}

/// Checks that `order` names each sequence of `store` at most once.
pub(crate) fn check_order(order: &[usize], store: &SequenceStore, what: &str) -> Result<()> {
    let mut seen = vec![false; store.n_seq()];
    for &s in order {
        match seen.get_mut(s) {
            None => {
                return Err(Error::Invalid(format!(
                    "{what}: order names sequence {s}, expected one below {}",
                    store.n_seq()
                )))
            }
            Some(true) => {
                return Err(Error::Invalid(format!(
                    "{what}: order names sequence {s} twice, expected each at most once"
                )))
            }
            Some(x) => *x = true,
        }
    }
    Ok(())
}

/// Event indices as `u32`, so that a 100M-event target list takes 400 MB
/// rather than 800 MB; refuses stores that do not fit.
pub(crate) fn check_u32_events(store: &SequenceStore, what: &str) -> Result<()> {
    if store.n_events() > u32::MAX as usize {
        return Err(Error::Invalid(format!("{what}: {} events, at most {} supported", store.n_events(), u32::MAX)));
    }
    Ok(())
}

/// The store checks of the batchers that list target events as `u32` rows:
/// consistent offsets, at most `u32::MAX` events, a part mask covering them.
pub(crate) fn check_row_store(store: &SequenceStore, targets: &Targets<'_>, what: &str) -> Result<()> {
    check_store(store, what)?;
    check_u32_events(store, what)?;
    targets.check(store)
}

/// Fills `out` with one left-padded row of width `len` per window: the
/// `lengths[r]` events of `column` just before `ends[r]`.
pub(crate) fn gather_before<T: Copy>(
    column: &[T],
    ends: &[usize],
    lengths: &[usize],
    len: usize,
    pad: T,
    out: &mut Vec<T>,
) {
    out.clear();
    for (&end, &l) in ends.iter().zip(lengths) {
        gather_row(column, end - l, l, len, pad, true, out);
    }
}

/// Copies `column[e]` for the events `first..first + valid` into one row of
/// width `len`: left-aligned when `pad_left` is false, else right-aligned
/// after `len - valid` pad values.
#[inline]
pub(crate) fn gather_row<T: Copy>(
    column: &[T],
    first: usize,
    valid: usize,
    len: usize,
    pad: T,
    pad_left: bool,
    out: &mut Vec<T>,
) {
    if pad_left {
        out.extend(std::iter::repeat_n(pad, len - valid));
        out.extend_from_slice(&column[first..first + valid]);
    } else {
        out.extend_from_slice(&column[first..first + valid]);
        out.extend(std::iter::repeat_n(pad, len - valid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(times: &[&[i64]]) -> SequenceStore {
        let mut s = SequenceStore { offsets: vec![0], ..Default::default() };
        for (i, t) in times.iter().enumerate() {
            s.times.extend_from_slice(t);
            s.items.extend(std::iter::repeat_n(1, t.len()));
            s.offsets.push(s.times.len());
            s.seq_ids.push(i as u32 + 1);
        }
        s
    }

    #[test]
    fn first_time_order_is_stable_and_puts_empty_last() {
        let s = store_of(&[&[50, 60], &[], &[10], &[50], &[5, 70]]);
        assert_eq!(order_by_first_time(&s), vec![4, 2, 0, 3, 1]);
        assert!(order_by_first_time(&SequenceStore::default()).is_empty());
    }

    #[test]
    fn targets_select_and_find_last() {
        let parts = [Part::Train, Part::Test, Part::Valid, Part::Train];
        let t = Targets::of(&parts, &[Part::Train, Part::Valid]);
        assert_eq!((0..4).map(|e| t.selects(e)).collect::<Vec<_>>(), [true, false, true, true]);
        assert_eq!(t.last_in(0..2), Some(0));
        assert_eq!(t.last_in(1..2), None);
        assert_eq!(Targets::All.last_in(3..3), None);
        assert_eq!(Targets::All.last_in(1..3), Some(2));
        let s = store_of(&[&[1, 2, 3]]);
        assert!(t.check(&s).is_err());
    }

    #[test]
    fn seq_of_skips_empty_sequences() {
        let offsets = [0, 2, 2, 2, 5];
        let got: Vec<usize> = (0..5).map(|e| seq_of(&offsets, e)).collect();
        assert_eq!(got, vec![0, 0, 3, 3, 3]);
    }

    #[test]
    fn store_and_order_checks_reject_bad_input() {
        let mut s = store_of(&[&[1, 2], &[3]]);
        assert!(check_store(&s, "t").is_ok());
        assert!(check_store(&SequenceStore::default(), "t").is_ok());
        assert!(check_order(&[1, 0], &s, "t").is_ok());
        assert!(check_order(&[1, 1], &s, "t").is_err());
        assert!(check_order(&[2], &s, "t").is_err());
        s.offsets = vec![0, 3, 2];
        assert!(check_store(&s, "t").is_err());
        s.offsets = vec![0, 2, 4];
        assert!(check_store(&s, "t").is_err());
        assert!(check_positive(0, "batch size").is_err());
    }
}
