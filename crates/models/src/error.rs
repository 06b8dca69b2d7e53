//! The models crate's error: candle's, the data layer's, or a bad setting.

/// Error of a model, its training step or its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The data layer reported an error (evaluation loop, batches).
    #[error(transparent)]
    Data(#[from] seqrec_data::Error),
    /// A setting or input that cannot be used, with what was expected.
    #[error("{0}")]
    Invalid(String),
}

/// Result of the models crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
