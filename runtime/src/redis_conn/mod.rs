//! One connection type for a single Redis (or Valkey) server and for a Redis
//! Cluster, so caches, stream sources, dead letters and probes are written
//! once. A cluster connection ([`cluster`]) splits pipelines per node and
//! follows `MOVED`/`ASK` by itself; a transaction must keep to one slot, which
//! [`key_slot`] lets callers check.

mod cluster;

use std::time::Duration;

pub use cluster::ClusterConn;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::secret::SecretUrl;
use crate::tls::RedisTls;

/// Where a Redis connection goes: a server, or (with `cluster`) any node of a
/// cluster, from which the others are discovered.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub url: SecretUrl,
    pub tls: Option<RedisTls>,
    pub cluster: bool,
}

/// A connection that reconnects by itself; cheap to clone (clones share it).
#[derive(Clone)]
pub enum RedisConn {
    Node(ConnectionManager),
    Cluster(ClusterConn),
}

impl RedisTarget {
    pub fn new(url: &SecretUrl, tls: Option<&RedisTls>, cluster: bool) -> Self {
        Self { url: url.clone(), tls: tls.cloned(), cluster }
    }

    /// Connects; every reply (for a cluster: including its redirections and
    /// retries) is waited for at most `response_timeout`.
    pub async fn connect(&self, response_timeout: Duration) -> Result<RedisConn, RedisError> {
        if !self.cluster {
            let client = crate::tls::redis_client(&self.url, self.tls.as_ref()).map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response_timeout))
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_max_delay(Duration::from_secs(2));
            return Ok(RedisConn::Node(ConnectionManager::new_with_config(client, config).await?));
        }
        crate::tls::init();
        Ok(RedisConn::Cluster(ClusterConn::connect(&self.url, self.tls.as_ref(), response_timeout).await?))
    }
}

fn invalid(message: String) -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis", message))
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// A server-wide command (`INFO`, `CONFIG GET`…) answered by every primary:
    /// one reply per node, named by address (the server's own for a single node).
    pub async fn per_primary<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> Result<Vec<(String, T)>, RedisError> {
        let reply: Value = cmd.query_async(self).await?;
        match (self, reply) {
            (RedisConn::Cluster(_), Value::Map(pairs)) => pairs
                .into_iter()
                .map(|(node, reply)| Ok((redis::from_redis_value(node)?, redis::from_redis_value(reply)?)))
                .collect(),
            (_, reply) => Ok(vec![("server".to_owned(), redis::from_redis_value(reply)?)]),
        }
    }
}

impl RedisConn {
    /// Every key matching the Redis glob `pattern`, by `SCAN` (on each primary
    /// of a cluster). Keys written or moved during the scan may be missed.
    pub async fn scan_match(&self, pattern: &str) -> Result<Vec<String>, RedisError> {
        let nodes: Vec<RedisConn> = match self {
            RedisConn::Node(_) => vec![self.clone()],
            RedisConn::Cluster(c) => c.primary_connections().await?.into_iter().map(RedisConn::Node).collect(),
        };
        let mut keys = Vec::new();
        for mut node in nodes {
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut node)
                    .await?;
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Node(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Node(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Redis Cluster's slot of a key: CRC16/XMODEM of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(close) if close > 0 => &key[open + 1..open + 1 + close],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis() {
        assert_eq!(key_slot(b"123456789"), 12739, "CRC16/XMODEM check value");
        // `CLUSTER KEYSLOT` answers, from a real Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"), "an empty tag hashes the whole key");
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }
}
