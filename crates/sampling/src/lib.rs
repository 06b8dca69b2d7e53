//! `seqrec-sampling`: the negative samples of GRU4Rec's mini-batch training.
//!
//! Hidasi & Karatzoglou, "Recurrent Neural Networks with Top-k Gains for
//! Session-based Recommendations" (CIKM 2018, <https://arxiv.org/abs/1706.03847>)
//! score each mini-batch's targets against the other targets of the batch plus
//! `n_sample` extra items shared by the whole batch, drawn with probability
//! proportional to `support^sample_alpha` (alpha 0: uniform, 1: popularity).
//! Drawing a few thousand ids per mini-batch one call at a time is slow, so the
//! authors precompute a *sample store* of `sample_store` ids and hand out
//! `n_sample` of them per mini-batch, refilling the store when it is used up.
//! [`SampleStore`] does the same, and generates the next store on a background
//! thread while the current one is consumed, so the training thread does not
//! wait for it. The id stream depends only on the seed, never on timing.
//!
//! [`PopularitySampler`] also exposes `log_pop` and `log_prob` for the logQ
//! correction (subtracting `logq · log pop` from the scores of targets and samples).

use seqrec_data::rng::Rng;

mod popularity;
mod store;

pub use popularity::{count_supports, PopularitySampler, UniformSampler};
pub use store::{Filling, SampleStore};

/// A fixed distribution over item ids `1..=n_items`; id 0 (padding) is never drawn.
pub trait Sampler: Send + Sync + std::fmt::Debug {
    /// Largest item id that may be drawn.
    fn n_items(&self) -> usize;

    /// Fills `out` with independent draws, consuming `rng`.
    ///
    /// Draws must use `rng` one after another, so that filling a slice in
    /// pieces with the same `rng` gives the same ids as filling it at once.
    fn fill(&self, rng: &mut Rng, out: &mut [u32]);

    /// Natural log of the probability of drawing `item`; `-inf` for ids never drawn.
    fn log_prob(&self, item: u32) -> f32;
}
