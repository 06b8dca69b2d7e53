//! seqrec-kernels
