//! Host queries on MySQL 8 and MariaDB 10.6+: `START TRANSACTION READ ONLY`
//! with the server's own statement time limit (`max_statement_time` on
//! MariaDB, `max_execution_time` on MySQL), `?` parameters, and named locks
//! released and the transaction rolled back before the connection is reused.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts};

use super::error::{SqlCode, redact};
use super::rows::RowCollector;
use super::{DatabaseConfig, QueryError};
use crate::contract::{DbValue, Rows};

mod values;

#[cfg(test)]
mod tests;

/// Which server answers, which decides the name of the time-limit variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    MariaDb,
    MySql,
}

/// One MySQL or MariaDB database's pool; cheap to clone.
#[derive(Clone)]
pub(super) struct MySqlDatabase {
    name: Arc<str>,
    password: Option<Arc<str>>,
    pool: Pool,
    acquire_timeout: Duration,
    flavor: Arc<tokio::sync::OnceCell<Flavor>>,
}

/// Disconnects a connection that did not get back to a clean state, instead
/// of letting the pool reuse it inside an open transaction.
struct Checkout {
    conn: Option<Conn>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.disconnect()).await;
            });
        }
    }
}

impl MySqlDatabase {
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A lazily connecting pool.
    pub(super) fn new(name: &str, password: Option<&str>, config: &DatabaseConfig) -> Result<Self, QueryError> {
        let bad = |message: String| QueryError::BadConfig { database: name.to_owned(), message };
        let opts = crate::tls::mysql_opts(config.url.expose()).map_err(|e| bad(redact(&e, password)))?;
        let constraints = PoolConstraints::new(0, config.max_connections.max(1) as usize)
            .ok_or_else(|| bad("max_connections must be at least 1".to_owned()))?;
        // Each query resets what it relies on, so the pool need not reset
        // connections (which would also drop their prepared statements).
        let pool_opts = PoolOpts::default().with_constraints(constraints).with_reset_connection(false);
        let opts = OptsBuilder::from_opts(opts).pool_opts(pool_opts).prefer_socket(false).tcp_nodelay(true);
        Ok(Self {
            name: Arc::from(name),
            password: password.map(Arc::from),
            pool: Pool::new(opts),
            acquire_timeout: config.acquire_timeout,
            flavor: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    pub(super) async fn run(
        &self,
        sql: &str,
        params: &[DbValue],
        limit: Duration,
        rows: RowCollector<'_>,
    ) -> Result<Rows, QueryError> {
        let mut checkout = Checkout { conn: Some(self.connection().await?) };
        let conn = checkout.conn.as_mut().expect("checked out");
        let flavor = *self.flavor.get_or_try_init(|| flavor_of(conn)).await.map_err(|e| self.error(e))?;
        // TIMESTAMP values are rendered in UTC; the time limit is the server's own.
        let setup = match flavor {
            Flavor::MariaDb => format!(
                "SET SESSION time_zone = '+00:00', SESSION max_statement_time = {:.6}; START TRANSACTION READ ONLY",
                limit.as_secs_f64().max(0.000_001)
            ),
            Flavor::MySql => format!(
                "SET SESSION time_zone = '+00:00', SESSION max_execution_time = {}; START TRANSACTION READ ONLY",
                limit.as_millis().max(1)
            ),
        };
        conn.query_drop(setup).await.map_err(|e| self.error(e))?;
        let result = self.fetch(conn, sql, params, rows).await;
        // A result refused halfway still has rows in flight: the connection
        // is dropped rather than drained.
        let halfway = matches!(
            result,
            Err(QueryError::TooManyRows { .. } | QueryError::ResultTooLarge { .. } | QueryError::Rejected { .. })
        );
        // Named locks (GET_LOCK) outlive a rollback; release them so nothing
        // is left on a pooled connection.
        if !halfway && conn.query_drop("ROLLBACK; DO RELEASE_ALL_LOCKS()").await.is_ok() {
            drop(checkout.conn.take());
        }
        result
    }

    pub(super) async fn ping(&self) -> Result<(), QueryError> {
        let mut conn = self.connection().await?;
        conn.ping().await.map_err(|e| self.error(e))
    }

    async fn connection(&self) -> Result<Conn, QueryError> {
        match tokio::time::timeout(self.acquire_timeout, self.pool.get_conn()).await {
            Ok(conn) => conn.map_err(|e| self.error(e)),
            Err(_) => Err(QueryError::Unavailable {
                database: self.name.to_string(),
                message: format!("no connection within {:?} (acquire_timeout)", self.acquire_timeout),
            }),
        }
    }

    async fn fetch(
        &self,
        conn: &mut Conn,
        sql: &str,
        params: &[DbValue],
        mut rows: RowCollector<'_>,
    ) -> Result<Rows, QueryError> {
        let params = if params.is_empty() {
            Params::Empty
        } else {
            Params::Positional(params.iter().map(values::param).collect())
        };
        let mut result = conn.exec_iter(sql, params).await.map_err(|e| self.error(e))?;
        let columns = result.columns().unwrap_or_else(|| Arc::from(Vec::new()));
        while let Some(row) = result.next().await.map_err(|e| self.error(e))? {
            rows.admit_row()?;
            if !rows.has_columns() {
                rows.set_columns(columns.iter().map(|c| c.name_str().into_owned()).collect());
            }
            let cells = row
                .unwrap()
                .into_iter()
                .zip(columns.iter())
                .map(|(value, column)| values::cell(value, column))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| QueryError::Rejected { database: self.name.to_string(), message })?;
            rows.push(cells)?;
        }
        Ok(rows.finish())
    }

    /// Maps a driver error, never showing the password.
    fn error(&self, e: mysql_async::Error) -> QueryError {
        use mysql_async::{DriverError, Error};
        let database = self.name.to_string();
        let message = redact(&e.to_string(), self.password.as_deref());
        match e {
            // Shutdown, killed or idle-closed connections say nothing of the statement.
            Error::Server(server) if matches!(server.code, 1053 | 1927 | 4031 | 1152 | 1158 | 1159 | 1160 | 1161) => {
                QueryError::Unavailable { database, message }
            }
            Error::Server(server) => QueryError::Sql {
                database,
                code: Some(SqlCode::MySql(server.code)),
                message: redact(&server.message, self.password.as_deref()),
            },
            Error::Io(_) | Error::Other(_) => QueryError::Unavailable { database, message },
            Error::Driver(
                DriverError::ConnectionClosed
                | DriverError::PoolDisconnected
                | DriverError::PacketOutOfOrder
                | DriverError::UnexpectedPacket { .. }
                | DriverError::BadCompressedPacketHeader,
            ) => QueryError::Unavailable { database, message },
            Error::Driver(_) => QueryError::Sql { database, code: None, message },
            Error::Url(_) => QueryError::BadConfig { database, message },
        }
    }
}

async fn flavor_of(conn: &mut Conn) -> Result<Flavor, mysql_async::Error> {
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(if version.is_some_and(|v| v.to_ascii_lowercase().contains("mariadb")) {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    })
}
