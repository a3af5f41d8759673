//! Waiting until captured transactions are visible to new snapshots.
//!
//! Logical decoding streams a commit as soon as its WAL record is flushed, a
//! moment before the committing backend leaves the proc array — or, with a
//! synchronous standby that does not answer, for as long as it does not. A
//! recompute that queried in that window would not see the change it was
//! triggered by, and would store the old value under the new position — a stale
//! key that no later event for other keys would fix. So a batch is handed on
//! only once every transaction in it is visible to a fresh snapshot (later
//! snapshots then see it too), and it is never handed on before: a batch still
//! held after [`REPORT_AFTER`] is reported, and stays held in the capture.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::config::Visibility;
use crate::event::visibility::REPORT_AFTER;
use crate::metrics as m;
use crate::source::{SourceError, SourceRecord};

/// Longest one check may take before the database counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between checks of a batch held for a while: a long hold
/// should not query the database a thousand times a second.
const MAX_POLL: Duration = Duration::from_millis(50);
/// Transaction ids named in a report, at most.
const NAMED_XIDS: usize = 10;

/// A batch read from the stream and not handed on yet: it stays in the
/// capture across reads until its transactions are visible.
pub(super) struct HeldBatch {
    pub(super) records: Vec<SourceRecord>,
    xids: Vec<u32>,
    /// End of its last commit, confirmable once the batch is settled.
    pub(super) position: Option<u64>,
    since: Instant,
    /// When it was last reported; `None` until the first report, which counts it as a stall.
    reported_at: Option<Instant>,
}

impl HeldBatch {
    pub(super) fn new(records: Vec<SourceRecord>, xids: Vec<u32>, position: Option<u64>) -> Self {
        Self { records, xids, position, since: Instant::now(), reported_at: None }
    }

    /// When the next report is due: `report_after` into the hold, then every
    /// `report_after`, so the source keeps counting as failing while it lasts.
    fn report_due(&self, report_after: Duration) -> Instant {
        self.reported_at.unwrap_or(self.since) + report_after
    }

    /// How long to pause before the next check: about a tenth of the wait so
    /// far, so the usual sub-millisecond gap costs little and a long hold polls slowly.
    fn poll(&self) -> Duration {
        (self.since.elapsed() / 10).clamp(Duration::from_millis(1), MAX_POLL)
    }

    /// The report of a batch still held; the first one of a batch also says
    /// whether to count it as a stall (once per batch, not per report).
    fn report(&mut self, source: &str) -> (SourceError, bool) {
        let first = self.reported_at.is_none();
        self.reported_at = Some(Instant::now());
        let mut named: Vec<String> = self.xids.iter().take(NAMED_XIDS).map(u32::to_string).collect();
        if self.xids.len() > NAMED_XIDS {
            named.push(format!("and {} more", self.xids.len() - NAMED_XIDS));
        }
        let message = format!(
            "not visible: transaction(s) {} committed in the WAL but not visible to new queries after {:.1?} \
             (a synchronous standby that does not answer?); their {} change(s) are held until they are",
            named.join(", "),
            self.since.elapsed(),
            self.records.len()
        );
        (SourceError::NotVisible { source_name: source.to_owned(), message }, first)
    }
}

/// What became of a held batch after [`VisibilityGate::hold`].
#[derive(Debug)]
pub(super) enum Hold {
    /// Its transactions are visible: hand it on.
    Visible,
    /// Still not visible when the caller's time was up, and no report is due.
    Waiting,
    /// Still not visible and a report is due: the caller returns it, and the
    /// batch stays held.
    Report(SourceError),
}

/// Checks transaction visibility on a small pool of the capture's own role.
pub(super) struct VisibilityGate {
    source: String,
    pool: PgPool,
    mode: Visibility,
    report_after: Duration,
}

impl VisibilityGate {
    pub(super) fn new(source: &str, url: &str, mode: Visibility) -> Result<Self, SourceError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .map_err(|e| SourceError::BadConfig { source_name: source.to_owned(), message: format!("url: {e}") })?;
        Ok(Self { source: source.to_owned(), pool, mode, report_after: REPORT_AFTER })
    }

    /// True when every transaction in `xids` is visible to a snapshot taken now.
    pub(super) async fn visible(&self, xids: &[u32]) -> Result<bool, SourceError> {
        let xids: Vec<u64> = xids.iter().map(|&x| u64::from(x)).collect();
        let check = crate::query::visibility::postgres_all_visible(&self.pool, &xids);
        self.bounded("transaction visibility check", check).await
    }

    /// Whether the replication slot exists, and if so whether a walsender
    /// streams from it now (`None`: the slot is gone).
    pub(super) async fn slot_active(&self, slot: &str) -> Result<Option<bool>, SourceError> {
        let check = sqlx::query_scalar::<_, bool>("select active from pg_replication_slots where slot_name = $1")
            .bind(slot)
            .fetch_optional(&self.pool);
        self.bounded("replication slot check", check).await
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        check: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, SourceError> {
        let unavailable =
            |message: String| SourceError::Unavailable { source_name: self.source.clone(), operation, message };
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(result) => result.map_err(|e| unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!("no answer within {CHECK_TIMEOUT:?}"))),
        }
    }

    /// Waits until every transaction of `batch` is visible (usually at the
    /// first check), until `until` (a read ahead's limit), or until a report
    /// is due, whichever comes first. An error means the check itself failed.
    pub(super) async fn hold(&self, batch: &mut HeldBatch, until: Option<Instant>) -> Result<Hold, SourceError> {
        if self.mode == Visibility::Off || batch.xids.is_empty() {
            return Ok(Hold::Visible);
        }
        loop {
            if self.visible(&batch.xids).await? {
                metrics::histogram!(m::SOURCE_VISIBILITY_WAIT_SECONDS, "source" => self.source.clone())
                    .record(batch.since.elapsed().as_secs_f64());
                if batch.reported_at.is_some() {
                    tracing::info!(source = %self.source, xids = ?batch.xids, waited = ?batch.since.elapsed(),
                        "held transactions are visible; handing the batch on");
                }
                return Ok(Hold::Visible);
            }
            let now = Instant::now();
            let report_due = batch.report_due(self.report_after);
            if now >= report_due {
                let (error, first) = batch.report(&self.source);
                if first {
                    metrics::counter!(m::VISIBILITY_STALLS_TOTAL, "source" => self.source.clone()).increment(1);
                }
                return Ok(Hold::Report(error));
            }
            if until.is_some_and(|until| now >= until) {
                return Ok(Hold::Waiting);
            }
            let wake = until.map_or(report_due, |until| until.min(report_due));
            tokio::time::sleep(batch.poll().min(wake - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, PgConnection};

    use super::*;

    const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    async fn xid(conn: &mut PgConnection) -> u32 {
        let full: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint").fetch_one(conn).await.unwrap();
        full as u32
    }

    async fn open_transaction() -> (PgConnection, u32) {
        let mut conn = PgConnection::connect(PG_URL).await.expect("Postgres; run bash scripts/dev-services.sh");
        sqlx::query("begin").execute(&mut conn).await.unwrap();
        let open = xid(&mut conn).await;
        (conn, open)
    }

    fn batch(xids: Vec<u32>) -> HeldBatch {
        HeldBatch::new(vec![SourceRecord::with_fields("s".into(), "0/1".into(), Vec::new())], xids, Some(42))
    }

    #[tokio::test]
    async fn a_transaction_is_visible_only_once_committed() {
        let gate = VisibilityGate::new("test", PG_URL, Visibility::On).unwrap();
        let (mut conn, open) = open_transaction().await;
        assert!(!gate.visible(&[open]).await.unwrap(), "an open transaction is not visible");
        sqlx::query("commit").execute(&mut conn).await.unwrap();
        assert!(gate.visible(&[open]).await.unwrap(), "a committed one is");

        sqlx::query("begin").execute(&mut conn).await.unwrap();
        let later = xid(&mut conn).await;
        assert!(!gate.visible(&[open, later]).await.unwrap(), "all must be visible");
        sqlx::query("rollback").execute(&mut conn).await.unwrap();
        assert!(matches!(gate.hold(&mut batch(vec![open]), None).await.unwrap(), Hold::Visible));
        assert!(gate.visible(&[]).await.unwrap());
    }

    #[tokio::test]
    async fn a_batch_not_visible_is_reported_and_held_until_it_is() {
        let mut gate = VisibilityGate::new("test", PG_URL, Visibility::On).unwrap();
        gate.report_after = Duration::from_millis(100);
        let (mut conn, open) = open_transaction().await;
        let mut held = batch(vec![open]);

        let started = Instant::now();
        let Hold::Report(SourceError::NotVisible { source_name, message }) = gate.hold(&mut held, None).await.unwrap()
        else {
            panic!("a report is due after report_after")
        };
        assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
        assert_eq!(source_name, "test");
        assert!(message.contains(&format!("transaction(s) {open} ")) && message.contains("1 change(s)"), "{message}");
        // A read ahead's short wait ends before the next report is due, and says so.
        let soon = Some(Instant::now() + Duration::from_millis(10));
        assert!(matches!(gate.hold(&mut held, soon).await.unwrap(), Hold::Waiting));
        let reported = Instant::now();
        assert!(matches!(gate.hold(&mut held, None).await.unwrap(), Hold::Report(_)), "reported again while held");
        assert!(reported.elapsed() >= Duration::from_millis(50), "not at once: {:?}", reported.elapsed());

        sqlx::query("commit").execute(&mut conn).await.unwrap();
        assert!(matches!(gate.hold(&mut held, None).await.unwrap(), Hold::Visible));
        assert_eq!((held.records.len(), held.position), (1, Some(42)), "the batch held is the batch handed on");
    }

    #[tokio::test]
    async fn with_visibility_off_a_batch_goes_on_unchecked() {
        let gate = VisibilityGate::new("test", PG_URL, Visibility::Off).unwrap();
        let (_conn, open) = open_transaction().await;
        assert!(matches!(gate.hold(&mut batch(vec![open]), None).await.unwrap(), Hold::Visible));
    }

    #[test]
    fn a_held_batch_counts_as_one_stall_however_often_it_is_reported() {
        let mut held = batch((1..=12).collect());
        let report_after = Duration::from_secs(2);
        assert_eq!(held.report_due(report_after), held.since + report_after);
        let (first, counted) = held.report("s");
        assert!(counted, "the first report counts the stall");
        assert!(first.to_string().contains("transaction(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, and 2 more"), "{first}");
        assert_eq!(first.kind(), "not_visible");
        let next_due = held.report_due(report_after);
        assert!(next_due > held.since + report_after, "the next report is due report_after after this one");
        assert!(!held.report("s").1, "later reports of the same batch do not count again");
        assert!((Duration::from_millis(1)..=MAX_POLL).contains(&held.poll()));
    }
}
