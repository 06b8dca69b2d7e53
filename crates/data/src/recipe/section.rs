//! A recipe TOML table consumed key by key, so that every error names the
//! recipe file and the dotted key, and keys left over are reported as
//! unknown.

use std::path::Path;

use toml::{Table as TomlTable, Value};

use super::ColumnRef;
use crate::{Error, Result};

pub(super) fn choice<T: Copy>(options: &[(&str, T)], text: &str) -> Option<T> {
    options.iter().find(|(n, _)| *n == text).map(|(_, v)| *v)
}

pub(super) fn names<T>(options: &[(&str, T)]) -> String {
    options.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// A TOML table being consumed key by key; keys left over are errors.
pub(super) struct Section<'a> {
    pub(super) file: &'a Path,
    pub(super) prefix: String,
    pub(super) table: TomlTable,
}

impl<'a> Section<'a> {
    pub(super) fn dotted(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.file, self.dotted(key), message)
    }

    pub(super) fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.error(key, format!("expected {expected}, found {} `{found}`", found.type_str()))
    }

    pub(super) fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", &v)),
        }
    }

    pub(super) fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(v) => Err(self.wrong_type(key, "true or false", &v)),
        }
    }

    pub(super) fn pick<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Result<Option<T>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => choice(options, &s)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("unknown value `{s}`, expected one of {}", names(options)))),
        }
    }

    pub(super) fn section(&mut self, key: &str) -> Result<Option<Section<'a>>> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::Table(table)) => Ok(Some(Section { file: self.file, prefix: self.dotted(key), table })),
            Some(v) => Err(self.wrong_type(key, "a table", &v)),
        }
    }

    pub(super) fn column_ref(&self, key: &str, value: Value) -> Result<ColumnRef> {
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
    pub(super) fn check_keys(&self, allowed: &[&str]) -> Result<()> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(self.error(k, format!("unknown key, expected one of: {}", allowed.join(", ")))),
        }
    }
}
