//! Building what a pipeline runs on (its database share, its writer and its
//! plugin instance, `init`-ed with its configuration) in the one place that
//! startup and hot reload both call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::config::PipelineConfig;
use super::running::{Parts, Pipeline};
use crate::plugin::mapper::RowMapper;
use crate::plugin::{
    CallError, LoadedPlugin, NativeContext, NativeFactory, PluginEngine, PluginHandle, PluginInstance,
};
use crate::query::QueryRunner;
use crate::sink::{RedisCache, RedisWriter, WriteSettings};

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A pipeline names a plugin that is not in `plugins_dir`.
    #[error(
        "pipeline '{pipeline}': plugin '{plugin}' not found in {dir}; build it with scripts/build-plugins.sh (found: {found})"
    )]
    MissingPlugin {
        /// The pipeline.
        pipeline: String,
        /// The plugin name it asked for.
        plugin: String,
        /// The plugins directory.
        dir: String,
        /// The plugins that are there.
        found: String,
    },
    /// The plugin's `init` failed for a pipeline.
    #[error("pipeline '{pipeline}': {source}")]
    Init {
        /// The pipeline.
        pipeline: String,
        /// The failed call.
        source: CallError,
    },
    /// A native plugin could not be built for a pipeline.
    #[error("pipeline '{pipeline}': native plugin: {message}")]
    Native {
        /// The pipeline.
        pipeline: String,
        /// The factory's message.
        message: String,
    },
}

/// The shared resources pipelines are built from; kept for hot reload.
pub struct Wiring {
    /// The plugin engine.
    pub engine: PluginEngine,
    /// Where plugin components are.
    pub plugins_dir: PathBuf,
    databases: HashMap<String, QueryRunner>,
    caches: HashMap<String, RedisCache>,
    natives: HashMap<String, NativeFactory>,
}

impl Wiring {
    /// Wires pipelines onto these databases and caches; a pipeline whose
    /// `plugin` names one of `natives` uses it instead of a component.
    pub fn new(
        engine: PluginEngine,
        plugins_dir: PathBuf,
        databases: HashMap<String, QueryRunner>,
        caches: HashMap<String, RedisCache>,
        natives: HashMap<String, NativeFactory>,
    ) -> Self {
        Self { engine, plugins_dir, databases, caches, natives }
    }

    /// True when `plugin` is compiled into the host.
    pub fn is_native(&self, plugin: &str) -> bool {
        self.natives.contains_key(plugin)
    }

    /// A new share of the pipeline's database: at most `max_concurrent_queries`
    /// of its queries run at once, across the plugin versions live during a reload.
    pub fn database_share(&self, config: &PipelineConfig) -> Option<QueryRunner> {
        let database = self.databases.get(config.database.as_deref()?)?;
        Some(database.limited(self.engine.sandbox().max_concurrent_queries))
    }

    /// A generation of `pipeline`: its native plugin, or `component`,
    /// instantiated and `init`-ed on `database`.
    pub async fn generation(
        &self,
        pipeline: &str,
        config: &PipelineConfig,
        component: Option<&Arc<LoadedPlugin>>,
        database: Option<QueryRunner>,
    ) -> Result<Parts, BuildError> {
        // Config::load and load_pipeline checked that the cache exists.
        let cache = &self.caches[&config.cache];
        let settings =
            WriteSettings { pipeline: pipeline.to_owned(), safety_ttl: config.ttl, ttl_jitter: config.ttl_jitter };
        let writer = RedisWriter::new(cache.clone(), settings);
        if let Some(mapper) = &config.mapper {
            let call_timeout = config.call_timeout.unwrap_or(self.engine.sandbox().call_timeout);
            let table = config.tables.first().map(String::as_str).unwrap_or_default();
            let mapper = RowMapper::new(mapper, table, database.clone(), call_timeout)
                .map_err(|message| BuildError::Native { pipeline: pipeline.to_owned(), message })?;
            return Ok(Parts { plugin: PluginHandle::Native(Box::new(mapper)), writer, database });
        }
        if let Some(factory) = self.natives.get(&config.plugin) {
            let context = NativeContext {
                pipeline: pipeline.to_owned(),
                config: config.plugin_config(),
                database: database.clone(),
            };
            let native =
                factory(context).map_err(|message| BuildError::Native { pipeline: pipeline.to_owned(), message })?;
            return Ok(Parts { plugin: PluginHandle::Native(native), writer, database });
        }
        let Some(plugin) = component else { return Err(self.missing(pipeline, config, &HashMap::new())) };
        let mut instance =
            PluginInstance::new(&self.engine, plugin.clone(), pipeline, database.clone(), config.plugin_config())
                .with_call_timeout(config.call_timeout);
        instance.init().await.map_err(|source| BuildError::Init { pipeline: pipeline.to_owned(), source })?;
        Ok(Parts { plugin: PluginHandle::Wasm(Box::new(instance)), writer, database })
    }

    /// A new pipeline running its first generation.
    pub async fn pipeline(
        &self,
        name: &str,
        config: &PipelineConfig,
        plugins: &HashMap<String, Arc<LoadedPlugin>>,
    ) -> Result<Arc<Pipeline>, BuildError> {
        let component = if config.mapper.is_some() { None } else { plugins.get(&config.plugin) };
        if component.is_none() && !self.is_native(&config.plugin) && config.mapper.is_none() {
            return Err(self.missing(name, config, plugins));
        }
        let parts = self.generation(name, config, component, self.database_share(config)).await?;
        Ok(Arc::new(Pipeline::new(name, config.clone(), parts)))
    }

    fn missing(
        &self,
        pipeline: &str,
        config: &PipelineConfig,
        plugins: &HashMap<String, Arc<LoadedPlugin>>,
    ) -> BuildError {
        let mut found: Vec<&str> = plugins.keys().map(String::as_str).collect();
        found.sort();
        BuildError::MissingPlugin {
            pipeline: pipeline.to_owned(),
            plugin: config.plugin.clone(),
            dir: self.plugins_dir.display().to_string(),
            found: found.join(", "),
        }
    }
}
