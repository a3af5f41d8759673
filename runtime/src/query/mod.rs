//! The host's `query` import: one parameterised statement on the pipeline's
//! Postgres pool, inside a READ ONLY transaction with a statement timeout cut to
//! the plugin call's deadline, with row and byte caps enforced while the rows
//! stream in, and nothing left on the pooled connection afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde::Deserialize;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Executor, PgConnection, Row};

use crate::contract::{DbValue, Rows};

mod error;
mod statement;
mod values;

pub use error::QueryError;

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

/// How long past its statement timeout a statement may go unanswered before the
/// connection counts as dead (black-holed: no FIN, no RST).
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Runs plugin queries on one database; cheap to clone.
#[derive(Clone)]
pub struct QueryRunner {
    name: Arc<str>,
    pool: PgPool,
    statement_timeout: Duration,
    acquire_timeout: Duration,
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
        let password = error::password_of(&self.url);
        let options: PgConnectOptions = self.url.parse().map_err(|e: sqlx::Error| QueryError::BadConfig {
            database: name.to_owned(),
            message: error::redact(&e.to_string(), password.as_deref()),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options.application_name("evercache"));
        Ok(QueryRunner {
            name: Arc::from(name),
            pool,
            statement_timeout: self.statement_timeout,
            acquire_timeout: self.acquire_timeout,
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
        self.query_until(sql, params, None).await
    }

    /// Runs one read-only statement that must end by `deadline` (a plugin
    /// call's): the server's statement timeout is cut to the time left, so the
    /// server cancels it there, and a connection that stops answering is
    /// given up on instead of waited for.
    pub async fn query_until(
        &self,
        sql: &str,
        params: &[DbValue],
        deadline: Option<Instant>,
    ) -> Result<Rows, QueryError> {
        statement::check(sql).map_err(|message| QueryError::Rejected { database: self.name.to_string(), message })?;
        let now = Instant::now();
        let limit = match deadline {
            Some(deadline) => deadline.saturating_duration_since(now).min(self.statement_timeout),
            None => self.statement_timeout,
        };
        if limit.is_zero() {
            return Err(QueryError::Deadline { database: self.name.to_string() });
        }
        let cut = limit < self.statement_timeout;
        let mut give_up = now + self.acquire_timeout + limit + ANSWER_GRACE;
        if let Some(deadline) = deadline {
            give_up = give_up.min(deadline + ANSWER_GRACE);
        }
        match tokio::time::timeout_at(give_up.into(), self.run(sql, params, limit)).await {
            Ok(Err(QueryError::Sql { code: Some(code), .. })) if cut && code == "57014" => {
                Err(QueryError::Deadline { database: self.name.to_string() })
            }
            Ok(result) => result,
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(QueryError::Deadline { database: self.name.to_string() })
            }
            Err(_) => Err(QueryError::Unavailable {
                database: self.name.to_string(),
                message: format!(
                    "no answer within {:?}; the connection is dropped",
                    give_up.saturating_duration_since(now)
                ),
            }),
        }
    }

    async fn run(&self, sql: &str, params: &[DbValue], limit: Duration) -> Result<Rows, QueryError> {
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
        let begin = format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {}", limit.as_millis().max(1));
        connection.execute(sqlx::raw_sql(&begin)).await.map_err(|e| self.error(e))?;
        let result = self.fetch(connection, sql, params).await;
        // The rollback undoes session settings; session-level advisory locks
        // survive it, so they are released here, never left on a pooled connection.
        if connection.execute(sqlx::raw_sql("ROLLBACK; SELECT pg_advisory_unlock_all()")).await.is_ok() {
            checkout.clean = true;
        }
        result
    }

    /// `select 1`: is the database reachable? Gives up after `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), QueryError> {
        let ping = sqlx::query("select 1").execute(&self.pool);
        match tokio::time::timeout(timeout, ping).await {
            Ok(result) => result.map(|_| ()).map_err(|e| self.error(e)),
            Err(_) => Err(QueryError::Unavailable {
                database: self.name.to_string(),
                message: format!("no answer to a health check within {timeout:?}"),
            }),
        }
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
        error::classify(&self.name, self.password.as_deref(), e)
    }
}
