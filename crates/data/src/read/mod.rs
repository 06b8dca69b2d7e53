//! Readers: every recipe format to canonical arrow batches ([`crate::table`]).
//!
//! Text formats (`csv`, `recbole`, `gru4rec`, `rsc15`, `movielens-dat`,
//! `movielens-100k`, `riiid`) share one driver: the file is read in blocks
//! of whole lines on a background thread, each block is cut into pieces
//! parsed in parallel (rayon) straight into typed columns, and batches come
//! out in file order. Memory is bounded by the block size, not the file.
//! Errors name the file, the 1-based line (the header is line 1), the
//! 1-based field number and its column name, and what was expected.
//!
//! Parquet sources (format `parquet`, or `riiid` with a `.parquet` path or a
//! folder) decode row-group slices in parallel (module `parquet`).
//!
//! Riiid interactions are also checked as they stream, in input order
//! (module `riiid`): a learner's time going back is an error naming the
//! file, line (or parquet row group and row), column `timestamp`, the user
//! and both times; an empty `prior_question_elapsed_time` outside a
//! learner's first question bundle is counted ([`InputReport`]).

pub(crate) mod blocks;
pub(crate) mod columns;
pub(crate) mod convert;
pub(crate) mod fields;
pub(crate) mod layout;
pub(crate) mod parquet;
pub(crate) mod riiid;
pub(crate) mod text;
pub(crate) mod values;

use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::RecordBatch;

pub use riiid::RiiidReport;

use crate::recipe::{Format, Source, Table};
use crate::table::Batches;
use crate::Result;

/// Sizes that bound memory and set the grain of parallel work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Bytes of text read at a time (a block holds whole lines).
    pub block_bytes: usize,
    /// Bytes of text per parallel parse task (one output batch each).
    pub chunk_bytes: usize,
    /// Parquet rows per parallel decode task (row groups are cut to this).
    pub parquet_unit_rows: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { block_bytes: 32 << 20, chunk_bytes: 1 << 20, parquet_unit_rows: 1 << 20 }
    }
}

/// Whether `src` is read as parquet: format `parquet`, or `riiid` given a
/// `.parquet` file or a folder.
pub fn is_parquet(src: &Source) -> bool {
    match src.format {
        Format::Parquet => true,
        Format::Riiid => src.path.is_dir() || src.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")),
        _ => false,
    }
}

/// Streams the canonical interaction batches of `src` (columns `seq`,
/// `item`, `time` and the other mapped roles, then extra features).
///
/// # Errors
/// On opening or on the header ([`crate::Error::Io`], [`crate::Error::File`]
/// for a missing column or an empty file); later errors
/// ([`crate::Error::Parse`], [`crate::Error::ParquetValue`]) come out of the
/// stream, which then ends.
pub fn read_interactions(src: &Source) -> Result<Batches> {
    read_interactions_with(src, &ReadOptions::default())
}

/// [`read_interactions`] with explicit block and task sizes.
///
/// # Errors
/// As [`read_interactions`].
pub fn read_interactions_with(src: &Source, options: &ReadOptions) -> Result<Batches> {
    read_interactions_reporting(src, options).map(|(batches, _)| batches)
}

/// What a reader counted while its batches streamed: for format `riiid`,
/// the input checks' [`RiiidReport`] (`questions_without_tags` is left to
/// [`crate::prepare`]). Complete once the stream has ended.
#[derive(Debug, Clone, Default)]
pub struct InputReport {
    riiid: Option<Arc<Mutex<RiiidReport>>>,
}

impl InputReport {
    /// The Riiid checks' counts so far; `None` for other formats.
    pub fn riiid(&self) -> Option<RiiidReport> {
        self.riiid.as_ref().map(|r| r.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// [`read_interactions_with`], and a handle on what the reader counts.
///
/// # Errors
/// As [`read_interactions`].
pub fn read_interactions_reporting(src: &Source, options: &ReadOptions) -> Result<(Batches, InputReport)> {
    let shared = (src.format == Format::Riiid && src.table == Table::Interactions)
        .then(|| Arc::new(Mutex::new(RiiidReport::default())));
    let checks = shared.as_ref().map(|s| riiid::RiiidChecks::new(&src.path, s.clone()));
    let batches = if is_parquet(src) {
        parquet::read_interactions(src, options, checks)?
    } else {
        text::read_interactions(src, options, checks)?
    };
    Ok((batches, InputReport { riiid: shared }))
}

/// Reads a side table (users, items, questions, lectures) whole: a `key`
/// column (`Int64` or `Utf8`) and its features (`token` → `Utf8`, `float` →
/// `Float32`, `token_seq` → `List<Utf8>`), in file order.
///
/// # Errors
/// As [`read_interactions`], all returned here.
pub fn read_table(src: &Source) -> Result<RecordBatch> {
    read_table_with(src, &ReadOptions::default())
}

/// [`read_table`] with explicit block and task sizes.
///
/// # Errors
/// As [`read_table`].
pub fn read_table_with(src: &Source, options: &ReadOptions) -> Result<RecordBatch> {
    if is_parquet(src) {
        parquet::read_table(src, options)
    } else {
        text::read_table(src, options)
    }
}

/// Reads all interaction batches of `src` into memory (tests and small data).
///
/// # Errors
/// As [`read_interactions`].
pub fn read_interactions_all(src: &Source) -> Result<Vec<RecordBatch>> {
    read_interactions(src)?.collect()
}

/// Test support: fixture paths and column values as plain vectors.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int64Type, Int8Type, UInt8Type};
    use arrow_array::{Array, RecordBatch};

    /// A file under `datasets/fixtures/`.
    pub(crate) fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/fixtures").join(rel)
    }

    fn column<'a>(batches: &'a [RecordBatch], name: &str) -> Vec<&'a dyn Array> {
        batches.iter().map(|b| b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).as_ref()).collect()
    }

    /// An `Int64` column across batches.
    pub(crate) fn ints(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        column(batches, name).iter().flat_map(|a| a.as_primitive::<Int64Type>().values().to_vec()).collect()
    }

    /// An `Int8` column across batches.
    pub(crate) fn int8s(batches: &[RecordBatch], name: &str) -> Vec<i8> {
        column(batches, name).iter().flat_map(|a| a.as_primitive::<Int8Type>().values().to_vec()).collect()
    }

    /// A `UInt8` column across batches.
    pub(crate) fn uint8s(batches: &[RecordBatch], name: &str) -> Vec<u8> {
        column(batches, name).iter().flat_map(|a| a.as_primitive::<UInt8Type>().values().to_vec()).collect()
    }

    /// A nullable `Float32` column across batches.
    pub(crate) fn floats(batches: &[RecordBatch], name: &str) -> Vec<Option<f32>> {
        column(batches, name).iter().flat_map(|a| a.as_primitive::<Float32Type>().iter().collect::<Vec<_>>()).collect()
    }

    /// A nullable `Boolean` column across batches.
    pub(crate) fn bools(batches: &[RecordBatch], name: &str) -> Vec<Option<bool>> {
        column(batches, name).iter().flat_map(|a| a.as_boolean().iter().collect::<Vec<_>>()).collect()
    }

    /// A nullable `Utf8` column across batches.
    pub(crate) fn strs(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
        column(batches, name)
            .iter()
            .flat_map(|a| a.as_string::<i32>().iter().map(|s| s.map(str::to_owned)).collect::<Vec<_>>())
            .collect()
    }

    /// A `List<Utf8>` column across batches.
    pub(crate) fn lists(batches: &[RecordBatch], name: &str) -> Vec<Vec<String>> {
        column(batches, name)
            .iter()
            .flat_map(|a| {
                a.as_list::<i32>()
                    .iter()
                    .map(|l| {
                        l.map(|l| l.as_string::<i32>().iter().flatten().map(str::to_owned).collect())
                            .unwrap_or_default()
                    })
                    .collect::<Vec<Vec<String>>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::recipe::Recipe;
    use arrow_schema::DataType;

    fn recipe(format_dir: &str) -> Recipe {
        Recipe::load(&fixture(&format!("{format_dir}/recipe.toml"))).unwrap()
    }

    fn events(r: &Recipe) -> Vec<RecordBatch> {
        read_interactions_all(&r.interactions).unwrap()
    }

    fn owned(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn gru4rec_seconds_may_be_fractional() {
        let b = events(&recipe("gru4rec"));
        assert_eq!(ints(&b, "seq"), [1, 1, 2, 2, 2]);
        assert_eq!(ints(&b, "item"), [214536502, 214536500, 214662742, 214536502, 214825110]);
        assert_eq!(ints(&b, "time"), [1396321232000, 1396321275500, 1396321290000, 1396321301250, 1396321312000]);
        assert_eq!(b[0].schema().fields().len(), 3);
    }

    #[test]
    fn rsc15_iso_times_and_optional_category() {
        let b = events(&recipe("rsc15"));
        assert_eq!(ints(&b, "seq"), [1, 1, 1, 2, 2]);
        assert_eq!(ints(&b, "item"), [214536502, 214536500, 214536506, 214662742, 214825110]);
        // 2014-04-07T10:51:09Z = 1396867869 s; 2014-04-06T21:00:02Z = 1396818002 s.
        assert_eq!(ints(&b, "time"), [1396867869277, 1396868049868, 1396868086998, 1396818002123, 1396818073000]);
        assert_eq!(strs(&b, "category"), owned(&["0", "0", "S", "2053203", "0"]));
        let mut plain = recipe("rsc15").interactions;
        plain.features = None;
        let b = read_interactions_all(&plain).unwrap();
        assert!(b[0].column_by_name("category").is_none());
    }

    #[test]
    fn movielens_dat_with_latin1_titles_and_crlf() {
        let r = recipe("movielens-dat");
        let b = events(&r);
        assert_eq!(ints(&b, "seq"), [1, 1, 2, 2]);
        assert_eq!(ints(&b, "item"), [1193, 661, 1193, 3]);
        assert_eq!(floats(&b, "rating"), [Some(5.0), Some(3.0), Some(4.0), Some(2.0)]);
        assert_eq!(ints(&b, "time"), [978300760000, 978302109000, 978298413000, 978299000000]);
        let mut crlf = r.interactions.clone();
        crlf.path = fixture("movielens-dat/ratings_crlf.dat");
        assert_eq!(read_interactions_all(&crlf).unwrap(), b);

        let users = [read_table(r.users.as_ref().unwrap()).unwrap()];
        assert_eq!(ints(&users, "key"), [1, 2]);
        assert_eq!(strs(&users, "gender"), owned(&["F", "M"]));
        assert_eq!(strs(&users, "age"), owned(&["1", "56"]));
        assert_eq!(strs(&users, "zip_code"), owned(&["48067", "70072"]));
        let movies = [read_table(r.items.as_ref().unwrap()).unwrap()];
        assert_eq!(ints(&movies, "key"), [3, 661, 1193]);
        assert_eq!(strs(&movies, "title")[0].as_deref(), Some("Café Society (1999)"));
        assert_eq!(strs(&movies, "title")[1].as_deref(), Some("Star Trek: First Contact (1996)"));
        assert_eq!(
            lists(&movies, "genres"),
            [vec!["Comedy", "Drama"], vec!["Action", "Adventure", "Sci-Fi"], vec!["Drama"]]
        );
        assert!(matches!(movies[0].schema().field_with_name("genres").unwrap().data_type(), DataType::List(_)));
    }

    #[test]
    fn movielens_100k_genre_flags_become_names() {
        let r = recipe("movielens-100k");
        let b = events(&r);
        assert_eq!(ints(&b, "seq"), [196, 186, 196]);
        assert_eq!(ints(&b, "item"), [242, 302, 302]);
        assert_eq!(floats(&b, "rating"), [Some(3.0), Some(3.0), Some(5.0)]);
        assert_eq!(ints(&b, "time"), [881250949000, 891717742000, 881251000000]);
        let users = [read_table(r.users.as_ref().unwrap()).unwrap()];
        assert_eq!(ints(&users, "key"), [186, 196]);
        assert_eq!(strs(&users, "occupation"), owned(&["executive", "writer"]));
        assert_eq!(strs(&users, "zip_code"), owned(&["00000", "55105"]));
        let items = [read_table(r.items.as_ref().unwrap()).unwrap()];
        assert_eq!(ints(&items, "key"), [242, 302, 267]);
        assert_eq!(strs(&items, "title")[1].as_deref(), Some("Misérables, Les (1995)"));
        assert_eq!(
            strs(&items, "release_date"),
            [Some("24-Jan-1997".to_owned()), Some("01-Jan-1995".to_owned()), None]
        );
        assert_eq!(lists(&items, "genres"), [vec!["Comedy"], vec!["Drama", "Musical"], vec!["unknown"]]);
    }

    #[test]
    fn recbole_atomic_files() {
        let r = recipe("recbole");
        let b = events(&r);
        assert_eq!(ints(&b, "seq"), [196, 186, 196]);
        assert_eq!(ints(&b, "time"), [881250949000, 891717742000, 881251000000]);
        assert_eq!(floats(&b, "rating"), [Some(3.0), Some(3.0), Some(5.0)]);
        let users = [read_table(r.users.as_ref().unwrap()).unwrap()];
        let names: Vec<String> = users[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["key", "age", "gender", "occupation"]);
        assert_eq!(strs(&users, "age"), owned(&["39", "49"]));
        let items = [read_table(r.items.as_ref().unwrap()).unwrap()];
        assert_eq!(lists(&items, "class"), [vec!["Comedy"], vec!["Drama", "Musical"]]);
        assert_eq!(strs(&items, "release_year"), owned(&["1996", "1995"]));
    }

    #[test]
    fn riiid_every_role_with_missing_priors() {
        let r = recipe("riiid");
        let b = events(&r);
        assert_eq!(ints(&b, "seq"), [115, 115, 115, 115, 115, 2746, 2746]);
        assert_eq!(ints(&b, "item"), [5, 3, 0, 4, 89, 1, 2]);
        assert_eq!(ints(&b, "time"), [0, 56943, 118363, 131167, 137965, 0, 21592]);
        assert_eq!(uint8s(&b, "kind"), [0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(int8s(&b, "label"), [1, 1, 1, 1, -1, 0, 0]);
        assert_eq!(ints(&b, "group"), [1, 2, 0, 3, 4, 0, 1]);
        assert_eq!(
            floats(&b, "elapsed"),
            [None, Some(37000.0), Some(55000.0), Some(19000.0), None, None, Some(25000.0)]
        );
        assert_eq!(bools(&b, "explained"), [None, Some(false), Some(false), Some(false), None, None, Some(true)]);
        let q = [read_table(r.questions.as_ref().unwrap()).unwrap()];
        assert_eq!(ints(&q, "key"), [0, 1, 2, 3, 4, 5]);
        assert_eq!(strs(&q, "correct_answer"), owned(&["0", "1", "0", "3", "3", "2"]));
        assert_eq!(lists(&q, "tags")[..3], [vec!["51", "131", "162", "38"], vec!["131", "36", "81"], vec![]]);
        let l = [read_table(r.lectures.as_ref().unwrap()).unwrap()];
        assert_eq!(ints(&l, "key"), [89, 100, 185]);
        assert_eq!(strs(&l, "type_of"), owned(&["concept", "concept", "solving question"]));
    }

    #[test]
    fn csv_with_header_quotes_and_text_keys() {
        let b = events(&recipe("csv"));
        assert_eq!(strs(&b, "seq"), owned(&["u1", "u1", "u2"]));
        assert_eq!(strs(&b, "item"), owned(&["Toy Story, The", "Heat", "Say \"Hi\""]));
        // 2020-01-01T00:00:00Z = 1577836800 s; +01:00 is one hour before UTC.
        assert_eq!(ints(&b, "time"), [1577836800000, 1577836801500, 1577966400000 - 3600000]);
        assert_eq!(floats(&b, "rating"), [Some(4.5), Some(3.0), Some(5.0)]);
    }

    #[test]
    fn csv_without_header_by_index_with_a_two_byte_delimiter() {
        let text = r#"
            [interactions]
            path = "events_noheader.dat"
            format = "csv"
            header = false
            delimiter = "::"
            columns = { seq = 0, item = 1, time = 2 }
            time_unit = "ms"
        "#;
        let r = Recipe::from_toml_str(text, &fixture("csv/inline.toml")).unwrap();
        let b = events(&r);
        assert_eq!(ints(&b, "seq"), [10, 10, 11]);
        assert_eq!(ints(&b, "item"), [7, 8, 7]);
        assert_eq!(ints(&b, "time"), [1577836800000, 1577836801000, 1577836802000]);
    }
}
