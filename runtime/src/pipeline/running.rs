//! A running pipeline: the generation it runs batches on (configuration,
//! plugin instances, writer, database), swapped whole by a reload, and its
//! live figures.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use super::config::PipelineConfig;
use super::ranks::Ranks;
use super::stats::PipelineStats;
use super::visibility::VisibilityGate;
use crate::plugin::PluginHandle;
use crate::query::QueryRunner;
use crate::sink::{RedisCache, RedisWriter};

/// Longest a health check of the database or the cache may take.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What one generation of a pipeline is made of, ready to run or to swap in.
pub struct Parts {
    /// Its plugin instance, already `init`-ed.
    pub plugin: PluginHandle,
    /// Its writer into its cache.
    pub writer: RedisWriter,
    /// Its share of its database (the per-pipeline query limit).
    pub database: Option<QueryRunner>,
}

/// What a pipeline runs a batch with; replaced as a whole by a reload.
pub(super) struct Generation {
    pub(super) config: PipelineConfig,
    pub(super) instance: Mutex<PluginHandle>,
    /// Plans the next batch's keys while `instance` recomputes this one.
    planner: Option<Mutex<PluginHandle>>,
    /// Recomputes keys for reads and resyncs, so they never queue behind a batch.
    reader: Option<Mutex<PluginHandle>>,
    pub(super) writer: RedisWriter,
    /// Health-checked when a failure may be the database's.
    database: Option<QueryRunner>,
    /// Holds a batch until its events' transactions are visible on `database`.
    pub(super) gate: VisibilityGate,
    /// Ranks Debezium's MariaDB snapshot reads; says when binlog events change server unordered.
    pub(super) ranks: Ranks,
}

impl Generation {
    fn new(name: &str, config: PipelineConfig, parts: Parts, stats: &Arc<PipelineStats>) -> Self {
        let Parts { plugin, writer, database } = parts;
        let planner = plugin.planner().map(Mutex::new);
        let reader = plugin.planner().map(Mutex::new);
        let gate = VisibilityGate::new(name, config.visibility, database.clone(), stats.clone());
        let ranks = Ranks::new(name, database.clone(), stats.clone());
        Self { config, instance: Mutex::new(plugin), planner, reader, writer, database, gate, ranks }
    }

    /// The instance repairs run on.
    pub(super) fn reader(&self) -> &Mutex<PluginHandle> {
        self.reader.as_ref().unwrap_or(&self.instance)
    }

    /// The instance `keys` is called on ahead of recomputing.
    pub(super) fn planner(&self) -> &Mutex<PluginHandle> {
        self.planner.as_ref().unwrap_or(&self.instance)
    }

    /// True when the database (if any) and the cache both answer a health check.
    pub(super) async fn dependencies_answer(&self) -> bool {
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
    /// A pipeline running its first generation; the plugin is already `init`-ed.
    pub fn new(name: &str, config: PipelineConfig, parts: Parts) -> Self {
        let tables = config.tables.iter().cloned().collect();
        let stats = Arc::new(PipelineStats::new(name, &config.plugin));
        record_plugin(&stats, &parts.plugin);
        let current = Generation::new(name, config, parts, &stats);
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
    pub fn replace(&self, config: PipelineConfig, parts: Parts) {
        record_plugin(&self.stats, &parts.plugin);
        let next = Arc::new(Generation::new(&self.name, config, parts, &self.stats));
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

    /// Does one of its `key_patterns` match `key`?
    pub fn owns(&self, key: &str) -> bool {
        self.generation().config.key_patterns.iter().any(|p| p.matches(key))
    }

    /// Its cache as of now.
    pub fn cache(&self) -> RedisCache {
        self.generation().writer.cache().clone()
    }

    /// Its current share of its database, if it has one.
    pub fn database(&self) -> Option<QueryRunner> {
        self.generation().database.clone()
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

    /// Marks whether a batch keeps failing (see [`Self::struggling`]).
    pub(super) fn set_struggling(&self, struggling: bool) {
        self.struggling.store(struggling, Ordering::Relaxed);
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
