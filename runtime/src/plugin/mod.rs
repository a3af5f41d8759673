//! The WebAssembly plugin host: compiles components built against
//! `wit/evercache.wit`, instantiates them per pipeline in a sandbox (empty WASI
//! context, memory cap, deadlines the host enforces) and calls `init`, `keys`
//! and `recompute`. It knows nothing of sources, pipelines or caches.

mod engine;
mod handle;
mod host;
mod instance;
mod loader;
pub mod mapper;
mod native;
mod stdio;
pub mod tooling;

pub use engine::{PluginEngine, SandboxConfig};
pub use handle::PluginHandle;
pub use instance::{CallError, PluginInstance};
pub use loader::{LoadError, LoadedPlugin, load_dir, load_file};
pub use native::{NativeContext, NativeFactory, NativePlugin};
