//! When a change's transaction is visible to new queries. A database streams a
//! commit to its log readers a moment, or (with a synchronous standby or a
//! semi-synchronous replica that does not answer) a long while, before a new
//! snapshot sees it; a recompute in that window would cache the value from
//! before the change under the change's position, and the key would stay
//! wrong. Gates hold such a batch until its transactions are visible.

use std::time::Duration;

/// A batch held this long is reported (the source or pipeline counts as
/// failing with the reason, and `/ready` turns false once that lasts past
/// `[http] stuck_after`); it is held on all the same.
pub const REPORT_AFTER: Duration = Duration::from_secs(2);

/// What a Debezium envelope's `source` block says about its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitMark {
    /// Postgres `source.txId`: 32 bits as logical decoding gives it, or a full 64-bit id.
    Postgres {
        /// The transaction id.
        xid: u64,
        /// `source.db`: the database the connector reads.
        database: String,
    },
    /// MySQL or MariaDB: the binlog the connector read and where the event is in it.
    Binlog {
        /// `source.server_id`: the server that wrote the event.
        server_id: u32,
        /// `source.file`, e.g. "mariadb-bin.000002".
        file: String,
        /// `source.pos`: where the event's transaction starts in the file.
        pos: u64,
        /// `source.gtid`, when the server has GTIDs.
        gtid: Option<String>,
    },
}
