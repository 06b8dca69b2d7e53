//! TODO(owner): persist
