//! The version-guarded Redis writer: all keys of a batch in one pipeline, each
//! applied by `guard.lua` only if its source position is newer than the key's.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, RedisError, Script};
use serde::Deserialize;

use super::meta::meta_key;
use crate::plugin::bindings::{CacheValue, Entry};

/// `[caches.<name>]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Redis URL, e.g. "redis://127.0.0.1:6379".
    pub url: String,
    /// How long a deleted key's version is remembered so a late, older write
    /// cannot resurrect it (default "10m").
    #[serde(default = "default_tombstone_ttl", with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// How long one batch write may take before it counts as failed (default "10s").
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
}

fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(String, #[source] RedisError),
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
            SinkError::BadKey { .. } => false,
        }
    }
}

/// The key a health check writes (with a short expiry).
const HEALTH_KEY: &str = "evercache:health";

/// Reply codes of a Redis that cannot serve for now, whatever the command.
const TRANSIENT_CODES: &[&str] =
    &["OOM", "LOADING", "BUSY", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "MISCONF"];

/// True for connection problems and for replies that say nothing about the
/// command itself; looks into every reply of a failed pipeline.
pub(crate) fn redis_transient(e: &RedisError) -> bool {
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

/// A connected cache; cheap to clone.
#[derive(Clone)]
pub struct RedisCache {
    name: String,
    conn: ConnectionManager,
    script: Script,
    tombstone_ttl_ms: u64,
}

impl CacheConfig {
    /// Connects (the connection reconnects by itself afterwards) and loads the guard script.
    pub async fn build(&self, name: &str) -> Result<RedisCache, SinkError> {
        let client = redis::Client::open(self.url.as_str()).map_err(SinkError::redis)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_max_delay(Duration::from_secs(2));
        let mut conn = ConnectionManager::new_with_config(client, config).await.map_err(SinkError::redis)?;
        let script = Script::new(include_str!("guard.lua"));
        script.prepare_invoke().load_async(&mut conn).await.map_err(SinkError::redis)?;
        Ok(RedisCache { name: name.to_owned(), conn, script, tombstone_ttl_ms: self.tombstone_ttl.as_millis() as u64 })
    }
}

impl RedisCache {
    /// The `[caches.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A writer for one pipeline.
    pub fn writer(&self, settings: WriteSettings) -> RedisWriter {
        RedisWriter { cache: self.clone(), settings }
    }

    /// A connection to the cache, e.g. for reading metadata.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Does the cache take a write within `timeout`? A write, not a `PING`:
    /// a Redis out of memory, loading, busy with a script or turned replica
    /// answers `PING` but refuses what the writer would send.
    pub async fn check_writable(&self, timeout: Duration) -> Result<(), SinkError> {
        let mut conn = self.conn.clone();
        let mut write = redis::cmd("SET");
        write.arg(HEALTH_KEY).arg(1).arg("PX").arg(10_000);
        match tokio::time::timeout(timeout, write.query_async::<()>(&mut conn)).await {
            Ok(answer) => answer.map_err(SinkError::redis),
            Err(_) => Err(SinkError::redis(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to a health check within {timeout:?}"),
            )))),
        }
    }
}

/// Per-pipeline write settings.
#[derive(Debug, Clone)]
pub struct WriteSettings {
    /// Recorded in each key's metadata.
    pub pipeline: String,
    /// TTL for keys whose plugin gave none.
    pub safety_ttl: Option<Duration>,
}

/// Writes one pipeline's batches.
#[derive(Clone)]
pub struct RedisWriter {
    cache: RedisCache,
    settings: WriteSettings,
}

/// One key to write.
#[derive(Debug, Clone)]
pub struct KeyWrite {
    /// The cache key.
    pub key: String,
    /// Store or delete.
    pub action: KeyAction,
    /// The version guarding the write.
    pub version: KeyVersion,
}

/// What to do with a key.
#[derive(Debug, Clone)]
pub enum KeyAction {
    /// Store this value.
    Put(CacheValue),
    /// Delete the key, leaving a tombstone version.
    Delete,
}

/// The version a write carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// Source position ("" when the source gave none).
    pub position: String,
    /// A snapshot read: applies only to keys that have no version yet.
    pub snapshot: bool,
    /// Commit time of the change, ms since the epoch.
    pub committed_at_ms: u64,
    /// When the value was read from the database, ms since the epoch.
    pub read_at_ms: u64,
}

/// What a batch write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// Keys stored.
    pub applied: usize,
    /// Keys deleted.
    pub deleted: usize,
    /// Keys skipped because a newer version was already there.
    pub stale: usize,
}

impl WriteReport {
    /// Adds another write's figures to these.
    pub fn add(&mut self, other: &WriteReport) {
        self.applied += other.applied;
        self.deleted += other.deleted;
        self.stale += other.stale;
    }
}

/// Most keys sent in one pipeline: a fan-out batch of many thousands of keys
/// goes in several round trips, so no single reply outlasts `response_timeout`.
const KEYS_PER_ROUND_TRIP: usize = 2000;

impl RedisWriter {
    /// Does the cache take a write within `timeout`?
    pub async fn check_writable(&self, timeout: Duration) -> Result<(), SinkError> {
        self.cache.check_writable(timeout).await
    }

    /// Writes all keys in as few pipeline round trips as the chunk size allows.
    /// Reloads the script once if Redis lost it (a restart or `SCRIPT FLUSH`).
    /// A failure part-way is retried whole: keys already written then count as
    /// stale, since the guard never applies the same position twice.
    pub async fn write(&self, plugin: &str, writes: &[KeyWrite]) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();
        let mut conn = self.cache.conn.clone();
        for chunk in writes.chunks(KEYS_PER_ROUND_TRIP) {
            let pipe = self.pipeline(plugin, chunk)?;
            let codes: Vec<i64> = match pipe.query_async(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    self.cache.script.prepare_invoke().load_async(&mut conn).await.map_err(SinkError::redis)?;
                    pipe.query_async(&mut conn).await.map_err(SinkError::redis)?
                }
                other => other.map_err(SinkError::redis)?,
            };
            for code in codes {
                match code {
                    1 => report.applied += 1,
                    2 => report.deleted += 1,
                    _ => report.stale += 1,
                }
            }
        }
        Ok(report)
    }

    fn pipeline(&self, plugin: &str, writes: &[KeyWrite]) -> Result<Pipeline, SinkError> {
        let mut pipe = redis::pipe();
        let hash = self.cache.script.get_hash();
        let tombstone = self.cache.tombstone_ttl_ms.to_string();
        for write in writes {
            let meta = meta_key(&write.key)?;
            let version = &write.version;
            let command = pipe.cmd("EVALSHA").arg(hash).arg(2).arg(&write.key).arg(meta);
            let (action, kind) = match &write.action {
                KeyAction::Delete => ("del", "text"),
                KeyAction::Put(value) => ("put", kind(&value.entry)),
            };
            let ttl_ms = match &write.action {
                KeyAction::Put(CacheValue { ttl_seconds: Some(s), .. }) => u64::from(*s) * 1000,
                _ => self.settings.safety_ttl.map_or(0, |t| t.as_millis() as u64),
            };
            command
                .arg(action)
                .arg(kind)
                .arg(&version.position)
                .arg(if version.snapshot { "1" } else { "0" })
                .arg(version.committed_at_ms)
                .arg(version.read_at_ms)
                .arg(plugin)
                .arg(&self.settings.pipeline)
                .arg(ttl_ms)
                .arg(&tombstone);
            if let KeyAction::Put(value) = &write.action {
                match &value.entry {
                    Entry::Text(text) | Entry::Json(text) => {
                        command.arg(text);
                    }
                    Entry::Hash(pairs) => {
                        for (field, value) in pairs {
                            command.arg(field).arg(value);
                        }
                    }
                    Entry::Set(members) => {
                        command.arg(members);
                    }
                    Entry::SortedSet(pairs) => {
                        for (score, member) in pairs {
                            command.arg(*score).arg(member);
                        }
                    }
                }
            }
        }
        Ok(pipe)
    }
}

fn kind(entry: &Entry) -> &'static str {
    match entry {
        Entry::Text(_) | Entry::Json(_) => "text",
        Entry::Hash(_) => "hash",
        Entry::Set(_) => "set",
        Entry::SortedSet(_) => "zset",
    }
}

#[cfg(test)]
mod tests;
