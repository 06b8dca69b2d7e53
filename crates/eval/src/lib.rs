//! seqrec-eval
