//! What a pipeline does to the ranks Debezium binlog events decode to.
//!
//! Debezium's MariaDB snapshot reads name the binlog place of their snapshot
//! but no GTID, while changes rank by GTID sequence number (which a failover
//! does not reset). A snapshot read ranked by file and offset would sort
//! below every change and never repair a key, so it is ranked on the
//! pipeline's database: the GTID position at that place (`BINLOG_GTID_POS`),
//! asked once per snapshot.
//!
//! MySQL events (UUID GTIDs, or none) rank by binlog file and offset, which
//! order one server's changes only: after a failover the new server's changes
//! may rank below the old one's and be dropped as stale. That is said, loudly
//! and once per change of server, with what to run, instead of going unnoticed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::commits::EventCommit;
use super::stats::PipelineStats;
use crate::event::visibility::CommitMark;

use crate::event::{ChangeEvent, Op, position};
use crate::query::visibility as check;
use crate::query::{DatabasePool, QueryRunner};

/// Longest one lookup may take; past it the read keeps its binlog rank.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two reports of binlog events changing server.
const SAY_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// A pipeline's view of its binlog events' ranks.
pub(super) struct Ranks {
    pipeline: String,
    database: Option<QueryRunner>,
    stats: Arc<PipelineStats>,
    /// (file number, offset) → GTID sequence number there, or `None` where
    /// the database cannot tell (not MariaDB, another server's file).
    known: Mutex<HashMap<(u64, u64), Option<u64>>>,
    /// What orders the last binlog change (its server, or its GTID domain),
    /// and when a change of it was last said.
    mysql_server: Mutex<(Option<Order>, Option<Instant>)>,
}

impl Ranks {
    pub(super) fn new(pipeline: &str, database: Option<QueryRunner>, stats: Arc<PipelineStats>) -> Self {
        let database = database.filter(|d| matches!(d.pool(), DatabasePool::MySql(_)));
        Self {
            pipeline: pipeline.to_owned(),
            database,
            stats,
            known: Mutex::new(HashMap::new()),
            mysql_server: Mutex::new((None, None)),
        }
    }

    /// Says when a change ranked by binlog place comes from another server
    /// than the one before, or one ranked by MariaDB GTID from another
    /// domain: its version and the ones before do not compare.
    pub(super) fn check_server(&self, event: &ChangeEvent, commit: &EventCommit) {
        let EventCommit::Named(CommitMark::Binlog { server_id, file, gtid, .. }) = commit else { return };
        let order = match gtid.as_deref().and_then(position::parse_mariadb_gtid) {
            Some(gtid) => Order::Domain(gtid.domain),
            None if position::parse_mysql(&event.position).is_some() && *server_id != 0 => Order::Server(*server_id),
            None => return,
        };
        let mut last = self.mysql_server.lock().unwrap_or_else(|e| e.into_inner());
        let before = last.0.replace(order);
        let Some(before) = before.filter(|b| *b != order) else { return };
        metrics::counter!(crate::metrics::BINLOG_SERVER_CHANGES_TOTAL, "pipeline" => self.pipeline.clone())
            .increment(1);
        // Servers that take turns (multi-source replication) would say it at every event.
        if last.1.is_some_and(|said| said.elapsed() < SAY_AGAIN_AFTER) {
            return;
        }
        last.1 = Some(Instant::now());
        let message = match (before, order) {
            (Order::Server(before), Order::Server(now)) => server_change(before, now, file, &self.pipeline),
            (before, now) => format!(
                "binlog events are now ordered by {now} after {before} ({file}): versions compare MariaDB GTID \
                 sequence numbers, which two domains (or a domain and binlog places) do not share, so a key may drop \
                 newer changes as stale. Write in one GTID domain (gtid_domain_id) on every server the pipeline's \
                 events come from; then delete the pipeline's keys with their `{{key}}:meta` hashes and run \
                 `evercache resync --all --pipeline {}`",
                self.pipeline
            ),
        };
        tracing::error!(pipeline = %self.pipeline, "{message}");
        self.stats.error("ordering", message);
    }

    /// Ranks a Debezium snapshot read of a binlog by the GTID sequence at its place, where the database knows it.
    pub(super) async fn rank(&self, event: &mut ChangeEvent) {
        let Some(database) = &self.database else { return };
        if event.op != Op::SnapshotRead {
            return;
        }
        let Some((file, pos, row)) = position::parse_mysql(&event.position) else { return };
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).get(&(file, pos)).copied();
        let seq = match known {
            Some(seq) => seq,
            None => {
                let DatabasePool::MySql(pool) = database.pool() else { return };
                let asked = async {
                    let mut conn = pool.get_conn().await?;
                    check::mariadb_gtid_rank_at(&mut conn, file, pos).await
                };
                let seq = match tokio::time::timeout(LOOKUP_TIMEOUT, asked).await {
                    Ok(Ok(seq)) => seq,
                    // MySQL has no BINLOG_GTID_POS: its changes rank by binlog place too.
                    Ok(Err(mysql_async::Error::Server(_))) => None,
                    failed => {
                        let error = failed.map_or_else(|_| "no answer".to_owned(), |r| format!("{:?}", r.err()));
                        tracing::warn!(pipeline = %self.pipeline, %error, "the GTID position of a snapshot read's \
                            binlog place could not be read; it ranks by binlog place and repairs only keys without \
                            a version");
                        return;
                    }
                };
                if seq.is_none() {
                    tracing::info!(pipeline = %self.pipeline, file, pos, "a snapshot read's binlog place is not on \
                        the pipeline's database (or it is MySQL): it ranks by binlog place");
                }
                self.known.lock().unwrap_or_else(|e| e.into_inner()).insert((file, pos), seq);
                seq
            }
        };
        if let Some(seq) = seq {
            event.position = position::mariadb(seq, pos, row);
        }
    }
}

/// What orders a binlog event's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Binlog places of this server.
    Server(u32),
    /// MariaDB GTID sequence numbers of this domain.
    Domain(u32),
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server(id) => write!(f, "the binlog places of server_id {id}"),
            Self::Domain(domain) => write!(f, "GTID domain {domain}"),
        }
    }
}

/// What to say when MySQL binlog events change server.
fn server_change(before: u32, now: u32, file: &str, pipeline: &str) -> String {
    format!(
        "binlog events now come from server_id {now} ({file}) after server_id {before}: a failover? Without MariaDB \
         GTIDs, versions are binlog places, which do not order two servers' changes: a key the old server \
         versioned drops the new server's changes as stale until the new binlog passes its place. Once the switch \
         is over, delete the pipeline's keys with their `{{key}}:meta` hashes and run \
         `evercache resync --all --pipeline {pipeline}` to fill them again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;

    fn change(position: String) -> ChangeEvent {
        ChangeEvent {
            op: Op::Update,
            source: "shop".into(),
            schema: None,
            table: "item".into(),
            key: "{}".into(),
            before: None,
            after: None,
            position,
            committed_at_ms: 0,
        }
    }

    fn binlog(server_id: u32, gtid: Option<&str>) -> EventCommit {
        let gtid = gtid.map(str::to_owned);
        EventCommit::Named(CommitMark::Binlog { server_id, file: "mysql-bin.000003".into(), pos: 4, gtid })
    }

    #[test]
    fn a_change_of_server_is_said_once_for_binlog_ranked_events_only() {
        let stats = Arc::new(PipelineStats::new("p", "plugin"));
        let ranks = Ranks::new("p", None, stats.clone());
        let mysql = change(position::mysql(3, 4, 0));
        ranks.check_server(&mysql, &binlog(1, Some("3E11FA47-71CA-11E1-9E33-C80AA9429562:23")));
        ranks.check_server(&mysql, &binlog(1, None));
        assert!(stats.snapshot().errors.is_empty());
        ranks.check_server(&mysql, &binlog(2, None));
        ranks.check_server(&mysql, &binlog(2, None));
        ranks.check_server(&mysql, &binlog(1, None));
        let errors = stats.snapshot().errors;
        assert_eq!(errors.len(), 1, "said once a minute at most");
        assert!(errors[0].message.contains("server_id 2 (mysql-bin.000003) after server_id 1"), "{errors:?}");
        // MariaDB GTID ranks order across servers of one domain: nothing to say.
        let ranks = Ranks::new("p", None, stats.clone());
        ranks.check_server(&change(position::mariadb(9, 4, 0)), &binlog(7, Some("0-7-9")));
        ranks.check_server(&change(position::mariadb(10, 4, 0)), &binlog(8, Some("0-8-10")));
        assert_eq!(stats.snapshot().errors.len(), 1);
        ranks.check_server(&change(position::mariadb(3, 4, 0)), &binlog(8, Some("1-8-3")));
        let errors = stats.snapshot().errors;
        assert!(errors[1].message.contains("GTID domain 1 after GTID domain 0"), "{errors:?}");
    }
}
