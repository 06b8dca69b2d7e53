//! Synthetic generators.
