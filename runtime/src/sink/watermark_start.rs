//! What a process finds of the watermarks the processes before it left, when
//! it starts: a cache that lost writes while no evercache watched it (a
//! restart, or a replica's promotion, while evercache was down or crashing)
//! has nothing to compare an advance with. The newest watermark of the source
//! tells when evercache last confirmed writes on that Redis, and whether that
//! process stopped cleanly after it; a Redis (re)started or promoted since a
//! watermark that is not a clean stop may have lost the writes made after it.
//! Losing them cannot be told from not having made them, so that case is
//! repaired: at worst a repair that was not needed, never a stale key.

use redis::Value;

use super::SinkError;
use super::watermark::{Lost, Watermark, key_prefix, parse_value};
use crate::clock::now_ms;
use crate::redis_conn::RedisConn;

/// The newest watermark on one Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Newest {
    token: u64,
    stopped: bool,
}

impl Watermark {
    /// Looks, on every primary, at the watermarks processes before this one
    /// left for the source (this process's own key, if it advanced already, is
    /// no different: it is newer than any restart it saw).
    pub async fn check_at_start(&self) -> Result<Vec<Lost>, SinkError> {
        let conn = self.cache.connection();
        let nodes: Vec<(String, RedisConn)> = match &conn {
            RedisConn::Node(_) => vec![("server".to_owned(), conn.clone())],
            RedisConn::Cluster(cluster) => cluster
                .primary_connections()
                .await
                .map_err(SinkError::redis)?
                .into_iter()
                .enumerate()
                .map(|(n, node)| (format!("primary {n}"), RedisConn::Node(node)))
                .collect(),
        };
        let prefix = key_prefix(&self.source);
        let mut lost = Vec::new();
        for (name, mut node) in nodes {
            let keys = node.scan_match(&format!("*{}*", glob_escape(&prefix))).await.map_err(SinkError::redis)?;
            // A longer source name sharing the prefix is another source's key.
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|key| key.split_once(&prefix).is_some_and(|(_, instance)| !instance.contains(':')))
                .filter(|key| !key.ends_with(self.key()))
                .collect();
            let Some(newest) = newest(&mut node, &keys).await? else { continue };
            if newest.stopped {
                continue;
            }
            let info: String = redis::cmd("INFO").query_async(&mut node).await.map_err(SinkError::redis)?;
            let since_ms = now_ms().saturating_sub(newest.token / 1000);
            if let Some(what) = verdict(&info, since_ms) {
                lost.push(Lost { cache: self.cache.name().to_owned(), node: name, what, survived: None });
            }
        }
        Ok(lost)
    }
}

/// The newest of `keys`' watermarks.
async fn newest(node: &mut RedisConn, keys: &[String]) -> Result<Option<Newest>, SinkError> {
    if keys.is_empty() {
        return Ok(None);
    }
    let mut reads = redis::pipe();
    for key in keys {
        reads.get(key);
    }
    let values: Vec<Value> = reads.query_async(node).await.map_err(SinkError::redis)?;
    Ok(values
        .into_iter()
        .filter_map(|value| match value {
            Value::BulkString(bytes) => std::str::from_utf8(&bytes).ok().and_then(parse_value),
            _ => None,
        })
        .map(|(token, stopped)| Newest { token, stopped })
        .max_by_key(|newest| newest.token))
}

/// Why a Redis whose newest watermark (not a clean stop) is `since_ms` old may
/// have lost writes made after it, from its `INFO`; `None` when it cannot have.
fn verdict(info: &str, since_ms: u64) -> Option<String> {
    let field = |name: &str| info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    let uptime_ms = field("uptime_in_seconds").and_then(|s| s.parse::<u64>().ok()).map(|s| s * 1000);
    let promoted = field("role") == Some("master") && field("second_repl_offset").is_some_and(|o| o != "-1");
    // Uptime is whole seconds: a Redis up for less than a second more than the
    // watermark's age may have started after it.
    match uptime_ms {
        Some(uptime_ms) if uptime_ms < since_ms + 1000 => Some(format!(
            "may have lost writes: its Redis started {:.0}s ago, after evercache's last watermark there ({:.1}s ago), \
             and the process that wrote it did not stop cleanly",
            uptime_ms as f64 / 1000.0,
            since_ms as f64 / 1000.0
        )),
        _ if promoted => Some(format!(
            "may have lost writes: its Redis is a promoted replica, and evercache's last watermark there ({}s ago) \
             is not a clean stop",
            since_ms / 1000
        )),
        _ => None,
    }
}

/// `text` with Redis glob characters escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP_AN_HOUR: &str =
        "# Server\r\nuptime_in_seconds:3600\r\n# Replication\r\nrole:master\r\nsecond_repl_offset:-1\r\n";

    #[test]
    fn a_redis_started_after_the_watermark_may_have_lost_writes() {
        let restarted = "uptime_in_seconds:10\r\nrole:master\r\nsecond_repl_offset:-1\r\n";
        let said = verdict(restarted, 60_000).expect("started after the watermark");
        assert!(said.contains("started 10s ago") && said.contains("60.0s ago"), "{said}");
        assert_eq!(verdict(UP_AN_HOUR, 60_000), None, "up since before the watermark");
        assert!(verdict(restarted, 9_500).is_some(), "within the second uptime rounds away counts as after");
        assert_eq!(verdict(restarted, 8_000), None, "up since before the watermark");
    }

    #[test]
    fn a_promoted_replica_may_have_lost_writes() {
        let promoted = "uptime_in_seconds:3600\r\nrole:master\r\nsecond_repl_offset:1234\r\n";
        assert!(verdict(promoted, 60_000).is_some_and(|s| s.contains("promoted replica")));
    }

    #[test]
    fn glob_characters_in_a_source_name_are_escaped() {
        assert_eq!(glob_escape("evercache:watermark:a*b?:"), "evercache:watermark:a\\*b\\?:");
    }
}
