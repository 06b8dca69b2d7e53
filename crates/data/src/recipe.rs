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
//! Keys of a table section: `path`, `format`, `columns` (interactions:
//! role → column name, or 0-based index for files without a header; roles
//! `seq item time rating label kind group elapsed explained`), `key` (side
//! tables), `features` (a list of column names, kinds taken from the format,
//! or a table name → `token` | `float` | `token_seq`; interactions keep them as
//! extra columns), `delimiter`, `header`, `names` (column names of a file
//! without a header), `quote`, `list_delimiter` (separator inside
//! `token_seq` values), `time_unit`, `seq_type`, `item_type`, `key_type`.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::{Table as TomlTable, Value};

use crate::filter::FilterConfig;
use crate::split::SplitConfig;
use crate::{Error, Result};

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

/// One input table: its file, format and column mapping. `None` fields
/// take the format's default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// Which table of the recipe this is.
    pub table: Table,
    /// The file (or parquet folder), resolved against the recipe's `dir`.
    pub path: PathBuf,
    /// How the file is laid out.
    pub format: Format,
    /// Interactions: role → source column (merged over the format's mapping).
    pub columns: BTreeMap<Role, ColumnRef>,
    /// Side tables: the key column.
    pub key: Option<ColumnRef>,
    /// Extra columns to keep (`None`: the format's default set).
    pub features: Option<Vec<Feature>>,
    /// Field separator, one or more bytes.
    pub delimiter: Option<String>,
    /// Whether the first line is a header.
    pub header: Option<bool>,
    /// Column names of a file without a header.
    pub names: Option<Vec<String>>,
    /// Whether `"` quotes fields.
    pub quote: Option<bool>,
    /// Unit of the `time` column.
    pub time_unit: Option<TimeUnit>,
    /// Type of `seq` keys.
    pub seq_type: Option<KeyType>,
    /// Type of `item` keys.
    pub item_type: Option<KeyType>,
    /// Type of side-table keys.
    pub key_type: Option<KeyType>,
    /// Separator of the values of a `token_seq` field.
    pub list_delimiter: Option<String>,
}

/// File formats (recipe key `format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Generic delimited text.
    Csv,
    /// RecBole atomic files (`.inter`, `.user`, `.item`).
    Recbole,
    /// GRU4Rec's preprocessed TSV.
    Gru4rec,
    /// YooChoose clicks (RecSys Challenge 2015).
    Rsc15,
    /// MovieLens 1M/10M `.dat` files.
    MovielensDat,
    /// MovieLens 100K `u.data`, `u.user`, `u.item`.
    #[serde(rename = "movielens-100k")]
    Movielens100k,
    /// Riiid! Answer Correctness Prediction CSVs.
    Riiid,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 8] = [
        Format::Csv,
        Format::Recbole,
        Format::Gru4rec,
        Format::Rsc15,
        Format::MovielensDat,
        Format::Movielens100k,
        Format::Riiid,
        Format::Parquet,
    ];

    /// The name used in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Recbole => "recbole",
            Format::Gru4rec => "gru4rec",
            Format::Rsc15 => "rsc15",
            Format::MovielensDat => "movielens-dat",
            Format::Movielens100k => "movielens-100k",
            Format::Riiid => "riiid",
            Format::Parquet => "parquet",
        }
    }

    /// The tables this format can describe.
    pub fn tables(self) -> &'static [Table] {
        use Table::*;
        match self {
            Format::Csv | Format::Recbole | Format::Parquet => &[Interactions, Users, Items, Questions, Lectures],
            Format::Gru4rec | Format::Rsc15 => &[Interactions],
            Format::MovielensDat | Format::Movielens100k => &[Interactions, Users, Items],
            Format::Riiid => &[Interactions, Questions, Lectures],
        }
    }

    /// Whether the layout keys (`columns` or `key`) must come from the recipe.
    fn needs_mapping(self) -> bool {
        matches!(self, Format::Csv | Format::Recbole | Format::Parquet)
    }
}

/// The tables of a recipe (its section names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Events.
    Interactions,
    /// Users.
    Users,
    /// Items.
    Items,
    /// Questions.
    Questions,
    /// Lectures.
    Lectures,
}

impl Table {
    /// The recipe section name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Interactions => "interactions",
            Table::Users => "users",
            Table::Items => "items",
            Table::Questions => "questions",
            Table::Lectures => "lectures",
        }
    }
}

/// Roles of interaction columns; their names are the canonical column names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// User or session key.
    Seq,
    /// Item key.
    Item,
    /// Event time.
    Time,
    /// Explicit rating.
    Rating,
    /// Answer correctness.
    Label,
    /// Question (0) or lecture (1).
    Kind,
    /// Bundle / task container.
    Group,
    /// Prior question elapsed time.
    Elapsed,
    /// Prior question had explanation.
    Explained,
}

impl Role {
    /// Every role, required ones first.
    pub const ALL: [Role; 9] = [
        Role::Seq,
        Role::Item,
        Role::Time,
        Role::Rating,
        Role::Label,
        Role::Kind,
        Role::Group,
        Role::Elapsed,
        Role::Explained,
    ];

    /// The canonical column name (see [`crate::table::col`]).
    pub fn name(self) -> &'static str {
        use crate::table::col;
        match self {
            Role::Seq => col::SEQ,
            Role::Item => col::ITEM,
            Role::Time => col::TIME,
            Role::Rating => col::RATING,
            Role::Label => col::LABEL,
            Role::Kind => col::KIND,
            Role::Group => col::GROUP,
            Role::Elapsed => col::ELAPSED,
            Role::Explained => col::EXPLAINED,
        }
    }
}

/// A source column, by header name or by 0-based position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ColumnRef {
    /// By name.
    Name(String),
    /// By 0-based index.
    Index(usize),
}

/// Unit of a time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Seconds since the epoch, possibly fractional.
    S,
    /// Milliseconds.
    Ms,
    /// ISO-8601 text such as `2014-04-07T10:51:09.277Z`.
    Iso8601,
}

/// Type of key values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// 64-bit integers.
    Int,
    /// Text.
    Str,
}

/// Kind of a side feature column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// One categorical value (`Utf8`).
    Token,
    /// A number (`Float32`).
    Float,
    /// Several categorical values (`List<Utf8>`).
    TokenSeq,
}

/// A feature column to keep; `kind: None` takes the format's kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feature {
    /// Source column name (also the output column name).
    pub name: String,
    /// Its kind.
    pub kind: Option<FeatureKind>,
}

impl Source {
    /// A source with every layout choice left to the format.
    pub fn new(table: Table, path: impl Into<PathBuf>, format: Format) -> Source {
        Source {
            table,
            path: path.into(),
            format,
            columns: BTreeMap::new(),
            key: None,
            features: None,
            delimiter: None,
            header: None,
            names: None,
            quote: None,
            time_unit: None,
            seq_type: None,
            item_type: None,
            key_type: None,
            list_delimiter: None,
        }
    }
}

fn choice<T: Copy>(options: &[(&str, T)], text: &str) -> Option<T> {
    options.iter().find(|(n, _)| *n == text).map(|(_, v)| *v)
}

fn names<T>(options: &[(&str, T)]) -> String {
    options.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

const TIME_UNITS: [(&str, TimeUnit); 3] = [("s", TimeUnit::S), ("ms", TimeUnit::Ms), ("iso8601", TimeUnit::Iso8601)];
const KEY_TYPES: [(&str, KeyType); 2] = [("int", KeyType::Int), ("str", KeyType::Str)];
const FEATURE_KINDS: [(&str, FeatureKind); 3] =
    [("token", FeatureKind::Token), ("float", FeatureKind::Float), ("token_seq", FeatureKind::TokenSeq)];

/// A TOML table being consumed key by key; keys left over are errors.
struct Section<'a> {
    file: &'a Path,
    prefix: String,
    table: TomlTable,
}

impl<'a> Section<'a> {
    fn dotted(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.file, self.dotted(key), message)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.error(key, format!("expected {expected}, found {} `{found}`", found.type_str()))
    }

    fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", &v)),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(v) => Err(self.wrong_type(key, "true or false", &v)),
        }
    }

    fn pick<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Result<Option<T>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => choice(options, &s)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("unknown value `{s}`, expected one of {}", names(options)))),
        }
    }

    fn section(&mut self, key: &str) -> Result<Option<Section<'a>>> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::Table(table)) => Ok(Some(Section { file: self.file, prefix: self.dotted(key), table })),
            Some(v) => Err(self.wrong_type(key, "a table", &v)),
        }
    }

    fn column_ref(&self, key: &str, value: Value) -> Result<ColumnRef> {
        match value {
            Value::String(s) => Ok(ColumnRef::Name(s)),
            Value::Integer(i) => usize::try_from(i)
                .map(ColumnRef::Index)
                .map_err(|_| self.error(key, format!("column index must be 0 or more, found {i}"))),
            v => Err(self.wrong_type(key, "a column name or a 0-based column index", &v)),
        }
    }

    /// Errors on the first key not in `allowed`, before anything else is
    /// checked, so that a misspelt key is reported as such.
    fn check_keys(&self, allowed: &[&str]) -> Result<()> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(self.error(k, format!("unknown key, expected one of: {}", allowed.join(", ")))),
        }
    }
}

const SOURCE_KEYS: [&str; 14] = [
    "path",
    "format",
    "columns",
    "key",
    "features",
    "delimiter",
    "header",
    "names",
    "quote",
    "list_delimiter",
    "time_unit",
    "seq_type",
    "item_type",
    "key_type",
];

fn read_source(mut s: Section<'_>, table: Table, dir: &Path, default_format: Option<Format>) -> Result<Source> {
    s.check_keys(&SOURCE_KEYS)?;
    let path = s.string("path")?.ok_or_else(|| s.error("path", "missing: the file to read, relative to `dir`"))?;
    let format_options: Vec<(&str, Format)> = Format::ALL.iter().map(|f| (f.name(), *f)).collect();
    let format = s.pick("format", &format_options)?.or(default_format).ok_or_else(|| {
        s.error("format", format!("missing (here or at the top level): one of {}", names(&format_options)))
    })?;
    if !format.tables().contains(&table) {
        let allowed: Vec<&str> = format.tables().iter().map(|t| t.name()).collect();
        return Err(s.error(
            "format",
            format!("format `{}` has no {} table (it has: {})", format.name(), table.name(), allowed.join(", ")),
        ));
    }
    let mut src = Source::new(table, dir.join(path), format);
    let interactions = table == Table::Interactions;
    if let Some(mut cols) = s.section("columns")? {
        if !interactions {
            return Err(s.error("columns", "only [interactions] maps columns to roles; side tables name their `key`"));
        }
        let role_options: Vec<(&str, Role)> = Role::ALL.iter().map(|r| (r.name(), *r)).collect();
        for (k, v) in std::mem::take(&mut cols.table) {
            let role = choice(&role_options, &k)
                .ok_or_else(|| cols.error(&k, format!("unknown role, expected one of {}", names(&role_options))))?;
            let r = cols.column_ref(&k, v)?;
            src.columns.insert(role, r);
        }
    }
    if let Some(v) = s.table.remove("key") {
        if interactions {
            return Err(s.error("key", "[interactions] maps `columns`; `key` is for side tables"));
        }
        src.key = Some(s.column_ref("key", v)?);
    }
    src.features = match s.table.remove("features") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(name) => Ok(Feature { name, kind: None }),
                    v => Err(s.wrong_type("features", "a list of column names", &v)),
                })
                .collect::<Result<_>>()?,
        ),
        Some(Value::Table(t)) => {
            let mut fs = Section { file: s.file, prefix: s.dotted("features"), table: TomlTable::new() };
            let mut out = Vec::new();
            for (name, v) in t {
                fs.table.insert(name.clone(), v);
                let kind = fs.pick(&name, &FEATURE_KINDS)?.ok_or_else(|| fs.error(&name, "missing kind"))?;
                out.push(Feature { name, kind: Some(kind) });
            }
            Some(out)
        }
        Some(v) => return Err(s.wrong_type("features", "a list of column names or a table name → kind", &v)),
    };
    src.delimiter = s.string("delimiter")?;
    if let Some(d) = &src.delimiter {
        if crate::read::fields::Delimiter::new(d).is_none() {
            return Err(s.error("delimiter", "must be one or more characters, without newlines"));
        }
    }
    src.list_delimiter = s.string("list_delimiter")?;
    if src.list_delimiter.as_deref() == Some("") {
        return Err(s.error("list_delimiter", "must not be empty"));
    }
    src.header = s.boolean("header")?;
    src.quote = s.boolean("quote")?;
    src.names = match s.table.remove("names") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(n) => Ok(n),
                    v => Err(s.wrong_type("names", "a list of column names", &v)),
                })
                .collect::<Result<_>>()?,
        ),
        Some(v) => return Err(s.wrong_type("names", "a list of column names", &v)),
    };
    if src.names.is_some() && src.header == Some(true) {
        return Err(s.error("names", "names a file without a header, but `header = true`"));
    }
    src.time_unit = s.pick("time_unit", &TIME_UNITS)?;
    src.seq_type = s.pick("seq_type", &KEY_TYPES)?;
    src.item_type = s.pick("item_type", &KEY_TYPES)?;
    src.key_type = s.pick("key_type", &KEY_TYPES)?;
    let interaction_only = [
        ("time_unit", src.time_unit.is_some()),
        ("seq_type", src.seq_type.is_some()),
        ("item_type", src.item_type.is_some()),
    ];
    for (k, present) in interaction_only {
        if present && !interactions {
            return Err(s.error(k, "only for [interactions]"));
        }
    }
    if src.key_type.is_some() && interactions {
        return Err(s.error("key_type", "only for side tables; use `seq_type` / `item_type`"));
    }
    if format == Format::Parquet {
        let text_only = [
            ("delimiter", src.delimiter.is_some()),
            ("header", src.header.is_some()),
            ("names", src.names.is_some()),
            ("quote", src.quote.is_some()),
        ];
        if let Some((k, _)) = text_only.iter().find(|(_, p)| *p) {
            return Err(s.error(k, "not used by format `parquet`"));
        }
    }
    if format.needs_mapping() {
        if interactions {
            for role in [Role::Seq, Role::Item, Role::Time] {
                if !src.columns.contains_key(&role) {
                    return Err(s.error(
                        &format!("columns.{}", role.name()),
                        format!("missing: format `{}` needs the column of role `{}`", format.name(), role.name()),
                    ));
                }
            }
        } else if src.key.is_none() {
            return Err(s.error("key", format!("missing: format `{}` needs the key column", format.name())));
        }
    }
    Ok(src)
}

/// Serde's "unknown field `x`" or "unknown variant `x`" → the key it names.
fn serde_key(prefix: &str, message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return format!("{prefix}.{}", &rest[..end]);
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
        Some(section) => section.table.try_into::<T>().map_err(|e| {
            let message = e.message().trim().to_owned();
            Error::config(top.file, serde_key(key, &message), message)
        }),
    }
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
        assert_eq!(seen, 7);
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
