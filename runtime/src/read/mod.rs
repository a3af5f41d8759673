//! The read path: `GET /v1/keys/{key}` answers from the cache, and a miss is
//! recomputed through the pipeline whose `key_patterns` own the key, once per
//! key however many ask (single-flight in the process, a Redis lock across
//! processes), and written as a repair, so a fill never wins against a change.
//! A key with a TTL is refreshed ahead of expiry by one of its readers.

mod cached;
pub mod config;
mod fill_batch;
mod fill_lock;
mod refresh;
pub mod resync;
pub mod resync_all;
pub mod resync_lease;
pub mod table_scan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::Serialize;

pub use cached::{CachedKey, read_cached};
pub use config::ReadConfig;
use fill_batch::FillBatches;
use fill_lock::FillLock;
use refresh::RefreshAhead;

use crate::pipeline::{OnChange, Pipeline, RepairKey};

/// How a read was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Served {
    /// From the cache as it was.
    Hit,
    /// Recomputed by this request.
    Filled,
    /// After another request or instance filled it.
    Waited,
}

/// A read's answer: the key as the cache now holds it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyReply {
    /// The key's state.
    #[serde(flatten)]
    pub cached: CachedKey,
    /// How it was answered.
    pub served: Served,
    /// The owning pipeline.
    pub pipeline: String,
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No pipeline's `key_patterns` match the key.
    #[error("no pipeline owns key \"{key}\": it matches none of the key_patterns ({patterns})")]
    NoOwner {
        /// The key.
        key: String,
        /// Every pipeline's patterns.
        patterns: String,
    },
    /// The key belongs to an `on_change = "invalidate"` pipeline, which deletes keys and never fills them.
    #[error("key \"{key}\" belongs to pipeline {pipeline}, which invalidates its keys and does not fill them")]
    NotFilled {
        /// The key.
        key: String,
        /// The owning pipeline.
        pipeline: String,
    },
    /// The plugin could not recompute the key; nothing was written.
    #[error("{0}")]
    Recompute(String),
    /// The cache could not be read or written.
    #[error("{0}")]
    Cache(String),
    /// Nobody filled the key in time.
    #[error("key \"{key}\" was not filled within {timeout:?} ([read] fill_timeout)")]
    Timeout {
        /// The key.
        key: String,
        /// `fill_timeout`.
        timeout: Duration,
    },
}

type SharedFill = Shared<BoxFuture<'static, Result<KeyReply, ReadError>>>;

/// Answers reads for the running pipelines.
pub struct ReadPath {
    pipelines: Vec<Arc<Pipeline>>,
    config: ReadConfig,
    /// Fills under way in this process, by key: later misses join them.
    filling: Mutex<HashMap<String, SharedFill>>,
    /// Keys being recomputed for reads, batched per pipeline.
    batches: Arc<FillBatches>,
    refresh: RefreshAhead,
}

impl ReadPath {
    /// A read path over `pipelines`.
    pub fn new(pipelines: Vec<Arc<Pipeline>>, config: ReadConfig) -> Arc<Self> {
        let refresh = RefreshAhead::new(config.refresh_ahead_beta);
        Arc::new(Self { pipelines, config, filling: Mutex::default(), batches: Arc::default(), refresh })
    }

    /// The key as the cache holds it, filled first if it is missing.
    pub async fn get(self: &Arc<Self>, key: &str) -> Result<KeyReply, ReadError> {
        let pipeline = self.owner(key)?;
        let mut conn = pipeline.cache().connection();
        let cached = read_cached(&mut conn, key).await.map_err(|e| ReadError::Cache(e.to_string()))?;
        let name = pipeline.name().to_owned();
        let hit = cached.found() || cached.deleted();
        pipeline.stats().read(hit);
        if hit {
            if let Some(ttl_ms) = cached.ttl_ms.filter(|_| cached.found())
                && self.refresh.due(&name, ttl_ms)
            {
                self.refresh_in_background(pipeline, key, cached.seen_writes());
            }
            return Ok(KeyReply { cached, served: Served::Hit, pipeline: name });
        }
        let (fill, joined) = self.join_or_start(key, pipeline);
        let result = fill.await;
        let how = match (&result, joined) {
            (Err(_), _) => "failed",
            (Ok(reply), false) if reply.served == Served::Filled => "recomputed",
            _ => "waited",
        };
        pipeline.stats().read_settled(how);
        result.map(|reply| if joined { KeyReply { served: Served::Waited, ..reply } } else { reply })
    }

    fn owner(&self, key: &str) -> Result<&Arc<Pipeline>, ReadError> {
        let owner = self.pipelines.iter().find(|p| p.owns(key));
        // An invalidate pipeline owns its keys only to delete them on a truncate; it never fills one.
        if let Some(pipeline) = owner.filter(|p| p.config().on_change == OnChange::Invalidate) {
            return Err(ReadError::NotFilled { key: key.to_owned(), pipeline: pipeline.name().to_owned() });
        }
        owner.ok_or_else(|| {
            let patterns: Vec<String> = self
                .pipelines
                .iter()
                .flat_map(|p| p.config().key_patterns.iter().map(|k| format!("{}: {k}", p.name())).collect::<Vec<_>>())
                .collect();
            let patterns = if patterns.is_empty() { "no pipeline has any".to_owned() } else { patterns.join(", ") };
            ReadError::NoOwner { key: key.to_owned(), patterns }
        })
    }

    /// The fill under way for `key`, or a new one; true when joined. The fill
    /// runs as a task of its own, so a client that goes away cancels nothing.
    fn join_or_start(self: &Arc<Self>, key: &str, pipeline: &Arc<Pipeline>) -> (SharedFill, bool) {
        let mut filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fill) = filling.get(key) {
            return (fill.clone(), true);
        }
        let task = tokio::spawn({
            let (this, key, pipeline) = (self.clone(), key.to_owned(), pipeline.clone());
            async move {
                let result = this.fill(&pipeline, &key).await;
                this.filling.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                result
            }
        });
        let fill =
            async move { task.await.unwrap_or_else(|e| Err(ReadError::Cache(format!("fill task failed: {e}")))) }
                .boxed()
                .shared();
        filling.insert(key.to_owned(), fill.clone());
        (fill, false)
    }

    /// Recomputes `key` in the background as a repair against the write count
    /// its reader saw; skipped when this process or another already refreshes it.
    fn refresh_in_background(self: &Arc<Self>, pipeline: &Arc<Pipeline>, key: &str, seen_writes: Option<u64>) {
        if !self.refresh.start(key) {
            return;
        }
        let (this, pipeline, key) = (self.clone(), pipeline.clone(), key.to_owned());
        tokio::spawn(async move {
            let conn = pipeline.cache().connection();
            match FillLock::try_acquire(&conn, &key, this.config.fill_timeout).await {
                Ok(Some(lock)) => {
                    let started = Instant::now();
                    let repaired = pipeline.repair(&[RepairKey { key: key.clone(), seen_writes }]).await;
                    lock.release().await;
                    match repaired {
                        Ok(_) => {
                            this.refresh.measured(pipeline.name(), started.elapsed());
                            pipeline.stats().read_refreshed();
                        }
                        Err(e) => {
                            tracing::warn!(key = %key, error = %e, "refresh-ahead failed; the key expires as it would have")
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(key = %key, error = %e, "refresh-ahead skipped"),
            }
            this.refresh.finish(&key);
        });
    }

    /// Fills `key` under the cross-instance lock, or waits for the holder's value.
    async fn fill(self: &Arc<Self>, pipeline: &Arc<Pipeline>, key: &str) -> Result<KeyReply, ReadError> {
        let cache = |e: crate::sink::SinkError| ReadError::Cache(e.to_string());
        let conn = pipeline.cache().connection();
        let timeout = self.config.fill_timeout;
        let deadline = Instant::now() + timeout;
        let reply = |cached, served| KeyReply { cached, served, pipeline: pipeline.name().to_owned() };
        loop {
            if let Some(lock) = FillLock::try_acquire(&conn, key, timeout).await.map_err(cache)? {
                let filled = self.fill_holding(pipeline, key).await;
                lock.release().await;
                return filled.map(|(cached, served)| reply(cached, served));
            }
            // Another instance is filling: wait for its value, or for its lock to go.
            let mut pause = Duration::from_millis(2);
            loop {
                if Instant::now() >= deadline {
                    return Err(ReadError::Timeout { key: key.to_owned(), timeout });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
                let cached = read_cached(&mut conn.clone(), key).await.map_err(cache)?;
                if cached.found() || cached.deleted() {
                    return Ok(reply(cached, Served::Waited));
                }
                if !FillLock::held(&conn, key).await.map_err(cache)? {
                    break;
                }
            }
        }
    }

    /// Recomputes `key` while holding its lock; the write counts as a repair.
    async fn fill_holding(
        self: &Arc<Self>,
        pipeline: &Arc<Pipeline>,
        key: &str,
    ) -> Result<(CachedKey, Served), ReadError> {
        let cache = |e: crate::sink::SinkError| ReadError::Cache(e.to_string());
        let mut conn = pipeline.cache().connection();
        // Seen before the database is read: a write after this makes the fill stale.
        let before = read_cached(&mut conn, key).await.map_err(cache)?;
        if before.found() || before.deleted() {
            return Ok((before, Served::Waited));
        }
        let repair = RepairKey { key: key.to_owned(), seen_writes: before.seen_writes() };
        let (this, name) = (self.clone(), pipeline.name().to_owned());
        self.batches.repair(pipeline, repair, move |elapsed| this.refresh.measured(&name, elapsed)).await?;
        let after = read_cached(&mut conn, key).await.map_err(cache)?;
        Ok((after, Served::Filled))
    }
}
