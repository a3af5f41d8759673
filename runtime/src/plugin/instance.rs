//! A plugin instantiated for one pipeline: `init`-ed with the pipeline's config,
//! reused across batches, and rebuilt after a trap or a timeout (such an
//! instance is poisoned). Every call ends at its deadline, enforced by the host:
//! the epoch interrupts wasm that runs too long, and the call itself is dropped
//! at the deadline while it waits (a WASI sleep or poll, a host query).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::engine::PluginEngine;
use super::host::PluginState;
use super::loader::LoadedPlugin;
use crate::contract::{ChangeEvent, Outcome, Plugin, PluginError};
use crate::query::QueryRunner;

/// Why a plugin call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin returned an error value.
    #[error("plugin {plugin}: `{call}` returned an error: {message}")]
    Plugin {
        /// `name@version`.
        plugin: String,
        /// `init`, `keys` or `recompute`.
        call: &'static str,
        /// The plugin's own message, prefixed with its kind.
        message: String,
    },
    /// The plugin trapped (panic, out of memory, unreachable, stack overflow).
    #[error("plugin {plugin}: `{call}` trapped: {message}")]
    Trap {
        /// `name@version`.
        plugin: String,
        /// The call.
        call: &'static str,
        /// wasmtime's trap message with the wasm backtrace.
        message: String,
    },
    /// The call ran past the sandbox's `call_timeout`.
    #[error("plugin {plugin}: `{call}` timed out after {timeout:?} (call_timeout){}", if *in_query { " while a host query ran" } else { "" })]
    Timeout {
        /// `name@version`.
        plugin: String,
        /// The call.
        call: &'static str,
        /// The limit.
        timeout: Duration,
        /// A host query was running at the deadline: the database, not the
        /// plugin, may be what hangs.
        in_query: bool,
    },
    /// The plugin broke the contract (e.g. fewer outcomes than keys).
    #[error("plugin {plugin}: `{call}` broke the contract: {message}")]
    Contract {
        /// `name@version`.
        plugin: String,
        /// The call.
        call: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A host query failed for a transient reason (the database unreachable or
    /// overloaded): retried while the database fails its health checks.
    #[error("plugin {plugin}: database unavailable or overloaded during `{call}`: {message}")]
    Unavailable {
        /// `name@version`.
        plugin: String,
        /// The call.
        call: &'static str,
        /// The database error.
        message: String,
    },
}

impl CallError {
    /// Transient failures are retried until they pass and never dead-lettered.
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Unavailable { .. })
    }
}

struct Live {
    store: Store<PluginState>,
    bindings: Plugin,
}

/// One pipeline's instance of a plugin.
pub struct PluginInstance {
    plugin: Arc<LoadedPlugin>,
    engine: PluginEngine,
    pipeline: Arc<str>,
    database: Option<QueryRunner>,
    config: Vec<(String, String)>,
    call_timeout: Duration,
    live: Option<Live>,
}

impl PluginInstance {
    /// Prepares an instance; it is instantiated and `init`-ed on first use or by [`Self::init`].
    pub fn new(
        engine: &PluginEngine,
        plugin: Arc<LoadedPlugin>,
        pipeline: &str,
        database: Option<QueryRunner>,
        config: Vec<(String, String)>,
    ) -> Self {
        let call_timeout = engine.sandbox.call_timeout;
        Self {
            plugin,
            engine: engine.clone(),
            pipeline: Arc::from(pipeline),
            database,
            config,
            call_timeout,
            live: None,
        }
    }

    /// Overrides the sandbox's `call_timeout` for this pipeline.
    pub fn with_call_timeout(mut self, timeout: Option<Duration>) -> Self {
        if let Some(timeout) = timeout {
            self.call_timeout = timeout;
        }
        self
    }

    /// The same pipeline wiring around another compiled plugin (a reload); not yet `init`-ed.
    pub fn with_plugin(&self, plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            plugin,
            engine: self.engine.clone(),
            pipeline: self.pipeline.clone(),
            database: self.database.clone(),
            config: self.config.clone(),
            call_timeout: self.call_timeout,
            live: None,
        }
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Instantiates the component and calls its `init` with the pipeline's config.
    pub async fn init(&mut self) -> Result<(), CallError> {
        self.live = None;
        let state = PluginState::new(
            Arc::from(self.plugin.name.as_str()),
            self.pipeline.clone(),
            self.database.clone(),
            self.engine.sandbox.memory_mib * 1024 * 1024,
        );
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|state| &mut state.limits);
        // Every epoch tick the call yields to the executor, so a plugin spinning
        // on the CPU never holds a runtime worker; past its deadline it traps.
        store.epoch_deadline_callback(|ctx| {
            if ctx.data().call_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        store.set_epoch_deadline(1);
        let deadline = Instant::now() + self.call_timeout;
        store.data_mut().call_deadline = Some(deadline);
        let bindings =
            match tokio::time::timeout_at(deadline.into(), self.plugin.pre.instantiate_async(&mut store)).await {
                Ok(instantiated) => instantiated.map_err(|e| self.trap("init", e))?,
                Err(_) => return Err(self.timeout("init", false)),
            };
        let mut live = Live { store, bindings };
        let result =
            tokio::time::timeout_at(deadline.into(), live.bindings.call_init(&mut live.store, &self.config)).await;
        let result = self.settle("init", &mut live, result)?;
        result.map_err(|e| self.plugin_error("init", e))?;
        self.live = Some(live);
        Ok(())
    }

    /// The cache keys `event` touches.
    pub async fn keys(&mut self, event: &ChangeEvent) -> Result<Vec<String>, CallError> {
        let (mut live, deadline) = self.take_live().await?;
        let result = tokio::time::timeout_at(deadline, live.bindings.call_keys(&mut live.store, event)).await;
        let result = self.settle("keys", &mut live, result)?;
        self.live = Some(live);
        let keys = result.map_err(|e| self.plugin_error("keys", e))?;
        let limit = self.engine.sandbox.max_keys_per_event;
        if keys.len() > limit {
            return Err(CallError::Contract {
                plugin: self.plugin.label(),
                call: "keys",
                message: format!(
                    "returned {} keys for one event; the limit is {limit} (sandbox.max_keys_per_event)",
                    keys.len()
                ),
            });
        }
        Ok(keys)
    }

    /// One outcome per key, in order.
    pub async fn recompute(&mut self, keys: &[String]) -> Result<Vec<Outcome>, CallError> {
        let (mut live, deadline) = self.take_live().await?;
        let result = tokio::time::timeout_at(deadline, live.bindings.call_recompute(&mut live.store, keys)).await;
        let result = self.settle("recompute", &mut live, result)?;
        self.live = Some(live);
        let outcomes = result.map_err(|e| self.plugin_error("recompute", e))?;
        if outcomes.len() != keys.len() {
            return Err(CallError::Contract {
                plugin: self.plugin.label(),
                call: "recompute",
                message: format!("returned {} outcomes for {} keys", outcomes.len(), keys.len()),
            });
        }
        Ok(outcomes)
    }

    /// The live instance, taken out for one call (a call that fails for the
    /// instance's own reasons does not put it back), and the call's deadline.
    async fn take_live(&mut self) -> Result<(Live, tokio::time::Instant), CallError> {
        if self.live.is_none() {
            self.init().await?;
        }
        let mut live = self.live.take().ok_or_else(|| CallError::Contract {
            plugin: self.plugin.label(),
            call: "init",
            message: "instance missing after init".to_owned(),
        })?;
        let deadline = Instant::now() + self.call_timeout;
        live.store.set_epoch_deadline(1);
        let state = live.store.data_mut();
        state.call_deadline = Some(deadline);
        state.transient = None;
        state.deadline_hit = false;
        state.in_query = false;
        Ok((live, deadline.into()))
    }

    /// Classifies a finished call; an instance that trapped or timed out is
    /// dropped by the caller not putting it back. A call cut off at its
    /// deadline was dropped where it waited: wasmtime unwinds its fiber.
    fn settle<T>(
        &self,
        call: &'static str,
        live: &mut Live,
        result: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, CallError> {
        let state = live.store.data_mut();
        let Ok(result) = result else {
            return Err(self.timeout(call, state.in_query));
        };
        if state.deadline_hit {
            return Err(self.timeout(call, true));
        }
        if let Some(message) = state.transient.take() {
            return Err(CallError::Unavailable { plugin: self.plugin.label(), call, message });
        }
        result.map_err(|e| self.trap(call, e))
    }

    fn timeout(&self, call: &'static str, in_query: bool) -> CallError {
        CallError::Timeout { plugin: self.plugin.label(), call, timeout: self.call_timeout, in_query }
    }

    fn trap(&self, call: &'static str, e: wasmtime::Error) -> CallError {
        if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            return self.timeout(call, false);
        }
        // `{:#}`: the cause chain and the wasm backtrace, without a host backtrace
        // (resolving one under RUST_BACKTRACE=1 would stall a runtime worker).
        CallError::Trap { plugin: self.plugin.label(), call, message: format!("{e:#}") }
    }

    fn plugin_error(&self, call: &'static str, error: PluginError) -> CallError {
        let message = match error {
            PluginError::BadEvent(m) => format!("bad event: {m}"),
            PluginError::Query(m) => format!("query: {m}"),
            PluginError::Other(m) => m,
        };
        CallError::Plugin { plugin: self.plugin.label(), call, message }
    }
}
