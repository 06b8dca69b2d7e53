//! TODO(owner): features
