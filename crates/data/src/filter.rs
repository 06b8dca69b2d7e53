//! Filters over a `SequenceStore`: minimum sequence length, minimum item
//! support (iterated to a fixed point), collapsing consecutive repeats, and
//! dropping sequences made of one repeated item.

use serde::{Deserialize, Serialize};

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
