//! A prepared dataset on disk: a directory of parquet files plus
//! `dataset.json`, written atomically (a temporary sibling directory renamed
//! into place). Layout in `docs/data-format.md`.
//!
//! Events are stored in `SequenceStore` order (sequence id ascending, time
//! ascending within a sequence), sharded into `events/part-NNNNN.parquet`
//! files that are written and read in parallel. CSR offsets are not stored:
//! they are the run boundaries of the `seq` column.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float32Array, Int64Array, Int8Array, RecordBatch, RecordBatchReader, StringArray, UInt32Array, UInt8Array,
};
use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::split::Part;
use crate::store::SequenceStore;
use crate::vocab::Vocab;
use crate::{Error, Result};

/// Version of the on-disk layout; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// Events per `events/part-*.parquet` file.
pub const EVENTS_PER_PART: usize = 1 << 22;

const ROW_GROUP: usize = 1 << 20;

/// The events of a prepared dataset with their split parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreparedEvents {
    /// Grouped, filtered events.
    pub store: SequenceStore,
    /// Split part of each event, aligned with `store`.
    pub parts: Vec<Part>,
}

/// Event column names in `events/*.parquet`: the canonical role names of
/// [`crate::table::col`] (keys now encoded as ids), plus the split part and
/// the normalised gap.
pub mod event_col {
    pub use crate::table::col::{ELAPSED, EXPLAINED, GROUP, ITEM, KIND, LABEL, RATING, SEQ, TIME};
    /// Split part, 0 train / 1 valid / 2 test (u8).
    pub const PART: &str = "part";
    /// Normalised gap (f32).
    pub const GAP: &str = "gap";
}

fn part_from_u8(v: u8) -> Option<Part> {
    match v {
        0 => Some(Part::Train),
        1 => Some(Part::Valid),
        2 => Some(Part::Test),
        _ => None,
    }
}

/// Writes the events of `prepared` as `dir/events/part-*.parquet`, in parallel.
///
/// # Errors
/// I/O and parquet errors, naming the file.
pub fn write_events(dir: &Path, prepared: &PreparedEvents) -> Result<Vec<String>> {
    let store = &prepared.store;
    let events_dir = dir.join("events");
    fs::create_dir_all(&events_dir).map_err(|e| Error::io(&events_dir, e))?;
    // Cut shards at sequence boundaries so every sequence lives in one file.
    let mut cuts = vec![0usize];
    for s in 0..store.n_seq() {
        if store.offsets[s + 1] - cuts[cuts.len() - 1] >= EVENTS_PER_PART {
            cuts.push(store.offsets[s + 1]);
        }
    }
    if *cuts.last().unwrap_or(&0) != store.n_events() || cuts.len() == 1 {
        cuts.push(store.n_events());
    }
    let seq_of_event = seq_column(store);
    let names: Vec<String> = (0..cuts.len() - 1).map(|i| format!("events/part-{i:05}.parquet")).collect();
    names.par_iter().enumerate().try_for_each(|(i, name)| {
        let r = cuts[i]..cuts[i + 1];
        let batch = events_batch(store, &prepared.parts, &seq_of_event, r)?;
        write_parquet(&dir.join(name), &batch)
    })?;
    Ok(names)
}

fn seq_column(store: &SequenceStore) -> Vec<u32> {
    let mut out = vec![0u32; store.n_events()];
    for s in 0..store.n_seq() {
        out[store.range(s)].fill(store.seq_ids[s]);
    }
    out
}

fn events_batch(store: &SequenceStore, parts: &[Part], seq: &[u32], r: std::ops::Range<usize>) -> Result<RecordBatch> {
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        (event_col::SEQ, Arc::new(UInt32Array::from(seq[r.clone()].to_vec()))),
        (event_col::ITEM, Arc::new(UInt32Array::from(store.items[r.clone()].to_vec()))),
        (event_col::TIME, Arc::new(Int64Array::from(store.times[r.clone()].to_vec()))),
        (event_col::PART, Arc::new(UInt8Array::from(parts[r.clone()].iter().map(|&p| p as u8).collect::<Vec<_>>()))),
    ];
    if let Some(v) = &store.ratings {
        cols.push((event_col::RATING, Arc::new(Float32Array::from(v[r.clone()].to_vec()))));
    }
    if let Some(v) = &store.labels {
        cols.push((event_col::LABEL, Arc::new(Int8Array::from(v[r.clone()].to_vec()))));
    }
    if let Some(v) = &store.kinds {
        cols.push((event_col::KIND, Arc::new(UInt8Array::from(v[r.clone()].to_vec()))));
    }
    if let Some(v) = &store.groups {
        cols.push((event_col::GROUP, Arc::new(Int64Array::from(v[r.clone()].to_vec()))));
    }
    if let Some(v) = &store.elapsed {
        cols.push((event_col::ELAPSED, Arc::new(Float32Array::from(v[r.clone()].to_vec()))));
    }
    if let Some(v) = &store.explained {
        cols.push((event_col::EXPLAINED, Arc::new(Int8Array::from(v[r.clone()].to_vec()))));
    }
    if let Some(v) = &store.gaps {
        cols.push((event_col::GAP, Arc::new(Float32Array::from(v[r.clone()].to_vec()))));
    }
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), false)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, a)| a).collect())
        .map_err(|e| Error::Arrow { context: "building the events batch".into(), source: e })
}

/// Writes one record batch as a parquet file (atomically).
///
/// # Errors
/// I/O and parquet errors naming `path`.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let mut props =
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_row_count(Some(ROW_GROUP));
    // Dictionaries pay off on ids and flags; on times, gaps and durations
    // they only cost a hash per value before falling back to plain.
    for name in [event_col::TIME, event_col::GAP, event_col::ELAPSED, event_col::GROUP] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    let props = props.build();
    crate::io::write_atomic(path, |f| {
        let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props)).map_err(|e| Error::parquet(path, e))?;
        w.write(batch).map_err(|e| Error::parquet(path, e))?;
        w.close().map_err(|e| Error::parquet(path, e))?;
        Ok(())
    })
}

/// Reads every row of a parquet file into one record batch.
///
/// # Errors
/// I/O and parquet errors naming `path`.
pub fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| Error::parquet(path, e))?
        .with_batch_size(ROW_GROUP)
        .build()
        .map_err(|e| Error::parquet(path, e))?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Arrow { context: format!("reading {}", path.display()), source: e })?;
    arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| Error::Arrow { context: format!("reading {}", path.display()), source: e })
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<Option<&'a T>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => c.as_any().downcast_ref::<T>().map(Some).ok_or_else(|| Error::File {
            path: path.to_path_buf(),
            message: format!("column `{name}` has type {}, not the one this version writes", c.data_type()),
        }),
    }
}

/// Reads `dir/events/*` (the names listed in `files`) back into a store and parts.
///
/// # Errors
/// I/O, parquet, missing columns, or data that breaks the store's invariants.
pub fn read_events(dir: &Path, files: &[String]) -> Result<PreparedEvents> {
    let batches: Vec<(PathBuf, RecordBatch)> = files
        .par_iter()
        .map(|f| {
            let p = dir.join(f);
            read_parquet(&p).map(|b| (p, b))
        })
        .collect::<Result<_>>()?;
    let mut out = PreparedEvents::default();
    let store = &mut out.store;
    store.offsets.push(0);
    let mut prev_seq: Option<u32> = None;
    for (path, b) in &batches {
        let need = |name: &str| -> Result<()> {
            if b.column_by_name(name).is_none() {
                return Err(Error::File { path: path.clone(), message: format!("missing column `{name}`") });
            }
            Ok(())
        };
        for n in [event_col::SEQ, event_col::ITEM, event_col::TIME, event_col::PART] {
            need(n)?;
        }
        let seq = column::<UInt32Array>(b, event_col::SEQ, path)?.expect("checked");
        let base = store.items.len();
        for (i, &s) in seq.values().iter().enumerate() {
            if prev_seq != Some(s) {
                if prev_seq.is_some() {
                    store.offsets.push(base + i);
                }
                store.seq_ids.push(s);
                prev_seq = Some(s);
            }
        }
        store.items.extend_from_slice(column::<UInt32Array>(b, event_col::ITEM, path)?.expect("checked").values());
        store.times.extend_from_slice(column::<Int64Array>(b, event_col::TIME, path)?.expect("checked").values());
        for (row, &v) in column::<UInt8Array>(b, event_col::PART, path)?.expect("checked").values().iter().enumerate() {
            out.parts.push(part_from_u8(v).ok_or_else(|| Error::ParquetValue {
                path: path.clone(),
                row_group: 0,
                row,
                name: event_col::PART.into(),
                message: format!("split part {v}, expected 0, 1 or 2"),
            })?);
        }
        macro_rules! opt {
            ($field:ident, $name:expr, $t:ty) => {
                if let Some(a) = column::<$t>(b, $name, path)? {
                    store.$field.get_or_insert_with(Vec::new).extend_from_slice(a.values());
                }
            };
        }
        opt!(ratings, event_col::RATING, Float32Array);
        opt!(labels, event_col::LABEL, Int8Array);
        opt!(kinds, event_col::KIND, UInt8Array);
        opt!(groups, event_col::GROUP, Int64Array);
        opt!(elapsed, event_col::ELAPSED, Float32Array);
        opt!(explained, event_col::EXPLAINED, Int8Array);
        opt!(gaps, event_col::GAP, Float32Array);
    }
    if !store.items.is_empty() {
        store.offsets.push(store.items.len());
    }
    store.validate()?;
    Ok(out)
}

/// Writes a vocabulary as `path` (parquet, one column `value`, row i = id i + 1).
///
/// # Errors
/// I/O and parquet errors naming `path`.
pub fn write_vocab(path: &Path, vocab: &Vocab) -> Result<()> {
    let array: ArrayRef = match vocab {
        Vocab::Int(v) => Arc::new(Int64Array::from(v.clone())),
        Vocab::Str(v) => Arc::new(StringArray::from(v.clone())),
    };
    let schema = Schema::new(vec![Field::new("value", array.data_type().clone(), false)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![array])
        .map_err(|e| Error::Arrow { context: "building a vocabulary batch".into(), source: e })?;
    write_parquet(path, &batch)
}

/// Reads a vocabulary written by [`write_vocab`].
///
/// # Errors
/// I/O and parquet errors, or a file whose values are not sorted and distinct.
pub fn read_vocab(path: &Path) -> Result<Vocab> {
    let b = read_parquet(path)?;
    let col = b
        .column_by_name("value")
        .ok_or_else(|| Error::File { path: path.to_path_buf(), message: "missing column `value`".into() })?;
    let v = if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
        let v = a.values().to_vec();
        if v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::File {
                path: path.into(),
                message: "vocabulary values are not sorted and distinct".into(),
            });
        }
        Vocab::Int(v)
    } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        let v: Vec<String> = a.iter().map(|s| s.unwrap_or_default().to_owned()).collect();
        if v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::File {
                path: path.into(),
                message: "vocabulary values are not sorted and distinct".into(),
            });
        }
        Vocab::Str(v)
    } else {
        return Err(Error::File { path: path.into(), message: format!("vocabulary of type {}", col.data_type()) });
    };
    Ok(v)
}

/// Summary counts stored in `dataset.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Events kept.
    pub events: usize,
    /// Sequences kept.
    pub sequences: usize,
    /// Distinct items among the kept events (of kind item).
    pub items: usize,
    /// Events per split part: train, valid, test.
    pub parts: [usize; 3],
}

impl Counts {
    /// Counts of `prepared`.
    pub fn of(prepared: &PreparedEvents) -> Self {
        let s = &prepared.store;
        let mut seen = vec![false; s.items.iter().copied().max().unwrap_or(0) as usize + 1];
        for (i, &it) in s.items.iter().enumerate() {
            let is_item = s.kinds.as_ref().is_none_or(|k| k[i] == crate::table::KIND_ITEM);
            if is_item {
                seen[it as usize] = true;
            }
        }
        let mut parts = [0usize; 3];
        for &p in &prepared.parts {
            parts[p as usize] += 1;
        }
        Counts { events: s.n_events(), sequences: s.n_seq(), items: seen.iter().filter(|&&b| b).count(), parts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::DataType;

    fn sample() -> PreparedEvents {
        let store = SequenceStore {
            offsets: vec![0, 3, 5],
            seq_ids: vec![2, 7],
            items: vec![1, 2, 1, 3, 3],
            times: vec![10, 20, 20, 5, 9],
            ratings: Some(vec![1.0, 2.0, 3.0, 4.0, 5.0]),
            gaps: Some(vec![0.0, 0.5, -0.5, 0.0, 1.0]),
            ..Default::default()
        };
        PreparedEvents { store, parts: vec![Part::Train, Part::Valid, Part::Test, Part::Train, Part::Test] }
    }

    #[test]
    fn events_round_trip() {
        let d = crate::io::scratch_dir("persist");
        let p = sample();
        let files = write_events(&d, &p).unwrap();
        assert_eq!(files, vec!["events/part-00000.parquet".to_string()]);
        let back = read_events(&d, &files).unwrap();
        assert_eq!(back, p);
        assert_eq!(Counts::of(&back), Counts { events: 5, sequences: 2, items: 3, parts: [2, 1, 2] });
    }

    #[test]
    fn vocab_round_trip_and_corrupt_vocab_rejected() {
        let d = crate::io::scratch_dir("persist-vocab");
        for v in [Vocab::Int(vec![-3, 5, 9]), Vocab::Str(vec!["a".into(), "b".into()])] {
            let p = d.join("v.parquet");
            write_vocab(&p, &v).unwrap();
            assert_eq!(read_vocab(&p).unwrap(), v);
        }
        let p = d.join("bad.parquet");
        write_vocab(&p, &Vocab::Int(vec![5, 3])).unwrap();
        let e = read_vocab(&p).unwrap_err().to_string();
        assert!(e.contains("bad.parquet") && e.contains("sorted"), "{e}");
    }

    #[test]
    fn missing_column_is_named() {
        let d = crate::io::scratch_dir("persist-missing");
        fs::create_dir_all(d.join("events")).unwrap();
        let schema = Schema::new(vec![Field::new("seq", DataType::UInt32, false)]);
        let b = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(UInt32Array::from(vec![1u32]))]).unwrap();
        write_parquet(&d.join("events/part-00000.parquet"), &b).unwrap();
        let e = read_events(&d, &["events/part-00000.parquet".into()]).unwrap_err().to_string();
        assert!(e.contains("missing column `item`") && e.contains("part-00000"), "{e}");
    }
}
