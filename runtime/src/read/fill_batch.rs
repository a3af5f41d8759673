//! Misses of different keys of one pipeline recomputed together: while one
//! `recompute` call runs, the keys that miss meanwhile queue, and the next call
//! takes them all (up to `recompute_batch`), so a burst of cold keys costs a
//! few queries instead of one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::ReadError;
use crate::pipeline::{Pipeline, RepairError, RepairKey};

type Reply = oneshot::Sender<Result<(), ReadError>>;

/// Each pipeline's queue of keys waiting to be recomputed.
#[derive(Default)]
pub(super) struct FillBatches {
    queues: Mutex<HashMap<String, Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(RepairKey, Reply)>,
    /// A task is taking batches off this queue.
    draining: bool,
}

impl FillBatches {
    /// Recomputes and writes `key` as a repair, with whatever else is waiting;
    /// `measured` hears each call's duration.
    pub(super) async fn repair(
        self: &Arc<Self>,
        pipeline: &Arc<Pipeline>,
        key: RepairKey,
        measured: impl Fn(Duration) + Send + 'static,
    ) -> Result<(), ReadError> {
        let (reply, answer) = oneshot::channel();
        let start_draining = {
            let mut queues = self.lock();
            let queue = queues.entry(pipeline.name().to_owned()).or_default();
            queue.waiting.push((key, reply));
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_draining {
            tokio::spawn(self.clone().drain(pipeline.clone(), measured));
        }
        answer.await.unwrap_or_else(|_| Err(ReadError::Cache("the fill task ended without an answer".to_owned())))
    }

    /// Takes batches off the pipeline's queue until it is empty.
    async fn drain(self: Arc<Self>, pipeline: Arc<Pipeline>, measured: impl Fn(Duration)) {
        let limit = pipeline.config().recompute_batch.max(1);
        loop {
            let batch: Vec<(RepairKey, Reply)> = {
                let mut queues = self.lock();
                let queue = queues.entry(pipeline.name().to_owned()).or_default();
                if queue.waiting.is_empty() {
                    queue.draining = false;
                    return;
                }
                let take = queue.waiting.len().min(limit);
                queue.waiting.drain(..take).collect()
            };
            let started = Instant::now();
            settle(&pipeline, batch).await;
            measured(started.elapsed());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Repairs a batch and answers its readers. A failing batch is split in
/// halves and each tried again, so a bad key fails only its own reader, in
/// about 2·log2(n) calls.
fn settle<'a>(pipeline: &'a Pipeline, batch: Vec<(RepairKey, Reply)>) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let keys: Vec<RepairKey> = batch.iter().map(|(key, _)| key.clone()).collect();
        match pipeline.repair(&keys).await {
            Ok(_) => batch.into_iter().for_each(|(_, reply)| drop(reply.send(Ok(())))),
            Err(e) if batch.len() == 1 => {
                batch.into_iter().for_each(|(_, reply)| drop(reply.send(Err(read_error(&e)))))
            }
            Err(_) => {
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                settle(pipeline, first).await;
                settle(pipeline, second).await;
            }
        }
    })
}

fn read_error(e: &RepairError) -> ReadError {
    match e {
        RepairError::Cache { .. } => ReadError::Cache(e.to_string()),
        RepairError::Plugin { .. } => ReadError::Recompute(e.to_string()),
    }
}
