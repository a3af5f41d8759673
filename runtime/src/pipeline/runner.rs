//! The loop that drives one source: read a batch, decode, route to pipelines,
//! dead-letter what failed for good, then acknowledge the whole batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::batch::{Interrupted, Pipeline};
use crate::event::ChangeEvent;
use crate::event::debezium::{Decoded, decode_stream_entry};
use crate::source::DeadLetter;
use crate::source::{RawRecord, Source, SourceError};

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
        let mut prefetched: Option<Result<Vec<RawRecord>, SourceError>> = None;
        // A batch already read when shutdown comes is drained like the one in flight.
        while !shutdown.is_cancelled() || prefetched.is_some() {
            // A read is never abandoned: Redis may already have delivered its
            // entries to us. It is bounded by the source's `block`.
            let batch = match prefetched.take() {
                Some(batch) => batch,
                None => self.source.next_batch().await,
            };
            let records = match batch {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "source unavailable; retrying");
                    sleep_unless(&shutdown, SOURCE_RETRY).await;
                    continue;
                }
            };
            if records.is_empty() {
                continue;
            }
            // Reading the next batch overlaps applying this one where the source
            // allows it; batches are still applied and acknowledged in order.
            let applied = match self.source.read_ahead() {
                Some(limit) if !shutdown.is_cancelled() => {
                    let applying = apply(&self.pipelines, &self.routes, &records, &shutdown);
                    let (applied, next) = read_while(&mut self.source, applying, limit).await;
                    prefetched = Some(next);
                    applied
                }
                _ => apply(&self.pipelines, &self.routes, &records, &shutdown).await,
            };
            let settled = match applied {
                Ok(letters) => self.settle(&records, letters, &shutdown).await,
                Err(interrupted) => Err(interrupted),
            };
            if settled.is_err() {
                tracing::info!(source = %name, records = records.len(), "shutdown during a failing batch; left pending for the next start");
                break;
            }
        }
        self.source.close().await;
        tracing::info!(source = %name, "source stopped");
    }

    /// Writes the batch's dead letters, then acknowledges every record of it.
    async fn settle(
        &mut self,
        records: &[RawRecord],
        letters: Vec<Letter>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let letters: Vec<DeadLetter<'_>> = letters
            .into_iter()
            .map(|l| DeadLetter {
                record: &records[l.record],
                pipeline: l.pipeline,
                error: l.error,
                attempts: l.attempts,
            })
            .collect();
        // Dead letters first: a record is acked only once it is written somewhere.
        loop {
            match self.source.dead_letter(&letters).await {
                Ok(()) => break,
                Err(e) => self.wait_for_source(&e, shutdown).await?,
            }
        }
        crate::metrics::dead_lettered(self.source.name(), &letters);
        loop {
            match self.source.ack(records).await {
                Ok(()) => return Ok(()),
                Err(e) => self.wait_for_source(&e, shutdown).await?,
            }
        }
    }

    async fn wait_for_source(&self, error: &SourceError, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        tracing::warn!(source = %self.source.name(), error = %error, "source command failed; retrying");
        if shutdown.is_cancelled() {
            return Err(Interrupted);
        }
        sleep_unless(shutdown, SOURCE_RETRY).await;
        Ok(())
    }
}

/// A record to dead-letter, by index into the batch.
struct Letter {
    record: usize,
    pipeline: Option<String>,
    error: String,
    attempts: u32,
}

/// Decodes and routes a batch and applies it to every pipeline; returns what
/// failed for good. Touches no source, so the next read can run alongside.
async fn apply(
    pipelines: &[Arc<Pipeline>],
    routes: &HashMap<String, Vec<usize>>,
    records: &[RawRecord],
    shutdown: &CancellationToken,
) -> Result<Vec<Letter>, Interrupted> {
    let mut per_pipeline: Vec<Vec<(usize, ChangeEvent)>> = vec![Vec::new(); pipelines.len()];
    let mut letters = Vec::new();
    for (index, record) in records.iter().enumerate() {
        match decode_stream_entry(&record.stream, &record.fields) {
            Ok(Decoded::Change(event)) => {
                let table = format!("{}.{}", event.schema.as_deref().unwrap_or(""), event.table);
                match routes.get(&table) {
                    Some(targets) => {
                        let (&last, others) = targets.split_last().expect("a route names at least one pipeline");
                        for &target in others {
                            per_pipeline[target].push((index, event.clone()));
                        }
                        per_pipeline[last].push((index, event));
                    }
                    None => {
                        tracing::debug!(stream = %record.stream, id = %record.id, %table, "no pipeline for table; acked")
                    }
                }
            }
            Ok(Decoded::Skip(reason)) => {
                tracing::debug!(stream = %record.stream, id = %record.id, reason = reason.as_str(), "record skipped");
            }
            Err(e) => {
                tracing::error!(stream = %record.stream, id = %record.id, error = %e, "undecodable record; dead-lettered");
                letters.push(Letter { record: index, pipeline: None, error: e.to_string(), attempts: 1 });
            }
        }
    }
    let runs = pipelines.iter().zip(&per_pipeline).filter(|(_, events)| !events.is_empty()).map(
        |(pipeline, events)| async move { (pipeline.name().to_owned(), pipeline.process(events, shutdown).await) },
    );
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

/// Runs `applying` to its end while reading the next batch alongside. Reads
/// go on while it runs and the source has a backlog, up to `limit` records, so
/// a backlog is applied in bigger batches; a read already started is always
/// awaited, since Redis may have delivered its entries to us.
async fn read_while<F: Future>(
    source: &mut Source,
    applying: F,
    limit: usize,
) -> (F::Output, Result<Vec<RawRecord>, SourceError>) {
    tokio::pin!(applying);
    let mut applied = None;
    let mut next: Vec<RawRecord> = Vec::new();
    let mut failed = None;
    loop {
        let read = source.next_batch();
        tokio::pin!(read);
        let batch = loop {
            tokio::select! {
                out = &mut applying, if applied.is_none() => applied = Some(out),
                batch = &mut read => break batch,
            }
        };
        match batch {
            Ok(batch) => {
                let caught_up = batch.is_empty();
                next.extend(batch);
                if applied.is_some() || caught_up || next.len() >= limit {
                    break;
                }
            }
            Err(e) if next.is_empty() => {
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
    let applied = match applied {
        Some(out) => out,
        None => applying.await,
    };
    (applied, failed.map_or(Ok(next), Err))
}

async fn sleep_unless(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
