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
        match self {
            Target::Postgres(_) => runtime
                .database("db", pg_url)
                .postgres_capture("capture", pg_url, &[format!("{name}.item")], name, redis)
                .line("snapshot = \"never\""),
            Target::MariaDb(_) => {
                runtime.database("db", &format!("{mysql_url}/{name}")).section("sources.capture").line(&format!(
                    "type = \"mysql\"\nurl = \"{mysql_url}\"\ntables = [\"{name}.item\"]\nserver_id = 7001\n\
                     snapshot = \"never\"\ntopic_prefix = \"{name}\"\nposition_key = \"{name}:binlog\"\n\
                     dead_letter_url = \"{redis}\""
                ))
            }
        }
    }

    /// The testkit plugin's `[config]` line for the database's SQL.
    pub fn plugin_config(&self) -> &'static str {
        match self {
            Target::Postgres(_) => "",
            Target::MariaDb(_) => "dialect = \"mysql\"\n",
        }
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
