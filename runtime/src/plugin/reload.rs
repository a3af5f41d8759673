//! Hot reload: a changed plugin component is compiled off the hot path and
//! `init`-ed for every pipeline using it, and only then swapped in; a changed
//! pipeline file is re-read and its pipeline restarted with the new settings.
//! Broken or missing files never replace what is running.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::engine::PluginEngine;
use super::instance::PluginInstance;
use super::loader::{LoadedPlugin, load_file};
use super::native::PluginHandle;
use super::watch::DirWatcher;
use crate::config::{RuntimeConfig, load_pipeline};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::recompute::query::QueryRunner;
use crate::sink::{RedisCache, WriteSettings};

/// Counter of plugin reloads, labelled `plugin` and `outcome` ("ok" or "failed").
pub const PLUGIN_RELOADS: &str = "evercache_plugin_reloads_total";
/// Counter of pipeline file reloads, labelled `pipeline` and `outcome`.
pub const PIPELINE_RELOADS: &str = "evercache_pipeline_reloads_total";

/// `[reload]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch `plugins_dir` and `pipelines_dir` and apply changes while running (default true).
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Quiet time after the last change to a file before it is reloaded, e.g. "200ms" (default).
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_watch() -> bool {
    true
}
fn default_debounce() -> Duration {
    Duration::from_millis(200)
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self { watch: default_watch(), debounce: default_debounce() }
    }
}

/// A running pipeline and what rebuilding its plugin instance takes.
pub struct ReloadSlot {
    /// The pipeline, shared with its source runner.
    pub pipeline: Arc<Pipeline>,
    /// Its configuration as last applied.
    pub config: PipelineConfig,
    /// Its database share (the per-pipeline query limit spans versions).
    pub database: Option<QueryRunner>,
    /// Compiled into the host: never reloaded from a file.
    pub native: bool,
}

/// Applies file changes to the running pipelines.
pub struct Reloader {
    engine: PluginEngine,
    runtime: RuntimeConfig,
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    slots: BTreeMap<String, ReloadSlot>,
    databases: HashMap<String, QueryRunner>,
    caches: HashMap<String, RedisCache>,
}

impl Reloader {
    /// Takes over what the runtime built.
    pub fn new(
        engine: PluginEngine,
        runtime: RuntimeConfig,
        plugins: HashMap<String, Arc<LoadedPlugin>>,
        slots: BTreeMap<String, ReloadSlot>,
        databases: HashMap<String, QueryRunner>,
        caches: HashMap<String, RedisCache>,
    ) -> Self {
        Self { engine, runtime, plugins, slots, databases, caches }
    }

    /// Watches the directories until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let dirs = [self.runtime.plugins_dir.as_path(), self.runtime.pipelines_dir.as_path()];
        let mut watcher = match DirWatcher::new(&dirs, self.runtime.reload.debounce) {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch plugins_dir and pipelines_dir; hot reload is off");
                return;
            }
        };
        tracing::info!(plugins_dir = %dirs[0].display(), pipelines_dir = %dirs[1].display(), "watching for changes");
        while let Some(paths) = watcher.next(&shutdown).await {
            for path in paths {
                self.changed(&path).await;
            }
        }
    }

    /// Applies one changed file.
    pub async fn changed(&mut self, path: &Path) {
        let (Some(dir), Some(stem), Some(ext)) = (path.parent(), path.file_stem(), path.extension()) else {
            return;
        };
        let name = stem.to_string_lossy().into_owned();
        if ext == "wasm" && same_dir(dir, &self.runtime.plugins_dir) {
            self.reload_plugin(&name, path).await;
        } else if ext == "toml" && same_dir(dir, &self.runtime.pipelines_dir) {
            self.reload_pipeline(&name, path).await;
        }
    }

    async fn reload_plugin(&mut self, name: &str, path: &Path) {
        let users: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| !slot.native && slot.config.plugin == name)
            .map(|(pipeline, _)| pipeline.clone())
            .collect();
        if !path.exists() {
            if self.plugins.contains_key(name) {
                plugin_failed(name, "file removed; the loaded version keeps serving");
            }
            return;
        }
        let plugin = match load_file(&self.engine, path).await {
            Ok(plugin) => plugin,
            Err(e) => return plugin_failed(name, &e.to_string()),
        };
        if self.plugins.get(name).is_some_and(|live| live.version == plugin.version) {
            return;
        }
        let mut ready = Vec::with_capacity(users.len());
        for pipeline in &users {
            match self.instance(pipeline, &self.slots[pipeline].config, plugin.clone()).await {
                Ok(handle) => ready.push((pipeline, handle)),
                Err(e) => return plugin_failed(name, &format!("pipeline '{pipeline}': {e}")),
            }
        }
        // Every pipeline's new instance is ready: swap them all.
        for (pipeline, handle) in ready {
            let slot = &self.slots[pipeline];
            let writer = self.writer(pipeline, &slot.config);
            slot.pipeline.replace(slot.config.clone(), handle, writer, slot.database.clone());
        }
        let previous = self.plugins.insert(name.to_owned(), plugin.clone()).map(|p| p.label());
        metrics::counter!(PLUGIN_RELOADS, "plugin" => name.to_owned(), "outcome" => "ok").increment(1);
        tracing::info!(plugin = %plugin.label(), previous = ?previous, pipelines = ?users, "plugin reloaded");
    }

    async fn reload_pipeline(&mut self, name: &str, path: &Path) {
        let Some(slot) = self.slots.get(name) else {
            if path.exists() {
                pipeline_failed(name, "new pipeline files are picked up on restart");
            }
            return;
        };
        if !path.exists() {
            return pipeline_failed(name, "file removed; the pipeline keeps running until restart");
        }
        let config = match load_pipeline(&self.runtime, path) {
            Ok((_, config)) => config,
            Err(e) => return pipeline_failed(name, &e.to_string()),
        };
        if config.source != slot.config.source || config.tables != slot.config.tables {
            return pipeline_failed(name, "`source` and `tables` changes need a restart");
        }
        if slot.native {
            return pipeline_failed(name, "pipelines with a native plugin are not reloaded");
        }
        let plugin = match self.plugins.get(&config.plugin) {
            Some(plugin) => plugin.clone(),
            None => {
                let file = self.runtime.plugins_dir.join(format!("{}.wasm", config.plugin));
                match load_file(&self.engine, &file).await {
                    Ok(plugin) => plugin,
                    Err(e) => return pipeline_failed(name, &e.to_string()),
                }
            }
        };
        let database = config
            .database
            .as_deref()
            .and_then(|d| self.databases.get(d))
            .map(|d| d.limited(self.runtime.sandbox.max_concurrent_queries));
        let handle = match self.instance_with(name, &config, plugin.clone(), database.clone()).await {
            Ok(handle) => handle,
            Err(e) => return pipeline_failed(name, &e),
        };
        let writer = self.writer(name, &config);
        if let Some(slot) = self.slots.get_mut(name) {
            // Batches in flight finish on the old generation: that is the drain.
            slot.pipeline.replace(config.clone(), handle, writer, database.clone());
            slot.config = config;
            slot.database = database;
        }
        self.plugins.entry(plugin.name.clone()).or_insert(plugin);
        metrics::counter!(PIPELINE_RELOADS, "pipeline" => name.to_owned(), "outcome" => "ok").increment(1);
        tracing::info!(pipeline = %name, "pipeline restarted with its changed file");
    }

    async fn instance(
        &self,
        pipeline: &str,
        config: &PipelineConfig,
        plugin: Arc<LoadedPlugin>,
    ) -> Result<PluginHandle, String> {
        let database = self.slots.get(pipeline).and_then(|s| s.database.clone());
        self.instance_with(pipeline, config, plugin, database).await
    }

    async fn instance_with(
        &self,
        pipeline: &str,
        config: &PipelineConfig,
        plugin: Arc<LoadedPlugin>,
        database: Option<QueryRunner>,
    ) -> Result<PluginHandle, String> {
        let mut instance = PluginInstance::new(&self.engine, plugin, pipeline, database, config.plugin_config())
            .with_call_timeout(config.call_timeout);
        instance.init().await.map_err(|e| e.to_string())?;
        Ok(PluginHandle::Wasm(Box::new(instance)))
    }

    fn writer(&self, pipeline: &str, config: &PipelineConfig) -> crate::sink::RedisWriter {
        // load_pipeline checked that the cache exists; caches are fixed for the runtime's life.
        let cache = &self.caches[&config.cache];
        cache.writer(WriteSettings { pipeline: pipeline.to_owned(), safety_ttl: config.ttl })
    }
}

fn plugin_failed(name: &str, reason: &str) {
    metrics::counter!(PLUGIN_RELOADS, "plugin" => name.to_owned(), "outcome" => "failed").increment(1);
    tracing::warn!(plugin = %name, reason, "plugin not reloaded; the running version keeps serving");
}

fn pipeline_failed(name: &str, reason: &str) {
    metrics::counter!(PIPELINE_RELOADS, "pipeline" => name.to_owned(), "outcome" => "failed").increment(1);
    tracing::warn!(pipeline = %name, reason, "pipeline file not applied; the pipeline keeps running as it was");
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    canonical(a) == canonical(b)
}
