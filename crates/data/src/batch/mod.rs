//! Batchers.
