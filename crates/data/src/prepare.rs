//! The preparation pipeline: recipe → read → encode → group → filter →
//! split → gap features → a prepared dataset directory (see [`crate::dataset`]).
//!
//! Memory is kept to a small multiple of the decoded input columns: raw key
//! columns are dropped as soon as they are encoded, and grouping consumes
//! its input.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, Int64Array, Int8Array, RecordBatch, UInt8Array};

use crate::dataset::{DatasetMeta, StageSeconds};
use crate::persist::{self, Counts, PreparedEvents};
use crate::recipe::Recipe;
use crate::store::{Events, SequenceStore};
use crate::table::{col, KIND_ITEM, KIND_LECTURE};
use crate::vocab::{encode_int_slices, IntKeyMap, Vocab};
use crate::{features, filter, read, side, split, Error, Result};

/// Raw columns gathered from the reader's batches.
#[derive(Default)]
struct RawColumns {
    bytes: u64,
    seq: Vec<ArrayRef>,
    item: Vec<ArrayRef>,
    time: Vec<i64>,
    rating: Option<Vec<f32>>,
    label: Option<Vec<i8>>,
    kind: Option<Vec<u8>>,
    group: Option<Vec<i64>>,
    elapsed: Option<Vec<f32>>,
    explained: Option<Vec<i8>>,
}

fn typed<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<Option<&'a T>> {
    match b.column_by_name(name) {
        None => Ok(None),
        Some(c) => c
            .as_any()
            .downcast_ref::<T>()
            .map(Some)
            .ok_or_else(|| Error::Invalid(format!("reader produced column `{name}` of type {}", c.data_type()))),
    }
}

impl RawColumns {
    fn push(&mut self, b: &RecordBatch) -> Result<()> {
        self.bytes += b.get_array_memory_size() as u64;
        let need = |name: &str| {
            b.column_by_name(name).cloned().ok_or_else(|| Error::Invalid(format!("reader produced no `{name}` column")))
        };
        self.seq.push(need(col::SEQ)?);
        self.item.push(need(col::ITEM)?);
        let time = typed::<Int64Array>(b, col::TIME)?
            .ok_or_else(|| Error::Invalid("reader produced no `time` column".into()))?;
        self.time.extend_from_slice(time.values());
        if let Some(a) = typed::<Float32Array>(b, col::RATING)? {
            self.rating.get_or_insert_with(Vec::new).extend_from_slice(a.values());
        }
        if let Some(a) = typed::<Int8Array>(b, col::LABEL)? {
            self.label.get_or_insert_with(Vec::new).extend_from_slice(a.values());
        }
        if let Some(a) = typed::<UInt8Array>(b, col::KIND)? {
            self.kind.get_or_insert_with(Vec::new).extend_from_slice(a.values());
        }
        if let Some(a) = typed::<Int64Array>(b, col::GROUP)? {
            self.group.get_or_insert_with(Vec::new).extend_from_slice(a.values());
        }
        if let Some(a) = typed::<Float32Array>(b, col::ELAPSED)? {
            let v = self.elapsed.get_or_insert_with(Vec::new);
            if a.null_count() == 0 {
                v.extend_from_slice(a.values());
            } else {
                v.extend(a.iter().map(|x| x.unwrap_or(f32::NAN)));
            }
        }
        if let Some(a) = typed::<BooleanArray>(b, col::EXPLAINED)? {
            self.explained.get_or_insert_with(Vec::new).extend(a.iter().map(|x| x.map_or(-1, i8::from)));
        }
        Ok(())
    }
}

fn concat_keys(parts: &[ArrayRef], what: &str) -> Result<ArrayRef> {
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    if refs.is_empty() {
        return Ok(std::sync::Arc::new(Int64Array::from(Vec::<i64>::new())));
    }
    arrow_select::concat::concat(&refs)
        .map_err(|e| Error::Arrow { context: format!("joining `{what}` keys"), source: e })
}

/// The `Int64` values of every array, or `None` if any is not a null-free `Int64`.
fn int_slices(arrays: &[ArrayRef]) -> Option<Vec<&[i64]>> {
    arrays
        .iter()
        .map(|a| a.as_any().downcast_ref::<Int64Array>().filter(|a| a.null_count() == 0).map(|a| &a.values()[..]))
        .collect()
}

/// Encodes sequence keys: straight from the batches' slices for integer keys.
fn encode_seq(keys: &[ArrayRef]) -> Result<(Vec<u32>, Vocab)> {
    if let Some(slices) = int_slices(keys) {
        let vocab = Vocab::from_int_slices(&slices);
        let Vocab::Int(values) = &vocab else { unreachable!("integer vocabulary") };
        let map = IntKeyMap::new(values);
        return Ok((encode_int_slices(&slices, "seq", |_| &map)?, vocab));
    }
    let keys = concat_keys(keys, "seq")?;
    let vocab = Vocab::from_arrays(&[keys.as_ref()])?;
    Ok((vocab.encode(keys.as_ref(), "seq")?, vocab))
}

/// Item keys by kind: events of kind item use the `item` vocabulary,
/// lectures the `lecture` vocabulary (Riiid's ids of the two overlap).
fn encode_items(keys: &[ArrayRef], kinds: Option<&[u8]>) -> Result<(Vec<u32>, Vocab, Option<Vocab>)> {
    let lectures = kinds.filter(|k| k.contains(&KIND_LECTURE));
    match (int_slices(keys), lectures) {
        (Some(slices), Some(kinds)) => {
            let (mut items, mut lecs) = (Vec::new(), Vec::new());
            let mut start = 0;
            for s in &slices {
                for (&k, &kind) in s.iter().zip(&kinds[start..start + s.len()]) {
                    if kind == KIND_LECTURE { &mut lecs } else { &mut items }.push(k);
                }
                start += s.len();
            }
            let (iv, lv) = (Vocab::from_ints(&items), Vocab::from_ints(&lecs));
            drop((items, lecs));
            let (Vocab::Int(iv_values), Vocab::Int(lv_values)) = (&iv, &lv) else {
                unreachable!("integer vocabularies")
            };
            let (imap, lmap) = (IntKeyMap::new(iv_values), IntKeyMap::new(lv_values));
            let ids = encode_int_slices(&slices, "item", |i| if kinds[i] == KIND_LECTURE { &lmap } else { &imap })?;
            Ok((ids, iv, Some(lv)))
        }
        (Some(slices), None) => {
            let vocab = Vocab::from_int_slices(&slices);
            let Vocab::Int(values) = &vocab else { unreachable!("integer vocabulary") };
            let map = IntKeyMap::new(values);
            Ok((encode_int_slices(&slices, "item", |_| &map)?, vocab, None))
        }
        (None, lectures) => {
            let keys = concat_keys(keys, "item")?;
            let Some(kinds) = lectures else {
                let vocab = Vocab::from_arrays(&[keys.as_ref()])?;
                return Ok((vocab.encode(keys.as_ref(), "item")?, vocab, None));
            };
            let mask = |want: u8| BooleanArray::from(kinds.iter().map(|&k| k == want).collect::<Vec<bool>>());
            let pick = |m: &BooleanArray| {
                arrow_select::filter::filter(keys.as_ref(), m)
                    .map_err(|e| Error::Arrow { context: "selecting item keys by kind".into(), source: e })
            };
            let (q, l) = (pick(&mask(KIND_ITEM))?, pick(&mask(KIND_LECTURE))?);
            let (qv, lv) = (Vocab::from_arrays(&[q.as_ref()])?, Vocab::from_arrays(&[l.as_ref()])?);
            let (mut qi, mut li) =
                (qv.encode(q.as_ref(), "item")?.into_iter(), lv.encode(l.as_ref(), "lecture")?.into_iter());
            let ids =
                kinds.iter().map(|&k| if k == KIND_LECTURE { li.next() } else { qi.next() }.unwrap_or(0)).collect();
            Ok((ids, qv, Some(lv)))
        }
    }
}

/// Rows of an encoded questions table (one per question the interactions
/// use) whose `tags` list is empty; `None` without a `tags` list column.
fn questions_without_tags(questions: &RecordBatch) -> Option<usize> {
    let tags = questions.column_by_name("tags")?.as_any().downcast_ref::<arrow_array::ListArray>()?;
    Some(tags.offsets().windows(2).filter(|w| w[0] == w[1]).count())
}

/// Runs the whole pipeline of `recipe` and writes the prepared dataset to
/// `out` (atomically: on error nothing is left at `out`).
///
/// # Errors
/// Any reader error (naming file, line and column), recipe errors, or
/// [`Error::Invalid`] when nothing is left after filtering.
pub fn prepare(recipe: &Recipe, out: &Path) -> Result<DatasetMeta> {
    let mut secs = StageSeconds::default();
    let t = Instant::now();
    let mut raw = RawColumns::default();
    let (batches, input_report) =
        read::read_interactions_reporting(&recipe.interactions, &read::ReadOptions::default())?;
    for batch in batches {
        raw.push(&batch?)?;
    }
    secs.read = t.elapsed().as_secs_f64();
    let n_read = raw.time.len();
    let decoded_bytes = raw.bytes;
    if n_read == 0 {
        return Err(Error::Invalid(format!("{}: no interactions were read", recipe.interactions.path.display())));
    }

    let t = Instant::now();
    let (seq, seq_vocab) = encode_seq(&std::mem::take(&mut raw.seq))?;
    tracing::debug!("encode: {} sequences at {:.2} s", seq_vocab.len(), t.elapsed().as_secs_f64());
    let (items, item_vocab, lecture_vocab) = encode_items(&std::mem::take(&mut raw.item), raw.kind.as_deref())?;
    tracing::debug!("encode: {} items at {:.2} s", item_vocab.len(), t.elapsed().as_secs_f64());
    secs.encode = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let events = Events {
        seq,
        items,
        times: raw.time,
        ratings: raw.rating,
        labels: raw.label,
        kinds: raw.kind,
        groups: raw.group,
        elapsed: raw.elapsed,
        explained: raw.explained,
    };
    let store = SequenceStore::from_events(events)?;
    secs.group = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let (store, filter_report) = filter::apply(store, &recipe.filter);
    if store.n_events() == 0 {
        return Err(Error::Invalid(format!(
            "{}: no events are left after filtering ({} read)",
            recipe.path.display(),
            n_read
        )));
    }
    let (mut store, parts, split_report) = split::apply(store, &recipe.split)?;
    secs.filter_split = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let gaps = if recipe.gaps {
        let params = features::fit_gaps(&store, &parts);
        store.gaps = Some(features::normalise_gaps(&store, &params));
        Some(params)
    } else {
        None
    };
    secs.features = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let prepared = PreparedEvents { store, parts };
    let mut vocabs = BTreeMap::from([("seq".to_string(), seq_vocab), ("item".to_string(), item_vocab)]);
    if let Some(l) = lecture_vocab {
        vocabs.insert("lecture".into(), l);
    }
    let side_tables = side::read_side_tables(recipe, &vocabs)?;
    let mut meta = DatasetMeta::new(recipe, Counts::of(&prepared), n_read);
    meta.decoded_column_bytes = decoded_bytes;
    meta.filter = serde_json::to_value(&filter_report).unwrap_or_default();
    meta.split = serde_json::to_value(&split_report).unwrap_or_default();
    meta.gaps = gaps;
    meta.riiid = input_report.riiid().map(|mut r| {
        r.questions_without_tags = side_tables.tables.get("questions").and_then(questions_without_tags);
        r
    });
    crate::io::write_dir_atomic(out, |dir| {
        meta.event_files = persist::write_events(dir, &prepared)?;
        let vdir = dir.join("vocab");
        std::fs::create_dir_all(&vdir).map_err(|e| Error::io(&vdir, e))?;
        for (name, v) in vocabs.iter().chain(side_tables.vocabs.iter()) {
            persist::write_vocab(&vdir.join(format!("{name}.parquet")), v)?;
            meta.vocab_sizes.insert(name.clone(), v.len());
        }
        for (name, batch) in &side_tables.tables {
            let file = format!("{name}.parquet");
            persist::write_parquet(&dir.join(&file), batch)?;
            meta.side_tables.insert(name.clone(), file);
        }
        secs.write = t.elapsed().as_secs_f64();
        meta.seconds = secs.clone();
        meta.write(dir)
    })?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;
    use crate::read::RiiidReport;
    use crate::split::Part;
    use crate::synth::kt::KtConfig;
    use crate::synth::sessions::SessionsConfig;

    fn recipe(dir: &Path, text: &str) -> Recipe {
        let path = dir.join("recipe.toml");
        std::fs::write(&path, text).unwrap();
        Recipe::load(&path).unwrap()
    }

    /// The prepared test questions are exactly the generator's oracle events.
    #[test]
    fn riiid_csv_from_the_kt_generator_round_trips_with_the_oracle_protocol() {
        let d = crate::io::scratch_dir("prepare-kt");
        let cfg =
            KtConfig { n_learners: 60, n_questions: 300, n_lectures: 20, lecture_prob: 0.1, ..KtConfig::default() };
        let data = cfg.generate().unwrap();
        data.write_riiid_csv(&d).unwrap();
        let r = recipe(
            &d,
            "format = \"riiid\"\n[interactions]\npath = \"train.csv\"\n[questions]\npath = \"questions.csv\"\n\
             [lectures]\npath = \"lectures.csv\"\n[split]\nkind = \"last_fraction\"\ntest = 0.1\nvalid = 0.1\n",
        );
        let out = d.join("prepared");
        let meta = prepare(&r, &out).unwrap();
        assert_eq!(meta.rows_read, data.rows.len());
        let ds = Dataset::open(&out).unwrap();
        let (s, parts) = (&ds.events.store, &ds.events.parts);
        let kinds = s.kinds.as_ref().unwrap();
        let test_questions = (0..s.n_events()).filter(|&i| parts[i] == Part::Test && kinds[i] == KIND_ITEM).count();
        let removed = meta.split["removed_unseen_test"].as_u64().unwrap() as usize;
        let oracle_events = data.test_mask().iter().filter(|&&t| t).count();
        assert_eq!(test_questions + removed, oracle_events);
        // lectures keep their own vocabulary and carry no label
        let labels = s.labels.as_ref().unwrap();
        assert!((0..s.n_events()).any(|i| kinds[i] == KIND_LECTURE));
        assert!((0..s.n_events()).all(|i| (kinds[i] == KIND_LECTURE) == (labels[i] == -1)));
        assert_eq!(ds.vocabs["lecture"].len(), meta.vocab_sizes["lecture"]);
        assert!(meta.side_tables.contains_key("questions") && meta.side_tables.contains_key("lectures"));
        // The generator writes Riiid's pattern: every question tagged, elapsed empty only where Riiid has it so.
        assert_eq!(meta.riiid, Some(RiiidReport { questions_without_tags: Some(0), ..RiiidReport::default() }));
    }

    fn riiid_checks(interactions: &str) -> Recipe {
        let text = format!(
            "format = \"riiid\"\n[interactions]\npath = \"{interactions}\"\n[questions]\npath = \"questions.csv\"\n\
             [lectures]\npath = \"lectures.csv\"\n"
        );
        Recipe::from_toml_str(&text, &crate::read::testing::fixture("riiid-checks/inline.toml")).unwrap()
    }

    /// datasets/fixtures/riiid-checks: questions 2 and 4 are used and
    /// untagged (7 is untagged but unused); lines 6 and 10 of train.csv are
    /// questions past their learner's first bundle with an empty elapsed time.
    #[test]
    fn riiid_input_checks_are_reported_in_dataset_json() {
        let r = Recipe::load(&crate::read::testing::fixture("riiid-checks/recipe.toml")).unwrap();
        let out = crate::io::scratch_dir("prepare-riiid-checks").join("prepared");
        let meta = prepare(&r, &out).unwrap();
        let want = RiiidReport {
            questions_without_tags: Some(2),
            elapsed_missing_unexpected: 2,
            elapsed_missing_unexpected_first: Some(format!("{}:6", r.interactions.path.display())),
        };
        assert_eq!(meta.riiid.as_ref(), Some(&want));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(crate::dataset::META_FILE)).unwrap()).unwrap();
        assert_eq!(json["riiid"]["questions_without_tags"], 2);
        assert_eq!(json["riiid"]["elapsed_missing_unexpected"], 2);
        assert_eq!(json["riiid"]["elapsed_missing_unexpected_first"], want.elapsed_missing_unexpected_first.unwrap());
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(ds.meta.riiid, meta.riiid);
        // The unexpected empties stay missing (NaN); the values around them are kept.
        let s = &ds.events.store;
        let elapsed = s.elapsed.as_ref().unwrap();
        let at = |t: i64| elapsed[s.times.iter().position(|&x| x == t).unwrap()];
        assert!(at(56943).is_nan() && at(140000).is_nan());
        assert_eq!((at(30000), at(131167)), (25000.0, 19000.0));
    }

    #[test]
    fn riiid_lecture_missing_from_lectures_csv_is_an_error() {
        let r = riiid_checks("train_unknown_lecture.csv");
        let out = crate::io::scratch_dir("prepare-riiid-lecture").join("prepared");
        let e = prepare(&r, &out).unwrap_err().to_string();
        let lectures = r.lectures.as_ref().unwrap().path.display().to_string();
        assert_eq!(e, format!("{lectures}: lacks lecture 90 that the interactions use (1 lectures missing in all)"));
        assert!(!out.exists());
    }

    #[test]
    fn riiid_time_going_back_stops_preparation() {
        let r = riiid_checks("train_time_backwards.csv");
        let out = crate::io::scratch_dir("prepare-riiid-time").join("prepared");
        let e = prepare(&r, &out).unwrap_err().to_string();
        let want = format!(
            "{}:8:2: column `timestamp`: user 115: timestamp 50000 is before the user's previous timestamp 56943",
            r.interactions.path.display()
        );
        assert!(e.starts_with(&want), "{e}");
        assert!(!out.exists());
    }

    /// The prepared last-day split has the targets the sessions oracle was scored on.
    #[test]
    fn gru4rec_tsv_from_the_session_generator_matches_the_oracle_split() {
        let d = crate::io::scratch_dir("prepare-sessions");
        let cfg =
            SessionsConfig { n_items: 300, n_topics: 6, n_sessions: 3000, days: 10.0, ..SessionsConfig::default() };
        let data = cfg.generate().unwrap();
        data.write_gru4rec_tsv(&d.join("sessions.tsv")).unwrap();
        let report = data.oracle_report();
        let r = recipe(
            &d,
            "format = \"gru4rec\"\n[interactions]\npath = \"sessions.tsv\"\n[split]\nkind = \"last_days\"\ndays = 1\n",
        );
        let out = d.join("prepared");
        let meta = prepare(&r, &out).unwrap();
        assert!(meta.riiid.is_none());
        assert!(!std::fs::read_to_string(out.join(crate::dataset::META_FILE)).unwrap().contains("riiid"));
        let ds = Dataset::open(&out).unwrap();
        let (s, parts) = (&ds.events.store, &ds.events.parts);
        let test_seqs: Vec<usize> = (0..s.n_seq()).filter(|&q| parts[s.range(q)][0] == Part::Test).collect();
        let targets: usize = test_seqs.iter().map(|&q| s.len_of(q) - 1).sum();
        assert_eq!(test_seqs.len(), report.n_test_sessions);
        assert_eq!(targets as u64, report.n_targets);
    }

    #[test]
    fn nothing_is_left_behind_when_a_side_table_lacks_a_key() {
        let d = crate::io::scratch_dir("prepare-side");
        std::fs::write(d.join("i.csv"), "u,i,t\n1,10,0\n2,11,5\n").unwrap();
        std::fs::write(d.join("users.csv"), "u,g\n1,M\n").unwrap();
        let r = recipe(
            &d,
            "format = \"csv\"\n[interactions]\npath = \"i.csv\"\ncolumns = { seq = \"u\", item = \"i\", time = \"t\" }\n\
             [users]\npath = \"users.csv\"\nkey = \"u\"\nfeatures = [\"g\"]\n",
        );
        let out = d.join("prepared");
        let e = prepare(&r, &out).unwrap_err().to_string();
        assert!(e.contains("users.csv") && e.contains("user 2"), "{e}");
        assert!(!out.exists());
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }
}
