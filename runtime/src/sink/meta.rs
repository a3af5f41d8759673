//! Freshness metadata: every cached key `K` has a hash `{K}:meta` (or `K:meta`
//! when `K` already has a hash tag) in the same Redis Cluster slot, with fields
//! `pos`, `committed_at_ms`, `read_at_ms`, `plugin`, `pipeline`, `deleted`,
//! `writes` (a count of writes, which a fill or resync compares before it stores)
//! and `snap` (the newest snapshot read applied, once one was).

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::aio::ConnectionLike;

use super::error::SinkError;

/// The metadata hash of `key`, in the same cluster slot as `key`.
pub fn meta_key(key: &str) -> Result<String, SinkError> {
    companion_key(key, "meta")
}

/// `key` with `:suffix`, in the same cluster slot as `key`.
///
/// Redis hashes only the text between the first `{` and the next `}` when that
/// is non-empty; a key without such a tag is wrapped in one. A key containing `}`
/// but no tag cannot be colocated and is refused.
pub fn companion_key(key: &str, suffix: &str) -> Result<String, SinkError> {
    if let Some(open) = key.find('{')
        && let Some(close) = key[open + 1..].find('}')
        && close > 0
    {
        return Ok(format!("{key}:{suffix}"));
    }
    if key.contains('}') {
        return Err(SinkError::BadKey {
            key: key.to_owned(),
            reason: "contains '}' without a hash tag, so its metadata cannot share its cluster slot",
        });
    }
    Ok(format!("{{{key}}}:{suffix}"))
}

/// What the writer recorded about a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyMeta {
    /// Source position of the newest applied change ("" when unknown).
    pub position: String,
    /// Commit time of that change in the database, ms since the epoch.
    pub committed_at_ms: u64,
    /// When the value was read from the database, ms since the epoch.
    pub read_at_ms: u64,
    /// `name@version` of the plugin that computed it.
    pub plugin: String,
    /// The pipeline that wrote it.
    pub pipeline: String,
    /// True while the key is a tombstone.
    pub deleted: bool,
    /// Writes since the metadata was created (0 for metadata from before the count).
    pub writes: u64,
    /// Source position of the newest snapshot read applied ("" when none was).
    pub snapshot_position: String,
}

/// Reads a key's freshness metadata; `None` when the key was never written.
pub async fn read_meta<C: ConnectionLike + Send + Sync>(conn: &mut C, key: &str) -> Result<Option<KeyMeta>, SinkError> {
    let fields: HashMap<String, String> = conn.hgetall(meta_key(key)?).await.map_err(SinkError::redis)?;
    Ok(KeyMeta::from_fields(&fields))
}

impl KeyMeta {
    /// The metadata in a hash's fields; `None` when it has none.
    pub fn from_fields(fields: &HashMap<String, String>) -> Option<KeyMeta> {
        if fields.is_empty() {
            return None;
        }
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let number = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(KeyMeta {
            position: text("pos"),
            committed_at_ms: number("committed_at_ms"),
            read_at_ms: number("read_at_ms"),
            plugin: text("plugin"),
            pipeline: text("pipeline"),
            deleted: text("deleted") == "1",
            writes: number("writes"),
            snapshot_position: text("snap"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &str) -> u16 {
        crate::redis_conn::key_slot(key.as_bytes())
    }

    #[test]
    fn metadata_shares_the_key_slot() {
        assert_eq!(slot("123456789"), 12739, "CRC16/XMODEM check value");
        for key in ["specialist:42", "user:{42}:profile", "{a}", "x{y", "a{b}c{d}", "plain"] {
            let meta = meta_key(key).unwrap();
            assert_eq!(slot(key), slot(&meta), "{key} vs {meta}");
        }
        assert_eq!(meta_key("specialist:42").unwrap(), "{specialist:42}:meta");
        assert_eq!(meta_key("user:{42}").unwrap(), "user:{42}:meta");
        assert!(meta_key("odd}key").is_err());
        assert!(meta_key("x{}y").is_err(), "an empty tag is no tag");
    }
}
