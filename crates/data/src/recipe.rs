//! TODO(owner): recipe
