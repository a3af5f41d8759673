//! The version guard keeps each key's version in `{K}:meta`, without a TTL.
//! An `allkeys-*` eviction policy may evict that metadata and keep the value:
//! the next write then finds no version and an older change can overwrite a
//! newer value. `noeviction` is safe (a full Redis refuses writes, which are
//! retried and reported); `volatile-*` evicts only keys with a TTL, so a live
//! key's metadata stays (a delete's tombstone, which has a TTL, may go early).
//! The policy is read at startup; an unsafe one is logged, or refused.

use crate::redis_conn::RedisConn;
use serde::Deserialize;

use super::SinkError;

/// What to do when the cache's eviction policy can evict metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsafeEviction {
    /// Log a warning at startup and run.
    #[default]
    Warn,
    /// Refuse to start.
    Refuse,
}

/// How an eviction policy treats the guard's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySafety {
    /// `noeviction`.
    Safe,
    /// `volatile-*`: metadata of live keys stays.
    KeepsLiveMetadata,
    /// `allkeys-*`: metadata may be evicted without its value.
    Unsafe,
}

/// Classifies a `maxmemory-policy` value.
pub fn classify(policy: &str) -> PolicySafety {
    if policy.starts_with("allkeys-") {
        PolicySafety::Unsafe
    } else if policy.starts_with("volatile-") {
        PolicySafety::KeepsLiveMetadata
    } else {
        PolicySafety::Safe
    }
}

/// Reads the policy (from `INFO memory`, which managed services allow where
/// `CONFIG GET` is not; of every primary of a cluster) and applies `on_unsafe`.
pub(super) async fn check(conn: &mut RedisConn, cache: &str, on_unsafe: UnsafeEviction) -> Result<(), SinkError> {
    let infos: Vec<(String, String)> =
        conn.per_primary(redis::cmd("INFO").arg("memory")).await.map_err(SinkError::redis)?;
    for (node, info) in infos {
        let field = |name: &str| {
            info.lines().find_map(|line| line.strip_prefix(name).and_then(|l| l.strip_prefix(':'))).map(str::trim)
        };
        let Some(policy) = field("maxmemory_policy") else { continue };
        let maxmemory = field("maxmemory").unwrap_or("0");
        match (classify(policy), on_unsafe) {
            (PolicySafety::Unsafe, UnsafeEviction::Refuse) => {
                return Err(SinkError::UnsafeEviction { cache: cache.to_owned(), policy: policy.to_owned() });
            }
            (PolicySafety::Unsafe, UnsafeEviction::Warn) => {
                tracing::warn!(
                    cache,
                    %node,
                    policy,
                    maxmemory,
                    "this eviction policy may evict a key's version metadata and keep its value, after which an \
                     older change can overwrite a newer value; use noeviction or a volatile-* policy (or set \
                     unsafe_eviction = \"refuse\" to refuse to start)"
                );
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sink::CacheConfig;

    #[test]
    fn policies_are_classified() {
        assert_eq!(classify("noeviction"), PolicySafety::Safe);
        assert_eq!(classify("volatile-lru"), PolicySafety::KeepsLiveMetadata);
        assert_eq!(classify("volatile-ttl"), PolicySafety::KeepsLiveMetadata);
        assert_eq!(classify("allkeys-lfu"), PolicySafety::Unsafe);
        assert_eq!(classify("allkeys-random"), PolicySafety::Unsafe);
    }

    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn an_allkeys_policy_is_refused_when_asked_and_warned_about_otherwise() {
        let port = evercache_test_kit::free_port();
        let server = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"])
            .stdout(Stdio::null())
            .spawn()
            .map(Server)
            .expect("redis-server runs; bash scripts/dev-services.sh installs it");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let config = |on_unsafe: &str| -> CacheConfig {
            toml::from_str(&format!("url = \"redis://127.0.0.1:{port}\"\nunsafe_eviction = \"{on_unsafe}\"")).unwrap()
        };
        let refused = config("refuse").build("main").await.err().expect("refused");
        assert_eq!(
            refused.to_string(),
            "cache 'main': maxmemory-policy allkeys-lru may evict a key's version metadata and keep its value; \
             use noeviction or a volatile-* policy"
        );
        assert!(config("warn").build("main").await.is_ok());
        drop(server);
    }
}
