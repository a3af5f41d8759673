//! The visibility gate of a pipeline fed by Debezium (Redis Streams, Kafka):
//! a batch is recomputed only once the transactions its events came from are
//! visible on the pipeline's database (see `event::visibility`). The built-in
//! captures gate their own batches; here the events' `source` blocks name the
//! transactions. Whether the check can apply is decided on the first batch and
//! said once: it needs the events to come from the database it queries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::commits::{BinlogPlace, Commits};
use super::failure::Interrupted;
use super::stats::PipelineStats;
use crate::event::position::parse_mariadb_gtid;
use crate::event::visibility::REPORT_AFTER;
use crate::metrics as m;
use crate::query::visibility as check;
use crate::query::{DatabasePool, QueryRunner};

/// Longest one check may take before it counts as failed (and is tried again).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between checks while a batch waits.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Whether a pipeline checks that its events' transactions are visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// Check where it can apply: Debezium Postgres events whose `source.db` is
    /// the pipeline's database; MariaDB events whose `source.server_id` and
    /// binlog `file` are the pipeline's database's own; MySQL events with a
    /// GTID on a server with `gtid_mode = ON`. Said once at the first batch
    /// where it cannot apply (events from a replica's binlog, another database
    /// kind, a `source` block without the fields).
    #[default]
    Auto,
    /// Never check: a change can be recomputed a moment before its commit is
    /// visible and leave its key stale.
    Off,
}

/// How this pipeline checks, once decided.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Postgres,
    MariaDb,
    MySqlGtid,
    /// It cannot apply; why.
    Skip(String),
}

/// A pipeline's gate, one per pipeline generation.
pub struct VisibilityGate {
    pipeline: String,
    mode: Visibility,
    database: Option<QueryRunner>,
    stats: Arc<PipelineStats>,
    check: Mutex<Option<Check>>,
    warned_unnamed: Mutex<bool>,
    /// MariaDB: the database's binlog files as last listed.
    binlogs: Mutex<Vec<String>>,
}

impl VisibilityGate {
    /// The gate of `pipeline`, checking on `database` unless `mode` is off.
    pub fn new(pipeline: &str, mode: Visibility, database: Option<QueryRunner>, stats: Arc<PipelineStats>) -> Self {
        let check = match (mode, &database) {
            (Visibility::Off, _) => Some(Check::Skip("visibility = \"off\"".to_owned())),
            (Visibility::Auto, None) => Some(Check::Skip("the pipeline has no database".to_owned())),
            (Visibility::Auto, Some(_)) => None,
        };
        if let Some(Check::Skip(why)) = &check {
            stats.set_gate(format!("off: {why}"));
        }
        Self {
            pipeline: pipeline.to_owned(),
            mode,
            database,
            stats,
            check: Mutex::new(check),
            warned_unnamed: Mutex::new(false),
            binlogs: Mutex::new(Vec::new()),
        }
    }

    /// Returns once every transaction in `commits` is visible on the
    /// pipeline's database, or at once where the check cannot apply. Waits as
    /// long as it takes, reported after `REPORT_AFTER` (the pipeline's status
    /// and `/ready` name the transactions); a database that does not answer is
    /// asked again. Only a shutdown ends the wait early.
    pub async fn wait(&self, commits: &Commits, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        if self.mode == Visibility::Off {
            return Ok(());
        }
        self.warn_unnamed(commits);
        if commits.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let mut reported = false;
        let mut pause = Duration::from_millis(1);
        loop {
            let last_error = match self.visible(commits).await {
                Ok(true) => break,
                Ok(false) => None,
                Err(error) => Some(error),
            };
            let waited = start.elapsed();
            if waited >= REPORT_AFTER {
                let error = last_error.as_deref().map(|e| format!("; {e}")).unwrap_or_default();
                let why =
                    format!("waiting {:.0}s for {} to become visible{error}", waited.as_secs_f64(), commits.describe());
                if !reported {
                    metrics::counter!(m::VISIBILITY_STALLS_TOTAL, "pipeline" => self.pipeline.clone()).increment(1);
                    tracing::warn!(pipeline = %self.pipeline, "{why}; the batch is held");
                    reported = true;
                }
                self.stats.set_visibility_wait(Some(why));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Interrupted),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
        let waited = start.elapsed();
        metrics::histogram!(m::PIPELINE_VISIBILITY_WAIT_SECONDS, "pipeline" => self.pipeline.clone())
            .record(waited.as_secs_f64());
        if reported {
            tracing::info!(pipeline = %self.pipeline, waited_ms = waited.as_millis() as u64, "held batch visible; going on");
            self.stats.set_visibility_wait(None);
        }
        Ok(())
    }

    /// Whether the batch's transactions are visible; an error names the database.
    async fn visible(&self, commits: &Commits) -> Result<bool, String> {
        let name = self.database.as_ref().map_or("", QueryRunner::name);
        self.check(commits).await.map_err(|e| format!("database '{name}' is unavailable: {e}"))
    }

    /// Whether the batch's transactions are visible, deciding first how to check.
    async fn check(&self, commits: &Commits) -> Result<bool, String> {
        let decided = self.check.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let check = match decided {
            Some(check) => check,
            None => {
                let check = self.decide(commits).await?;
                match &check {
                    Check::Skip(why) => {
                        tracing::warn!(pipeline = %self.pipeline, "the visibility gate cannot apply: {why}; a change \
                            may be recomputed a moment before its commit is visible (set visibility = \"off\" to say so)");
                        self.stats.set_gate(format!("off: {why}"));
                    }
                    check => self.stats.set_gate(format!("on: {check:?}")),
                }
                *self.check.lock().unwrap_or_else(|e| e.into_inner()) = Some(check.clone());
                check
            }
        };
        let pool = self.database.as_ref().map(QueryRunner::pool);
        let asked = async {
            match (&check, pool) {
                (Check::Skip(_), _) | (_, None) => Ok(true),
                (Check::Postgres, Some(DatabasePool::Postgres(pool))) => {
                    let xids: Vec<u64> = commits.xids.iter().copied().collect();
                    check::postgres_all_visible(&pool, &xids).await.map_err(|e| e.to_string())
                }
                (Check::MariaDb, Some(DatabasePool::MySql(pool))) => {
                    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
                    mariadb_visible(&mut conn, commits, &self.binlogs).await.map_err(|e| e.to_string())
                }
                (Check::MySqlGtid, Some(DatabasePool::MySql(pool))) => {
                    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
                    for gtid in commits.binlog.iter().filter_map(|p| p.gtid.as_deref()) {
                        if !check::mysql_gtid_executed(&mut conn, gtid).await.map_err(|e| e.to_string())? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
                (_, Some(_)) => Ok(true),
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, asked).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }

    /// Whether the check can apply to events like these on this database.
    async fn decide(&self, commits: &Commits) -> Result<Check, String> {
        let Some(database) = &self.database else { return Ok(Check::Skip("the pipeline has no database".into())) };
        let name = database.name().to_owned();
        match database.pool() {
            DatabasePool::Postgres(pool) => {
                if !commits.binlog.is_empty() {
                    return Ok(Check::Skip(format!("MySQL or MariaDB events, and database '{name}' is Postgres")));
                }
                let current = check::postgres_database(&pool).await.map_err(|e| e.to_string())?;
                if let Some(other) = commits.databases.iter().find(|db| **db != current) {
                    return Ok(Check::Skip(format!(
                        "the events come from database '{other}' and database '{name}' is '{current}'"
                    )));
                }
                // A primary has assigned every id a commit of its own carries:
                // a larger one comes from another server (a standby may lag, and waits).
                let (standby, next) = check::postgres_next_xid(&pool).await.map_err(|e| e.to_string())?;
                match commits.xids.iter().find(|&&xid| !standby && check::full_xid(xid, next) >= next) {
                    Some(xid) => Ok(Check::Skip(format!(
                        "the events name transaction {xid}, which database '{name}' has not assigned yet \
                         (it has assigned up to {next}): they come from another server"
                    ))),
                    None => Ok(Check::Postgres),
                }
            }
            DatabasePool::MySql(pool) => {
                if !commits.xids.is_empty() {
                    return Ok(Check::Skip(format!("Postgres events, and database '{name}' is MySQL or MariaDB")));
                }
                let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
                let server = check::binlog_server(&mut conn).await.map_err(|e| e.to_string())?;
                let foreign = commits
                    .binlog
                    .iter()
                    .find(|p| p.server_id != server.server_id || !server.binlogs.contains(&p.file));
                // MariaDB places of another server's binlog are checked by GTID.
                let mariadb_gtid = |p: &BinlogPlace| p.gtid.as_deref().and_then(parse_mariadb_gtid).is_some();
                Ok(match foreign {
                    Some(place) if server.mariadb && mariadb_gtid(place) => Check::MariaDb,
                    Some(place) if server.mariadb || !server.gtids || place.gtid.is_none() => Check::Skip(format!(
                        "the events were read from binlog {} of server {}, and database '{name}' is server {}{}",
                        place.file,
                        place.server_id,
                        server.server_id,
                        if server.mariadb { "" } else { " without GTIDs to compare" }
                    )),
                    _ if server.mariadb => Check::MariaDb,
                    _ if server.gtids => Check::MySqlGtid,
                    _ => Check::Skip(format!("MySQL server {} has gtid_mode OFF", server.server_id)),
                })
            }
        }
    }

    fn warn_unnamed(&self, commits: &Commits) {
        if commits.unnamed == 0 {
            return;
        }
        let mut warned = self.warned_unnamed.lock().unwrap_or_else(|e| e.into_inner());
        if !*warned {
            *warned = true;
            tracing::warn!(pipeline = %self.pipeline, events = commits.unnamed, "events whose source block names no \
                transaction (Postgres txId; MySQL server_id, file and pos) go on unchecked for visibility");
        }
    }
}

/// MariaDB: whether a consistent snapshot opened now sees every transaction
/// of the batch. A place in the server's own binlog is compared with the
/// snapshot's place; a place in another server's (events read before a
/// failover, or from the primary while this is a replica) by GTID against the
/// GTID position at the snapshot's place, which any server of the group shares.
async fn mariadb_visible(
    conn: &mut mysql_async::Conn,
    commits: &Commits,
    binlogs: &Mutex<Vec<String>>,
) -> Result<bool, mysql_async::Error> {
    let Some(view) = check::mariadb_view(conn).await? else { return Ok(false) };
    let listed = |p: &BinlogPlace| binlogs.lock().unwrap_or_else(|e| e.into_inner()).contains(&p.file);
    // A file of the server's own not listed yet is a new one (or another server's): list them again.
    if commits.binlog.iter().any(|p| p.server_id == view.server_id && !listed(p)) {
        let server = check::binlog_server(conn).await?;
        *binlogs.lock().unwrap_or_else(|e| e.into_inner()) = server.binlogs;
    }
    let own = |p: &BinlogPlace| p.server_id == view.server_id && listed(p);
    // A transaction starting at `pos` is visible once the snapshot stands past it.
    if commits.binlog.iter().filter(|p| own(p)).any(|p| view.place <= p.ordinal) {
        return Ok(false);
    }
    let foreign: Vec<_> = commits.binlog.iter().filter(|p| !own(p)).collect();
    if foreign.is_empty() {
        return Ok(true);
    }
    let at = check::mariadb_gtids_at(conn, &view.file, view.place.1).await?.unwrap_or_default();
    Ok(foreign.iter().all(|p| match p.gtid.as_deref().and_then(parse_mariadb_gtid) {
        Some(gtid) => at.iter().any(|seen| seen.domain == gtid.domain && seen.seq >= gtid.seq),
        // Decided at the first batch: a place without a GTID was the server's own then.
        None => true,
    }))
}
