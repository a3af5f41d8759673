//! The WebAssembly plugin host: compiles components built against
//! `wit/evercache.wit`, instantiates them per pipeline in a sandbox (empty WASI
//! context, memory cap, epoch deadline) and calls `init`, `keys` and `recompute`.

pub mod bindings;
mod engine;
mod host;
mod instance;
mod loader;
mod native;
pub mod reload;
mod stdio;
pub mod tooling;
mod watch;

pub use engine::{PluginEngine, SandboxConfig};
pub use instance::{CallError, PluginInstance};
pub use loader::{LoadError, LoadedPlugin, load_dir, load_file};
pub use native::{NativeContext, NativeFactory, NativePlugin, PluginHandle};
pub use reload::{ReloadConfig, ReloadSlot, Reloader};
