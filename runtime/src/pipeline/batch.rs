//! One pipeline's share of a batch: plan keys with the plugin, recompute, write.
//! Permanent failures are retried, then isolated to the records that cause them;
//! transient ones (database or Redis down) are waited out without limit.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::config::{OnChange, PipelineConfig};
use super::plan::KeyPlan;
use super::planning::{Planning, plan_keys};
use super::stats::PipelineStats;
use crate::event::ChangeEvent;
use crate::plugin::bindings::Outcome;
use crate::plugin::{CallError, PluginHandle};
use crate::sink::{KeyAction, KeyWrite, RedisWriter, SinkError, WriteReport};

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why one attempt at a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A plugin call failed.
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The cache write failed.
    #[error("cache write failed: {0}")]
    Sink(#[from] SinkError),
}

impl ApplyError {
    /// Transient failures never count as attempts and are never dead-lettered.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Plugin(e) => e.is_transient(),
            ApplyError::Sink(e) => e.is_transient(),
        }
    }
}

/// A record this pipeline gave up on.
#[derive(Debug)]
pub struct Failure {
    /// Index of the record in the source batch.
    pub record: usize,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// Shutdown was requested while the batch could not complete; nothing of it may be acked.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown")]
pub struct Interrupted;

/// What a pipeline runs a batch with; replaced as a whole by a reload.
pub(super) struct Generation {
    pub(super) config: PipelineConfig,
    instance: Mutex<PluginHandle>,
    /// Plans the next batch's keys while `instance` recomputes this one.
    planner: Option<Mutex<PluginHandle>>,
    writer: RedisWriter,
}

impl Generation {
    fn new(config: PipelineConfig, instance: PluginHandle, writer: RedisWriter) -> Self {
        let planner = instance.planner().map(Mutex::new);
        Self { config, instance: Mutex::new(instance), planner, writer }
    }

    /// The instance `keys` is called on ahead of recomputing.
    pub(super) fn planner(&self) -> &Mutex<PluginHandle> {
        self.planner.as_ref().unwrap_or(&self.instance)
    }
}

/// A running pipeline.
pub struct Pipeline {
    name: String,
    tables: HashSet<String>,
    current: RwLock<Arc<Generation>>,
    stats: Arc<PipelineStats>,
}

impl Pipeline {
    /// Wires a pipeline from its parts; the instance should already be `init`-ed.
    pub fn new(name: &str, config: PipelineConfig, instance: PluginHandle, writer: RedisWriter) -> Self {
        let tables = config.tables.iter().cloned().collect();
        let stats = Arc::new(PipelineStats::new(name, &config.plugin));
        record_plugin(&stats, &instance);
        let current = Generation::new(config, instance, writer);
        Self { name: name.to_owned(), tables, current: RwLock::new(Arc::new(current)), stats }
    }

    /// Swaps in a new configuration and plugin instance (already `init`-ed) at
    /// once. Batches already running finish on the ones they started with; the
    /// routing (`source`, `tables`) is fixed for the pipeline's life.
    pub fn replace(&self, config: PipelineConfig, instance: PluginHandle, writer: RedisWriter) {
        record_plugin(&self.stats, &instance);
        let next = Arc::new(Generation::new(config, instance, writer));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    pub(super) fn generation(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The pipeline's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration as of now.
    pub fn config(&self) -> PipelineConfig {
        self.generation().config.clone()
    }

    /// Its live figures (metrics and status page).
    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// The `schema.table` names it handles.
    pub fn tables(&self) -> &HashSet<String> {
        &self.tables
    }

    /// Recomputes and writes a planned batch (record index, event). Returns
    /// the records that failed permanently, to be dead-lettered; everything
    /// else was written.
    #[tracing::instrument(skip_all, fields(pipeline = %self.name, plugin = tracing::field::Empty, events = planning.events.len()))]
    pub async fn finish(&self, planning: Planning, shutdown: &CancellationToken) -> Result<Vec<Failure>, Interrupted> {
        // Every attempt of this batch runs on the version live when it was planned.
        let Planning { generation, events, plan } = planning;
        let max_attempts = generation.config.max_attempts;
        tracing::Span::current().record("plugin", generation.config.plugin.as_str());
        let all: Vec<&ChangeEvent> = events.iter().map(|(_, e)| e).collect();
        let error = match self.retry(&generation, &all, max_attempts, shutdown, Some(plan)).await? {
            None => {
                self.stats.finished(&events, &[]);
                return Ok(Vec::new());
            }
            Some(error) => error,
        };
        if events.len() == 1 {
            self.stats.finished(&events, &[events[0].0]);
            return Ok(vec![self.failure(events[0].0, &events[0].1, &error, max_attempts)]);
        }
        // Find the records that fail on their own so the rest are still applied.
        tracing::warn!(pipeline = %self.name, records = events.len(), error = %error, "batch keeps failing; applying its records one by one");
        let mut failures = Vec::new();
        for (record, event) in &events {
            if let Some(error) = self.retry(&generation, &[event], 1, shutdown, None).await? {
                failures.push(self.failure(*record, event, &error, max_attempts + 1));
            }
        }
        self.stats.finished(&events, &failures.iter().map(|f| f.record).collect::<Vec<_>>());
        Ok(failures)
    }

    fn failure(&self, record: usize, event: &ChangeEvent, error: &ApplyError, attempts: u32) -> Failure {
        let table = event.table.as_str();
        tracing::error!(pipeline = %self.name, table, key = %event.key, error = %error, attempts, "record failed permanently; dead-lettered");
        Failure { record, error: error.to_string(), attempts }
    }

    /// Tries up to `attempts` times, the first with `planned` when given;
    /// transient errors are retried without counting. Returns the last
    /// permanent error, or `None` on success.
    async fn retry(
        &self,
        generation: &Generation,
        events: &[&ChangeEvent],
        attempts: u32,
        shutdown: &CancellationToken,
        mut planned: Option<Result<KeyPlan, ApplyError>>,
    ) -> Result<Option<ApplyError>, Interrupted> {
        let mut failed = 0;
        let mut transient_waits = 0u32;
        loop {
            // The first attempt uses the keys planned ahead; retries plan again.
            let attempt = match planned.take() {
                Some(Ok(plan)) => self.execute(generation, plan, events.len()).await,
                Some(Err(error)) => Err(error),
                None => self.apply(generation, events).await,
            };
            let error = match attempt {
                Ok(report) => {
                    self.stats.written(&report);
                    tracing::debug!(pipeline = %self.name, events = events.len(), applied = report.applied, deleted = report.deleted, stale = report.stale, "batch written");
                    return Ok(None);
                }
                Err(error) => error,
            };
            self.stats.failed(&error);
            let delay = if error.is_transient() {
                transient_waits += 1;
                tracing::warn!(pipeline = %self.name, error = %error, "dependency unavailable; waiting, nothing acked");
                backoff(generation.config.retry_backoff, transient_waits)
            } else {
                failed += 1;
                if failed >= attempts {
                    return Ok(Some(error));
                }
                tracing::warn!(pipeline = %self.name, error = %error, attempt = failed, "batch failed; retrying");
                backoff(generation.config.retry_backoff, failed)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Interrupted),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt: keys for every event, then [`Self::execute`].
    async fn apply(&self, generation: &Generation, events: &[&ChangeEvent]) -> Result<WriteReport, ApplyError> {
        let mut plan = KeyPlan::default();
        let mut instance = generation.instance.lock().await;
        for event in events {
            plan_keys(&mut instance, &mut plan, event).await?;
        }
        drop(instance);
        self.execute(generation, plan, events.len()).await
    }

    /// Recomputes (or, for `invalidate`, deletes) the planned keys and writes them.
    async fn execute(&self, generation: &Generation, plan: KeyPlan, events: usize) -> Result<WriteReport, ApplyError> {
        self.stats.planned(events, plan.named(), plan.len());
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
                        self.stats.recomputed(started.elapsed());
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

/// Tells the figures which plugin version now runs and since when.
fn record_plugin(stats: &PipelineStats, instance: &PluginHandle) {
    let loaded_at = match instance {
        PluginHandle::Wasm(wasm) => wasm.plugin().loaded_at,
        PluginHandle::Native(_) => SystemTime::now(),
    };
    let label = instance.label();
    stats.plugin_loaded(label.rsplit_once('@').map_or("", |(_, v)| v), loaded_at);
}

fn planned_write(plan: &KeyPlan, key: &str, action: KeyAction, read_at_ms: u64) -> KeyWrite {
    let version = plan.version(key).map(|v| v.at(read_at_ms));
    KeyWrite {
        key: key.to_owned(),
        action,
        version: version.unwrap_or(crate::sink::KeyVersion {
            position: String::new(),
            snapshot: false,
            committed_at_ms: 0,
            read_at_ms,
        }),
    }
}

fn backoff(first: Duration, attempt: u32) -> Duration {
    first.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let first = Duration::from_millis(100);
        assert_eq!(backoff(first, 1), Duration::from_millis(100));
        assert_eq!(backoff(first, 3), Duration::from_millis(400));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
    }
}
