//! The plugin contract as Rust types, generated from `wit/evercache.wit` (the
//! one source of the contract): the change event, the host's query values and
//! rows, and the outcomes a plugin returns. Decoding, the query runner, the
//! writer and the plugin host all speak these types; only the host calls into
//! a component.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
    additional_derives: [PartialEq],
});

pub use self::evercache::plugin::types::{CacheValue, DbValue, Entry, LogLevel, Op, Rows};
