//! One table of a recipe ([`Source`]): its file, format, role → column
//! mapping, key and features, with the small enums they are made of, and
//! how a `[interactions]` / side-table section is parsed into it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::{Table as TomlTable, Value};

use super::section::{choice, names, Section};
use crate::Result;

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
    /// Interactions: the declared rating scale `[lo, hi]`; a rating outside
    /// it is an error naming where it was read.
    pub rating_range: Option<[f32; 2]>,
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
            rating_range: None,
        }
    }
}

const TIME_UNITS: [(&str, TimeUnit); 3] = [("s", TimeUnit::S), ("ms", TimeUnit::Ms), ("iso8601", TimeUnit::Iso8601)];
const KEY_TYPES: [(&str, KeyType); 2] = [("int", KeyType::Int), ("str", KeyType::Str)];
const FEATURE_KINDS: [(&str, FeatureKind); 3] =
    [("token", FeatureKind::Token), ("float", FeatureKind::Float), ("token_seq", FeatureKind::TokenSeq)];

const SOURCE_KEYS: [&str; 15] = [
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
    "rating_range",
];

pub(super) fn read_source(
    mut s: Section<'_>,
    table: Table,
    dir: &Path,
    default_format: Option<Format>,
) -> Result<Source> {
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
    src.rating_range = match s.table.remove("rating_range") {
        None => None,
        Some(v) => {
            let expected = "a list of two numbers [lowest, highest]";
            let nums: Option<Vec<f64>> = match &v {
                Value::Array(items) => items
                    .iter()
                    .map(|x| match x {
                        Value::Integer(i) => Some(*i as f64),
                        Value::Float(f) => Some(*f),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            match nums.as_deref() {
                Some(&[lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi => Some([lo as f32, hi as f32]),
                Some(&[_, _]) => return Err(s.error("rating_range", "the lowest rating must be below the highest")),
                _ => return Err(s.wrong_type("rating_range", expected, &v)),
            }
        }
    };
    let interaction_only = [
        ("rating_range", src.rating_range.is_some()),
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
