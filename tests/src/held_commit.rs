//! Commits held invisible on purpose, for the visibility suites. Postgres: on a
//! cluster whose `synchronous_standby_names` names a standby that never
//! connects, a writer with `synchronous_commit = on` has its commit flushed
//! and decoded (log readers stream it) while it waits in `SyncRep`, invisible
//! to new snapshots, until its wait is cancelled. MariaDB: with semi-sync on
//! (`AFTER_SYNC`, no replica to ack), a commit is synced to the binlog (and
//! sent to binlog readers) while the engine commit waits out the timeout.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use evercache_test_kit::mariadb_server::MariaDbServer;
use evercache_test_kit::pg_cluster::PgCluster;
use mysql_async::prelude::Queryable;
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;

use crate::mariadb::MariaDb;
use crate::{TestEnv, wait_until};

/// How long the commit may take to reach its wait, or to finish once released.
const WAIT: Duration = Duration::from_secs(20);

/// A commit waiting for the synchronous standby: flushed and decoded, not visible yet.
pub struct HeldCommit {
    pid: i32,
    /// The transaction id (64 bits).
    pub xid: i64,
    commit: JoinHandle<(PgConnection, Result<(), sqlx::Error>)>,
    /// When its commit began to wait.
    pub started: Instant,
}

impl HeldCommit {
    /// Runs `update` in a transaction on `writer` and commits it with
    /// `synchronous_commit = on`, returning once the commit waits for the standby.
    pub async fn begin(mut writer: PgConnection, pg: &PgPool, update: &str) -> Result<Self> {
        sqlx::query("set synchronous_commit = on").execute(&mut writer).await?;
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut writer).await?;
        sqlx::query("begin").execute(&mut writer).await?;
        sqlx::query(update).execute(&mut writer).await?;
        let xid: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint").fetch_one(&mut writer).await?;
        let started = Instant::now();
        let commit = tokio::spawn(async move {
            let result = sqlx::query("commit").execute(&mut writer).await.map(drop);
            (writer, result)
        });
        wait_until("the commit waits for the synchronous standby", WAIT, || async move {
            let event: Option<String> =
                sqlx::query_scalar("select wait_event::text from pg_stat_activity where pid = $1")
                    .bind(pid)
                    .fetch_optional(pg)
                    .await?
                    .flatten();
            Ok(event.as_deref() == Some("SyncRep"))
        })
        .await?;
        Ok(Self { pid, xid, commit, started })
    }

    /// Cancels the wait: the commit becomes visible (with a warning) and succeeds.
    pub async fn release(self, pg: &PgPool) -> Result<PgConnection> {
        let cancelled: bool = sqlx::query_scalar("select pg_cancel_backend($1)").bind(self.pid).fetch_one(pg).await?;
        ensure!(cancelled, "the writer's wait could not be cancelled");
        let (writer, result) = tokio::time::timeout(WAIT, self.commit).await??;
        result.context("a commit whose wait for the standby is cancelled still commits")?;
        Ok(writer)
    }
}

/// A private cluster whose commits can be held (`synchronous_standby_names`
/// names a standby that never connects; commits are local unless a session
/// asks for more), with `<prefix>.item(id, name, version)` holding `(1, 'old', 1)`.
pub async fn sync_standby_cluster(env: &TestEnv) -> Result<(PgCluster, PgPool)> {
    let cluster = PgCluster::start_with(
        &env.dir.join("cluster"),
        &["-c synchronous_standby_names=nobody", "-c synchronous_commit=local"],
        &[],
    );
    let pg = PgPool::connect(&cluster.url()).await?;
    let p = &env.prefix;
    sqlx::raw_sql(&format!(
        "create schema {p}; create table {p}.item (id bigint primary key, name text, version bigint);
         insert into {p}.item values (1, 'old', 1)"
    ))
    .execute(&pg)
    .await?;
    Ok((cluster, pg))
}

/// A private MariaDB with `server_id` whose commits, once semi-sync is switched
/// on (by [`semi_sync_commit`]), wait up to `timeout` for an ack no replica sends.
pub fn semi_sync_server(dir: &std::path::Path, server_id: u32, timeout: Duration) -> MariaDbServer {
    MariaDbServer::start_with(
        dir,
        &[
            &format!("--server-id={server_id}"),
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
            &format!("--rpl-semi-sync-master-timeout={}", timeout.as_millis()),
            "--rpl-semi-sync-master-wait-no-slave=ON",
        ],
    )
}

/// Runs `statement` with semi-sync switched on again (a timeout switches it
/// off): with no replica to ack, its commit waits, invisible, until the
/// timeout. Returns once it waits, with the writer, which says how long the
/// commit took.
pub async fn semi_sync_commit(maria: &MariaDb, statement: &str) -> Result<JoinHandle<Result<Duration>>> {
    let mut admin = maria.conn().await?;
    admin
        .query_drop("SET GLOBAL rpl_semi_sync_master_enabled = OFF; SET GLOBAL rpl_semi_sync_master_enabled = ON")
        .await?;
    let mut writer = maria.conn().await?;
    let statement = statement.to_owned();
    let commit = tokio::spawn(async move {
        let started = Instant::now();
        writer.query_drop(statement).await?;
        Ok(started.elapsed())
    });
    // Its binlog event is written and synced once the commit waits for the ack.
    let admin = &tokio::sync::Mutex::new(admin);
    wait_until("the commit waits for a semi-sync ack", WAIT, || async move {
        let waiting: Option<i64> = admin
            .lock()
            .await
            .query_first(
                "select count(*) from information_schema.processlist where state like 'Waiting for semi-sync ACK%'",
            )
            .await?;
        Ok(waiting == Some(1))
    })
    .await?;
    Ok(commit)
}
