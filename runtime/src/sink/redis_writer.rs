//! The version-guarded Redis writer: all keys of a batch in pipelines, each
//! applied by `guard.lua` only if its source position is newer than the key's.

use std::time::Duration;

use redis::{Pipeline, Script};

use super::cache::RedisCache;
use super::error::SinkError;
use super::meta::meta_key;
use super::ttl_jitter::TtlJitter;
use crate::contract::{CacheValue, Entry};
use crate::redis_conn::RedisConn;

/// Per-pipeline write settings.
#[derive(Debug, Clone)]
pub struct WriteSettings {
    /// Recorded in each key's metadata.
    pub pipeline: String,
    /// TTL for keys whose plugin gave none.
    pub safety_ttl: Option<Duration>,
    /// Added at random to every TTL, so keys written together expire apart.
    pub ttl_jitter: Option<TtlJitter>,
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
    /// How the write is ordered against others.
    pub kind: VersionKind,
    /// Commit time of the change, ms since the epoch.
    pub committed_at_ms: u64,
    /// When the value was read from the database, ms since the epoch.
    pub read_at_ms: u64,
}

/// How a write is ordered against the key's other writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionKind {
    /// A change: applies when its position is newer than the key's.
    Change,
    /// A snapshot read: applies to keys that have no version yet, and to keys
    /// whose every version (change or earlier snapshot read) is older, which
    /// repairs what a re-snapshot finds changed; it keeps the key's change
    /// version, so no streamed change ranks below it.
    Snapshot,
    /// A fill or resync that read the database after seeing the key's write
    /// count ([`crate::sink::KeyMeta::writes`], `None` = no metadata): applies
    /// only while that count is unchanged, and keeps the key's version, so any
    /// change not yet applied still outranks it.
    Repair {
        /// The write count seen before reading the database.
        seen_writes: Option<u64>,
    },
}

impl VersionKind {
    fn argument(self) -> String {
        match self {
            VersionKind::Change => "0".to_owned(),
            VersionKind::Snapshot => "1".to_owned(),
            VersionKind::Repair { seen_writes: None } => "cas:none".to_owned(),
            VersionKind::Repair { seen_writes: Some(n) } => format!("cas:{n}"),
        }
    }
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
    fn count(&mut self, codes: &[i64]) {
        for code in codes {
            match code {
                1 => self.applied += 1,
                2 => self.deleted += 1,
                _ => self.stale += 1,
            }
        }
    }

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
    /// A writer for one pipeline into `cache`.
    pub fn new(cache: RedisCache, settings: WriteSettings) -> Self {
        Self { cache, settings }
    }

    /// The cache written to.
    pub fn cache(&self) -> &RedisCache {
        &self.cache
    }

    /// Does the cache take a write within `timeout`?
    pub async fn check_writable(&self, timeout: Duration) -> Result<(), SinkError> {
        self.cache.check_writable(timeout).await
    }

    /// Writes all keys in as few pipeline round trips as the chunk size allows
    /// (on a cluster a chunk goes as one pipeline per primary, all at once).
    /// Reloads the script once if Redis lost it (a restart or `SCRIPT FLUSH`).
    /// A failure part-way is retried whole: keys already written then count as
    /// stale, since the guard never applies the same position twice.
    pub async fn write(&self, plugin: &str, writes: &[KeyWrite]) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();
        for chunk in writes.chunks(KEYS_PER_ROUND_TRIP) {
            let pipe = self.pipeline(plugin, chunk.iter())?;
            report.count(&run(self.cache.conn.clone(), &self.cache.script, pipe).await?);
        }
        Ok(report)
    }

    fn pipeline<'a>(&self, plugin: &str, writes: impl Iterator<Item = &'a KeyWrite>) -> Result<Pipeline, SinkError> {
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
            let ttl_ms = self.settings.ttl_jitter.map_or(ttl_ms, |jitter| jitter.apply(ttl_ms));
            command
                .arg(action)
                .arg(kind)
                .arg(&version.position)
                .arg(version.kind.argument())
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

/// Runs one pipeline of guard calls, loading the script first if Redis lost it.
async fn run(mut conn: RedisConn, script: &Script, pipe: Pipeline) -> Result<Vec<i64>, SinkError> {
    match pipe.query_async(&mut conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(&mut conn).await.map_err(SinkError::redis)?;
            pipe.query_async(&mut conn).await.map_err(SinkError::redis)
        }
        other => other.map_err(SinkError::redis),
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
