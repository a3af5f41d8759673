//! The initial snapshot: every existing row of the captured tables, emitted as
//! `r` (snapshot read) changes so the cache is warm before streaming starts;
//! the same re-reads the tables after a failover (`failover.rs`).
//!
//! It need not be consistent with the slot: a snapshot read applies only to keys
//! whose versions are older than the slot's position, never becomes a key's
//! change version, and every key is recomputed from the database as it is now,
//! so a streamed change (which carries a real position) always wins. For the
//! same reason a snapshot whose connection is lost goes on from the table it
//! was reading, in a new transaction.

use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::{Connection, Executor, PgConnection, Row};
use tokio::time::timeout;

use super::pgoutput::RowChange;
use super::values::debezium_value;
use super::{PostgresCapture, Transaction};
use crate::source::change::SnapshotMark;
use crate::source::snapshot_marks::SnapshotMarker;
use crate::source::{SourceError, SourceRecord};

/// A table's columns (`$1` schema, `$2` table) in order: name, type oid and
/// modifier, `format_type`, and the position in the primary key (null outside it).
pub(crate) const DESCRIBE_COLUMNS: &str =
    "select a.attname::text as name, a.atttypid::int8 as oid, a.atttypmod as typmod,
            format_type(a.atttypid, a.atttypmod) as type_name,
            array_position(i.indkey::int2[], a.attnum) as key_position
     from pg_attribute a
     join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
     left join pg_index i on i.indrelid = c.oid and i.indisprimary
     where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped
     order by a.attnum";

/// Longest one snapshot statement may take before the connection counts as lost.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The initial snapshot of a source, reopened where it stopped when its
/// connection is lost.
pub(super) struct Snapshot {
    source: String,
    url: String,
    tables: Vec<String>,
    /// Tables finished (their rows handed out) before the current reader.
    done: usize,
    reader: Option<SnapshotReader>,
    lsn: u64,
    timeline: u32,
    marker: SnapshotMarker<RowChange>,
}

impl Snapshot {
    /// A snapshot of `tables`, its rows carrying the slot position `lsn` on
    /// `timeline`; it connects on the first page.
    pub(super) fn new(source: &str, url: &str, tables: &[String], lsn: u64, timeline: u32) -> Self {
        Self {
            source: source.to_owned(),
            url: url.to_owned(),
            tables: tables.to_vec(),
            done: 0,
            reader: None,
            lsn,
            timeline,
            marker: SnapshotMarker::new(tables.len()),
        }
    }

    /// The slot position the rows carry, and its timeline.
    pub(super) fn position(&self) -> (u64, u32) {
        (self.lsn, self.timeline)
    }

    /// The next page of rows with their `source.snapshot` marks; empty when
    /// every table is done. The last row read is held back until the next
    /// one tells whether it ends its table or the snapshot.
    pub(super) async fn next_page(&mut self, size: usize) -> Result<Vec<(RowChange, SnapshotMark)>, SourceError> {
        loop {
            if self.reader.is_none() {
                self.reader = Some(SnapshotReader::open(&self.source, &self.url, &self.tables[self.done..]).await?);
            }
            let Some(reader) = self.reader.as_mut() else { return Ok(Vec::new()) };
            let page = match reader.next_page(size).await {
                Ok(page) => page,
                Err(e) => {
                    // The table being read is read again from its start in a new transaction.
                    self.done += reader.current;
                    self.reader = None;
                    self.marker.restart_table(self.done);
                    tracing::warn!(source = %self.source, error = %e, "snapshot connection lost; going on from the table it was reading");
                    return Err(e);
                }
            };
            let Some(page) = page else { return Ok(self.marker.finish().into_iter().collect()) };
            let table = self.done + page.table;
            let mut marked = Vec::with_capacity(page.rows.len());
            for (index, row) in page.rows.into_iter().enumerate() {
                marked.extend(self.marker.push(row, table, page.first_in_table && index == 0));
            }
            if !marked.is_empty() {
                return Ok(marked);
            }
        }
    }
}

impl PostgresCapture {
    /// The next page of the snapshot, or `None` once it is done. The
    /// marker is set only after every page's batch was settled, so a crash
    /// repeats the snapshot.
    pub(super) async fn snapshot_batch(&mut self) -> Result<Option<Vec<SourceRecord>>, SourceError> {
        let Some(snapshot) = &mut self.snapshot else { return Ok(None) };
        let (lsn, timeline) = snapshot.position();
        let page = snapshot.next_page(self.batch_size).await?;
        if page.is_empty() && !self.confirmations.all_settled() {
            // Pages read ahead are not written yet: the snapshot is not done until they are.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(Some(Vec::new()));
        }
        if !page.is_empty() {
            let tx = Transaction { commit_lsn: lsn, xid: 0, committed_at_ms: crate::clock::now_ms() as i64, timeline };
            return Ok(Some(
                page.into_iter().map(|(change, mark)| self.record_in(change, tx, lsn, Some(mark))).collect(),
            ));
        }
        self.snapshot_done().await?;
        self.snapshot = None;
        Ok(None)
    }
}

/// Rows of one table, read by one fetch.
struct Page {
    /// The table's index among the reader's tables.
    table: usize,
    /// Its first row is the table's first.
    first_in_table: bool,
    rows: Vec<RowChange>,
}

struct Table {
    schema: String,
    name: String,
    /// (name, type oid, type modifier, part of the primary key)
    columns: Vec<(String, u32, i32, bool)>,
}

/// Reads the tables one page at a time through a cursor, in one read-only
/// repeatable-read transaction.
struct SnapshotReader {
    source: String,
    conn: PgConnection,
    tables: Vec<Table>,
    current: usize,
    cursor_open: bool,
    rows: u64,
}

impl SnapshotReader {
    /// Connects and reads the tables' column types and keys.
    async fn open(source: &str, url: &str, tables: &[String]) -> Result<Self, SourceError> {
        let mut conn =
            bounded(source, "snapshot connect", timeout(STATEMENT_TIMEOUT, PgConnection::connect(url)).await)?;
        let session =
            "set datestyle = ISO; set timezone = 'UTC'; set intervalstyle = postgres; set extra_float_digits = 3";
        bounded(source, "snapshot session", timeout(STATEMENT_TIMEOUT, conn.execute(sqlx::raw_sql(session))).await)?;
        let mut described = Vec::new();
        for table in tables {
            let (schema, name) = table.split_once('.').unwrap_or(("public", table));
            let describe = sqlx::query(DESCRIBE_COLUMNS).bind(schema).bind(name);
            let rows =
                bounded(source, "snapshot describe", timeout(STATEMENT_TIMEOUT, conn.fetch_all(describe)).await)?;
            let columns = rows
                .iter()
                .map(|r| {
                    let oid: i64 = r.try_get("oid").unwrap_or(25);
                    (
                        r.try_get("name").unwrap_or_default(),
                        oid as u32,
                        r.try_get("typmod").unwrap_or(-1),
                        r.try_get::<Option<i32>, _>("key_position").ok().flatten().is_some(),
                    )
                })
                .collect();
            described.push(Table { schema: schema.to_owned(), name: name.to_owned(), columns });
        }
        let begin = conn.execute(sqlx::raw_sql("begin isolation level repeatable read read only"));
        bounded(source, "snapshot begin", timeout(STATEMENT_TIMEOUT, begin).await)?;
        Ok(Self { source: source.to_owned(), conn, tables: described, current: 0, cursor_open: false, rows: 0 })
    }

    /// The next page of rows as snapshot changes; `None` when every table is done.
    async fn next_page(&mut self, size: usize) -> Result<Option<Page>, SourceError> {
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
                bounded(
                    &self.source,
                    "snapshot cursor",
                    timeout(STATEMENT_TIMEOUT, conn.execute(sqlx::raw_sql(&sql))).await,
                )?;
                self.cursor_open = true;
            }
            let fetch = format!("fetch {size} from evercache_snapshot");
            let conn: &mut PgConnection = &mut self.conn;
            let rows = bounded(
                &self.source,
                "snapshot read",
                timeout(STATEMENT_TIMEOUT, conn.fetch_all(sqlx::query(&fetch))).await,
            )?;
            if rows.is_empty() {
                let conn: &mut PgConnection = &mut self.conn;
                bounded(
                    &self.source,
                    "snapshot close",
                    timeout(STATEMENT_TIMEOUT, conn.execute(sqlx::raw_sql("close evercache_snapshot"))).await,
                )?;
                tracing::info!(source = %self.source, table = %format!("{}.{}", table.schema, table.name), rows = self.rows, "snapshot of table done");
                self.cursor_open = false;
                self.current += 1;
                self.rows = 0;
                continue;
            }
            let first_in_table = self.rows == 0;
            self.rows += rows.len() as u64;
            let rows = rows.iter().map(|row| change(table, row)).collect();
            return Ok(Some(Page { table: self.current, first_in_table, rows }));
        }
        Ok(None)
    }
}

/// A snapshot statement, given up on after [`STATEMENT_TIMEOUT`].
fn bounded<T>(
    source: &str,
    operation: &'static str,
    answer: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
) -> Result<T, SourceError> {
    let unavailable = |message: String| SourceError::Unavailable { source_name: source.to_owned(), operation, message };
    match answer {
        Ok(result) => result.map_err(|e| unavailable(e.to_string())),
        Err(_) => Err(unavailable(format!("no answer within {STATEMENT_TIMEOUT:?}"))),
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
