//! Following a MariaDB failover: when another server answers behind the URL,
//! the capture resumes there from the GTID position it confirmed (as a replica
//! with `master_use_gtid = slave_pos` would), once every batch handed out was
//! written, so nothing confirmed on the old server is mixed with the new one's
//! binlog places. Changes rank by GTID sequence number, which the new primary
//! continues, so keys go on being versioned in order.

use mysql_async::{Conn, Opts};

use super::MySqlCapture;
use super::gtids::{self, GtidPosition};
use super::position::BinlogPosition;
use super::session::{Follow, Followed};
use crate::source::SourceError;

impl MySqlCapture {
    /// Before a read that may open a connection: whether it may follow a
    /// failover, and from where.
    pub(super) fn permit_follow(&mut self) {
        if self.session.connected() {
            return;
        }
        let follow = match &self.confirmed.gtids {
            None => Follow::Never,
            Some(_) if !self.confirmations.all_settled() || self.held.is_some() => Follow::Later,
            Some(gtids) => Follow::From(gtids.clone()),
        };
        self.session.may_follow(follow);
    }

    /// The session resumed on another server: the confirmed position moves
    /// there and is stored with the new `server_id`, so a restart resumes on it.
    pub(super) async fn followed(&mut self, followed: Followed) -> Result<(), SourceError> {
        let Some(at) = followed.at else { return Ok(()) };
        self.confirmations.handed_out(0, Some(at.clone()));
        self.confirmed = at.clone();
        self.unconfirmed = None;
        self.gtids = at.gtids.as_deref().and_then(GtidPosition::parse);
        self.store_now().await?;
        metrics::counter!(crate::metrics::CAPTURE_FAILOVERS_TOTAL, "source" => self.name.clone()).increment(1);
        tracing::warn!(source = %self.name, from_server = followed.from_server, to_server = followed.to_server,
            file = %at.file, gtid_position = at.gtids.as_deref().unwrap_or(""),
            "followed a failover: streaming the new primary's binlog from the confirmed GTID position");
        Ok(())
    }
}

/// `position` with the MariaDB GTID position there, read from the server when
/// it is not known yet (a position stored before evercache kept GTIDs, or a
/// new one); unchanged elsewhere.
pub(super) async fn with_gtids(
    name: &str,
    opts: &Opts,
    mut position: BinlogPosition,
    ask_server: bool,
) -> Result<BinlogPosition, SourceError> {
    if position.gtids.is_some() || !ask_server {
        return Ok(position);
    }
    let unavailable = |message: String| SourceError::Unavailable {
        source_name: name.to_owned(),
        operation: "read the GTID position",
        message,
    };
    let mut conn = Conn::new(opts.clone()).await.map_err(|e| unavailable(e.to_string()))?;
    let at = gtids::at_binlog_place(&mut conn, &position.file, position.pos).await;
    let _ = conn.disconnect().await;
    position.gtids = at.map_err(|e| unavailable(e.to_string()))?.map(|at| at.to_string());
    if position.gtids.is_none() {
        tracing::warn!(source = %name, %position, "the server names no GTID position at the start: a failover \
            cannot be followed until the capture has read a transaction");
    }
    Ok(position)
}
