//! Write evercache cache plugins in Rust.
//!
//! A plugin tells the runtime which cache keys a database change touches
//! ([`Plugin::keys`]) and what those keys should hold now
//! ([`Plugin::recompute`]), reading the database through [`query()`]. Implement
//! the trait, add one [`export_plugin!`] line and build with
//! `cargo build --target wasm32-wasip2 --release`:
//!
//! ```ignore
//! use evercache_plugin_sdk::{export_plugin, query, Config, Event, Outcome, Plugin, PluginError};
//!
//! struct Products;
//!
//! impl Plugin for Products {
//!     fn init(_config: &Config) -> Result<Self, PluginError> {
//!         Ok(Products)
//!     }
//!     fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
//!         let id: i64 = event.row_field("id")?;
//!         Ok(vec![format!("product:{id}")])
//!     }
//!     fn recompute_one(&self, key: &str) -> Result<Outcome, PluginError> {
//!         let id: i64 = key.trim_start_matches("product:").parse().map_err(PluginError::bad_event)?;
//!         let rows = query!("select name from product where id = $1", id)?;
//!         match rows.iter().next() {
//!             Some(row) => Outcome::text(row.get::<String>("name")?),
//!             None => Ok(Outcome::delete()),
//!         }
//!     }
//! }
//!
//! export_plugin!(Products);
//! ```
//!
//! Everything a plugin sees is typed: [`Event`] with serde access to the row
//! images, [`Rows`] with typed cells, [`Outcome`] builders, and helpers for
//! Debezium's value encodings in [`debezium`].
#![deny(missing_docs)]

extern crate self as evercache_plugin_sdk;

mod config;
pub mod debezium;
mod event;
pub mod log;
mod outcome;
mod query;

/// Bindings generated from `wit/evercache.wit`; plugin code uses the re-exports.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "::evercache_plugin_sdk::bindings",
        runtime_path: "::evercache_plugin_sdk::__rt",
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

pub use bindings::evercache::plugin::types::{CacheValue, ChangeEvent, DbValue, Entry, Op, Outcome, PluginError, Rows};
pub use config::Config;
pub use event::Event;
pub use query::{FromDbValue, Row, ToDbValue, query};

/// A cache plugin. One value is built by [`Plugin::init`] per instance and
/// answers every call made to that instance. A pipeline runs two instances
/// (one plans the next batch's `keys` while the other recomputes) and rebuilds
/// one after a trap, so answers must not depend on state kept between calls.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from the pipeline's `[config]` table.
    fn init(config: &Config) -> Result<Self, PluginError>;

    /// The cache keys `event` touches (often one, sometimes many, possibly none).
    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError>;

    /// One outcome per key, in the order given. The default calls
    /// [`Plugin::recompute_one`] per key; override it to answer a whole batch
    /// with one query (`where id = any($1)`).
    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        keys.iter().map(|key| self.recompute_one(key)).collect()
    }

    /// The outcome for one key; used by the default [`Plugin::recompute`].
    fn recompute_one(&self, key: &str) -> Result<Outcome, PluginError> {
        let _ = key;
        Err(PluginError::other("the plugin implements neither recompute nor recompute_one"))
    }
}

/// Exports a [`Plugin`] implementation as the component's `init`, `keys` and
/// `recompute`: `export_plugin!(MyPlugin);`
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __EvercacheExport;

        impl $crate::bindings::Guest for __EvercacheExport {
            fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>) -> ::std::result::Result<(), $crate::PluginError> {
                $crate::__private::init::<$plugin>(config)
            }
            fn keys(event: $crate::ChangeEvent) -> ::std::result::Result<::std::vec::Vec<::std::string::String>, $crate::PluginError> {
                $crate::__private::keys::<$plugin>(event)
            }
            fn recompute(keys: ::std::vec::Vec<::std::string::String>) -> ::std::result::Result<::std::vec::Vec<$crate::Outcome>, $crate::PluginError> {
                $crate::__private::recompute::<$plugin>(keys)
            }
        }

        $crate::bindings::export!(__EvercacheExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    use super::{ChangeEvent, Config, Event, Outcome, Plugin, PluginError};

    thread_local! {
        // A component instance is single-threaded; the pipeline's plugin lives here.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with<T: Plugin, R>(f: impl FnOnce(&T) -> Result<R, PluginError>) -> Result<R, PluginError> {
        INSTANCE.with(|cell| match cell.borrow().as_ref().and_then(|b| b.downcast_ref::<T>()) {
            Some(plugin) => f(plugin),
            None => Err(PluginError::other("plugin called before init")),
        })
    }

    pub fn init<T: Plugin>(pairs: Vec<(String, String)>) -> Result<(), PluginError> {
        let plugin = T::init(&Config::new(pairs))?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn keys<T: Plugin>(event: ChangeEvent) -> Result<Vec<String>, PluginError> {
        with::<T, _>(|plugin| plugin.keys(&Event::from(event)))
    }

    pub fn recompute<T: Plugin>(keys: Vec<String>) -> Result<Vec<Outcome>, PluginError> {
        with::<T, _>(|plugin| plugin.recompute(&keys))
    }
}

impl PluginError {
    /// The event does not have the shape the plugin expects.
    pub fn bad_event(message: impl std::fmt::Display) -> Self {
        PluginError::BadEvent(message.to_string())
    }

    /// A query failed or returned something unexpected.
    pub fn query(message: impl std::fmt::Display) -> Self {
        PluginError::Query(message.to_string())
    }

    /// Anything else.
    pub fn other(message: impl std::fmt::Display) -> Self {
        PluginError::Other(message.to_string())
    }
}

impl From<serde_json::Error> for PluginError {
    fn from(e: serde_json::Error) -> Self {
        PluginError::BadEvent(e.to_string())
    }
}
