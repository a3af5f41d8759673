//! Host queries on Postgres: a READ ONLY transaction with `SET LOCAL
//! statement_timeout`, `$1…` parameters, and nothing left on the pooled
//! connection afterwards (session advisory locks are released).

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{Executor, PgConnection, Row};

use super::error::{SqlCode, redact};
use super::rows::RowCollector;
use super::{DatabaseConfig, QueryError};
use crate::contract::{DbValue, Rows};

mod values;

#[cfg(test)]
mod tests;

/// One Postgres database's pool; cheap to clone.
#[derive(Clone)]
pub(super) struct PgDatabase {
    name: Arc<str>,
    password: Option<Arc<str>>,
    pool: PgPool,
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

impl PgDatabase {
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A lazily connecting pool, so a database that is briefly down at startup
    /// delays queries instead of failing the runtime.
    pub(super) fn new(name: &str, password: Option<&str>, config: &DatabaseConfig) -> Result<Self, QueryError> {
        let options: PgConnectOptions = config.url.expose().parse().map_err(|e: sqlx::Error| {
            QueryError::BadConfig { database: name.to_owned(), message: redact(&e.to_string(), password) }
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options.application_name("evercache"));
        Ok(Self { name: Arc::from(name), password: password.map(Arc::from), pool })
    }

    pub(super) async fn run(
        &self,
        sql: &str,
        params: &[DbValue],
        limit: Duration,
        rows: RowCollector<'_>,
    ) -> Result<Rows, QueryError> {
        let conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        let mut checkout = Checkout { conn, clean: false };
        let connection: &mut PgConnection = &mut checkout.conn;
        let begin = format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {}", limit.as_millis().max(1));
        connection.execute(sqlx::raw_sql(&begin)).await.map_err(|e| self.error(e))?;
        let result = self.fetch(connection, sql, params, rows).await;
        // The rollback undoes session settings; session-level advisory locks
        // survive it, so they are released here, never left on a pooled connection.
        if connection.execute(sqlx::raw_sql("ROLLBACK; SELECT pg_advisory_unlock_all()")).await.is_ok() {
            checkout.clean = true;
        }
        result
    }

    pub(super) async fn ping(&self) -> Result<(), QueryError> {
        sqlx::query("select 1").execute(&self.pool).await.map(|_| ()).map_err(|e| self.error(e))
    }

    async fn fetch(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        params: &[DbValue],
        mut rows: RowCollector<'_>,
    ) -> Result<Rows, QueryError> {
        let mut query = sqlx::query(sql);
        for param in params {
            query = values::bind(query, param);
        }
        let mut stream = conn.fetch(query);
        while let Some(row) = stream.try_next().await.map_err(|e| self.error(e))? {
            rows.admit_row()?;
            if !rows.has_columns() {
                rows.set_columns(row.columns().iter().map(|c| sqlx::Column::name(c).to_owned()).collect());
            }
            let cells = (0..row.len())
                .map(|index| values::cell(&row, index))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| QueryError::Rejected { database: self.name.to_string(), message })?;
            rows.push(cells)?;
        }
        Ok(rows.finish())
    }

    /// Maps a sqlx error, never showing the password.
    fn error(&self, e: sqlx::Error) -> QueryError {
        let database = self.name.to_string();
        let message = |e: &dyn std::fmt::Display| redact(&e.to_string(), self.password.as_deref());
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned());
                if code.as_deref().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) {
                    QueryError::Unavailable { database, message: message(&e) }
                } else {
                    QueryError::Sql { database, code: code.map(SqlCode::SqlState), message: message(&db.message()) }
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
