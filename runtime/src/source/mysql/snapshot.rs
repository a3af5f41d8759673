//! The initial snapshot: every existing row of the captured tables, emitted as
//! `r` (snapshot read) changes so the cache is warm before streaming starts.
//! It reads inside one consistent snapshot whose binlog position MariaDB
//! reports (`binlog_snapshot_file`/`_position`), or, on MySQL, which opens
//! under a brief global read lock while the position is read; streaming starts
//! there, so no change falls between the two. A snapshot whose connection is lost goes
//! on from the table it was reading in a new snapshot; streaming still starts
//! from the first one's position, so nothing committed in between is missed
//! (what is read twice carries its position and is applied once).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params, Row, Value};
use tokio::time::timeout;

use super::change::Change;
use super::config::SnapshotLock;
use super::position::BinlogPosition;
use super::query_values;
use crate::contract::Op;
use crate::event::position as version;
use crate::source::snapshot_marks::SnapshotMarker;
use crate::source::{Origin, RecordBody, SnapshotMark, SourceError, SourceRecord};

/// Longest one snapshot statement may take before the connection counts as lost.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The initial snapshot of a source.
pub(super) struct Snapshot {
    source: String,
    prefix: String,
    opts: Opts,
    tables: Vec<(String, String)>,
    /// Tables whose rows were all handed out.
    done: usize,
    reader: Option<Reader>,
    /// Where streaming starts: the first snapshot's position.
    position: Option<BinlogPosition>,
    server_id: u32,
    /// The server is MariaDB (`source.connector`).
    mariadb: bool,
    lock: SnapshotLock,
    marker: SnapshotMarker<SourceRecord>,
}

/// One consistent snapshot being read, table by table, page by page.
struct Reader {
    conn: Conn,
    table: usize,
    /// Every column in table order (`SELECT *` leaves out invisible ones, which the binlog has).
    columns: Vec<String>,
    key_columns: Vec<String>,
    /// The last row's key values (keyset paging), or the rows read (tables without a key).
    after: Option<Vec<Value>>,
    offset: u64,
}

impl Snapshot {
    pub(super) fn new(
        source: &str,
        prefix: &str,
        opts: Opts,
        tables: Vec<(String, String)>,
        server_id: u32,
        mariadb: bool,
        lock: SnapshotLock,
    ) -> Self {
        Self {
            lock,
            source: source.to_owned(),
            prefix: prefix.to_owned(),
            opts,
            marker: SnapshotMarker::new(tables.len()),
            tables,
            done: 0,
            reader: None,
            position: None,
            server_id,
            mariadb,
        }
    }

    /// Opens the first consistent snapshot (if not yet) and says where streaming starts.
    pub(super) async fn position(&mut self) -> Result<BinlogPosition, SourceError> {
        if self.position.is_none() {
            self.reader = Some(self.open().await?);
        }
        self.position.clone().ok_or_else(|| self.unavailable("no snapshot position".to_owned()))
    }

    /// The next page of rows, their `source.snapshot` marked; empty when
    /// every table is done. The last row read is held back until the next
    /// one tells whether it ends its table or the snapshot.
    pub(super) async fn next_page(&mut self, size: usize) -> Result<Vec<SourceRecord>, SourceError> {
        loop {
            if self.done >= self.tables.len() {
                if let Some(reader) = self.reader.take() {
                    let _ = timeout(Duration::from_secs(2), reader.conn.disconnect()).await;
                }
                return Ok(self.marker.finish().map(marked).into_iter().collect());
            }
            if self.reader.is_none() {
                self.reader = Some(self.open().await?);
            }
            let first_in_table = self.reader.as_ref().is_some_and(|reader| reader.offset == 0);
            let page = match self.read_page(size).await {
                Ok(page) => page,
                Err(e) => {
                    // The table being read is read again from its start in a new snapshot.
                    self.reader = None;
                    self.marker.restart_table(self.done);
                    tracing::warn!(source = %self.source, error = %e,
                        "snapshot connection lost; going on from the table it was reading");
                    return Err(e);
                }
            };
            if !page.is_empty() {
                let mut records = Vec::with_capacity(page.len());
                for (index, record) in page.into_iter().enumerate() {
                    records.extend(self.marker.push(record, self.done, first_in_table && index == 0).map(marked));
                }
                // Empty when the page's only row is held back: the table goes on.
                if !records.is_empty() {
                    return Ok(records);
                }
                continue;
            }
            self.done += 1;
            if let Some(reader) = &mut self.reader {
                reader.table = self.done;
                reader.after = None;
                reader.offset = 0;
                reader.key_columns = Vec::new();
                reader.columns = Vec::new();
            }
        }
    }

    async fn open(&mut self) -> Result<Reader, SourceError> {
        let (lock, opts) = (self.lock, self.opts.clone());
        let attempt = async move {
            let mut conn = Conn::new(opts).await?;
            conn.query_drop("SET SESSION time_zone = '+00:00'").await?;
            if lock == SnapshotLock::GlobalReadLock {
                return locked_snapshot(conn).await;
            }
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
            let status: Vec<(String, String)> = conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
            let value = |name: &str| status.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            match (value("Binlog_snapshot_file"), value("Binlog_snapshot_position")) {
                (Some(file), Some(pos)) => Ok((conn, Some((file, pos)))),
                // MySQL does not say where its snapshot is in the binlog: hold writes for a moment instead.
                _ if lock == SnapshotLock::Auto => {
                    conn.query_drop("ROLLBACK").await?;
                    locked_snapshot(conn).await
                }
                _ => Ok((conn, None)),
            }
        };
        let (conn, found) = timeout(STATEMENT_TIMEOUT, attempt)
            .await
            .map_err(|_| self.unavailable("no answer while opening the snapshot".to_owned()))?
            .map_err(|e| self.unavailable(snapshot_error(e)))?;
        let Some((file, pos)) = found else {
            return Err(SourceError::BadConfig {
                source_name: self.source.clone(),
                message: "the server does not report binlog_snapshot_file/position and snapshot_lock = \"none\" \
                          forbids the brief global read lock that would tell it"
                    .to_owned(),
            });
        };
        let pos: u64 = pos.parse().map_err(|_| self.unavailable(format!("odd binlog snapshot position {pos}")))?;
        if file.is_empty() {
            return Err(SourceError::BadConfig {
                source_name: self.source.clone(),
                message: "the server's binlog is off; turn on log_bin with binlog_format = ROW".to_owned(),
            });
        }
        // MariaDB's GTID position there is where a failover is followed from, and what snapshot reads rank at.
        let mut conn = conn;
        let gtids = match self.mariadb {
            true => timeout(STATEMENT_TIMEOUT, super::gtids::at_binlog_place(&mut conn, &file, pos))
                .await
                .map_err(|_| self.unavailable("no answer while reading the snapshot's GTID position".to_owned()))?
                .map_err(|e| self.unavailable(snapshot_error(e)))?,
            false => None,
        };
        let here = BinlogPosition { file, pos, gtid: None, gtids: gtids.map(|g| g.to_string()) };
        tracing::info!(source = %self.source, position = %here, tables = self.tables.len() - self.done, ?lock,
            "consistent snapshot opened");
        self.position.get_or_insert(here);
        Ok(Reader { conn, table: self.done, columns: Vec::new(), key_columns: Vec::new(), after: None, offset: 0 })
    }

    async fn read_page(&mut self, size: usize) -> Result<Vec<SourceRecord>, SourceError> {
        let source = self.source.clone();
        let unavailable = |e: mysql_async::Error| SourceError::Unavailable {
            source_name: source.clone(),
            operation: "snapshot",
            message: e.to_string(),
        };
        let timed_out = |_| SourceError::Unavailable {
            source_name: source.clone(),
            operation: "snapshot",
            message: format!("no answer within {STATEMENT_TIMEOUT:?}"),
        };
        let (database, table) = self.tables[self.done].clone();
        let reader = self.reader.as_mut().expect("opened");
        if reader.columns.is_empty() {
            let columns: Vec<String> = timeout(
                STATEMENT_TIMEOUT,
                reader.conn.exec(
                    "SELECT column_name FROM information_schema.columns \
                     WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                    (database.as_str(), table.as_str()),
                ),
            )
            .await
            .map_err(timed_out)?
            .map_err(unavailable)?;
            if columns.is_empty() {
                return Err(SourceError::BadConfig {
                    source_name: source.clone(),
                    message: format!("table {database}.{table} does not exist (or the user cannot see it)"),
                });
            }
            let keys: Vec<String> = timeout(
                STATEMENT_TIMEOUT,
                reader.conn.exec(
                    "SELECT column_name FROM information_schema.key_column_usage \
                     WHERE table_schema = ? AND table_name = ? AND constraint_name = 'PRIMARY' \
                     ORDER BY ordinal_position",
                    (database.as_str(), table.as_str()),
                ),
            )
            .await
            .map_err(timed_out)?
            .map_err(unavailable)?;
            let reader = self.reader.as_mut().expect("opened");
            reader.key_columns = keys;
            reader.columns = columns;
        }
        let reader = self.reader.as_mut().expect("opened");
        let quoted = |name: &str| format!("`{}`", name.replace('`', "``"));
        let from = format!("{}.{}", quoted(&database), quoted(&table));
        let select = reader.columns.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
        let (sql, params) = if reader.key_columns.is_empty() {
            (format!("SELECT {select} FROM {from} LIMIT {size} OFFSET {}", reader.offset), Params::Empty)
        } else {
            let keys = reader.key_columns.iter().map(|k| quoted(k)).collect::<Vec<_>>().join(", ");
            match &reader.after {
                None => (format!("SELECT {select} FROM {from} ORDER BY {keys} LIMIT {size}"), Params::Empty),
                Some(after) => {
                    let marks = vec!["?"; after.len()].join(", ");
                    (
                        format!("SELECT {select} FROM {from} WHERE ({keys}) > ({marks}) ORDER BY {keys} LIMIT {size}"),
                        Params::Positional(after.clone()),
                    )
                }
            }
        };
        let rows: Vec<Row> =
            timeout(STATEMENT_TIMEOUT, reader.conn.exec(sql, params)).await.map_err(timed_out)?.map_err(unavailable)?;
        let reader = self.reader.as_mut().expect("opened");
        reader.offset += rows.len() as u64;
        if let Some(last) = rows.last() {
            let key_values: Option<Vec<Value>> =
                reader.key_columns.iter().map(|k| last.get::<Value, _>(k.as_str())).collect();
            reader.after = key_values;
        }
        let position =
            self.position.clone().unwrap_or(BinlogPosition { file: String::new(), pos: 0, gtid: None, gtids: None });
        let rank = match position.gtids.as_deref().and_then(super::gtids::GtidPosition::parse) {
            Some(gtids) => version::mariadb(gtids.rank(), position.pos, 0),
            None => version::mysql(version::binlog_file_number(&position.file).unwrap_or(0), position.pos, 0),
        };
        let key_columns = reader.key_columns.clone();
        let name = (database.clone(), table.clone());
        let mut records = Vec::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            let rendered =
                query_values::render_query_row(row, &key_columns).map_err(|message| SourceError::BadConfig {
                    source_name: self.source.clone(),
                    message: format!("snapshot of {database}.{table}: {message}"),
                })?;
            let key = if rendered.key.is_empty() {
                "null".to_owned()
            } else {
                serde_json::Value::Object(rendered.key).to_string()
            };
            records.push(
                Change {
                    prefix: &self.prefix,
                    table: &name,
                    op: Op::SnapshotRead,
                    key,
                    before: None,
                    after: Some(serde_json::Value::Object(rendered.image).to_string()),
                    position: rank.clone(),
                    committed_at_ms: crate::clock::now_ms(),
                    id: format!("snapshot:{database}.{table}:{}", index as u64 + reader_offset(&self.reader)),
                    origin: Origin::MySql {
                        server_id: self.server_id,
                        file: position.file.clone(),
                        pos: position.pos,
                        row: 0,
                        gtid: None,
                        mariadb: self.mariadb,
                    },
                }
                .into_record(),
            );
        }
        Ok(records)
    }

    fn unavailable(&self, message: String) -> SourceError {
        SourceError::Unavailable { source_name: self.source.clone(), operation: "snapshot", message }
    }
}

/// Opens a consistent snapshot under a global read lock held only while the
/// binlog position is read, so no commit falls between the snapshot and the
/// position (what MySQL needs; MariaDB reports its snapshot's position). The
/// lock waits at most `lock_wait_timeout` for running statements; if anything
/// fails, dropping the connection releases it.
async fn locked_snapshot(mut conn: Conn) -> Result<(Conn, Option<(String, String)>), mysql_async::Error> {
    conn.query_drop("SET SESSION lock_wait_timeout = 10").await?;
    conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
    let status = super::config::master_status(&mut conn).await;
    conn.query_drop("UNLOCK TABLES").await?;
    Ok((conn, status?))
}

/// A refused lock names the privilege it needs.
fn snapshot_error(e: mysql_async::Error) -> String {
    match &e {
        mysql_async::Error::Server(server) if server.code == 1227 => format!(
            "{e}: the brief global read lock of the snapshot needs the RELOAD privilege (or use snapshot = \"never\")"
        ),
        _ => e.to_string(),
    }
}

/// A snapshot record with its `source.snapshot` mark.
fn marked((mut record, mark): (SourceRecord, SnapshotMark)) -> SourceRecord {
    if let RecordBody::Change(change) = &mut record.body {
        change.snapshot = Some(mark);
    }
    record
}

fn reader_offset(reader: &Option<Reader>) -> u64 {
    reader.as_ref().map_or(0, |r| r.offset)
}
