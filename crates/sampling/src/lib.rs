//! seqrec-sampling
