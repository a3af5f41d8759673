//! Keyset pages of a MySQL or MariaDB table, each row rendered as the
//! capture's snapshot renders it, on a connection of its own (the session
//! time zone is set to UTC) that is closed afterwards, never pooled again.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Row, Value};
use serde_json::{Value as Json, json};
use tokio::time::timeout;

use super::{PAGE_TIMEOUT, ScanCursor, ScanError, ScanPage, ScannedRow, bounded};
use crate::source::mysql::render_query_row;

/// A described MySQL or MariaDB table.
pub struct MySqlTable {
    pool: Pool,
    label: String,
    from: String,
    select: String,
    key_columns: Vec<String>,
}

fn quoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl MySqlTable {
    pub(super) async fn describe(pool: Pool, database: &str, name: &str) -> Result<Self, ScanError> {
        let label = format!("{database}.{name}");
        let read = async {
            let mut conn = pool.get_conn().await?;
            let columns: Vec<String> = conn
                .exec(
                    "SELECT column_name FROM information_schema.columns \
                     WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                    (database, name),
                )
                .await?;
            let key_columns: Vec<String> = conn
                .exec(
                    "SELECT column_name FROM information_schema.key_column_usage \
                     WHERE table_schema = ? AND table_name = ? AND constraint_name = 'PRIMARY' \
                     ORDER BY ordinal_position",
                    (database, name),
                )
                .await?;
            Ok::<_, mysql_async::Error>((columns, key_columns))
        };
        let (columns, key_columns) = bounded(&label, timeout(PAGE_TIMEOUT, read).await)?;
        if columns.is_empty() {
            return Err(ScanError::NoTable { table: label });
        }
        Ok(Self {
            pool,
            from: format!("{}.{}", quoted(database), quoted(name)),
            select: columns.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", "),
            label,
            key_columns,
        })
    }

    pub(super) fn has_key(&self) -> bool {
        !self.key_columns.is_empty()
    }

    pub(super) async fn page(&self, cursor: &ScanCursor, size: usize) -> Result<ScanPage, ScanError> {
        let (select, from) = (&self.select, &self.from);
        let keys = self.key_columns.iter().map(|k| quoted(k)).collect::<Vec<_>>().join(", ");
        let (sql, params) = match cursor {
            _ if self.key_columns.is_empty() => {
                let offset = if let ScanCursor::Offset(rows) = cursor { *rows } else { 0 };
                (format!("SELECT {select} FROM {from} LIMIT {size} OFFSET {offset}"), Params::Empty)
            }
            ScanCursor::After(after) => {
                let marks = vec!["?"; after.len()].join(", ");
                (
                    format!("SELECT {select} FROM {from} WHERE ({keys}) > ({marks}) ORDER BY {keys} LIMIT {size}"),
                    Params::Positional(after.iter().map(from_json).collect()),
                )
            }
            _ => (format!("SELECT {select} FROM {from} ORDER BY {keys} LIMIT {size}"), Params::Empty),
        };
        let read = async {
            let mut conn = self.pool.get_conn().await?;
            // TIMESTAMP values arrive in the session zone and are rendered as UTC.
            conn.query_drop("SET SESSION time_zone = '+00:00'").await?;
            let rows: Vec<Row> = conn.exec(sql, params).await?;
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(rows)
        };
        let rows = bounded(&self.label, timeout(PAGE_TIMEOUT, read).await)?;
        let next = match (rows.last(), cursor) {
            (None, _) => cursor.clone(),
            (Some(_), ScanCursor::Offset(done)) => ScanCursor::Offset(done + rows.len() as u64),
            (Some(_), _) if self.key_columns.is_empty() => ScanCursor::Offset(rows.len() as u64),
            (Some(last), _) => ScanCursor::After(
                self.key_columns.iter().map(|k| last.get::<Value, _>(k.as_str()).map_or(Json::Null, to_json)).collect(),
            ),
        };
        let mut scanned = Vec::with_capacity(rows.len());
        for row in rows {
            let rendered = render_query_row(row, &self.key_columns)
                .map_err(|message| ScanError::Database { table: self.label.clone(), message })?;
            let key = if rendered.key.is_empty() { Json::Null } else { Json::Object(rendered.key) };
            scanned.push(ScannedRow { key, image: Json::Object(rendered.image) });
        }
        Ok(ScanPage { rows: scanned, next })
    }
}

/// A key value as JSON that [`from_json`] turns back into the same value.
fn to_json(value: Value) -> Json {
    match value {
        Value::NULL => Json::Null,
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::Double(d) => json!(d),
        Value::Bytes(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Json::String(text),
            Err(e) => json!({ "hex": hex(e.as_bytes()) }),
        },
        Value::Date(y, mo, d, h, mi, s, us) => json!({ "date": [y, mo, d, h, mi, s, us] }),
        Value::Time(negative, d, h, mi, s, us) => json!({ "time": [negative, d, h, mi, s, us] }),
    }
}

fn from_json(value: &Json) -> Value {
    let part = |parts: &Json, index: usize| parts.get(index).and_then(Json::as_u64).unwrap_or(0);
    match value {
        Json::Null => Value::NULL,
        Json::Bool(b) => Value::Int(i64::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(text) => Value::Bytes(text.clone().into_bytes()),
        Json::Object(object) => {
            if let Some(Json::String(digits)) = object.get("hex") {
                Value::Bytes(unhex(digits))
            } else if let Some(parts) = object.get("date") {
                let p = |i| part(parts, i);
                Value::Date(p(0) as u16, p(1) as u8, p(2) as u8, p(3) as u8, p(4) as u8, p(5) as u8, p(6) as u32)
            } else if let Some(parts) = object.get("time") {
                let negative = parts.get(0).and_then(Json::as_bool).unwrap_or(false);
                let p = |i| part(parts, i);
                Value::Time(negative, p(1) as u32, p(2) as u8, p(3) as u8, p(4) as u8, p(5) as u32)
            } else {
                Value::NULL
            }
        }
        Json::Array(_) => Value::NULL,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(digits: &str) -> Vec<u8> {
    (0..digits.len() / 2).filter_map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_survive_the_saved_cursor() {
        for value in [
            Value::Int(-7),
            Value::UInt(u64::MAX),
            Value::Double(1.5),
            Value::Bytes(b"abc".to_vec()),
            Value::Bytes(vec![0, 159, 146, 150]),
            Value::Date(2026, 12, 3, 23, 59, 1, 250),
            Value::Time(true, 1, 2, 3, 4, 5),
        ] {
            let saved = serde_json::to_string(&to_json(value.clone())).unwrap();
            assert_eq!(from_json(&serde_json::from_str(&saved).unwrap()), value, "{saved}");
        }
    }
}
