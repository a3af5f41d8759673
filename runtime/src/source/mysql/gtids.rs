//! MariaDB's GTID position as the capture keeps it: the last GTID of each
//! replication domain, advanced at every commit, so the confirmed position can
//! be resumed on any server of the group (`@slave_connect_state`) after a
//! failover, and changes can rank by sequence number.

use std::collections::BTreeMap;

use crate::event::position::{MariaDbGtid, parse_mariadb_gtid, parse_mariadb_gtid_position};

/// The last GTID of each domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct GtidPosition {
    domains: BTreeMap<u32, MariaDbGtid>,
}

impl GtidPosition {
    /// Parses `0-1-1482,1-5-20`; `None` if a part is not a MariaDB GTID.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let gtids = parse_mariadb_gtid_position(text)?;
        Some(Self { domains: gtids.into_iter().map(|g| (g.domain, g)).collect() })
    }

    /// A transaction `gtid` committed.
    pub(super) fn commit(&mut self, gtid: &str) {
        if let Some(gtid) = parse_mariadb_gtid(gtid) {
            self.domains.insert(gtid.domain, gtid);
        }
    }

    /// The sequence number a snapshot at this position ranks at: the highest
    /// of its domains (one domain is what a failover-ordered group uses).
    pub(super) fn rank(&self) -> u64 {
        self.domains.values().map(|g| g.seq).max().unwrap_or(0)
    }
}

impl std::fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, g) in self.domains.values().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{}-{}-{}", g.domain, g.server_id, g.seq)?;
        }
        Ok(())
    }
}

/// `BINLOG_GTID_POS(file, pos)`: the GTID position at a binlog place of the
/// server `conn` is on; `None` where the server cannot tell (not MariaDB, or
/// the file is gone).
pub(super) async fn at_binlog_place(
    conn: &mut mysql_async::Conn,
    file: &str,
    pos: u64,
) -> Result<Option<GtidPosition>, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let text: Option<Option<String>> = conn.exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos)).await?;
    Ok(text.flatten().and_then(|t| GtidPosition::parse(&t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_advance_their_domain_and_print_as_slave_connect_state_takes_them() {
        let mut at = GtidPosition::parse("0-1-1482").unwrap();
        at.commit("0-2-1483");
        at.commit("1-2-7");
        at.commit("3E11FA47-71CA-11E1-9E33-C80AA9429562:23");
        assert_eq!(at.to_string(), "0-2-1483,1-2-7");
        assert_eq!(at.rank(), 1483);
        assert_eq!(GtidPosition::parse("").unwrap().to_string(), "");
        assert_eq!(GtidPosition::default().rank(), 0);
        assert!(GtidPosition::parse("x").is_none());
    }
}
