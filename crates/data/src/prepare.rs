//! TODO(owner): prepare
