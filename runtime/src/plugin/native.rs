//! Plugins compiled into the host instead of loaded as WebAssembly: the same
//! `keys`/`recompute` contract without the sandbox. Used to measure what the
//! sandbox costs, and for embedders that ship their logic in the binary.

use futures::future::BoxFuture;

use super::bindings::{ChangeEvent, Outcome};
use super::instance::{CallError, PluginInstance};
use crate::recompute::query::QueryRunner;

/// A plugin implemented in Rust inside the host process.
pub trait NativePlugin: Send {
    /// `name@version`, recorded in each key's metadata.
    fn label(&self) -> String;
    /// The cache keys `event` touches.
    fn keys<'a>(&'a mut self, event: &'a ChangeEvent) -> BoxFuture<'a, Result<Vec<String>, CallError>>;
    /// One outcome per key, in order.
    fn recompute<'a>(&'a mut self, keys: &'a [String]) -> BoxFuture<'a, Result<Vec<Outcome>, CallError>>;
    /// A second instance for planning the next batch's keys while this one
    /// recomputes; `None` (the default) plans on this instance, one batch at a time.
    fn planner(&self) -> Option<Box<dyn NativePlugin>> {
        None
    }
}

/// What a native plugin is built from, like `init` for a component.
pub struct NativeContext {
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline's `[config]` pairs.
    pub config: Vec<(String, String)>,
    /// The pipeline's database, if it has one.
    pub database: Option<QueryRunner>,
}

/// Builds a native plugin for a pipeline; registered under a plugin name.
pub type NativeFactory = std::sync::Arc<dyn Fn(NativeContext) -> Result<Box<dyn NativePlugin>, String> + Send + Sync>;

/// A pipeline's plugin: a WebAssembly instance or a native implementation.
pub enum PluginHandle {
    /// A component from `plugins_dir`.
    Wasm(Box<PluginInstance>),
    /// Compiled into the host.
    Native(Box<dyn NativePlugin>),
}

impl PluginHandle {
    /// `name@version`.
    pub fn label(&self) -> String {
        match self {
            PluginHandle::Wasm(instance) => instance.plugin().label(),
            PluginHandle::Native(plugin) => plugin.label(),
        }
    }

    /// Another instance of the same plugin and pipeline wiring, for the keys of
    /// the next batch while this one recomputes; a component instance is
    /// instantiated and `init`-ed on its first call.
    pub fn planner(&self) -> Option<PluginHandle> {
        match self {
            PluginHandle::Wasm(instance) => {
                Some(PluginHandle::Wasm(Box::new(instance.with_plugin(instance.plugin().clone()))))
            }
            PluginHandle::Native(plugin) => plugin.planner().map(PluginHandle::Native),
        }
    }

    /// The cache keys `event` touches.
    pub async fn keys(&mut self, event: &ChangeEvent) -> Result<Vec<String>, CallError> {
        match self {
            PluginHandle::Wasm(instance) => instance.keys(event).await,
            PluginHandle::Native(plugin) => plugin.keys(event).await,
        }
    }

    /// One outcome per key, in order.
    pub async fn recompute(&mut self, keys: &[String]) -> Result<Vec<Outcome>, CallError> {
        match self {
            PluginHandle::Wasm(instance) => instance.recompute(keys).await,
            PluginHandle::Native(plugin) => plugin.recompute(keys).await,
        }
    }
}
