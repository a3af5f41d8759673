//! A pipeline's tables read page by page for `resync --all`: each row as the
//! snapshot read (`op = r`) its source would emit, and where the next page
//! starts as a [`ScanCursor`] that can be saved and resumed from.
//!
//! Pages are ordered by primary key and start after the last key read (keyset
//! paging), each in its own short read, so a resync holds no long transaction
//! and a row inserted meanwhile reaches the cache through its own change.

mod mysql;
mod postgres;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::query::{DatabasePool, QueryRunner};

/// Longest one page's statements may take before the database counts as unavailable.
const PAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a table's next page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanCursor {
    /// At the table's first row.
    Start,
    /// After the row with these primary-key values (Postgres: their text
    /// form; MySQL: the values as JSON).
    After(Vec<Value>),
    /// After this many rows (a MySQL table without a primary key).
    Offset(u64),
}

/// One row read, as a snapshot read of it carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedRow {
    /// The primary key as a JSON object (`null` for a table without one).
    pub key: Value,
    /// Every column, in the form the source's change events give it.
    pub image: Value,
}

/// A page of rows and where the next one starts.
#[derive(Debug)]
pub struct ScanPage {
    /// The rows, in key order.
    pub rows: Vec<ScannedRow>,
    /// After the last row of this page.
    pub next: ScanCursor,
}

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The table does not exist or cannot be seen.
    #[error("table {table} does not exist (or the database user cannot see it)")]
    NoTable {
        /// "schema.table".
        table: String,
    },
    /// The database failed or did not answer.
    #[error("reading table {table}: {message}")]
    Database {
        /// "schema.table".
        table: String,
        /// What the database said.
        message: String,
    },
}

/// One table being scanned, described once.
pub enum TableScan {
    /// A Postgres table.
    Postgres(postgres::PgTable),
    /// A MySQL or MariaDB table.
    MySql(mysql::MySqlTable),
}

impl TableScan {
    /// Reads `table` ("schema.table"; on MySQL "database.table")'s columns and
    /// primary key from the catalogue of `database`.
    pub async fn describe(database: &QueryRunner, table: &str) -> Result<Self, ScanError> {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        Ok(match database.pool() {
            DatabasePool::Postgres(pool) => Self::Postgres(postgres::PgTable::describe(pool, schema, name).await?),
            DatabasePool::MySql(pool) => Self::MySql(mysql::MySqlTable::describe(pool, schema, name).await?),
        })
    }

    /// Up to `size` rows after `cursor`; no rows when the table is done.
    pub async fn page(&self, cursor: &ScanCursor, size: usize) -> Result<ScanPage, ScanError> {
        match self {
            Self::Postgres(table) => table.page(cursor, size).await,
            Self::MySql(table) => table.page(cursor, size).await,
        }
    }

    /// True when the table has a primary key to page by.
    pub fn has_key(&self) -> bool {
        match self {
            Self::Postgres(table) => table.has_key(),
            Self::MySql(table) => table.has_key(),
        }
    }
}

/// A statement's answer, or its failure or silence as a [`ScanError`].
fn bounded<T, E: std::fmt::Display>(
    table: &str,
    answer: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> Result<T, ScanError> {
    match answer {
        Ok(result) => result.map_err(|e| ScanError::Database { table: table.to_owned(), message: e.to_string() }),
        Err(_) => {
            Err(ScanError::Database { table: table.to_owned(), message: format!("no answer within {PAGE_TIMEOUT:?}") })
        }
    }
}
