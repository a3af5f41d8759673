//! The database a capture bench writes to: Postgres (pgoutput capture) or
//! MariaDB (binlog capture), each with the table, the writes and the source
//! section the bench needs.

use anyhow::{Context, Result};
use evercache_test_kit::RuntimeToml;
use mysql_async::prelude::Queryable;
use sqlx::PgPool;

/// Which capture to measure.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Database {
    /// Postgres, logical replication.
    Postgres,
    /// MariaDB, binlog.
    Mariadb,
}

/// Which database a capture bench runs on, and where the services are.
#[derive(clap::Args)]
pub struct DbArgs {
    /// Which database: postgres or mariadb.
    #[arg(long, value_enum, default_value = "postgres")]
    pub database: Database,
    /// Postgres (needs wal_level = logical).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub pg_url: String,
    /// MariaDB (needs its binlog on, ROW format, full metadata).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    pub mysql_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

impl DbArgs {
    /// The URLs, borrowed.
    pub fn urls(&self) -> Urls<'_> {
        Urls { pg: &self.pg_url, mysql: &self.mysql_url, redis: &self.redis_url }
    }
}

/// Where the bench's services are.
pub struct Urls<'a> {
    /// Postgres.
    pub pg: &'a str,
    /// MariaDB, without a database.
    pub mysql: &'a str,
    /// Redis.
    pub redis: &'a str,
}

/// A connected database holding the bench's table `<name>.item`; clones share the pool.
#[derive(Clone)]
pub enum Target {
    Postgres(PgPool),
    MariaDb(mysql_async::Pool),
}

impl Target {
    pub async fn connect(database: Database, pg_url: &str, mysql_url: &str) -> Result<Self> {
        Ok(match database {
            Database::Postgres => {
                Target::Postgres(PgPool::connect(pg_url).await.context("Postgres; run: bash scripts/dev-services.sh")?)
            }
            Database::Mariadb => {
                let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(mysql_url)?);
                drop(pool.get_conn().await.context("MariaDB; run: bash scripts/dev-services.sh")?);
                Target::MariaDb(pool)
            }
        })
    }

    /// What the report calls the capture.
    pub fn label(&self) -> &'static str {
        match self {
            Target::Postgres(_) => "built-in capture (pgoutput)",
            Target::MariaDb(_) => "built-in capture (MariaDB binlog)",
        }
    }

    /// A fresh `<name>.item` with `rows` rows.
    pub async fn create(&self, name: &str, rows: u32) -> Result<()> {
        self.cleanup(name).await;
        match self {
            Target::Postgres(pg) => {
                sqlx::raw_sql(&format!(
                    "create schema {name}; create table {name}.item (id bigint primary key, name text, version bigint);
                     insert into {name}.item select g, 'row', 0 from generate_series(1, {rows}) g;"
                ))
                .execute(pg)
                .await?;
            }
            Target::MariaDb(pool) => {
                pool.get_conn()
                    .await?
                    .query_drop(format!(
                        "create database {name}; create table {name}.item (id bigint primary key, name text, version bigint);
                         insert into {name}.item select seq, 'row', 0 from {name}.seq_1_to_{rows}"
                    ))
                    .await?;
            }
        }
        Ok(())
    }

    /// A transaction of its own updating row `id`.
    pub async fn update_one(&self, name: &str, id: i64) -> Result<()> {
        match self {
            Target::Postgres(pg) => {
                sqlx::query(&format!("update {name}.item set version = version + 1 where id = $1"))
                    .bind(id)
                    .execute(pg)
                    .await?;
            }
            Target::MariaDb(pool) => {
                pool.get_conn()
                    .await?
                    .exec_drop(format!("update {name}.item set version = version + 1 where id = ?"), (id,))
                    .await?;
            }
        }
        Ok(())
    }

    /// One transaction updating rows `1..=rows`.
    pub async fn update_many(&self, name: &str, rows: u32) -> Result<()> {
        match self {
            Target::Postgres(pg) => {
                sqlx::query(&format!("update {name}.item set version = version + 1 where id <= $1"))
                    .bind(i64::from(rows))
                    .execute(pg)
                    .await?;
            }
            Target::MariaDb(pool) => {
                pool.get_conn()
                    .await?
                    .exec_drop(format!("update {name}.item set version = version + 1 where id <= ?"), (rows,))
                    .await?;
            }
        }
        Ok(())
    }

    /// The runtime file's database and source sections for the capture.
    pub fn runtime(&self, runtime: RuntimeToml, name: &str, pg_url: &str, mysql_url: &str, redis: &str) -> RuntimeToml {
        let urls = Urls { pg: pg_url, mysql: mysql_url, redis };
        self.capture_source(self.database(runtime, name, &urls), "capture", name, name, 7001, &urls)
    }

    /// `[databases.db]`, where the bench's table is.
    pub fn database(&self, runtime: RuntimeToml, name: &str, urls: &Urls<'_>) -> RuntimeToml {
        match self {
            Target::Postgres(_) => runtime.database("db", urls.pg),
            Target::MariaDb(_) => runtime.database("db", &format!("{}/{name}", urls.mysql)),
        }
    }

    /// `[sources.<source>]`: the built-in capture of `<name>.item` from now on,
    /// its slot and publication (Postgres) or position key (MariaDB) named
    /// `slot`, registering as replica `server_id` (MariaDB), its streams named
    /// `<name>.<schema>.<table>`. Later lines go to this section.
    pub fn capture_source(
        &self,
        runtime: RuntimeToml,
        source: &str,
        slot: &str,
        name: &str,
        server_id: u32,
        urls: &Urls<'_>,
    ) -> RuntimeToml {
        match self {
            Target::Postgres(_) => runtime
                .postgres_capture(source, urls.pg, &[format!("{name}.item")], slot, urls.redis)
                .line(&format!("snapshot = \"never\"\ntopic_prefix = \"{name}\"")),
            Target::MariaDb(_) => runtime.section(&format!("sources.{source}")).line(&format!(
                "type = \"mysql\"\nurl = \"{}\"\ntables = [\"{name}.item\"]\nserver_id = {server_id}\n\
                 snapshot = \"never\"\ntopic_prefix = \"{name}\"\nposition_key = \"{slot}:binlog\"\n\
                 dead_letter_url = \"{}\"",
                urls.mysql, urls.redis
            )),
        }
    }

    /// The testkit plugin's `[config]` line for the database's SQL.
    pub fn plugin_config(&self) -> &'static str {
        match self {
            Target::Postgres(_) => "",
            Target::MariaDb(_) => "dialect = \"mysql\"\n",
        }
    }

    /// Forgets where capture `slot` stands (the Postgres slot and publication,
    /// or the binlog position in Redis), so its next start begins at the log's
    /// head instead of replaying what was written while it was stopped.
    pub async fn forget_position(&self, slot: &str, redis: &mut redis::aio::MultiplexedConnection) -> Result<()> {
        match self {
            Target::Postgres(pg) => {
                sqlx::query(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
                )
                .bind(slot)
                .execute(pg)
                .await?;
                sqlx::query(&format!("drop publication if exists {slot}")).execute(pg).await?;
            }
            Target::MariaDb(_) => redis::cmd("DEL").arg(format!("{slot}:binlog")).query_async::<()>(redis).await?,
        }
        Ok(())
    }

    pub async fn cleanup(&self, name: &str) {
        match self {
            Target::Postgres(pg) => {
                let _ = sqlx::query(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
                )
                .bind(name)
                .execute(pg)
                .await;
                let _ = sqlx::query(&format!("drop publication if exists {name}")).execute(pg).await;
                let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(pg).await;
            }
            Target::MariaDb(pool) => {
                if let Ok(mut conn) = pool.get_conn().await {
                    let _ = conn.query_drop(format!("drop database if exists {name}")).await;
                }
            }
        }
    }
}
