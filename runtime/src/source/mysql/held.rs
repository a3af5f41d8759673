//! A batch read from the binlog is handed on only once its transactions are
//! visible to new queries (see `visibility`). Until then the capture holds it,
//! however long that takes: a read that has waited `REPORT_AFTER` returns
//! `SourceError::NotVisible`, and the next read waits on the same batch
//! again, so it is neither lost nor read again from the binlog. A check that
//! cannot be made fails the read as a lost connection does: the batch is
//! dropped and read again.

use std::time::{Duration, Instant};

use super::position::BinlogPosition;
use super::visibility::Awaited;
use super::{MySqlCapture, STORE_EVERY};
use crate::event::visibility::REPORT_AFTER;
use crate::metrics::{SOURCE_VISIBILITY_WAIT_SECONDS, VISIBILITY_STALLS_TOTAL};
use crate::source::confirmations::RELEASE_REASON;
use crate::source::{SourceError, SourceRecord};

/// A batch read and not yet handed on.
pub(super) struct Held {
    pub(super) records: Vec<SourceRecord>,
    /// The end of its last commit (with the GTID), confirmable once it is
    /// settled; `None` when the batch ends inside a transaction.
    position: Option<BinlogPosition>,
    pub(super) awaited: Awaited,
    read_at: Instant,
    /// When a read waiting on it next returns `NotVisible`.
    report_at: Instant,
    /// Counted in `VISIBILITY_STALLS_TOTAL` (once per batch).
    pub(super) stalled: bool,
}

impl Held {
    pub(super) fn new(records: Vec<SourceRecord>, position: Option<BinlogPosition>, awaited: Awaited) -> Self {
        let read_at = Instant::now();
        Self { records, position, awaited, read_at, report_at: read_at + REPORT_AFTER, stalled: false }
    }
}

impl MySqlCapture {
    /// A read: the held batch first, else snapshot pages (when one runs),
    /// else the binlog, waiting up to `first_wait` for a first change. A read
    /// `ahead` (while a batch is gathered) waits on visibility only as long as
    /// on changes, and then returns nothing, so what was gathered goes on.
    pub(super) async fn next_batch_within(
        &mut self,
        first_wait: Duration,
        ahead: bool,
    ) -> Result<Vec<SourceRecord>, SourceError> {
        // A batch handed out long ago is still not written (the database or a
        // plugin holds it up): reading ahead stops and the binlog connection
        // is let go, so a server shutting down is not held by it; reading
        // resumes from the confirmed position once the batch is settled.
        if self.confirmations.overdue() {
            self.session.release(RELEASE_REASON);
            tokio::time::sleep(first_wait.min(Duration::from_millis(100))).await;
            return Ok(Vec::new());
        }
        if self.held.is_none() {
            if let Some(records) = self.snapshot_batch().await? {
                self.confirmations.handed_out(records.len(), None);
                return Ok(records);
            }
            let (records, awaited) = self.stream_batch(first_wait).await?;
            let position = self.unconfirmed.take();
            match awaited {
                // Held before the first wait, so a read dropped midway loses nothing.
                Some(awaited) if self.visibility.is_some() => self.held = Some(Held::new(records, position, awaited)),
                _ => {
                    self.confirmations.handed_out(records.len(), position);
                    return Ok(records);
                }
            }
        }
        let patience = ahead.then_some(first_wait);
        self.hand_on(patience).await
    }

    /// Waits until the held batch is visible and hands it out; at its report
    /// time says it is not, keeping it. With `patience`, gives up sooner
    /// (before the report time) with nothing.
    async fn hand_on(&mut self, patience: Option<Duration>) -> Result<Vec<SourceRecord>, SourceError> {
        // What the acker settled meanwhile is confirmed and stored while the batch is held.
        self.take_confirmable();
        self.store_due(STORE_EVERY).await;
        let (Some(held), Some(gate)) = (&mut self.held, &mut self.visibility) else { return Ok(Vec::new()) };
        let deadline = patience.map_or(held.report_at, |p| held.report_at.min(Instant::now() + p));
        let visible = match gate.visible_by(&held.awaited, held.read_at, deadline).await {
            Ok(visible) => visible,
            // As when the binlog connection is lost: the server sends the batch again from the confirmed position.
            Err(e) => {
                self.held = None;
                self.forget_stream();
                self.session.release("the visibility check failed");
                return Err(e);
            }
        };
        if visible {
            let held = self.held.take().expect("held");
            let waited = held.read_at.elapsed();
            metrics::histogram!(SOURCE_VISIBILITY_WAIT_SECONDS, "source" => self.name.clone())
                .record(waited.as_secs_f64());
            if held.stalled {
                let commit = held.position.as_ref().unwrap_or(&held.awaited.last);
                tracing::info!(source = %self.name, %commit, ?waited,
                    "the held batch is visible now; handed on");
            }
            self.confirmations.handed_out(held.records.len(), held.position);
            return Ok(held.records);
        }
        let now = Instant::now();
        if now < held.report_at {
            return Ok(Vec::new());
        }
        if !held.stalled {
            held.stalled = true;
            metrics::counter!(VISIBILITY_STALLS_TOTAL, "source" => self.name.clone()).increment(1);
        }
        held.report_at = now + REPORT_AFTER;
        let commit = held.position.as_ref().unwrap_or(&held.awaited.last);
        Err(gate.not_visible(commit, held.records.len(), held.read_at.elapsed()))
    }
}

#[cfg(test)]
#[path = "held_tests.rs"]
mod tests;
