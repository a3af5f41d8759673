//! The replication connection of the built-in capture, kept alive: after a
//! server restart, a failover to a standby that has the slot, or a dropped or
//! silent connection it is opened again, and streaming resumes from the slot's
//! confirmed position (what was handed out and not confirmed is sent again).

use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};

use super::visibility::VisibilityGate;
use crate::source::SourceError;

/// How long the stream may stay silent before the slot is checked for a
/// walsender: a connection black-holed (no FIN, no RST) delivers nothing and
/// reports no error.
const QUIET_CHECK: Duration = Duration::from_secs(15);

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
}

impl Session {
    /// Connects, retrying for a while: after a crash the server may still hold
    /// the slot for the dead connection until it notices.
    pub(super) async fn open(
        source: &str,
        slot: &str,
        config: ReplicationConfig,
        checks: &VisibilityGate,
    ) -> Result<Self, SourceError> {
        let mut session = Self {
            source: source.to_owned(),
            slot: slot.to_owned(),
            config,
            client: None,
            confirmed: 0,
            last_heard: Instant::now(),
            lost_at: None,
        };
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            match session.connect(checks).await {
                Ok(()) => return Ok(session),
                Err(e) if Instant::now() < give_up && !matches!(e, SourceError::Halted { .. }) => {
                    tracing::warn!(source = %source, error = %e, "cannot start replication yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect(&mut self, checks: &VisibilityGate) -> Result<(), SourceError> {
        let mut config = self.config.clone();
        // What was confirmed here is written; the slot may not have heard of it yet.
        if self.confirmed > 0 {
            config.start_lsn = Lsn::from_u64(self.confirmed);
        }
        let attempt = async {
            let mut client = ReplicationClient::connect(config).await?;
            client.wait_started().await?;
            Ok::<_, pgwire_replication::PgWireError>(client)
        };
        match attempt.await {
            Ok(client) => {
                self.client = Some(client);
                self.last_heard = Instant::now();
                if let Some(lost_at) = self.lost_at.take() {
                    metrics::counter!(crate::metrics::CAPTURE_RECONNECTS_TOTAL, "source" => self.source.clone())
                        .increment(1);
                    tracing::info!(source = %self.source, slot = %self.slot, down = ?lost_at.elapsed(),
                        "replication resumed from the slot's confirmed position");
                }
                Ok(())
            }
            Err(e) => {
                // A slot that is gone cannot be resumed from: say so instead of retrying blindly.
                if let Ok(None) = checks.slot_active(&self.slot).await {
                    return Err(SourceError::Halted {
                        source_name: self.source.clone(),
                        message: format!(
                            "replication slot '{}' does not exist on the server (dropped, or a failover to a server \
                             without it); changes since the last confirmed position cannot be read. Re-create it by \
                             restarting evercache (the capture creates a missing slot), then rebuild the cache: \
                             changes made while the slot was gone are not in any stream",
                            self.slot
                        ),
                    });
                }
                Err(self.unavailable(&e.to_string()))
            }
        }
    }

    /// The next event, or `None` when none came within `wait`. Reconnects
    /// first when the connection was lost; an error means it was lost now
    /// (anything handed out since the last confirmation will come again).
    pub(super) async fn recv(
        &mut self,
        wait: Duration,
        checks: &VisibilityGate,
    ) -> Result<Option<ReplicationEvent>, SourceError> {
        if self.client.is_none() {
            self.connect(checks).await?;
        }
        let Some(client) = self.client.as_mut() else { return Ok(None) };
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
