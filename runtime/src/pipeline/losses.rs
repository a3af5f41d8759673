//! What a source's runner reports when writes or records it counted on were
//! lost: a cache that came back older than the writes made to it, or change
//! records gone before they were read. Whoever holds the receiver repairs the
//! pipelines concerned.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::running::Pipeline;
use crate::sink::{Lost, SinkError};

/// A loss, as a runner reports it.
#[derive(Debug, Clone)]
pub enum Loss {
    /// A cache came back older than evercache's writes to it.
    Cache(Lost),
    /// Change records of the source were lost before they were read (a
    /// stream trimmed past the group, a Kafka offset past retention).
    Events(String),
}

/// Where a runner reports losses; cheap to clone.
#[derive(Clone)]
pub struct LossSender(mpsc::UnboundedSender<Loss>);

impl LossSender {
    /// A sender and the receiver that hears it.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Loss>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self(sender), receiver)
    }

    /// Reports a loss; nothing happens once the receiver is gone (shutdown).
    pub fn report(&self, loss: Loss) {
        let _ = self.0.send(loss);
    }
}

/// The key in a pipeline's cache that says it owes a repair, until the repair
/// is done: a process stopped or killed during a repair (or before it began)
/// finds it at its next start and repairs again.
pub fn pending_repair_key(pipeline: &str) -> String {
    format!("evercache:repair:{pipeline}")
}

/// Records in each pipeline's cache that it owes a repair, and why; done
/// before the loss is acted on (the batch confirmed, the gap passed).
pub async fn mark_repairs(pipelines: &[Arc<Pipeline>], why: &str) -> Result<(), SinkError> {
    for pipeline in pipelines {
        let mut conn = pipeline.cache().connection();
        let value = format!("{} {why}", crate::clock::now_ms());
        redis::cmd("SET")
            .arg(pending_repair_key(pipeline.name()))
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .map_err(SinkError::redis)?;
    }
    Ok(())
}
