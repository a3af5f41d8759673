//! The replication connection of the built-in capture, kept alive: after a
//! server restart, a failover or a dropped or silent connection it is opened
//! again, and streaming resumes from the slot's confirmed position (what was
//! handed out and not confirmed is sent again). Each connection first asks the
//! server who it is (IDENTIFY_SYSTEM) and whether it has the slot, on the same
//! session the stream then starts on, so what it learns describes that server.

use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};

use super::failover::{Followed, Server};
use super::visibility::VisibilityGate;
use crate::source::SourceError;

/// How long the stream may stay silent before the slot is checked for a
/// walsender: a connection black-holed (no FIN, no RST) delivers nothing and
/// reports no error.
const QUIET_CHECK: Duration = Duration::from_secs(15);

/// What connecting found.
#[derive(Debug)]
pub(super) enum Connect {
    /// Streaming (or already was).
    Streaming,
    /// The server has no slot of ours: a promoted standby, or a slot dropped.
    SlotMissing(Server),
}

/// A replication connection that reconnects on demand.
pub(super) struct Session {
    source: String,
    slot: String,
    config: ReplicationConfig,
    client: Option<ReplicationClient>,
    /// The newest position confirmed, carried over to a new connection.
    confirmed: u64,
    last_heard: Instant,
    /// When the connection was lost, until it is back.
    lost_at: Option<Instant>,
    /// The server streamed from last.
    server: Option<Server>,
}

impl Session {
    /// A session not connected yet.
    fn new(source: &str, slot: &str, config: ReplicationConfig) -> Self {
        Self {
            source: source.to_owned(),
            slot: slot.to_owned(),
            config,
            client: None,
            confirmed: 0,
            last_heard: Instant::now(),
            lost_at: None,
            server: None,
        }
    }

    /// Connects, retrying for a while: after a crash the server may still hold
    /// the slot for the dead connection until it notices. The slot must exist.
    pub(super) async fn open(source: &str, slot: &str, config: ReplicationConfig) -> Result<Self, SourceError> {
        let mut session = Self::new(source, slot, config);
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let error = match session.connect().await {
                Ok(Connect::Streaming) => return Ok(session),
                // Gone since the start made sure of it: the next start creates it again and follows.
                Ok(Connect::SlotMissing(_)) => {
                    return Err(session.unavailable(&format!("replication slot '{slot}' vanished during the start")));
                }
                Err(e) => e,
            };
            if Instant::now() >= give_up {
                return Err(error);
            }
            tracing::warn!(source = %source, error = %error, "cannot start replication yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The server streamed from last (`None` before the first connection).
    pub(super) fn server(&self) -> Option<&Server> {
        self.server.as_ref()
    }

    /// The timeline of the server streamed from, which ranks the positions read from it.
    pub(super) fn timeline(&self) -> u32 {
        self.server.as_ref().map_or(0, |s| s.timeline)
    }

    /// Connects when the connection was lost; a server without the slot is
    /// reported, not followed: that is the capture's decision.
    pub(super) async fn ensure_connected(&mut self) -> Result<Connect, SourceError> {
        if self.client.is_some() {
            return Ok(Connect::Streaming);
        }
        self.connect().await
    }

    async fn connect(&mut self) -> Result<Connect, SourceError> {
        let mut config = self.config.clone();
        // What was confirmed here is written; the slot may not have heard of it yet.
        if self.confirmed > 0 {
            config.start_lsn = Lsn::from_u64(self.confirmed);
        }
        let (mut client, server) = self.identified(config).await?;
        let slot = simple_query(&mut client, &slot_query(&self.slot)).await;
        if slot.map_err(|e| self.unavailable(&e.to_string()))?.is_none() {
            return Ok(Connect::SlotMissing(server));
        }
        let started = async {
            client.start().await?;
            client.wait_started().await
        };
        // A slot dropped between the check and the start is found missing by the next connection.
        started.await.map_err(|e| self.unavailable(&e.to_string()))?;
        if let Some(known) = self.server.as_ref().filter(|known| **known != server) {
            tracing::warn!(source = %self.source, slot = %self.slot, from = %known, to = %server,
                "the server behind the URL changed and has the slot; streaming from it");
        }
        self.server = Some(server);
        self.client = Some(client);
        self.last_heard = Instant::now();
        if let Some(lost_at) = self.lost_at.take() {
            metrics::counter!(crate::metrics::CAPTURE_RECONNECTS_TOTAL, "source" => self.source.clone()).increment(1);
            tracing::info!(source = %self.source, slot = %self.slot, down = ?lost_at.elapsed(),
                "replication resumed from the slot's confirmed position");
        }
        Ok(Connect::Streaming)
    }

    /// Creates the slot again on the server behind the URL; streaming starts
    /// at its consistent point (the position the capture had confirmed belongs
    /// to another server's WAL, or to a slot that is gone).
    pub(super) async fn create_slot(&mut self) -> Result<Followed, SourceError> {
        let (mut client, server) = self.identified(self.config.clone()).await?;
        let sql = format!("select lsn::text from pg_create_logical_replication_slot('{}', 'pgoutput')", self.slot);
        let created = simple_query(&mut client, &sql).await;
        drop(client);
        let lsn = created
            .map_err(|e| self.unavailable(&format!("cannot create replication slot '{}' again: {e}", self.slot)))?
            .as_deref()
            .and_then(crate::event::position::parse_pg_lsn)
            .ok_or_else(|| self.unavailable("pg_create_logical_replication_slot named no position"))?;
        self.confirmed = lsn;
        let previous = self.server.replace(server.clone());
        Ok(Followed { previous, server, lsn })
    }

    /// A gated session (not streaming yet) and the server it reached.
    async fn identified(&self, config: ReplicationConfig) -> Result<(ReplicationClient, Server), SourceError> {
        let attempt = async {
            let mut client = ReplicationClient::connect_gated(config).await?;
            let system = client.identify_system().await?;
            Ok::<_, PgWireError>((client, Server { system_id: system.system_id, timeline: system.timeline }))
        };
        attempt.await.map_err(|e| self.unavailable(&e.to_string()))
    }

    /// The next event, or `None` when none came within `wait`. An error means
    /// the connection was lost now (anything handed out since the last
    /// confirmation will come again); [`Self::ensure_connected`] opens it again.
    pub(super) async fn recv(
        &mut self,
        wait: Duration,
        checks: &VisibilityGate,
    ) -> Result<Option<ReplicationEvent>, SourceError> {
        let Some(client) = self.client.as_mut() else {
            return Err(self.unavailable("the replication connection is not open"));
        };
        match tokio::time::timeout(wait, client.recv()).await {
            Ok(Ok(Some(event))) => {
                self.last_heard = Instant::now();
                Ok(Some(event))
            }
            Ok(Ok(None)) => Err(self.lost("the replication stream ended")),
            Ok(Err(e)) => Err(self.lost(&e.to_string())),
            Err(_) if self.last_heard.elapsed() >= QUIET_CHECK => {
                self.last_heard = Instant::now();
                match checks.slot_active(&self.slot).await {
                    Ok(Some(true)) => Ok(None),
                    Ok(_) => Err(self.lost("the server has no walsender on the slot: the connection is gone")),
                    Err(e) => Err(self.lost(&format!("the connection is silent and {e}"))),
                }
            }
            Err(_) => Ok(None),
        }
    }

    /// Confirms everything up to `lsn` (its changes were written).
    pub(super) fn confirm(&mut self, lsn: u64) {
        if lsn <= self.confirmed {
            return;
        }
        self.confirmed = lsn;
        if let Some(client) = &self.client {
            client.update_applied_lsn(Lsn::from_u64(lsn));
        }
    }

    /// Stops streaming, sending the last confirmed position.
    pub(super) async fn shutdown(&mut self) {
        if let Some(client) = &mut self.client
            && let Err(e) = client.shutdown().await
        {
            tracing::debug!(source = %self.source, error = %e, "replication shutdown");
        }
    }

    /// Lets go of the connection on purpose; the next read reconnects.
    pub(super) fn release(&mut self, why: &str) {
        if self.client.is_some() {
            let _ = self.lost(why);
        }
    }

    fn lost(&mut self, why: &str) -> SourceError {
        if let Some(mut client) = self.client.take() {
            client.abort();
        }
        self.lost_at.get_or_insert_with(Instant::now);
        tracing::warn!(source = %self.source, slot = %self.slot, reason = why, "replication connection lost; reconnecting");
        self.unavailable(why)
    }

    fn unavailable(&self, message: &str) -> SourceError {
        SourceError::Unavailable {
            source_name: self.source.clone(),
            operation: "replication",
            message: message.to_owned(),
        }
    }
}

/// The slot's confirmed position if the server has it. Slot names are checked
/// as `[a-z0-9_]+` when the capture is built, so the name is quoted as is.
fn slot_query(slot: &str) -> String {
    format!("select coalesce(confirmed_flush_lsn::text, '') from pg_replication_slots where slot_name = '{slot}'")
}

/// The first column of the first row of `sql` on a gated session, `None` without rows.
async fn simple_query(client: &mut ReplicationClient, sql: &str) -> Result<Option<String>, PgWireError> {
    let rows = client.simple_query(sql).await?;
    Ok(rows.into_iter().next().map(|row| {
        row.into_iter().next().flatten().map(|cell| String::from_utf8_lossy(&cell).into_owned()).unwrap_or_default()
    }))
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, PgConnection};

    use super::*;

    const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    #[tokio::test]
    async fn a_missing_slot_is_reported_with_the_server_then_created_and_streamed_from() {
        let name = format!("session_unit_{}", std::process::id());
        let mut admin = PgConnection::connect(PG_URL).await.expect("Postgres; run bash scripts/dev-services.sh");
        let drop_slot =
            format!("select pg_drop_replication_slot('{name}') from pg_replication_slots where slot_name = '{name}'");
        sqlx::raw_sql(&format!("{drop_slot}; drop publication if exists {name}; create publication {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let config = ReplicationConfig::new("127.0.0.1", "postgres", "", "test", name.as_str(), name.as_str());
        let mut session = Session::new("unit", &name, config);
        let Connect::SlotMissing(server) = session.ensure_connected().await.unwrap() else {
            panic!("the slot does not exist yet")
        };
        let timeline: String = sqlx::query_scalar("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(server.timeline, u32::from_str_radix(&timeline, 16).unwrap(), "the server's current timeline");
        assert!(!server.system_id.is_empty());

        let followed = session.create_slot().await.unwrap();
        assert_eq!((followed.previous, &followed.server), (None, &server));
        let created: String = sqlx::query_scalar(&format!(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = '{name}'"
        ))
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(Some(followed.lsn), crate::event::position::parse_pg_lsn(&created));
        assert!(matches!(session.ensure_connected().await.unwrap(), Connect::Streaming));
        assert_eq!(session.timeline(), server.timeline);
        session.shutdown().await;
        drop(session);
        for _ in 0..100 {
            let dropped = sqlx::raw_sql(&format!("{drop_slot} and not active")).execute(&mut admin).await;
            let left: i64 =
                sqlx::query_scalar(&format!("select count(*) from pg_replication_slots where slot_name = '{name}'"))
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if dropped.is_ok() && left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sqlx::raw_sql(&format!("drop publication {name}")).execute(&mut admin).await.unwrap();
    }
}
