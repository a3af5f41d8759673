//! The transactions one batch of Debezium events came from, reduced to what a
//! visibility check needs: the Postgres transaction ids, or the furthest binlog
//! place (transactions end in binlog order, so a later one visible means the
//! earlier ones are).

use std::collections::BTreeSet;

use crate::event::position::binlog_file_number;
use crate::event::visibility::CommitMark;

/// Where in a binlog a batch's last transaction starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogPlace {
    /// `source.server_id`.
    pub server_id: u32,
    /// `source.file`.
    pub file: String,
    /// The file's number and the position in it, for comparing.
    pub ordinal: (u64, u64),
    /// `source.gtid` of that transaction.
    pub gtid: Option<String>,
}

/// What one event says of its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventCommit {
    /// Nothing to check: a snapshot read (committed rows only), or a built-in
    /// capture's change (the capture gated it).
    Checked,
    /// Its `source` block names the transaction.
    Named(CommitMark),
    /// Its `source` block names none.
    Unnamed,
}

/// A batch's transactions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Commits {
    /// Postgres transaction ids.
    pub xids: BTreeSet<u64>,
    /// `source.db` of the Postgres events.
    pub databases: BTreeSet<String>,
    /// The furthest binlog place, per server (usually one).
    pub binlog: Vec<BinlogPlace>,
    /// Changes whose `source` block named no transaction.
    pub unnamed: usize,
}

impl Commits {
    /// Notes an event's transaction.
    pub fn add(&mut self, commit: &EventCommit) {
        match commit {
            EventCommit::Checked => {}
            EventCommit::Unnamed => self.unnamed += 1,
            EventCommit::Named(CommitMark::Postgres { xid, database }) => {
                self.xids.insert(*xid);
                if !self.databases.contains(database) {
                    self.databases.insert(database.clone());
                }
            }
            EventCommit::Named(CommitMark::Binlog { server_id, file, pos, gtid }) => {
                let Some(number) = binlog_file_number(file) else {
                    self.unnamed += 1;
                    return;
                };
                let place = BinlogPlace {
                    server_id: *server_id,
                    file: file.clone(),
                    ordinal: (number, *pos),
                    gtid: gtid.clone(),
                };
                match self.binlog.iter_mut().find(|p| p.server_id == *server_id) {
                    Some(known) if known.ordinal >= place.ordinal => {}
                    Some(known) => *known = place,
                    None => self.binlog.push(place),
                }
            }
        }
    }

    /// True when no change named a transaction.
    pub fn is_empty(&self) -> bool {
        self.xids.is_empty() && self.binlog.is_empty()
    }

    /// The transactions, for a log line or the status page.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.xids.is_empty() {
            let shown: Vec<String> = self.xids.iter().take(10).map(u64::to_string).collect();
            let more = self.xids.len().saturating_sub(shown.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            parts.push(format!("Postgres transactions {}{more}", shown.join(", ")));
        }
        for place in &self.binlog {
            let gtid = place.gtid.as_deref().map(|g| format!(" (GTID {g})")).unwrap_or_default();
            parts.push(format!(
                "the transaction at {}:{}{gtid} of server {}",
                place.file, place.ordinal.1, place.server_id
            ));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binlog(server_id: u32, file: &str, pos: u64) -> CommitMark {
        CommitMark::Binlog { server_id, file: file.into(), pos, gtid: Some(format!("0-{server_id}-{pos}")) }
    }

    #[test]
    fn keeps_each_xid_once_and_the_furthest_binlog_place_per_server() {
        let mut commits = Commits::default();
        assert!(commits.is_empty());
        for xid in [7, 5, 7] {
            commits.add(&EventCommit::Named(CommitMark::Postgres { xid, database: "shop".into() }));
        }
        commits.add(&EventCommit::Unnamed);
        commits.add(&EventCommit::Checked);
        assert_eq!(commits.xids.iter().copied().collect::<Vec<_>>(), [5, 7]);
        assert_eq!((commits.unnamed, commits.databases.len()), (1, 1));

        let mut commits = Commits::default();
        for mark in [
            binlog(1, "bin.000002", 900),
            binlog(1, "bin.000003", 4),
            binlog(1, "bin.000002", 5000),
            binlog(2, "b.000001", 1),
        ] {
            commits.add(&EventCommit::Named(mark));
        }
        assert_eq!(commits.binlog.len(), 2);
        assert_eq!((commits.binlog[0].file.as_str(), commits.binlog[0].ordinal), ("bin.000003", (3, 4)));
        assert!(commits.describe().contains("bin.000003:4 (GTID 0-1-4) of server 1"), "{}", commits.describe());
    }
}
