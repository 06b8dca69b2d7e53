//! Errors of the trainer: each names the file, key or run it is about.

use std::path::PathBuf;

/// Error of a training, evaluation or recommendation run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config file that does not parse or holds a bad value.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key (and for parse errors line and column).
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A model or tensor error.
    #[error(transparent)]
    Model(#[from] seqrec_models::ModelError),
    /// A data error (dataset, vocabulary, batches).
    #[error(transparent)]
    Data(#[from] seqrec_data::Error),
    /// Anything else that cannot be used, with what was expected.
    #[error("{0}")]
    Invalid(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Model(e.into())
    }
}

/// Result of the trainer.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Wraps an I/O error with its path.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
