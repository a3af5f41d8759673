//! A batch on its way in: each read's records are decoded and routed as they
//! arrive while their keys are planned, each pipeline on a task of its own, so
//! reading, planning and writing the batch before can run on different cores
//! and one pipeline's slow `keys` never delays another's planning.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::commits::EventCommit;
use super::plan_ahead::Planning;
use super::running::Pipeline;
use crate::event::ChangeEvent;
use crate::event::Op;
use crate::event::debezium::{Decoded, decode_stream_entry_with_commit};
use crate::source::{DeadLetter, RecordBody, SourceRecord};

/// A batch read, decoded, routed and planned.
pub(super) struct Staged {
    pub(super) records: Vec<SourceRecord>,
    /// Records that could not be decoded.
    pub(super) letters: Vec<DeadLetter>,
    /// Per pipeline (by index), once an event is routed to it.
    pub(super) planning: Vec<Option<Planning>>,
}

/// Events of one read routed to one pipeline: (record index, event, what it says of its transaction).
type Routed = Vec<(usize, ChangeEvent, EventCommit)>;

/// A pipeline's planning task and the way to feed it.
struct Planner {
    events: mpsc::UnboundedSender<Routed>,
    task: JoinHandle<Planning>,
}

/// A batch being gathered.
pub(super) struct Staging {
    records: Vec<SourceRecord>,
    letters: Vec<DeadLetter>,
    /// Bytes of the records' fields gathered so far.
    bytes: usize,
    pipelines: Vec<Arc<Pipeline>>,
    planners: Vec<Option<Planner>>,
}

impl Staging {
    /// An empty batch; a pipeline's planning task starts with its first event.
    pub(super) fn new(pipelines: &[Arc<Pipeline>]) -> Self {
        Self {
            records: Vec::new(),
            letters: Vec::new(),
            bytes: 0,
            pipelines: pipelines.to_vec(),
            planners: pipelines.iter().map(|_| None).collect(),
        }
    }

    /// Records gathered so far.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Bytes of the records' fields gathered so far.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Decodes `records` and routes them by table; their keys are planned on
    /// the pipelines' planning tasks.
    pub(super) fn add(&mut self, routes: &HashMap<String, Vec<usize>>, records: Vec<SourceRecord>) {
        let offset = self.records.len();
        let mut routed: Vec<Routed> = vec![Vec::new(); self.pipelines.len()];
        // `schema.table`, written anew for each record without allocating.
        let mut table = String::new();
        for (index, record) in records.iter().enumerate() {
            let index = offset + index;
            self.bytes += record.bytes();
            let decoded = match &record.body {
                RecordBody::Fields(fields) => decode_stream_entry_with_commit(&record.stream, fields),
                // The capture decoded it already, and held it until it was visible.
                RecordBody::Change(change) => Ok((Decoded::Change(change.event.clone()), None)),
            };
            match decoded {
                Ok((Decoded::Change(event), mark)) => {
                    let commit = match (mark, &record.body) {
                        (Some(mark), _) => EventCommit::Named(mark),
                        (None, RecordBody::Change(_)) => EventCommit::Checked,
                        (None, _) if event.op == Op::SnapshotRead => EventCommit::Checked,
                        (None, _) => EventCommit::Unnamed,
                    };
                    table.clear();
                    table.push_str(event.schema.as_deref().unwrap_or(""));
                    table.push('.');
                    table.push_str(&event.table);
                    match routes.get(table.as_str()) {
                        Some(targets) => {
                            let (&last, others) = targets.split_last().expect("a route names at least one pipeline");
                            for &target in others {
                                routed[target].push((index, event.clone(), commit.clone()));
                            }
                            routed[last].push((index, event, commit));
                        }
                        None => {
                            tracing::debug!(stream = %record.stream, id = %record.id, %table, "no pipeline for table; acked")
                        }
                    }
                }
                Ok((Decoded::Skip(reason), _)) => {
                    tracing::debug!(stream = %record.stream, id = %record.id, reason = reason.as_str(), "record skipped");
                }
                Err(e) => {
                    tracing::error!(stream = %record.stream, id = %record.id, error = %e, "undecodable record; dead-lettered");
                    self.letters.push(DeadLetter { record: index, pipeline: None, error: e.to_string(), attempts: 1 });
                }
            }
        }
        self.records.extend(records);
        for (index, events) in routed.into_iter().enumerate().filter(|(_, events)| !events.is_empty()) {
            let pipeline = &self.pipelines[index];
            let planner = self.planners[index].get_or_insert_with(|| plan(pipeline.clone()));
            // The task lives until `staged` drops the sender, so this cannot fail.
            let _ = planner.events.send(events);
        }
    }

    /// The batch, once every key of it is planned.
    pub(super) async fn staged(self) -> Staged {
        let Staging { records, letters, planners, .. } = self;
        let mut planning = Vec::with_capacity(planners.len());
        for planner in planners {
            planning.push(match planner {
                Some(Planner { events, task }) => {
                    drop(events);
                    Some(joined(task).await)
                }
                None => None,
            });
        }
        Staged { records, letters, planning }
    }
}

/// A pipeline's planning task: plans each read's events in arrival order.
fn plan(pipeline: Arc<Pipeline>) -> Planner {
    let (events, mut arriving) = mpsc::unbounded_channel::<Routed>();
    let task = tokio::spawn(async move {
        let mut planning = pipeline.start_planning();
        while let Some(events) = arriving.recv().await {
            planning.add(events).await;
        }
        planning
    });
    Planner { events, task }
}

/// A task's result; a panic in it is the caller's own.
pub(super) async fn joined<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Nothing aborts these tasks: only a runtime shutting down cancels them,
        // and it drops the caller next.
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::joined;

    #[tokio::test]
    async fn a_cancelled_task_leaves_its_caller_waiting_instead_of_panicking() {
        let task = tokio::spawn(std::future::pending::<()>());
        let cancel = task.abort_handle();
        let caller = tokio::spawn(joined(task));
        cancel.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!caller.is_finished(), "the caller neither panicked nor returned");
        caller.abort();
    }

    #[tokio::test]
    async fn a_panic_in_the_task_is_the_callers() {
        let task = tokio::spawn(async { panic!("planner broke") });
        let caller = tokio::spawn(joined(task)).await;
        assert!(caller.is_err_and(|e| e.is_panic()));
    }
}
