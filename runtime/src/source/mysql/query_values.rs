//! Rows read with a plain `SELECT` (the capture's initial snapshot) → the
//! same Debezium MySQL JSON that `values::render_row` makes of the binlog.
//!
//! A result set describes its own columns, so no table map is needed, but the
//! server has already interpreted some values: ENUM and SET arrive as their
//! labels, TIMESTAMP as a wall-clock time in the session zone, BINARY(n) with
//! its trailing zero bytes, and text converted to the connection's character
//! set whatever the column's own.

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::{Column, Row, Value};
use serde_json::Value as Json;

use super::debezium_json::{
    BINARY_CHARSET, base64, bits, date, datetime, float, single, text, time, timestamp, utf8, wall_clock,
};
use super::values::RenderedRow;

/// A row of `SELECT * FROM db.t` (binary protocol, `conn.exec`, session time_zone '+00:00'),
/// rendered exactly as `render_row` renders the same data from the binlog.
///
/// `key_columns` are the primary-key column names (empty for a table without
/// one). The session zone matters because TIMESTAMP arrives converted to it and
/// is read back as UTC. Fails, naming the column, on a value its column type
/// cannot explain (such as text-protocol rows) and on a key column the row lacks.
/// MariaDB's INVISIBLE columns are in binlog images but not in `SELECT *`, so
/// name every column in the query for rows that match the binlog's.
pub fn render_query_row(mut row: Row, key_columns: &[String]) -> Result<RenderedRow, String> {
    let columns = row.columns();
    let mut rendered = RenderedRow::default();
    for (position, column) in columns.iter().enumerate() {
        let name = column.name_str();
        let table = || format!("{}.{}", column.schema_str(), column.org_table_str());
        let kind = column.column_type();
        let value = row
            .take::<Value, _>(position)
            .ok_or_else(|| format!("{}: column `{name}` has no value in the row", table()))?;
        let value = render(column, value).map_err(|what| format!("{}: column `{name}` ({kind:?}): {what}", table()))?;
        // Key entries go in column order, as `render_row` inserts them.
        if key_columns.iter().any(|key| *key == name) {
            rendered.key.insert(name.to_string(), value.clone());
        }
        rendered.image.insert(name.into_owned(), value);
    }
    if let Some(missing) = key_columns.iter().find(|key| !rendered.key.contains_key(key.as_str())) {
        return Err(format!("primary-key column `{missing}` is not in the row"));
    }
    Ok(rendered)
}

/// One binary-protocol value in the form `values::Column::render` gives the
/// binlog's value of the same column.
fn render(column: &Column, value: Value) -> Result<Json, String> {
    use ColumnType::*;
    let flags = column.flags();
    // ENUM and SET labels are text even in a binary column, as the binlog's table map holds them.
    let labels = flags.intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG);
    let binary = column.character_set() == BINARY_CHARSET && !labels;
    let fsp = column.decimals();
    Ok(match (column.column_type(), value) {
        (_, Value::NULL) => Json::Null,
        // The server sends each integer in its column's signedness, so no reinterpretation.
        (
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_YEAR,
            Value::Int(i),
        ) => Json::from(i),
        (
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_YEAR,
            Value::UInt(u),
        ) => Json::from(u),
        (MYSQL_TYPE_FLOAT, Value::Float(f)) => single(f)?,
        (MYSQL_TYPE_DOUBLE, Value::Double(d)) => float(d)?,
        (MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL, Value::Bytes(b)) => Json::String(utf8(b)?),
        (MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE, Value::Date(y, mo, d, ..)) => date(y, mo, d)?,
        (MYSQL_TYPE_DATETIME, Value::Date(y, mo, d, h, mi, s, us)) => {
            datetime(wall_clock(y, mo, d, h, mi, s, us)?, fsp > 3)
        }
        // In a '+00:00' session the wall clock is UTC; the zero TIMESTAMP stays null, as in the binlog.
        (MYSQL_TYPE_TIMESTAMP, Value::Date(y, mo, d, h, mi, s, us)) => match wall_clock(y, mo, d, h, mi, s, us)? {
            Some(at) => timestamp(at.and_utc().timestamp(), us, fsp)?,
            None => Json::Null,
        },
        (MYSQL_TYPE_TIME, Value::Time(negative, days, h, mi, s, us)) => time(negative, days, h, mi, s, us),
        (MYSQL_TYPE_BIT, Value::Bytes(b)) => bits(&b, column.column_length() as usize),
        (MYSQL_TYPE_GEOMETRY | MYSQL_TYPE_VECTOR, Value::Bytes(b)) => base64(b),
        // MySQL's JSON arrives as its text form; the binlog's binary JSON is rendered compactly.
        (MYSQL_TYPE_JSON, Value::Bytes(b)) => {
            let parsed: Json = serde_json::from_slice(&b).map_err(|e| format!("unreadable JSON: {e}"))?;
            Json::String(parsed.to_string())
        }
        (
            MYSQL_TYPE_STRING
            | MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB,
            Value::Bytes(b),
        ) if binary => base64(b),
        (
            MYSQL_TYPE_STRING
            | MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_ENUM
            | MYSQL_TYPE_SET,
            Value::Bytes(b),
        ) => Json::String(text(b, column.character_set())?),
        (kind, value) => return Err(format!("unsupported value {value:?} for a {kind:?} column")),
    })
}

#[cfg(test)]
#[path = "query_values_tests.rs"]
mod tests;
