//! `Vocab`: raw categorical value → dense `u32` id, 0 reserved for padding.
//!
//! Ids follow the sorted order of the raw values (numeric for integer keys,
//! byte order for strings), so a vocabulary depends only on the set of
//! values, never on input order or thread count.

use arrow_array::{Array, Int64Array, LargeStringArray, StringArray};
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The padding id: never a real value.
pub const PAD: u32 = 0;

/// Sorted distinct raw values; the id of `values[i]` is `i + 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "values", rename_all = "lowercase")]
pub enum Vocab {
    /// Integer keys.
    Int(Vec<i64>),
    /// String keys.
    Str(Vec<String>),
}

const CHUNK: usize = 1 << 16;

impl Vocab {
    /// A vocabulary of the distinct integers in `values`.
    pub fn from_ints(values: &[i64]) -> Self {
        Self::from_int_slices(&[values])
    }

    /// A vocabulary of the distinct integers in several slices, without joining them.
    pub fn from_int_slices(slices: &[&[i64]]) -> Self {
        let set = slices
            .par_iter()
            .flat_map(|s| s.par_chunks(CHUNK))
            .fold(FxHashSet::default, |mut s, c| {
                s.extend(c.iter().copied());
                s
            })
            .reduce(FxHashSet::default, |mut a, b| {
                if a.len() < b.len() {
                    return b.into_iter().chain(a).collect();
                }
                a.extend(b);
                a
            });
        let mut v: Vec<i64> = set.into_iter().collect();
        v.par_sort_unstable();
        Vocab::Int(v)
    }

    /// A vocabulary of the distinct strings in `values`.
    pub fn from_strs<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> Self {
        let set: FxHashSet<String> = values.into_iter().map(|s| s.as_ref().to_owned()).collect();
        let mut v: Vec<String> = set.into_iter().collect();
        v.sort_unstable();
        Vocab::Str(v)
    }

    /// A vocabulary of the distinct values of arrow arrays (`Int64`, `Utf8` or
    /// `LargeUtf8`; all of one kind). Nulls are not values and are skipped.
    ///
    /// # Errors
    /// [`Error::Invalid`] on another array type or mixed kinds.
    pub fn from_arrays(arrays: &[&dyn Array]) -> Result<Self> {
        if arrays.iter().all(|a| a.as_any().is::<Int64Array>()) {
            let ints: Vec<&Int64Array> =
                arrays.iter().map(|a| a.as_any().downcast_ref::<Int64Array>().expect("checked")).collect();
            if ints.iter().all(|a| a.null_count() == 0) {
                let slices: Vec<&[i64]> = ints.iter().map(|a| &a.values()[..]).collect();
                return Ok(Self::from_int_slices(&slices));
            }
            let all: Vec<i64> = ints.iter().flat_map(|a| a.iter().flatten()).collect();
            return Ok(Self::from_ints(&all));
        }
        let mut set = FxHashSet::default();
        for a in arrays {
            if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
                set.extend(s.iter().flatten().map(str::to_owned));
            } else if let Some(s) = a.as_any().downcast_ref::<LargeStringArray>() {
                set.extend(s.iter().flatten().map(str::to_owned));
            } else {
                return Err(Error::Invalid(format!(
                    "vocabulary keys must all be Int64 or all strings, got {}",
                    a.data_type()
                )));
            }
        }
        Ok(Self::from_strs(set))
    }

    /// Number of real ids (padding excluded).
    pub fn len(&self) -> usize {
        match self {
            Vocab::Int(v) => v.len(),
            Vocab::Str(v) => v.len(),
        }
    }

    /// True when there are no real ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of an embedding table over this vocabulary (`len() + 1`, padding included).
    pub fn n_ids(&self) -> usize {
        self.len() + 1
    }

    /// Id of an integer key.
    pub fn id_int(&self, key: i64) -> Option<u32> {
        match self {
            Vocab::Int(v) => v.binary_search(&key).ok().map(|i| i as u32 + 1),
            Vocab::Str(v) => v.binary_search_by(|s| s.as_str().cmp(&key.to_string())).ok().map(|i| i as u32 + 1),
        }
    }

    /// Id of a string key (integer vocabularies parse it).
    pub fn id_str(&self, key: &str) -> Option<u32> {
        match self {
            Vocab::Int(_) => key.trim().parse::<i64>().ok().and_then(|k| self.id_int(k)),
            Vocab::Str(v) => v.binary_search_by(|s| s.as_str().cmp(key)).ok().map(|i| i as u32 + 1),
        }
    }

    /// The raw value of `id`, as text; `None` for padding or out of range.
    pub fn raw(&self, id: u32) -> Option<String> {
        let i = (id as usize).checked_sub(1)?;
        match self {
            Vocab::Int(v) => v.get(i).map(i64::to_string),
            Vocab::Str(v) => v.get(i).cloned(),
        }
    }

    /// Encodes an arrow array of keys into ids, in parallel.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `what` and the first row whose key is null
    /// or not in the vocabulary, or an unsupported array type.
    pub fn encode(&self, array: &dyn Array, what: &str) -> Result<Vec<u32>> {
        let missing =
            |row: usize, key: String| Error::Invalid(format!("{what}: row {row}: key {key} is not in the vocabulary"));
        if array.null_count() > 0 {
            let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
            return Err(Error::Invalid(format!("{what}: row {row}: key is missing (null)")));
        }
        match (self, array.as_any().downcast_ref::<Int64Array>()) {
            (Vocab::Int(v), Some(a)) => {
                let map = IntKeyMap::new(v);
                encode_int_slices(&[a.values()], what, |_| &map)
            }
            _ => {
                let get = |i: usize| -> Option<String> {
                    let any = array.as_any();
                    if let Some(s) = any.downcast_ref::<StringArray>() {
                        Some(s.value(i).to_owned())
                    } else if let Some(s) = any.downcast_ref::<LargeStringArray>() {
                        Some(s.value(i).to_owned())
                    } else {
                        any.downcast_ref::<Int64Array>().map(|a| a.value(i).to_string())
                    }
                };
                (0..array.len())
                    .map(|i| {
                        let key = get(i).ok_or_else(|| {
                            Error::Invalid(format!("{what}: unsupported key type {}", array.data_type()))
                        })?;
                        self.id_str(&key).ok_or_else(|| missing(i, key))
                    })
                    .collect()
            }
        }
    }
}

/// Integer key → id lookup: a dense table when the key range is small
/// (ids of items, questions), a hash map otherwise (user ids).
#[derive(Debug, Clone)]
pub struct IntKeyMap {
    min: i64,
    dense: Vec<u32>,
    hash: FxHashMap<i64, u32>,
}

impl IntKeyMap {
    /// The lookup for sorted distinct `values` (ids `1..=len`).
    pub fn new(values: &[i64]) -> Self {
        let (min, max) = (values.first().copied().unwrap_or(0), values.last().copied().unwrap_or(0));
        let span = max.wrapping_sub(min) as u64;
        if !values.is_empty() && span < (values.len() as u64 * 8).max(1 << 16) {
            let mut dense = vec![PAD; span as usize + 1];
            for (i, &v) in values.iter().enumerate() {
                dense[(v - min) as usize] = i as u32 + 1;
            }
            return IntKeyMap { min, dense, hash: FxHashMap::default() };
        }
        IntKeyMap { min, dense: Vec::new(), hash: values.iter().enumerate().map(|(i, &k)| (k, i as u32 + 1)).collect() }
    }

    /// Id of `key`, if it is in the vocabulary.
    #[inline]
    pub fn get(&self, key: i64) -> Option<u32> {
        if self.dense.is_empty() {
            return self.hash.get(&key).copied();
        }
        let off = key.wrapping_sub(self.min) as u64;
        self.dense.get(off as usize).copied().filter(|&id| id != PAD && off < self.dense.len() as u64)
    }
}

/// Encodes integer keys given as several slices (e.g. one per record batch)
/// into one id vector, in parallel. `map_of(i)` picks the lookup for the
/// key at global row `i` (lectures and questions use different vocabularies).
///
/// # Errors
/// [`Error::Invalid`] naming `what` and the first row whose key is unknown.
pub fn encode_int_slices<'m>(
    slices: &[&[i64]],
    what: &str,
    map_of: impl Fn(usize) -> &'m IntKeyMap + Sync,
) -> Result<Vec<u32>> {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut out = vec![PAD; total];
    // Pair every chunk of every slice with its output chunk and global start row.
    let mut jobs: Vec<(usize, &[i64], &mut [u32])> = Vec::new();
    let mut rest: &mut [u32] = &mut out;
    let mut start = 0usize;
    for s in slices {
        let (mine, tail) = rest.split_at_mut(s.len());
        rest = tail;
        for (j, (k, o)) in s.chunks(CHUNK).zip(mine.chunks_mut(CHUNK)).enumerate() {
            jobs.push((start + j * CHUNK, k, o));
        }
        start += s.len();
    }
    jobs.into_par_iter().try_for_each(|(first, keys, out)| {
        // Keys come in runs (events grouped by user): remember the last one.
        let (mut last_key, mut last_id, mut last_map) = (None, PAD, std::ptr::null::<IntKeyMap>());
        for (j, (&k, o)) in keys.iter().zip(out.iter_mut()).enumerate() {
            let map = map_of(first + j);
            if last_key == Some(k) && std::ptr::eq(map, last_map) {
                *o = last_id;
                continue;
            }
            let id = map.get(k).ok_or_else(|| {
                Error::Invalid(format!("{what}: row {}: key {k} is not in the vocabulary", first + j))
            })?;
            (last_key, last_id, last_map) = (Some(k), id, map);
            *o = id;
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ids_follow_sorted_values_and_reserve_zero() {
        let v = Vocab::from_ints(&[30, 10, 20, 10, 30]);
        assert_eq!(v, Vocab::Int(vec![10, 20, 30]));
        assert_eq!(v.id_int(10), Some(1));
        assert_eq!(v.id_int(30), Some(3));
        assert_eq!(v.id_int(15), None);
        assert_eq!(v.n_ids(), 4);
        assert_eq!(v.raw(0), None);
        assert_eq!(v.raw(2).as_deref(), Some("20"));
    }

    #[test]
    fn encode_int_and_string_arrays() {
        let a: Arc<dyn Array> = Arc::new(Int64Array::from(vec![5, -1, 5, 7]));
        let v = Vocab::from_arrays(&[a.as_ref()]).unwrap();
        assert_eq!(v.encode(a.as_ref(), "item").unwrap(), vec![2, 1, 2, 3]);
        let s = StringArray::from(vec!["b", "a", "b"]);
        let vs = Vocab::from_arrays(&[&s]).unwrap();
        assert_eq!(vs.encode(&s, "seq").unwrap(), vec![2, 1, 2]);
        let other = StringArray::from(vec!["c"]);
        let err = vs.encode(&other, "seq").unwrap_err().to_string();
        assert!(err.contains("row 0") && err.contains("c"), "{err}");
    }

    #[test]
    fn vocab_round_trips_through_json() {
        let v = Vocab::from_strs(["x", "y"]);
        let j = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Vocab>(&j).unwrap(), v);
    }
}
