//! A pipeline's worker: finishes (recomputes and writes) the pipeline's share
//! of each batch in read order, on a task of its own, so a pipeline that keeps
//! failing holds back the others on its source only once it is a few batches
//! behind them, never for the length of its retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::failure::Interrupted;
use super::ledger::{Done, Inbox};
use super::plan_ahead::Planning;
use super::running::Pipeline;

/// One pipeline's worker.
pub(super) struct Worker {
    pipeline: Arc<Pipeline>,
    jobs: mpsc::UnboundedSender<(u64, Planning)>,
    /// Batches sent and not finished yet.
    queued: Arc<AtomicUsize>,
}

impl Worker {
    /// Starts the worker; each finished batch is reported to `done`.
    pub(super) fn spawn(pipeline: Arc<Pipeline>, done: Inbox, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (jobs, mut pending) = mpsc::unbounded_channel::<(u64, Planning)>();
        let queued = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (pipeline, queued) = (pipeline.clone(), queued.clone());
            async move {
                let mut interrupted = false;
                while let Some((seq, planning)) = pending.recv().await {
                    // After an interrupted batch nothing later may be acked: skip the work.
                    let result =
                        if interrupted { Err(Interrupted) } else { pipeline.finish(planning, &shutdown).await };
                    interrupted |= result.is_err();
                    queued.fetch_sub(1, Ordering::Relaxed);
                    done.done(Done { seq, result });
                }
            }
        });
        (Self { pipeline, jobs, queued }, task)
    }

    /// Queues the pipeline's share of batch `seq`.
    pub(super) fn send(&self, seq: u64, planning: Planning) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        // The worker runs until this sender is dropped, so this cannot fail.
        let _ = self.jobs.send((seq, planning));
    }

    /// True when it has nothing to do, or is stuck on a failing batch: either
    /// way, waiting for it would not make the next batch bigger usefully.
    pub(super) fn ready_for_more(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0 || self.pipeline.struggling()
    }
}
