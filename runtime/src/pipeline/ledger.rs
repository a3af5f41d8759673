//! Settling batches in read order: a batch is dead-lettered and acknowledged
//! once every pipeline it touched has finished it, and never before an earlier
//! batch; after an interrupted batch (shutdown while it kept failing) nothing
//! more is settled, so it and everything after it is read again on restart.

use std::collections::VecDeque;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::failure::Interrupted;
use super::watermarks::Watermarks;
use crate::source::{Acker, DeadLetter, Source, SourceError, SourceRecord};

/// Wait between attempts at a failing dead-letter or acknowledgement write.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// A batch read and dispatched to its pipelines, not yet settled.
pub(super) struct Unsettled {
    pub(super) seq: u64,
    pub(super) records: Vec<SourceRecord>,
    /// Undecodable records, then each pipeline's failures as they arrive.
    pub(super) letters: Vec<DeadLetter>,
    /// Pipelines that have not finished it.
    pub(super) waiting: usize,
    /// Returned when it is settled: bounds the batches held in memory.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    interrupted: bool,
}

impl Unsettled {
    pub(super) fn new(seq: u64, records: Vec<SourceRecord>, letters: Vec<DeadLetter>, waiting: usize) -> Self {
        Self { seq, records, letters, waiting, permit: None, interrupted: false }
    }
}

/// A pipeline finished its share of batch `seq`.
pub(super) struct Done {
    pub(super) seq: u64,
    /// Its records that failed for good.
    pub(super) result: Result<Vec<DeadLetter>, Interrupted>,
}

/// What the ledger hears: new batches from the runner, finished shares from the workers.
pub(super) enum Message {
    Batch(Unsettled),
    Done(Done),
}

/// Where workers report; cheap to clone.
#[derive(Clone)]
pub(super) struct Inbox(mpsc::UnboundedSender<Message>);

impl Inbox {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<Message>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self(sender), receiver)
    }

    pub(super) fn batch(&self, batch: Unsettled) {
        // The receiver outlives every sender, so this cannot fail.
        let _ = self.0.send(Message::Batch(batch));
    }

    pub(super) fn done(&self, done: Done) {
        let _ = self.0.send(Message::Done(done));
    }
}

/// Unsettled batches in read order.
#[derive(Default)]
pub(super) struct Ledger {
    batches: VecDeque<Unsettled>,
}

impl Ledger {
    pub(super) fn hear(&mut self, message: Message) {
        match message {
            Message::Batch(batch) => self.batches.push_back(batch),
            Message::Done(done) => {
                let Some(batch) = self.batches.iter_mut().find(|b| b.seq == done.seq) else { return };
                batch.waiting = batch.waiting.saturating_sub(1);
                match done.result {
                    Ok(letters) => batch.letters.extend(letters),
                    Err(Interrupted) => batch.interrupted = true,
                }
            }
        }
    }

    /// The oldest batch, once every pipeline finished it.
    pub(super) fn ready(&mut self) -> Option<Result<Unsettled, Interrupted>> {
        if self.batches.front()?.waiting > 0 {
            return None;
        }
        let batch = self.batches.pop_front()?;
        Some(if batch.interrupted { Err(Interrupted) } else { Ok(batch) })
    }
}

/// Settles batches in read order on a task of its own, through the source's
/// acker, until every sender of `inbox` is gone.
pub(super) async fn settle_in_order(
    mut acker: Acker,
    mut inbox: mpsc::UnboundedReceiver<Message>,
    watermarks: std::sync::Arc<Watermarks>,
    shutdown: CancellationToken,
) {
    let mut ledger = Ledger::default();
    let mut stopped = false;
    while let Some(message) = inbox.recv().await {
        ledger.hear(message);
        while !stopped && let Some(ready) = ledger.ready() {
            let settled = match ready {
                Ok(batch) => {
                    settle(Acks::Acker(&mut acker), &batch.records, batch.letters, &watermarks, &shutdown).await
                }
                Err(interrupted) => Err(interrupted),
            };
            if settled.is_err() {
                tracing::info!(source = %acker.name(), "shutdown during a failing batch; it and later ones are left pending for the next start");
                stopped = true;
            }
        }
    }
}

/// Where a batch is settled: on the source, or, where the source allows it, on
/// an acker while the source reads on.
pub(super) enum Acks<'a> {
    Source(&'a mut Source),
    Acker(&'a mut Acker),
}

impl Acks<'_> {
    fn name(&self) -> &str {
        match self {
            Acks::Source(source) => source.name(),
            Acks::Acker(acker) => acker.name(),
        }
    }

    async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        match self {
            Acks::Source(source) => source.dead_letter(records, letters).await,
            Acks::Acker(acker) => acker.dead_letter(records, letters).await,
        }
    }

    async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        match self {
            Acks::Source(source) => source.ack(records).await,
            Acks::Acker(acker) => acker.ack(records).await,
        }
    }
}

/// Writes the batch's dead letters, advances the watermarks past its writes,
/// then acknowledges every record of it.
pub(super) async fn settle(
    mut acks: Acks<'_>,
    records: &[SourceRecord],
    letters: Vec<DeadLetter>,
    watermarks: &Watermarks,
    shutdown: &CancellationToken,
) -> Result<(), Interrupted> {
    // Dead letters first: a record is acked only once it is written somewhere.
    loop {
        match acks.dead_letter(records, &letters).await {
            Ok(()) => break,
            Err(e) => wait_for_source(acks.name(), &e, shutdown).await?,
        }
    }
    crate::metrics::dead_lettered(acks.name(), &letters);
    // Before the source hears of it: a cache that loses the batch's writes loses this advance too.
    loop {
        match watermarks.advance(records).await {
            Ok(()) => break,
            Err(e) => wait_for_source(acks.name(), &e, shutdown).await?,
        }
    }
    loop {
        match acks.ack(records).await {
            Ok(()) => return Ok(()),
            Err(e) => wait_for_source(acks.name(), &e, shutdown).await?,
        }
    }
}

async fn wait_for_source(
    source: &str,
    error: &(dyn std::fmt::Display + Sync),
    shutdown: &CancellationToken,
) -> Result<(), Interrupted> {
    tracing::warn!(source = %source, error = %error, "settling a batch failed; retrying");
    if shutdown.is_cancelled() {
        return Err(Interrupted);
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(SETTLE_RETRY) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SourceRecord {
        SourceRecord::with_fields("s".into(), id.into(), Vec::new())
    }

    fn done(seq: u64, result: Result<Vec<DeadLetter>, Interrupted>) -> Message {
        Message::Done(Done { seq, result })
    }

    #[test]
    fn batches_settle_in_read_order_once_every_pipeline_finished_them() {
        let mut ledger = Ledger::default();
        ledger.hear(Message::Batch(Unsettled::new(1, vec![record("1-0"), record("1-1")], Vec::new(), 2)));
        ledger.hear(Message::Batch(Unsettled::new(2, vec![record("2-0")], Vec::new(), 1)));
        ledger.hear(done(2, Ok(Vec::new())));
        assert!(ledger.ready().is_none(), "batch 2 is done but batch 1 is not");
        ledger.hear(done(1, Ok(Vec::new())));
        assert!(ledger.ready().is_none(), "batch 1 still waits for its second pipeline");
        let failure = DeadLetter { record: 1, pipeline: Some("slow".into()), error: "boom".into(), attempts: 3 };
        ledger.hear(done(1, Ok(vec![failure])));
        let first = ledger.ready().expect("batch 1 is ready").expect("not interrupted");
        assert_eq!(first.seq, 1);
        assert_eq!(first.letters.len(), 1);
        assert_eq!((first.letters[0].record, first.letters[0].pipeline.as_deref()), (1, Some("slow")));
        assert_eq!(ledger.ready().map(|b| b.map(|b| b.seq).ok()), Some(Some(2)));
        assert!(ledger.ready().is_none());
    }

    #[test]
    fn an_interrupted_batch_is_never_settled() {
        let mut ledger = Ledger::default();
        ledger.hear(Message::Batch(Unsettled::new(1, vec![record("1-0")], Vec::new(), 2)));
        ledger.hear(done(1, Ok(Vec::new())));
        ledger.hear(done(1, Err(Interrupted)));
        assert!(matches!(ledger.ready(), Some(Err(Interrupted))));
    }
}
