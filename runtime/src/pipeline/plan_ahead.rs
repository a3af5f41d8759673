//! The first stage of a batch: the plugin's `keys` for each event, gathered
//! into one key plan. It runs on the pipeline's planning instance, so the next
//! batch is planned while this one is recomputed and written. A pipeline whose
//! batches keep failing is not planned ahead, nor a plan past `max_batch_keys`:
//! the batch is then planned when it runs, in bounded parts.

use std::sync::Arc;

use super::commits::{Commits, EventCommit};
use super::failure::ApplyError;
use super::key_plan::KeyPlan;
use super::running::{Generation, Pipeline};
use crate::event::{ChangeEvent, Op};
use crate::plugin::{CallError, PluginHandle};

/// One pipeline's share of a batch with its keys planned; built up read by
/// read, then handed to [`Pipeline::finish`].
pub struct Planning {
    pub(super) generation: Arc<Generation>,
    /// (record index in the source batch, event).
    pub(super) events: Vec<(usize, ChangeEvent)>,
    /// The keys, or the error that stopped planning (the batch's first
    /// attempt); `None` when the batch is planned as it runs.
    pub(super) plan: Option<Result<KeyPlan, ApplyError>>,
    /// The transactions the events came from, for the visibility gate.
    pub(super) commits: Commits,
}

impl Pipeline {
    /// Starts planning a batch on the generation live now; the batch runs on it to the end.
    pub fn start_planning(&self) -> Planning {
        let plan = (!self.struggling()).then(|| Ok(KeyPlan::default()));
        Planning { generation: self.generation(), events: Vec::new(), plan, commits: Commits::default() }
    }
}

impl Planning {
    /// Adds events and plans their keys. After a failure the events are only
    /// kept: the failed plan is the first attempt, and retries plan anew.
    pub async fn add(&mut self, routed: Vec<(usize, ChangeEvent, EventCommit)>) {
        let mut events = Vec::with_capacity(routed.len());
        for (record, mut event, commit) in routed {
            self.commits.add(&commit);
            self.generation.ranks.rank(&mut event).await;
            self.generation.ranks.check_server(&event, &commit);
            events.push((record, event));
        }
        if let Some(Ok(plan)) = &mut self.plan {
            let limit = self.generation.config.max_batch_keys;
            let mut planner = self.generation.planner().lock().await;
            let mut outcome = Ok(true);
            for (_, event) in &events {
                if let Err(error) = plan_keys(&self.generation, &mut planner, plan, event).await {
                    outcome = Err(error);
                    break;
                }
                if plan.len() > limit {
                    outcome = Ok(false);
                    break;
                }
            }
            drop(planner);
            match outcome {
                Ok(true) => {}
                Ok(false) => self.plan = None,
                Err(error) => self.plan = Some(Err(error)),
            }
        }
        self.events.extend(events);
    }
}

/// Adds the keys `event` touches to `plan`. A truncate names no row, so for a
/// pipeline that owns `key_patterns` it touches every key it owns in the cache.
pub(super) async fn plan_keys(
    generation: &Generation,
    instance: &mut PluginHandle,
    plan: &mut KeyPlan,
    event: &ChangeEvent,
) -> Result<(), ApplyError> {
    if event.op == Op::Truncate && !generation.config.key_patterns.is_empty() {
        for key in generation.owned_keys().await? {
            plan.add(key, event);
        }
        return Ok(());
    }
    for key in instance.keys(event).await? {
        if key.is_empty() {
            return Err(CallError::Contract {
                plugin: instance.label(),
                call: "keys",
                message: "returned an empty key".to_owned(),
            }
            .into());
        }
        plan.add(key, event);
    }
    Ok(())
}
