//! Sources of change records: they yield batches of raw records and acknowledge
//! them only after the batch's cache writes succeeded.

mod acker;
pub mod change;
mod confirmations;
pub mod dead_letter;
pub mod forward;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lag;
pub mod mysql;
pub mod postgres;
pub mod record;
pub mod redis_stream;
mod snapshot_marks;
mod snapshot_mode;

use std::time::Duration;

use serde::Deserialize;

use crate::redis_conn::RedisTarget;

pub use acker::{Acker, CaptureAcker};
pub use change::{CapturedChange, Origin, SnapshotMark};
pub use dead_letter::{DeadLetter, StoredDeadLetter, read_dead_letters, replay_dead_letter};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaSource};
pub use mysql::{MySqlCapture, MySqlCaptureConfig};
pub use postgres::{PostgresCapture, PostgresCaptureConfig};
pub use record::{RecordBody, SourceRecord};
pub use redis_stream::{RedisStreamConfig, RedisStreamSource, StreamAcker};
pub use snapshot_mode::SnapshotMode;

/// Reads of a capture gathered into one batch at most, once a backlog builds
/// up (as a Redis Streams source's `max_batch_entries` is ten reads).
const CAPTURE_READS_PER_BATCH: usize = 10;
/// Bytes of a capture's records gathered into one batch at most.
const CAPTURE_MAX_BATCH_BYTES: usize = 32 << 20;

/// A capture's read-ahead limits: ten reads of `batch_size` at most.
fn capture_read_ahead(batch_size: usize) -> ReadAhead {
    ReadAhead { batch: batch_size * CAPTURE_READS_PER_BATCH, bytes: CAPTURE_MAX_BATCH_BYTES, full_read: batch_size }
}

/// `[sources.<name>]` in the runtime file; the kind is chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SourceConfig {
    /// Debezium Server's Redis sink (or `evercache capture`) writing to Redis Streams.
    #[serde(rename = "redis-stream")]
    RedisStream(RedisStreamConfig),
    /// evercache's own capture of a Postgres database's changes (logical replication).
    #[serde(rename = "postgres")]
    Postgres(PostgresCaptureConfig),
    /// evercache's own capture of a MySQL or MariaDB server's binlog.
    #[serde(rename = "mysql")]
    MySql(MySqlCaptureConfig),
    /// Debezium on Kafka Connect: a Kafka consumer group over the topics.
    #[cfg(feature = "kafka")]
    #[serde(rename = "kafka")]
    Kafka(KafkaConfig),
}

impl SourceConfig {
    /// Connects the source.
    pub async fn build(&self, name: &str) -> Result<Source, SourceError> {
        crate::tls::init();
        Ok(match self {
            SourceConfig::RedisStream(config) => Source::RedisStream(Box::new(config.build(name).await?)),
            SourceConfig::Postgres(config) => Source::Postgres(Box::new(config.build(name).await?)),
            SourceConfig::MySql(config) => Source::MySql(Box::new(config.build(name).await?)),
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(config) => Source::Kafka(Box::new(config.build(name).await?)),
        })
    }
}

impl SourceConfig {
    /// Where this source writes dead letters: the Redis URL and the stream names.
    pub fn dead_letter_streams(&self, name: &str) -> Result<(RedisTarget, Vec<String>), String> {
        match self {
            SourceConfig::RedisStream(c) => {
                Ok((c.target(), c.streams.iter().map(|s| c.dead_letter_stream.replace("{stream}", s)).collect()))
            }
            SourceConfig::Postgres(c) => Ok((
                RedisTarget::new(&c.dead_letter_url, None, false),
                c.stream_names()?.iter().map(|s| c.dead_letter_stream.replace("{stream}", s)).collect(),
            )),
            SourceConfig::MySql(c) => Ok((
                RedisTarget::new(&c.dead_letter_url, None, false),
                c.stream_names(name).iter().map(|s| c.dead_letter_stream.replace("{stream}", s)).collect(),
            )),
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(c) => Err(format!(
                "Kafka dead letters are records of the topic(s) `{}`; read them with a Kafka client (e.g. kcat)",
                c.dead_letter_topic
            )),
        }
    }
}

/// A connected source of either kind.
pub enum Source {
    /// Redis Streams (Debezium Server, `evercache capture`).
    RedisStream(Box<RedisStreamSource>),
    /// Built-in Postgres capture.
    Postgres(Box<PostgresCapture>),
    /// Built-in MySQL/MariaDB binlog capture.
    MySql(Box<MySqlCapture>),
    /// Kafka consumer group (Debezium on Kafka Connect).
    #[cfg(feature = "kafka")]
    Kafka(Box<KafkaSource>),
}

impl Source {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        match self {
            Source::RedisStream(s) => s.name(),
            Source::Postgres(s) => s.name(),
            Source::MySql(s) => s.name(),
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.name(),
        }
    }

    /// The next batch; empty when nothing arrived for a while.
    pub async fn next_batch(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        match self {
            Source::RedisStream(s) => s.next_batch().await,
            Source::Postgres(s) => s.next_batch().await,
            Source::MySql(s) => s.next_batch().await,
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.next_batch().await,
        }
    }

    /// A read ahead, while a batch is gathered: like [`Self::next_batch`], but
    /// waits only briefly for new records, so what was gathered is not held
    /// back by a quiet source.
    pub async fn read_more(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        match self {
            Source::RedisStream(s) => s.read_more().await,
            Source::Postgres(s) => s.read_more().await,
            Source::MySql(s) => s.read_more().await,
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.next_batch().await,
        }
    }

    /// How far to read ahead, into the next batch, while the current one is
    /// applied; `None` for no read-ahead. Redis Streams track every entry on
    /// its own; a built-in capture confirms each read's position once it and
    /// every read before it are settled.
    pub fn read_ahead(&self) -> Option<ReadAhead> {
        match self {
            Source::RedisStream(s) => {
                Some(ReadAhead { batch: s.max_batch_entries(), bytes: s.max_batch_bytes(), full_read: s.read_size() })
            }
            Source::Postgres(s) => Some(capture_read_ahead(s.batch_size())),
            Source::MySql(s) => Some(capture_read_ahead(s.batch_size())),
            #[cfg(feature = "kafka")]
            Source::Kafka(_) => None,
        }
    }

    /// A handle that settles batches from another task while this source
    /// reads on; `None` when batches must be settled on the source itself.
    pub fn acker(&self) -> Option<Acker> {
        match self {
            Source::RedisStream(s) => Some(Acker::Stream(s.acker().clone())),
            Source::Postgres(s) => Some(Acker::Capture(s.acker())),
            Source::MySql(s) => Some(Acker::Capture(s.acker())),
            #[cfg(feature = "kafka")]
            Source::Kafka(_) => None,
        }
    }

    /// What moves the source back to deliver again what a cache lost, where
    /// the source can: a Redis Streams group whose entries are still there.
    pub fn rewinder(&self) -> Option<StreamAcker> {
        match self {
            Source::RedisStream(s) => Some(s.acker().clone()),
            _ => None,
        }
    }

    /// Writes dead letters for records that failed for good.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        match self {
            Source::RedisStream(s) => s.dead_letter(records, letters).await,
            Source::Postgres(s) => s.dead_letter(records, letters).await,
            Source::MySql(s) => s.dead_letter(records, letters).await,
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.dead_letter(records, letters).await,
        }
    }

    /// Acknowledges a batch whose cache writes all succeeded.
    pub async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        match self {
            Source::RedisStream(s) => s.ack(records).await,
            Source::Postgres(s) => {
                s.settled(records.len());
                Ok(())
            }
            Source::MySql(s) => s.settled(records.len()).await,
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.ack(records).await,
        }
    }

    /// What keeps the source from being ready while it works (a capture
    /// re-reading its tables after a failover), for `/ready`.
    pub fn busy(&self) -> Option<&str> {
        match self {
            Source::Postgres(capture) => capture.busy(),
            _ => None,
        }
    }

    /// Records found lost since the last call, before they were read (a
    /// stream trimmed past the group, a Kafka offset past retention), each said
    /// in a sentence; the runner has the pipelines fed by the source repaired.
    pub fn take_gaps(&mut self) -> Vec<String> {
        match self {
            Source::RedisStream(s) => s.take_gaps(),
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.take_gaps(),
            _ => Vec::new(),
        }
    }

    /// The gaps taken last are recorded for repair: the source moves past
    /// them, so they are not found again.
    pub async fn gaps_recorded(&mut self) {
        match self {
            Source::RedisStream(s) => s.gaps_recorded().await,
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.gaps_recorded().await,
            _ => {}
        }
    }

    /// The batch handed out last has been applied for `waiting` without being
    /// settled (the database or a plugin holds it up). The capture then lets go
    /// of its replication connection, so the server is not held (a shutdown
    /// waits for its walsenders to be confirmed); it reopens it from the
    /// confirmed position once reading resumes.
    pub fn stalled(&mut self, waiting: Duration) {
        match self {
            Source::Postgres(capture) => capture.stalled(waiting),
            Source::MySql(capture) => capture.stalled(waiting),
            _ => {}
        }
    }

    /// Stops reading; called once, after the last batch.
    pub async fn close(&mut self) {
        match self {
            Source::Postgres(s) => s.shutdown().await,
            Source::MySql(s) => s.shutdown().await,
            #[cfg(feature = "kafka")]
            Source::Kafka(s) => s.shutdown().await,
            Source::RedisStream(_) => {}
        }
    }
}

/// Limits of reading ahead.
#[derive(Debug, Clone, Copy)]
pub struct ReadAhead {
    /// Most records gathered into one batch.
    pub batch: usize,
    /// Most bytes of records gathered into one batch.
    pub bytes: usize,
    /// A read returning this many records is full: more are waiting.
    pub full_read: usize,
}

/// Errors of a source; the runtime waits and retries every kind, and reports
/// a source failing for longer than `[http] stuck_after` as not ready.
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
    /// A batch's transactions are committed in the log but not yet visible to
    /// new queries (a synchronous standby or semi-sync replica that does not
    /// answer holds the commit): the batch is held, never handed on, and the
    /// next read waits on it again. Reported so `/ready` can say so.
    #[error("source '{source_name}': {message}")]
    NotVisible {
        /// The `[sources.<name>]` name.
        source_name: String,
        /// Which transactions, and for how long.
        message: String,
    },
    /// The source cannot go on without losing changes (e.g. its replication
    /// slot is gone); an operator must act. Retried, in case it comes back.
    #[error("source '{source_name}': halted: {message}")]
    Halted {
        /// The `[sources.<name>]` name.
        source_name: String,
        /// What happened and what to do.
        message: String,
    },
}

impl SourceError {
    /// The `kind` label of `evercache_source_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Unavailable { .. } => "unavailable",
            SourceError::BadConfig { .. } => "config",
            SourceError::Halted { .. } => "halted",
            SourceError::NotVisible { .. } => "not_visible",
        }
    }
}
