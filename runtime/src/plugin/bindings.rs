//! Host-side bindings generated from `wit/evercache.wit`, the one plugin contract.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
    additional_derives: [PartialEq],
});

pub use self::evercache::plugin::types::{CacheValue, DbValue, Entry, LogLevel, Op, Rows};
