//! Building what `recompute` returns for a key.

use serde::Serialize;

use crate::{CacheValue, Entry, Outcome, PluginError};

impl Outcome {
    /// Store `value` as JSON text in a Redis string.
    pub fn json(value: &impl Serialize) -> Result<Self, PluginError> {
        let text = serde_json::to_string(value).map_err(PluginError::other)?;
        Ok(Self::put(Entry::Json(text)))
    }

    /// Store a Redis string.
    pub fn text(value: impl Into<String>) -> Result<Self, PluginError> {
        Ok(Self::put(Entry::Text(value.into())))
    }

    /// Store a Redis hash (field → value).
    pub fn hash<K: Into<String>, V: Into<String>>(fields: impl IntoIterator<Item = (K, V)>) -> Self {
        Self::put(Entry::Hash(fields.into_iter().map(|(k, v)| (k.into(), v.into())).collect()))
    }

    /// Store a Redis set.
    pub fn set<M: Into<String>>(members: impl IntoIterator<Item = M>) -> Self {
        Self::put(Entry::Set(members.into_iter().map(Into::into).collect()))
    }

    /// Store a Redis sorted set of (score, member).
    pub fn sorted_set<M: Into<String>>(members: impl IntoIterator<Item = (f64, M)>) -> Self {
        Self::put(Entry::SortedSet(members.into_iter().map(|(s, m)| (s, m.into())).collect()))
    }

    /// Remove the key: the row it was built from is gone.
    pub fn delete() -> Self {
        Outcome::Delete
    }

    /// Leave the key as it is.
    pub fn keep() -> Self {
        Outcome::Keep
    }

    /// Expire the stored value after `seconds` (no effect on delete or keep).
    pub fn with_ttl(self, seconds: u32) -> Self {
        match self {
            Outcome::Put(value) => Outcome::Put(CacheValue { ttl_seconds: Some(seconds), ..value }),
            other => other,
        }
    }

    fn put(entry: Entry) -> Self {
        Outcome::Put(CacheValue { entry, ttl_seconds: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        let json = Outcome::json(&serde_json::json!({"a": 1})).unwrap().with_ttl(5);
        assert!(
            matches!(json, Outcome::Put(CacheValue { entry: Entry::Json(ref t), ttl_seconds: Some(5) }) if t == r#"{"a":1}"#)
        );
        assert!(
            matches!(Outcome::hash([("f", "v")]), Outcome::Put(CacheValue { entry: Entry::Hash(ref h), .. }) if h.len() == 1)
        );
        assert!(
            matches!(Outcome::set(["a", "b"]), Outcome::Put(CacheValue { entry: Entry::Set(ref s), .. }) if s.len() == 2)
        );
        assert!(matches!(
            Outcome::sorted_set([(1.0, "a")]),
            Outcome::Put(CacheValue { entry: Entry::SortedSet(_), .. })
        ));
        assert!(matches!(Outcome::delete().with_ttl(3), Outcome::Delete));
        assert!(matches!(Outcome::keep(), Outcome::Keep));
    }
}
