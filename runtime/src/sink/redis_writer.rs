//! STUB until merge: the version-guarded Redis writer.
use std::time::Duration;

use crate::plugin::bindings::CacheValue;
use redis::aio::ConnectionManager;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub url: String,
}
impl CacheConfig {
    pub async fn build(&self, _name: &str) -> Result<RedisCache, SinkError> {
        todo!()
    }
}
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
}
impl RedisCache {
    pub fn writer(&self, _settings: WriteSettings) -> RedisWriter {
        todo!()
    }
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}
pub struct WriteSettings {
    pub pipeline: String,
    pub safety_ttl: Option<Duration>,
}
#[derive(Clone)]
pub struct RedisWriter {}
pub struct KeyWrite {
    pub key: String,
    pub action: KeyAction,
    pub version: KeyVersion,
}
pub enum KeyAction {
    Put(CacheValue),
    Delete,
}
pub struct KeyVersion {
    pub position: String,
    pub snapshot: bool,
    pub committed_at_ms: u64,
    pub read_at_ms: u64,
}
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    pub applied: usize,
    pub deleted: usize,
    pub stale: usize,
}
impl RedisWriter {
    pub async fn write(&self, _plugin: &str, _writes: &[KeyWrite]) -> Result<WriteReport, SinkError> {
        todo!()
    }
}
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("x")]
    X,
}
impl SinkError {
    pub fn is_transient(&self) -> bool {
        true
    }
}
