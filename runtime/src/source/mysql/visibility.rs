//! Waits until a batch's changes are visible to new transactions. The server
//! writes a transaction to the binlog before the storage engine commits it,
//! so a replica can read a change before a query on the server sees it; a
//! recompute run then would cache the value from before the change, under the
//! change's position, and stay stale. MariaDB says which binlog position a
//! consistent snapshot corresponds to; once that reaches a commit, the commit
//! is visible to every transaction that starts afterwards.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::position::BinlogPosition;
use crate::source::SourceError;

/// Longest a commit may take to become visible before the batch counts as failed.
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// How the server tells that a commit is visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// MariaDB's `binlog_snapshot_position`.
    SnapshotPosition,
    /// MySQL with GTIDs: `WAIT_FOR_EXECUTED_GTID_SET`.
    ExecutedGtids,
    /// Neither: nothing to wait on (said once, at start).
    Unavailable,
}

/// A connection for visibility checks, opened on first use and again when lost.
pub(super) struct VisibilityGate {
    source: String,
    opts: Opts,
    conn: Option<Conn>,
    check: Option<Check>,
}

impl VisibilityGate {
    pub(super) fn new(source: &str, opts: Opts) -> Self {
        Self { source: source.to_owned(), opts, conn: None, check: None }
    }

    /// Returns once every transaction ending at or before `commit` is visible
    /// to new transactions.
    pub(super) async fn wait(&mut self, commit: &BinlogPosition) -> Result<(), SourceError> {
        let give_up = Instant::now() + VISIBLE_WITHIN;
        let result = tokio::time::timeout_at(give_up.into(), self.wait_inner(commit)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.conn = None;
                Err(self.unavailable(&e.to_string()))
            }
            Err(_) => {
                self.conn = None;
                Err(self
                    .unavailable(&format!("the commit at {commit} did not become visible within {VISIBLE_WITHIN:?}")))
            }
        }
    }

    async fn wait_inner(&mut self, commit: &BinlogPosition) -> Result<(), mysql_async::Error> {
        if self.conn.is_none() {
            self.conn = Some(Conn::new(self.opts.clone()).await?);
        }
        let conn = self.conn.as_mut().expect("connected");
        let check = match self.check {
            Some(check) => check,
            None => {
                let check = detect(conn).await?;
                if check == Check::Unavailable {
                    tracing::warn!(source = %self.source,
                        "the server reports neither binlog_snapshot_position (MariaDB) nor GTIDs (MySQL): a change \
                         may be recomputed a moment before it is visible; turn on gtid_mode on MySQL");
                }
                self.check = Some(check);
                check
            }
        };
        match check {
            Check::SnapshotPosition => {
                let mut pause = Duration::from_micros(200);
                loop {
                    // One round trip: open a snapshot, read its position, close it.
                    let mut result = conn
                        .query_iter(
                            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY; \
                             SHOW STATUS LIKE 'binlog_snapshot_%'; COMMIT",
                        )
                        .await?;
                    let mut status: Vec<(String, String)> = Vec::new();
                    while !result.is_empty() {
                        let set: Vec<(String, String)> = result.collect().await?;
                        if !set.is_empty() {
                            status = set;
                        }
                    }
                    drop(result);
                    if visible_at(&status).is_some_and(|seen| seen.ordinal() >= commit.ordinal()) {
                        return Ok(());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
            Check::ExecutedGtids => {
                if let Some(gtid) = &commit.gtid {
                    let seconds = VISIBLE_WITHIN.as_secs().max(1);
                    let _: Option<i64> =
                        conn.exec_first("SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)", (gtid.as_str(), seconds)).await?;
                }
                Ok(())
            }
            Check::Unavailable => Ok(()),
        }
    }

    fn unavailable(&self, message: &str) -> SourceError {
        SourceError::Unavailable {
            source_name: self.source.clone(),
            operation: "visibility check",
            message: message.to_owned(),
        }
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

/// The binlog position a consistent snapshot corresponds to.
fn visible_at(status: &[(String, String)]) -> Option<BinlogPosition> {
    let value = |name: &str| status.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    Some(BinlogPosition {
        file: value("Binlog_snapshot_file")?,
        pos: value("Binlog_snapshot_position")?.parse().ok()?,
        gtid: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use mysql_async::prelude::Queryable;
    use mysql_async::{Conn, Opts};

    use super::{BinlogPosition, VisibilityGate};

    const URL: &str = "mysql://root@127.0.0.1:3306";

    #[tokio::test]
    async fn waits_for_a_commit_until_a_new_snapshot_reaches_it() {
        let opts = Opts::from_url(URL).unwrap();
        let mut conn = Conn::new(opts.clone()).await.expect("MariaDB at 127.0.0.1:3306 with its binlog on");
        let (file, pos): (String, u64) = conn
            .query_first("show master status")
            .await
            .unwrap()
            .map(|row: mysql_async::Row| (row.get(0).unwrap(), row.get(1).unwrap()))
            .unwrap();
        let mut gate = VisibilityGate::new("test", opts);
        let committed = BinlogPosition { file: file.clone(), pos, gtid: None };
        let started = Instant::now();
        gate.wait(&committed).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "a visible commit passes at once");
        // A commit the server has not made visible (here: not written yet) holds the batch.
        let ahead = BinlogPosition { file, pos: pos + 1_000_000_000, gtid: None };
        let err = gate.wait(&ahead).await.unwrap_err();
        assert!(err.to_string().contains("did not become visible"), "{err}");
    }
}
