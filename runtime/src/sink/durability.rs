//! Confirming a batch to its source only once the cache made its writes
//! durable: after the watermark's advance (the batch's last write), `WAIT`
//! for replicas, or `WAITAOF` for the AOF's fsync (Redis 7.2+, Valkey), on
//! every primary. A Redis that crashes then cannot take back writes its
//! source was told are done, so there is nothing to repair; the price is one
//! more round trip, and a replica's or a disk's delay, before each confirmation.

use std::time::Duration;

use redis::Value;
use serde::Deserialize;

use super::SinkError;
use crate::redis_conn::RedisConn;

/// `durability = { … }` on a cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durability {
    /// Replicas that must have the writes (`WAIT`; with `fsync`, have them
    /// fsynced to their AOF) before the source is told (default 0).
    #[serde(default)]
    pub replicas: u32,
    /// The primary's own AOF must have fsynced the writes (`WAITAOF`; needs
    /// `appendonly yes` and Redis 7.2+ or Valkey) (default false).
    #[serde(default)]
    pub fsync: bool,
    /// How long to wait for that per batch before trying again; the batch is
    /// not confirmed meanwhile (default "1s").
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

impl Durability {
    /// Refuses, at startup, what the cache cannot do: `fsync` without an AOF
    /// or without `WAITAOF`.
    pub(super) async fn check(&self, conn: &mut RedisConn, cache: &str) -> Result<(), SinkError> {
        if !self.fsync {
            return Ok(());
        }
        let unsupported = |message: String| SinkError::DurabilityUnsupported { cache: cache.to_owned(), message };
        let infos: Vec<(String, String)> =
            conn.per_primary(redis::cmd("INFO").arg("persistence")).await.map_err(SinkError::redis)?;
        for (node, info) in infos {
            if !info.lines().any(|line| line.trim() == "aof_enabled:1") {
                return Err(unsupported(format!("`fsync = true` needs `appendonly yes`, which {node} does not have")));
            }
        }
        let probe: Result<Value, _> = redis::cmd("WAITAOF").arg(0).arg(0).arg(0).query_async(conn).await;
        probe.map_err(|e| unsupported(format!("`fsync = true` needs WAITAOF (Redis 7.2+, Valkey): {e}")))?;
        Ok(())
    }

    /// Waits until every primary made the writes sent before on `conn`
    /// durable as asked, or says how far it got.
    pub(super) async fn wait(&self, conn: &RedisConn, cache: &str) -> Result<(), SinkError> {
        if self.replicas == 0 && !self.fsync {
            return Ok(());
        }
        let nodes: Vec<RedisConn> = match conn {
            RedisConn::Node(_) => vec![conn.clone()],
            // The node connections the cluster's writes went through.
            RedisConn::Cluster(cluster) => cluster
                .primary_connections()
                .await
                .map_err(SinkError::redis)?
                .into_iter()
                .map(RedisConn::Node)
                .collect(),
        };
        let timeout_ms = self.timeout.as_millis().max(1) as u64;
        for mut node in nodes {
            let (local, replicas) = if self.fsync {
                let reply: Vec<u32> = redis::cmd("WAITAOF")
                    .arg(1)
                    .arg(self.replicas)
                    .arg(timeout_ms)
                    .query_async(&mut node)
                    .await
                    .map_err(SinkError::redis)?;
                (reply.first().copied().unwrap_or(0), reply.get(1).copied().unwrap_or(0))
            } else {
                let reply: Value = redis::cmd("WAIT")
                    .arg(self.replicas)
                    .arg(timeout_ms)
                    .query_async(&mut node)
                    .await
                    .map_err(SinkError::redis)?;
                (1, redis::from_redis_value::<u32>(reply).unwrap_or(0))
            };
            if local < 1 || replicas < self.replicas {
                return Err(SinkError::NotDurable {
                    cache: cache.to_owned(),
                    message: format!(
                        "{} of {} replicas{} within {:?}",
                        replicas,
                        self.replicas,
                        if self.fsync {
                            format!(", local AOF fsync {}", if local >= 1 { "done" } else { "not done" })
                        } else {
                            String::new()
                        },
                        self.timeout
                    ),
                });
            }
        }
        Ok(())
    }
}
