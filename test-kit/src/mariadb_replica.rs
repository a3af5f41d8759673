//! A MariaDB primary and a GTID replica of it, each a [`MariaDbServer`] of the
//! test's own, for failover tests: the replica has its own server id and binlog
//! names, as a real one has, so what follows a promotion sees what it would
//! see in production, and the old primary can later follow the new one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::mariadb_server::MariaDbServer;

/// The primary's server id and binlog basename (those of [`MariaDbServer`]).
pub const PRIMARY_ID: u32 = 1;
pub const PRIMARY_BINLOG: &str = "mariadb-bin";
/// The replica's.
pub const REPLICA_ID: u32 = 2;
pub const REPLICA_BINLOG: &str = "replica-bin";

/// Options every server of a pair has, so either can be primary or replica:
/// a replica's binlog holds what it applied (a promoted one serves it to the
/// captures), and a GTID out of order is refused rather than applied.
const GTID_OPTIONS: [&str; 2] = ["--log-slave-updates=ON", "--gtid-strict-mode=ON"];

/// A primary and its replica; which is which changes with [`MariaDbPair::promote`].
pub struct MariaDbPair {
    pub primary: MariaDbServer,
    pub replica: MariaDbServer,
}

impl MariaDbPair {
    /// A new primary (server 1, `mariadb-bin`) in `dir/primary` and a replica
    /// of it (server 2, `replica-bin`, read-only) in `dir/replica`, caught up.
    pub fn start(dir: &Path) -> Result<Self> {
        let primary = MariaDbServer::start_with(&dir.join("primary"), &GTID_OPTIONS);
        let (id, binlog) = (format!("--server-id={REPLICA_ID}"), format!("--log-bin={REPLICA_BINLOG}"));
        let mut options: Vec<&str> = GTID_OPTIONS.to_vec();
        options.extend([id.as_str(), binlog.as_str(), "--read-only=ON"]);
        let replica = MariaDbServer::start_with(&dir.join("replica"), &options);
        replica.replicate_from(&primary)?;
        replica.catch_up_with(&primary, Duration::from_secs(30))?;
        Ok(Self { primary, replica })
    }

    /// A switchover: waits for the replica to have all the primary wrote,
    /// promotes it and swaps the roles. The old primary is left running as it
    /// is (a test cuts it off, kills it, or makes it [`MariaDbServer::replicate_from`]
    /// the new one); it must take no writes meanwhile, or the two diverge.
    pub fn promote(&mut self) -> Result<()> {
        self.replica.catch_up_with(&self.primary, Duration::from_secs(30))?;
        self.replica.promote()?;
        std::mem::swap(&mut self.primary, &mut self.replica);
        Ok(())
    }
}

impl MariaDbServer {
    /// `@@server_id`.
    pub fn server_id(&self) -> Result<u32> {
        Ok(self.sql("SELECT @@server_id")?.trim().parse()?)
    }

    /// `@@gtid_binlog_pos`: the last GTID of each domain in its binlog, e.g. `0-1-12`.
    pub fn gtid_binlog_pos(&self) -> Result<String> {
        self.sql("SELECT @@gtid_binlog_pos")
    }

    /// The names of its binlog files (`SHOW BINARY LOGS`).
    pub fn binlog_files(&self) -> Result<Vec<String>> {
        let rows = self.sql("SHOW BINARY LOGS")?;
        Ok(rows.lines().filter_map(|row| row.split('\t').next()).map(str::to_owned).collect())
    }

    /// Where the transaction `gtid` starts in this server's binlog (its GTID
    /// event): the `file` and `pos` Debezium's `source` block names it by.
    pub fn transaction_place(&self, gtid: &str) -> Result<(String, u64)> {
        for file in self.binlog_files()? {
            let events = self.sql(&format!("SHOW BINLOG EVENTS IN '{file}'"))?;
            for event in events.lines() {
                // Log_name, Pos, Event_type, Server_id, End_log_pos, Info.
                let columns: Vec<&str> = event.split('\t').collect();
                // Info is `BEGIN GTID 0-1-5`, maybe with ` cid=...` after it.
                let named = |info: &&str| info.split_whitespace().skip_while(|t| *t != "GTID").nth(1) == Some(gtid);
                if columns.get(2) == Some(&"Gtid") && columns.get(5).is_some_and(named) {
                    return Ok((file, columns[1].parse()?));
                }
            }
        }
        bail!("no transaction {gtid} in the binlog of port {}", self.port)
    }

    /// Makes this server a read-only replica of `primary` by GTID, from the
    /// GTIDs in its own binlog on: a fresh server asks for everything, a former
    /// primary (whose transactions are in its binlog, not in `gtid_slave_pos`)
    /// for what it lacks.
    pub fn replicate_from(&self, primary: &MariaDbServer) -> Result<()> {
        self.sql(&format!(
            "STOP SLAVE; SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos; \
             CHANGE MASTER TO master_host = '127.0.0.1', master_port = {}, master_user = 'root', \
             master_use_gtid = slave_pos, master_connect_retry = 1; \
             START SLAVE; SET GLOBAL read_only = ON",
            primary.port
        ))
        .map(drop)
    }

    /// Waits until this replica has applied every transaction `primary` has in its binlog.
    pub fn catch_up_with(&self, primary: &MariaDbServer, timeout: Duration) -> Result<()> {
        let target = primary.gtid_binlog_pos()?;
        self.wait_for_gtids(&target, timeout)
    }

    /// Waits until this replica has applied the GTID position `gtids` (`MASTER_GTID_WAIT`).
    pub fn wait_for_gtids(&self, gtids: &str, timeout: Duration) -> Result<()> {
        if gtids.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        // `MASTER_GTID_WAIT` answers -1 on its timeout; short waits let a broken replica be said early.
        while start.elapsed() < timeout {
            let waited = self.sql(&format!("SELECT MASTER_GTID_WAIT('{gtids}', 1)"))?;
            if waited.trim() == "0" {
                return Ok(());
            }
            // A replication thread that stopped on an error does not come back by itself.
            let status = self.sql_row("SHOW SLAVE STATUS")?;
            ensure!(!status.is_empty(), "port {} waits for {gtids} but replicates from nothing", self.port);
            let field = |name: &str| status.get(name).map(String::as_str).unwrap_or_default();
            for (running, error) in [("Slave_IO_Running", "Last_IO_Error"), ("Slave_SQL_Running", "Last_SQL_Error")] {
                if field(running) == "No" {
                    bail!("replica on port {} stopped: {error}: {}", self.port, field(error));
                }
            }
        }
        let now = self.sql("SELECT @@gtid_slave_pos, @@gtid_binlog_pos")?;
        bail!("replica on port {} did not reach {gtids} within {timeout:?} (it is at {now})", self.port)
    }

    /// Promotes a replica: replication stopped and forgotten, writable.
    pub fn promote(&self) -> Result<()> {
        self.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF")?;
        let state = self.sql("SELECT @@read_only; SHOW SLAVE STATUS").context("reading the promoted server's state")?;
        ensure!(state.trim() == "0", "port {} is still read-only or a replica: {state}", self.port);
        Ok(())
    }
}
