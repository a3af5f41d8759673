//! The initial snapshot: every existing row of the captured tables, emitted as
//! `r` (snapshot read) changes so the cache is warm before streaming starts.
//!
//! It need not be consistent with the slot: a snapshot write only fills keys that
//! have no version yet, and every key is recomputed from the database as it is
//! now, so a streamed change (which carries a real position) always wins.

use serde_json::{Map, Value};
use sqlx::{Connection, Executor, PgConnection, Row};

use super::pgoutput::RowChange;
use super::values::debezium_value;
use crate::source::SourceError;

/// Whether to read existing rows on first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Read every existing row once, when the slot is new (or the last snapshot did not finish).
    #[default]
    Initial,
    /// Only stream changes made after the slot was created.
    Never,
}

struct Table {
    schema: String,
    name: String,
    /// (name, type oid, type modifier, part of the primary key)
    columns: Vec<(String, u32, i32, bool)>,
}

/// Reads the tables one page at a time through a cursor, in one read-only
/// repeatable-read transaction.
pub(super) struct SnapshotReader {
    source: String,
    conn: PgConnection,
    tables: Vec<Table>,
    current: usize,
    cursor_open: bool,
    rows: u64,
}

impl SnapshotReader {
    /// Connects and reads the tables' column types and keys.
    pub async fn open(source: &str, url: &str, tables: &[String]) -> Result<Self, SourceError> {
        let failed = |operation: &'static str| {
            move |e: sqlx::Error| SourceError::Unavailable {
                source_name: source.to_owned(),
                operation,
                message: e.to_string(),
            }
        };
        let mut conn = PgConnection::connect(url).await.map_err(failed("snapshot connect"))?;
        sqlx::raw_sql(
            "set datestyle = ISO; set timezone = 'UTC'; set intervalstyle = postgres; set extra_float_digits = 3",
        )
        .execute(&mut conn)
        .await
        .map_err(failed("snapshot session"))?;
        let mut described = Vec::new();
        for table in tables {
            let (schema, name) = table.split_once('.').unwrap_or(("public", table));
            let rows = sqlx::query(
                "select a.attname::text as name, a.atttypid::int8 as oid, a.atttypmod as typmod,
                        coalesce(a.attnum = any(i.indkey), false) as key
                 from pg_attribute a
                 join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
                 left join pg_index i on i.indrelid = c.oid and i.indisprimary
                 where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped
                 order by a.attnum",
            )
            .bind(schema)
            .bind(name)
            .fetch_all(&mut conn)
            .await
            .map_err(failed("snapshot describe"))?;
            let columns = rows
                .iter()
                .map(|r| {
                    let oid: i64 = r.try_get("oid").unwrap_or(25);
                    (
                        r.try_get("name").unwrap_or_default(),
                        oid as u32,
                        r.try_get("typmod").unwrap_or(-1),
                        r.try_get("key").unwrap_or(false),
                    )
                })
                .collect();
            described.push(Table { schema: schema.to_owned(), name: name.to_owned(), columns });
        }
        sqlx::raw_sql("begin isolation level repeatable read read only")
            .execute(&mut conn)
            .await
            .map_err(failed("snapshot begin"))?;
        Ok(Self { source: source.to_owned(), conn, tables: described, current: 0, cursor_open: false, rows: 0 })
    }

    /// The next page of rows as snapshot changes; empty when every table is done.
    pub async fn next_page(&mut self, size: usize) -> Result<Vec<RowChange>, SourceError> {
        while let Some(table) = self.tables.get(self.current) {
            if !self.cursor_open {
                let select: Vec<String> = table.columns.iter().map(|(n, ..)| format!("\"{n}\"::text")).collect();
                let sql = format!(
                    "declare evercache_snapshot no scroll cursor for select {} from \"{}\".\"{}\"",
                    select.join(", "),
                    table.schema,
                    table.name
                );
                let conn: &mut PgConnection = &mut self.conn;
                conn.execute(sqlx::raw_sql(&sql)).await.map_err(|e| self.failed("snapshot cursor", e))?;
                self.cursor_open = true;
            }
            let fetch = format!("fetch {size} from evercache_snapshot");
            let conn: &mut PgConnection = &mut self.conn;
            let rows = conn.fetch_all(sqlx::query(&fetch)).await.map_err(|e| self.failed("snapshot read", e))?;
            if rows.is_empty() {
                let conn: &mut PgConnection = &mut self.conn;
                conn.execute(sqlx::raw_sql("close evercache_snapshot"))
                    .await
                    .map_err(|e| self.failed("snapshot close", e))?;
                tracing::info!(source = %self.source, table = %format!("{}.{}", table.schema, table.name), rows = self.rows, "snapshot of table done");
                self.cursor_open = false;
                self.current += 1;
                self.rows = 0;
                continue;
            }
            self.rows += rows.len() as u64;
            return Ok(rows.iter().map(|row| change(table, row)).collect());
        }
        Ok(Vec::new())
    }

    fn failed(&self, operation: &'static str, e: sqlx::Error) -> SourceError {
        SourceError::Unavailable { source_name: self.source.clone(), operation, message: e.to_string() }
    }
}

fn change(table: &Table, row: &sqlx::postgres::PgRow) -> RowChange {
    let mut after = Map::new();
    let mut key = Map::new();
    for (index, (name, oid, typmod, is_key)) in table.columns.iter().enumerate() {
        let text: Option<String> = row.try_get(index).unwrap_or(None);
        let value = text.map_or(Value::Null, |t| debezium_value(*oid, *typmod, t));
        if *is_key {
            key.insert(name.clone(), value.clone());
        }
        after.insert(name.clone(), value);
    }
    RowChange {
        op: 'r',
        schema: table.schema.clone(),
        table: table.name.clone(),
        key: if key.is_empty() { Value::Null } else { Value::Object(key) },
        before: None,
        after: Some(Value::Object(after)),
    }
}
