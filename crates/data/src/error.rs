//! The one error type of `seqrec-data`: every variant names where the bad
//! input is (file and line/column, parquet row group and row, or config key)
//! and what was expected.

use std::path::PathBuf;

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A text file is malformed at a known line and column.
    #[error("{}:{line}:{column}: column `{name}`: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// 1-based column (field) number.
        column: usize,
        /// The column's name (from the header or the format's layout).
        name: String,
        /// What was found and what was expected.
        message: String,
    },
    /// A text file is malformed as a whole (empty, wrong header, ...).
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A parquet file holds a bad value at a known row group and row.
    #[error("{}: row group {row_group}, row {row}: column `{name}`: {message}", path.display())]
    ParquetValue {
        /// The parquet file.
        path: PathBuf,
        /// 0-based row group.
        row_group: usize,
        /// 0-based row inside the row group.
        row: usize,
        /// The column's name.
        name: String,
        /// What was found and what was expected.
        message: String,
    },
    /// A recipe or configuration value is wrong.
    #[error("{}: key `{key}`: {message}", path.display())]
    Config {
        /// The recipe or configuration file (or `<arguments>`).
        path: PathBuf,
        /// The offending key, dotted (`split.kind`).
        key: String,
        /// What was expected.
        message: String,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A parquet error on a named file.
    #[error("{}: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An arrow error (schema or cast) with context.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// Data that is well-formed but unusable (no events left after filtering, ...).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A parquet error on `path`.
    pub fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet { path: path.into(), source }
    }

    /// A configuration error on `key` of `path`.
    pub fn config(path: impl Into<PathBuf>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), key: key.into(), message: message.into() }
    }
}
