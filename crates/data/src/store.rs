//! `SequenceStore`: every sequence's events in CSR layout, sorted by time
//! within a sequence (stable on input order), with aligned columns.

use std::ops::Range;

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
