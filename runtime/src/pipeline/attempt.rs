//! One attempt at a batch: the plugin's keys for its events, then `recompute`
//! in chunks whose writes overlap the next chunk's queries. A fan-out batch
//! whose keys pass `max_batch_keys` is applied in consecutive parts, so the
//! keys held in memory stay bounded.

use std::time::Instant;

use futures::future::BoxFuture;

use super::config::OnChange;
use super::failure::ApplyError;
use super::key_plan::KeyPlan;
use super::plan_ahead::plan_keys;
use super::running::{Generation, Pipeline};
use crate::clock::now_ms;
use crate::contract::Outcome;
use crate::event::ChangeEvent;
use crate::sink::{KeyAction, KeyVersion, KeyWrite, SinkError, VersionKind, WriteReport};

impl Pipeline {
    /// Keys for every event on the recompute instance, then [`Self::execute`],
    /// in parts of at most `max_batch_keys` keys.
    pub(super) async fn apply(
        &self,
        generation: &Generation,
        events: &[&ChangeEvent],
    ) -> Result<WriteReport, ApplyError> {
        let limit = generation.config.max_batch_keys;
        let mut report = WriteReport::default();
        let mut plan = KeyPlan::default();
        let mut planned_events = 0;
        for event in events {
            let mut instance = generation.instance.lock().await;
            plan_keys(generation, &mut instance, &mut plan, event).await?;
            drop(instance);
            planned_events += 1;
            if plan.len() >= limit {
                report.add(&self.execute(generation, std::mem::take(&mut plan), planned_events).await?);
                planned_events = 0;
            }
        }
        if planned_events > 0 {
            report.add(&self.execute(generation, plan, planned_events).await?);
        }
        Ok(report)
    }

    /// Recomputes (or, for `invalidate`, deletes) the planned keys and writes them.
    pub(super) async fn execute(
        &self,
        generation: &Generation,
        plan: KeyPlan,
        events: usize,
    ) -> Result<WriteReport, ApplyError> {
        self.stats().planned(events, plan.named(), plan.len());
        if plan.is_empty() {
            return Ok(WriteReport::default());
        }
        let mut instance = generation.instance.lock().await;
        let label = instance.label();
        match generation.config.on_change {
            OnChange::Invalidate => {
                drop(instance);
                let read_at_ms = now_ms();
                let writes: Vec<KeyWrite> =
                    plan.keys().iter().map(|key| planned_write(&plan, key, KeyAction::Delete, read_at_ms)).collect();
                Ok(generation.writer.write(&label, &writes).await?)
            }
            OnChange::Recompute => {
                let mut report = WriteReport::default();
                let mut writing: Option<BoxFuture<'_, Result<WriteReport, SinkError>>> = None;
                for chunk in plan.keys().chunks(generation.config.recompute_batch) {
                    // Stamped before the call: the value reflects the database at least as of now.
                    let read_at_ms = now_ms();
                    let recompute = async {
                        let started = Instant::now();
                        let outcomes = instance.recompute(chunk).await;
                        self.stats().recomputed(started.elapsed());
                        outcomes
                    };
                    // The previous chunk's writes go to Redis while this chunk's
                    // queries run; a failure of either fails the attempt, and a
                    // retry rewrites nothing twice (the guard skips equal positions).
                    let outcomes = match writing.take() {
                        Some(write) => {
                            let (written, outcomes) = tokio::join!(write, recompute);
                            report.add(&written?);
                            outcomes
                        }
                        None => recompute.await,
                    };
                    let mut writes = Vec::with_capacity(chunk.len());
                    for (key, outcome) in chunk.iter().zip(outcomes?) {
                        let action = match outcome {
                            Outcome::Put(value) => KeyAction::Put(value),
                            Outcome::Delete => KeyAction::Delete,
                            Outcome::Keep => continue,
                        };
                        writes.push(planned_write(&plan, key, action, read_at_ms));
                    }
                    let (writer, label) = (&generation.writer, label.as_str());
                    writing = Some(Box::pin(async move { writer.write(label, &writes).await }));
                }
                drop(instance);
                if let Some(write) = writing {
                    report.add(&write.await?);
                }
                Ok(report)
            }
        }
    }
}

fn planned_write(plan: &KeyPlan, key: &str, action: KeyAction, read_at_ms: u64) -> KeyWrite {
    let version = plan.version(key).map(|v| KeyVersion { read_at_ms, ..v.clone() });
    KeyWrite {
        key: key.to_owned(),
        action,
        version: version.unwrap_or(KeyVersion {
            position: String::new(),
            kind: VersionKind::Change,
            committed_at_ms: 0,
            read_at_ms,
        }),
    }
}
