//! Synthetic generators whose generating process is known, so that every
//! model can be compared with the best possible predictor (the oracle).
//!
//! - [`sessions`]: next-item sessions from latent intents, written as
//!   GRU4Rec's TSV, with the exact Bayes predictor.
//! - [`kt`]: knowledge-tracing logs in Riiid's three-file schema (CSV, and a
//!   streaming parquet writer for benchmarks), with the true probability of
//!   each answer.

pub mod kt;
pub mod sessions;
