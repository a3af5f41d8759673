//! Sources of change records: they yield batches of raw records and acknowledge
//! them only after the batch's cache writes succeeded.

pub mod redis_stream;

use serde::Deserialize;

pub use redis_stream::{RedisStreamConfig, RedisStreamSource};

/// `[sources.<name>]` in the runtime file; the kind is chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SourceConfig {
    /// Debezium Server's Redis sink (or `evercache capture`) writing to Redis Streams.
    #[serde(rename = "redis-stream")]
    RedisStream(RedisStreamConfig),
}

/// One record as a source delivered it, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Stream (or topic) the record came from; Debezium names it `<prefix>.<schema>.<table>`.
    pub stream: String,
    /// The source's id for the record (a Redis Stream entry id).
    pub id: String,
    /// Field/value pairs in the order they were written.
    pub fields: Vec<(String, String)>,
}

/// Errors of a source; all of them are transient: the runtime waits and retries.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source server could not be reached or failed a command.
    #[error("source '{source_name}': {operation} failed: {message}")]
    Unavailable {
        /// The `[sources.<name>]` name.
        source_name: String,
        /// What was being done, e.g. "XREADGROUP".
        operation: &'static str,
        /// The server's or client's message.
        message: String,
    },
    /// The configuration cannot work (e.g. no streams).
    #[error("source '{source_name}': {message}")]
    BadConfig {
        /// The `[sources.<name>]` name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}
