//! `seqrec-models`: models, losses and the evaluation they share.
//!
//! - [`loss`]: GRU4Rec's sampled-output losses (cross-entropy, TOP1, BPR,
//!   TOP1-max, BPR-max) over `[targets ‖ extra samples]` score matrices, in candle.
//! - [`next_item`]: the full-ranking next-item evaluation over session-parallel
//!   batches, for any [`next_item::SessionScorer`].
//! - [`baseline`]: most-popular and first-order Markov baselines.
//! - [`gru4rec`]: the GRU4Rec network, its training step and scorer.
//! - [`optim`]: Adagrad with momentum and Adam, dense and sparse (row) updates.

pub mod baseline;
pub mod error;
pub mod gru4rec;
pub mod loss;
pub mod next_item;
pub mod optim;

pub use error::ModelError;
