//! A Riiid-schema parquet of any number of rows, streamed with bounded
//! memory, for the ingestion benchmark (100,000,000 rows).
//!
//! Learners are simulated in parallel (rayon) in chunks of about a million
//! rows; a producer thread hands finished chunks to the writer through a
//! channel of depth one, so at most about three chunks are alive at once,
//! whatever the row count. Learner `i` uses `Rng::fork(seed, i)`, so the
//! file does not depend on the thread count, and its first rows equal
//! the rows of [`KtConfig::generate`] with the same configuration. The last
//! learner is cut so that the file has exactly the requested rows.
//!
//! Columns take natural types: `row_id` Int64, `timestamp` Int64, `user_id`
//! Int32, `content_id` Int32, `content_type_id` Int8, `task_container_id`
//! Int32, `user_answer` Int8, `answered_correctly` Int8,
//! `prior_question_elapsed_time` Float32 (nullable),
//! `prior_question_had_explanation` Boolean (nullable). Snappy-compressed.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, Int8Array, RecordBatch};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;

use super::{simulate_learner, Content, KtConfig, KtRows};
use crate::io::write_atomic;
use crate::{Error, Result};

/// Rows per row group of [`write_riiid_parquet`].
pub const DEFAULT_ROW_GROUP_ROWS: usize = 1 << 20;

/// What [`write_riiid_parquet`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetSummary {
    /// Rows written (always the number requested).
    pub rows: u64,
    /// Learners with at least one row.
    pub learners: u64,
    /// Row groups in the file.
    pub row_groups: usize,
}

/// The arrow schema of the parquet file.
pub fn riiid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::Int64, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("user_id", DataType::Int32, false),
        Field::new("content_id", DataType::Int32, false),
        Field::new("content_type_id", DataType::Int8, false),
        Field::new("task_container_id", DataType::Int32, false),
        Field::new("user_answer", DataType::Int8, false),
        Field::new("answered_correctly", DataType::Int8, false),
        Field::new("prior_question_elapsed_time", DataType::Float32, true),
        Field::new("prior_question_had_explanation", DataType::Boolean, true),
    ]))
}

/// Writes exactly `rows` rows of the default configuration with `seed`
/// into `path`, in row groups of [`DEFAULT_ROW_GROUP_ROWS`].
///
/// # Errors
/// [`Error::Io`]/[`Error::Parquet`] on write failure (nothing is left at
/// `path`); [`Error::Invalid`] when user ids would overflow `i32`.
pub fn write_riiid_parquet(path: &Path, rows: u64, seed: u64) -> Result<ParquetSummary> {
    let cfg = KtConfig { seed, ..KtConfig::default() };
    write_riiid_parquet_with(path, rows, &cfg, DEFAULT_ROW_GROUP_ROWS)
}

/// [`write_riiid_parquet`] with an explicit configuration (its
/// `n_learners` is ignored: learners are added until `rows` is reached) and
/// row-group size.
///
/// # Errors
/// As [`write_riiid_parquet`], plus [`Error::Config`] for an invalid
/// configuration or a zero row-group size.
pub fn write_riiid_parquet_with(
    path: &Path,
    rows: u64,
    cfg: &KtConfig,
    row_group_rows: usize,
) -> Result<ParquetSummary> {
    let content = cfg.content()?;
    if row_group_rows == 0 {
        return Err(Error::config("<arguments>", "row_group_rows", "found 0, expected at least 1"));
    }
    let schema = riiid_schema();
    // unique or nearly unique columns gain nothing from a dictionary.
    let props = ["row_id", "timestamp", "prior_question_elapsed_time"]
        .into_iter()
        .fold(WriterProperties::builder(), |b, c| b.set_column_dictionary_enabled(ColumnPath::from(c), false))
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut summary = ParquetSummary { rows, learners: 0, row_groups: 0 };
    write_atomic(path, |file| {
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| Error::parquet(path, e))?;
        let (tx, rx) = sync_channel::<Result<(KtRows, u64)>>(1);
        std::thread::scope(|scope| {
            scope.spawn(|| produce_chunks(cfg, &content, rows, tx));
            let mut next_row_id = 0i64;
            for chunk in rx {
                let (chunk, learners) = chunk?;
                summary.learners += learners;
                let n = chunk.len() as i64;
                let batch = record_batch(&schema, chunk, next_row_id)?;
                next_row_id += n;
                writer.write(&batch).map_err(|e| Error::parquet(path, e))?;
            }
            // dropping `rx` on an early return stops the producer at its next send.
            Ok::<(), Error>(())
        })?;
        let meta = writer.close().map_err(|e| Error::parquet(path, e))?;
        summary.row_groups = meta.row_groups().len();
        Ok(())
    })?;
    Ok(summary)
}

/// Simulates learners chunk by chunk until `rows` rows are sent, each chunk
/// with the number of learners in it that got rows.
fn produce_chunks(
    cfg: &KtConfig,
    content: &Content,
    rows: u64,
    tx: std::sync::mpsc::SyncSender<Result<(KtRows, u64)>>,
) {
    const TARGET_CHUNK_ROWS: f64 = (1 << 20) as f64;
    let (mut sent, mut next_learner, mut per_chunk) = (0u64, 0u64, 1024u64);
    while sent < rows {
        let learners = next_learner..next_learner + per_chunk;
        let parts: Result<Vec<KtRows>> = learners
            .clone()
            .into_par_iter()
            .map(|l| {
                let mut r = KtRows::default();
                simulate_learner(cfg, content, l, &mut r)?;
                Ok(r)
            })
            .collect();
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut chunk = KtRows::default();
        let mut used = 0u64;
        for part in &parts {
            let room = (rows - sent) as usize - chunk.len();
            if room == 0 {
                break;
            }
            chunk.extend_range(part, 0..part.len().min(room));
            used += 1;
        }
        let chunk_rows = chunk.len() as f64;
        sent += chunk.len() as u64;
        if tx.send(Ok((chunk, used))).is_err() {
            return;
        }
        next_learner = learners.end;
        per_chunk = ((TARGET_CHUNK_ROWS * per_chunk as f64 / chunk_rows.max(1.0)) as u64).clamp(16, 1 << 16);
    }
}

/// One record batch of `rows`, numbered from `first_row_id`.
fn record_batch(schema: &SchemaRef, rows: KtRows, first_row_id: i64) -> Result<RecordBatch> {
    let n = rows.len() as i64;
    let elapsed_valid = NullBuffer::from(rows.prior_elapsed.iter().map(|x| !x.is_nan()).collect::<Vec<bool>>());
    let explained: BooleanArray = rows.prior_explanation.iter().map(|&x| (x >= 0).then_some(x == 1)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(first_row_id..first_row_id + n)),
        Arc::new(Int64Array::from(rows.timestamp)),
        Arc::new(Int32Array::from(rows.user_id)),
        Arc::new(Int32Array::from(rows.content_id)),
        Arc::new(Int8Array::from(rows.content_type_id)),
        Arc::new(Int32Array::from(rows.task_container_id)),
        Arc::new(Int8Array::from(rows.user_answer)),
        Arc::new(Int8Array::from(rows.answered_correctly)),
        Arc::new(Float32Array::new(rows.prior_elapsed.into(), Some(elapsed_valid))),
        Arc::new(explained),
    ];
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|source| Error::Arrow { context: "building a riiid record batch".into(), source })
}
