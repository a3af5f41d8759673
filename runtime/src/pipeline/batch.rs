//! One pipeline's share of a batch: plan keys with the plugin, recompute, write.
//! Failures are classified by what they mean: the batch's own ones are retried,
//! then isolated by bisection to the records that cause them; ones the
//! database or Redis cause are waited out while those fail their health checks.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::config::PipelineConfig;
use super::planning::Planning;
use super::stats::PipelineStats;
use crate::event::ChangeEvent;
use crate::plugin::{CallError, PluginHandle};
use crate::recompute::query::QueryRunner;
use crate::sink::{RedisWriter, SinkError};

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest a health check of the database or the cache may take.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Whose fault a failure is, as far as the error itself tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The batch's own (plugin error, trap, contract, a key Redis refuses).
    Batch,
    /// The database or Redis (unreachable, overloaded, refusing for now).
    Dependencies,
    /// A call cut off at its deadline while a host query ran: a query that
    /// sleeps, or a database that stopped answering; health checks tell which.
    Unclear,
}

impl ApplyError {
    /// Transient by its kind: never counted as an attempt while the database
    /// and the cache fail their health checks.
    pub fn is_transient(&self) -> bool {
        self.blame() == Blame::Dependencies
    }

    fn blame(&self) -> Blame {
        match self {
            ApplyError::Plugin(CallError::Unavailable { .. }) => Blame::Dependencies,
            ApplyError::Plugin(CallError::Timeout { in_query: true, .. }) => Blame::Unclear,
            ApplyError::Plugin(_) => Blame::Batch,
            ApplyError::Sink(e) if e.is_transient() => Blame::Dependencies,
            ApplyError::Sink(_) => Blame::Batch,
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
    pub(super) instance: Mutex<PluginHandle>,
    /// Plans the next batch's keys while `instance` recomputes this one.
    planner: Option<Mutex<PluginHandle>>,
    pub(super) writer: RedisWriter,
    /// Health-checked when a failure may be the database's.
    database: Option<QueryRunner>,
}

impl Generation {
    fn new(config: PipelineConfig, instance: PluginHandle, writer: RedisWriter, database: Option<QueryRunner>) -> Self {
        let planner = instance.planner().map(Mutex::new);
        Self { config, instance: Mutex::new(instance), planner, writer, database }
    }

    /// The instance `keys` is called on ahead of recomputing.
    pub(super) fn planner(&self) -> &Mutex<PluginHandle> {
        self.planner.as_ref().unwrap_or(&self.instance)
    }

    /// True when the database (if any) and the cache both answer a health check.
    async fn dependencies_answer(&self) -> bool {
        let database = async {
            match &self.database {
                Some(database) => database.ping(HEALTH_CHECK_TIMEOUT).await.is_ok(),
                None => true,
            }
        };
        let (database, cache) = tokio::join!(database, self.writer.check_writable(HEALTH_CHECK_TIMEOUT));
        database && cache.is_ok()
    }
}

/// A running pipeline.
pub struct Pipeline {
    name: String,
    tables: HashSet<String>,
    current: RwLock<Arc<Generation>>,
    stats: Arc<PipelineStats>,
    /// Set while a batch keeps failing: its next batches are not planned ahead.
    struggling: AtomicBool,
}

impl Pipeline {
    /// Wires a pipeline from its parts; the instance should already be `init`-ed.
    pub fn new(
        name: &str,
        config: PipelineConfig,
        instance: PluginHandle,
        writer: RedisWriter,
        database: Option<QueryRunner>,
    ) -> Self {
        let tables = config.tables.iter().cloned().collect();
        let stats = Arc::new(PipelineStats::new(name, &config.plugin));
        record_plugin(&stats, &instance);
        let current = Generation::new(config, instance, writer, database);
        Self {
            name: name.to_owned(),
            tables,
            current: RwLock::new(Arc::new(current)),
            stats,
            struggling: AtomicBool::new(false),
        }
    }

    /// Swaps in a new configuration and plugin instance (already `init`-ed) at
    /// once. Batches already running finish on the ones they started with; the
    /// routing (`source`, `tables`) is fixed for the pipeline's life.
    pub fn replace(
        &self,
        config: PipelineConfig,
        instance: PluginHandle,
        writer: RedisWriter,
        database: Option<QueryRunner>,
    ) {
        record_plugin(&self.stats, &instance);
        let next = Arc::new(Generation::new(config, instance, writer, database));
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

    /// True while a batch keeps failing (retried or isolated): planning its
    /// next batches ahead would only spend plugin calls.
    pub fn struggling(&self) -> bool {
        self.struggling.load(Ordering::Relaxed)
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
        self.stats.started();
        let all: Vec<&ChangeEvent> = events.iter().map(|(_, e)| e).collect();
        let result = self.retry(&generation, &all, max_attempts, shutdown, plan).await;
        let failures = match result {
            Ok(None) => Ok(Vec::new()),
            Ok(Some(error)) => self.isolate(&generation, &events, error, max_attempts, shutdown).await,
            Err(interrupted) => Err(interrupted),
        };
        self.struggling.store(false, Ordering::Relaxed);
        let failures = failures?;
        self.stats.finished(&events, &failures.iter().map(|f| f.record).collect::<Vec<_>>());
        Ok(failures)
    }

    /// Finds the records that fail on their own by bisection, so a poison
    /// record costs O(log n) attempts and the rest of the batch is written.
    /// Each half gets one attempt; a record that fails alone is dead-lettered.
    async fn isolate(
        &self,
        generation: &Generation,
        events: &[(usize, ChangeEvent)],
        error: ApplyError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Failure>, Interrupted> {
        if events.len() > 1 {
            tracing::warn!(pipeline = %self.name, records = events.len(), error = %error, "batch keeps failing; isolating the failing records by bisection");
        }
        let mut failures = Vec::new();
        // Depth first, first half first: failures come out in record order.
        let mut failing: VecDeque<(Range<usize>, ApplyError, u32)> =
            VecDeque::from([(0..events.len(), error, attempts)]);
        while let Some((range, error, attempts)) = failing.pop_front() {
            if range.len() <= 1 {
                let (record, event) = &events[range.start];
                failures.push(self.failure(*record, event, &error, attempts));
                continue;
            }
            let middle = range.start + range.len() / 2;
            let mut split = Vec::new();
            for half in [range.start..middle, middle..range.end] {
                let part: Vec<&ChangeEvent> = events[half.clone()].iter().map(|(_, e)| e).collect();
                if let Some(error) = self.retry(generation, &part, 1, shutdown, None).await? {
                    split.push((half, error, attempts + 1));
                }
            }
            for part in split.into_iter().rev() {
                failing.push_front(part);
            }
        }
        Ok(failures)
    }

    fn failure(&self, record: usize, event: &ChangeEvent, error: &ApplyError, attempts: u32) -> Failure {
        let table = event.table.as_str();
        tracing::error!(pipeline = %self.name, table, key = %event.key, error = %error, attempts, "record failed permanently; dead-lettered");
        Failure { record, error: error.to_string(), attempts }
    }

    /// Tries up to `attempts` times, the first with `planned` when given.
    /// Failures the database or Redis cause are retried without counting while
    /// a health check of either fails; while both answer, such failures count
    /// as the batch's own once they have lasted `max_transient_wait`, so a
    /// plugin cannot hold a batch in an endless "transient" loop. Returns the
    /// last counted error, or `None` on success.
    async fn retry(
        &self,
        generation: &Generation,
        events: &[&ChangeEvent],
        attempts: u32,
        shutdown: &CancellationToken,
        mut planned: Option<Result<super::plan::KeyPlan, ApplyError>>,
    ) -> Result<Option<ApplyError>, Interrupted> {
        let mut failed = 0;
        let mut waits = 0u32;
        let mut answering_since: Option<Instant> = None;
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
            self.struggling.store(true, Ordering::Relaxed);
            let counts = match error.blame() {
                Blame::Batch => true,
                Blame::Unclear => generation.dependencies_answer().await,
                Blame::Dependencies if generation.dependencies_answer().await => {
                    answering_since.get_or_insert_with(Instant::now).elapsed() >= generation.config.max_transient_wait
                }
                Blame::Dependencies => {
                    answering_since = None;
                    false
                }
            };
            let delay = if counts {
                failed += 1;
                if failed >= attempts {
                    return Ok(Some(error));
                }
                tracing::warn!(pipeline = %self.name, error = %error, attempt = failed, "batch failed; retrying");
                backoff(generation.config.retry_backoff, failed)
            } else {
                waits += 1;
                tracing::warn!(pipeline = %self.name, error = %error, "dependency unavailable; waiting, nothing acked");
                backoff(generation.config.retry_backoff, waits)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Interrupted),
                _ = tokio::time::sleep(delay) => {}
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

    #[test]
    fn failures_are_blamed_by_what_they_mean() {
        let timeout = |in_query| {
            ApplyError::Plugin(CallError::Timeout {
                plugin: "p@1".into(),
                call: "keys",
                timeout: Duration::from_secs(1),
                in_query,
            })
        };
        assert_eq!(timeout(false).blame(), Blame::Batch);
        assert_eq!(timeout(true).blame(), Blame::Unclear);
        let unavailable = CallError::Unavailable { plugin: "p@1".into(), call: "recompute", message: "down".into() };
        assert_eq!(ApplyError::Plugin(unavailable).blame(), Blame::Dependencies);
        let bad_key = SinkError::BadKey { key: "k".into(), reason: "is empty" };
        assert_eq!(ApplyError::Sink(bad_key).blame(), Blame::Batch);
    }
}
