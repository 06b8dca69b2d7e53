//! seqrec-models

pub mod loss;
