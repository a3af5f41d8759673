//! evercache keeps Redis caches correct when you do not control the writers.
//!
//! A change event travels through these modules, in this order:
//!
//! - [`source`]: reads batches of raw records (Redis Streams) and acknowledges them
//!   only after their cache writes succeeded.
//! - [`event`]: decodes Debezium envelopes into [`event::ChangeEvent`]s with a
//!   comparable source position; heartbeats, transaction markers and tombstones
//!   are set aside.
//! - [`pipeline`]: routes events by table, asks the plugin which keys they touch,
//!   coalesces keys per batch, recomputes, writes, then acks; failures are retried
//!   or dead-lettered.
//! - [`plugin`]: the wasmtime host that loads WebAssembly components built against
//!   `wit/evercache.wit` and calls `init`, `keys` and `recompute`.
//! - [`recompute`]: the host's read-only `query` on the pipeline's Postgres pool.
//! - [`sink`]: the version-guarded Redis writer with per-key freshness metadata.
//!
//! [`config`] reads the runtime file and the pipeline files; [`runtime`] wires
//! everything together and runs until shutdown.

pub mod config;
pub mod event;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod recompute;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod status;
