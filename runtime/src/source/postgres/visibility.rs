//! Waiting until captured transactions are visible to new snapshots.
//!
//! Logical decoding streams a commit as soon as its WAL record is flushed, a
//! moment before the committing backend leaves the proc array. A recompute
//! that queried in that moment would not see the change it was triggered by,
//! and would store the old value under the new position — a stale key that no
//! later event for other keys would fix. So a batch is handed on only once every
//! transaction in it is visible to a fresh snapshot (later snapshots then see
//! it too).

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::source::SourceError;

/// Longest wait before a batch is handed on anyway, with a warning.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Longest one check may take before the database counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `pg_visible_in_snapshot` needs full 64-bit transaction ids; pgoutput gives
/// 32-bit ones, which belong to the epoch of the snapshot's `xmax` unless they
/// are not below its low half (then to the epoch before).
const ALL_VISIBLE: &str = "\
select coalesce(bool_and(pg_visible_in_snapshot(
         ((((pg_snapshot_xmax(snap.s)::text::bigint >> 32)
            - (x >= (pg_snapshot_xmax(snap.s)::text::bigint & 4294967295))::int) << 32) | x)::text::xid8,
         snap.s)), true) as visible
from (select pg_current_snapshot() as s) snap, unnest($1::bigint[]) as x";

/// Checks transaction visibility on a small pool of the capture's own role.
pub(super) struct VisibilityGate {
    source: String,
    pool: PgPool,
}

impl VisibilityGate {
    pub(super) fn new(source: &str, url: &str) -> Result<Self, SourceError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .map_err(|e| SourceError::BadConfig { source_name: source.to_owned(), message: format!("url: {e}") })?;
        Ok(Self { source: source.to_owned(), pool })
    }

    /// True when every transaction in `xids` is visible to a snapshot taken now.
    pub(super) async fn visible(&self, xids: &[u32]) -> Result<bool, SourceError> {
        let xids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
        let check = sqlx::query(ALL_VISIBLE).bind(&xids).fetch_one(&self.pool);
        let row = self.bounded("transaction visibility check", check).await?;
        Ok(row.get::<bool, _>("visible"))
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

    /// Waits until every transaction in `xids` is visible; usually returns at
    /// the first check.
    pub(super) async fn wait(&self, xids: &[u32]) -> Result<(), SourceError> {
        if xids.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        while !self.visible(xids).await? {
            if start.elapsed() > GIVE_UP {
                tracing::warn!(source = %self.source, ?xids, "committed transactions still not visible; handing the batch on");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
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

    #[tokio::test]
    async fn a_transaction_is_visible_only_once_committed() {
        let gate = VisibilityGate::new("test", PG_URL).unwrap();
        let mut conn = PgConnection::connect(PG_URL).await.expect("Postgres; run bash scripts/dev-services.sh");
        sqlx::query("begin").execute(&mut conn).await.unwrap();
        let open = xid(&mut conn).await;
        assert!(!gate.visible(&[open]).await.unwrap(), "an open transaction is not visible");
        sqlx::query("commit").execute(&mut conn).await.unwrap();
        assert!(gate.visible(&[open]).await.unwrap(), "a committed one is");

        sqlx::query("begin").execute(&mut conn).await.unwrap();
        let later = xid(&mut conn).await;
        assert!(!gate.visible(&[open, later]).await.unwrap(), "all must be visible");
        sqlx::query("rollback").execute(&mut conn).await.unwrap();
        gate.wait(&[open]).await.unwrap();
        assert!(gate.visible(&[]).await.unwrap());
    }
}
