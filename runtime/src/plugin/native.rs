//! Plugins compiled into the host instead of loaded as WebAssembly: the same
//! `keys`/`recompute` contract without the sandbox. Used to measure what the
//! sandbox costs, and for embedders that ship their logic in the binary.

use futures::future::BoxFuture;

use super::instance::CallError;
use crate::contract::{ChangeEvent, Outcome};
use crate::query::QueryRunner;

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
