//! The loop that drives one source: read a batch, decode, route to pipelines
//! and plan its keys, hand each pipeline its share (each pipeline's worker
//! recomputes and writes its batches in order while the next is read), then
//! dead-letter what failed for good and acknowledge, batch by batch in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ledger::{Acks, Inbox, Ledger, Unsettled, settle, settle_in_order};
use super::losses::{Loss, LossSender, mark_repairs};
use super::running::Pipeline;
use super::staging::{Staged, Staging, joined};
use super::watermarks::Watermarks;
use super::worker::Worker;
use crate::source::health::SourceHealth;
use crate::source::{ReadAhead, Source, SourceError, SourceRecord};

/// First wait before reading again from a failing source; doubles per failure.
const SOURCE_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between attempts to read from a failing source.
const MAX_SOURCE_RETRY: Duration = Duration::from_secs(5);
/// Batches read and not yet settled, at most: what lets a healthy pipeline run
/// ahead of a failing one on the same source, and what bounds memory (each
/// batch is bounded by the source's `max_batch_entries` and `max_batch_bytes`).
const MAX_UNSETTLED_BATCHES: usize = 4;
/// How often a source that is not read while a batch is applied hears how
/// long that has taken.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Drives one source and the pipelines fed by it.
pub struct SourceRunner {
    source: Source,
    pipelines: Vec<Arc<Pipeline>>,
    /// `schema.table` → indexes into `pipelines`.
    routes: HashMap<String, Vec<usize>>,
    health: Arc<SourceHealth>,
    losses: LossSender,
}

impl SourceRunner {
    /// Routes each pipeline's tables to it; losses of writes or records are reported to `losses`.
    pub fn new(source: Source, pipelines: Vec<Arc<Pipeline>>, health: Arc<SourceHealth>, losses: LossSender) -> Self {
        let mut routes: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, pipeline) in pipelines.iter().enumerate() {
            for table in pipeline.tables() {
                routes.entry(table.clone()).or_default().push(index);
            }
        }
        Self { source, pipelines, routes, health, losses }
    }

    /// Runs until `shutdown` is cancelled. Batches already read are finished
    /// (drained) when they can be; one that cannot is left unacknowledged and
    /// is read again on the next start.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.source.name().to_owned();
        tracing::info!(source = %name, pipelines = self.pipelines.len(), "source started");
        let (losses, health, rewinder) = (self.losses.clone(), self.health.clone(), self.source.rewinder());
        let watermarks = Arc::new(Watermarks::new(&name, &self.pipelines, losses, health, rewinder));
        let watch = tokio::spawn(watermarks.clone().watch(shutdown.clone()));
        let (inbox, inbox_receiver) = Inbox::new();
        let mut workers = Vec::new();
        let mut worker_tasks = Vec::new();
        for pipeline in &self.pipelines {
            let (worker, task) = Worker::spawn(pipeline.clone(), inbox.clone(), shutdown.clone());
            workers.push(worker);
            worker_tasks.push(task);
        }
        // Where the source allows it, batches are settled on a task of their
        // own while reading goes on; otherwise each batch is settled before the
        // next is read.
        let read_ahead = self.source.read_ahead();
        let (settler, mut own_inbox, unsettled) = match (read_ahead, self.source.acker()) {
            (Some(_), Some(acker)) => {
                let task = tokio::spawn(settle_in_order(acker, inbox_receiver, watermarks.clone(), shutdown.clone()));
                (Some(task), None, Arc::new(Semaphore::new(MAX_UNSETTLED_BATCHES)))
            }
            _ => (None, Some(inbox_receiver), Arc::new(Semaphore::new(1))),
        };
        let mut ledger = Ledger::default();
        let mut failures = 0u32;
        let mut seq = 0u64;
        while !shutdown.is_cancelled() {
            let waiting = Instant::now();
            let permit = loop {
                tokio::select! {
                    permit = unsettled.clone().acquire_owned() => break Some(permit),
                    _ = shutdown.cancelled() => break None,
                    // Every batch read ahead is unsettled: the source hears how long it waits.
                    _ = tokio::time::sleep(STALL_CHECK) => self.source.stalled(waiting.elapsed()),
                }
            };
            let Some(Ok(permit)) = permit else { break };
            let staged = match gather(&mut self.source, &self.pipelines, &self.routes, &workers, read_ahead).await {
                Ok(staged) => staged,
                // The source waited on the batch itself and holds it: read again at once.
                Err(e @ SourceError::NotVisible { .. }) => {
                    self.health.failed(&e);
                    tracing::warn!(source = %name, error = %e, "batch held until its transactions are visible");
                    continue;
                }
                Err(e) => {
                    self.health.failed(&e);
                    failures += 1;
                    tracing::warn!(source = %name, error = %e, "source unavailable; retrying");
                    sleep_unless(&shutdown, backoff(failures)).await;
                    continue;
                }
            };
            self.health.ok();
            self.health.set_busy(self.source.busy());
            let gaps = self.source.take_gaps();
            if !gaps.is_empty() {
                self.record_gaps(gaps, &shutdown).await;
            }
            failures = 0;
            if staged.records.is_empty() {
                continue;
            }
            seq += 1;
            let Staged { records, letters, planning } = staged;
            let waiting = planning.iter().filter(|p| p.is_some()).count();
            let mut batch = Unsettled::new(seq, records, letters, waiting);
            batch.permit = Some(permit);
            inbox.batch(batch);
            for (worker, planning) in workers.iter().zip(planning) {
                if let Some(planning) = planning {
                    worker.send(seq, planning);
                }
            }
            if let Some(inbox_receiver) = &mut own_inbox {
                // Settled here, on the source, before anything more is read.
                let dispatched = Instant::now();
                let settled = loop {
                    match ledger.ready() {
                        Some(Ok(batch)) => {
                            let acks = Acks::Source(&mut self.source);
                            break settle(acks, &batch.records, batch.letters, &watermarks, &shutdown).await;
                        }
                        Some(Err(interrupted)) => break Err(interrupted),
                        None => match tokio::time::timeout(STALL_CHECK, inbox_receiver.recv()).await {
                            Ok(Some(message)) => ledger.hear(message),
                            Ok(None) => break Ok(()),
                            Err(_) => self.source.stalled(dispatched.elapsed()),
                        },
                    }
                };
                if settled.is_err() {
                    tracing::info!(source = %name, "shutdown during a failing batch; left pending for the next start");
                    break;
                }
            }
        }
        // Workers finish what they were given; the settler then settles it.
        drop(workers);
        drop(inbox);
        for task in worker_tasks {
            joined(task).await;
        }
        if let Some(settler) = settler {
            joined(settler).await;
        }
        watch.abort();
        watermarks.stop().await;
        self.source.close().await;
        tracing::info!(source = %name, "source stopped");
    }
}

impl SourceRunner {
    /// Logs and counts records lost before they were read, records in the
    /// caches that the source's pipelines owe a repair (retried until they
    /// answer), and only then lets the source move past the gaps.
    async fn record_gaps(&mut self, gaps: Vec<String>, shutdown: &CancellationToken) {
        let name = self.source.name().to_owned();
        for gap in &gaps {
            tracing::error!(source = %name, "{gap}; the pipelines fed by it are repaired");
            metrics::counter!(crate::metrics::EVENT_GAPS_TOTAL, "source" => name.clone()).increment(1);
        }
        let why = format!("source '{name}' lost change records before they were read");
        let mut failures = 0;
        while let Err(e) = mark_repairs(&self.pipelines, &why).await {
            failures += 1;
            tracing::warn!(source = %name, error = %e, "recording a repair failed; retrying");
            sleep_unless(shutdown, backoff(failures)).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
        for gap in gaps {
            self.losses.report(Loss::Events(gap));
        }
        self.source.gaps_recorded().await;
    }
}

/// Reads the next batch: one read, or, where the source allows reading
/// ahead, reads until the pipelines that are not failing are ready for more
/// and the last read was not full (a backlog keeps the batch growing, so a hot
/// row's changes are recomputed once), up to the batch limits. A read after
/// the first waits only briefly for new records, so what was gathered is not
/// held back by a source that went quiet. Each read's
/// records are decoded while the next read is in flight; their keys are
/// planned on the pipelines' own tasks. A read already started is always
/// awaited: Redis may have delivered its entries to us.
async fn gather(
    source: &mut Source,
    pipelines: &[Arc<Pipeline>],
    routes: &HashMap<String, Vec<usize>>,
    workers: &[Worker],
    limits: Option<ReadAhead>,
) -> Result<Staged, SourceError> {
    let mut staging = Staging::new(pipelines);
    let mut undecoded: Vec<SourceRecord> = Vec::new();
    let mut first = true;
    loop {
        let decode = async { staging.add(routes, std::mem::take(&mut undecoded)) };
        let read =
            async { if std::mem::take(&mut first) { source.next_batch().await } else { source.read_more().await } };
        // `join!` polls the read first, so its command is sent before decoding starts.
        let (read, ()) = tokio::join!(read, decode);
        match read {
            Ok(read) => {
                let caught_up = read.is_empty();
                undecoded = read;
                let Some(limits) = limits else { break };
                let full = undecoded.len() >= limits.full_read;
                let gathered = staging.len() + undecoded.len();
                let bytes = staging.bytes() + undecoded.iter().map(SourceRecord::bytes).sum::<usize>();
                let ready = workers.iter().all(|worker| worker.ready_for_more());
                if caught_up || gathered >= limits.batch || bytes >= limits.bytes || (ready && !full) {
                    break;
                }
            }
            Err(e) if staging.len() == 0 => return Err(e),
            // Records gathered so far are ours now and go on; the failing read is retried after them.
            Err(e) => {
                tracing::warn!(error = %e, "read-ahead failed; applying what was read");
                break;
            }
        }
    }
    staging.add(routes, undecoded);
    Ok(staging.staged().await)
}

fn backoff(failures: u32) -> Duration {
    SOURCE_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(MAX_SOURCE_RETRY)
}

async fn sleep_unless(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
