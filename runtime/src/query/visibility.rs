//! Asking a database whether transactions are visible to new queries yet (see
//! `event::visibility`): Postgres by transaction id, MariaDB by the binlog
//! position its consistent snapshots stand at, MySQL by executed GTIDs.

use mysql_async::prelude::Queryable;

use crate::event::position;

/// `pg_visible_in_snapshot` needs full 64-bit transaction ids; logical decoding
/// gives 32-bit ones. Postgres orders those modulo 2^32 (one is older when it
/// is less than 2^31 behind), so each is taken as the full id nearest the
/// snapshot's `xmax` in that order: one a little at or above `xmax` is running
/// or not yet started (`xmax` is one past the latest *completed* id, so a
/// commit still in progress is there), one behind it is older. Ids above 32
/// bits are taken as full ones. [`full_xid`] is the same in Rust.
const POSTGRES_ALL_VISIBLE: &str = "\
select coalesce(bool_and(pg_visible_in_snapshot(greatest(case when x > 4294967295 then x
           else m.xmax + (((x - (m.xmax & 4294967295)) % 4294967296 + 6442450944) % 4294967296 - 2147483648)
           end, 0)::text::xid8, m.s)), true) as visible
from (select s, pg_snapshot_xmax(s)::text::bigint as xmax from pg_current_snapshot() as s) m, unnest($1::bigint[]) as x";

/// A transaction id as `POSTGRES_ALL_VISIBLE` takes it: the full id nearest
/// `reference` (a full id) in Postgres' modulo-2^32 order.
pub(crate) fn full_xid(xid: u64, reference: u64) -> u64 {
    if xid > u64::from(u32::MAX) {
        return xid;
    }
    let behind_or_ahead = (xid as u32).wrapping_sub(reference as u32) as i32;
    reference.saturating_add_signed(i64::from(behind_or_ahead))
}

/// Whether the server is a standby, and (on a primary) a transaction id
/// assigned just now: every id a commit of this server carries is below it.
pub(crate) async fn postgres_next_xid(pool: &sqlx::PgPool) -> Result<(bool, u64), sqlx::Error> {
    let standby: bool = sqlx::query_scalar("select pg_is_in_recovery()").fetch_one(pool).await?;
    if standby {
        return Ok((true, 0));
    }
    // One id spent once per pipeline start: nothing else names the next id exactly.
    let next: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint").fetch_one(pool).await?;
    Ok((false, next as u64))
}

/// True when every transaction in `xids` is visible to a snapshot taken now.
pub(crate) async fn postgres_all_visible(pool: &sqlx::PgPool, xids: &[u64]) -> Result<bool, sqlx::Error> {
    let xids: Vec<i64> = xids.iter().map(|&x| x as i64).collect();
    sqlx::query_scalar(POSTGRES_ALL_VISIBLE).bind(&xids).fetch_one(pool).await
}

/// The database the pool's connections are in.
pub(crate) async fn postgres_database(pool: &sqlx::PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("select current_database()").fetch_one(pool).await
}

/// What a MySQL or MariaDB server says about itself, for deciding how to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinlogServer {
    /// `@@server_id`.
    pub server_id: u32,
    /// MariaDB rather than MySQL.
    pub mariadb: bool,
    /// The binlog files it has (`SHOW BINARY LOGS`).
    pub binlogs: Vec<String>,
    /// MySQL's `gtid_mode` is ON.
    pub gtids: bool,
}

/// The facts of the server behind `conn`.
pub(crate) async fn binlog_server(conn: &mut mysql_async::Conn) -> Result<BinlogServer, mysql_async::Error> {
    let (server_id, version): (u32, String) =
        conn.query_first("SELECT @@server_id, VERSION()").await?.unwrap_or((0, String::new()));
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let binlogs: Vec<String> = match conn.query::<mysql_async::Row, _>("SHOW BINARY LOGS").await {
        Ok(rows) => rows.into_iter().filter_map(|row| row.get::<String, _>(0)).collect(),
        Err(mysql_async::Error::Server(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let gtids = if mariadb {
        false
    } else {
        let mode: Option<String> = conn.query_first("SELECT @@GLOBAL.gtid_mode").await.ok().flatten();
        mode.as_deref() == Some("ON")
    };
    Ok(BinlogServer { server_id, mariadb, binlogs, gtids })
}

/// MariaDB: the GTID sequence number at binlog place (file number, `pos`) of
/// this server — the highest of `BINLOG_GTID_POS` there over its domains;
/// `None` where the server has no such file (another server's, or purged).
pub(crate) async fn mariadb_gtid_rank_at(
    conn: &mut mysql_async::Conn,
    file_number: u64,
    pos: u64,
) -> Result<Option<u64>, mysql_async::Error> {
    let server = binlog_server(conn).await?;
    let Some(file) = server.binlogs.iter().find(|f| position::binlog_file_number(f) == Some(file_number)) else {
        return Ok(None);
    };
    let gtids = mariadb_gtids_at(conn, &file.clone(), pos).await?;
    Ok(gtids.map(|g| g.iter().map(|g| g.seq).max().unwrap_or(0)))
}

/// What a MariaDB consistent snapshot opened now sees: the server, the binlog
/// file and place (number, position) every transaction ending at or before is
/// visible, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MariaDbView {
    pub(crate) server_id: u32,
    pub(crate) file: String,
    pub(crate) place: (u64, u64),
}

/// MariaDB: a [`MariaDbView`]; `None` when the server reports no snapshot place.
pub(crate) async fn mariadb_view(conn: &mut mysql_async::Conn) -> Result<Option<MariaDbView>, mysql_async::Error> {
    let mut result = conn
        .query_iter(
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY; SHOW STATUS LIKE 'binlog_snapshot_%'; \
             SHOW VARIABLES LIKE 'server_id'; COMMIT",
        )
        .await?;
    let mut values: Vec<(String, String)> = Vec::new();
    while !result.is_empty() {
        values.extend(result.collect::<(String, String)>().await?);
    }
    let value = |name: &str| values.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let (Some(file), Some(pos), Some(server_id)) =
        (value("binlog_snapshot_file"), value("binlog_snapshot_position"), value("server_id"))
    else {
        return Ok(None);
    };
    let (Some(number), Ok(pos), Ok(server_id)) = (position::binlog_file_number(file), pos.parse(), server_id.parse())
    else {
        return Ok(None);
    };
    Ok(Some(MariaDbView { server_id, file: file.to_owned(), place: (number, pos) }))
}

/// MariaDB: the GTID position at `file`:`pos` of this server (`BINLOG_GTID_POS`).
pub(crate) async fn mariadb_gtids_at(
    conn: &mut mysql_async::Conn,
    file: &str,
    pos: u64,
) -> Result<Option<Vec<position::MariaDbGtid>>, mysql_async::Error> {
    let text: Option<Option<String>> = conn.exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos)).await?;
    Ok(text.flatten().and_then(|t| position::parse_mariadb_gtid_position(&t)))
}

/// MariaDB: `SHOW STATUS LIKE 'binlog_snapshot_%'` inside a consistent
/// snapshot opened now, in one round trip (open, read, close): the binlog file
/// and position every transaction ending at or before is visible.
pub(crate) async fn binlog_snapshot_status(
    conn: &mut mysql_async::Conn,
) -> Result<Vec<(String, String)>, mysql_async::Error> {
    let mut result = conn
        .query_iter(
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY; SHOW STATUS LIKE 'binlog_snapshot_%'; COMMIT",
        )
        .await?;
    let mut status: Vec<(String, String)> = Vec::new();
    while !result.is_empty() {
        let set: Vec<(String, String)> = result.collect().await?;
        if !set.is_empty() {
            status = set;
        }
    }
    Ok(status)
}

/// MySQL: whether the transaction with `gtid` is in the executed set.
pub(crate) async fn mysql_gtid_executed(conn: &mut mysql_async::Conn, gtid: &str) -> Result<bool, mysql_async::Error> {
    let executed: Option<i64> = conn.exec_first("SELECT GTID_SUBSET(?, @@GLOBAL.gtid_executed)", (gtid,)).await?;
    Ok(executed == Some(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_32_bit_id_is_the_full_id_nearest_the_reference() {
        let reference = (3 << 32) | 1000;
        assert_eq!(full_xid(999, reference), (3 << 32) | 999, "just behind: this epoch");
        assert_eq!(full_xid(1005, reference), (3 << 32) | 1005, "just ahead (running): this epoch");
        assert_eq!(
            full_xid(4_000_000_000, reference),
            (2 << 32) | 4_000_000_000,
            "far ahead in 32 bits: the epoch before"
        );
        assert_eq!(full_xid(5000, (3 << 32) | 4_294_967_000), (4 << 32) | 5000, "just past a wrap: the next epoch");
        assert_eq!(full_xid(1 << 40, reference), 1 << 40, "a full id as it is");
    }

    #[tokio::test]
    async fn committed_running_and_unassigned_ids() {
        let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
            .await
            .expect("Postgres; run bash scripts/dev-services.sh");
        // Assigned by a statement of its own, so committed when it returns.
        let committed: i64 =
            sqlx::query_scalar("select pg_current_xact_id()::text::bigint").fetch_one(&pool).await.unwrap();
        let low = |full: u64| full & u64::from(u32::MAX);
        assert!(postgres_all_visible(&pool, &[low(committed as u64)]).await.unwrap(), "committed");
        let mut open = pool.begin().await.unwrap();
        let running: i64 =
            sqlx::query_scalar("select pg_current_xact_id()::text::bigint").fetch_one(&mut *open).await.unwrap();
        assert!(!postgres_all_visible(&pool, &[low(running as u64)]).await.unwrap(), "running");
        open.rollback().await.unwrap();
        let (standby, next) = postgres_next_xid(&pool).await.unwrap();
        assert!(!standby && next > running as u64);
        assert!(full_xid(low(next) + 1_000_000, next) > next, "an id this server has not assigned");
        assert!(!postgres_all_visible(&pool, &[low(next) + 1_000_000]).await.unwrap(), "not assigned: not visible");
        assert!(postgres_all_visible(&pool, &[]).await.unwrap());
    }
}
