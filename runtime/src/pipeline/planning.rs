//! The first stage of a batch: the plugin's `keys` for each event, gathered
//! into one key plan. It runs on the pipeline's planning instance, so the next
//! batch is planned while this one is recomputed and written.

use std::sync::Arc;

use super::batch::{ApplyError, Generation, Pipeline};
use super::plan::KeyPlan;
use crate::event::ChangeEvent;
use crate::plugin::{CallError, PluginHandle};

/// One pipeline's share of a batch with its keys planned; built up read by
/// read, then handed to [`Pipeline::finish`].
pub struct Planning {
    pub(super) generation: Arc<Generation>,
    /// (record index in the source batch, event).
    pub(super) events: Vec<(usize, ChangeEvent)>,
    /// The keys, or the error that stopped planning: the batch's first attempt.
    pub(super) plan: Result<KeyPlan, ApplyError>,
}

impl Pipeline {
    /// Starts planning a batch on the generation live now; the batch runs on it to the end.
    pub fn start_planning(&self) -> Planning {
        Planning { generation: self.generation(), events: Vec::new(), plan: Ok(KeyPlan::default()) }
    }
}

impl Planning {
    /// Adds events and plans their keys. After a failure the events are only
    /// kept: the failed plan is the first attempt, and retries plan anew.
    pub async fn add(&mut self, events: Vec<(usize, ChangeEvent)>) {
        if let Ok(plan) = &mut self.plan {
            let mut planner = self.generation.planner().lock().await;
            let mut failed = None;
            for (_, event) in &events {
                if let Err(error) = plan_keys(&mut planner, plan, event).await {
                    failed = Some(error);
                    break;
                }
            }
            drop(planner);
            if let Some(error) = failed {
                self.plan = Err(error);
            }
        }
        self.events.extend(events);
    }
}

/// Adds the keys `event` touches to `plan`.
pub(super) async fn plan_keys(
    instance: &mut PluginHandle,
    plan: &mut KeyPlan,
    event: &ChangeEvent,
) -> Result<(), ApplyError> {
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
