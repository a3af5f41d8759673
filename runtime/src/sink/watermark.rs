//! A cache's watermark: a key evercache advances on the cache's Redis (on
//! each primary of a cluster) after the writes of every settled batch and
//! before the source hears the batch is done. Redis persists and replicates a
//! server's writes in the order it applied them, so a Redis that comes back
//! older than evercache's writes (restarted from an RDB file or an AOF synced
//! every second, a replica promoted before it caught up) also comes back with
//! its watermark behind the one evercache advanced last: writes were lost.
//!
//! Each process keeps a key of its own per source (advancing is `SET … GET`,
//! which reads the value it replaces), so instances never mistake each other's
//! advances for a loss.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use redis::Value;

use super::cache::RedisCache;
use super::error::SinkError;
use crate::clock::now_ms;
use crate::redis_conn::{RedisConn, key_slot};

/// How long a watermark outlives the last advance of its process.
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// Where a cache was found to have lost writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The `[caches.<name>]` name.
    pub cache: String,
    /// Which Redis: "server", or the cluster slot whose primary lost them.
    pub node: String,
    /// What was found, in a sentence.
    pub what: String,
    /// The watermark still there, when one is: every write made before this
    /// process advanced it survived.
    pub survived: Option<u64>,
}

/// What an advance did.
#[derive(Debug, Clone, Default)]
pub struct Advanced {
    /// The value advanced to (on every primary).
    pub token: u64,
    /// Where the cache was found to have lost writes.
    pub lost: Vec<Lost>,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache '{}' ({}) {}", self.cache, self.node, self.what)
    }
}

/// What an advance found where the value advanced before should be.
fn behind(found: Option<u64>, expected: u64) -> String {
    let found = match found {
        Some(found) => format!("watermark {found}, {} ms older", expected.saturating_sub(found) / 1000),
        None => "no watermark at all".to_owned(),
    };
    format!("came back older than evercache's writes: {found} than the {expected} advanced last")
}

/// A watermark's value: the token, and whether its process stopped after it.
pub(super) fn parse_value(text: &str) -> Option<(u64, bool)> {
    let mut parts = text.split_whitespace();
    let token = parts.next()?.parse().ok()?;
    Some((token, parts.next() == Some(STOPPED)))
}

/// Marks the last advance of a process that stopped cleanly.
const STOPPED: &str = "stopped";

/// One source's watermark on one cache; advanced by one task at a time.
pub struct Watermark {
    pub(super) cache: RedisCache,
    pub(super) source: String,
    key: String,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The value advanced last on each primary (`None` for a single server).
    last: HashMap<Option<u16>, u64>,
    token: u64,
    /// Hash tags that land a key on each slot asked for.
    tags: HashMap<u16, String>,
    /// Its own connection, made at the first advance: the batch's writes are
    /// all answered before it advances, so Redis applied them before, and a
    /// `WAIT` on it blocks no writer.
    conn: Option<RedisConn>,
}

impl Watermark {
    /// The watermark of `source`'s batches in `cache`, kept by `instance` (a
    /// name unique to this process).
    pub fn new(cache: RedisCache, source: &str, instance: &str) -> Self {
        let key = format!("{}{instance}", key_prefix(source));
        Self { cache, source: source.to_owned(), key, state: tokio::sync::Mutex::default() }
    }

    /// The `[caches.<name>]` name.
    pub fn cache(&self) -> &str {
        self.cache.name()
    }

    /// This process's key (on a cluster, after the hash tag).
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// Advances the watermark on every primary, in one round trip each; says
    /// where it was found behind the value advanced before (the first advance
    /// of a process compares with nothing).
    pub async fn advance(&self) -> Result<Advanced, SinkError> {
        self.advance_marked(false).await
    }

    /// The last advance of a process stopping cleanly: a process starting
    /// later that finds it knows nothing was written after it.
    pub async fn stop(&self) -> Result<Advanced, SinkError> {
        self.advance_marked(true).await
    }

    async fn advance_marked(&self, stopping: bool) -> Result<Advanced, SinkError> {
        let mut state = self.state.lock().await;
        let mut conn = match &state.conn {
            Some(conn) => conn.clone(),
            None => state.conn.insert(self.cache.dedicated_connection().await?).clone(),
        };
        let places: Vec<Option<u16>> = match &conn {
            RedisConn::Node(_) => vec![None],
            RedisConn::Cluster(cluster) => cluster.slot_per_primary().into_iter().map(Some).collect(),
        };
        state.token = (state.token + 1).max(now_ms() * 1000);
        let value = state.token;
        let text = if stopping { format!("{value} {STOPPED}") } else { value.to_string() };
        let mut writes = redis::pipe();
        for place in &places {
            let key = match place {
                None => self.key.clone(),
                Some(slot) => format!("{{{}}}{}", tag_for(&mut state.tags, *slot), self.key),
            };
            writes.cmd("SET").arg(key).arg(&text).arg("PX").arg(KEEP_FOR.as_millis() as u64).arg("GET");
        }
        let replies: Vec<Value> = match &mut conn {
            // A cluster connection sends each command to its slot's primary.
            RedisConn::Cluster(_) => {
                let mut replies = Vec::with_capacity(places.len());
                for command in writes.cmd_iter() {
                    replies.push(command.query_async(&mut conn).await.map_err(SinkError::redis)?);
                }
                replies
            }
            RedisConn::Node(_) => writes.query_async(&mut conn).await.map_err(SinkError::redis)?,
        };
        if let Some(durability) = &self.cache.durability {
            durability.wait(&conn, self.cache.name()).await?;
        }
        let mut lost = Vec::new();
        for (place, reply) in places.into_iter().zip(replies) {
            let found: Option<u64> = match reply {
                Value::BulkString(bytes) => std::str::from_utf8(&bytes).ok().and_then(parse_value).map(|(t, _)| t),
                _ => None,
            };
            if let Some(expected) = state.last.insert(place, value)
                && found.is_none_or(|found| found < expected)
            {
                let node = place.map_or_else(|| "server".to_owned(), |slot| format!("the primary of slot {slot}"));
                let what = behind(found, expected);
                lost.push(Lost { cache: self.cache.name().to_owned(), node, what, survived: found });
            }
        }
        Ok(Advanced { token: value, lost })
    }
}

impl Watermark {
    /// Each primary's `run_id` and replication role, which change when its
    /// Redis restarts or a replica takes over; by node.
    pub async fn identities(&self) -> Result<Vec<(String, String)>, SinkError> {
        let mut conn = self.cache.connection();
        let infos: Vec<(String, String)> = conn.per_primary(&redis::cmd("INFO")).await.map_err(SinkError::redis)?;
        Ok(infos.into_iter().map(|(node, info)| (node, identity(&info))).collect())
    }
}

/// "run_id … role …" from an `INFO` reply.
fn identity(info: &str) -> String {
    let field = |name: &str| {
        info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).unwrap_or("?").trim().to_owned()
    };
    format!("run_id {} role {}", field("run_id"), field("role"))
}

/// The start of every watermark key of `source`, whatever the process.
pub(super) fn key_prefix(source: &str) -> String {
    format!("evercache:watermark:{source}:")
}

/// A short hash tag whose slot is `slot`, found once by trying.
fn tag_for(tags: &mut HashMap<u16, String>, slot: u16) -> &str {
    tags.entry(slot).or_insert_with(|| {
        (0u32..).map(|n| format!("w{n}")).find(|tag| key_slot(tag.as_bytes()) == slot).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_found_for_every_slot_it_is_asked_for() {
        let mut tags = HashMap::new();
        for slot in [0u16, 5461, 10923, 16383] {
            let tag = tag_for(&mut tags, slot).to_owned();
            assert_eq!(key_slot(format!("{{{tag}}}evercache:watermark:s:i").as_bytes()), slot);
        }
    }

    #[test]
    fn identity_names_the_run_and_the_role() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n# Replication\r\nrole:master\r\n";
        assert_eq!(identity(info), "run_id abc123 role master");
    }

    #[test]
    fn a_loss_says_how_far_behind_the_cache_is() {
        let what = behind(Some(1_000_000), 3_500_000);
        let lost = Lost { cache: "main".into(), node: "server".into(), what, survived: Some(1_000_000) };
        assert!(lost.to_string().contains("2500 ms older"), "{lost}");
        assert!(behind(None, 1).contains("no watermark at all"));
    }

    #[test]
    fn a_value_says_whether_its_process_stopped_after_it() {
        assert_eq!(parse_value("1700000000000000"), Some((1_700_000_000_000_000, false)));
        assert_eq!(parse_value("1700000000000000 stopped"), Some((1_700_000_000_000_000, true)));
        assert_eq!(parse_value("junk"), None);
    }
}
