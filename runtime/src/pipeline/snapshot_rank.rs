//! Debezium's MariaDB snapshot reads name the binlog place of their snapshot
//! but no GTID, while changes rank by GTID sequence number (which a failover
//! does not reset). A snapshot read ranked by file and offset would sort
//! below every change and never repair a key, so it is ranked on the
//! pipeline's database: the GTID position at that place (`BINLOG_GTID_POS`),
//! asked once per snapshot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::event::{ChangeEvent, Op, position};
use crate::query::visibility as check;
use crate::query::{DatabasePool, QueryRunner};

/// Longest one lookup may take; past it the read keeps its binlog rank.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A pipeline's snapshot-read ranks, by binlog place.
pub(super) struct SnapshotRanks {
    pipeline: String,
    database: Option<QueryRunner>,
    /// (file number, offset) → GTID sequence number there, or `None` where
    /// the database cannot tell (not MariaDB, another server's file).
    known: Mutex<HashMap<(u64, u64), Option<u64>>>,
}

impl SnapshotRanks {
    pub(super) fn new(pipeline: &str, database: Option<QueryRunner>) -> Self {
        let database = database.filter(|d| matches!(d.pool(), DatabasePool::MySql(_)));
        Self { pipeline: pipeline.to_owned(), database, known: Mutex::new(HashMap::new()) }
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
