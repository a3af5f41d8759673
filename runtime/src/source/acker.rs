//! Settling a source's batches on a task of their own, so the runner reads
//! the next batch while one is applied.

use std::sync::Arc;

use super::confirmations::Settle;
use super::dead_letter::{DeadLetter, DeadLetterWriter};
use super::{SourceError, SourceRecord, StreamAcker};

/// Writes dead letters and acknowledges batches for one source; cheap to clone.
#[derive(Clone)]
pub enum Acker {
    /// A Redis Streams source: `XACK` per entry.
    Stream(StreamAcker),
    /// A built-in capture: a settled batch makes its log position confirmable.
    Capture(CaptureAcker),
}

impl Acker {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        match self {
            Acker::Stream(acker) => acker.name(),
            Acker::Capture(acker) => &acker.name,
        }
    }

    /// Appends records to their dead-letter streams with the reason; the caller
    /// acks them afterwards.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        match self {
            Acker::Stream(acker) => acker.dead_letter(records, letters).await,
            Acker::Capture(acker) => acker.dead_letters.write(records, letters).await,
        }
    }

    /// Acknowledges a batch whose cache writes all succeeded; batches are
    /// acknowledged in the order they were read.
    pub async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        match self {
            Acker::Stream(acker) => acker.ack(records).await,
            Acker::Capture(acker) => {
                acker.confirmations.settled(records.len());
                Ok(())
            }
        }
    }
}

/// A capture's acker: dead letters go to Redis, and the capture confirms what
/// its [`super::confirmations::Confirmations`] say is settled.
#[derive(Clone)]
pub struct CaptureAcker {
    name: Arc<str>,
    dead_letters: DeadLetterWriter,
    confirmations: Arc<dyn Settle>,
}

impl CaptureAcker {
    pub(super) fn new(name: &str, dead_letters: DeadLetterWriter, confirmations: Arc<dyn Settle>) -> Self {
        Self { name: Arc::from(name), dead_letters, confirmations }
    }
}
