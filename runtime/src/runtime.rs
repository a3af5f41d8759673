//! Wiring: builds engines, pools, caches, plugins, pipelines and sources from a
//! [`Config`], checks them, and runs every source until shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::build::{BuildError, Wiring};
use crate::pipeline::reload::{ReloadSlot, Reloader};
use crate::pipeline::{Pipeline, SourceRunner};
use crate::plugin::{LoadError, LoadedPlugin, NativeFactory, PluginEngine, load_dir};
use crate::query::{QueryError, QueryRunner};
use crate::sink::{RedisCache, SinkError};
use crate::source::health::SourceHealth;
use crate::source::{Source, SourceConfig, SourceError};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The wasmtime engine could not be built.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// A plugin file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A pipeline could not be built.
    #[error(transparent)]
    Pipeline(#[from] BuildError),
    /// A database pool could not be built.
    #[error(transparent)]
    Database(#[from] QueryError),
    /// A cache could not be reached.
    #[error("cache '{cache}': {source}")]
    Cache {
        /// The `[caches.<name>]` name.
        cache: String,
        /// The error.
        source: SinkError,
    },
    /// A source could not be reached.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The `[http]` listener could not bind.
    #[error(transparent)]
    Http(#[from] crate::http::BindError),
}

/// Everything built from the configuration, ready to run.
pub struct Runtime {
    config: Config,
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    pipelines: Vec<(String, Arc<Pipeline>)>,
    http: Option<tokio::net::TcpListener>,
    /// Kept for hot reload.
    reloader: Reloader,
}

impl Runtime {
    /// Loads plugins, builds pools and caches, and instantiates and `init`s the
    /// plugin of every pipeline. Fails on the first problem.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_native(config, HashMap::new()).await
    }

    /// Like [`Runtime::build`], with plugins compiled into the host: a pipeline
    /// whose `plugin` names one of `natives` uses it instead of a component.
    pub async fn build_with_native(
        config: Config,
        natives: HashMap<String, NativeFactory>,
    ) -> Result<Self, StartError> {
        if config.runtime.http.is_some() {
            // Before the pipelines exist, so their first figures are recorded.
            crate::metrics::install();
        }
        let mut engine =
            PluginEngine::new(config.runtime.sandbox.clone()).map_err(|e| StartError::Engine(format!("{e:#}")))?;
        if let Some(dir) = &config.runtime.sandbox.compile_cache {
            engine = engine.with_compile_cache(dir);
        }
        let plugins = load_dir(&engine, &config.runtime.plugins_dir).await?;
        let mut databases: HashMap<String, QueryRunner> = HashMap::new();
        for (name, database) in &config.runtime.databases {
            databases.insert(name.clone(), database.build(name)?);
        }
        let mut caches: HashMap<String, RedisCache> = HashMap::new();
        for (name, cache) in &config.runtime.caches {
            let built = cache.build(name).await.map_err(|source| StartError::Cache { cache: name.clone(), source })?;
            caches.insert(name.clone(), built);
        }
        let wiring = Wiring::new(engine, config.runtime.plugins_dir.clone(), databases, caches, natives);
        let mut pipelines = Vec::new();
        let mut slots = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            let built = wiring.pipeline(name, pipeline, &plugins).await?;
            tracing::info!(pipeline = %name, plugin = %pipeline.plugin, tables = ?pipeline.tables, "pipeline ready");
            let database = built.database();
            slots.insert(name.clone(), ReloadSlot { pipeline: built.clone(), config: pipeline.clone(), database });
            pipelines.push((name.clone(), built));
        }
        let reloader = Reloader::new(wiring, config.runtime.clone(), plugins.clone(), slots);
        Ok(Self { config, plugins, pipelines, http: None, reloader })
    }

    /// The loaded plugins by name.
    pub fn plugins(&self) -> &HashMap<String, Arc<LoadedPlugin>> {
        &self.plugins
    }

    /// The pipeline named `name`, built and `init`-ed.
    pub fn pipeline(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.pipelines.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone())
    }

    /// The pipelines' names.
    pub fn pipeline_names(&self) -> Vec<&str> {
        self.pipelines.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Binds the `[http]` listener now (else [`Runtime::start`] does) and
    /// returns its address, e.g. to learn the port when `listen` ends in `:0`.
    pub async fn bind_http(&mut self) -> Result<Option<std::net::SocketAddr>, StartError> {
        if let (None, Some(http)) = (&self.http, &self.config.runtime.http) {
            self.http = Some(crate::http::bind(http).await?);
        }
        Ok(self.http.as_ref().and_then(crate::http::local_addr))
    }

    /// Connects every source (creating consumer groups) and starts its runner;
    /// the tasks end after `shutdown` is cancelled and their batches drained.
    pub async fn start(mut self, shutdown: CancellationToken) -> Result<JoinSet<()>, StartError> {
        crate::tls::init();
        let mut tasks = JoinSet::new();
        let mut health = Vec::new();
        for (source_name, source) in &self.config.runtime.sources {
            let pipelines: Vec<Arc<Pipeline>> = self
                .pipelines
                .iter()
                .filter(|(name, _)| self.config.pipelines[name].source == *source_name)
                .map(|(_, p)| p.clone())
                .collect();
            if pipelines.is_empty() {
                tracing::warn!(source = %source_name, "no pipeline uses this source; not started");
                continue;
            }
            let source_health = Arc::new(SourceHealth::new(source_name));
            health.push(source_health.clone());
            // A source that is down at startup is waited for, like one that goes
            // down later; only a configuration that cannot work stops the start.
            let built = match source.build(source_name).await {
                Ok(built) => Some(built),
                Err(e @ SourceError::BadConfig { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(source = %source_name, error = %e, "source unavailable at startup; retrying");
                    source_health.failed(&e);
                    None
                }
            };
            let (losses, _repairer) =
                crate::recovery::spawn(pipelines.clone(), source_health.clone(), shutdown.clone());
            let (config, name, shutdown) = (source.clone(), source_name.clone(), shutdown.clone());
            tasks.spawn(async move {
                let source = match built {
                    Some(source) => source,
                    None => match connect_until_up(&config, &name, &source_health, &shutdown).await {
                        Some(source) => source,
                        None => return,
                    },
                };
                SourceRunner::new(source, pipelines, source_health, losses).run(shutdown).await
            });
        }
        self.bind_http().await?;
        if let (Some(http), Some(listener)) = (self.config.runtime.http.clone(), self.http.take()) {
            let pipelines = self.pipelines.iter().map(|(_, p)| p.clone()).collect();
            let watched = crate::http::Watched { config: self.config.clone(), pipelines, sources: health };
            tasks.spawn(crate::http::serve(listener, http, watched, shutdown.clone()));
        }
        if self.config.runtime.reload.watch {
            tasks.spawn(self.reloader.run(shutdown));
        }
        Ok(tasks)
    }

    /// Runs until `shutdown` is cancelled; in-flight batches are drained before
    /// this returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let mut tasks = self.start(shutdown).await?;
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "source task failed");
            }
        }
        Ok(())
    }
}

/// Builds `config` until it connects (backing off up to 10 s between tries,
/// each failure reported to `health`), or `None` once `shutdown` is cancelled.
async fn connect_until_up(
    config: &SourceConfig,
    name: &str,
    health: &SourceHealth,
    shutdown: &CancellationToken,
) -> Option<Source> {
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        match config.build(name).await {
            Ok(source) => {
                tracing::info!(source = %name, "source connected");
                health.ok();
                return Some(source);
            }
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "source still unavailable; retrying");
                health.failed(&e);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
