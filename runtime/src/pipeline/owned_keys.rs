//! The keys a pipeline owns as the cache holds them now: what a `TRUNCATE`
//! of one of its tables recomputes, since no row names them any more.

use std::collections::BTreeSet;

use super::running::{Generation, Pipeline};
use crate::sink::{SinkError, companion_key};

impl Generation {
    /// Every cached key matching the pipeline's `key_patterns`, found by `SCAN`
    /// (each primary of a cluster); evercache's own metadata and lock keys are left out.
    pub(super) async fn owned_keys(&self) -> Result<Vec<String>, SinkError> {
        let conn = self.writer.cache().connection();
        let mut keys = BTreeSet::new();
        for pattern in &self.config.key_patterns {
            let found = conn.scan_match(&pattern.redis_glob()).await.map_err(SinkError::redis)?;
            keys.extend(found.into_iter().filter(|key| pattern.matches(key) && !is_companion(key)));
        }
        Ok(keys.into_iter().collect())
    }
}

impl Pipeline {
    /// Every cached key its current `key_patterns` match (see [`Generation::owned_keys`]).
    pub async fn owned_keys(&self) -> Result<Vec<String>, SinkError> {
        self.generation().owned_keys().await
    }
}

/// Is `key` the metadata hash or fill lock of another key?
fn is_companion(key: &str) -> bool {
    ["meta", "fill"].iter().any(|suffix| {
        key.strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix(':'))
            .map(|base| base.strip_prefix('{').and_then(|b| b.strip_suffix('}')).unwrap_or(base))
            .is_some_and(|base| companion_key(base, suffix).is_ok_and(|c| c == key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_lock_keys_are_companions() {
        for key in ["{product:1}:meta", "{product:1}:fill", "user:{42}:meta", "user:{42}:fill"] {
            assert!(is_companion(key), "{key}");
        }
        for key in ["product:1", "user:{42}", "product:meta", "{product:1}:other"] {
            assert!(!is_companion(key), "{key}");
        }
    }
}
