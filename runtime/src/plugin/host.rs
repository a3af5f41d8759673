//! What a plugin instance can reach: the host's `query` and `log`, an empty
//! WASI context, and the store limits.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::stdio::LogStream;
use crate::contract::{DbValue, LogLevel, Rows, evercache};
use crate::query::{QueryError, QueryRunner};

/// The data of one plugin instance's store.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    plugin: Arc<str>,
    pipeline: Arc<str>,
    database: Option<QueryRunner>,
    /// Set when a host query failed for a transient reason (the database
    /// unreachable or overloaded): the call's failure is then transient,
    /// whatever the plugin made of it.
    pub(crate) transient: Option<String>,
    /// Set when a host query was cancelled at the call's deadline: the call
    /// timed out, whatever the plugin made of it.
    pub(crate) deadline_hit: bool,
    /// True while a host query runs; read when a call is cut off at its deadline.
    pub(crate) in_query: bool,
    /// When the running call's `call_timeout` is up.
    pub(crate) call_deadline: Option<std::time::Instant>,
}

impl PluginState {
    pub(crate) fn new(
        plugin: Arc<str>,
        pipeline: Arc<str>,
        database: Option<QueryRunner>,
        memory_bytes: usize,
    ) -> Self {
        // No preopens, env, args or network: stdout/stderr go to the log.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(LogStream::new(plugin.clone(), "stdout"))
            .stderr(LogStream::new(plugin.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let wasi = wasi.build();
        // A Rust component needs a handful of instances, tables and memories;
        // the caps stop a crafted component from multiplying them.
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(16)
            .tables(16)
            .table_elements(100_000)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            plugin,
            pipeline,
            database,
            transient: None,
            deadline_hit: false,
            in_query: false,
            call_deadline: None,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl evercache::plugin::types::Host for PluginState {}

impl evercache::plugin::host::Host for PluginState {
    async fn query(&mut self, sql: String, params: Vec<DbValue>) -> Result<Rows, String> {
        let Some(database) = &self.database else {
            return Err(format!("pipeline '{}' has no database; set `database` in its pipeline file", self.pipeline));
        };
        let started = std::time::Instant::now();
        self.in_query = true;
        let result = database.query_until(&sql, &params, self.call_deadline).await;
        self.in_query = false;
        let labels = [("pipeline", self.pipeline.to_string()), ("plugin", self.plugin.to_string())];
        metrics::histogram!(crate::metrics::HOST_QUERY_SECONDS, &labels).record(started.elapsed().as_secs_f64());
        match result {
            Ok(rows) => Ok(rows),
            Err(e) => {
                if e.is_transient() {
                    self.transient = Some(e.to_string());
                }
                if matches!(e, QueryError::Deadline { .. }) {
                    self.deadline_hit = true;
                }
                tracing::debug!(plugin = %self.plugin, pipeline = %self.pipeline, error = %e, "host query failed");
                Err(e.to_string())
            }
        }
    }

    async fn log(&mut self, level: LogLevel, message: String) {
        let (plugin, pipeline) = (&*self.plugin, &*self.pipeline);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, pipeline, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, pipeline, "{message}"),
            LogLevel::Info => tracing::info!(plugin, pipeline, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, pipeline, "{message}"),
            LogLevel::Error => tracing::error!(plugin, pipeline, "{message}"),
        }
    }
}
