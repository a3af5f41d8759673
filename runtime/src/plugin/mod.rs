//! The WebAssembly plugin host.

pub mod bindings;
