//! Recipes: one small TOML file per dataset says where its files are, in
//! which format, which source column plays which role, and how to filter
//! and split it.
//!
//! ```toml
//! name = "ml-100k"                        # default: the file's stem
//! dir = "../../shared/datasets/ml-100k"   # data folder, relative to this file (default: its folder)
//! format = "recbole"                      # default format of every table below
//! gaps = true                             # compute time-gap features (default true)
//!
//! [interactions]                          # required; events
//! path = "ml-100k.inter"                  # relative to `dir`
//! columns = { seq = "user_id", item = "item_id", time = "timestamp", rating = "rating" }
//! time_unit = "s"                         # s | ms | iso8601
//! seq_type = "int"                        # int | str: how `seq` keys are typed (item_type likewise)
//!
//! [users]                                 # optional side tables: users, items, questions, lectures
//! path = "ml-100k.user"
//! key = "user_id"
//! features = ["age", "gender", "occupation"]
//!
//! [items]
//! path = "ml-100k.item"
//! key = "item_id"
//! features = { class = "token_seq", release_year = "token" }
//!
//! [filter]                                # crate::filter::FilterConfig
//! min_seq_len = 5
//!
//! [split]                                 # crate::split::SplitConfig, tagged by `kind`
//! kind = "leave_last_out"
//! n = 1
//! valid = 1
//! ```
//!
//! Split kinds (section `[split]`, key `kind`): `none` (the default),
//! `leave_last_out` (`n`, `valid`: events per sequence), `last_days`
//! (`days`, `valid_days`), `time_cut` (`test_from`, `valid_from`, ms),
//! `last_fraction` (`test`, `valid`: fractions of each sequence's events)
//! and `by_sequence` (`test`, `valid`: fractions of the sequences, each
//! sequence whole; `seed`, default 0). Fractions must lie in `[0, 1]` and
//! sum to at most 1; a bad value is an error naming `split.<key>`.
//!
//! Keys of a table section: `path`, `format`, `columns` (interactions:
//! role → column name, or 0-based index for files without a header; roles
//! `seq item time rating label kind group elapsed explained`), `key` (side
//! tables), `features` (a list of column names, kinds taken from the format,
//! or a table name → `token` | `float` | `token_seq`; interactions keep them as
//! extra columns), `delimiter`, `header`, `names` (column names of a file
//! without a header), `quote`, `list_delimiter` (separator inside
//! `token_seq` values), `time_unit`, `seq_type`, `item_type`, `key_type`,
//! `rating_range` (interactions: `[lowest, highest]`; a rating outside it is
//! an error naming file, line and column).
//!
//! A format supplies defaults for all of these; the recipe overrides them:
//!
//! | format | tables | layout |
//! |---|---|---|
//! | `csv` | all | `,`, header, quotes; `columns`/`key` required; time `s`; lists split on `|` |
//! | `recbole` | all | tab, header `name:type`; `columns`/`key` required; feature kinds from the header; lists on space |
//! | `gru4rec` | interactions | tab, header `SessionId ItemId Time`, time in (fractional) seconds |
//! | `rsc15` | interactions | `,`, no header: `session_id timestamp item_id category`, ISO-8601 times; feature `category` optional |
//! | `movielens-dat` | interactions users items | `::`, no header: `ratings.dat`, `users.dat`, `movies.dat` (genres on `|`) |
//! | `movielens-100k` | interactions users items | `u.data` (tab), `u.user`, `u.item` (`|`; 19 genre flags → `genres`) |
//! | `riiid` | interactions questions lectures | `train.csv`, `questions.csv`, `lectures.csv`; a `.parquet` path (or folder) is read as parquet with the same column names |
//! | `parquet` | all | a file or a folder of `*.parquet` (recursive); `columns`/`key` name parquet columns; integer times in `time_unit` (default `ms`) |
//!
//! Every error names the recipe file and the dotted key (`interactions.columns.sqe`).

mod section;
mod source;

pub use source::{ColumnRef, Feature, FeatureKind, Format, KeyType, Role, Source, Table, TimeUnit};

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Table as TomlTable;

use crate::filter::FilterConfig;
use crate::split::SplitConfig;
use crate::{Error, Result};
use section::Section;
use source::read_source;

/// Everything needed to read, filter and split one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// Dataset name.
    pub name: String,
    /// Data directory (recipe key `dir`, relative to the recipe's folder).
    pub dir: PathBuf,
    /// The events.
    pub interactions: Source,
    /// User side table.
    pub users: Option<Source>,
    /// Item side table.
    pub items: Option<Source>,
    /// Question side table (knowledge tracing).
    pub questions: Option<Source>,
    /// Lecture side table (knowledge tracing).
    pub lectures: Option<Source>,
    /// Section `[filter]`.
    pub filter: FilterConfig,
    /// Section `[split]`.
    pub split: SplitConfig,
    /// Compute time-gap features.
    pub gaps: bool,
    /// The recipe file, for messages.
    pub path: PathBuf,
}

/// Serde's "unknown field `x`" or "unknown variant `x`" → the key it names.
fn serde_key(prefix: &str, message: &str) -> String {
    for lead in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(lead) {
            if let Some(end) = rest.find('`') {
                return format!("{prefix}.{}", &rest[..end]);
            }
        }
    }
    if message.starts_with("unknown variant") || message.contains("field `kind`") {
        return format!("{prefix}.kind");
    }
    prefix.to_owned()
}

fn serde_section<T: serde::de::DeserializeOwned + Default>(top: &mut Section<'_>, key: &str) -> Result<T> {
    match top.section(key)? {
        None => Ok(T::default()),
        Some(section) => section.table.clone().try_into::<T>().map_err(|e| {
            let message = e.message().trim().to_owned();
            let at = serde_key(key, &message);
            let at = if at == key {
                offending_key::<T>(&section.table, &message).map_or(at, |k| format!("{key}.{k}"))
            } else {
                at
            };
            Error::config(top.file, at, message)
        }),
    }
}

/// The key whose value alone (beside the `kind` tag) gives the same error
/// as the whole table: serde reports a wrong type without saying where.
fn offending_key<T: serde::de::DeserializeOwned>(table: &TomlTable, message: &str) -> Option<String> {
    table.iter().filter(|(k, _)| k.as_str() != "kind").find_map(|(k, v)| {
        let mut probe = TomlTable::new();
        if let Some(kind) = table.get("kind") {
            probe.insert("kind".into(), kind.clone());
        }
        probe.insert(k.clone(), v.clone());
        match probe.try_into::<T>() {
            Err(e) if e.message().trim() == message => Some(k.clone()),
            _ => None,
        }
    })
}

const TOP_KEYS: [&str; 11] =
    ["name", "dir", "format", "gaps", "interactions", "users", "items", "questions", "lectures", "filter", "split"];

impl Recipe {
    /// Reads and checks a recipe file.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`Error::Config`] naming the
    /// dotted key of the first problem.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses recipe text; `path` is where it came from (its folder anchors `dir`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the dotted key of the first problem (TOML
    /// syntax errors use the key `<syntax>` and give line and column).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Recipe> {
        let table: TomlTable = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
            Error::config(path, "<syntax>", format!("{}{}", at.unwrap_or_default(), e.message().trim()))
        })?;
        let mut top = Section { file: path, prefix: String::new(), table };
        top.check_keys(&TOP_KEYS)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = match top.string("dir")? {
            Some(d) => base.join(d),
            None => base,
        };
        let name = match top.string("name")? {
            Some(n) => n,
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let format_options: Vec<(&str, Format)> = Format::ALL.iter().map(|f| (f.name(), *f)).collect();
        let format = top.pick("format", &format_options)?;
        let gaps = top.boolean("gaps")?.unwrap_or(true);
        let source = |top: &mut Section<'_>, table: Table| -> Result<Option<Source>> {
            match top.section(table.name())? {
                None => Ok(None),
                Some(s) => read_source(s, table, &dir, format).map(Some),
            }
        };
        let interactions = source(&mut top, Table::Interactions)?
            .ok_or_else(|| top.error("interactions", "missing: the [interactions] section"))?;
        let users = source(&mut top, Table::Users)?;
        let items = source(&mut top, Table::Items)?;
        let questions = source(&mut top, Table::Questions)?;
        let lectures = source(&mut top, Table::Lectures)?;
        let filter = serde_section::<FilterConfig>(&mut top, "filter")?;
        let split = serde_section::<SplitConfig>(&mut top, "split")?;
        split.check().map_err(|(key, message)| Error::config(path, format!("split.{key}"), message))?;
        Ok(Recipe {
            name,
            dir,
            interactions,
            users,
            items,
            questions,
            lectures,
            filter,
            split,
            gaps,
            path: path.to_path_buf(),
        })
    }

    /// The same recipe reading its files from `dir` instead (CLI `--dir`);
    /// paths given absolute in the recipe outside the old `dir` stay as they are.
    pub fn with_dir(mut self, dir: PathBuf) -> Recipe {
        let old = std::mem::replace(&mut self.dir, dir.clone());
        for src in self.sources_mut() {
            if let Ok(rel) = src.path.strip_prefix(&old) {
                src.path = dir.join(rel);
            }
        }
        self
    }

    /// Every source of the recipe, interactions first.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        std::iter::once(&self.interactions)
            .chain([&self.users, &self.items, &self.questions, &self.lectures].into_iter().flatten())
    }

    fn sources_mut(&mut self) -> impl Iterator<Item = &mut Source> {
        std::iter::once(&mut self.interactions)
            .chain([&mut self.users, &mut self.items, &mut self.questions, &mut self.lectures].into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::testing::fixture;
    use crate::read::{read_interactions_all, read_table};

    /// The example at the top of this file, verbatim.
    const EXAMPLE: &str = r#"
name = "ml-100k"                        # default: the file's stem
dir = "../../shared/datasets/ml-100k"   # data folder, relative to this file (default: its folder)
format = "recbole"                      # default format of every table below
gaps = true                             # compute time-gap features (default true)

[interactions]                          # required; events
path = "ml-100k.inter"                  # relative to `dir`
columns = { seq = "user_id", item = "item_id", time = "timestamp", rating = "rating" }
time_unit = "s"                         # s | ms | iso8601
seq_type = "int"                        # int | str: how `seq` keys are typed (item_type likewise)

[users]                                 # optional side tables: users, items, questions, lectures
path = "ml-100k.user"
key = "user_id"
features = ["age", "gender", "occupation"]

[items]
path = "ml-100k.item"
key = "item_id"
features = { class = "token_seq", release_year = "token" }

[filter]                                # crate::filter::FilterConfig
min_seq_len = 5

[split]                                 # crate::split::SplitConfig, tagged by `kind`
kind = "leave_last_out"
n = 1
valid = 1
"#;

    fn parse(text: &str) -> Result<Recipe> {
        Recipe::from_toml_str(text, Path::new("/r/datasets/x.toml"))
    }

    /// The recipe error's dotted key and message.
    fn config_error(text: &str) -> (String, String) {
        match parse(text) {
            Err(Error::Config { path, key, message }) => {
                assert_eq!(path, Path::new("/r/datasets/x.toml"));
                (key, message)
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    const MINIMAL: &str = "[interactions]\npath = \"c.tsv\"\nformat = \"gru4rec\"\n";

    #[test]
    fn the_documented_example_parses() {
        let r = parse(EXAMPLE).unwrap();
        assert_eq!(r.name, "ml-100k");
        assert_eq!(r.dir, Path::new("/r/datasets/../../shared/datasets/ml-100k"));
        assert_eq!(r.interactions.path, r.dir.join("ml-100k.inter"));
        assert_eq!(r.interactions.format, Format::Recbole);
        assert_eq!(r.interactions.columns[&Role::Seq], ColumnRef::Name("user_id".into()));
        assert_eq!(r.interactions.columns.len(), 4);
        assert_eq!(r.interactions.time_unit, Some(TimeUnit::S));
        assert_eq!(r.interactions.seq_type, Some(KeyType::Int));
        let users = r.users.as_ref().unwrap();
        assert_eq!(users.key, Some(ColumnRef::Name("user_id".into())));
        assert_eq!(users.features.as_ref().unwrap()[2], Feature { name: "occupation".into(), kind: None });
        let items = r.items.as_ref().unwrap();
        assert_eq!(
            items.features.as_ref().unwrap()[0],
            Feature { name: "class".into(), kind: Some(FeatureKind::TokenSeq) }
        );
        assert_eq!(r.filter.min_seq_len, 5);
        assert_eq!(r.split, SplitConfig::LeaveLastOut { n: 1, valid: 1 });
        assert!(r.gaps && r.questions.is_none() && r.lectures.is_none());
    }

    #[test]
    fn defaults_name_dir_gaps_and_split() {
        let r = parse(MINIMAL).unwrap();
        assert_eq!(r.name, "x");
        assert_eq!(r.dir, Path::new("/r/datasets"));
        assert_eq!(r.interactions.path, Path::new("/r/datasets/c.tsv"));
        assert!(r.gaps);
        assert_eq!(r.split, SplitConfig::None);
        assert_eq!(r.filter, FilterConfig::default());
    }

    #[test]
    fn with_dir_moves_relative_sources_only() {
        let text = format!("{MINIMAL}\n[items]\npath = \"/abs/items.csv\"\nformat = \"csv\"\nkey = \"id\"\n");
        let r = parse(&text).unwrap().with_dir(PathBuf::from("/data/elsewhere"));
        assert_eq!(r.dir, Path::new("/data/elsewhere"));
        assert_eq!(r.interactions.path, Path::new("/data/elsewhere/c.tsv"));
        assert_eq!(r.items.unwrap().path, Path::new("/abs/items.csv"));
    }

    #[test]
    fn errors_name_the_dotted_key() {
        let cases: Vec<(String, &str, &str)> = vec![
            (format!("nmae = \"x\"\n{MINIMAL}"), "nmae", "unknown key"),
            (MINIMAL.replace("path", "paht"), "interactions.paht", "unknown key"),
            (MINIMAL.replace("path", "# path"), "interactions.path", "missing"),
            ("name = \"x\"\n".to_owned(), "interactions", "missing"),
            (MINIMAL.replace("gru4rec", "gru5rec"), "interactions.format", "unknown value `gru5rec`"),
            (format!("{MINIMAL}columns = {{ sqe = \"a\" }}\n"), "interactions.columns.sqe", "unknown role"),
            (format!("{MINIMAL}columns = {{ seq = -1 }}\n"), "interactions.columns.seq", "0 or more"),
            (format!("{MINIMAL}header = \"yes\"\n"), "interactions.header", "expected true or false, found string"),
            (format!("{MINIMAL}time_unit = \"h\"\n"), "interactions.time_unit", "expected one of `s`, `ms`, `iso8601`"),
            (format!("{MINIMAL}key = \"id\"\n"), "interactions.key", "side tables"),
            (format!("{MINIMAL}rating_range = [5, 1]\n"), "interactions.rating_range", "must be below"),
            (format!("{MINIMAL}rating_range = \"1-5\"\n"), "interactions.rating_range", "two numbers"),
            (format!("{MINIMAL}rating_range = [1, 2, 3]\n"), "interactions.rating_range", "two numbers"),
            (format!("{MINIMAL}delimiter = \"\"\n"), "interactions.delimiter", "one or more characters"),
            (
                format!("{MINIMAL}features = {{ a = \"tokens\" }}\n"),
                "interactions.features.a",
                "unknown value `tokens`",
            ),
            (format!("{MINIMAL}[users]\npath = \"u\"\nformat = \"gru4rec\"\n"), "users.format", "has no users table"),
            (format!("{MINIMAL}[users]\npath = \"u\"\nformat = \"csv\"\n"), "users.key", "missing"),
            (
                format!("{MINIMAL}[users]\npath = \"u\"\nformat = \"csv\"\nkey = \"id\"\nseq_type = \"str\"\n"),
                "users.seq_type",
                "only for [interactions]",
            ),
            (
                "[interactions]\npath = \"e.csv\"\nformat = \"csv\"\ncolumns = { seq = \"u\", item = \"i\" }\n"
                    .to_owned(),
                "interactions.columns.time",
                "missing",
            ),
            (
                "[interactions]\npath = \"e.parquet\"\nformat = \"parquet\"\nheader = true\n".to_owned(),
                "interactions.header",
                "not used by format `parquet`",
            ),
            (format!("{MINIMAL}[filter]\nmin_len = 3\n"), "filter.min_len", "unknown field `min_len`"),
            (format!("{MINIMAL}[split]\nkind = \"last_days\"\ndayz = 1\n"), "split.dayz", "unknown field `dayz`"),
            (format!("{MINIMAL}[split]\nkind = \"random\"\n"), "split.kind", "unknown variant `random`"),
            (format!("{MINIMAL}[split]\nn = 1\n"), "split.kind", "kind"),
            (
                format!("{MINIMAL}[split]\nkind = \"leave_last_out\"\nn = \"one\"\n"),
                "split.n",
                "invalid type: string \"one\", expected usize",
            ),
            (format!("{MINIMAL}[split]\nkind = \"last_days\"\ndays = \"x\"\n"), "split.days", "invalid type"),
            (format!("{MINIMAL}[split]\nkind = \"by_sequence\"\nvalid = 0.1\n"), "split.test", "missing field `test`"),
            (
                format!("{MINIMAL}[split]\nkind = \"by_sequence\"\ntest = 1.5\n"),
                "split.test",
                "expected a fraction in [0, 1], found 1.5",
            ),
            (
                format!("{MINIMAL}[split]\nkind = \"by_sequence\"\ntest = 0.6\nvalid = 0.5\n"),
                "split.valid",
                "test + valid must be at most 1, found 0.6 + 0.5",
            ),
            (
                format!("{MINIMAL}[split]\nkind = \"by_sequence\"\ntest = 0.1\nseed = -1\n"),
                "split.seed",
                "invalid value",
            ),
            (
                format!("{MINIMAL}[split]\nkind = \"last_fraction\"\ntest = 0.1\nvalid = -0.5\n"),
                "split.valid",
                "expected a fraction in [0, 1], found -0.5",
            ),
            (format!("{MINIMAL}[split]\nkind = \"last_days\"\ndays = -1\n"), "split.days", "days >= 0"),
            (
                format!("{MINIMAL}[filter]\nmin_item_support = 2\ncollapse_repeats = 3\n"),
                "filter.collapse_repeats",
                "expected a boolean",
            ),
            (format!("{MINIMAL}gaps = 1\n"), "interactions.gaps", "unknown key"),
            (format!("gaps = 1\n{MINIMAL}"), "gaps", "expected true or false, found integer"),
            ("[interactions\npath = 1".to_owned(), "<syntax>", "line 1, column"),
        ];
        for (text, key, needle) in cases {
            let (k, m) = config_error(&text);
            assert_eq!(k, key, "{text}\n{m}");
            assert!(m.contains(needle), "{key}: {m}");
        }
    }

    #[test]
    fn top_level_format_is_the_default_and_sections_may_override_it() {
        let text = "format = \"riiid\"\n[interactions]\npath = \"train.csv\"\n[questions]\npath = \"q.csv\"\n[users]\npath = \"u.csv\"\nformat = \"csv\"\nkey = 0\n";
        let r = parse(text).unwrap();
        assert_eq!(r.interactions.format, Format::Riiid);
        assert_eq!(r.questions.unwrap().format, Format::Riiid);
        let users = r.users.unwrap();
        assert_eq!((users.format, users.key), (Format::Csv, Some(ColumnRef::Index(0))));
    }

    fn datasets_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
    }

    #[test]
    fn every_dataset_recipe_parses() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(datasets_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let r = Recipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
                names.push(r.name.clone());
            }
        }
        names.sort();
        for expected in ["ml-100k", "ml-100k-raw", "ml-1m", "riiid", "rsc15"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        let rsc15 = Recipe::load(&datasets_dir().join("rsc15.toml")).unwrap();
        assert_eq!((rsc15.filter.min_item_support, rsc15.filter.min_seq_len), (5, 2));
        assert_eq!(rsc15.split, SplitConfig::LastDays { days: 1.0, valid_days: 0.0 });
        let riiid = Recipe::load(&datasets_dir().join("riiid.toml")).unwrap();
        assert_eq!(riiid.split, SplitConfig::LastFraction { test: 0.1, valid: 0.1 });
        let by_learner = Recipe::load(&datasets_dir().join("synth-kt-by-learner.toml")).unwrap();
        let synth = Recipe::load(&datasets_dir().join("synth-kt.toml")).unwrap();
        assert_eq!(by_learner.split, SplitConfig::BySequence { test: 0.1, valid: 0.1, seed: 0 });
        assert_eq!((by_learner.dir, by_learner.interactions), (synth.dir, synth.interactions));
        assert_eq!((by_learner.questions, by_learner.lectures), (synth.questions, synth.lectures));
    }

    #[test]
    fn every_fixture_recipe_reads_all_its_tables() {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixture("")).unwrap() {
            let path = entry.unwrap().path().join("recipe.toml");
            if !path.exists() {
                continue;
            }
            let r = Recipe::load(&path).unwrap();
            let rows: usize = read_interactions_all(&r.interactions).unwrap().iter().map(|b| b.num_rows()).sum();
            assert!(rows >= 3, "{}", path.display());
            for side in [&r.users, &r.items, &r.questions, &r.lectures].into_iter().flatten() {
                assert!(read_table(side).unwrap().num_rows() >= 2, "{}", side.path.display());
            }
            seen += 1;
        }
        assert_eq!(seen, 8);
    }

    /// The real MovieLens 100K, when this machine has it.
    #[test]
    fn ml_100k_recipe_reads_the_shared_copy() {
        let r = Recipe::load(&datasets_dir().join("ml-100k.toml")).unwrap();
        if !r.interactions.path.exists() {
            eprintln!("skipped: {} is not here", r.interactions.path.display());
            return;
        }
        let batches = read_interactions_all(&r.interactions).unwrap();
        let (mut users, mut items) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        let mut rows = 0;
        for b in &batches {
            let seq = b.column_by_name("seq").unwrap().as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
            let item = b.column_by_name("item").unwrap().as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
            users.extend(seq.values().iter().copied());
            items.extend(item.values().iter().copied());
            rows += b.num_rows();
        }
        assert_eq!((rows, users.len(), items.len()), (100_000, 943, 1_682));
        let u = read_table(r.users.as_ref().unwrap()).unwrap();
        assert_eq!(u.num_rows(), 943);
        let i = read_table(r.items.as_ref().unwrap()).unwrap();
        assert_eq!(i.num_rows(), 1_682);
        let names: Vec<String> = i.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["key", "class", "release_year"]);
    }
}
