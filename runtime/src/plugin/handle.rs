//! A pipeline's plugin, whichever kind it is: a WebAssembly instance or a
//! native implementation, called through the same `keys`/`recompute`.

use super::instance::{CallError, PluginInstance};
use super::native::NativePlugin;
use crate::contract::{ChangeEvent, Outcome};

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
