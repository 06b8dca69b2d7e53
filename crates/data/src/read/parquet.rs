//! Parquet sources: one file or a folder of `*.parquet` files (recursively,
//! in path order, as Spark writes partitioned output). Each row group is cut
//! into units of at most `ReadOptions::parquet_unit_rows` rows; a window of
//! units (one per rayon thread) is decoded in parallel and emitted in file
//! order, so memory stays at about a window's rows whatever the file size.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;

use crate::read::convert::{concat, convert, expects, Conv};
use crate::read::fields::Delimiter;
use crate::read::layout::preset;
use crate::read::ReadOptions;
use crate::recipe::{ColumnRef, FeatureKind, Role, Source, Table};
use crate::table::{col, Batches};
use crate::{Error, Result};

/// The parquet files of `path`: itself, or every `*.parquet` below it
/// (skipping names that start with `.` or `_`, such as `_SUCCESS`), sorted.
///
/// # Errors
/// [`Error::Io`] if `path` cannot be read, [`Error::File`] if a folder holds no parquet file.
pub(crate) fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
            let entry = entry.map_err(|e| Error::io(&folder, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                folders.push(p);
            } else if name.to_ascii_lowercase().ends_with(".parquet") {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::File { path: path.to_path_buf(), message: "folder holds no *.parquet file".to_owned() });
    }
    Ok(files)
}

/// One wanted column: output name, source column (top-level index), conversion.
#[derive(Debug, Clone)]
struct Wanted {
    name: String,
    source: usize,
    conv: Conv,
}

/// An opened parquet file and what to take from it.
#[derive(Debug)]
struct ParquetFile {
    path: PathBuf,
    metadata: ArrowReaderMetadata,
    mask: ProjectionMask,
    /// Source column names, by top-level index.
    names: Vec<String>,
    wanted: Vec<Wanted>,
    schema: SchemaRef,
}

fn kind_of(t: &DataType) -> FeatureKind {
    match t {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => FeatureKind::Float,
        DataType::List(_) | DataType::LargeList(_) => FeatureKind::TokenSeq,
        _ => FeatureKind::Token,
    }
}

fn open_file(src: &Source, path: &Path) -> Result<ParquetFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| Error::parquet(path, e))?;
    let fields = metadata.schema().fields().clone();
    let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
    let file_error = |message: String| Error::File { path: path.to_path_buf(), message };
    let listed = || names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let find = |r: &ColumnRef| match r {
        ColumnRef::Name(n) => names.iter().position(|h| h == n).ok_or_else(|| file_error(format!("column `{n}` not found; the file has: {}", listed()))),
        ColumnRef::Index(i) if *i < names.len() => Ok(*i),
        ColumnRef::Index(i) => Err(file_error(format!("column index {i} is out of range: the file has {} columns", names.len()))),
    };
    let p = preset(src.format, src.table);
    let list_delim = src.list_delimiter.as_deref().unwrap_or(p.list_delimiter);
    let list_delim = Delimiter::new(list_delim).ok_or_else(|| file_error(format!("bad list delimiter `{list_delim}`")))?;
    let mut wanted = Vec::new();
    if src.table == Table::Interactions {
        let mut columns: Vec<(Role, ColumnRef)> =
            p.columns.iter().filter(|(r, _)| !src.columns.contains_key(r)).map(|(r, n)| (*r, ColumnRef::Name(n.to_string()))).collect();
        columns.extend(src.columns.iter().map(|(r, c)| (*r, c.clone())));
        columns.sort_by_key(|(r, _)| *r);
        for role in [Role::Seq, Role::Item, Role::Time] {
            if !columns.iter().any(|(r, _)| *r == role) {
                return Err(file_error(format!("no column is mapped to the required role `{}`", role.name())));
            }
        }
        for (role, r) in &columns {
            let conv = match role {
                Role::Seq => Conv::Key(src.seq_type),
                Role::Item => Conv::Key(src.item_type),
                Role::Time => Conv::Time(src.time_unit.unwrap_or(p.time_unit)),
                Role::Rating => Conv::Rating,
                Role::Label => Conv::Label,
                Role::Kind => Conv::Kind,
                Role::Group => Conv::Group,
                Role::Elapsed => Conv::Elapsed,
                Role::Explained => Conv::Explained,
            };
            wanted.push(Wanted { name: role.name().to_owned(), source: find(r)?, conv });
        }
    } else {
        let key = src.key.clone().or_else(|| p.key.map(|k| ColumnRef::Name(k.to_owned())));
        let key = key.ok_or_else(|| file_error("no key column given".to_owned()))?;
        wanted.push(Wanted { name: col::KEY.to_owned(), source: find(&key)?, conv: Conv::Key(src.key_type) });
    }
    let requested: Vec<(String, Option<FeatureKind>)> = match &src.features {
        Some(fs) => fs.iter().map(|f| (f.name.clone(), f.kind)).collect(),
        None if src.table != Table::Interactions && p.features.is_empty() => {
            let key = wanted[0].source;
            names.iter().enumerate().filter(|(i, _)| *i != key).map(|(_, n)| (n.clone(), None)).collect()
        }
        None => p.features.iter().map(|(n, k)| (n.to_string(), Some(*k))).collect(),
    };
    for (name, kind) in requested {
        if wanted.iter().any(|w| w.name == name) || Role::ALL.iter().any(|r| r.name() == name) {
            return Err(file_error(format!("feature `{name}` clashes with a canonical column name")));
        }
        let source = find(&ColumnRef::Name(name.clone()))?;
        let conv = match kind.unwrap_or_else(|| kind_of(fields[source].data_type())) {
            FeatureKind::Token => Conv::Token,
            FeatureKind::Float => Conv::Float,
            FeatureKind::TokenSeq => Conv::TokenSeq(list_delim.clone()),
        };
        wanted.push(Wanted { name, source, conv });
    }
    for w in &wanted {
        let t = fields[w.source].data_type();
        if let Some(expected) = expects(&w.conv, t) {
            return Err(file_error(format!("column `{}` has type {t}, expected {expected} (for `{}`)", names[w.source], w.name)));
        }
    }
    let mask = ProjectionMask::roots(metadata.parquet_schema(), wanted.iter().map(|w| w.source));
    let schema = Arc::new(Schema::new(
        wanted
            .iter()
            .map(|w| {
                let t = output_type(&w.conv, fields[w.source].data_type());
                Field::new(&w.name, t, w.conv.nullable())
            })
            .collect::<Vec<_>>(),
    ));
    Ok(ParquetFile { path: path.to_path_buf(), metadata, mask, names, wanted, schema })
}

/// The canonical type `conv` makes of a column of type `t`.
fn output_type(conv: &Conv, t: &DataType) -> DataType {
    use crate::recipe::KeyType;
    let text = matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    match conv {
        Conv::Key(Some(KeyType::Int)) => DataType::Int64,
        Conv::Key(Some(KeyType::Str)) => DataType::Utf8,
        Conv::Key(None) if text => DataType::Utf8,
        Conv::Key(None) | Conv::Time(_) | Conv::Group => DataType::Int64,
        Conv::Rating | Conv::Elapsed | Conv::Float => DataType::Float32,
        Conv::Label => DataType::Int8,
        Conv::Kind => DataType::UInt8,
        Conv::Explained => DataType::Boolean,
        Conv::Token => DataType::Utf8,
        Conv::TokenSeq(_) => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
    }
}

/// Rows `start..start + rows` of one row group of one file.
#[derive(Debug, Clone, Copy)]
struct Unit {
    file: usize,
    row_group: usize,
    start: usize,
    rows: usize,
}

fn plan(src: &Source, options: &ReadOptions) -> Result<(Arc<Vec<ParquetFile>>, Vec<Unit>)> {
    let files: Vec<ParquetFile> = parquet_files(&src.path)?.iter().map(|p| open_file(src, p)).collect::<Result<_>>()?;
    let mut units = Vec::new();
    let step = options.parquet_unit_rows.max(1);
    for (fi, f) in files.iter().enumerate() {
        for (row_group, meta) in f.metadata.metadata().row_groups().iter().enumerate() {
            let n = usize::try_from(meta.num_rows()).unwrap_or(0);
            units.extend((0..n).step_by(step).map(|start| Unit { file: fi, row_group, start, rows: step.min(n - start) }));
        }
    }
    Ok((Arc::new(files), units))
}

fn decode(file: &ParquetFile, unit: Unit) -> Result<Vec<RecordBatch>> {
    let path = &file.path;
    let handle = File::open(path).map_err(|e| Error::io(path, e))?;
    let group_rows = usize::try_from(file.metadata.metadata().row_group(unit.row_group).num_rows()).unwrap_or(0);
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(handle, file.metadata.clone())
        .with_projection(file.mask.clone())
        .with_row_groups(vec![unit.row_group])
        .with_batch_size(unit.rows.clamp(1, 1 << 16));
    if unit.rows < group_rows {
        // Flat columns let the reader skip whole pages without decoding them.
        let mut selectors = vec![RowSelector::select(unit.rows)];
        if unit.start > 0 {
            selectors.insert(0, RowSelector::skip(unit.start));
        }
        builder = builder.with_row_selection(RowSelection::from(selectors));
    }
    let reader = builder.build().map_err(|e| Error::parquet(path, e))?;
    let mut out = Vec::new();
    let mut row = unit.start;
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow { context: format!("{}: decoding row group {}", path.display(), unit.row_group), source })?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(file.wanted.len());
        for w in &file.wanted {
            let name = &file.names[w.source];
            let array = batch.column_by_name(name).ok_or_else(|| Error::File { path: path.clone(), message: format!("column `{name}` missing from a decoded batch") })?;
            let converted = convert(&w.conv, array.as_ref()).map_err(|(r, message)| Error::ParquetValue {
                path: path.clone(),
                row_group: unit.row_group,
                row: row + r,
                name: name.clone(),
                message,
            })?;
            columns.push(converted);
        }
        row += batch.num_rows();
        let batch = RecordBatch::try_new(file.schema.clone(), columns)
            .map_err(|source| Error::Arrow { context: format!("{}: building a batch", path.display()), source })?;
        out.push(batch);
    }
    Ok(out)
}

struct ParquetBatches {
    files: Arc<Vec<ParquetFile>>,
    units: Vec<Unit>,
    next: usize,
    window: usize,
    pending: VecDeque<RecordBatch>,
    done: bool,
}

impl Iterator for ParquetBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            if self.done || self.next >= self.units.len() {
                return None;
            }
            let end = (self.next + self.window).min(self.units.len());
            let files = &self.files;
            let decoded: Vec<Result<Vec<RecordBatch>>> =
                self.units[self.next..end].par_iter().map(|u| decode(&files[u.file], *u)).collect();
            self.next = end;
            for d in decoded {
                match d {
                    Ok(batches) => self.pending.extend(batches.into_iter().filter(|b| b.num_rows() > 0)),
                    Err(e) => {
                        self.done = true;
                        self.pending.clear();
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}

/// Canonical batches of an interactions parquet source, streamed.
pub(crate) fn read_interactions(src: &Source, options: &ReadOptions) -> Result<Batches> {
    let (files, units) = plan(src, options)?;
    if units.is_empty() {
        return Err(Error::File { path: src.path.clone(), message: "no rows".to_owned() });
    }
    let window = rayon::current_num_threads().max(1);
    Ok(Box::new(ParquetBatches { files, units, next: 0, window, pending: VecDeque::new(), done: false }))
}

/// A whole parquet side table as one batch.
pub(crate) fn read_table(src: &Source, options: &ReadOptions) -> Result<RecordBatch> {
    let (files, units) = plan(src, options)?;
    let batches: Vec<RecordBatch> = units.iter().map(|u| decode(&files[u.file], *u)).collect::<Result<Vec<_>>>()?.concat();
    if batches.is_empty() {
        return Err(Error::File { path: src.path.clone(), message: "no rows".to_owned() });
    }
    concat(&batches)
}
