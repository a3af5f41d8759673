//! evercache keeps Redis caches correct when you do not control the writers.
//!
//! A change event travels through these modules, in this order:
//!
//! - [`source`]: reads batches of records (Redis Streams, Kafka, the built-in
//!   Postgres capture) and acknowledges them only after their cache writes succeeded.
//! - [`event`]: decodes Debezium envelopes into [`contract::ChangeEvent`]s with a
//!   comparable source position; heartbeats, transaction markers and tombstones
//!   are set aside.
//! - [`pipeline`]: routes events by table, asks the plugin which keys they touch,
//!   coalesces keys per batch, recomputes, writes, then acks; failures are retried,
//!   isolated or dead-lettered; builds and hot-reloads pipelines.
//! - [`plugin`]: the wasmtime host that loads WebAssembly components built against
//!   `wit/evercache.wit` and calls `init`, `keys` and `recompute`.
//! - [`query`]: the host's read-only `query` on the pipeline's Postgres pool.
//! - [`sink`]: the version-guarded Redis writer with per-key freshness metadata.
//!
//! [`contract`] holds the types the WIT contract defines, shared by all of them;
//! [`config`] reads the runtime file and the pipeline files; [`runtime`] wires
//! everything together and runs until shutdown; [`http`], [`status`] and
//! [`metrics`] report on it.

pub mod clock;
pub mod config;
pub mod contract;
pub mod event;
pub mod host;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod query;
pub mod read;
pub mod recovery;
pub mod redis_conn;
pub mod runtime;
pub mod secret;
pub mod sink;
pub mod source;
pub mod status;
pub mod tls;
