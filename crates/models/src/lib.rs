//! `seqrec-models`: models, losses and the evaluation they share.
//!
//! - [`loss`]: GRU4Rec's sampled-output losses (cross-entropy, TOP1, BPR,
//!   TOP1-max, BPR-max) over `[targets ‖ extra samples]` score matrices, in candle.
//! - [`next_item`]: the full-ranking next-item evaluation over session-parallel
//!   batches, for any [`next_item::SessionScorer`].
//! - [`baseline`]: most-popular and first-order Markov baselines.
//! - [`gru4rec`]: the GRU4Rec network, its training step and scorer.
//! - [`optim`]: Adagrad with momentum, Adam and AdamW, dense and sparse (row) updates.
//! - [`nn`]: seeded parameters and PyTorch-style layers for the autograd models.
//! - [`rating`]: rating batches, the median baseline and matrix factorisation;
//!   [`bst`]: the Behaviour Sequence Transformer for ratings.
//! - [`seq`]: training batches, objectives (full softmax, BCE, sampled
//!   softmax with logQ) and the trait of the window models: [`sasrec`]
//!   (self-attention) and [`emb_gru`] (embedding → GRU → dense);
//!   [`window_eval`]: their full-ranking (or loudly sampled) evaluation.
//! - [`kt`]: knowledge tracing: NCF (GMF, MLP, NeuMF) and RRNCF (an LSTM over
//!   the learner's whole history as NCF's learner vector), their chunk
//!   batches with bundle-aware state picking.

pub mod baseline;
pub mod bst;
pub mod emb_gru;
pub mod error;
pub mod gru4rec;
pub mod kt;
pub mod loss;
pub mod next_item;
pub mod nn;
pub mod optim;
pub mod rating;
pub mod sasrec;
pub mod seq;
pub mod window_eval;

pub use error::ModelError;
