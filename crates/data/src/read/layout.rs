//! From a recipe [`Source`] to a concrete text layout: the format's
//! defaults ([`Preset`]) overridden by the recipe, then resolved against the
//! file's header into field positions and value parsers.

use std::path::PathBuf;

use crate::read::fields::{decode_text, Delimiter, Splitter};
use crate::recipe::{ColumnRef, FeatureKind, Format, KeyType, Role, Source, Table, TimeUnit};
use crate::table::col;
use crate::{Error, Result};

/// The 19 genre flags of MovieLens 100K's `u.item`, in file order.
pub(crate) const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// What a format fixes or suggests about one of its tables.
#[derive(Debug, Clone)]
pub(crate) struct Preset {
    pub(crate) delimiter: &'static str,
    pub(crate) header: bool,
    pub(crate) quote: bool,
    /// Column names of a file without a header.
    pub(crate) names: Vec<&'static str>,
    pub(crate) columns: Vec<(Role, &'static str)>,
    pub(crate) key: Option<&'static str>,
    /// Default features and their kinds.
    pub(crate) features: Vec<(&'static str, FeatureKind)>,
    pub(crate) time_unit: TimeUnit,
    pub(crate) list_delimiter: &'static str,
    /// Header names carry a `:type` suffix (RecBole).
    pub(crate) typed_header: bool,
    /// MovieLens 100K: the feature `genres` comes from flag columns starting here.
    pub(crate) genre_flags_at: Option<usize>,
}

impl Preset {
    fn text(delimiter: &'static str, header: bool) -> Preset {
        Preset {
            delimiter,
            header,
            quote: false,
            names: Vec::new(),
            columns: Vec::new(),
            key: None,
            features: Vec::new(),
            time_unit: TimeUnit::S,
            list_delimiter: "|",
            typed_header: false,
            genre_flags_at: None,
        }
    }

    fn headerless(delimiter: &'static str, names: &[&'static str]) -> Preset {
        Preset { names: names.to_vec(), ..Preset::text(delimiter, false) }
    }

    /// The interactions' role → column mapping: these defaults for the roles
    /// `src` does not map, then `src`'s own, sorted by role.
    ///
    /// # Errors
    /// The message for the file's error when `seq`, `item` or `time` is unmapped.
    pub(crate) fn role_columns(&self, src: &Source) -> std::result::Result<Vec<(Role, ColumnRef)>, String> {
        let mut columns: Vec<(Role, ColumnRef)> = self
            .columns
            .iter()
            .filter(|(r, _)| !src.columns.contains_key(r))
            .map(|(r, n)| (*r, ColumnRef::Name(n.to_string())))
            .collect();
        columns.extend(src.columns.iter().map(|(r, c)| (*r, c.clone())));
        columns.sort_by_key(|(r, _)| *r);
        for role in [Role::Seq, Role::Item, Role::Time] {
            if !columns.iter().any(|(r, _)| *r == role) {
                return Err(format!("no column is mapped to the required role `{}`", role.name()));
            }
        }
        Ok(columns)
    }

    /// A side table's key column: `src`'s, else this default.
    ///
    /// # Errors
    /// The message for the file's error when neither names one.
    pub(crate) fn key_column(&self, src: &Source) -> std::result::Result<ColumnRef, String> {
        let key = src.key.clone().or_else(|| self.key.map(|k| ColumnRef::Name(k.to_owned())));
        key.ok_or_else(|| "no key column given".to_owned())
    }
}

/// The defaults of `format` for `table`.
pub(crate) fn preset(format: Format, table: Table) -> Preset {
    use FeatureKind::{Token, TokenSeq};
    use Role::*;
    let tokens = |names: &[&'static str]| names.iter().map(|n| (*n, Token)).collect::<Vec<_>>();
    match (format, table) {
        (Format::Csv, _) => Preset { quote: true, ..Preset::text(",", true) },
        (Format::Parquet, _) => Preset { time_unit: TimeUnit::Ms, ..Preset::text(",", true) },
        (Format::Recbole, _) => Preset { typed_header: true, list_delimiter: " ", ..Preset::text("\t", true) },
        (Format::Gru4rec, _) => {
            Preset { columns: vec![(Seq, "SessionId"), (Item, "ItemId"), (Time, "Time")], ..Preset::text("\t", true) }
        }
        (Format::Rsc15, _) => Preset {
            columns: vec![(Seq, "session_id"), (Time, "timestamp"), (Item, "item_id")],
            time_unit: TimeUnit::Iso8601,
            ..Preset::headerless(",", &["session_id", "timestamp", "item_id", "category"])
        },
        (Format::MovielensDat, Table::Users) => Preset {
            key: Some("user_id"),
            features: tokens(&["gender", "age", "occupation", "zip_code"]),
            ..Preset::headerless("::", &["user_id", "gender", "age", "occupation", "zip_code"])
        },
        (Format::MovielensDat, Table::Items) => Preset {
            key: Some("movie_id"),
            features: vec![("title", Token), ("genres", TokenSeq)],
            ..Preset::headerless("::", &["movie_id", "title", "genres"])
        },
        (Format::MovielensDat, _) => Preset {
            columns: vec![(Seq, "user_id"), (Item, "movie_id"), (Rating, "rating"), (Time, "timestamp")],
            ..Preset::headerless("::", &["user_id", "movie_id", "rating", "timestamp"])
        },
        (Format::Movielens100k, Table::Users) => Preset {
            key: Some("user_id"),
            features: tokens(&["age", "gender", "occupation", "zip_code"]),
            ..Preset::headerless("|", &["user_id", "age", "gender", "occupation", "zip_code"])
        },
        (Format::Movielens100k, Table::Items) => {
            let mut names = vec!["item_id", "title", "release_date", "video_release_date", "imdb_url"];
            let flags_at = names.len();
            names.extend(ML100K_GENRES);
            let mut features = tokens(&["title", "release_date", "video_release_date", "imdb_url"]);
            features.push(("genres", TokenSeq));
            Preset { key: Some("item_id"), features, genre_flags_at: Some(flags_at), ..Preset::headerless("|", &names) }
        }
        (Format::Movielens100k, _) => Preset {
            columns: vec![(Seq, "user_id"), (Item, "item_id"), (Rating, "rating"), (Time, "timestamp")],
            ..Preset::headerless("\t", &["user_id", "item_id", "rating", "timestamp"])
        },
        (Format::Riiid, Table::Questions) => Preset {
            key: Some("question_id"),
            features: vec![("bundle_id", Token), ("correct_answer", Token), ("part", Token), ("tags", TokenSeq)],
            list_delimiter: " ",
            ..Preset::text(",", true)
        },
        (Format::Riiid, Table::Lectures) => {
            Preset { key: Some("lecture_id"), features: tokens(&["tag", "part", "type_of"]), ..Preset::text(",", true) }
        }
        (Format::Riiid, _) => Preset {
            columns: vec![
                (Seq, "user_id"),
                (Item, "content_id"),
                (Time, "timestamp"),
                (Kind, "content_type_id"),
                (Label, "answered_correctly"),
                (Group, "task_container_id"),
                (Elapsed, "prior_question_elapsed_time"),
                (Explained, "prior_question_had_explanation"),
            ],
            time_unit: TimeUnit::Ms,
            ..Preset::text(",", true)
        },
    }
}

/// How one output column is parsed from its field(s).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parse {
    /// Integer key (`Int64`); the recipe key that switches to text keys.
    IntKey(&'static str),
    /// Text key (`Utf8`, never empty).
    StrKey,
    /// Time to milliseconds (`Int64`).
    Time(TimeUnit),
    /// Rating (`Float32`), within the declared `[lo, hi]` if any.
    Rating(Option<[f32; 2]>),
    /// 1, 0 or -1 (`Int8`).
    Label,
    /// 0 or 1 (`UInt8`).
    Kind,
    /// Any integer (`Int64`).
    Group,
    /// Optional float (`Float32`, empty → null).
    Elapsed,
    /// Optional boolean (`Boolean`, empty → null).
    Explained,
    /// Optional text (`Utf8`, empty → null).
    Token,
    /// Optional float (`Float32`, empty → null).
    Float,
    /// Values separated by a delimiter (`List<Utf8>`).
    TokenSeq(Delimiter),
    /// 0/1 flag fields, one per name, from this field on (`List<Utf8>` of the set names).
    Flags(&'static [&'static str]),
}

/// One output column: its name, first source field and parser.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Output {
    pub(crate) name: String,
    pub(crate) field: usize,
    pub(crate) parse: Parse,
}

/// A resolved delimited-text layout.
#[derive(Debug, Clone)]
pub(crate) struct TextLayout {
    pub(crate) path: PathBuf,
    pub(crate) splitter: Splitter,
    pub(crate) delimiter: Delimiter,
    pub(crate) header: bool,
    /// Exact number of fields of every line.
    pub(crate) n_fields: usize,
    /// Name of each field, for messages.
    pub(crate) field_names: Vec<String>,
    pub(crate) outputs: Vec<Output>,
}

/// Kind of a RecBole header type suffix.
fn recbole_kind(suffix: &str) -> FeatureKind {
    match suffix {
        "float" => FeatureKind::Float,
        "token_seq" | "float_seq" => FeatureKind::TokenSeq,
        _ => FeatureKind::Token,
    }
}

/// Whether `src` reads its text with a header line.
pub(crate) fn has_header(src: &Source) -> bool {
    src.header.unwrap_or_else(|| preset(src.format, src.table).header)
}

/// The delimiter `src` reads with.
pub(crate) fn delimiter(src: &Source) -> Result<Delimiter> {
    let text = src.delimiter.clone().unwrap_or_else(|| preset(src.format, src.table).delimiter.to_owned());
    Delimiter::new(&text)
        .ok_or_else(|| Error::File { path: src.path.clone(), message: format!("bad delimiter `{text}`") })
}

/// Resolves `src` against its header line (files with a header) or its
/// first data line (files without one, to count fields when no names are known).
pub(crate) fn resolve(src: &Source, header_line: Option<&[u8]>, first_line: Option<&[u8]>) -> Result<TextLayout> {
    let p = preset(src.format, src.table);
    let file_error = |message: String| Error::File { path: src.path.clone(), message };
    let delim = delimiter(src)?;
    let splitter = Splitter::new(delim.clone(), src.quote.unwrap_or(p.quote));
    let list_delim_text = src.list_delimiter.as_deref().unwrap_or(p.list_delimiter);
    let list_delim =
        Delimiter::new(list_delim_text).ok_or_else(|| file_error(format!("bad list delimiter `{list_delim_text}`")))?;
    let mut types: Vec<Option<FeatureKind>> = Vec::new();
    let names: Vec<String> = if let Some(line) = header_line {
        let mut fields = Vec::new();
        splitter
            .split(line, &mut fields)
            .map_err(|e| file_error(format!("header, field {}: {}", e.field + 1, e.message)))?;
        let mut names = Vec::with_capacity(fields.len());
        for f in &fields {
            let name = decode_text(&f.bytes(line)).trim().to_owned();
            match name.rsplit_once(':').filter(|_| p.typed_header) {
                Some((base, suffix)) => {
                    types.push(Some(recbole_kind(suffix)));
                    names.push(base.to_owned());
                }
                None => {
                    types.push(None);
                    names.push(name);
                }
            }
        }
        names
    } else if let Some(n) = &src.names {
        n.clone()
    } else if !p.names.is_empty() {
        p.names.iter().map(|s| s.to_string()).collect()
    } else {
        let mut fields = Vec::new();
        // A malformed first line is reported with its line number when it is parsed.
        let _ = splitter.split(first_line.unwrap_or_default(), &mut fields);
        (0..fields.len()).map(|i| i.to_string()).collect()
    };
    types.resize(names.len(), None);
    let where_names = if header_line.is_some() { "the header has" } else { "the columns are" };
    let listed = || names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let find = |r: &ColumnRef| -> Result<usize> {
        match r {
            ColumnRef::Name(n) => {
                let n = if p.typed_header { n.rsplit_once(':').map_or(n.as_str(), |(b, _)| b) } else { n.as_str() };
                names
                    .iter()
                    .position(|h| h == n)
                    .ok_or_else(|| file_error(format!("column `{n}` not found; {where_names}: {}", listed())))
            }
            ColumnRef::Index(i) if *i < names.len() => Ok(*i),
            ColumnRef::Index(i) => Err(file_error(format!(
                "column index {i} is out of range: there are {} columns ({})",
                names.len(),
                listed()
            ))),
        }
    };
    let mut outputs = Vec::new();
    if src.table == Table::Interactions {
        for (role, r) in &p.role_columns(src).map_err(file_error)? {
            let key = |t: Option<KeyType>, hint| {
                if t == Some(KeyType::Str) {
                    Parse::StrKey
                } else {
                    Parse::IntKey(hint)
                }
            };
            let parse = match role {
                Role::Seq => key(src.seq_type, "seq_type"),
                Role::Item => key(src.item_type, "item_type"),
                Role::Time => Parse::Time(src.time_unit.unwrap_or(p.time_unit)),
                Role::Rating => Parse::Rating(src.rating_range),
                Role::Label => Parse::Label,
                Role::Kind => Parse::Kind,
                Role::Group => Parse::Group,
                Role::Elapsed => Parse::Elapsed,
                Role::Explained => Parse::Explained,
            };
            outputs.push(Output { name: role.name().to_owned(), field: find(r)?, parse });
        }
    } else {
        let key_ref = p.key_column(src).map_err(file_error)?;
        let parse = if src.key_type == Some(KeyType::Str) { Parse::StrKey } else { Parse::IntKey("key_type") };
        outputs.push(Output { name: col::KEY.to_owned(), field: find(&key_ref)?, parse });
    }
    let requested: Vec<(String, Option<FeatureKind>)> = match &src.features {
        Some(fs) => fs.iter().map(|f| (f.name.clone(), f.kind)).collect(),
        None if src.table != Table::Interactions && p.features.is_empty() => {
            let key_field = outputs[0].field;
            names.iter().enumerate().filter(|(i, _)| *i != key_field).map(|(_, n)| (n.clone(), None)).collect()
        }
        None => p.features.iter().map(|(n, _)| (n.to_string(), None)).collect(),
    };
    for (name, kind) in requested {
        if outputs.iter().any(|o| o.name == name) || name == col::KEY || Role::ALL.iter().any(|r| r.name() == name) {
            return Err(file_error(format!("feature `{name}` clashes with a canonical column name")));
        }
        if let (Some(at), "genres", None) = (p.genre_flags_at, name.as_str(), kind) {
            if at + ML100K_GENRES.len() > names.len() {
                return Err(file_error(format!(
                    "`genres` needs {} genre flag columns from column {}, but there are only {} columns",
                    ML100K_GENRES.len(),
                    at + 1,
                    names.len()
                )));
            }
            outputs.push(Output { name, field: at, parse: Parse::Flags(&ML100K_GENRES) });
            continue;
        }
        let field = find(&ColumnRef::Name(name.clone()))?;
        let preset_kind = p.features.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
        let parse = match kind.or(types[field]).or(preset_kind).unwrap_or(FeatureKind::Token) {
            FeatureKind::Token => Parse::Token,
            FeatureKind::Float => Parse::Float,
            FeatureKind::TokenSeq => Parse::TokenSeq(list_delim.clone()),
        };
        outputs.push(Output { name: names[field].clone(), field, parse });
    }
    Ok(TextLayout {
        path: src.path.clone(),
        splitter,
        delimiter: delim,
        header: header_line.is_some(),
        n_fields: names.len(),
        field_names: names,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Feature;

    #[test]
    fn riiid_header_maps_every_role() {
        let src = Source::new(Table::Interactions, "train.csv", Format::Riiid);
        let header = b"row_id,timestamp,user_id,content_id,content_type_id,task_container_id,user_answer,answered_correctly,prior_question_elapsed_time,prior_question_had_explanation";
        let l = resolve(&src, Some(header), None).unwrap();
        assert_eq!(l.n_fields, 10);
        let got: Vec<(&str, usize)> = l.outputs.iter().map(|o| (o.name.as_str(), o.field)).collect();
        assert_eq!(
            got,
            [
                ("seq", 2),
                ("item", 3),
                ("time", 1),
                ("label", 7),
                ("kind", 4),
                ("group", 5),
                ("elapsed", 8),
                ("explained", 9)
            ]
        );
        assert_eq!(l.outputs[2].parse, Parse::Time(TimeUnit::Ms));
    }

    #[test]
    fn role_columns_merge_recipe_over_format_sorted_by_role() {
        let p = preset(Format::Rsc15, Table::Interactions);
        let mut src = Source::new(Table::Interactions, "c.dat", Format::Rsc15);
        src.columns.insert(Role::Rating, ColumnRef::Index(3));
        src.columns.insert(Role::Item, ColumnRef::Name("product".into()));
        let got = p.role_columns(&src).unwrap();
        let expect = [
            (Role::Seq, ColumnRef::Name("session_id".into())),
            (Role::Item, ColumnRef::Name("product".into())),
            (Role::Time, ColumnRef::Name("timestamp".into())),
            (Role::Rating, ColumnRef::Index(3)),
        ];
        assert_eq!(got, expect);
        let csv = Source::new(Table::Interactions, "e.csv", Format::Csv);
        let e = preset(Format::Csv, Table::Interactions).role_columns(&csv).unwrap_err();
        assert_eq!(e, "no column is mapped to the required role `seq`");

        let mut users = Source::new(Table::Users, "users.dat", Format::MovielensDat);
        let p = preset(Format::MovielensDat, Table::Users);
        assert_eq!(p.key_column(&users), Ok(ColumnRef::Name("user_id".into())));
        users.key = Some(ColumnRef::Index(0));
        assert_eq!(p.key_column(&users), Ok(ColumnRef::Index(0)));
        let csv_users = Source::new(Table::Users, "u.csv", Format::Csv);
        let e = preset(Format::Csv, Table::Users).key_column(&csv_users).unwrap_err();
        assert_eq!(e, "no key column given");
    }

    #[test]
    fn missing_column_names_it_and_the_header() {
        let src = Source::new(Table::Interactions, "x.tsv", Format::Gru4rec);
        let e = resolve(&src, Some(b"SessionId\tItemIdx\tTime"), None).unwrap_err().to_string();
        assert!(e.contains("column `ItemId` not found"), "{e}");
        assert!(e.contains("`SessionId`, `ItemIdx`, `Time`"), "{e}");
    }

    #[test]
    fn recbole_types_come_from_the_header() {
        let mut src = Source::new(Table::Items, "x.item", Format::Recbole);
        src.key = Some(ColumnRef::Name("item_id".into()));
        src.features =
            Some(vec![Feature { name: "class".into(), kind: None }, Feature { name: "year".into(), kind: None }]);
        let l = resolve(&src, Some(b"item_id:token\tclass:token_seq\tyear:float"), None).unwrap();
        assert_eq!(l.outputs[0].parse, Parse::IntKey("key_type"));
        assert_eq!(l.outputs[1].parse, Parse::TokenSeq(Delimiter::new(" ").unwrap()));
        assert_eq!(l.outputs[2].parse, Parse::Float);
        assert_eq!(l.outputs[2].name, "year");
    }

    #[test]
    fn headerless_csv_by_index_and_default_features() {
        let mut src = Source::new(Table::Interactions, "x.csv", Format::Csv);
        src.header = Some(false);
        src.columns.insert(Role::Seq, ColumnRef::Index(2));
        src.columns.insert(Role::Item, ColumnRef::Index(0));
        src.columns.insert(Role::Time, ColumnRef::Index(1));
        let l = resolve(&src, None, Some(b"a,b,c,d")).unwrap();
        assert_eq!(l.n_fields, 4);
        assert_eq!(l.outputs.iter().map(|o| o.field).collect::<Vec<_>>(), [2, 0, 1]);
        src.columns.insert(Role::Rating, ColumnRef::Index(4));
        let e = resolve(&src, None, Some(b"a,b,c,d")).unwrap_err().to_string();
        assert!(e.contains("column index 4 is out of range: there are 4 columns"), "{e}");

        let mut users = Source::new(Table::Users, "u.csv", Format::Csv);
        users.key = Some(ColumnRef::Name("id".into()));
        let l = resolve(&users, Some(b"age,id,zip"), None).unwrap();
        assert_eq!(
            l.outputs.iter().map(|o| (o.name.as_str(), o.field)).collect::<Vec<_>>(),
            [("key", 1), ("age", 0), ("zip", 2)]
        );
    }

    #[test]
    fn ml100k_items_turn_flags_into_genres() {
        let mut src = Source::new(Table::Items, "u.item", Format::Movielens100k);
        src.names = Some(vec!["item_id".into(), "title".into()]);
        src.features = Some(vec![Feature { name: "genres".into(), kind: None }]);
        let e = resolve(&src, None, None).unwrap_err().to_string();
        assert!(e.contains("`genres` needs 19 genre flag columns from column 6, but there are only 2 columns"), "{e}");
        src.names = None;
        src.features = None;
        let l = resolve(&src, None, None).unwrap();
        assert_eq!(l.n_fields, 24);
        let genres = l.outputs.last().unwrap();
        assert_eq!((genres.name.as_str(), genres.field), ("genres", 5));
        assert_eq!(genres.parse, Parse::Flags(&ML100K_GENRES));
    }
}
