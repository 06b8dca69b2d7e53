//! Checks on Riiid interactions made while they are read, in one pass over
//! each decoded batch in input order (no allocation per row):
//!
//! - time must not go back within a learner: a row whose `timestamp` is
//!   below the previous row of the same `user_id` is an error (rows of one
//!   learner may be interleaved with other learners' rows; the last time of
//!   every learner is kept);
//! - `prior_question_elapsed_time` is empty in Riiid only on lectures and on
//!   the questions of a learner's first question bundle (the rows sharing the
//!   `task_container_id` of the learner's first question, until a question of
//!   another bundle comes). Empty elsewhere, it is counted and kept as
//!   missing (NaN), and the first such row is named in a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::table::{col, KIND_ITEM};

/// What reading (and preparing) a Riiid source counted without refusing
/// it; `dataset.json` holds it as `riiid`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiiidReport {
    /// Questions used by the interactions (as read, before filtering) whose
    /// `tags` are empty; `None` without a questions table with `tags`.
    pub questions_without_tags: Option<usize>,
    /// Question rows outside the learner's first question bundle with an
    /// empty `prior_question_elapsed_time` (kept as missing).
    pub elapsed_missing_unexpected: u64,
    /// Where the first of them is: `path:line` (text, the header is line 1)
    /// or `path: row group G, row R` (parquet, both 0-based).
    pub elapsed_missing_unexpected_first: Option<String>,
}

/// A learner's time going back: the row (within its batch), the user and both times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backwards {
    /// 0-based row within the checked batch.
    pub(crate) row: usize,
    /// The learner, as written in the input.
    pub(crate) user: String,
    /// The row's time.
    pub(crate) time: i64,
    /// The learner's previous time.
    pub(crate) previous: i64,
}

impl Backwards {
    /// The error message (the caller names file, line or row, and column).
    pub(crate) fn message(&self) -> String {
        format!(
            "user {}: timestamp {} is before the user's previous timestamp {}; a learner's rows must not go back \
             in time",
            self.user, self.time, self.previous
        )
    }
}

/// Where a learner is in its first question bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bundle {
    /// No question yet (only lectures, or nothing).
    NoQuestion,
    /// In the first question bundle, this `task_container_id`.
    First(i64),
    /// Past it.
    Later,
}

#[derive(Debug, Clone, Copy)]
struct Learner {
    last_time: i64,
    bundle: Bundle,
}

const NEW: Learner = Learner { last_time: i64::MIN, bundle: Bundle::NoQuestion };

/// The learner of the previous row, kept out of the map (rows of a learner
/// usually come together, so the map is touched once per learner change).
enum Current {
    None,
    Int(i64, Learner),
    Str(String, Learner),
}

/// The columns the checks read, of one batch.
struct Cols<'a> {
    time: &'a [i64],
    /// `kind` and `group`.
    bundles: Option<(&'a [u8], &'a [i64])>,
    /// Bit `i % 64` of word `i / 64`: row `i` is a question with an empty
    /// elapsed time (empty when `elapsed` has no nulls).
    empty_questions: Vec<u64>,
}

/// The `empty_questions` mask of a batch (64 rows per word, no branches).
fn empty_questions(kinds: &[u8], nulls: &arrow_buffer::NullBuffer) -> Vec<u64> {
    let valid = nulls.inner().bit_chunks();
    kinds
        .chunks(64)
        .zip(valid.iter_padded())
        .map(|(ks, v)| {
            let items = ks.iter().enumerate().fold(0u64, |m, (b, &k)| m | (u64::from(k == KIND_ITEM) << b));
            items & !v
        })
        .collect()
}

/// How many bits of `mask` are set in `rows`, and the first of them.
fn set_bits(mask: &[u64], rows: std::ops::Range<usize>) -> (u64, Option<usize>) {
    if mask.is_empty() || rows.is_empty() {
        return (0, None);
    }
    let (mut n, mut first) = (0u64, None);
    let words = rows.start / 64..(rows.end - 1) / 64 + 1;
    for (w, &word) in mask[words.clone()].iter().enumerate().map(|(k, m)| (words.start + k, m)) {
        let lo = rows.start.saturating_sub(w * 64).min(64);
        let hi = (rows.end - w * 64).min(64);
        let keep = (u64::MAX >> (64 - (hi - lo))) << lo;
        let bits = word & keep;
        if bits != 0 && first.is_none() {
            first = Some(w * 64 + bits.trailing_zeros() as usize);
        }
        n += u64::from(bits.count_ones());
    }
    (n, first)
}

/// The checks' state across the batches of one source.
pub(crate) struct RiiidChecks {
    ints: FxHashMap<i64, Learner>,
    strs: FxHashMap<Box<str>, Learner>,
    current: Current,
    shared: Arc<Mutex<RiiidReport>>,
    /// The path and number of rows counted so far (also in `shared`).
    path: PathBuf,
    missing: u64,
}

impl RiiidChecks {
    /// Checks for the interactions at `path`, publishing counts to `shared`.
    pub(crate) fn new(path: &Path, shared: Arc<Mutex<RiiidReport>>) -> RiiidChecks {
        RiiidChecks {
            ints: FxHashMap::default(),
            strs: FxHashMap::default(),
            current: Current::None,
            shared,
            path: path.to_path_buf(),
            missing: 0,
        }
    }

    /// Checks the next batch (input order). `Ok(Some(row))` when the batch
    /// holds the source's first unexpected empty elapsed time, at `row`;
    /// the caller then names its place with [`RiiidChecks::note_first`].
    ///
    /// # Errors
    /// The first row whose time goes back within its learner.
    pub(crate) fn check(&mut self, batch: &RecordBatch) -> Result<Option<usize>, Backwards> {
        let (Some(seq), Some(time)) = (batch.column_by_name(col::SEQ), batch.column_by_name(col::TIME)) else {
            return Ok(None);
        };
        let Some(time) = time.as_primitive_opt::<Int64Type>() else { return Ok(None) };
        let kind = batch.column_by_name(col::KIND).and_then(|a| a.as_primitive_opt::<UInt8Type>());
        let group = batch.column_by_name(col::GROUP).and_then(|a| a.as_primitive_opt::<Int64Type>());
        let elapsed = batch.column_by_name(col::ELAPSED).and_then(|a| a.as_primitive_opt::<Float32Type>());
        // Without kind, group and elapsed there is only the time check.
        let (bundles, empty) = match (kind, group, elapsed) {
            (Some(k), Some(g), Some(e)) => {
                let empty = e.nulls().filter(|n| n.null_count() > 0).map(|n| empty_questions(k.values(), n));
                (Some((&k.values()[..], &g.values()[..])), empty.unwrap_or_default())
            }
            _ => (None, Vec::new()),
        };
        let cols = Cols { time: time.values(), bundles, empty_questions: empty };
        let (before, mut first) = (self.missing, None);
        let current = std::mem::replace(&mut self.current, Current::None);
        // Rows of one learner come in runs; each run is checked in one go
        // with the learner's state in hand.
        let outcome = match seq.data_type() {
            DataType::Int64 => {
                let keys = seq.as_primitive::<Int64Type>().values();
                let (mut key, mut learner, mut have) = match current {
                    Current::Int(k, l) => (k, l, true),
                    Current::Str(k, l) => {
                        self.strs.insert(k.into_boxed_str(), l);
                        (0, NEW, false)
                    }
                    Current::None => (0, NEW, false),
                };
                let mut result = Ok(());
                let mut i = 0;
                while i < keys.len() {
                    let k = keys[i];
                    // The end of the run: 16 keys at a time (no early exit, so it vectorises), then one by one.
                    let mut end = i + 1;
                    while end + 16 <= keys.len() && keys[end..end + 16].iter().fold(true, |all, &x| all & (x == k)) {
                        end += 16;
                    }
                    while end < keys.len() && keys[end] == k {
                        end += 1;
                    }
                    if !have || k != key {
                        if have {
                            self.ints.insert(key, learner);
                        }
                        learner = self.ints.remove(&k).unwrap_or(NEW);
                        (key, have) = (k, true);
                    }
                    if let Err((row, previous)) = self.run(&cols, i..end, &mut learner, &mut first) {
                        result = Err(Backwards { row, user: k.to_string(), time: cols.time[row], previous });
                        break;
                    }
                    i = end;
                }
                if have {
                    self.current = Current::Int(key, learner);
                }
                result
            }
            DataType::Utf8 => {
                let keys = seq.as_string::<i32>();
                let (mut key, mut learner, mut have) = match current {
                    Current::Str(k, l) => (k, l, true),
                    Current::Int(k, l) => {
                        self.ints.insert(k, l);
                        (String::new(), NEW, false)
                    }
                    Current::None => (String::new(), NEW, false),
                };
                let mut result = Ok(());
                let mut i = 0;
                while i < keys.len() {
                    let k = keys.value(i);
                    let end = (i + 1..keys.len()).find(|&j| keys.value(j) != k).unwrap_or(keys.len());
                    if !have || k != key {
                        if have {
                            self.strs.insert(std::mem::take(&mut key).into_boxed_str(), learner);
                        }
                        learner = self.strs.remove(k).unwrap_or(NEW);
                        key.clear();
                        key.push_str(k);
                        have = true;
                    }
                    if let Err((row, previous)) = self.run(&cols, i..end, &mut learner, &mut first) {
                        result = Err(Backwards { row, user: k.to_owned(), time: cols.time[row], previous });
                        break;
                    }
                    i = end;
                }
                if have {
                    self.current = Current::Str(key, learner);
                }
                result
            }
            _ => Ok(()),
        };
        outcome?;
        if self.missing != before {
            self.shared.lock().unwrap_or_else(PoisonError::into_inner).elapsed_missing_unexpected = self.missing;
        }
        Ok(first)
    }

    /// Checks rows `rows` of one learner. `Err((row, previous time))` where
    /// time goes back; `first` gets the source's first unexpected empty
    /// elapsed time.
    fn run(
        &mut self,
        cols: &Cols<'_>,
        rows: std::ops::Range<usize>,
        learner: &mut Learner,
        first: &mut Option<usize>,
    ) -> Result<(), (usize, i64)> {
        let times = &cols.time[rows.clone()];
        // Without early exit (it vectorises); the row is looked for only when time does go back.
        let sorted = times.iter().zip(&times[1..]).fold(true, |ok, (a, b)| ok & (a <= b));
        if !sorted || times[0] < learner.last_time {
            let mut last = learner.last_time;
            for (i, &t) in times.iter().enumerate() {
                if t < last {
                    return Err((rows.start + i, last));
                }
                last = t;
            }
        }
        learner.last_time = times[times.len() - 1];
        let Some((kinds, groups)) = cols.bundles else { return Ok(()) };
        let mut i = rows.start;
        // The first question bundle: a few rows per learner.
        while i < rows.end && learner.bundle != Bundle::Later {
            if kinds[i] == KIND_ITEM {
                match learner.bundle {
                    Bundle::NoQuestion => learner.bundle = Bundle::First(groups[i]),
                    Bundle::First(f) if f != groups[i] => {
                        learner.bundle = Bundle::Later;
                        break;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        let (n, at) = set_bits(&cols.empty_questions, i..rows.end);
        if self.missing == 0 {
            *first = at;
        }
        self.missing += n;
        Ok(())
    }

    /// Records where the first unexpected empty elapsed time is (`place`
    /// follows the path: `:7`, `: row group 0, row 3`).
    pub(crate) fn note_first(&mut self, place: &str) {
        let at = format!("{}{place}", self.path.display());
        self.shared.lock().unwrap_or_else(PoisonError::into_inner).elapsed_missing_unexpected_first = Some(at);
    }

    /// At the end of the source: warns once about unexpected empty elapsed times.
    pub(crate) fn finish(&self) {
        if self.missing == 0 {
            return;
        }
        let report = self.shared.lock().unwrap_or_else(PoisonError::into_inner).clone();
        tracing::warn!(
            "{}: prior_question_elapsed_time is empty on a question outside the learner's first bundle; {} such \
             rows in all, kept as missing",
            report.elapsed_missing_unexpected_first.as_deref().unwrap_or_else(|| self.path.to_str().unwrap_or("")),
            self.missing
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, Int64Array, StringArray, UInt8Array};

    use super::*;

    #[test]
    fn set_bits_counts_within_the_range_across_words() {
        // Bits 3, 63, 64 and 130 are set.
        let mask = [(1u64 << 3) | (1 << 63), 1, 1 << 2];
        assert_eq!(set_bits(&mask, 0..192), (4, Some(3)));
        assert_eq!(set_bits(&mask, 4..192), (3, Some(63)));
        assert_eq!(set_bits(&mask, 4..64), (1, Some(63)));
        assert_eq!(set_bits(&mask, 64..65), (1, Some(64)));
        assert_eq!(set_bits(&mask, 65..130), (0, None));
        assert_eq!(set_bits(&mask, 65..131), (1, Some(130)));
        assert_eq!(set_bits(&mask, 5..5), (0, None));
        assert_eq!(set_bits(&[], 0..10), (0, None));
    }

    #[test]
    fn empty_questions_marks_questions_with_nulls_only() {
        // 70 rows: nulls at 1 (question), 2 (lecture), 66 (question); row 3 is a valid question.
        let kinds: Vec<u8> = (0..70).map(|i| u8::from(i == 2)).collect();
        let elapsed: Float32Array = (0..70).map(|i| (![1, 2, 66].contains(&i)).then_some(1.0)).collect();
        let mask = empty_questions(&kinds, elapsed.nulls().unwrap());
        assert_eq!(mask, vec![1 << 1, 1 << 2]);
    }

    fn batch(seq: ArrayRef, time: Vec<i64>, kind: Vec<u8>, group: Vec<i64>, elapsed: Vec<Option<f32>>) -> RecordBatch {
        RecordBatch::try_from_iter([
            (col::SEQ, seq),
            (col::TIME, Arc::new(Int64Array::from(time)) as ArrayRef),
            (col::KIND, Arc::new(UInt8Array::from(kind))),
            (col::GROUP, Arc::new(Int64Array::from(group))),
            (col::ELAPSED, Arc::new(Float32Array::from(elapsed))),
        ])
        .unwrap()
    }

    fn checks() -> (RiiidChecks, Arc<Mutex<RiiidReport>>) {
        let shared = Arc::new(Mutex::new(RiiidReport::default()));
        (RiiidChecks::new(Path::new("t.csv"), shared.clone()), shared)
    }

    /// User 7 has 150 rows over two batches: a first bundle of 3 questions
    /// (rows 0..3, empty as expected), then one question per bundle; rows
    /// 70 and 140 are empty (unexpected), row 100 is an empty lecture. User 8
    /// interleaves at rows 60..62, its first bundle.
    #[test]
    fn learners_are_followed_across_batches_and_runs() {
        let n = 150;
        let seq: Vec<i64> = (0..n).map(|i| if (60..62).contains(&i) { 8 } else { 7 }).collect();
        let time: Vec<i64> = (0..n).map(|i| if (60..62).contains(&i) { 5 } else { 1000 + i }).collect();
        let kind: Vec<u8> = (0..n).map(|i| u8::from(i == 100)).collect();
        let group: Vec<i64> = (0..n).map(|i| if i < 3 || (60..62).contains(&i) { 0 } else { i }).collect();
        let empty = |i: i64| i < 3 || (60..62).contains(&i) || [70, 100, 140].contains(&i);
        let elapsed: Vec<Option<f32>> = (0..n).map(|i| (!empty(i)).then_some(1.0)).collect();
        let cut = 90;
        let part = |v: &[i64], r: std::ops::Range<usize>| v[r].to_vec();
        let (mut c, shared) = checks();
        let b1 = batch(
            Arc::new(Int64Array::from(part(&seq, 0..cut))),
            part(&time, 0..cut),
            kind[..cut].to_vec(),
            part(&group, 0..cut),
            elapsed[..cut].to_vec(),
        );
        let b2 = batch(
            Arc::new(Int64Array::from(part(&seq, cut..150))),
            part(&time, cut..150),
            kind[cut..].to_vec(),
            part(&group, cut..150),
            elapsed[cut..].to_vec(),
        );
        assert_eq!(c.check(&b1), Ok(Some(70)));
        assert_eq!(c.check(&b2), Ok(None));
        assert_eq!(shared.lock().unwrap().elapsed_missing_unexpected, 2);
        // Time going back at the start of a third batch, against the learner's last time.
        let b3 = batch(Arc::new(Int64Array::from(vec![8, 7])), vec![6, 1148], vec![0, 0], vec![1, 150], vec![None; 2]);
        let e = c.check(&b3).unwrap_err();
        assert_eq!(e, Backwards { row: 1, user: "7".into(), time: 1148, previous: 1149 });
        assert!(e.message().starts_with("user 7: timestamp 1148 is before the user's previous timestamp 1149"));
    }

    #[test]
    fn text_keys_and_a_learner_starting_with_a_lecture() {
        let seq: ArrayRef = Arc::new(StringArray::from(vec!["a", "a", "a", "a", "b", "a"]));
        // a: lecture, first bundle 4 (two empties, expected), bundle 5 empty (unexpected); b: first bundle.
        let b = batch(
            seq,
            vec![0, 10, 10, 20, 0, 30],
            vec![1, 0, 0, 0, 0, 0],
            vec![3, 4, 4, 5, 0, 6],
            vec![None, None, None, None, None, Some(2.0)],
        );
        let (mut c, shared) = checks();
        assert_eq!(c.check(&b), Ok(Some(3)));
        assert_eq!(shared.lock().unwrap().elapsed_missing_unexpected, 1);
        let back = batch(Arc::new(StringArray::from(vec!["b"])), vec![-1], vec![0], vec![1], vec![Some(1.0)]);
        assert_eq!(c.check(&back), Err(Backwards { row: 0, user: "b".into(), time: -1, previous: 0 }));
    }
}
