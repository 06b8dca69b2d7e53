//! `seqrec-train`: run configuration, the training loop, checkpoints and run
//! directories.
//!
//! - [`config`]: the GRU4Rec run config (the papers' key names; unknown keys are errors).
//! - [`gru4rec`]: training (early stopping, best checkpoint, exact resume,
//!   retraining a saved model on new sessions), evaluation and recommendation.
//! - [`rating`]: median baseline, MF and BST rating models (MAE/RMSE).
//! - [`next_item`]: SASRec, the embedding-GRU and most popular over whole
//!   histories (full-ranking HR/NDCG/MRR).
//! - [`kt`]: knowledge tracing: question-mean baseline, NCF and RRNCF (AUC,
//!   log-loss, accuracy beside the generator's oracle), in memory or streamed.
//! - [`schedule`]: constant and one-cycle learning rates.
//! - [`run`]: the run directory's files.
//! - [`progress`]: the progress bar.

pub mod config;
pub mod error;
pub mod gru4rec;
pub mod kt;
pub mod next_item;
pub mod progress;
pub mod rating;
pub mod run;
pub mod schedule;

pub use config::{Gru4RecConfig, RunConfig};
pub use error::{Result, TrainError};
