//! seqrec-models
//!
//! - [`next_item`]: the full-ranking next-item evaluation over session-parallel
//!   batches, for any [`next_item::SessionScorer`].
//! - [`baseline`]: most-popular and first-order Markov baselines.

pub mod baseline;
pub mod next_item;
