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
use crate::read::riiid::RiiidChecks;
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
        ColumnRef::Name(n) => names
            .iter()
            .position(|h| h == n)
            .ok_or_else(|| file_error(format!("column `{n}` not found; the file has: {}", listed()))),
        ColumnRef::Index(i) if *i < names.len() => Ok(*i),
        ColumnRef::Index(i) => {
            Err(file_error(format!("column index {i} is out of range: the file has {} columns", names.len())))
        }
    };
    let p = preset(src.format, src.table);
    let list_delim = src.list_delimiter.as_deref().unwrap_or(p.list_delimiter);
    let list_delim =
        Delimiter::new(list_delim).ok_or_else(|| file_error(format!("bad list delimiter `{list_delim}`")))?;
    let mut wanted = Vec::new();
    if src.table == Table::Interactions {
        for (role, r) in &p.role_columns(src).map_err(file_error)? {
            let conv = match role {
                Role::Seq => Conv::Key(src.seq_type),
                Role::Item => Conv::Key(src.item_type),
                Role::Time => Conv::Time(src.time_unit.unwrap_or(p.time_unit)),
                Role::Rating => Conv::Rating(src.rating_range),
                Role::Label => Conv::Label,
                Role::Kind => Conv::Kind,
                Role::Group => Conv::Group,
                Role::Elapsed => Conv::Elapsed,
                Role::Explained => Conv::Explained,
            };
            wanted.push(Wanted { name: role.name().to_owned(), source: find(r)?, conv });
        }
    } else {
        let key = p.key_column(src).map_err(file_error)?;
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
            return Err(file_error(format!(
                "column `{}` has type {t}, expected {expected} (for `{}`)",
                names[w.source], w.name
            )));
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

impl ParquetFile {
    /// The source column read as canonical column `name`.
    fn source_name(&self, name: &str) -> Option<&str> {
        self.wanted.iter().find(|w| w.name == name).map(|w| self.names[w.source].as_str())
    }
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
        Conv::Rating(_) | Conv::Elapsed | Conv::Float => DataType::Float32,
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
            units.extend((0..n).step_by(step).map(|start| Unit {
                file: fi,
                row_group,
                start,
                rows: step.min(n - start),
            }));
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
        let batch = batch.map_err(|source| Error::Arrow {
            context: format!("{}: decoding row group {}", path.display(), unit.row_group),
            source,
        })?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(file.wanted.len());
        for w in &file.wanted {
            let name = &file.names[w.source];
            let array = batch.column_by_name(name).ok_or_else(|| Error::File {
                path: path.clone(),
                message: format!("column `{name}` missing from a decoded batch"),
            })?;
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
    riiid: Option<RiiidChecks>,
}

impl ParquetBatches {
    /// Runs the Riiid checks on the batches of `unit` (in file order).
    fn check(&mut self, unit: Unit, batches: &[RecordBatch]) -> Result<()> {
        let Some(checks) = &mut self.riiid else { return Ok(()) };
        let file = &self.files[unit.file];
        let mut row = unit.start;
        for batch in batches {
            match checks.check(batch) {
                Ok(None) => {}
                Ok(Some(r)) => checks.note_first(&format!(": row group {}, row {}", unit.row_group, row + r)),
                Err(b) => {
                    let before: i64 =
                        file.metadata.metadata().row_groups()[..unit.row_group].iter().map(|g| g.num_rows()).sum();
                    let in_file = before + (row + b.row) as i64;
                    return Err(Error::ParquetValue {
                        path: file.path.clone(),
                        row_group: unit.row_group,
                        row: row + b.row,
                        name: file.source_name(col::TIME).unwrap_or("timestamp").to_owned(),
                        message: format!("{} (row {in_file} of the file)", b.message()),
                    });
                }
            }
            row += batch.num_rows();
        }
        Ok(())
    }
}

impl Iterator for ParquetBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            if self.done {
                return None;
            }
            if self.next >= self.units.len() {
                self.done = true;
                if let Some(checks) = &self.riiid {
                    checks.finish();
                }
                return None;
            }
            let end = (self.next + self.window).min(self.units.len());
            let files = &self.files;
            let decoded: Vec<Result<Vec<RecordBatch>>> =
                self.units[self.next..end].par_iter().map(|u| decode(&files[u.file], *u)).collect();
            let first = self.next;
            self.next = end;
            for (k, d) in decoded.into_iter().enumerate() {
                match d.and_then(|batches| self.check(self.units[first + k], &batches).map(|()| batches)) {
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

/// Canonical batches of an interactions parquet source, streamed, with the
/// Riiid checks run on each batch in file order when given.
pub(crate) fn read_interactions(src: &Source, options: &ReadOptions, riiid: Option<RiiidChecks>) -> Result<Batches> {
    let (files, units) = plan(src, options)?;
    if units.is_empty() {
        return Err(Error::File { path: src.path.clone(), message: "no rows".to_owned() });
    }
    let window = rayon::current_num_threads().max(1);
    Ok(Box::new(ParquetBatches { files, units, next: 0, window, pending: VecDeque::new(), done: false, riiid }))
}

/// A whole parquet side table as one batch.
pub(crate) fn read_table(src: &Source, options: &ReadOptions) -> Result<RecordBatch> {
    let (files, units) = plan(src, options)?;
    let batches: Vec<RecordBatch> =
        units.iter().map(|u| decode(&files[u.file], *u)).collect::<Result<Vec<_>>>()?.concat();
    if batches.is_empty() {
        return Err(Error::File { path: src.path.clone(), message: "no rows".to_owned() });
    }
    concat(&batches)
}

#[cfg(test)]
mod tests {
    use arrow_array::{
        BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, StringArray,
        TimestampMillisecondArray,
    };
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;
    use crate::read::testing::{bools, floats, int8s, ints, lists, strs, uint8s};
    use crate::read::{read_interactions_with, read_table_with};
    use crate::recipe::{Feature, FeatureKind, Format, KeyType, TimeUnit};

    fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, row_group_rows: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(row_group_rows)).build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    /// Riiid's train.csv columns in pandas-like narrow types, rows `from..to`.
    fn riiid_columns(from: i64, to: i64) -> Vec<(&'static str, ArrayRef)> {
        let r: Vec<i64> = (from..to).collect();
        vec![
            ("row_id", Arc::new(Int64Array::from(r.clone())) as ArrayRef),
            ("timestamp", Arc::new(Int64Array::from_iter_values(r.iter().map(|i| i * 1000)))),
            ("user_id", Arc::new(Int32Array::from_iter_values(r.iter().map(|i| (i / 4) as i32)))),
            ("content_id", Arc::new(Int16Array::from_iter_values(r.iter().map(|i| (100 + i) as i16)))),
            ("content_type_id", Arc::new(Int8Array::from_iter_values(r.iter().map(|i| i8::from(i % 5 == 4))))),
            ("task_container_id", Arc::new(Int16Array::from_iter_values(r.iter().map(|i| (i % 4) as i16)))),
            ("user_answer", Arc::new(Int8Array::from_iter_values(r.iter().map(|i| if i % 5 == 4 { -1 } else { 2 })))),
            (
                "answered_correctly",
                Arc::new(Int8Array::from_iter_values(r.iter().map(|i| if i % 5 == 4 { -1 } else { (i % 2) as i8 }))),
            ),
            (
                "prior_question_elapsed_time",
                Arc::new(r.iter().map(|i| (i % 4 != 0).then_some(*i as f32 * 10.0)).collect::<Float32Array>()),
            ),
            (
                "prior_question_had_explanation",
                Arc::new(r.iter().map(|i| (i % 4 != 0).then_some(i % 3 == 0)).collect::<BooleanArray>()),
            ),
        ]
    }

    fn small_units() -> ReadOptions {
        ReadOptions { parquet_unit_rows: 3, ..Default::default() }
    }

    fn riiid_source(path: &Path) -> Source {
        Source::new(Table::Interactions, path, Format::Riiid)
    }

    #[test]
    fn riiid_parquet_in_row_group_slices() {
        let path = crate::io::scratch_dir("parquet").join("train.parquet");
        write_parquet(&path, riiid_columns(0, 10), 4);
        for options in [ReadOptions::default(), small_units()] {
            let b: Vec<RecordBatch> =
                read_interactions_with(&riiid_source(&path), &options).unwrap().collect::<Result<_>>().unwrap();
            let r: Vec<i64> = (0..10).collect();
            assert_eq!(ints(&b, "seq"), r.iter().map(|i| i / 4).collect::<Vec<_>>());
            assert_eq!(ints(&b, "item"), r.iter().map(|i| 100 + i).collect::<Vec<_>>());
            assert_eq!(ints(&b, "time"), r.iter().map(|i| i * 1000).collect::<Vec<_>>());
            assert_eq!(uint8s(&b, "kind"), [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
            assert_eq!(int8s(&b, "label"), [0, 1, 0, 1, -1, 1, 0, 1, 0, -1]);
            assert_eq!(ints(&b, "group"), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
            assert_eq!(floats(&b, "elapsed")[..3], [None, Some(10.0), Some(20.0)]);
            assert_eq!(bools(&b, "explained")[..4], [None, Some(false), Some(false), Some(true)]);
            let schema = b[0].schema();
            assert_eq!(schema.field_with_name("seq").unwrap().data_type(), &DataType::Int64);
            assert_eq!(schema.field_with_name("kind").unwrap().data_type(), &DataType::UInt8);
        }
    }

    #[test]
    fn folders_are_read_recursively_in_path_order() {
        let dir = crate::io::scratch_dir("parquet-dir");
        write_parquet(&dir.join("part=b/part-00000.parquet"), riiid_columns(6, 10), 100);
        write_parquet(&dir.join("part=a/part-00001.parquet"), riiid_columns(3, 6), 2);
        write_parquet(&dir.join("part=a/part-00000.parquet"), riiid_columns(0, 3), 100);
        std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
        std::fs::write(dir.join("part=a/.part-00000.parquet.crc"), b"junk").unwrap();
        let b: Vec<RecordBatch> =
            read_interactions_with(&riiid_source(&dir), &small_units()).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(ints(&b, "item"), (100..110).collect::<Vec<i64>>());
        let empty = crate::io::scratch_dir("parquet-empty");
        let e = read_interactions_with(&riiid_source(&empty), &small_units()).err().unwrap().to_string();
        assert!(e.contains("folder holds no *.parquet file"), "{e}");
    }

    #[test]
    fn missing_column_is_named() {
        let path = crate::io::scratch_dir("parquet").join("train.parquet");
        let columns = riiid_columns(0, 4).into_iter().filter(|(n, _)| *n != "content_id").collect();
        write_parquet(&path, columns, 100);
        let e = read_interactions_with(&riiid_source(&path), &small_units()).err().unwrap().to_string();
        assert!(e.contains("column `content_id` not found; the file has: `row_id`, `timestamp`, `user_id`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let path = crate::io::scratch_dir("parquet").join("train.parquet");
        let mut columns = riiid_columns(0, 4);
        columns[7].1 = Arc::new(Float64Array::from(vec![1.0, 0.0, 1.0, 1.0]));
        write_parquet(&path, columns, 100);
        let e = read_interactions_with(&riiid_source(&path), &small_units()).err().unwrap().to_string();
        assert!(e.contains("column `answered_correctly` has type Float64, expected integers (for `label`)"), "{e}");
    }

    #[test]
    fn null_in_required_column_names_row_group_and_row() {
        let path = crate::io::scratch_dir("parquet").join("train.parquet");
        let mut columns = riiid_columns(0, 10);
        columns[2].1 = Arc::new((0..10).map(|i| (i != 5).then_some(i / 4)).collect::<Int32Array>());
        write_parquet(&path, columns, 4);
        for options in [ReadOptions::default(), small_units()] {
            let e = read_interactions_with(&riiid_source(&path), &options)
                .unwrap()
                .collect::<Result<Vec<_>>>()
                .unwrap_err();
            match e {
                Error::ParquetValue { path: p, row_group, row, name, message } => {
                    assert_eq!((p, row_group, row, name.as_str()), (path.clone(), 1, 1, "user_id"));
                    assert!(message.contains("null in a required column"));
                }
                other => panic!("expected a parquet value error, got {other}"),
            }
        }
    }

    /// Rows 4..8 are user 1 (bundles 0..4, row 4 a lecture); with row
    /// groups of 4 rows, row 7 is row group 1, row 3, and with units of 3
    /// rows it is decoded apart from row 6 before it.
    #[test]
    fn riiid_time_going_back_names_row_group_row_user_and_both_times() {
        let path = crate::io::scratch_dir("parquet").join("train.parquet");
        let mut columns = riiid_columns(0, 10);
        let times: Vec<i64> = (0..10).map(|i| if i == 7 { 5500 } else { i * 1000 }).collect();
        columns[1].1 = Arc::new(Int64Array::from(times));
        write_parquet(&path, columns, 4);
        for options in [ReadOptions::default(), small_units()] {
            let e = read_interactions_with(&riiid_source(&path), &options)
                .unwrap()
                .collect::<Result<Vec<_>>>()
                .unwrap_err();
            match e {
                Error::ParquetValue { path: p, row_group, row, name, message } => {
                    assert_eq!((p, row_group, row, name.as_str()), (path.clone(), 1, 3, "timestamp"));
                    assert_eq!(
                        message,
                        "user 1: timestamp 5500 is before the user's previous timestamp 6000; a learner's rows must \
                         not go back in time (row 7 of the file)"
                    );
                }
                other => panic!("expected a parquet value error, got {other}"),
            }
        }
        // The generic parquet format reads the same file without complaint.
        let mut generic = Source::new(Table::Interactions, &path, Format::Parquet);
        for (role, name) in [(Role::Seq, "user_id"), (Role::Item, "content_id"), (Role::Time, "timestamp")] {
            generic.columns.insert(role, ColumnRef::Name(name.into()));
        }
        let b: Vec<RecordBatch> =
            read_interactions_with(&generic, &small_units()).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(ints(&b, "time")[7], 5500);
    }

    /// Rows 6 and 7 are user 1's questions of bundles 2 and 3: an empty
    /// elapsed time there is unexpected (the first at row group 1, row 2),
    /// NaN counting as empty; rows 0, 4 and 8 open their learners' first
    /// bundles.
    #[test]
    fn riiid_unexpected_empty_elapsed_times_are_counted_by_row_group_and_row() {
        let path = crate::io::scratch_dir("parquet").join("train.parquet");
        let mut columns = riiid_columns(0, 10);
        let elapsed: Float32Array = (0..10)
            .map(|i| match i {
                6 => None,
                7 | 9 => Some(f32::NAN),
                i if i % 4 == 0 => None,
                i => Some(i as f32),
            })
            .collect();
        columns[8].1 = Arc::new(elapsed);
        write_parquet(&path, columns, 4);
        for options in [ReadOptions::default(), small_units()] {
            let (batches, report) = crate::read::read_interactions_reporting(&riiid_source(&path), &options).unwrap();
            assert_eq!(batches.collect::<Result<Vec<_>>>().unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 10);
            let r = report.riiid().unwrap();
            // Rows 6 and 7 (NaN) count; row 9 (user 2, bundle 1) is a lecture (9 % 5 == 4).
            assert_eq!(r.elapsed_missing_unexpected, 2);
            assert_eq!(r.elapsed_missing_unexpected_first, Some(format!("{}: row group 1, row 2", path.display())));
        }
    }

    #[test]
    fn generic_parquet_text_keys_timestamps_and_side_tables() {
        let dir = crate::io::scratch_dir("parquet-generic");
        let events = dir.join("events.parquet");
        write_parquet(
            &events,
            vec![
                ("user", Arc::new(StringArray::from(vec!["a", "a", "b"])) as ArrayRef),
                ("movie", Arc::new(Int64Array::from(vec![7, 8, 7]))),
                ("ts", Arc::new(TimestampMillisecondArray::from(vec![1000, 2000, 3000]))),
                ("stars", Arc::new(Float64Array::from(vec![4.5, 3.0, 5.0]))),
            ],
            2,
        );
        let mut src = Source::new(Table::Interactions, &events, Format::Parquet);
        for (role, name) in [(Role::Seq, "user"), (Role::Item, "movie"), (Role::Time, "ts"), (Role::Rating, "stars")] {
            src.columns.insert(role, ColumnRef::Name(name.into()));
        }
        src.item_type = Some(KeyType::Str);
        let b: Vec<RecordBatch> = read_interactions_with(&src, &small_units()).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(strs(&b, "seq"), [Some("a".to_owned()), Some("a".to_owned()), Some("b".to_owned())]);
        assert_eq!(strs(&b, "item"), [Some("7".to_owned()), Some("8".to_owned()), Some("7".to_owned())]);
        assert_eq!(ints(&b, "time"), [1000, 2000, 3000]);
        assert_eq!(floats(&b, "rating"), [Some(4.5), Some(3.0), Some(5.0)]);
        src.rating_range = Some([1.0, 4.5]);
        match read_interactions_with(&src, &small_units()).unwrap().collect::<Result<Vec<_>>>().unwrap_err() {
            Error::ParquetValue { row_group, row, name, message, .. } => {
                assert_eq!((row_group, row, name.as_str()), (1, 0, "stars"));
                assert!(message.contains("rating 5 is outside the declared rating_range [1, 4.5]"), "{message}");
            }
            other => panic!("expected a parquet value error, got {other}"),
        }
        src.rating_range = None;
        src.time_unit = Some(TimeUnit::S);
        src.columns.insert(Role::Time, ColumnRef::Index(1));
        let b: Vec<RecordBatch> = read_interactions_with(&src, &small_units()).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(ints(&b, "time"), [7000, 8000, 7000]);

        let questions = dir.join("questions.parquet");
        write_parquet(
            &questions,
            vec![
                ("question_id", Arc::new(Int32Array::from(vec![0, 1, 2])) as ArrayRef),
                ("bundle_id", Arc::new(Int32Array::from(vec![0, 1, 1]))),
                ("correct_answer", Arc::new(Int8Array::from(vec![0, 1, 3]))),
                ("part", Arc::new(Int8Array::from(vec![1, 1, 5]))),
                ("tags", Arc::new(StringArray::from(vec![Some("51 131"), Some(""), None]))),
            ],
            2,
        );
        let src = Source::new(Table::Questions, &questions, Format::Riiid);
        let t = [read_table_with(&src, &small_units()).unwrap()];
        assert_eq!(ints(&t, "key"), [0, 1, 2]);
        assert_eq!(strs(&t, "correct_answer"), [Some("0".to_owned()), Some("1".to_owned()), Some("3".to_owned())]);
        assert_eq!(lists(&t, "tags"), [vec!["51".to_owned(), "131".to_owned()], vec![], vec![]]);
        let mut src = Source::new(Table::Items, &questions, Format::Parquet);
        src.key = Some(ColumnRef::Name("question_id".into()));
        src.features = Some(vec![Feature { name: "part".into(), kind: Some(FeatureKind::Float) }]);
        let t = [read_table_with(&src, &small_units()).unwrap()];
        assert_eq!(floats(&t, "part"), [Some(1.0), Some(1.0), Some(5.0)]);
    }
}
