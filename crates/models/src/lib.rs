//! seqrec-models
