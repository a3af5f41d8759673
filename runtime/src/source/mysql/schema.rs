//! Column names for servers whose table maps carry none
//! (`binlog_row_metadata` MINIMAL or NO_LOG, MySQL's and MariaDB's defaults):
//! read from the catalogue (`information_schema`) where the capture starts,
//! then changed by the DDL statements read from the binlog (`ddl.rs`), and
//! stored with the resume position, so every row is named by the layout it was
//! written with. Every table map is checked against the schema (column count
//! and types); one that does not fit is read from the catalogue again, and a
//! change that still cannot be named is reported instead of misnamed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use serde::{Deserialize, Serialize};

use super::ddl::{self, Schemas, TableName};
use super::debezium_json::BINARY_CHARSET;

/// Longest a catalogue read may take before the server counts as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A table's columns as the catalogue describes them, in table order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub(super) columns: Vec<SchemaColumn>,
    /// Column indexes of the primary key, in key order.
    pub(super) primary_key: Vec<usize>,
}

/// One column of a [`TableSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaColumn {
    pub(super) name: String,
    /// `information_schema.columns.data_type`, lower case ("bigint", "enum").
    pub(super) data_type: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) unsigned: bool,
    /// ENUM or SET labels, in declaration order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) labels: Option<Vec<String>>,
    /// The collation's character set id (63 for binary strings, 0 for non-strings).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) charset: u16,
}

impl TableSchema {
    /// The schema that names `tme`'s columns: this one when the table map
    /// describes the same columns (count and types), or its first columns when
    /// the table map has fewer and they match, the primary key among them (rows
    /// from before columns were added at the end, read by a capture behind that
    /// change). Anything else cannot be named by position.
    pub(super) fn fit(self: &Arc<Self>, tme: &TableMapEvent<'_>) -> Result<Arc<Self>, String> {
        let count = tme.columns_count() as usize;
        let behind = "the capture is behind a later change of the table, so its columns cannot be named by \
                      position; set binlog_row_metadata = FULL on the server, or re-snapshot";
        if count > self.columns.len() {
            return Err(format!(
                "the binlog's table map has {count} columns but the catalogue has {} ({}): {behind}",
                self.columns.len(),
                self.names().join(", ")
            ));
        }
        for (index, column) in self.columns.iter().take(count).enumerate() {
            let kind = tme.get_column_type(index).ok().flatten();
            if let Some(kind) = kind
                && !stored_as(&column.data_type, kind)
            {
                return Err(format!(
                    "column {index} is {kind:?} in the binlog's table map but `{}` is {} in the catalogue: {behind}",
                    column.name, column.data_type
                ));
            }
        }
        if count == self.columns.len() {
            return Ok(self.clone());
        }
        if self.primary_key.iter().any(|&key| key >= count) {
            return Err(format!("the binlog's table map has {count} columns, without the whole primary key: {behind}"));
        }
        Ok(Arc::new(Self { columns: self.columns[..count].to_vec(), primary_key: self.primary_key.clone() }))
    }

    fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }
}

fn is_zero(value: &u16) -> bool {
    *value == 0
}

/// Whether a table map names its columns (`binlog_row_metadata = FULL`).
pub(super) fn names_columns(tme: &TableMapEvent<'_>) -> bool {
    tme.iter_optional_meta().any(|field| matches!(field, Ok(OptionalMetadataField::ColumnName(_))))
}

/// The captured tables' schemas as of the event being read, and as of the
/// confirmed position (stored with it, so a restart names the rows it reads
/// again by the layout they were written with).
pub(super) struct Catalogue {
    opts: Opts,
    captured: HashSet<TableName>,
    /// As of the last event read.
    tables: Schemas,
    /// As of the confirmed position.
    confirmed: Schemas,
    /// Schemas after changes read but not yet confirmed, by the position of the change.
    pending: Vec<((u64, u64), Schemas)>,
}

impl Catalogue {
    /// `stored`: the schemas stored with the resume position, if any.
    pub(super) fn new(opts: Opts, captured: HashSet<TableName>, stored: Schemas) -> Self {
        Self { opts, captured, tables: stored.clone(), confirmed: stored, pending: Vec::new() }
    }

    /// Reads the captured tables' schemas that are not known yet, where the
    /// capture starts (on servers whose table maps name no columns).
    pub(super) async fn read_missing(&mut self) -> Result<(), mysql_async::Error> {
        let mut missing: Vec<TableName> =
            self.captured.iter().filter(|t| !self.tables.contains_key(*t)).cloned().collect();
        missing.sort();
        for table in missing {
            let schema = self.read(&table).await?;
            if !schema.columns.is_empty() {
                self.tables.insert(table, Arc::new(schema));
            }
        }
        self.confirmed = self.tables.clone();
        Ok(())
    }

    /// The schema of `table` that names `tme`'s columns: the one followed so
    /// far, else a fresh read of the catalogue (the table is new to the
    /// capture, or a DDL statement could not be followed). `Ok(Err(_))` when
    /// neither fits the table map; `Err` when the server cannot be asked.
    pub(super) async fn schema(
        &mut self,
        table: &TableName,
        tme: &TableMapEvent<'_>,
        at: (u64, u64),
    ) -> Result<Result<Arc<TableSchema>, String>, mysql_async::Error> {
        let known = self.tables.get(table).map(|known| known.fit(tme));
        if let Some(Ok(fits)) = known {
            return Ok(Ok(fits));
        }
        let read = Arc::new(self.read(table).await?);
        let fits = read.fit(tme);
        let name = format!("{}.{}", table.0, table.1);
        match &known {
            Some(Err(e)) => tracing::warn!(table = %name, error = %e, fits = fits.is_ok(),
                "the followed schema does not fit the binlog's table map; read the catalogue again"),
            None => tracing::info!(table = %name, columns = ?read.names(), fits = fits.is_ok(),
                "column names read from the catalogue (the binlog carries none)"),
            Some(Ok(_)) => {}
        }
        self.tables.insert(table.clone(), read);
        self.pending.push((at, self.tables.clone()));
        Ok(fits)
    }

    /// Follows a DDL statement read at `at` (the end of its event).
    pub(super) fn statement(&mut self, statement: &str, default_database: &str, at: (u64, u64)) {
        let applied = ddl::apply(&mut self.tables, &self.captured, statement, default_database);
        for table in &applied.unfollowed {
            tracing::warn!(table = %format!("{}.{}", table.0, table.1), statement,
                "a DDL statement on a captured table could not be followed; its columns are read from the \
                 catalogue when it is next written");
            self.tables.remove(table);
        }
        if applied.changed || !applied.unfollowed.is_empty() {
            self.pending.push((at, self.tables.clone()));
        }
    }

    /// Everything up to `at` was written: the schemas as of there are the ones to store.
    pub(super) fn confirm(&mut self, at: (u64, u64)) {
        let upto = self.pending.partition_point(|(position, _)| *position <= at);
        if let Some((_, schemas)) = self.pending.drain(..upto).next_back() {
            self.confirmed = schemas;
        }
    }

    /// The stream goes back to the confirmed position: so do the schemas.
    pub(super) fn rewind(&mut self) {
        self.pending.clear();
        self.tables = self.confirmed.clone();
    }

    /// The schemas as of the confirmed position.
    pub(super) fn confirmed(&self) -> &Schemas {
        &self.confirmed
    }

    async fn read(&self, (database, table): &TableName) -> Result<TableSchema, mysql_async::Error> {
        let read = async {
            let mut conn = Conn::new(self.opts.clone()).await?;
            let columns: Vec<(String, String, String, Option<u16>)> = conn
                .exec(
                    "SELECT c.column_name, LOWER(c.data_type), LOWER(c.column_type), co.id \
                     FROM information_schema.columns c \
                     LEFT JOIN information_schema.collations co ON co.collation_name = c.collation_name \
                     WHERE c.table_schema = ? AND c.table_name = ? ORDER BY c.ordinal_position",
                    (database.as_str(), table.as_str()),
                )
                .await?;
            let keys: Vec<String> = conn
                .exec(
                    "SELECT column_name FROM information_schema.key_column_usage \
                     WHERE table_schema = ? AND table_name = ? AND constraint_name = 'PRIMARY' \
                     ORDER BY ordinal_position",
                    (database.as_str(), table.as_str()),
                )
                .await?;
            let _ = conn.disconnect().await;
            Ok::<_, mysql_async::Error>((columns, keys))
        };
        let (columns, keys) = tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| {
            mysql_async::Error::Other(format!("no answer within {READ_TIMEOUT:?} reading the catalogue").into())
        })??;
        let columns: Vec<SchemaColumn> = columns
            .into_iter()
            .map(|(name, data_type, column_type, charset)| SchemaColumn {
                labels: labels(&data_type, &column_type),
                unsigned: column_type.contains(" unsigned"),
                charset: charset.unwrap_or(if binary_string(&data_type) { BINARY_CHARSET } else { 0 }),
                name,
                data_type,
            })
            .collect();
        let primary_key = keys.iter().filter_map(|key| columns.iter().position(|c| &c.name == key)).collect();
        Ok(TableSchema { columns, primary_key })
    }
}

/// A statement's words, lower case, without quotes, comments or punctuation
/// around names (`db`.`t` → "db.t").
pub(super) fn ddl_words(statement: &str) -> Vec<String> {
    let mut text = String::with_capacity(statement.len());
    let mut rest = statement;
    while let Some(start) = rest.find("/*") {
        text.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
    }
    text.push_str(rest);
    text.replace('`', "")
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// ENUM/SET labels from a column type such as `enum('a','it''s')`.
pub(super) fn labels(data_type: &str, column_type: &str) -> Option<Vec<String>> {
    if data_type != "enum" && data_type != "set" {
        return None;
    }
    let inner = column_type.split_once('(')?.1.rsplit_once(')')?.0;
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => label.extend(chars.next()),
                c => label.push(c),
            }
        }
        labels.push(label);
    }
    Some(labels)
}

pub(super) fn binary_string(data_type: &str) -> bool {
    matches!(
        data_type,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "inet6" | "inet4" | "uuid"
    )
}

/// Whether a column of catalogue type `data_type` is written to the binlog as `kind`.
fn stored_as(data_type: &str, kind: ColumnType) -> bool {
    use ColumnType::*;
    match data_type {
        "tinyint" | "bool" | "boolean" => kind == MYSQL_TYPE_TINY,
        "smallint" => kind == MYSQL_TYPE_SHORT,
        "mediumint" => kind == MYSQL_TYPE_INT24,
        "int" | "integer" => kind == MYSQL_TYPE_LONG,
        "bigint" => kind == MYSQL_TYPE_LONGLONG,
        "decimal" | "numeric" => matches!(kind, MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL),
        "float" => kind == MYSQL_TYPE_FLOAT,
        "double" | "real" => kind == MYSQL_TYPE_DOUBLE,
        "year" => kind == MYSQL_TYPE_YEAR,
        "date" => matches!(kind, MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE),
        "datetime" => matches!(kind, MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2),
        "timestamp" => matches!(kind, MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2),
        "time" => matches!(kind, MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2),
        "enum" => matches!(kind, MYSQL_TYPE_ENUM | MYSQL_TYPE_STRING),
        "set" => matches!(kind, MYSQL_TYPE_SET | MYSQL_TYPE_STRING),
        "bit" => kind == MYSQL_TYPE_BIT,
        "char" | "binary" | "inet6" | "inet4" | "uuid" => kind == MYSQL_TYPE_STRING,
        "varchar" | "varbinary" => matches!(kind, MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING),
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            matches!(kind, MYSQL_TYPE_BLOB | MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB)
        }
        "json" => matches!(kind, MYSQL_TYPE_JSON | MYSQL_TYPE_BLOB),
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" | "geomcollection" => kind == MYSQL_TYPE_GEOMETRY,
        // A type this list does not know is not held against the table map.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_and_set_labels_come_out_of_the_column_type() {
        assert_eq!(labels("enum", "enum('a','it''s','b,c')").unwrap(), ["a", "it's", "b,c"]);
        assert_eq!(labels("set", "set('x','y')").unwrap(), ["x", "y"]);
        assert_eq!(labels("int", "int(11)"), None);
    }

    #[test]
    fn catalogue_types_match_binlog_types() {
        assert!(stored_as("bigint", ColumnType::MYSQL_TYPE_LONGLONG));
        assert!(!stored_as("bigint", ColumnType::MYSQL_TYPE_LONG));
        assert!(stored_as("longtext", ColumnType::MYSQL_TYPE_BLOB));
        assert!(stored_as("varchar", ColumnType::MYSQL_TYPE_VARCHAR));
        assert!(!stored_as("varchar", ColumnType::MYSQL_TYPE_BLOB));
        assert!(stored_as("enum", ColumnType::MYSQL_TYPE_ENUM));
    }
}
