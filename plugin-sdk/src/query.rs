//! Reading the database through the host: parameters in, typed rows out.

use crate::bindings::evercache::plugin::host;
use crate::{DbValue, PluginError, Rows};

/// Runs one read-only statement on the pipeline's database, with the
/// database's own placeholders: `$1…` on Postgres, `?` on MySQL and MariaDB
/// (where a list parameter binds as a JSON array text). Host refusals, SQL errors, timeouts and row caps come back as
/// [`PluginError::Query`].
pub fn query(sql: &str, params: &[DbValue]) -> Result<Rows, PluginError> {
    host::query(sql, params).map_err(PluginError::Query)
}

/// `query!("select … where id = $1 and kind = $2", id, kind)` (or `… id = ? and
/// kind = ?` on MySQL): [`query()`] with
/// parameters converted by [`ToDbValue`].
#[macro_export]
macro_rules! query {
    ($sql:expr $(, $param:expr)* $(,)?) => {
        $crate::query($sql, &[$($crate::ToDbValue::to_db_value(&$param)),*])
    };
}

/// A Rust value usable as a query parameter.
pub trait ToDbValue {
    /// The parameter.
    fn to_db_value(&self) -> DbValue;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl ToDbValue for $t {
            fn to_db_value(&self) -> DbValue {
                DbValue::Int(i64::from(*self))
            }
        }
    )*};
}
int_param!(i8, i16, i32, i64, u8, u16, u32);

impl ToDbValue for bool {
    fn to_db_value(&self) -> DbValue {
        DbValue::Boolean(*self)
    }
}
impl ToDbValue for f64 {
    fn to_db_value(&self) -> DbValue {
        DbValue::Float(*self)
    }
}
impl ToDbValue for str {
    fn to_db_value(&self) -> DbValue {
        DbValue::Text(self.to_owned())
    }
}
impl ToDbValue for String {
    fn to_db_value(&self) -> DbValue {
        DbValue::Text(self.clone())
    }
}
impl ToDbValue for [i64] {
    fn to_db_value(&self) -> DbValue {
        DbValue::IntList(self.to_vec())
    }
}
impl ToDbValue for Vec<i64> {
    fn to_db_value(&self) -> DbValue {
        DbValue::IntList(self.clone())
    }
}
impl ToDbValue for [String] {
    fn to_db_value(&self) -> DbValue {
        DbValue::TextList(self.to_vec())
    }
}
impl ToDbValue for Vec<String> {
    fn to_db_value(&self) -> DbValue {
        DbValue::TextList(self.clone())
    }
}
impl ToDbValue for DbValue {
    fn to_db_value(&self) -> DbValue {
        self.clone()
    }
}
impl<T: ToDbValue + ?Sized> ToDbValue for &T {
    fn to_db_value(&self) -> DbValue {
        (**self).to_db_value()
    }
}
impl<T: ToDbValue> ToDbValue for Option<T> {
    fn to_db_value(&self) -> DbValue {
        self.as_ref().map_or(DbValue::Null, ToDbValue::to_db_value)
    }
}

/// A Rust value a result cell converts into.
pub trait FromDbValue: Sized {
    /// Converts the cell, or says why not.
    fn from_db_value(value: &DbValue) -> Result<Self, String>;
}

fn mismatch(expected: &str, value: &DbValue) -> String {
    format!("expected {expected}, found {value:?}")
}

impl FromDbValue for i64 {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::Int(i) => Ok(*i),
            other => Err(mismatch("an integer", other)),
        }
    }
}
impl FromDbValue for f64 {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::Float(f) => Ok(*f),
            DbValue::Int(i) => Ok(*i as f64),
            other => Err(mismatch("a number", other)),
        }
    }
}
impl FromDbValue for bool {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::Boolean(b) => Ok(*b),
            // MySQL's BOOLEAN is tinyint(1): any non-zero value is true.
            DbValue::Int(i) => Ok(*i != 0),
            other => Err(mismatch("a boolean", other)),
        }
    }
}
impl FromDbValue for String {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::Text(s) => Ok(s.clone()),
            DbValue::Int(i) => Ok(i.to_string()),
            DbValue::Float(f) => Ok(f.to_string()),
            DbValue::Boolean(b) => Ok(b.to_string()),
            other => Err(mismatch("text", other)),
        }
    }
}
impl FromDbValue for Vec<u8> {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::Bytes(b) => Ok(b.clone()),
            other => Err(mismatch("bytes", other)),
        }
    }
}
impl FromDbValue for Vec<i64> {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::IntList(l) => Ok(l.clone()),
            other => Err(mismatch("an integer list", other)),
        }
    }
}
impl FromDbValue for Vec<String> {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::TextList(l) => Ok(l.clone()),
            other => Err(mismatch("a text list", other)),
        }
    }
}
impl<T: FromDbValue> FromDbValue for Option<T> {
    fn from_db_value(value: &DbValue) -> Result<Self, String> {
        match value {
            DbValue::Null => Ok(None),
            other => T::from_db_value(other).map(Some),
        }
    }
}

/// One result row, read by column name.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [DbValue],
}

impl Row<'_> {
    /// The cell of `column` as `T`; an error names the column when it is missing
    /// or of another type (use `Option<T>` for nullable columns).
    pub fn get<T: FromDbValue>(&self, column: &str) -> Result<T, PluginError> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| PluginError::query(format!("no column `{column}` in the result")))?;
        let value = self.values.get(index).unwrap_or(&DbValue::Null);
        T::from_db_value(value).map_err(|e| PluginError::query(format!("column `{column}`: {e}")))
    }

    /// The raw cells, in column order.
    pub fn values(&self) -> &[DbValue] {
        self.values
    }
}

impl Rows {
    /// The rows, each readable by column name.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.values.iter().map(|values| Row { columns: &self.columns, values })
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the query returned no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_typed_rows() {
        assert_eq!(5i32.to_db_value(), DbValue::Int(5));
        assert_eq!("x".to_db_value(), DbValue::Text("x".into()));
        assert_eq!(vec![1i64, 2].to_db_value(), DbValue::IntList(vec![1, 2]));
        assert_eq!(None::<i64>.to_db_value(), DbValue::Null);
        let rows = Rows {
            columns: vec!["id".into(), "name".into(), "note".into()],
            values: vec![vec![DbValue::Int(1), DbValue::Text("a".into()), DbValue::Null]],
        };
        let row = rows.iter().next().unwrap();
        assert_eq!(row.get::<i64>("id").unwrap(), 1);
        assert_eq!(row.get::<String>("name").unwrap(), "a");
        assert_eq!(row.get::<Option<String>>("note").unwrap(), None);
        assert!(row.get::<i64>("name").is_err());
        assert!(row.get::<i64>("nope").is_err());
        assert_eq!(rows.len(), 1);
    }
}
