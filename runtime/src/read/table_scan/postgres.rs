//! Keyset pages of a Postgres table, each value in the text form the capture's
//! snapshot renders, so the plugin sees what a snapshot read would give it.

use serde_json::{Map, Value};
use sqlx::{Executor, PgPool, Row};
use tokio::time::timeout;

use super::{PAGE_TIMEOUT, ScanCursor, ScanError, ScanPage, ScannedRow, bounded};
use crate::source::postgres::{DESCRIBE_COLUMNS, debezium_value};

/// The session the text forms depend on, as the capture's snapshot sets it.
const SESSION: &str = "set local datestyle = ISO; set local timezone = 'UTC'; set local intervalstyle = postgres; \
                       set local extra_float_digits = 3";

/// A described Postgres table.
pub struct PgTable {
    pool: PgPool,
    label: String,
    from: String,
    columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in the key's order.
    key: Vec<usize>,
}

struct Column {
    name: String,
    oid: u32,
    typmod: i32,
    /// `format_type`, to cast a saved key's text back to the column's type.
    type_name: String,
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgTable {
    pub(super) async fn describe(pool: PgPool, schema: &str, name: &str) -> Result<Self, ScanError> {
        let label = format!("{schema}.{name}");
        let describe = sqlx::query(DESCRIBE_COLUMNS).bind(schema).bind(name);
        let rows = bounded(&label, timeout(PAGE_TIMEOUT, describe.fetch_all(&pool)).await)?;
        if rows.is_empty() {
            return Err(ScanError::NoTable { table: label });
        }
        let mut columns = Vec::with_capacity(rows.len());
        let mut key = Vec::new();
        for row in &rows {
            let oid: i64 = row.try_get("oid").unwrap_or(25);
            if let Ok(Some(position)) = row.try_get::<Option<i32>, _>("key_position") {
                key.push((position, columns.len()));
            }
            columns.push(Column {
                name: row.try_get("name").unwrap_or_default(),
                oid: oid as u32,
                typmod: row.try_get("typmod").unwrap_or(-1),
                type_name: row.try_get("type_name").unwrap_or_else(|_| "text".to_owned()),
            });
        }
        key.sort_unstable();
        let from = format!("{}.{}", quoted(schema), quoted(name));
        Ok(Self { pool, label, from, columns, key: key.into_iter().map(|(_, index)| index).collect() })
    }

    pub(super) fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    pub(super) async fn page(&self, cursor: &ScanCursor, size: usize) -> Result<ScanPage, ScanError> {
        // Aliased, so `order by` names the columns, not their text forms (ordered as text).
        let mut select: Vec<String> =
            self.columns.iter().enumerate().map(|(i, c)| format!("{}::text as _{i}", quoted(&c.name))).collect();
        // Without a key the rows are paged by their physical address: a row an
        // update moves behind the cursor is recomputed by that update's change.
        let order: Vec<String> = if self.key.is_empty() {
            select.push("ctid::text".to_owned());
            vec!["ctid".to_owned()]
        } else {
            self.key.iter().map(|&i| quoted(&self.columns[i].name)).collect()
        };
        let after = match cursor {
            ScanCursor::Start | ScanCursor::Offset(_) => Vec::new(),
            ScanCursor::After(values) => values.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect(),
        };
        let filter = if after.is_empty() {
            String::new()
        } else {
            let types: Vec<&str> = if self.key.is_empty() {
                vec!["tid"]
            } else {
                self.key.iter().map(|&i| self.columns[i].type_name.as_str()).collect()
            };
            let marks: Vec<String> = types.iter().enumerate().map(|(n, t)| format!("${}::text::{t}", n + 1)).collect();
            format!(" where ({}) > ({})", order.join(", "), marks.join(", "))
        };
        let sql = format!(
            "select {} from {}{filter} order by {} limit {size}",
            select.join(", "),
            self.from,
            order.join(", ")
        );
        let read = async {
            let mut tx = self.pool.begin().await?;
            tx.execute(sqlx::raw_sql(SESSION)).await?;
            let mut query = sqlx::query(&sql);
            for value in &after {
                query = query.bind(value);
            }
            let rows = tx.fetch_all(query).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(rows)
        };
        let rows = bounded(&self.label, timeout(PAGE_TIMEOUT, read).await)?;
        let mut next = cursor.clone();
        let mut scanned = Vec::with_capacity(rows.len());
        for row in &rows {
            let texts: Vec<Option<String>> = (0..select.len()).map(|i| row.try_get(i).unwrap_or(None)).collect();
            let positions: Vec<usize> = if self.key.is_empty() { vec![self.columns.len()] } else { self.key.clone() };
            next = ScanCursor::After(
                positions.iter().map(|&i| texts[i].clone().map_or(Value::Null, Value::String)).collect(),
            );
            scanned.push(self.scanned(texts));
        }
        Ok(ScanPage { rows: scanned, next })
    }

    fn scanned(&self, mut texts: Vec<Option<String>>) -> ScannedRow {
        let mut image = Map::new();
        let mut key = Map::new();
        for (index, column) in self.columns.iter().enumerate() {
            let value = texts[index].take().map_or(Value::Null, |t| debezium_value(column.oid, column.typmod, t));
            if self.key.contains(&index) {
                key.insert(column.name.clone(), value.clone());
            }
            image.insert(column.name.clone(), value);
        }
        ScannedRow { key: if key.is_empty() { Value::Null } else { Value::Object(key) }, image: Value::Object(image) }
    }
}
