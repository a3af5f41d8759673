//! Hot reload: a changed plugin component is compiled off the hot path and
//! `init`-ed for every pipeline using it, and only then swapped in; a changed
//! pipeline file is re-read and its pipeline restarted with the new settings.
//! Broken or missing files never replace what is running.

mod config;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::build::Wiring;
use super::config::PipelineConfig;
use super::running::Pipeline;
use crate::config::{RuntimeConfig, check_key_owners, load_pipeline};
use crate::metrics::{PIPELINE_RELOADS_TOTAL, PLUGIN_RELOADS_TOTAL};
use crate::plugin::{LoadedPlugin, load_file};
use crate::query::QueryRunner;
pub use config::ReloadConfig;
use watch::DirWatcher;

/// A running pipeline and what rebuilding its plugin instance takes.
pub struct ReloadSlot {
    /// The pipeline, shared with its source runner.
    pub pipeline: Arc<Pipeline>,
    /// Its configuration as last applied.
    pub config: PipelineConfig,
    /// Its database share (the per-pipeline query limit spans versions).
    pub database: Option<QueryRunner>,
}

/// Applies file changes to the running pipelines.
pub struct Reloader {
    wiring: Wiring,
    runtime: RuntimeConfig,
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    slots: BTreeMap<String, ReloadSlot>,
}

impl Reloader {
    /// Takes over what the runtime built.
    pub fn new(
        wiring: Wiring,
        runtime: RuntimeConfig,
        plugins: HashMap<String, Arc<LoadedPlugin>>,
        slots: BTreeMap<String, ReloadSlot>,
    ) -> Self {
        Self { wiring, runtime, plugins, slots }
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
            .filter(|(_, slot)| {
                !self.wiring.is_native(&slot.config.plugin)
                    && slot.config.mapper.is_none()
                    && slot.config.plugin == name
            })
            .map(|(pipeline, _)| pipeline.clone())
            .collect();
        if !path.exists() {
            if self.plugins.contains_key(name) {
                plugin_failed(name, "file removed; the loaded version keeps serving");
            }
            return;
        }
        let plugin = match load_file(&self.wiring.engine, path).await {
            Ok(plugin) => plugin,
            Err(e) => return plugin_failed(name, &e.to_string()),
        };
        if self.plugins.get(name).is_some_and(|live| live.version == plugin.version) {
            return;
        }
        let mut ready = Vec::with_capacity(users.len());
        for pipeline in &users {
            let slot = &self.slots[pipeline];
            match self.wiring.generation(pipeline, &slot.config, Some(&plugin), slot.database.clone()).await {
                Ok(parts) => ready.push((pipeline, parts)),
                Err(e) => return plugin_failed(name, &e.to_string()),
            }
        }
        // Every pipeline's new instance is ready: swap them all.
        for (pipeline, parts) in ready {
            let slot = &self.slots[pipeline];
            slot.pipeline.replace(slot.config.clone(), parts);
        }
        let previous = self.plugins.insert(name.to_owned(), plugin.clone()).map(|p| p.label());
        metrics::counter!(PLUGIN_RELOADS_TOTAL, "plugin" => name.to_owned(), "outcome" => "ok").increment(1);
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
        let mut owners: BTreeMap<String, PipelineConfig> =
            self.slots.iter().map(|(n, s)| (n.clone(), s.config.clone())).collect();
        owners.insert(name.to_owned(), config.clone());
        if let Err(e) = check_key_owners(&self.runtime.pipelines_dir, &owners) {
            return pipeline_failed(name, &e.to_string());
        }
        if self.wiring.is_native(&slot.config.plugin) && slot.config.mapper.is_none() {
            return pipeline_failed(name, "pipelines with a native plugin are not reloaded");
        }
        let plugin = match self.plugins.get(&config.plugin) {
            // A `[mapper]` pipeline runs the built-in mapper, no component.
            _ if config.mapper.is_some() => None,
            Some(plugin) => Some(plugin.clone()),
            None => {
                let file = self.runtime.plugins_dir.join(format!("{}.wasm", config.plugin));
                match load_file(&self.wiring.engine, &file).await {
                    Ok(plugin) => Some(plugin),
                    Err(e) => return pipeline_failed(name, &e.to_string()),
                }
            }
        };
        let database = self.wiring.database_share(&config);
        let parts = match self.wiring.generation(name, &config, plugin.as_ref(), database.clone()).await {
            Ok(parts) => parts,
            Err(e) => return pipeline_failed(name, &e.to_string()),
        };
        if let Some(slot) = self.slots.get_mut(name) {
            // Batches in flight finish on the old generation: that is the drain.
            slot.pipeline.replace(config.clone(), parts);
            slot.config = config;
            slot.database = database;
        }
        if let Some(plugin) = plugin {
            self.plugins.entry(plugin.name.clone()).or_insert(plugin);
        }
        metrics::counter!(PIPELINE_RELOADS_TOTAL, "pipeline" => name.to_owned(), "outcome" => "ok").increment(1);
        tracing::info!(pipeline = %name, "pipeline restarted with its changed file");
    }
}

fn plugin_failed(name: &str, reason: &str) {
    metrics::counter!(PLUGIN_RELOADS_TOTAL, "plugin" => name.to_owned(), "outcome" => "failed").increment(1);
    tracing::warn!(plugin = %name, reason, "plugin not reloaded; the running version keeps serving");
}

fn pipeline_failed(name: &str, reason: &str) {
    metrics::counter!(PIPELINE_RELOADS_TOTAL, "pipeline" => name.to_owned(), "outcome" => "failed").increment(1);
    tracing::warn!(pipeline = %name, reason, "pipeline file not applied; the pipeline keeps running as it was");
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    canonical(a) == canonical(b)
}
