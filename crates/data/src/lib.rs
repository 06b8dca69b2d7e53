//! `seqrec-data`: from raw interaction logs to sequences and batches.
//!
//! Read (arrow `RecordBatch`es with canonical role columns, [`table`]) →
//! encode ([`vocab`]) → group ([`store::SequenceStore`], CSR) → filter →
//! split → gap features → persist ([`persist`]) → batch ([`batch`]).
//! No candle here: everything works on plain slices and arrow arrays.
//! [`synth`] generates data with a known optimal predictor (the oracle).

pub mod batch;
pub mod dataset;
pub mod error;
pub mod features;
pub mod filter;
pub mod io;
pub mod persist;
pub mod prepare;
pub mod read;
pub mod recipe;
pub mod rng;
pub mod side;
pub mod split;
pub mod store;
pub mod synth;
pub mod table;
pub mod vocab;

pub use error::{Error, Result};
pub use store::SequenceStore;
