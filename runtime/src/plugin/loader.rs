//! Finding and compiling plugin components from the plugins directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::PluginPre;
use super::engine::PluginEngine;

/// A compiled plugin, ready to instantiate for any number of pipelines.
pub struct LoadedPlugin {
    /// File stem, e.g. "specialist_status" for `specialist_status.wasm`.
    pub name: String,
    /// First 12 hex digits of the file's SHA-256: changes whenever the file does.
    pub version: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    pub(crate) pre: PluginPre<super::host::PluginState>,
}

impl LoadedPlugin {
    /// `name@version`, as recorded in each key's freshness metadata.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish()
    }
}

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a component, or not built against the `evercache:plugin` world.
    #[error("plugin {path} is not a valid evercache component: {message}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
}

/// Compiles one `.wasm` component; compilation runs on a blocking thread so the
/// async workers keep serving.
pub async fn load_file(engine: &PluginEngine, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
    let bytes = tokio::fs::read(path).await.map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    let version = hex::encode(&Sha256::digest(&bytes)[..6]);
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.to_owned(), message: format!("{e:#}") };
    let wasm_engine = engine.engine.clone();
    let component = tokio::task::spawn_blocking(move || Component::from_binary(&wasm_engine, &bytes))
        .await
        .map_err(|e| LoadError::Invalid { path: path.to_owned(), message: format!("compiler task failed: {e}") })?
        .map_err(invalid)?;
    let instance_pre = engine.linker.instantiate_pre(&component).map_err(invalid)?;
    let pre = PluginPre::new(instance_pre).map_err(invalid)?;
    tracing::info!(plugin = %name, %version, path = %path.display(), "plugin loaded");
    Ok(Arc::new(LoadedPlugin { name, version, path: path.to_owned(), loaded_at: SystemTime::now(), pre }))
}

/// Loads every `*.wasm` file of `dir`, keyed by file stem. One broken file fails
/// the whole load: at startup a missing plugin is better caught than served around.
pub async fn load_dir(engine: &PluginEngine, dir: &Path) -> Result<HashMap<String, Arc<LoadedPlugin>>, LoadError> {
    let io = |source| LoadError::Io { path: dir.to_owned(), source };
    let mut paths = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await.map_err(io)?;
    while let Some(entry) = entries.next_entry().await.map_err(io)? {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut plugins = HashMap::new();
    for path in paths {
        let plugin = load_file(engine, &path).await?;
        plugins.insert(plugin.name.clone(), plugin);
    }
    Ok(plugins)
}
