//! `seqrec-eval`: metrics on plain slices, with no model or tensor types.
//!
//! - [`rank`]: the rank of a target with explicit tie handling ([`TieMode`]).
//! - [`ranking`]: Recall@K / HR@K, MRR@K and NDCG@K over a stream of ranks,
//!   mergeable across batches and workers with identical results.
//! - [`classification`]: exact AUC (ties counted one half), log-loss, accuracy.
//! - [`regression`]: MAE, MSE, RMSE.

pub mod classification;
pub mod rank;
pub mod ranking;
pub mod regression;

pub use classification::{accuracy, auc, log_loss, ClassificationAccumulator, ClassificationMetrics};
pub use rank::{rank, rank_from_counts, tie_counts, Score, TieMode};
pub use ranking::{MetricsAtK, RankingAccumulator, RankingMetrics};
pub use regression::{mae, mse, rmse, RegressionAccumulator, RegressionMetrics};
