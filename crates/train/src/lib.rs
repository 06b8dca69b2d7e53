//! seqrec-train
