//! Side tables (users, items, questions, lectures): keys mapped onto the
//! interaction vocabularies, categorical features encoded with vocabularies
//! of their own (`<table>.<column>`), one row per id in id order.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float32Array, Int64Array, LargeStringArray, ListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};

use crate::recipe::{Recipe, Source};
use crate::table::col;
use crate::vocab::Vocab;
use crate::{read, Error, Result};

/// Encoded side tables and the vocabularies of their features.
#[derive(Debug, Default)]
pub struct SideTables {
    /// Table name (`users`, `items`, `questions`, `lectures`) → encoded batch.
    pub tables: BTreeMap<String, RecordBatch>,
    /// Feature vocabularies, named `<table>.<column>`.
    pub vocabs: BTreeMap<String, Vocab>,
}

/// Reads every side table the recipe names and encodes it against `vocabs`
/// (`seq`, `item`, and `lecture` when present).
///
/// # Errors
/// Reader errors, or a key of the interactions that the side table lacks.
pub fn read_side_tables(recipe: &Recipe, vocabs: &BTreeMap<String, Vocab>) -> Result<SideTables> {
    let mut out = SideTables::default();
    let wanted: [(&str, &Option<Source>, &str, &str); 4] = [
        ("users", &recipe.users, "seq", "user"),
        ("items", &recipe.items, "item", "item"),
        ("questions", &recipe.questions, "item", "question"),
        ("lectures", &recipe.lectures, "lecture", "lecture"),
    ];
    for (name, source, key_vocab, noun) in wanted {
        let (Some(source), Some(vocab)) = (source, vocabs.get(key_vocab)) else {
            continue;
        };
        let batch = read::read_table(source)?;
        let (table, feature_vocabs) = encode_table(name, noun, &source.path, &batch, vocab)?;
        out.tables.insert(name.to_string(), table);
        out.vocabs.extend(feature_vocabs);
    }
    Ok(out)
}

fn encode_table(
    name: &str,
    noun: &str,
    path: &std::path::Path,
    batch: &RecordBatch,
    vocab: &Vocab,
) -> Result<(RecordBatch, BTreeMap<String, Vocab>)> {
    let key = batch
        .column_by_name(col::KEY)
        .ok_or_else(|| Error::File { path: path.to_path_buf(), message: "side table has no key column".into() })?;
    // Row of each id (id 1..=len); rows whose key the interactions never use are dropped.
    let mut row_of = vec![usize::MAX; vocab.n_ids()];
    for row in 0..key.len() {
        let k = key_text(key.as_ref(), row);
        if let Some(id) = k.as_deref().and_then(|k| vocab.id_str(k)) {
            row_of[id as usize] = row;
        }
    }
    if let Some(id) = (1..vocab.n_ids()).find(|&id| row_of[id] == usize::MAX) {
        let missing = (1..vocab.n_ids()).filter(|&id| row_of[id] == usize::MAX).count();
        return Err(Error::File {
            path: path.to_path_buf(),
            message: format!(
                "lacks {noun} {} that the interactions use ({missing} {noun}s missing in all)",
                vocab.raw(id as u32).unwrap_or_default()
            ),
        });
    }
    let rows: Vec<usize> = row_of[1..].to_vec();
    let mut fields = vec![Field::new("id", DataType::UInt32, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt32Array::from_iter_values(1..vocab.n_ids() as u32))];
    let mut vocabs = BTreeMap::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.name() == col::KEY {
            continue;
        }
        let vname = format!("{name}.{}", field.name());
        let encoded: ArrayRef = match array.data_type() {
            DataType::Float32 => {
                let a = array.as_any().downcast_ref::<Float32Array>().expect("type checked");
                Arc::new(Float32Array::from_iter(rows.iter().map(|&r| a.is_valid(r).then(|| a.value(r)))))
            }
            DataType::List(_) => {
                let a = array.as_any().downcast_ref::<ListArray>().expect("type checked");
                let v = Vocab::from_arrays(&[a.values().as_ref()])?;
                let ids = v.encode(a.values().as_ref(), &vname)?;
                let offs = a.value_offsets();
                let mut values = Vec::new();
                let mut lens = Vec::with_capacity(rows.len());
                for &r in &rows {
                    let (s, e) = (offs[r] as usize, offs[r + 1] as usize);
                    values.extend_from_slice(&ids[s..e]);
                    lens.push(e - s);
                }
                vocabs.insert(vname, v);
                let item = Arc::new(Field::new("item", DataType::UInt32, false));
                Arc::new(ListArray::new(
                    item,
                    OffsetBuffer::from_lengths(lens),
                    Arc::new(UInt32Array::from(values)),
                    None,
                ))
            }
            _ => {
                let picked: Vec<Option<String>> = rows.iter().map(|&r| key_text(array.as_ref(), r)).collect();
                let v = Vocab::from_strs(picked.iter().flatten());
                let ids: Vec<u32> =
                    picked.iter().map(|k| k.as_deref().and_then(|k| v.id_str(k)).unwrap_or(0)).collect();
                vocabs.insert(vname, v);
                Arc::new(UInt32Array::from(ids))
            }
        };
        fields.push(Field::new(field.name(), encoded.data_type().clone(), true));
        cols.push(encoded);
    }
    let table = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Error::Arrow { context: format!("encoding the {name} table"), source: e })?;
    Ok((table, vocabs))
}

fn key_text(a: &dyn Array, row: usize) -> Option<String> {
    if a.is_null(row) {
        return None;
    }
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<Int64Array>() {
        Some(x.value(row).to_string())
    } else if let Some(x) = any.downcast_ref::<StringArray>() {
        Some(x.value(row).to_owned())
    } else if let Some(x) = any.downcast_ref::<LargeStringArray>() {
        Some(x.value(row).to_owned())
    } else {
        arrow_cast_text(a, row)
    }
}

fn arrow_cast_text(a: &dyn Array, row: usize) -> Option<String> {
    use arrow_array::{Int32Array, Int8Array, UInt8Array};
    let any = a.as_any();
    any.downcast_ref::<Int32Array>()
        .map(|x| x.value(row).to_string())
        .or_else(|| any.downcast_ref::<Int8Array>().map(|x| x.value(row).to_string()))
        .or_else(|| any.downcast_ref::<UInt8Array>().map(|x| x.value(row).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_tokens_lists_and_floats_in_id_order() {
        let key: ArrayRef = Arc::new(Int64Array::from(vec![30, 10, 20, 99]));
        let gender: ArrayRef = Arc::new(StringArray::from(vec![Some("M"), Some("F"), None, Some("F")]));
        let age: ArrayRef = Arc::new(Float32Array::from(vec![3.0, 1.0, 2.0, 9.0]));
        let genres = {
            let values = Arc::new(StringArray::from(vec!["a", "b", "b", "c"]));
            let item = Arc::new(Field::new("item", DataType::Utf8, true));
            Arc::new(ListArray::new(item, OffsetBuffer::from_lengths([2, 1, 0, 1]), values, None)) as ArrayRef
        };
        let schema = Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("gender", DataType::Utf8, true),
            Field::new("age", DataType::Float32, true),
            Field::new("genres", genres.data_type().clone(), true),
        ]);
        let b = RecordBatch::try_new(Arc::new(schema), vec![key, gender, age, genres]).unwrap();
        let vocab = Vocab::Int(vec![10, 20, 30]);
        let (t, v) = encode_table("users", "user", std::path::Path::new("u"), &b, &vocab).unwrap();
        let ids = t.column(0).as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3]);
        let g = t.column(1).as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(g.values().to_vec(), vec![1, 0, 2]); // F, missing, M
        assert_eq!(v["users.gender"], Vocab::Str(vec!["F".into(), "M".into()]));
        let a = t.column(2).as_any().downcast_ref::<Float32Array>().unwrap();
        assert_eq!(a.values().to_vec(), vec![1.0, 2.0, 3.0]);
        let l = t.column(3).as_any().downcast_ref::<ListArray>().unwrap();
        let lens: Vec<usize> = (0..3).map(|i| l.value(i).len()).collect();
        assert_eq!(lens, vec![1, 0, 2]); // id1=key10:[b], id2=key20:[], id3=key30:[a,b]
    }

    #[test]
    fn a_key_missing_from_the_side_table_is_an_error() {
        let key: ArrayRef = Arc::new(Int64Array::from(vec![10]));
        let schema = Schema::new(vec![Field::new("key", DataType::Int64, false)]);
        let b = RecordBatch::try_new(Arc::new(schema), vec![key]).unwrap();
        let e = encode_table("users", "user", std::path::Path::new("u.user"), &b, &Vocab::Int(vec![10, 20]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("u.user") && e.contains("user 20"), "{e}");
    }
}
