//! A cached key as the read path sees it: its value in JSON, its freshness
//! metadata and its remaining TTL, read in one atomic script call.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{Script, Value};
use serde::Serialize;
use serde_json::{Map, json};

use crate::redis_conn::RedisConn;
use crate::sink::{KeyMeta, SinkError, meta_key};

static READ_KEY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("read_key.lua")));

/// One key's state in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CachedKey {
    /// The key.
    pub key: String,
    /// Redis's type of the value (`string`, `hash`, `set`, `zset`, `list`), `none` when absent.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value: a string as it is, a hash as an object, a set as a sorted
    /// array, a sorted set as `[{"member", "score"}]` in score order, a list as
    /// an array; `null` when absent.
    pub value: serde_json::Value,
    /// Milliseconds the value has left, `null` when it has no TTL or is absent.
    pub ttl_ms: Option<i64>,
    /// What the writer recorded; `null` when the key was never written.
    pub meta: Option<KeyMeta>,
}

impl CachedKey {
    /// Is there a value?
    pub fn found(&self) -> bool {
        self.kind != "none"
    }

    /// Is the key a tombstone: its row is gone, and the deletion is recorded?
    pub fn deleted(&self) -> bool {
        !self.found() && self.meta.as_ref().is_some_and(|m| m.deleted)
    }

    /// The metadata's write count, as a repair must see it.
    pub fn seen_writes(&self) -> Option<u64> {
        self.meta.as_ref().map(|m| m.writes)
    }
}

/// Reads `key`, its metadata and its TTL at once.
pub async fn read_cached(conn: &mut RedisConn, key: &str) -> Result<CachedKey, SinkError> {
    let meta = meta_key(key)?;
    let reply: Value = READ_KEY.key(key).key(&meta).invoke_async(conn).await.map_err(SinkError::redis)?;
    parse(key, reply)
        .map_err(|message| SinkError::redis(redis::RedisError::from((redis::ErrorKind::Parse, "read script", message))))
}

fn parse(key: &str, reply: Value) -> Result<CachedKey, String> {
    let Value::Array(parts) = reply else { return Err(format!("expected an array, got {reply:?}")) };
    let [kind, value, meta, ttl] =
        <[Value; 4]>::try_from(parts).map_err(|p| format!("expected 4 parts, got {}", p.len()))?;
    let kind = text(&kind).ok_or("the type is not text")?;
    let value = match (kind.as_str(), value) {
        (_, Value::Nil) => serde_json::Value::Null,
        ("string", v) => json!(text(&v).ok_or("a string value is not text")?),
        ("hash", Value::Array(items)) => {
            let texts = texts(&items)?;
            let map: Map<String, serde_json::Value> = texts
                .chunks(2)
                .map(|pair| (pair[0].clone(), json!(pair.get(1).cloned().unwrap_or_default())))
                .collect();
            serde_json::Value::Object(map)
        }
        ("set", Value::Array(items)) => {
            let mut members = texts(&items)?;
            members.sort();
            json!(members)
        }
        ("zset", Value::Array(items)) => {
            let texts = texts(&items)?;
            let pairs: Vec<serde_json::Value> = texts
                .chunks(2)
                .map(|pair| {
                    let score = pair.get(1).and_then(|s| s.parse::<f64>().ok());
                    json!({"member": pair[0], "score": score})
                })
                .collect();
            json!(pairs)
        }
        ("list", Value::Array(items)) => json!(texts(&items)?),
        (other, v) => return Err(format!("unexpected {other} value {v:?}")),
    };
    let Value::Array(fields) = meta else { return Err("the metadata is not an array".to_owned()) };
    let fields = texts(&fields)?;
    let fields: HashMap<String, String> =
        fields.chunks(2).map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default())).collect();
    let ttl_ms = match ttl {
        Value::Int(ms) if ms >= 0 => Some(ms),
        _ => None,
    };
    Ok(CachedKey { key: key.to_owned(), kind, value, ttl_ms, meta: KeyMeta::from_fields(&fields) })
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

fn texts(values: &[Value]) -> Result<Vec<String>, String> {
    values.iter().map(|v| text(v).ok_or_else(|| format!("not text: {v:?}"))).collect()
}
