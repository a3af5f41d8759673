//! Source positions as fixed-width strings that sort like the positions they
//! encode, so the Redis guard script can compare them with `<`.
//!
//! Each source kind has its own prefix; positions of different kinds are never
//! compared because a key is fed by one database. An empty string means the
//! source gave no usable order.

/// Postgres: the pair (commit LSN of the last committed transaction, LSN of the
/// change), as Debezium's `source.sequence` carries it. Plain LSNs are not
/// monotonic across interleaved transactions; the pair is.
pub fn postgres(commit_lsn: u64, lsn: u64) -> String {
    format!("pg:{commit_lsn:016x}:{lsn:016x}")
}

/// Postgres from the built-in capture, which knows the server's timeline: a
/// promoted standby starts a new timeline, and what the old primary wrote past
/// the fork (lost with it) must rank below everything the new one writes.
/// The `t` sorts above every hex digit, so these outrank keys versioned by
/// [`postgres`] before the timeline was known.
pub fn postgres_on_timeline(timeline: u32, commit_lsn: u64, lsn: u64) -> String {
    format!("pg:t{timeline:08x}:{commit_lsn:016x}:{lsn:016x}")
}

/// MySQL/MariaDB without a usable GTID: (binlog file number, position, row
/// within the event). These order the changes of one server only.
pub fn mysql(file_number: u64, pos: u64, row: u32) -> String {
    format!("my:{file_number:016x}:{pos:016x}:{row:08x}")
}

/// MariaDB: (GTID sequence number, position, row). A new primary continues
/// the sequence of the domain it replicated, so the order holds across a
/// failover and a failback, where file numbers and offsets start over. The
/// position and row order the changes within one transaction. The `g` sorts
/// above every hex digit, so these outrank keys versioned by [`mysql`].
pub fn mariadb(seq: u64, pos: u64, row: u32) -> String {
    format!("my:g{seq:016x}:{pos:016x}:{row:08x}")
}

/// The parts of a [`mysql`] position: (file number, offset, row).
pub fn parse_mysql(position: &str) -> Option<(u64, u64, u32)> {
    let mut parts = position.strip_prefix("my:")?.split(':');
    let file = u64::from_str_radix(parts.next()?, 16).ok()?;
    let pos = u64::from_str_radix(parts.next()?, 16).ok()?;
    let row = u32::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((file, pos, row))
}

/// A MariaDB GTID, `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaDbGtid {
    pub domain: u32,
    pub server_id: u32,
    pub seq: u64,
}

/// Parses `0-1-1482`; `None` for MySQL's `uuid:n` or anything else.
pub fn parse_mariadb_gtid(text: &str) -> Option<MariaDbGtid> {
    let mut parts = text.trim().splitn(3, '-');
    let domain = parts.next()?.parse().ok()?;
    let server_id = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some(MariaDbGtid { domain, server_id, seq })
}

/// A MariaDB GTID position (`0-1-1482,1-5-20`, one GTID per domain), as
/// `@@gtid_binlog_pos` and `BINLOG_GTID_POS()` give it; `None` if a part is
/// not a GTID. Empty text is the empty position.
pub fn parse_mariadb_gtid_position(text: &str) -> Option<Vec<MariaDbGtid>> {
    text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(parse_mariadb_gtid).collect()
}

/// SQL Server: (commit LSN, change LSN, event serial number). The LSNs are
/// Debezium's fixed-width hex strings such as `0000003a:00002f50:0005`.
pub fn sqlserver(commit_lsn: &str, change_lsn: &str, serial: u64) -> Option<String> {
    let hex = |s: &str| {
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        (digits.len() == 20 && digits.chars().all(|c| c.is_ascii_hexdigit())).then(|| digits.to_ascii_lowercase())
    };
    Some(format!("ms:{}:{}:{serial:016x}", hex(commit_lsn)?, hex(change_lsn)?))
}

/// The number of a binlog file name: `mysql-bin.000003` → 3.
pub fn binlog_file_number(file: &str) -> Option<u64> {
    file.rsplit('.').next()?.parse().ok()
}

/// Parses Postgres' textual LSN, `16/B374D848` → 0x16_B374D848.
pub fn parse_pg_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_positions_order_by_commit_then_lsn() {
        assert!(postgres(1, 9) < postgres(2, 1));
        assert!(postgres(2, 1) < postgres(2, 2));
        assert!(postgres(0xff, 0) < postgres(0x100, 0), "fixed width, not lexical digits");
        assert_eq!(postgres(1, 2).len(), postgres(u64::MAX, u64::MAX).len());
    }

    #[test]
    fn mysql_positions_order_by_file_pos_row() {
        assert!(mysql(3, 9000, 0) < mysql(4, 4, 0));
        assert!(mysql(3, 1041, 0) < mysql(3, 1041, 1));
        assert_eq!(binlog_file_number("mysql-bin.000003"), Some(3));
        assert_eq!(binlog_file_number("{context}-bin.000003"), Some(3));
        assert_eq!(binlog_file_number("nonumber"), None);
    }

    #[test]
    fn mariadb_positions_follow_the_sequence_across_servers() {
        // The old primary's binlog is far ahead of the new one's, by file and offset.
        let before = mariadb(1482, 0x9000, 0);
        let after_failover = mariadb(1483, 0x180, 0);
        assert!(before < after_failover);
        assert!(mariadb(1483, 0x180, 0) < mariadb(1483, 0x180, 1));
        assert!(mysql(u64::MAX, u64::MAX, u32::MAX) < mariadb(0, 0, 0), "outranks keys versioned before");
        assert_eq!(parse_mysql(&mysql(3, 1041, 2)), Some((3, 1041, 2)));
        assert_eq!(parse_mysql(&mariadb(3, 1041, 2)), None);
        assert_eq!(parse_mariadb_gtid("0-1-1482"), Some(MariaDbGtid { domain: 0, server_id: 1, seq: 1482 }));
        assert_eq!(parse_mariadb_gtid("3E11FA47-71CA-11E1-9E33-C80AA9429562:23"), None);
        assert_eq!(parse_mariadb_gtid("0-1"), None);
        assert_eq!(parse_mariadb_gtid_position("").unwrap(), vec![]);
        assert_eq!(parse_mariadb_gtid_position("0-1-5, 1-2-7").unwrap().len(), 2);
        assert_eq!(parse_mariadb_gtid_position("0-1-5,x"), None);
    }

    #[test]
    fn postgres_timelines_outrank_what_a_lost_primary_wrote() {
        assert!(postgres_on_timeline(1, 0x5000, 0x5000) < postgres_on_timeline(2, 0x4000, 0x4000));
        assert!(postgres(u64::MAX, u64::MAX) < postgres_on_timeline(1, 0, 0));
    }

    #[test]
    fn sqlserver_and_lsn_text() {
        assert_eq!(
            sqlserver("0000003a:00002f50:0005", "0000003a:00002f50:0002", 1).as_deref(),
            Some("ms:0000003a00002f500005:0000003a00002f500002:0000000000000001")
        );
        assert_eq!(sqlserver("bad", "0000003a:00002f50:0002", 1), None);
        assert_eq!(parse_pg_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_pg_lsn("0/0"), Some(0));
        assert_eq!(parse_pg_lsn("nope"), None);
    }
}
