//! Where in the binlog the capture resumes, kept in Redis beside the cache: a
//! position is stored only once every change before it was written, so a
//! crash or a server restart resumes there and loses nothing (what came after
//! is read again; the version guard drops what was already applied).

use redis::aio::ConnectionManager;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ddl::Schemas;
use super::schema::TableSchema;

use crate::event::position;

/// A point between two events of a binlog: the end of a commit (or of a DDL
/// statement), where streaming can start again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    /// Binlog file, e.g. "mariadb-bin.000003".
    pub file: String,
    /// Offset in the file.
    pub pos: u64,
    /// The last GTID before this point, when the server has GTIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// MariaDB: the GTID position at this point, one GTID per domain
    /// (`0-1-1482`), as `@slave_connect_state` takes it: where any server of
    /// the replication group can resume, so a failover can be followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtids: Option<String>,
}

impl BinlogPosition {
    /// `(file number, offset)`, which orders positions of one server.
    pub fn ordinal(&self) -> (u64, u64) {
        (position::binlog_file_number(&self.file).unwrap_or(0), self.pos)
    }
}

impl std::fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if let Some(gtid) = &self.gtid {
            write!(f, " (GTID {gtid})")?;
        }
        Ok(())
    }
}

/// What the capture keeps in Redis under its position key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// Where streaming resumes.
    pub position: BinlogPosition,
    /// The initial snapshot finished (its last page was written).
    pub snapshot_done: bool,
    /// When the last change before `position` was committed (ms since the
    /// epoch), so the lag can be told in seconds.
    #[serde(default)]
    pub committed_at_ms: u64,
    /// The captured tables' columns as of `position`, kept when the binlog
    /// names no columns (`binlog_row_metadata` MINIMAL or NO_LOG).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<StoredTable>,
    /// `@@server_id` of the server whose binlog `position` is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
}

/// A captured table's columns as of the stored position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTable {
    pub database: String,
    pub table: String,
    #[serde(flatten)]
    pub schema: TableSchema,
}

impl StoredState {
    /// The stored tables' schemas, by table.
    pub(super) fn schemas(&self) -> Schemas {
        let entry = |t: &StoredTable| ((t.database.clone(), t.table.clone()), Arc::new(t.schema.clone()));
        self.tables.iter().map(entry).collect()
    }
}

/// `schemas` as stored, in a stable order.
pub(super) fn stored_tables(schemas: &Schemas) -> Vec<StoredTable> {
    let mut tables: Vec<StoredTable> = schemas
        .iter()
        .map(|((database, table), schema)| StoredTable {
            database: database.clone(),
            table: table.clone(),
            schema: (**schema).clone(),
        })
        .collect();
    tables.sort_by(|a, b| (&a.database, &a.table).cmp(&(&b.database, &b.table)));
    tables
}

/// Reads and writes the stored state.
#[derive(Clone)]
pub(super) struct PositionStore {
    key: String,
    conn: ConnectionManager,
}

impl PositionStore {
    pub(super) fn new(key: String, conn: ConnectionManager) -> Self {
        Self { key, conn }
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    pub(super) async fn load(&mut self) -> Result<Option<StoredState>, String> {
        let text: Option<String> =
            redis::cmd("GET").arg(&self.key).query_async(&mut self.conn).await.map_err(|e| e.to_string())?;
        match text {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{} holds no binlog position ({e}): {text}", self.key)),
            None => Ok(None),
        }
    }

    pub(super) async fn store(&mut self, state: &StoredState) -> Result<(), String> {
        let text = serde_json::to_string(state).map_err(|e| e.to_string())?;
        redis::cmd("SET").arg(&self.key).arg(text).query_async::<()>(&mut self.conn).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_file_number_then_offset() {
        let at = |file: &str, pos| BinlogPosition { file: file.into(), pos, gtid: None, gtids: None };
        assert!(at("mariadb-bin.000002", 9_000).ordinal() < at("mariadb-bin.000010", 4).ordinal());
        assert!(at("mariadb-bin.000002", 4).ordinal() < at("mariadb-bin.000002", 5).ordinal());
        let state = StoredState {
            position: at("mariadb-bin.000002", 385),
            snapshot_done: true,
            committed_at_ms: 7,
            tables: Vec::new(),
            server_id: None,
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            text,
            r#"{"position":{"file":"mariadb-bin.000002","pos":385},"snapshot_done":true,"committed_at_ms":7}"#
        );
        assert_eq!(serde_json::from_str::<StoredState>(&text).unwrap(), state);
    }
}
