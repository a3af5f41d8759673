//! Following a failover to a promoted standby, or a slot dropped by hand.
//! Postgres 15 has no failover slots, so the server now behind the URL has no
//! slot of ours: the capture creates it again and re-reads its tables as a
//! snapshot at the new slot's consistent point, because what was committed
//! between the promotion and that point is in no stream. Snapshot reads repair
//! every key whose version is older (the guard's snapshot rule), and positions
//! carry the server's timeline, so what the old primary wrote past the fork and
//! lost ranks below everything the new primary writes.

use std::fmt;

use pgwire_replication::Lsn;

use super::PostgresCapture;
use super::session::Connect;
use super::snapshot::Snapshot;
use crate::source::{SnapshotMode, SourceError};

/// The server behind the URL, as IDENTIFY_SYSTEM names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    pub(super) system_id: String,
    pub(super) timeline: u32,
}

impl Server {
    /// `<system id>:<timeline>`, as [`Self::stored`] writes it.
    fn parse(text: &str) -> Option<Self> {
        let (system_id, timeline) = text.split_once(':')?;
        let timeline = timeline.parse().ok()?;
        (!system_id.is_empty()).then(|| Self { system_id: system_id.to_owned(), timeline })
    }

    fn stored(&self) -> String {
        format!("{}:{}", self.system_id, self.timeline)
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "system {} timeline {}", self.system_id, self.timeline)
    }
}

/// The slot was created again on `server`, consistent from `lsn`.
#[derive(Debug)]
pub(super) struct Followed {
    /// The server streamed from before, when known.
    pub(super) previous: Option<Server>,
    pub(super) server: Server,
    pub(super) lsn: u64,
}

/// What the capture's Redis marker (`evercache:snapshot:<db>:<slot>`) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Marker {
    /// No snapshot finished yet (and, with `snapshot = "never"`, no start).
    Absent,
    /// The capture has run, streaming from this server (unknown for markers
    /// written before the server was recorded).
    Done(Option<Server>),
    /// A failover from this server is being followed: its re-read is not done.
    Following(Option<Server>),
}

impl Marker {
    pub(super) fn parse(value: Option<&str>) -> Self {
        let Some(value) = value else { return Self::Absent };
        match value.strip_prefix("following:") {
            Some(server) => Self::Following(Server::parse(server)),
            None => Self::Done(value.strip_prefix("done:").and_then(Server::parse)),
        }
    }

    fn value(&self) -> Option<String> {
        let server = |s: &Option<Server>| s.as_ref().map(Server::stored).unwrap_or_default();
        match self {
            Self::Absent => None,
            Self::Done(s) => Some(format!("done:{}", server(s))),
            Self::Following(s) => Some(format!("following:{}", server(s))),
        }
    }
}

/// The marker in Redis.
pub(super) struct MarkerStore {
    key: String,
    conn: redis::aio::ConnectionManager,
}

impl MarkerStore {
    pub(super) fn new(key: String, conn: redis::aio::ConnectionManager) -> Self {
        Self { key, conn }
    }

    pub(super) async fn get(&mut self, source: &str) -> Result<Marker, SourceError> {
        let value: Option<String> =
            redis::cmd("GET").arg(&self.key).query_async(&mut self.conn).await.map_err(|e| failed(source, e))?;
        Ok(Marker::parse(value.as_deref()))
    }

    pub(super) async fn set(&mut self, source: &str, marker: &Marker) -> Result<(), SourceError> {
        let command = match marker.value() {
            Some(value) => redis::cmd("SET").arg(&self.key).arg(value).to_owned(),
            None => redis::cmd("DEL").arg(&self.key).to_owned(),
        };
        command.query_async::<()>(&mut self.conn).await.map_err(|e| failed(source, e))
    }
}

fn failed(source: &str, e: redis::RedisError) -> SourceError {
    SourceError::Unavailable { source_name: source.to_owned(), operation: "snapshot marker", message: e.to_string() }
}

/// What a start does, given whether the slot was missing and the marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Start {
    /// Stream from the slot; `first`: the first start of a capture without
    /// snapshot, recorded so that a slot lost later is followed.
    Stream { first: bool },
    /// Read the existing rows first (`snapshot = "initial"`).
    Initial,
    /// The capture ran before and its slot is gone, or the re-read after one
    /// did not finish: re-read the tables whatever the snapshot mode.
    /// `found_missing`: this start found the slot gone (counted as a failover).
    Follow { previous: Option<Server>, found_missing: bool },
}

pub(super) fn on_start(slot_missing: bool, marker: &Marker, mode: SnapshotMode) -> Start {
    match marker {
        Marker::Following(previous) => Start::Follow { previous: previous.clone(), found_missing: slot_missing },
        Marker::Done(previous) if slot_missing => Start::Follow { previous: previous.clone(), found_missing: true },
        Marker::Done(_) => Start::Stream { first: false },
        Marker::Absent if mode == SnapshotMode::Initial => Start::Initial,
        Marker::Absent => Start::Stream { first: true },
    }
}

/// What `/ready` says while the capture follows.
pub(super) fn busy_reason(same_server: bool, tables: usize) -> String {
    let tables = if tables == 1 { "1 table".to_owned() } else { format!("{tables} tables") };
    if same_server {
        format!("replication slot created again: re-reading {tables} from a new snapshot")
    } else {
        format!("following a failover: re-reading {tables} from the new primary's snapshot")
    }
}

impl PostgresCapture {
    /// What a start found to do, once the slot exists at `lsn` and the session is open.
    pub(super) async fn begin(&mut self, start: Start, lsn: u64) -> Result<(), SourceError> {
        let server = self.session.server().cloned().ok_or_else(|| self.unavailable("no server identified"))?;
        match start {
            Start::Stream { first: false } => Ok(()),
            Start::Stream { first: true } => self.marker.set(&self.name, &Marker::Done(Some(server))).await,
            Start::Initial => {
                tracing::info!(source = %self.name, tables = ?self.tables, "initial snapshot starting");
                self.snapshot = Some(Snapshot::new(&self.name, &self.url, &self.tables, lsn, server.timeline));
                Ok(())
            }
            Start::Follow { previous, found_missing } => {
                self.follow(Followed { previous, server, lsn }, found_missing).await
            }
        }
    }

    /// Connects the stream when it is not. A server without the slot is
    /// followed once every batch handed out is written, so no position read
    /// from the old server is left to confirm on the new one.
    pub(super) async fn connect_stream(&mut self) -> Result<(), SourceError> {
        let Connect::SlotMissing(server) = self.session.ensure_connected().await? else { return Ok(()) };
        if !self.confirmations.all_settled() {
            return Err(self.unavailable(&format!(
                "replication slot '{}' is missing on {server}: following once the batches handed out are written",
                self.slot
            )));
        }
        // Recorded first, so a crash before the re-read finishes repeats it.
        let previous = self.session.server().cloned();
        self.marker.set(&self.name, &Marker::Following(previous)).await?;
        let followed = self.session.create_slot().await?;
        self.follow(followed, true).await
    }

    /// Re-reads the tables at the new slot's consistent point, then streams
    /// from it; `count`: a failover found now, not one resumed after a restart.
    async fn follow(&mut self, followed: Followed, count: bool) -> Result<(), SourceError> {
        let Followed { previous, server, lsn } = followed;
        self.marker.set(&self.name, &Marker::Following(previous.clone())).await?;
        if count {
            metrics::counter!(crate::metrics::CAPTURE_FAILOVERS_TOTAL, "source" => self.name.clone()).increment(1);
        }
        let from = previous.as_ref().map_or_else(|| "an unknown server".to_owned(), Server::to_string);
        let mode = match self.snapshot_mode {
            SnapshotMode::Never => " (even with snapshot = \"never\")",
            SnapshotMode::Initial => "",
        };
        tracing::warn!(source = %self.name, slot = %self.slot, from = %from, to = %server,
            consistent_at = %Lsn::from_u64(lsn).to_pg_string(), tables = ?self.tables,
            "the replication slot is missing on the server behind the URL (a promoted standby, or the slot was \
             dropped): created it again there; changes committed between the failover and its consistent point \
             are in no stream, so the tables are re-read as a snapshot at that point{mode}; streaming from the new \
             slot after that");
        // Every batch handed out is settled: the old server's positions and stream are done with.
        self.confirmations.handed_out(0, Some(lsn));
        self.forget_stream();
        self.snapshot = Some(Snapshot::new(&self.name, &self.url, &self.tables, lsn, server.timeline));
        let same_server = previous.is_some_and(|p| p == server);
        self.following = Some((server.clone(), busy_reason(same_server, self.tables.len())));
        Ok(())
    }

    /// The snapshot's rows are all written: recorded in the marker, and a failover followed is over.
    pub(super) async fn snapshot_done(&mut self) -> Result<(), SourceError> {
        let server = self.following.as_ref().map(|(s, _)| s.clone()).or_else(|| self.session.server().cloned());
        self.marker.set(&self.name, &Marker::Done(server)).await?;
        if self.following.take().is_some() {
            tracing::info!(source = %self.name, slot = %self.slot, "failover followed: tables re-read; streaming");
        } else {
            tracing::info!(source = %self.name, "initial snapshot done; streaming");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(timeline: u32) -> Server {
        Server { system_id: "7642011472967116994".to_owned(), timeline }
    }

    #[test]
    fn markers_round_trip_and_old_ones_read_as_done() {
        for marker in [
            Marker::Done(Some(server(2))),
            Marker::Following(Some(server(1))),
            Marker::Following(None),
            Marker::Done(None),
        ] {
            assert_eq!(Marker::parse(marker.value().as_deref()), marker);
        }
        assert_eq!(Marker::Absent.value(), None);
        assert_eq!(Marker::parse(None), Marker::Absent);
        assert_eq!(Marker::parse(Some("1712345678901")), Marker::Done(None), "a marker from before holds a time");
        assert_eq!(Marker::Done(Some(server(3))).value().as_deref(), Some("done:7642011472967116994:3"));
    }

    #[test]
    fn a_capture_that_ran_before_follows_a_lost_slot_whatever_its_snapshot_mode() {
        for mode in [SnapshotMode::Initial, SnapshotMode::Never] {
            let done = Marker::Done(Some(server(1)));
            let follow = Start::Follow { previous: Some(server(1)), found_missing: true };
            assert_eq!(on_start(true, &done, mode), follow, "{mode:?}");
            assert_eq!(on_start(false, &done, mode), Start::Stream { first: false });
            let interrupted = Marker::Following(Some(server(1)));
            let resumed = Start::Follow { previous: Some(server(1)), found_missing: false };
            assert_eq!(on_start(false, &interrupted, mode), resumed, "an unfinished re-read is repeated: {mode:?}");
        }
        // First starts: a new slot, with or without the initial snapshot.
        assert_eq!(on_start(true, &Marker::Absent, SnapshotMode::Initial), Start::Initial);
        assert_eq!(on_start(true, &Marker::Absent, SnapshotMode::Never), Start::Stream { first: true });
        assert_eq!(on_start(false, &Marker::Absent, SnapshotMode::Initial), Start::Initial, "unfinished snapshot");
    }

    #[test]
    fn the_reason_says_what_is_re_read_and_why() {
        assert_eq!(busy_reason(false, 3), "following a failover: re-reading 3 tables from the new primary's snapshot");
        assert_eq!(busy_reason(true, 1), "replication slot created again: re-reading 1 table from a new snapshot");
        assert_eq!(server(2).to_string(), "system 7642011472967116994 timeline 2");
    }
}
