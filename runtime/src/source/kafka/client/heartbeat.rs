//! The group member's heartbeats: a task on a connection of its own that tells
//! the member when the group rebalances or has dropped it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::HeartbeatRequest;

use super::KafkaError;
use super::conn::BrokerConn;
use super::group::is_coordinator_error;
use super::settings::Settings;

/// A running heartbeat task, stopped on drop.
pub struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    flags: Arc<Flags>,
}

/// What the heartbeats learned.
#[derive(Default)]
struct Flags {
    /// The coordinator started a rebalance: rejoin at the next read.
    rejoin: AtomicBool,
    /// The coordinator no longer knows this member: its partitions are gone already.
    lost: AtomicBool,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Heartbeat {
    /// Starts heartbeating `request` to the coordinator at `address`.
    pub fn start(address: String, settings: Arc<Settings>, request: HeartbeatRequest) -> Self {
        let flags = Arc::new(Flags::default());
        let task = tokio::spawn(beat(address, settings, request, flags.clone()));
        Self { task, flags }
    }

    /// True when the group must be rejoined.
    pub fn rejoin(&self) -> bool {
        self.flags.rejoin.load(Ordering::Relaxed)
    }

    /// True when the coordinator no longer knows the member.
    pub fn lost(&self) -> bool {
        self.flags.lost.load(Ordering::Relaxed)
    }

    /// Asks for a rejoin (e.g. a commit learned of a new generation).
    pub fn request_rejoin(&self) {
        self.flags.rejoin.store(true, Ordering::Relaxed);
    }
}

/// Heartbeats on a connection of its own, so a long fetch never delays one.
/// Sets `rejoin` when the group rebalances and `lost` when the member is gone.
async fn beat(address: String, settings: Arc<Settings>, request: HeartbeatRequest, flags: Arc<Flags>) {
    let mut conn: Option<BrokerConn> = None;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(settings.heartbeat_interval).await;
        if conn.as_ref().is_some_and(BrokerConn::expiring) {
            conn = None;
        }
        if conn.is_none() {
            conn = BrokerConn::connect(&address, &settings).await.ok();
        }
        let result = match &mut conn {
            Some(c) => c.request(&request, 3).await.map(|(answer, _)| answer.error_code),
            None => Err(KafkaError::Io { address: address.clone(), message: "not connected".to_owned() }),
        };
        match result.map(ResponseError::try_from_code) {
            Ok(None) => last_ok = tokio::time::Instant::now(),
            Ok(Some(ResponseError::RebalanceInProgress)) => flags.rejoin.store(true, Ordering::Relaxed),
            Ok(Some(error)) => {
                tracing::info!(address = %address, %error, "heartbeat refused; rejoining the group");
                if !is_coordinator_error(error) {
                    flags.lost.store(true, Ordering::Relaxed);
                }
                flags.rejoin.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                conn = None;
                tracing::debug!(address = %address, error = %e, "heartbeat failed");
                if last_ok.elapsed() >= settings.session_timeout {
                    // The coordinator has dropped this member by now.
                    flags.lost.store(true, Ordering::Relaxed);
                    flags.rejoin.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}
