//! Why a cache write failed, classified by what it means: a Redis that is
//! unreachable or cannot take writes for now is waited out; a key Redis refuses
//! is the batch's own.

use redis::RedisError;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(String, #[source] RedisError),
    /// The cache's eviction policy may evict the guard's metadata, and the
    /// configuration says to refuse it.
    #[error(
        "cache '{cache}': maxmemory-policy {policy} may evict a key's version metadata and keep its value; \
         use noeviction or a volatile-* policy"
    )]
    UnsafeEviction {
        /// The `[caches.<name>]` name.
        cache: String,
        /// The policy.
        policy: String,
    },
    /// The cache did not make a batch's writes durable (`durability`) in time;
    /// the batch is confirmed to its source only once it has.
    #[error("cache '{cache}': writes not durable yet: {message}")]
    NotDurable {
        /// The `[caches.<name>]` name.
        cache: String,
        /// How far it got.
        message: String,
    },
    /// The cache cannot do what its `durability` asks (no AOF, no `WAITAOF`).
    #[error("durability: {message}")]
    DurabilityUnsupported {
        /// The `[caches.<name>]` name.
        cache: String,
        /// What is missing.
        message: String,
    },
    /// A key the plugin returned cannot be written.
    #[error("key '{key}' {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

impl SinkError {
    pub(crate) fn redis(e: RedisError) -> Self {
        SinkError::Redis(e.to_string(), e)
    }

    /// Connection problems, timeouts, and the replies of a Redis that cannot
    /// take writes for now (`OOM`, `LOADING`, `BUSY`, `READONLY`, `TRYAGAIN`,
    /// `MASTERDOWN`, `CLUSTERDOWN`) pass: they are waited out instead of
    /// dead-lettering records.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Redis(_, e) => redis_transient(e),
            SinkError::NotDurable { .. } => true,
            SinkError::BadKey { .. } | SinkError::UnsafeEviction { .. } | SinkError::DurabilityUnsupported { .. } => {
                false
            }
        }
    }
}

/// Reply codes of a Redis that cannot serve for now, whatever the command.
const TRANSIENT_CODES: &[&str] =
    &["OOM", "LOADING", "BUSY", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "MISCONF"];

/// True for connection problems and for replies that say nothing about the
/// command itself; looks into every reply of a failed pipeline.
pub fn redis_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    let transient_code = |code: &str| TRANSIENT_CODES.contains(&code);
    if e.code().is_some_and(transient_code) {
        return true;
    }
    match e.clone().into_server_errors() {
        Some(errors) => errors.iter().any(|(_, error)| transient_code(error.code())),
        None => matches!(e.retry_method(), redis::RetryMethod::Reconnect | redis::RetryMethod::WaitAndRetry),
    }
}
