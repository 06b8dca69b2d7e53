//! `seqrec-kernels`: the custom ops the models need beyond candle's generic
//! ones, each with a CPU implementation that is also the reference for the
//! CUDA kernels of the `cuda` feature.
//!
//! - [`optim`]: Adagrad-with-momentum and Adam updates, dense and sparse
//!   (only the touched rows of an embedding or output table, repeated row ids
//!   summed first), as in-place candle ops.
//! - [`act`]: σ and tanh on the CPU without libm's scalar calls.
//! - [`loss`]: GRU4Rec's sampled-output losses fused into one op (forward and gradient).
//! - [`lstm`]: a whole LSTM sequence as one op, forward and backward by hand.
//! - [`matmul`]: CPU matrix products whose thread count follows their size.
//! - [`gru`]: the element-wise parts of a GRU step (original form), forward
//!   and backward, fused into four ops.
//! - [`rows`]: products with rows of a table picked by id, read in place (AVX-512).
//! - [`rank`]: full-ranking rank counts (items above / equal to the target)
//!   without a batch × catalogue score matrix.
//! - [`pool`]: keeping rayon's workers awake through a loop of short parallel regions.
//! - [`probe`]: an opt-in phase timer for training steps (with the other cores' idle time).
//! - [`simd`]: element-wise loops compiled for AVX-512 where the CPU has it.
//! - [`device`]: `--device cpu|cuda[:N]|auto` and what it resolves to.
//!
//! With the `cuda` feature, `build.rs` compiles `cuda/*.cu` to PTX and the
//! optimiser, loss, GRU and rank ops gain CUDA implementations, each tested
//! against the CPU one on random inputs (skipped, with a message, when no GPU
//! answers).

pub mod act;
#[cfg(feature = "cuda")]
mod cuda;
pub mod device;
pub mod gru;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod optim;
pub mod pool;
pub mod probe;
pub mod rank;
pub mod rows;
pub mod simd;
