//! The loop that drives one source: read a batch, decode, route to pipelines
//! and plan its keys, recompute and write it while the next batch is read and
//! planned, dead-letter what failed for good, then acknowledge the whole batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::{Interrupted, Pipeline};
use super::planning::Planning;
use super::staging::{Letter, Staged, Staging, joined};
use crate::source::DeadLetter;
use crate::source::{RawRecord, ReadAhead, Source, SourceError, StreamAcker};

/// Wait between attempts to reach an unavailable source.
const SOURCE_RETRY: Duration = Duration::from_millis(500);

/// Drives one source and the pipelines fed by it.
pub struct SourceRunner {
    source: Source,
    pipelines: Vec<Arc<Pipeline>>,
    /// `schema.table` → indexes into `pipelines`.
    routes: HashMap<String, Vec<usize>>,
}

impl SourceRunner {
    /// Routes each pipeline's tables to it.
    pub fn new(source: Source, pipelines: Vec<Arc<Pipeline>>) -> Self {
        let mut routes: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, pipeline) in pipelines.iter().enumerate() {
            for table in pipeline.tables() {
                routes.entry(table.clone()).or_default().push(index);
            }
        }
        Self { source, pipelines, routes }
    }

    /// Runs until `shutdown` is cancelled. The batch in flight is finished
    /// (drained) when it can be; one that cannot is left unacknowledged and is
    /// read again on the next start.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.source.name().to_owned();
        tracing::info!(source = %name, pipelines = self.pipelines.len(), "source started");
        let mut read_ahead: Option<Result<Staged, SourceError>> = None;
        let mut settling: Option<JoinHandle<Result<(), Interrupted>>> = None;
        // A batch already read when shutdown comes is drained like the one in flight.
        while !shutdown.is_cancelled() || read_ahead.is_some() {
            let staged = match read_ahead.take() {
                Some(staged) => staged,
                // A read is never abandoned: Redis may already have delivered its
                // entries to us. It is bounded by the source's `block`.
                None => match self.source.next_batch().await {
                    Ok(records) => {
                        let mut staging = Staging::new(&self.pipelines);
                        staging.add(&self.routes, records);
                        Ok(staging.staged().await)
                    }
                    Err(e) => Err(e),
                },
            };
            let staged = match staged {
                Ok(staged) => staged,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "source unavailable; retrying");
                    sleep_unless(&shutdown, SOURCE_RETRY).await;
                    continue;
                }
            };
            if staged.records.is_empty() {
                continue;
            }
            let Staged { records, mut letters, planning } = staged;
            // The batch is recomputed and written on its own task while, where the
            // source allows it, the next one is read and planned; batches are
            // still written and acknowledged in order.
            let finishing = tokio::spawn(finish(self.pipelines.clone(), planning, shutdown.clone()));
            let finished = match self.source.read_ahead() {
                Some(read_ahead_limits) if !shutdown.is_cancelled() => {
                    let (finished, next) =
                        read_while(&mut self.source, &self.pipelines, &self.routes, finishing, read_ahead_limits).await;
                    read_ahead = Some(next);
                    finished
                }
                _ => joined(finishing).await,
            };
            let batch_len = records.len();
            let settled = match finished {
                Ok(failed) => {
                    letters.extend(failed);
                    // At most one batch is settled in the background; it is done by now, normally.
                    let previous = match settling.take() {
                        Some(task) => joined(task).await,
                        None => Ok(()),
                    };
                    match (previous, self.source.acker()) {
                        (Err(interrupted), _) => Err(interrupted),
                        (Ok(()), Some(acker)) => {
                            let shutdown = shutdown.clone();
                            settling = Some(tokio::spawn(async move {
                                settle(Acks::Stream(acker), &records, letters, &shutdown).await
                            }));
                            Ok(())
                        }
                        (Ok(()), None) => settle(Acks::Source(&mut self.source), &records, letters, &shutdown).await,
                    }
                }
                Err(interrupted) => Err(interrupted),
            };
            if settled.is_err() {
                tracing::info!(source = %name, records = batch_len, "shutdown during a failing batch; left pending for the next start");
                break;
            }
        }
        if let Some(task) = settling
            && joined(task).await.is_err()
        {
            tracing::info!(source = %name, "shutdown while acknowledging a batch; left pending for the next start");
        }
        self.source.close().await;
        tracing::info!(source = %name, "source stopped");
    }
}

/// Where a batch is settled: on the source, or, where the source allows it, on
/// an acker while the source reads on.
enum Acks<'a> {
    Source(&'a mut Source),
    Stream(StreamAcker),
}

impl Acks<'_> {
    fn name(&self) -> &str {
        match self {
            Acks::Source(source) => source.name(),
            Acks::Stream(acker) => acker.name(),
        }
    }

    async fn dead_letter(&mut self, letters: &[DeadLetter<'_>]) -> Result<(), SourceError> {
        match self {
            Acks::Source(source) => source.dead_letter(letters).await,
            Acks::Stream(acker) => acker.dead_letter(letters).await,
        }
    }

    async fn ack(&mut self, records: &[RawRecord]) -> Result<(), SourceError> {
        match self {
            Acks::Source(source) => source.ack(records).await,
            Acks::Stream(acker) => acker.ack(records).await,
        }
    }
}

/// Writes the batch's dead letters, then acknowledges every record of it.
async fn settle(
    mut acks: Acks<'_>,
    records: &[RawRecord],
    letters: Vec<Letter>,
    shutdown: &CancellationToken,
) -> Result<(), Interrupted> {
    let letters: Vec<DeadLetter<'_>> = letters
        .into_iter()
        .map(|l| DeadLetter { record: &records[l.record], pipeline: l.pipeline, error: l.error, attempts: l.attempts })
        .collect();
    // Dead letters first: a record is acked only once it is written somewhere.
    loop {
        match acks.dead_letter(&letters).await {
            Ok(()) => break,
            Err(e) => wait_for_source(acks.name(), &e, shutdown).await?,
        }
    }
    crate::metrics::dead_lettered(acks.name(), &letters);
    loop {
        match acks.ack(records).await {
            Ok(()) => return Ok(()),
            Err(e) => wait_for_source(acks.name(), &e, shutdown).await?,
        }
    }
}

async fn wait_for_source(source: &str, error: &SourceError, shutdown: &CancellationToken) -> Result<(), Interrupted> {
    tracing::warn!(source = %source, error = %error, "source command failed; retrying");
    if shutdown.is_cancelled() {
        return Err(Interrupted);
    }
    sleep_unless(shutdown, SOURCE_RETRY).await;
    Ok(())
}

/// Recomputes and writes a staged batch in every pipeline it touches; returns
/// what failed for good.
async fn finish(
    pipelines: Vec<Arc<Pipeline>>,
    planning: Vec<Option<Planning>>,
    shutdown: CancellationToken,
) -> Result<Vec<Letter>, Interrupted> {
    let runs = pipelines.iter().zip(planning).filter_map(|(pipeline, planning)| {
        let shutdown = &shutdown;
        planning.map(|planning| async move { (pipeline.name().to_owned(), pipeline.finish(planning, shutdown).await) })
    });
    let mut letters = Vec::new();
    for (pipeline, result) in join_all(runs).await {
        for failure in result? {
            letters.push(Letter {
                record: failure.record,
                pipeline: Some(pipeline.clone()),
                error: failure.error,
                attempts: failure.attempts,
            });
        }
    }
    Ok(letters)
}

type Finishing = JoinHandle<Result<Vec<Letter>, Interrupted>>;

/// Waits for `finishing` while reading the next batch; each read's records
/// are decoded while the following read is in flight, and planned on the
/// staging's own task. Reads go on while `finishing` runs, and after it while
/// reads come back full (a backlog), up to `limits.batch` records: a backlog
/// is applied in big batches, in which a hot row's changes are recomputed
/// once. A read already started is always awaited, since Redis may have
/// delivered its entries to us.
async fn read_while(
    source: &mut Source,
    pipelines: &[Arc<Pipeline>],
    routes: &HashMap<String, Vec<usize>>,
    finishing: Finishing,
    limits: ReadAhead,
) -> (Result<Vec<Letter>, Interrupted>, Result<Staged, SourceError>) {
    let mut finishing = std::pin::pin!(joined(finishing));
    let mut finished = None;
    let mut next = Staging::new(pipelines);
    let mut undecoded: Vec<RawRecord> = Vec::new();
    let mut failed = None;
    loop {
        let read = async {
            let read = source.next_batch();
            tokio::pin!(read);
            loop {
                tokio::select! {
                    out = &mut finishing, if finished.is_none() => finished = Some(out),
                    batch = &mut read => break batch,
                }
            }
        };
        let decode = async { next.add(routes, std::mem::take(&mut undecoded)) };
        // `join!` polls the read first, so its command is sent before decoding starts.
        let (batch, ()) = tokio::join!(read, decode);
        match batch {
            Ok(batch) => {
                let (caught_up, backlog) = (batch.is_empty(), batch.len() >= limits.full_read);
                undecoded = batch;
                let gathered = next.len() + undecoded.len();
                if caught_up || gathered >= limits.batch || (finished.is_some() && !backlog) {
                    break;
                }
            }
            Err(e) if next.len() == 0 => {
                failed = Some(e);
                break;
            }
            // Records gathered so far are ours now and go on; the failing read is retried after them.
            Err(e) => {
                tracing::warn!(error = %e, "read-ahead failed; applying what was read");
                break;
            }
        }
    }
    next.add(routes, undecoded);
    let finished = async {
        match finished {
            Some(out) => out,
            None => finishing.await,
        }
    };
    let (finished, next) = tokio::join!(finished, next.staged());
    (finished, failed.map_or(Ok(next), Err))
}

async fn sleep_unless(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
