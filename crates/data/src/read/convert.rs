//! Converting arrow arrays as parquet stores them (any integer width,
//! timestamps, floats, large or view strings, lists) to the canonical
//! column types, checking values on the way (no nulls where a value is
//! required, labels in -1..=1, finite numbers).

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int64Array, Int8Array, PrimitiveArray, RecordBatch, StringArray,
    UInt8Array,
};
use arrow_schema::{DataType, TimeUnit as ArrowTimeUnit};

use crate::read::fields::Delimiter;
use crate::read::values::{parse_bool, parse_i64, parse_iso8601_ms, parse_scaled};
use crate::recipe::{KeyType, TimeUnit};
use crate::{Error, Result};

/// How one parquet column becomes a canonical column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Conv {
    /// Key: integers → `Int64`, text → `Utf8`; a given type forces one.
    Key(Option<KeyType>),
    /// Time in the unit (integers, floats, text) or a timestamp type → ms.
    Time(TimeUnit),
    /// Required finite number → `Float32`, within the declared `[lo, hi]` if any.
    Rating(Option<[f32; 2]>),
    /// -1, 0 or 1 → `Int8`.
    Label,
    /// 0 or 1 → `UInt8`.
    Kind,
    /// Integer → `Int64`.
    Group,
    /// Optional number → `Float32` (NaN counts as missing).
    Elapsed,
    /// Optional boolean (also 0/1 or `True`/`False` text).
    Explained,
    /// Optional text (numbers are written out).
    Token,
    /// Optional number → `Float32`.
    Float,
    /// A list of text, or text split on the delimiter.
    TokenSeq(Delimiter),
}

impl Conv {
    /// Whether the output column may hold nulls.
    pub(crate) fn nullable(&self) -> bool {
        matches!(self, Conv::Elapsed | Conv::Explained | Conv::Token | Conv::Float)
    }

    /// Whether a null input is an error (a missing list is just empty).
    fn required(&self) -> bool {
        !self.nullable() && !matches!(self, Conv::TokenSeq(_))
    }
}

/// A value problem: 0-based row within the converted array, and message.
pub(crate) type Bad = (usize, String);

fn is_int(t: &DataType) -> bool {
    t.is_integer() || *t == DataType::Boolean
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// `None` when `conv` accepts columns of type `t`, else what it expects.
pub(crate) fn expects(conv: &Conv, t: &DataType) -> Option<&'static str> {
    let ok = match conv {
        Conv::Key(_) => is_int(t) || is_text(t),
        Conv::Time(TimeUnit::Iso8601) => is_text(t) || matches!(t, DataType::Timestamp(..)),
        Conv::Time(_) => is_int(t) || is_float(t) || is_text(t) || matches!(t, DataType::Timestamp(..)),
        Conv::Rating(_) | Conv::Elapsed | Conv::Float => is_int(t) || is_float(t),
        Conv::Label | Conv::Kind | Conv::Group => is_int(t),
        Conv::Explained => is_int(t) || is_text(t),
        Conv::Token => is_int(t) || is_float(t) || is_text(t),
        Conv::TokenSeq(_) => {
            is_text(t) || matches!(t, DataType::List(f) | DataType::LargeList(f) if is_text(f.data_type()))
        }
    };
    (!ok).then_some(match conv {
        Conv::Key(_) => "integers or text",
        Conv::Time(TimeUnit::Iso8601) => "ISO-8601 text or a timestamp",
        Conv::Time(_) => "integers, floats, text or a timestamp",
        Conv::Rating(_) | Conv::Elapsed | Conv::Float => "numbers",
        Conv::Label | Conv::Kind | Conv::Group => "integers",
        Conv::Explained => "booleans, 0/1 or True/False text",
        Conv::Token => "text or numbers",
        Conv::TokenSeq(_) => "a list of text, or text",
    })
}

fn first_null(a: &dyn Array) -> Option<usize> {
    let nulls = a.logical_nulls()?;
    (0..a.len()).find(|&i| nulls.is_null(i))
}

/// Integers (and booleans as 0/1) widened to `Int64`, nulls kept.
fn integers(a: &dyn Array) -> Result<Int64Array, Bad> {
    fn widen<T: ArrowPrimitiveType>(a: &dyn Array) -> Int64Array
    where
        T::Native: Into<i64>,
    {
        a.as_primitive::<T>().unary(|v| v.into())
    }
    Ok(match a.data_type() {
        DataType::Int64 => a.as_primitive::<Int64Type>().clone(),
        DataType::Int32 => widen::<Int32Type>(a),
        DataType::Int16 => widen::<Int16Type>(a),
        DataType::Int8 => widen::<Int8Type>(a),
        DataType::UInt32 => widen::<UInt32Type>(a),
        DataType::UInt16 => widen::<UInt16Type>(a),
        DataType::UInt8 => widen::<UInt8Type>(a),
        DataType::UInt64 => {
            let p = a.as_primitive::<UInt64Type>();
            if let Some(row) = p.iter().position(|v| v.is_some_and(|v| v > i64::MAX as u64)) {
                return Err((row, format!("{} does not fit a 64-bit signed integer", p.value(row))));
            }
            p.unary(|v| v as i64)
        }
        DataType::Boolean => a.as_boolean().iter().map(|v| v.map(i64::from)).collect(),
        t => return Err((0, format!("internal: {t} is not an integer type"))),
    })
}

/// Floats and integers as `f64`, nulls kept.
fn numbers(a: &dyn Array) -> Result<PrimitiveArray<Float64Type>, Bad> {
    Ok(match a.data_type() {
        DataType::Float64 => a.as_primitive::<Float64Type>().clone(),
        DataType::Float32 => a.as_primitive::<Float32Type>().unary(f64::from),
        DataType::Float16 => a.as_primitive::<Float16Type>().unary(f64::from),
        _ => integers(a)?.unary(|v| v as f64),
    })
}

/// Text values, nulls kept.
fn texts(a: &dyn Array) -> Vec<Option<&str>> {
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().collect(),
        DataType::Utf8View => a.as_string_view().iter().collect(),
        _ => Vec::new(),
    }
}

fn require_no_nulls(a: &dyn Array) -> Result<(), Bad> {
    match first_null(a) {
        Some(row) => Err((row, "null in a required column".to_owned())),
        None => Ok(()),
    }
}

fn parse_texts<T>(a: &dyn Array, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<Option<T>>, Bad> {
    texts(a)
        .into_iter()
        .enumerate()
        .map(|(row, v)| match v {
            None => Ok(None),
            Some(s) => parse(s).map(Some).ok_or_else(|| (row, format!("expected {what}, found `{s}`"))),
        })
        .collect()
}

fn time_ms(a: &dyn Array, unit: TimeUnit) -> Result<Int64Array, Bad> {
    let overflow = |row: usize| (row, "time out of range".to_owned());
    match a.data_type() {
        DataType::Timestamp(u, _) => {
            let v: Int64Array = match u {
                ArrowTimeUnit::Second => a.as_primitive::<TimestampSecondType>().reinterpret_cast(),
                ArrowTimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().reinterpret_cast(),
                ArrowTimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().reinterpret_cast(),
                ArrowTimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().reinterpret_cast(),
            };
            Ok(match u {
                ArrowTimeUnit::Second => {
                    if let Some(row) = v.iter().position(|x| x.is_some_and(|x| x.checked_mul(1000).is_none())) {
                        return Err(overflow(row));
                    }
                    v.unary(|x| x * 1000)
                }
                ArrowTimeUnit::Millisecond => v,
                ArrowTimeUnit::Microsecond => v.unary(|x| x.div_euclid(1000)),
                ArrowTimeUnit::Nanosecond => v.unary(|x| x.div_euclid(1_000_000)),
            })
        }
        t if is_text(t) => {
            let parse = |s: &str| match unit {
                TimeUnit::S => parse_scaled(s.as_bytes(), 3),
                TimeUnit::Ms => parse_scaled(s.as_bytes(), 0),
                TimeUnit::Iso8601 => parse_iso8601_ms(s.as_bytes()),
            };
            Ok(parse_texts(a, parse, "a time")?.into_iter().collect())
        }
        t if is_float(t) => {
            let scale = if unit == TimeUnit::S { 1000.0 } else { 1.0 };
            let f = numbers(a)?;
            let mut out = Vec::with_capacity(f.len());
            for (row, v) in f.iter().enumerate() {
                out.push(match v {
                    None => None,
                    Some(x) if (x * scale).is_finite() && (x * scale).abs() < 9.2e18 => {
                        Some((x * scale).round() as i64)
                    }
                    Some(_) => return Err(overflow(row)),
                });
            }
            Ok(out.into_iter().collect())
        }
        _ => {
            let v = integers(a)?;
            if unit != TimeUnit::S {
                return Ok(v);
            }
            if let Some(row) = v.iter().position(|x| x.is_some_and(|x| x.checked_mul(1000).is_none())) {
                return Err(overflow(row));
            }
            Ok(v.unary(|x| x * 1000))
        }
    }
}

fn small_ints<T: ArrowPrimitiveType>(
    a: &dyn Array,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Result<ArrayRef, Bad>
where
    T::Native: TryFrom<i64>,
    PrimitiveArray<T>: From<Vec<T::Native>>,
{
    let v = integers(a)?;
    let mut out = Vec::with_capacity(v.len());
    for (row, x) in v.values().iter().enumerate() {
        match T::Native::try_from(*x) {
            Ok(n) if range.contains(x) => out.push(n),
            _ => return Err((row, format!("expected {what}, found {x}"))),
        }
    }
    Ok(Arc::new(PrimitiveArray::<T>::from(out)))
}

fn floats32(a: &dyn Array, nan_is_null: bool) -> Result<Float32Array, Bad> {
    let f = numbers(a)?;
    let mut out = Vec::with_capacity(f.len());
    for (row, v) in f.iter().enumerate() {
        out.push(match v {
            Some(x) if x.is_nan() && nan_is_null => None,
            Some(x) if (x as f32).is_finite() => Some(x as f32),
            Some(x) => return Err((row, format!("expected a finite number, found {x}"))),
            None => None,
        });
    }
    Ok(out.into_iter().collect())
}

fn token_strings(a: &dyn Array) -> Result<StringArray, Bad> {
    let t = a.data_type();
    if is_text(t) {
        return Ok(texts(a).into_iter().collect());
    }
    if is_float(t) {
        return Ok(numbers(a)?.iter().map(|v| v.map(|x| x.to_string())).collect());
    }
    Ok(integers(a)?.iter().map(|v| v.map(|x| x.to_string())).collect())
}

fn token_lists(a: &dyn Array, delimiter: &Delimiter) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    let mut push_list = |list: Option<ArrayRef>| {
        if let Some(list) = list {
            for v in texts(&list).into_iter().flatten() {
                b.values().append_value(v);
            }
        }
        b.append(true);
    };
    match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().iter().for_each(&mut push_list),
        DataType::LargeList(_) => a.as_list::<i64>().iter().for_each(&mut push_list),
        _ => {
            for v in texts(a) {
                let mut rest = v.unwrap_or_default().as_bytes();
                while !rest.is_empty() {
                    let (piece, tail) = delimiter.split_once(rest);
                    // Cutting valid UTF-8 at a delimiter (itself valid UTF-8) keeps both sides valid.
                    if let Some(piece) = std::str::from_utf8(piece).ok().filter(|p| !p.is_empty()) {
                        b.values().append_value(piece);
                    }
                    rest = tail;
                }
                b.append(true);
            }
        }
    }
    Arc::new(b.finish())
}

/// Converts one array; value errors give the 0-based row within it.
pub(crate) fn convert(conv: &Conv, a: &dyn Array) -> Result<ArrayRef, Bad> {
    let t = a.data_type();
    if conv.required() {
        require_no_nulls(a)?;
    }
    Ok(match conv {
        Conv::Key(kind) => match (is_text(t), kind) {
            (true, Some(KeyType::Int)) => {
                let parsed = parse_texts(a, |s| parse_i64(s.as_bytes()), "an integer key")?;
                Arc::new(parsed.into_iter().collect::<Int64Array>())
            }
            (true, _) => Arc::new(token_strings(a)?),
            (false, Some(KeyType::Str)) => Arc::new(token_strings(a)?),
            (false, _) => Arc::new(integers(a)?),
        },
        Conv::Time(unit) => Arc::new(time_ms(a, *unit)?),
        Conv::Rating(range) => {
            let f = floats32(a, false)?;
            if let Some(range) = range {
                for (row, x) in f.iter().enumerate() {
                    if let Some(x) = x {
                        super::columns::check_rating(x, range).map_err(|m| (row, m))?;
                    }
                }
            }
            Arc::new(f)
        }
        Conv::Label => small_ints::<Int8Type>(a, -1..=1, "1, 0 or -1")?,
        Conv::Kind => small_ints::<UInt8Type>(a, 0..=1, "0 (question or item) or 1 (lecture)")?,
        Conv::Group => Arc::new(integers(a)?),
        Conv::Elapsed | Conv::Float => Arc::new(floats32(a, true)?),
        Conv::Explained => {
            if is_text(t) {
                let mut out: Vec<Option<bool>> = Vec::with_capacity(a.len());
                for (row, v) in texts(a).into_iter().enumerate() {
                    out.push(match v {
                        // Empty text means missing, as in the CSV files.
                        None | Some("") => None,
                        Some(s) => Some(
                            parse_bool(s.as_bytes())
                                .ok_or_else(|| (row, format!("expected True or False, found `{s}`")))?,
                        ),
                    });
                }
                Arc::new(out.into_iter().collect::<BooleanArray>())
            } else if *t == DataType::Boolean {
                Arc::new(a.as_boolean().clone())
            } else {
                let v = integers(a)?;
                let mut out = Vec::with_capacity(v.len());
                for (row, x) in v.iter().enumerate() {
                    out.push(match x {
                        None => None,
                        Some(0) => Some(false),
                        Some(1) => Some(true),
                        Some(x) => return Err((row, format!("expected 0 or 1, found {x}"))),
                    });
                }
                Arc::new(out.into_iter().collect::<BooleanArray>())
            }
        }
        Conv::Token => Arc::new(token_strings(a)?),
        Conv::TokenSeq(d) => token_lists(a, d),
    })
}

/// Appends batches of one schema (`Int64`, `Float32`, `Utf8`, `List<Utf8>`
/// columns, as side tables have) into one batch.
pub(crate) fn concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let Some(first) = batches.first() else {
        return Err(Error::Invalid("no batches to concatenate".to_owned()));
    };
    if batches.len() == 1 {
        return Ok(first.clone());
    }
    let schema = first.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let parts: Vec<&ArrayRef> = batches.iter().map(|b| b.column(i)).collect();
        let joined: ArrayRef = match field.data_type() {
            DataType::Int64 => {
                Arc::new(parts.iter().flat_map(|p| p.as_primitive::<Int64Type>().iter()).collect::<Int64Array>())
            }
            DataType::Float32 => {
                Arc::new(parts.iter().flat_map(|p| p.as_primitive::<Float32Type>().iter()).collect::<Float32Array>())
            }
            DataType::Int8 => {
                Arc::new(parts.iter().flat_map(|p| p.as_primitive::<Int8Type>().iter()).collect::<Int8Array>())
            }
            DataType::UInt8 => {
                Arc::new(parts.iter().flat_map(|p| p.as_primitive::<UInt8Type>().iter()).collect::<UInt8Array>())
            }
            DataType::Boolean => Arc::new(parts.iter().flat_map(|p| p.as_boolean().iter()).collect::<BooleanArray>()),
            DataType::Utf8 => Arc::new(parts.iter().flat_map(|p| p.as_string::<i32>().iter()).collect::<StringArray>()),
            DataType::List(_) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for p in &parts {
                    for l in p.as_list::<i32>().iter() {
                        if let Some(l) = l {
                            for v in l.as_string::<i32>().iter().flatten() {
                                b.values().append_value(v);
                            }
                        }
                        b.append(true);
                    }
                }
                Arc::new(b.finish())
            }
            t => return Err(Error::Invalid(format!("cannot concatenate column `{}` of type {t}", field.name()))),
        };
        columns.push(joined);
    }
    RecordBatch::try_new(schema, columns)
        .map_err(|source| Error::Arrow { context: "concatenating batches".to_owned(), source })
}
