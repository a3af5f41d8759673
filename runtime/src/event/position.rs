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

/// MySQL/MariaDB: (binlog file number, position, row within the event).
pub fn mysql(file_number: u64, pos: u64, row: u32) -> String {
    format!("my:{file_number:016x}:{pos:016x}:{row:08x}")
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
