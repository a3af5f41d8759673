//! `[sources.<name>]` with `type = "mysql"`, and starting a capture from it:
//! the server's binlog settings are checked, the stored resume position is
//! read, and an initial snapshot runs when there is none.

use crate::redis_conn::RedisConn;
use crate::secret::SecretUrl;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use serde::Deserialize;

use super::MySqlCapture;
use super::position::{BinlogPosition, PositionStore, StoredState};
use super::schema::Catalogue;
use super::session::BinlogSession;
use super::snapshot::Snapshot;
use super::visibility::VisibilityGate;
use crate::source::SnapshotMode;
use crate::source::SourceError;
use crate::source::dead_letter::DeadLetterWriter;

/// `[sources.<name>]` with `type = "mysql"` (MySQL 8 or MariaDB 10.6+).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MySqlCaptureConfig {
    /// MySQL URL of a user with REPLICATION SLAVE, BINLOG MONITOR (MariaDB) or
    /// REPLICATION CLIENT (MySQL), SELECT on the tables and, for a snapshot
    /// on MySQL, RELOAD, e.g.
    /// "mysql://evercache_repl:secret@127.0.0.1:3306". The server needs
    /// `log_bin`, `binlog_format = ROW` and `binlog_row_image = FULL`;
    /// `binlog_row_metadata = FULL` puts column names in the binlog, otherwise
    /// they are read from `information_schema`.
    pub url: SecretUrl,
    /// A file holding the password, which replaces the URL's (e.g. a mounted secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Tables to capture, as "database.table", e.g. ["shop.product"].
    pub tables: Vec<String>,
    /// The server id this capture registers with, as a replica does; unique
    /// among the server's replicas and captures (two with one id evict each other).
    pub server_id: u32,
    /// "initial" (default): on first start, emit every existing row as a
    /// snapshot read from a consistent snapshot, then stream from its position;
    /// "never": stream from the binlog's current end.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// How the snapshot learns where in the binlog it stands. "auto" (default):
    /// MariaDB reports it without locking; on MySQL, a global read lock is held
    /// for the milliseconds it takes to open the snapshot and read the position
    /// (needs RELOAD). "global-read-lock": always take that lock. "none": never
    /// lock (the snapshot is refused where the server does not report it).
    #[serde(default)]
    pub snapshot_lock: SnapshotLock,
    /// Debezium's `topic.prefix`: the events' `source.name` and the stream names
    /// `<prefix>.<database>.<table>` (default: the URL's database, else the source name).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Redis key holding the resume position (default "evercache:binlog:<source name>").
    #[serde(default)]
    pub position_key: Option<String>,
    /// How often an idle server sends a heartbeat, so a dead connection is noticed (default "1s").
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Most changes per read (default 500). While a batch is applied the
    /// capture reads on, and up to ten reads join the next batch, so a backlog
    /// is applied in bigger batches.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a read waits for more changes once it has one, and how long a
    /// read ahead waits for a first one (default "5ms").
    #[serde(default = "default_batch_delay", with = "humantime_serde")]
    pub max_batch_delay: Duration,
    /// "on" (default): a batch read from the binlog is handed on only once its
    /// transactions are visible to new queries (MariaDB: a new consistent
    /// snapshot's `binlog_snapshot_position` reaches them; MySQL: they are in
    /// `gtid_executed`, so turn on `gtid_mode`). The server writes the binlog
    /// before the engine commits, and with semi-synchronous replication
    /// (AFTER_SYNC) the commit waits for a replica's ack: a recompute in that
    /// window would cache the old value for good. A batch is held as long as
    /// that takes, reported as not visible (`/ready`) after 2s. "off": batches
    /// are handed on unchecked (a key can stay stale).
    #[serde(default)]
    pub visibility: Visibility,
    /// Redis URL for dead letters and the resume position, e.g. "redis://127.0.0.1:6379".
    pub dead_letter_url: SecretUrl,
    /// Dead-letter stream; `{stream}` is the record's `<prefix>.<database>.<table>`
    /// (default "{stream}:dlq").
    #[serde(default = "default_dead_letter_stream")]
    pub dead_letter_stream: String,
}

/// How a snapshot finds its binlog position (see `snapshot_lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotLock {
    /// No lock where the server reports the snapshot's position, else a brief global read lock.
    #[default]
    Auto,
    /// A brief global read lock around opening the snapshot.
    GlobalReadLock,
    /// Never lock.
    None,
}

/// Whether the capture waits for a batch's transactions to be visible (see `visibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Hand a batch on once its transactions are visible.
    #[default]
    On,
    /// Hand batches on unchecked.
    Off,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_delay() -> Duration {
    Duration::from_millis(5)
}
fn default_dead_letter_stream() -> String {
    "{stream}:dlq".to_owned()
}

impl MySqlCaptureConfig {
    /// The stream names its records carry, `<prefix>.<database>.<table>`, one per table.
    pub fn stream_names(&self, source: &str) -> Vec<String> {
        let prefix = self.prefix(source);
        self.tables.iter().map(|t| format!("{prefix}.{t}")).collect()
    }

    /// The events' `source.name` and the streams' prefix.
    pub fn prefix(&self, source: &str) -> String {
        self.topic_prefix.clone().unwrap_or_else(|| {
            crate::tls::mysql_opts(self.url.expose())
                .ok()
                .and_then(|o| o.db_name().map(str::to_owned))
                .unwrap_or_else(|| source.to_owned())
        })
    }

    /// The Redis key of the resume position.
    pub fn position_key(&self, source: &str) -> String {
        self.position_key.clone().unwrap_or_else(|| format!("evercache:binlog:{source}"))
    }

    /// Checks the server's binlog settings, reads the stored position (or takes
    /// a snapshot, or the binlog's end, when there is none) and connects.
    pub async fn build(&self, name: &str) -> Result<MySqlCapture, SourceError> {
        let bad = |message: String| SourceError::BadConfig { source_name: name.to_owned(), message };
        let unavailable =
            |operation, message: String| SourceError::Unavailable { source_name: name.to_owned(), operation, message };
        let opts = crate::tls::mysql_opts(self.url.expose()).map_err(|e| bad(format!("url: {e}")))?;
        let mut tables = Vec::new();
        for table in &self.tables {
            let Some((database, table)) = table.split_once('.') else {
                return Err(bad(format!("table `{table}` must be written \"database.table\"")));
            };
            tables.push((database.to_owned(), table.to_owned()));
        }
        if tables.is_empty() {
            return Err(bad("`tables` is empty".to_owned()));
        }
        let redis_client =
            redis::Client::open(self.dead_letter_url.expose()).map_err(|e| bad(format!("dead_letter_url: {e}")))?;
        let redis_config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_max_delay(Duration::from_secs(2));
        let redis = redis::aio::ConnectionManager::new_with_config(redis_client, redis_config)
            .await
            .map_err(|e| unavailable("connect dead-letter Redis", e.to_string()))?;
        let mut store = PositionStore::new(self.position_key(name), redis.clone());
        let stored = store.load().await.map_err(|e| unavailable("read the binlog position", e))?;
        let server = check_server(name, &opts).await?;
        // Another server behind the URL: a MariaDB failover is followed by GTID once streaming starts.
        let follows = stored.as_ref().and_then(|s| s.server_id).filter(|&id| id != server.server_id);
        if let (Some(stored_id), Some(stored)) = (follows, &stored)
            && !(server.mariadb && stored.position.gtids.is_some())
        {
            return Err(other_server(name, &stored.position, stored_id, server.server_id, &self.position_key(name)));
        }

        let prefix = self.prefix(name);
        let wants_snapshot =
            self.snapshot == SnapshotMode::Initial && !stored.as_ref().is_some_and(|s| s.snapshot_done);
        let stored_schemas = stored.as_ref().map(StoredState::schemas).unwrap_or_default();
        let (position, snapshot) = if wants_snapshot {
            let mut snapshot = Snapshot::new(
                name,
                &prefix,
                opts.clone(),
                tables.clone(),
                self.server_id,
                server.mariadb,
                self.snapshot_lock,
            );
            let position = snapshot.position().await?;
            tracing::info!(source = %name, tables = ?self.tables, %position, "initial snapshot starting");
            (position, Some(snapshot))
        } else if let Some(stored) = stored {
            (stored.position, None)
        } else {
            (binlog_end(name, &opts).await?, None)
        };
        let position = super::failover::with_gtids(name, &opts, position, server.mariadb && follows.is_none()).await?;
        let captured: HashSet<_> = tables.iter().cloned().collect();
        let mut catalogue = Catalogue::new(opts.clone(), captured, stored_schemas);
        if !server.names_columns {
            catalogue.read_missing().await.map_err(|e| unavailable("read the tables' columns", e.to_string()))?;
        }
        // Stored at once, so a restart before the first change starts here, not at a later end.
        let state = StoredState {
            position: position.clone(),
            snapshot_done: snapshot.is_none(),
            committed_at_ms: 0,
            tables: super::position::stored_tables(catalogue.confirmed()),
            server_id: Some(follows.unwrap_or(server.server_id)),
        };
        store.store(&state).await.map_err(|e| unavailable("store the binlog position", e))?;
        tracing::info!(source = %name, %position, key = %store.key(), "binlog capture started");
        if self.visibility == Visibility::Off {
            tracing::warn!(source = %name, "visibility = \"off\": batches are handed on before their transactions \
                are visible to queries, so a recompute may cache a value from before a change");
        }
        Ok(MySqlCapture {
            name: name.to_owned(),
            prefix,
            tables: tables.iter().cloned().collect::<HashSet<_>>(),
            session: BinlogSession::new(name, opts.clone(), self.server_id, self.heartbeat, position.clone())
                .on_server(follows.unwrap_or(server.server_id), self.position_key(name)),
            store,
            transaction: None,
            unconfirmed: None,
            confirmations: Default::default(),
            confirmed: position.clone(),
            gtids: position.gtids.as_deref().and_then(super::gtids::GtidPosition::parse),
            stored: position,
            stored_at: Instant::now(),
            visibility: (self.visibility == Visibility::On).then(|| VisibilityGate::new(name, opts.clone())),
            held: None,
            batch_size: self.batch_size.max(1),
            max_batch_delay: self.max_batch_delay,
            dead_letters: DeadLetterWriter::new(name, RedisConn::Node(redis), &self.dead_letter_stream),
            snapshot,
            last_commit_ms: 0,
            catalogue,
            mariadb: server.mariadb,
        })
    }
}

/// What the capture needs to know of its server.
struct ServerFacts {
    /// Its table maps name the columns (`binlog_row_metadata = FULL`).
    names_columns: bool,
    /// `@@server_id`: binlog positions are this server's.
    server_id: u32,
    /// MariaDB rather than MySQL: its events name the connector `mariadb`, as Debezium's do.
    mariadb: bool,
}

/// Binlog positions belong to one server, and the version guard orders
/// changes by them: a position read from another server (after a failover, or
/// with another server behind the URL) is not used.
pub(super) fn other_server(
    name: &str,
    position: &BinlogPosition,
    stored_id: u32,
    server_id: u32,
    position_key: &str,
) -> SourceError {
    SourceError::Halted {
        source_name: name.to_owned(),
        message: format!(
            "the position {position} was read from the server with server_id {stored_id}, but this server's \
             server_id is {server_id} (a failover, or another server behind the URL?). A failover is followed by \
             GTID on MariaDB; here there is no GTID position to follow it from (a MySQL server, or a position \
             stored before evercache kept one), and binlog places belong to one server, so the capture does not \
             go on. Rebuild the cache from a new snapshot: stop evercache, delete `{position_key}` in Redis, and \
             start it again with snapshot = \"initial\""
        ),
    }
}

/// Refuses a server whose binlog cannot feed a capture, saying which setting
/// to change.
async fn check_server(name: &str, opts: &Opts) -> Result<ServerFacts, SourceError> {
    let unavailable = |message: String| SourceError::Unavailable {
        source_name: name.to_owned(),
        operation: "check the binlog settings",
        message,
    };
    let mut conn = Conn::new(opts.clone()).await.map_err(|e| unavailable(e.to_string()))?;
    let settings: Option<(i64, String, String)> = conn
        .query_first("SELECT @@log_bin + 0, @@binlog_format, @@binlog_row_image")
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let metadata: Option<String> = conn.query_first("SELECT @@binlog_row_metadata").await.unwrap_or(None);
    let facts: Option<(u32, String)> =
        conn.query_first("SELECT @@server_id, VERSION()").await.map_err(|e| unavailable(e.to_string()))?;
    let (server_id, version) = facts.unwrap_or_default();
    let _ = conn.disconnect().await;
    let Some((log_bin, format, image)) = settings else { return Err(unavailable("no answer".to_owned())) };
    let mut wrong = Vec::new();
    if log_bin != 1 {
        wrong.push("log_bin is off (turn it on)".to_owned());
    }
    if !format.eq_ignore_ascii_case("ROW") {
        wrong.push(format!("binlog_format is {format} (set ROW)"));
    }
    if !image.eq_ignore_ascii_case("FULL") {
        wrong.push(format!("binlog_row_image is {image} (set FULL)"));
    }
    let names_columns = metadata.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("FULL"));
    if !names_columns {
        tracing::info!(source = %name, binlog_row_metadata = metadata.as_deref().unwrap_or("unsupported"),
            "the binlog's table maps name no columns: they are read from information_schema and follow the \
             DDL read from the binlog");
    }
    if wrong.is_empty() {
        let mariadb = version.to_ascii_lowercase().contains("mariadb");
        Ok(ServerFacts { names_columns, server_id, mariadb })
    } else {
        Err(SourceError::BadConfig {
            source_name: name.to_owned(),
            message: format!("the server's binlog cannot feed a capture: {}", wrong.join("; ")),
        })
    }
}

/// The binlog's current end: where a capture without a snapshot starts.
async fn binlog_end(name: &str, opts: &Opts) -> Result<BinlogPosition, SourceError> {
    let unavailable = |message: String| SourceError::Unavailable {
        source_name: name.to_owned(),
        operation: "read the binlog position",
        message,
    };
    let mut conn = Conn::new(opts.clone()).await.map_err(|e| unavailable(e.to_string()))?;
    let status = master_status(&mut conn).await;
    let _ = conn.disconnect().await;
    let (file, pos) = status
        .map_err(|e| unavailable(e.to_string()))?
        .ok_or_else(|| unavailable("the server reports no binlog position (is log_bin on?)".to_owned()))?;
    let pos = pos.parse().map_err(|_| unavailable(format!("odd binlog position {pos}")))?;
    Ok(BinlogPosition { file, pos, gtid: None, gtids: None })
}

/// The binlog's current file and offset, from `SHOW MASTER STATUS` (or
/// `SHOW BINARY LOG STATUS`, its name since MySQL 8.4); `None` when the binlog is off.
pub(super) async fn master_status(conn: &mut Conn) -> Result<Option<(String, String)>, mysql_async::Error> {
    let mut refused = None;
    for statement in ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"] {
        match conn.query_first::<mysql_async::Row, _>(statement).await {
            Ok(row) => {
                return Ok(row.and_then(|row| {
                    let file: Option<String> = row.get(0);
                    let pos: Option<String> = row.get(1);
                    file.zip(pos)
                }));
            }
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.expect("tried"))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
