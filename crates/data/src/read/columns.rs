//! Parsing lines of delimited text into typed column builders, and turning
//! the builders into an arrow `RecordBatch`.
//!
//! A chunk of whole lines is parsed on its own (so chunks can go to
//! different threads); errors carry the line's index within the chunk and
//! the driver turns them into absolute line numbers.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float32Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Float32Array, Int64Array, Int8Array, RecordBatch, UInt8Array};
use arrow_schema::{Field as ArrowField, Schema};

use crate::read::fields::{decode_text, next_line, shown, Field};
use crate::read::layout::{Parse, TextLayout};
use crate::read::values::{parse_bool, parse_f32, parse_i64, parse_iso8601_ms, parse_scaled, FloatError};
use crate::recipe::TimeUnit;
use crate::{Error, Result};

/// A bad field (or line) inside a chunk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LineError {
    /// 0-based index of the line within the chunk.
    pub(crate) line: u64,
    /// 1-based field number.
    pub(crate) column: usize,
    /// What was found and expected.
    pub(crate) message: String,
}

impl LineError {
    /// The error at absolute 1-based line `line` of `layout`'s file.
    pub(crate) fn into_error(self, layout: &TextLayout, line: u64) -> Error {
        let name =
            layout.field_names.get(self.column.wrapping_sub(1)).cloned().unwrap_or_else(|| "(extra field)".to_owned());
        Error::Parse { path: layout.path.clone(), line, column: self.column, name, message: self.message }
    }
}

enum Builder {
    Int64(Vec<i64>),
    Int8(Vec<i8>),
    UInt8(Vec<u8>),
    Float32(Vec<f32>),
    Float32Null(Float32Builder),
    BoolNull(BooleanBuilder),
    Utf8(StringBuilder),
    List(ListBuilder<StringBuilder>),
}

impl Builder {
    fn new(parse: &Parse, rows: usize) -> Builder {
        match parse {
            Parse::IntKey(_) | Parse::Time(_) | Parse::Group => Builder::Int64(Vec::with_capacity(rows)),
            Parse::Label => Builder::Int8(Vec::with_capacity(rows)),
            Parse::Kind => Builder::UInt8(Vec::with_capacity(rows)),
            Parse::Rating(_) => Builder::Float32(Vec::with_capacity(rows)),
            Parse::Elapsed | Parse::Float => Builder::Float32Null(Float32Builder::with_capacity(rows)),
            Parse::Explained => Builder::BoolNull(BooleanBuilder::with_capacity(rows)),
            Parse::StrKey | Parse::Token => Builder::Utf8(StringBuilder::with_capacity(rows, rows * 8)),
            Parse::TokenSeq(_) | Parse::Flags(_) => {
                Builder::List(ListBuilder::with_capacity(StringBuilder::new(), rows))
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Int64(v) => Arc::new(Int64Array::from(v)),
            Builder::Int8(v) => Arc::new(Int8Array::from(v)),
            Builder::UInt8(v) => Arc::new(UInt8Array::from(v)),
            Builder::Float32(v) => Arc::new(Float32Array::from(v)),
            Builder::Float32Null(mut b) => Arc::new(b.finish()),
            Builder::BoolNull(mut b) => Arc::new(b.finish()),
            Builder::Utf8(mut b) => Arc::new(b.finish()),
            Builder::List(mut b) => Arc::new(b.finish()),
        }
    }
}

/// What a parser expects, for messages.
fn expected(parse: &Parse) -> &'static str {
    match parse {
        Parse::IntKey(_) => "an integer key",
        Parse::StrKey => "a key",
        Parse::Time(TimeUnit::S) => "a time in seconds",
        Parse::Time(TimeUnit::Ms) => "a time in milliseconds",
        Parse::Time(TimeUnit::Iso8601) => "an ISO-8601 time like `2014-04-07T10:51:09.277Z`",
        Parse::Rating(_) | Parse::Elapsed | Parse::Float => "a number",
        Parse::Label => "1, 0 or -1",
        Parse::Kind => "0 (question or item) or 1 (lecture)",
        Parse::Group => "an integer",
        Parse::Explained => "True, False or nothing",
        Parse::Token | Parse::TokenSeq(_) => "text",
        Parse::Flags(_) => "0 or 1",
    }
}

fn bad_value(parse: &Parse, v: &[u8]) -> String {
    let what = expected(parse);
    if v.is_empty() {
        return format!("empty field, expected {what}");
    }
    let mut m = format!("expected {what}, found {}", shown(v));
    if let Parse::IntKey(hint) = parse {
        m.push_str(&format!(" (set `{hint} = \"str\"` in the recipe for text keys)"));
    }
    m
}

fn bad_float(parse: &Parse, v: &[u8], e: FloatError) -> String {
    match e {
        FloatError::NotFinite => format!("expected a finite number, found {}", shown(v)),
        FloatError::Malformed => bad_value(parse, v),
    }
}

/// A rating outside the recipe's `rating_range`.
pub(crate) fn check_rating(x: f32, [lo, hi]: &[f32; 2]) -> Result<(), String> {
    if (*lo..=*hi).contains(&x) {
        Ok(())
    } else {
        Err(format!("rating {x} is outside the declared rating_range [{lo}, {hi}]"))
    }
}

/// Pushes one field's value; `Err` holds the message.
fn push(builder: &mut Builder, parse: &Parse, v: &[u8]) -> Result<(), String> {
    let bad = || bad_value(parse, v);
    match (builder, parse) {
        (Builder::Int64(b), Parse::IntKey(_) | Parse::Group) => b.push(parse_i64(v).ok_or_else(bad)?),
        (Builder::Int64(b), Parse::Time(unit)) => b.push(
            match unit {
                TimeUnit::S => parse_scaled(v, 3),
                TimeUnit::Ms => parse_scaled(v, 0),
                TimeUnit::Iso8601 => parse_iso8601_ms(v),
            }
            .ok_or_else(bad)?,
        ),
        (Builder::Int8(b), _) => match parse_i64(v) {
            Some(x @ -1..=1) => b.push(x as i8),
            _ => return Err(bad()),
        },
        (Builder::UInt8(b), _) => match parse_i64(v) {
            Some(x @ 0..=1) => b.push(x as u8),
            _ => return Err(bad()),
        },
        (Builder::Float32(b), _) => {
            let x = parse_f32(v).map_err(|e| bad_float(parse, v, e))?;
            if let Parse::Rating(Some(range)) = parse {
                check_rating(x, range)?;
            }
            b.push(x)
        }
        (Builder::Float32Null(b), _) if v.is_empty() => b.append_null(),
        (Builder::Float32Null(b), _) => b.append_value(parse_f32(v).map_err(|e| bad_float(parse, v, e))?),
        (Builder::BoolNull(b), _) if v.is_empty() => b.append_null(),
        (Builder::BoolNull(b), _) => b.append_value(parse_bool(v).ok_or_else(bad)?),
        (Builder::Utf8(_), Parse::StrKey) if v.is_empty() => return Err(bad()),
        (Builder::Utf8(b), _) if v.is_empty() => b.append_null(),
        (Builder::Utf8(b), _) => b.append_value(decode_text(v)),
        (Builder::List(b), Parse::TokenSeq(delim)) => {
            let mut rest = v;
            while !rest.is_empty() {
                let (piece, tail) = delim.split_once(rest);
                if !piece.is_empty() {
                    b.values().append_value(decode_text(piece));
                } else if !delim.is_blank() {
                    // `Comedy||Drama`, `|Comedy`, `Comedy|`: a value is missing.
                    return Err(format!(
                        "malformed list {}: an empty value between `{}` separators",
                        shown(v),
                        delim.shown()
                    ));
                }
                rest = tail;
            }
            if !v.is_empty() && !delim.is_blank() && v.ends_with(delim.bytes()) {
                return Err(format!("malformed list {}: it ends with a `{}` separator", shown(v), delim.shown()));
            }
            b.append(true);
        }
        _ => return Err(format!("internal: no builder for {parse:?}")),
    }
    Ok(())
}

/// Typed columns being filled from lines of one layout.
pub(crate) struct Columns {
    builders: Vec<Builder>,
    rows: usize,
}

impl Columns {
    /// Empty columns for `layout`, with room for about `rows` rows.
    pub(crate) fn with_capacity(layout: &TextLayout, rows: usize) -> Columns {
        Columns { builders: layout.outputs.iter().map(|o| Builder::new(&o.parse, rows)).collect(), rows: 0 }
    }

    /// Empty columns sized for the lines of `text`, estimated from its first
    /// 4 KiB (growing builders would copy every column about twice).
    pub(crate) fn for_text(layout: &TextLayout, text: &[u8]) -> Columns {
        let sample = &text[..text.len().min(4096)];
        let newlines = sample.iter().filter(|&&c| c == b'\n').count().max(1);
        let rows = (text.len() / (sample.len() / newlines).max(1)) * 11 / 10 + 1;
        Columns::with_capacity(layout, rows)
    }

    /// Rows parsed so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Parses every line of `text` (whole lines; the last may lack its
    /// newline). Blank lines are skipped. Returns the number of lines seen.
    pub(crate) fn parse(&mut self, layout: &TextLayout, text: &[u8]) -> Result<u64, LineError> {
        let mut fields: Vec<Field> = Vec::with_capacity(layout.n_fields + 1);
        let mut rest = text;
        let mut line_index = 0u64;
        while !rest.is_empty() {
            let (line, tail) = next_line(rest);
            rest = tail;
            if !line.is_empty() {
                self.parse_line(layout, line, &mut fields).map_err(|(column, message)| LineError {
                    line: line_index,
                    column,
                    message,
                })?;
            }
            line_index += 1;
        }
        Ok(line_index)
    }

    fn parse_line(&mut self, layout: &TextLayout, line: &[u8], fields: &mut Vec<Field>) -> Result<(), (usize, String)> {
        layout.splitter.split(line, fields).map_err(|e| (e.field + 1, e.message.to_owned()))?;
        if fields.len() != layout.n_fields {
            let n = fields.len();
            let plural = |k: usize| if k == 1 { "field" } else { "fields" };
            let message = format!(
                "found {n} {}, expected {} separated by `{}`{}",
                plural(n),
                layout.n_fields,
                layout.delimiter.shown(),
                if n < layout.n_fields { " (wrong delimiter or truncated line?)" } else { "" }
            );
            return Err((n.min(layout.n_fields) + 1, message));
        }
        for (out, builder) in layout.outputs.iter().zip(self.builders.iter_mut()) {
            if let (Parse::Flags(names), Builder::List(b)) = (&out.parse, &mut *builder) {
                for (k, name) in names.iter().enumerate() {
                    let f = fields[out.field + k].bytes(line);
                    match &*f {
                        b"1" => b.values().append_value(name),
                        b"0" => {}
                        v => return Err((out.field + k + 1, bad_value(&out.parse, v))),
                    }
                }
                b.append(true);
                continue;
            }
            let v = fields[out.field].bytes(line);
            push(builder, &out.parse, &v).map_err(|m| (out.field + 1, m))?;
        }
        self.rows += 1;
        Ok(())
    }

    /// The filled columns as a batch named by `layout`'s outputs.
    ///
    /// # Errors
    /// [`Error::Arrow`] if arrow rejects the columns (a bug, not bad input).
    pub(crate) fn finish(self, layout: &TextLayout) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.builders.into_iter().map(Builder::finish).collect();
        let fields: Vec<ArrowField> = layout
            .outputs
            .iter()
            .zip(&arrays)
            .map(|(o, a)| {
                let nullable = matches!(o.parse, Parse::Elapsed | Parse::Explained | Parse::Token | Parse::Float);
                ArrowField::new(&o.name, a.data_type().clone(), nullable)
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|source| Error::Arrow { context: format!("{}: building a batch", layout.path.display()), source })
    }
}
