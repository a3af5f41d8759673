//! Whether a batch's changes are visible to new transactions. The server
//! writes and syncs a transaction to the binlog before the storage engine
//! commits it (and with semi-synchronous replication, wait point AFTER_SYNC,
//! the engine commit waits for a replica's ack), so the capture can read a
//! change long before a query on the server sees it; a recompute run then
//! would cache the value from before the change, under the change's
//! position, and stay stale. MariaDB says which binlog position a consistent
//! snapshot corresponds to; once that reaches a commit, the commit is visible
//! to every transaction that starts afterwards. MySQL says which GTIDs are
//! executed (committed in the engine).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::position::BinlogPosition;
use crate::event::visibility::REPORT_AFTER;
use crate::source::SourceError;

/// Longest one check may go unanswered before the server counts as unreachable.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// First pause between checks: a commit is usually visible within a millisecond.
const FIRST_PAUSE: Duration = Duration::from_micros(200);
/// Longest pause between checks of a batch held for less than `REPORT_AFTER`.
const SHORT_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause once a batch was held past `REPORT_AFTER`: the server is spared
/// a hundred checks a second while a replica is away.
const LONG_PAUSE: Duration = Duration::from_millis(100);

/// How the server tells that a commit is visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// MariaDB's `binlog_snapshot_position`.
    SnapshotPosition,
    /// MySQL with GTIDs: `GTID_SUBSET(…, @@GLOBAL.gtid_executed)`.
    ExecutedGtids,
    /// Neither: nothing to wait on (said once, at start).
    Unavailable,
}

/// What a batch waits for: every transaction it has a change of is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Awaited {
    /// The end of the batch's last event that gave a record, with its
    /// transaction's GTID; snapshot positions fall between transactions, so
    /// one at or past it sees every transaction of the batch.
    pub(super) last: BinlogPosition,
    /// MySQL GTIDs of the batch's transactions, by server UUID.
    gtids: BTreeMap<String, BTreeSet<u64>>,
}

impl Awaited {
    /// `awaited` grown by a change that ends at `at`.
    pub(super) fn extend(awaited: Option<Self>, at: BinlogPosition) -> Self {
        let mut awaited = awaited.unwrap_or_else(|| Self { last: at.clone(), gtids: BTreeMap::new() });
        // MariaDB GTIDs ("domain-server-seq") have no colon; its check is by position.
        if let Some((uuid, gno)) = at.gtid.as_deref().and_then(|g| g.rsplit_once(':'))
            && let Ok(gno) = gno.parse()
        {
            awaited.gtids.entry(uuid.to_owned()).or_default().insert(gno);
        }
        awaited.last = at;
        awaited
    }

    /// The MySQL GTID set of the batch's transactions, e.g. "3e11fa47-…:1-3:7";
    /// empty when it has none.
    fn gtid_set(&self) -> String {
        let mut sets = Vec::new();
        for (uuid, gnos) in &self.gtids {
            let mut set = uuid.clone();
            let mut gnos = gnos.iter().copied().peekable();
            while let Some(start) = gnos.next() {
                let mut end = start;
                while gnos.next_if(|&next| next == end + 1).is_some() {
                    end += 1;
                }
                set.push_str(&if start == end { format!(":{start}") } else { format!(":{start}-{end}") });
            }
            sets.push(set);
        }
        sets.join(",")
    }
}

/// A connection for visibility checks, opened on first use and again when lost.
pub(super) struct VisibilityGate {
    source: String,
    opts: Opts,
    conn: Option<Conn>,
    check: Option<Check>,
    /// What the server said last, for the report of a held batch.
    last_answer: Option<String>,
}

impl VisibilityGate {
    pub(super) fn new(source: &str, opts: Opts) -> Self {
        Self { source: source.to_owned(), opts, conn: None, check: None, last_answer: None }
    }

    /// True once every transaction of `awaited` is visible to new
    /// transactions; false when it is not by `deadline`. `held_since` is when
    /// the batch was read. An error means the server could not be asked.
    pub(super) async fn visible_by(
        &mut self,
        awaited: &Awaited,
        held_since: Instant,
        deadline: Instant,
    ) -> Result<bool, SourceError> {
        let mut pause = FIRST_PAUSE;
        loop {
            let visible = match tokio::time::timeout(ANSWER_WITHIN, self.visible_now(awaited)).await {
                Ok(Ok(visible)) => visible,
                Ok(Err(message)) => return Err(self.unavailable(&message)),
                Err(_) => return Err(self.unavailable(&format!("no answer within {ANSWER_WITHIN:?}"))),
            };
            let now = Instant::now();
            if visible {
                return Ok(true);
            }
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            let longest = if held_since.elapsed() < REPORT_AFTER { SHORT_PAUSE } else { LONG_PAUSE };
            pause = (pause * 2).min(longest);
        }
    }

    /// Says that a batch of `records` has been held for `waited` on the
    /// commit at `commit`, and what the server said last.
    pub(super) fn not_visible(&self, commit: &BinlogPosition, records: usize, waited: Duration) -> SourceError {
        let answer = self.last_answer.as_deref().map(|a| format!(" ({a})")).unwrap_or_default();
        SourceError::NotVisible {
            source_name: self.source.clone(),
            message: format!(
                "the commit at {commit} is in the binlog but not yet visible to new transactions after {:.1}s{answer}: \
                 the server has not committed it in the engine (waiting for a semi-synchronous replica's ack?); \
                 the batch of {records} change(s) is held until it is visible",
                waited.as_secs_f64()
            ),
        }
    }

    async fn visible_now(&mut self, awaited: &Awaited) -> Result<bool, String> {
        let source = &self.source;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(Conn::new(self.opts.clone()).await.map_err(|e| e.to_string())?),
        };
        let check = match self.check {
            Some(check) => check,
            None => {
                let check = detect(conn).await.map_err(|e| e.to_string())?;
                if check == Check::Unavailable {
                    tracing::warn!(source = %source,
                        "the server reports neither binlog_snapshot_position (MariaDB) nor GTIDs (MySQL): a change \
                         may be recomputed before it is visible; turn on gtid_mode on MySQL");
                }
                *self.check.insert(check)
            }
        };
        match check {
            Check::SnapshotPosition => {
                let seen = snapshot_position(conn).await.map_err(|e| e.to_string())?;
                let visible = seen.as_ref().is_some_and(|seen| seen.ordinal() >= awaited.last.ordinal());
                self.last_answer = seen.map(|seen| format!("a new snapshot stands at {seen}"));
                Ok(visible)
            }
            Check::ExecutedGtids => {
                let set = awaited.gtid_set();
                // A batch with no GTID (none seen since the capture started) has nothing the server can answer for.
                if set.is_empty() {
                    return Ok(true);
                }
                let subset: Option<i64> = conn
                    .exec_first("SELECT GTID_SUBSET(?, @@GLOBAL.gtid_executed)", (set.as_str(),))
                    .await
                    .map_err(|e| e.to_string())?;
                self.last_answer = Some(format!("gtid_executed does not contain all of {set}"));
                executed(subset)
            }
            Check::Unavailable => Ok(true),
        }
    }

    /// The connection is dropped, so the next check starts afresh.
    fn unavailable(&mut self, message: &str) -> SourceError {
        self.conn = None;
        SourceError::Unavailable {
            source_name: self.source.clone(),
            operation: "visibility check",
            message: message.to_owned(),
        }
    }
}

/// `GTID_SUBSET`'s answer: 1 when every GTID of the set is executed.
fn executed(subset: Option<i64>) -> Result<bool, String> {
    match subset {
        Some(answer) => Ok(answer == 1),
        None => Err("GTID_SUBSET answered NULL".to_owned()),
    }
}

async fn detect(conn: &mut Conn) -> Result<Check, mysql_async::Error> {
    let status: Vec<(String, String)> = conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
    if status.iter().any(|(name, _)| name.eq_ignore_ascii_case("Binlog_snapshot_position")) {
        return Ok(Check::SnapshotPosition);
    }
    let gtid_mode: Option<String> = conn.query_first("SELECT @@GLOBAL.gtid_mode").await.unwrap_or(None);
    Ok(if gtid_mode.is_some_and(|m| m.eq_ignore_ascii_case("ON")) { Check::ExecutedGtids } else { Check::Unavailable })
}

/// The binlog position a new consistent snapshot corresponds to.
async fn snapshot_position(conn: &mut Conn) -> Result<Option<BinlogPosition>, mysql_async::Error> {
    Ok(visible_at(&crate::query::visibility::binlog_snapshot_status(conn).await?))
}

/// The position in `SHOW STATUS LIKE 'binlog_snapshot_%'`.
fn visible_at(status: &[(String, String)]) -> Option<BinlogPosition> {
    let value = |name: &str| status.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    Some(BinlogPosition {
        file: value("Binlog_snapshot_file")?,
        pos: value("Binlog_snapshot_position")?.parse().ok()?,
        gtid: None,
        gtids: None,
    })
}

#[cfg(test)]
#[path = "visibility_tests.rs"]
mod tests;
