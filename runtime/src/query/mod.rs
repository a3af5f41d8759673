//! The host's `query` import: one parameterised statement on the pipeline's
//! database (Postgres, MySQL or MariaDB), inside a read-only transaction whose
//! server-side time limit is cut to the plugin call's deadline, with row and
//! byte caps enforced while the rows stream in, and nothing left on the pooled
//! connection afterwards.

use crate::secret::SecretUrl;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::contract::{DbValue, Rows};

mod error;
mod mysql;
mod postgres;
mod rows;
mod statement;
pub(crate) mod visibility;

pub use error::{QueryError, SqlCode};
pub use statement::Dialect;

/// `[databases.<name>]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The database's URL; use a read-only role. Postgres:
    /// "postgres://evercache_ro@127.0.0.1:5432/shop" (placeholders `$1`, `$2`…);
    /// MySQL 8 or MariaDB 10.6+: "mysql://evercache_ro@127.0.0.1:3306/shop"
    /// (placeholders `?`).
    pub url: SecretUrl,
    /// A file holding the password, which replaces the URL's (e.g. a mounted secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
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
    backend: Backend,
    statement_timeout: Duration,
    acquire_timeout: Duration,
    max_rows: usize,
    max_result_bytes: usize,
    /// The owning pipeline's share of the pool, when limited.
    permits: Option<Arc<tokio::sync::Semaphore>>,
}

/// The pool underneath a runner, for the host's own reads that are not plugin
/// queries (a resync's table scan), which need their own session settings.
pub(crate) enum DatabasePool {
    /// A Postgres pool.
    Postgres(sqlx::PgPool),
    /// A MySQL or MariaDB pool.
    MySql(mysql_async::Pool),
}

#[derive(Clone)]
enum Backend {
    Postgres(postgres::PgDatabase),
    MySql(mysql::MySqlDatabase),
}

impl DatabaseConfig {
    /// Builds a lazily connecting pool, so a database that is briefly down at
    /// startup delays queries instead of failing the runtime.
    pub fn build(&self, name: &str) -> Result<QueryRunner, QueryError> {
        crate::tls::init();
        let password = error::password_of(self.url.expose());
        let backend = match Dialect::of_url(self.url.expose()) {
            Some(Dialect::Postgres) => Backend::Postgres(postgres::PgDatabase::new(name, password.as_deref(), self)?),
            Some(Dialect::MySql) => Backend::MySql(mysql::MySqlDatabase::new(name, password.as_deref(), self)?),
            None => {
                return Err(QueryError::BadConfig {
                    database: name.to_owned(),
                    message: "the url must start with postgres:// (or postgresql://) or mysql:// (also for MariaDB)"
                        .to_owned(),
                });
            }
        };
        Ok(QueryRunner {
            name: Arc::from(name),
            backend,
            statement_timeout: self.statement_timeout,
            acquire_timeout: self.acquire_timeout,
            max_rows: self.max_rows,
            max_result_bytes: self.max_result_bytes,
            permits: None,
        })
    }
}

impl QueryRunner {
    /// The `[databases.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SQL the database speaks, which decides the placeholder style.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Postgres(_) => Dialect::Postgres,
            Backend::MySql(_) => Dialect::MySql,
        }
    }

    /// The pool the runner's queries use.
    pub(crate) fn pool(&self) -> DatabasePool {
        match &self.backend {
            Backend::Postgres(db) => DatabasePool::Postgres(db.pool().clone()),
            Backend::MySql(db) => DatabasePool::MySql(db.pool().clone()),
        }
    }

    /// A runner on the same pool that lets at most `limit` of its queries run at
    /// once, so one pipeline cannot take every connection from the others.
    pub fn limited(&self, limit: usize) -> Self {
        Self { permits: Some(Arc::new(tokio::sync::Semaphore::new(limit.max(1)))), ..self.clone() }
    }

    /// Runs one read-only statement with parameters (`$1…` on Postgres, `?` on MySQL).
    pub async fn query(&self, sql: &str, params: &[DbValue]) -> Result<Rows, QueryError> {
        self.query_until(sql, params, None).await
    }

    /// Runs one read-only statement that must end by `deadline` (a plugin
    /// call's): the server's statement time limit is cut to the time left, so
    /// the server cancels it there, and a connection that stops answering is
    /// given up on instead of waited for.
    pub async fn query_until(
        &self,
        sql: &str,
        params: &[DbValue],
        deadline: Option<Instant>,
    ) -> Result<Rows, QueryError> {
        statement::check(sql, self.dialect())
            .map_err(|message| QueryError::Rejected { database: self.name.to_string(), message })?;
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
            Ok(Err(QueryError::Sql { code: Some(code), .. })) if cut && code.is_statement_timeout() => {
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
        let rows = rows::RowCollector::new(&self.name, self.max_rows, self.max_result_bytes);
        match &self.backend {
            Backend::Postgres(db) => db.run(sql, params, limit, rows).await,
            Backend::MySql(db) => db.run(sql, params, limit, rows).await,
        }
    }

    /// `select 1`: is the database reachable? Gives up after `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), QueryError> {
        let ping = async {
            match &self.backend {
                Backend::Postgres(db) => db.ping().await,
                Backend::MySql(db) => db.ping().await,
            }
        };
        match tokio::time::timeout(timeout, ping).await {
            Ok(result) => result,
            Err(_) => Err(QueryError::Unavailable {
                database: self.name.to_string(),
                message: format!("no answer to a health check within {timeout:?}"),
            }),
        }
    }
}
