//! The host's `query` import: one parameterised statement on the pipeline's
//! Postgres pool, inside a READ ONLY transaction with a statement timeout, with
//! row and byte caps enforced while the rows stream in.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use serde::Deserialize;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Executor, PgConnection, Row};

use crate::plugin::bindings::{DbValue, Rows};

mod values;

#[cfg(test)]
mod tests;

/// `[databases.<name>]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Postgres URL, e.g. "postgres://evercache_ro@127.0.0.1:5432/shop"; use a read-only role.
    pub url: String,
    /// Connections in the pool (default 8).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Longest one statement may run (default "2s").
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Most rows one query may return (default 10000); more is an error, never a truncation.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Most bytes of cell data one query may return (default 16 MiB).
    #[serde(default = "default_max_result_bytes")]
    pub max_result_bytes: usize,
    /// How long to wait for a connection before the database counts as unavailable (default "5s").
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

fn default_max_connections() -> u32 {
    8
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_rows() -> usize {
    10_000
}
fn default_max_result_bytes() -> usize {
    16 << 20
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Why a query failed; the plugin receives the message as a value.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The database could not be reached; transient, the pipeline waits.
    #[error("database '{database}' is unavailable: {message}")]
    Unavailable {
        /// The `[databases.<name>]` name.
        database: String,
        /// What failed.
        message: String,
    },
    /// The host refused the statement (not a read, unsupported column type).
    #[error("database '{database}': query refused: {message}")]
    Rejected {
        /// The `[databases.<name>]` name.
        database: String,
        /// Why.
        message: String,
    },
    /// The database rejected the statement, e.g. a syntax error, a statement
    /// timeout (SQLSTATE 57014) or a write in the read-only transaction (25006).
    #[error("database '{database}': {message}{}", code.as_ref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Sql {
        /// The `[databases.<name>]` name.
        database: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
        /// The server's message.
        message: String,
    },
    /// More rows than `max_rows`.
    #[error("database '{database}': query returned more than {limit} rows (max_rows); narrow it or raise the limit")]
    TooManyRows {
        /// The `[databases.<name>]` name.
        database: String,
        /// The limit.
        limit: usize,
    },
    /// More cell data than `max_result_bytes`.
    #[error("database '{database}': query returned more than {limit} bytes (max_result_bytes)")]
    ResultTooLarge {
        /// The `[databases.<name>]` name.
        database: String,
        /// The limit.
        limit: usize,
    },
    /// The URL or options are unusable.
    #[error("database '{database}': bad configuration: {message}")]
    BadConfig {
        /// The `[databases.<name>]` name.
        database: String,
        /// What is wrong (never the password).
        message: String,
    },
}

impl QueryError {
    /// True when the database itself is unreachable: retried, never dead-lettered.
    pub fn is_transient(&self) -> bool {
        matches!(self, QueryError::Unavailable { .. })
    }
}

/// Runs plugin queries on one database; cheap to clone.
#[derive(Clone)]
pub struct QueryRunner {
    name: Arc<str>,
    pool: PgPool,
    begin: Arc<str>,
    max_rows: usize,
    max_result_bytes: usize,
    password: Option<Arc<str>>,
    /// The owning pipeline's share of the pool, when limited.
    permits: Option<Arc<tokio::sync::Semaphore>>,
}

impl DatabaseConfig {
    /// Builds a lazily connecting pool, so a database that is briefly down at
    /// startup delays queries instead of failing the runtime.
    pub fn build(&self, name: &str) -> Result<QueryRunner, QueryError> {
        let password = password_of(&self.url);
        let options: PgConnectOptions = self.url.parse().map_err(|e: sqlx::Error| QueryError::BadConfig {
            database: name.to_owned(),
            message: redact(&e.to_string(), password.as_deref()),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options.application_name("evercache"));
        Ok(QueryRunner {
            name: Arc::from(name),
            pool,
            begin: Arc::from(format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
                self.statement_timeout.as_millis().max(1)
            )),
            max_rows: self.max_rows,
            max_result_bytes: self.max_result_bytes,
            password: password.map(Arc::from),
            permits: None,
        })
    }
}

/// Closes a connection that did not get back to a clean state, so a pooled
/// connection is never reused inside an open transaction.
struct Checkout {
    conn: PoolConnection<Postgres>,
    clean: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

impl QueryRunner {
    /// The `[databases.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A runner on the same pool that lets at most `limit` of its queries run at
    /// once, so one pipeline cannot take every connection from the others.
    pub fn limited(&self, limit: usize) -> Self {
        Self { permits: Some(Arc::new(tokio::sync::Semaphore::new(limit.max(1)))), ..self.clone() }
    }

    /// Runs one read-only statement with `$1…` parameters.
    pub async fn query(&self, sql: &str, params: &[DbValue]) -> Result<Rows, QueryError> {
        if let Err(message) = check_read_only(sql) {
            return Err(QueryError::Rejected { database: self.name.to_string(), message });
        }
        let _permit =
            match &self.permits {
                Some(permits) => Some(permits.acquire().await.map_err(|e| QueryError::Unavailable {
                    database: self.name.to_string(),
                    message: e.to_string(),
                })?),
                None => None,
            };
        let conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        let mut checkout = Checkout { conn, clean: false };
        let connection: &mut PgConnection = &mut checkout.conn;
        connection.execute(sqlx::raw_sql(&self.begin)).await.map_err(|e| self.error(e))?;
        let result = self.fetch(connection, sql, params).await;
        if connection.execute(sqlx::raw_sql("ROLLBACK")).await.is_ok() {
            checkout.clean = true;
        }
        result
    }

    /// `select 1`: is the database reachable?
    pub async fn ping(&self) -> Result<(), QueryError> {
        sqlx::query("select 1").execute(&self.pool).await.map(|_| ()).map_err(|e| self.error(e))
    }

    async fn fetch(&self, conn: &mut PgConnection, sql: &str, params: &[DbValue]) -> Result<Rows, QueryError> {
        let mut query = sqlx::query(sql);
        for param in params {
            query = values::bind(query, param);
        }
        let mut stream = conn.fetch(query);
        let mut rows = Rows { columns: Vec::new(), values: Vec::new() };
        let mut bytes = 0usize;
        while let Some(row) = stream.try_next().await.map_err(|e| self.error(e))? {
            if rows.values.len() == self.max_rows {
                return Err(QueryError::TooManyRows { database: self.name.to_string(), limit: self.max_rows });
            }
            if rows.columns.is_empty() {
                rows.columns = row.columns().iter().map(|c| sqlx::Column::name(c).to_owned()).collect();
            }
            let mut cells = Vec::with_capacity(row.len());
            for index in 0..row.len() {
                let cell = values::cell(&row, index)
                    .map_err(|message| QueryError::Rejected { database: self.name.to_string(), message })?;
                bytes += values::size(&cell);
                cells.push(cell);
            }
            if bytes > self.max_result_bytes {
                return Err(QueryError::ResultTooLarge {
                    database: self.name.to_string(),
                    limit: self.max_result_bytes,
                });
            }
            rows.values.push(cells);
        }
        Ok(rows)
    }

    fn error(&self, e: sqlx::Error) -> QueryError {
        let database = self.name.to_string();
        let message = |e: &dyn std::fmt::Display| redact(&e.to_string(), self.password.as_deref());
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned());
                // Connection exceptions, shutdowns and resource exhaustion pass.
                let transient =
                    code.as_deref().is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P"));
                if transient {
                    QueryError::Unavailable { database, message: message(&e) }
                } else {
                    QueryError::Sql { database, code, message: message(&db.message()) }
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => QueryError::Unavailable { database, message: message(&e) },
            _ => QueryError::Sql { database, code: None, message: message(&e) },
        }
    }
}

/// Only statements that read: the first keyword must be SELECT, WITH, VALUES or
/// TABLE. Writes hidden in a CTE are stopped by the read-only transaction.
fn check_read_only(sql: &str) -> Result<(), String> {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix('(') {
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let keyword: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    match keyword.to_ascii_uppercase().as_str() {
        "SELECT" | "WITH" | "VALUES" | "TABLE" => Ok(()),
        "" => Err("empty statement".to_owned()),
        other => Err(format!("only SELECT, WITH, VALUES or TABLE statements may run, not {other}")),
    }
}

/// The password part of a `postgres://user:password@host/db` URL.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

fn redact(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) => text.replace(p, "***"),
        None => text.to_owned(),
    }
}
