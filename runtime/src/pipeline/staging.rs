//! A batch on its way in: each read's records are decoded and routed as they
//! arrive while their keys are planned on a task of their own, so reading,
//! planning and writing the batch before can run on different cores.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::batch::Pipeline;
use super::planning::Planning;
use crate::event::ChangeEvent;
use crate::event::debezium::{Decoded, decode_stream_entry};
use crate::source::RawRecord;

/// A record to dead-letter, by index into the batch.
pub(super) struct Letter {
    pub(super) record: usize,
    pub(super) pipeline: Option<String>,
    pub(super) error: String,
    pub(super) attempts: u32,
}

/// A batch read, decoded, routed and planned.
pub(super) struct Staged {
    pub(super) records: Vec<RawRecord>,
    /// Records that could not be decoded.
    pub(super) letters: Vec<Letter>,
    /// Per pipeline (by index), once an event is routed to it.
    pub(super) planning: Vec<Option<Planning>>,
}

/// Events routed from one read, per pipeline (by index).
type Routed = Vec<Vec<(usize, ChangeEvent)>>;

/// A batch being gathered.
pub(super) struct Staging {
    records: Vec<RawRecord>,
    letters: Vec<Letter>,
    /// How many pipelines the runner feeds.
    pipelines: usize,
    routed: mpsc::UnboundedSender<Routed>,
    planner: JoinHandle<Vec<Option<Planning>>>,
}

impl Staging {
    /// An empty batch with its planning task started.
    pub(super) fn new(pipelines: &[Arc<Pipeline>]) -> Self {
        let (routed, arriving) = mpsc::unbounded_channel();
        let planner = tokio::spawn(plan(pipelines.to_vec(), arriving));
        Self { records: Vec::new(), letters: Vec::new(), pipelines: pipelines.len(), routed, planner }
    }

    /// Records gathered so far.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Decodes `records` and routes them by table; their keys are planned on
    /// the planning task.
    pub(super) fn add(&mut self, routes: &HashMap<String, Vec<usize>>, records: Vec<RawRecord>) {
        let offset = self.records.len();
        let mut routed: Routed = vec![Vec::new(); self.pipelines];
        for (index, record) in records.iter().enumerate() {
            let index = offset + index;
            match decode_stream_entry(&record.stream, &record.fields) {
                Ok(Decoded::Change(event)) => {
                    let table = format!("{}.{}", event.schema.as_deref().unwrap_or(""), event.table);
                    match routes.get(&table) {
                        Some(targets) => {
                            let (&last, others) = targets.split_last().expect("a route names at least one pipeline");
                            for &target in others {
                                routed[target].push((index, event.clone()));
                            }
                            routed[last].push((index, event));
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
                    self.letters.push(Letter { record: index, pipeline: None, error: e.to_string(), attempts: 1 });
                }
            }
        }
        self.records.extend(records);
        if routed.iter().any(|events| !events.is_empty()) {
            // The planner lives until `staged` drops the sender, so this cannot fail.
            let _ = self.routed.send(routed);
        }
    }

    /// The batch, once every key of it is planned.
    pub(super) async fn staged(self) -> Staged {
        let Staging { records, letters, routed, planner, .. } = self;
        drop(routed);
        Staged { records, letters, planning: joined(planner).await }
    }
}

/// The planning task: plans each read's events in arrival order.
async fn plan(pipelines: Vec<Arc<Pipeline>>, mut arriving: mpsc::UnboundedReceiver<Routed>) -> Vec<Option<Planning>> {
    let mut planning: Vec<Option<Planning>> = pipelines.iter().map(|_| None).collect();
    while let Some(routed) = arriving.recv().await {
        for (index, events) in routed.into_iter().enumerate().filter(|(_, events)| !events.is_empty()) {
            planning[index].get_or_insert_with(|| pipelines[index].start_planning()).add(events).await;
        }
    }
    planning
}

/// A task's result; a panic in it is the caller's own.
pub(super) async fn joined<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
