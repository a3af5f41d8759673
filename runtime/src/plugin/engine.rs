//! One wasmtime engine per process, with the linker that provides the host
//! imports and a ticker that drives epoch deadlines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::host::PluginState;
use crate::contract::Plugin;

/// How often the epoch advances: running calls yield and check their deadline this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits every plugin call runs under (`[sandbox]` in the runtime file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Longest a single `init`, `keys` or `recompute` call may run, host queries
    /// included (default "10s").
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Most linear memory one plugin instance may use, in MiB (default 64); a
    /// pipeline runs two instances (one plans keys while the other recomputes).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// Most keys one `keys` call may return (default 10000); more fails the batch.
    #[serde(default = "default_max_keys_per_event")]
    pub max_keys_per_event: usize,
    /// Host queries one pipeline may have running at once, across plugin
    /// versions live during a reload (default 4).
    #[serde(default = "default_max_concurrent_queries")]
    pub max_concurrent_queries: usize,
    /// Directory for compiled components, keyed by content hash and engine
    /// configuration, e.g. "/var/cache/evercache" (default: `.compiled` in
    /// `plugins_dir`); relative to the runtime file.
    #[serde(default)]
    pub compile_cache: Option<PathBuf>,
    /// Keep compiled components between runs (default true).
    #[serde(default = "default_true")]
    pub cache_compiled: bool,
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_memory_mib() -> usize {
    64
}
fn default_max_keys_per_event() -> usize {
    10_000
}
fn default_max_concurrent_queries() -> usize {
    4
}
fn default_true() -> bool {
    true
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            call_timeout: default_call_timeout(),
            memory_mib: default_memory_mib(),
            max_keys_per_event: default_max_keys_per_event(),
            max_concurrent_queries: default_max_concurrent_queries(),
            compile_cache: None,
            cache_compiled: true,
        }
    }
}

/// The compiler, the linker and the sandbox limits shared by all plugins.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<PluginState>>,
    pub(crate) sandbox: SandboxConfig,
    /// Where compiled components are kept between runs, if anywhere.
    pub(crate) compile_cache: Option<PathBuf>,
}

impl PluginEngine {
    /// Builds the engine and starts the epoch ticker thread (it stops when the
    /// last engine clone is dropped).
    pub fn new(sandbox: SandboxConfig) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<PluginState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("evercache-epoch".to_owned())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(wasmtime::Error::from)?;
        Ok(Self { engine, linker: Arc::new(linker), sandbox, compile_cache: None })
    }

    /// Keeps compiled components in `dir`, keyed by content hash and engine
    /// configuration, so restarts and reloads skip compiling unchanged plugins.
    pub fn with_compile_cache(mut self, dir: &Path) -> Self {
        self.compile_cache = Some(dir.to_owned());
        self
    }

    /// The engine's compatibility fingerprint: compiled artifacts from an engine
    /// with another wasmtime version or configuration must not be reused.
    pub(crate) fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// The limits calls run under.
    pub fn sandbox(&self) -> &SandboxConfig {
        &self.sandbox
    }
}
