//! A connected cache: the Redis connection (reconnecting by itself), the
//! guard script, and the write health check.

use super::eviction::UnsafeEviction;
use crate::secret::SecretUrl;
use std::path::PathBuf;
use std::time::Duration;

use redis::{RedisError, Script};
use serde::Deserialize;

use super::error::SinkError;
use crate::redis_conn::{RedisConn, RedisTarget};

/// The key a health check writes (with a short expiry).
const HEALTH_KEY: &str = "evercache:health";

/// `[caches.<name>]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Redis URL, e.g. "redis://127.0.0.1:6379" (`rediss://` for TLS).
    pub url: SecretUrl,
    /// TLS files for a `rediss://` url: `{ ca_file, client_cert, client_key }`.
    #[serde(default)]
    pub tls: Option<crate::tls::RedisTls>,
    /// A file holding the password, which replaces the URL's (e.g. a mounted secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The url is one node of a Redis Cluster (default false): the other nodes
    /// are discovered from it, writes follow `MOVED`/`ASK` through resharding
    /// and failover, and each key's metadata shares its slot.
    #[serde(default)]
    pub cluster: bool,
    /// How long a deleted key's version is remembered so a late, older write
    /// cannot resurrect it (default "10m").
    #[serde(default = "default_tombstone_ttl", with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// How long one batch write may take before it counts as failed (default "10s").
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// When Redis's `maxmemory-policy` is `allkeys-*`, which may evict a key's
    /// version metadata and keep its value: "warn" (default) logs it at
    /// startup, "refuse" refuses to start. `noeviction` and `volatile-*` are safe.
    #[serde(default)]
    pub unsafe_eviction: UnsafeEviction,
    /// Confirm a batch to its source only once the cache made its writes
    /// durable: `{ replicas = 1 }` waits for a replica (`WAIT`), `{ fsync =
    /// true }` for the AOF's fsync (`WAITAOF`, Redis 7.2+/Valkey), both
    /// together for a replica's fsync; `timeout` (default "1s") bounds each
    /// wait, after which it is tried again. Default: none (a crash may then
    /// take back writes, which evercache notices and repairs).
    #[serde(default)]
    pub durability: Option<super::durability::Durability>,
}

fn default_tombstone_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A connected cache; cheap to clone.
#[derive(Clone)]
pub struct RedisCache {
    name: String,
    pub(super) conn: RedisConn,
    pub(super) script: Script,
    pub(super) tombstone_ttl_ms: u64,
    pub(super) durability: Option<super::durability::Durability>,
    target: RedisTarget,
    response_timeout: Duration,
}

impl CacheConfig {
    /// Connects (the connection reconnects by itself afterwards) and loads the guard script.
    pub async fn build(&self, name: &str) -> Result<RedisCache, SinkError> {
        let mut conn = self.target().connect(self.response_timeout).await.map_err(SinkError::redis)?;
        super::eviction::check(&mut conn, name, self.unsafe_eviction).await?;
        let script = Script::new(include_str!("guard.lua"));
        // For a cluster this loads it on every node, replicas included.
        script.prepare_invoke().load_async(&mut conn).await.map_err(SinkError::redis)?;
        if let Some(durability) = &self.durability {
            durability.check(&mut conn, name).await?;
        }
        Ok(RedisCache {
            name: name.to_owned(),
            conn,
            script,
            tombstone_ttl_ms: self.tombstone_ttl.as_millis() as u64,
            durability: self.durability.clone(),
            target: self.target(),
            response_timeout: self.response_timeout,
        })
    }

    /// Where the cache is.
    pub fn target(&self) -> RedisTarget {
        RedisTarget::new(&self.url, self.tls.as_ref(), self.cluster)
    }
}

impl RedisCache {
    /// The `[caches.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to the cache, e.g. for reading metadata.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// A connection of its own to the cache, for commands that must not queue
    /// behind the writer's or block it (`WAIT` blocks its connection).
    pub async fn dedicated_connection(&self) -> Result<RedisConn, SinkError> {
        self.target
            .connect(self.response_timeout.max(self.durability.as_ref().map_or(Duration::ZERO, |d| d.timeout * 2)))
            .await
            .map_err(SinkError::redis)
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
