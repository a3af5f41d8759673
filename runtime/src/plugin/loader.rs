//! Finding and compiling plugin components from the plugins directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::engine::PluginEngine;
use crate::contract::PluginPre;

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
    /// Taken from the compile cache instead of compiled.
    pub from_cache: bool,
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

/// Compiles one `.wasm` component, or takes it from the compile cache;
/// compilation runs on a blocking thread so the async workers keep serving.
pub async fn load_file(engine: &PluginEngine, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
    let bytes = tokio::fs::read(path).await.map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let version = digest[..12].to_owned();
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.to_owned(), message: format!("{e:#}") };
    let cached = engine.compile_cache.as_ref().map(|dir| dir.join(format!("{digest}-{}.cwasm", engine.fingerprint())));
    let wasm_engine = engine.engine.clone();
    let (component, from_cache) = tokio::task::spawn_blocking(move || compile(&wasm_engine, &bytes, cached.as_deref()))
        .await
        .map_err(|e| LoadError::Invalid { path: path.to_owned(), message: format!("compiler task failed: {e}") })?
        .map_err(invalid)?;
    let instance_pre = engine.linker.instantiate_pre(&component).map_err(invalid)?;
    let pre = PluginPre::new(instance_pre).map_err(invalid)?;
    tracing::info!(plugin = %name, %version, from_cache, path = %path.display(), "plugin loaded");
    Ok(Arc::new(LoadedPlugin { name, version, path: path.to_owned(), loaded_at: SystemTime::now(), from_cache, pre }))
}

/// Reads the cached artifact when there is a usable one, else compiles and
/// stores it. A cache that cannot be read or written only costs a compile.
fn compile(engine: &wasmtime::Engine, bytes: &[u8], cached: Option<&Path>) -> wasmtime::Result<(Component, bool)> {
    if let Some(file) = cached
        && let Err(why) = private_to_us(file)
    {
        if file.exists() {
            tracing::warn!(file = %file.display(), reason = %why, "compile cache entry not trusted; recompiling");
        }
    } else if let Some(file) = cached
        && let Ok(artifact) = std::fs::read(file)
    {
        // Read into memory rather than mapped: a file truncated under a mapping
        // would crash the process. SAFETY: the cache holds only what
        // `Component::serialize` wrote for this engine configuration (the name
        // carries its fingerprint) and is trusted like plugins_dir itself; a
        // corrupt entry fails wasmtime's checks here and is recompiled.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => tracing::warn!(file = %file.display(), error = %e, "compile cache entry unusable; recompiling"),
        }
    }
    let component = Component::from_binary(engine, bytes)?;
    if let Some(file) = cached
        && let Err(e) = store(&component, file)
    {
        tracing::warn!(file = %file.display(), error = %e, "cannot write the compile cache");
    }
    Ok((component, false))
}

fn store(component: &Component, file: &Path) -> wasmtime::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file.parent() {
        // Native code is loaded from here: nobody but the runtime's user may write it.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    // Written aside, then renamed: a concurrent reader never sees half an artifact.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let mut out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    out.write_all(&component.serialize()?)?;
    drop(out);
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// A compiled artifact is native code run without checks: it is loaded only
/// when it and its directory belong to the runtime's user and nobody else may
/// write to them.
fn private_to_us(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let us = unsafe { libc::geteuid() };
    let dir = file.parent().ok_or("no directory")?;
    for path in [dir, file] {
        let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            return Err(format!("{} is a symbolic link", path.display()));
        }
        if meta.uid() != us {
            return Err(format!("{} belongs to uid {}, not the runtime's uid {us}", path.display(), meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!("{} is writable by others (mode {:o})", path.display(), meta.mode() & 0o777));
        }
    }
    Ok(())
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
