//! One test's database on the local MariaDB, beside its Redis prefix.

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool};

use evercache_test_kit::{MYSQL_URL, SETUP_HINT};

/// A database named like the test's prefix, dropped and created afresh.
pub struct MariaDb {
    /// The database (and Redis prefix) name.
    pub database: String,
    server_url: String,
    pool: Pool,
}

impl MariaDb {
    /// Creates database `name` on the shared MariaDB, dropping any left from an earlier run.
    pub async fn new(name: &str) -> Result<Self> {
        Self::on(MYSQL_URL, name).await
    }

    /// Creates database `name` on the server at `server_url` (no database in it).
    pub async fn on(server_url: &str, name: &str) -> Result<Self> {
        let pool = Pool::new(Opts::from_url(server_url)?);
        let mut conn = pool.get_conn().await.with_context(|| format!("MariaDB at {server_url}; {SETUP_HINT}"))?;
        conn.query_drop(format!("drop database if exists `{name}`; create database `{name}`")).await?;
        Ok(Self { database: name.to_owned(), server_url: server_url.to_owned(), pool })
    }

    /// The URL of the test's database, for `[databases.*]`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server_url, self.database)
    }

    /// Runs statements in the test's database, each committed on its own.
    pub async fn sql(&self, statements: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.query_drop(statements).await.with_context(|| format!("running SQL: {statements}"))
    }

    /// A connection whose default database is the test's.
    pub async fn conn(&self) -> Result<Conn> {
        let mut conn = self.pool.get_conn().await?;
        conn.query_drop(format!("use `{}`", self.database)).await?;
        Ok(conn)
    }

    /// `(id, name, version)` of every row of `table`, by id.
    pub async fn items(&self, table: &str) -> Result<Vec<(i64, Option<String>, Option<i64>)>> {
        let mut conn = self.conn().await?;
        Ok(conn.query(format!("select id, name, version from `{table}` order by id")).await?)
    }

    /// Drops the database.
    pub async fn drop_database(self) -> Result<()> {
        let mut conn = self.pool.get_conn().await?;
        conn.query_drop(format!("drop database if exists `{}`", self.database)).await?;
        drop(conn);
        self.pool.disconnect().await?;
        Ok(())
    }
}

/// A replica server id of its own for a test, so two captures never evict each other.
pub fn server_id(name: &str) -> u32 {
    let hash = name.bytes().fold(std::process::id(), |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    10_000 + hash % 1_000_000
}
