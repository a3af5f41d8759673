//! `[sources.<name>]` with `type = "redis-stream"`: the settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::redis_conn::RedisTarget;
use crate::secret::SecretUrl;

/// `[sources.<name>]` with `type = "redis-stream"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// Redis URL holding the streams, e.g. "redis://127.0.0.1:6379".
    pub url: SecretUrl,
    /// TLS files for a `rediss://` url: `{ ca_file, client_cert, client_key }`.
    #[serde(default)]
    pub tls: Option<crate::tls::RedisTls>,
    /// A file holding the password, which replaces the URL's (e.g. a mounted secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The url is one node of a Redis Cluster (default false). One read covers
    /// all `streams`, so on a cluster they must share a slot: give them a hash
    /// tag (Debezium's `topic.prefix = "{shop}"` makes `{shop}.public.product`),
    /// or use one source per stream.
    #[serde(default)]
    pub cluster: bool,
    /// Streams to consume, e.g. ["shop.public.product"] (Debezium: `<prefix>.<schema>.<table>`).
    pub streams: Vec<String>,
    /// Consumer group, created (with MKSTREAM) when missing, e.g. "evercache".
    #[serde(default = "default_group")]
    pub group: String,
    /// Consumer name within the group; keep it stable across restarts so own
    /// pending entries are re-read (default "evercache-<hostname>").
    #[serde(default)]
    pub consumer: Option<String>,
    /// Most entries read per stream and batch (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most entries applied as one batch once a backlog builds up (default 5000).
    /// Reads go on while a batch is applied and join the next batch up to this
    /// many entries, so a backlog is worked off in bigger batches in which the
    /// changes of a hot row are recomputed and written once; with no backlog a
    /// batch is whatever one read returned. A batch's keys are held in memory,
    /// so a fan-out pipeline (one change touching thousands of keys) may want it
    /// lower, e.g. 500.
    #[serde(default = "default_max_batch_entries")]
    pub max_batch_entries: usize,
    /// Most bytes of entries applied as one batch (default 33554432, 32 MiB):
    /// a backlog of big entries (Debezium's schema wrapper makes each a few
    /// KB) closes a batch before `max_batch_entries`. Up to four batches are
    /// held at once (one being read, the others being written or acknowledged).
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long one read blocks waiting for new entries (default "1s").
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// Where permanently failing records go; `{stream}` is replaced by the
    /// record's stream (default "{stream}:dlq").
    #[serde(default = "default_dead_letter_stream")]
    pub dead_letter_stream: String,
    /// Entries pending on any consumer of the group for longer than this (a
    /// crashed or stuck instance) are taken over with `XAUTOCLAIM` (default "60s").
    /// Keep it above the longest time a healthy batch takes.
    #[serde(default = "default_claim_idle", with = "humantime_serde")]
    pub claim_idle: Duration,
    /// An entry delivered more often than this without being acknowledged (its
    /// consumers keep crashing or stalling on it) is dead-lettered instead of
    /// delivered again; counted by the group's pending entries list (default 10).
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u64,
    /// Remove entries every group of the stream has acknowledged, with `XTRIM
    /// MINID` up to the oldest entry still pending or undelivered in *any* group
    /// (default false: the stream's producer or `MAXLEN` policy owns its size).
    #[serde(default)]
    pub trim_acked: bool,
    /// How often to trim when `trim_acked` is on (default "30s").
    #[serde(default = "default_trim_interval", with = "humantime_serde")]
    pub trim_interval: Duration,
}

fn default_group() -> String {
    "evercache".to_owned()
}
fn default_batch_size() -> usize {
    500
}
fn default_max_batch_entries() -> usize {
    5000
}
fn default_max_batch_bytes() -> usize {
    32 << 20
}
fn default_block() -> Duration {
    Duration::from_secs(1)
}
fn default_dead_letter_stream() -> String {
    "{stream}:dlq".to_owned()
}
fn default_claim_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_max_deliveries() -> u64 {
    10
}
fn default_trim_interval() -> Duration {
    Duration::from_secs(30)
}

impl RedisStreamConfig {
    /// Where the streams are.
    pub fn target(&self) -> RedisTarget {
        RedisTarget::new(&self.url, self.tls.as_ref(), self.cluster)
    }
}
