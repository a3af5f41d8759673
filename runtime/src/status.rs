//! The operational facts (source lag, dead letters, Redis memory, each pipeline's
//! last write) read straight from Redis and Postgres, so `evercache status`
//! works while the runtime is down; the runtime publishes the same facts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics as m;
use crate::pipeline::stats::StatsSnapshot;
use crate::redis_conn::{RedisConn, RedisTarget};
use crate::source::SourceError;
use crate::source::lag::{LagProbe, PROBE_TIMEOUT, SourceLag};

/// Redis hash per pipeline, in its cache, where the runtime leaves its figures.
pub fn status_key(pipeline: &str) -> String {
    format!("evercache:status:{pipeline}")
}

/// What one probe of a source found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceFacts {
    /// The `[sources.<name>]` name.
    pub source: String,
    /// Whether the probe reached it.
    pub up: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// Per stream (or slot).
    pub lags: Vec<SourceLag>,
}

/// What one probe of a cache found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheFacts {
    /// The `[caches.<name>]` name.
    pub cache: String,
    /// Redis `used_memory`, when reachable.
    pub used_memory: Option<u64>,
    /// Redis `keyspace_hits`: reads that found their key, since Redis started.
    pub keyspace_hits: Option<u64>,
    /// Redis `keyspace_misses`: reads that did not.
    pub keyspace_misses: Option<u64>,
    /// Why not, when it was not.
    pub error: Option<String>,
}

impl CacheFacts {
    /// Hits over all key lookups, as Redis counts them (every client's reads).
    pub fn hit_ratio(&self) -> Option<f64> {
        let (hits, misses) = (self.keyspace_hits?, self.keyspace_misses?);
        (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
    }
}

/// Everything one round of probes found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    /// When (Unix ms).
    pub at_ms: u64,
    /// By source, in config order.
    pub sources: Vec<SourceFacts>,
    /// By cache, in config order.
    pub caches: Vec<CacheFacts>,
}

impl Facts {
    /// The facts of source `name`.
    pub fn source(&self, name: &str) -> Option<&SourceFacts> {
        self.sources.iter().find(|s| s.source == name)
    }

    /// Sets the lag, pending, slot, memory and source-up gauges.
    pub fn publish(&self) {
        for source in &self.sources {
            let name = source.source.clone();
            metrics::gauge!(m::SOURCE_UP, "source" => name.clone()).set(if source.up { 1.0 } else { 0.0 });
            for lag in &source.lags {
                let labels = [("source", name.clone()), ("stream", lag.stream.clone())];
                if let Some(n) = lag.lag_entries {
                    metrics::gauge!(m::SOURCE_LAG_ENTRIES, &labels).set(n as f64);
                }
                if let Some(n) = lag.pending_entries {
                    metrics::gauge!(m::SOURCE_PENDING_ENTRIES, &labels).set(n as f64);
                }
                if let Some(n) = lag.lag_bytes {
                    let slot = lag.stream.trim_start_matches("slot ").to_owned();
                    metrics::gauge!(m::SLOT_LAG_BYTES, "source" => name.clone(), "slot" => slot).set(n as f64);
                }
                if let Some(seconds) = lag.lag_seconds {
                    metrics::gauge!(m::CAPTURE_LAG_SECONDS, "source" => name.clone()).set(seconds);
                }
            }
        }
        for cache in &self.caches {
            if let Some(bytes) = cache.used_memory {
                metrics::gauge!(m::REDIS_USED_MEMORY_BYTES, "cache" => cache.cache.clone()).set(bytes as f64);
            }
        }
    }
}

/// Probes every source and cache of a configuration.
pub struct Probes {
    sources: Vec<LagProbe>,
    /// Each cache, its connection once made, and whether the last round found it down.
    caches: Vec<(String, RedisTarget, Option<RedisConn>, bool)>,
}

impl Probes {
    /// Probes for every source and cache; nothing connects yet.
    pub fn new(config: &Config) -> Result<Self, SourceError> {
        let sources = config
            .runtime
            .sources
            .iter()
            .map(|(name, source)| LagProbe::new(name, source))
            .collect::<Result<_, _>>()?;
        let mut caches = Vec::new();
        for (name, cache) in &config.runtime.caches {
            crate::tls::redis_certificates(cache.tls.as_ref())
                .map_err(|message| SourceError::BadConfig { source_name: name.clone(), message })?;
            caches.push((name.clone(), cache.target(), None, false));
        }
        Ok(Self { sources, caches })
    }

    /// One round: every source's lag and every cache's memory.
    pub async fn collect(&mut self) -> Facts {
        let mut facts = Facts { at_ms: now_ms(), ..Facts::default() };
        for probe in &mut self.sources {
            let source = probe.source().to_owned();
            facts.sources.push(match probe.probe().await {
                Ok(lags) => SourceFacts { source, up: true, error: None, lags },
                Err(e) => SourceFacts { source, up: false, error: Some(e.to_string()), lags: Vec::new() },
            });
        }
        for (cache, target, conn, down) in &mut self.caches {
            // The whole call is bounded: a fresh connection retries with backoff.
            let info = tokio::time::timeout(PROBE_TIMEOUT, cache_info(target, conn))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
            *down = info.is_err();
            if info.is_err() {
                *conn = None;
            }
            facts.caches.push(match info {
                Ok([used_memory, hits, misses]) => CacheFacts {
                    cache: cache.clone(),
                    used_memory: Some(used_memory),
                    keyspace_hits: Some(hits),
                    keyspace_misses: Some(misses),
                    error: None,
                },
                Err(e) => CacheFacts { cache: cache.clone(), error: Some(e), ..CacheFacts::default() },
            });
        }
        facts
    }

    /// A connection to cache `name`, for the pipelines' status hashes; none
    /// while the last round found the cache down.
    pub async fn cache_conn(&mut self, name: &str) -> Option<RedisConn> {
        let (_, target, conn, down) = self.caches.iter_mut().find(|(n, ..)| n == name)?;
        if *down {
            return None;
        }
        if conn.is_none() {
            *conn = tokio::time::timeout(PROBE_TIMEOUT, target.connect(PROBE_TIMEOUT)).await.ok().and_then(Result::ok);
        }
        conn.clone()
    }
}

/// `used_memory`, `keyspace_hits` and `keyspace_misses` of the cache, summed
/// over its primaries for a cluster.
async fn cache_info(target: &RedisTarget, conn: &mut Option<RedisConn>) -> Result<[u64; 3], String> {
    let mut c = match conn {
        Some(c) => c.clone(),
        None => conn.insert(target.connect(PROBE_TIMEOUT).await.map_err(|e| e.to_string())?).clone(),
    };
    // Plain INFO (its default sections hold both): Redis before 7 takes one section only.
    let infos: Vec<(String, String)> = c.per_primary(&redis::cmd("INFO")).await.map_err(|e| e.to_string())?;
    let mut totals = [0; 3];
    for (node, info) in infos {
        for (total, field) in totals.iter_mut().zip(["used_memory:", "keyspace_hits:", "keyspace_misses:"]) {
            *total += info
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("INFO of {node} has no {}", field.trim_end_matches(':')))?;
        }
    }
    Ok(totals)
}

/// Writes a pipeline's figures to its status hash (kept a day after the runtime
/// stops); `running` is false for the last write before shutdown; `trouble`
/// says why the pipeline is not ready, when it is not.
pub async fn save_pipeline(
    conn: &mut RedisConn,
    pipeline: &str,
    stats: &StatsSnapshot,
    running: bool,
    trouble: Option<&str>,
) {
    let mut fields: Vec<(&str, String)> = vec![
        ("state", if running { "running" } else { "stopped" }.to_owned()),
        ("plugin", stats.plugin.clone()),
        ("plugin_loaded_at_ms", stats.plugin_loaded_at_ms.to_string()),
        ("events", stats.events.to_string()),
        ("dead_letters", stats.dead_letters.to_string()),
        ("updated_at_ms", now_ms().to_string()),
        ("read_hits", stats.reads.hits.to_string()),
        ("read_misses", stats.reads.misses.to_string()),
        ("read_filled", stats.reads.filled.to_string()),
        ("read_waited", stats.reads.waited.to_string()),
        ("read_failed", stats.reads.failed.to_string()),
        ("read_refreshed", stats.reads.refreshed.to_string()),
    ];
    for (name, value) in [
        ("last_write_at_ms", stats.last_write_at_ms),
        ("last_committed_at_ms", stats.last_committed_at_ms),
        ("last_delay_ms", stats.last_delay_ms),
    ] {
        if let Some(value) = value {
            fields.push((name, value.to_string()));
        }
    }
    if let Some(error) = stats.errors.last() {
        fields.push(("last_error", error.message.clone()));
        fields.push(("last_error_at_ms", error.at_ms.to_string()));
    }
    if let Some(gate) = &stats.gate {
        fields.push(("visibility_gate", gate.clone()));
    }
    let key = status_key(pipeline);
    let mut pipe = redis::pipe();
    match &stats.visibility_wait {
        Some(waiting) => fields.push(("visibility_wait", waiting.clone())),
        None => {
            pipe.hdel(&key, "visibility_wait").ignore();
        }
    }
    match trouble {
        Some(trouble) => fields.push(("trouble", trouble.to_owned())),
        None => {
            pipe.hdel(&key, "trouble").ignore();
        }
    }
    pipe.hset_multiple(&key, &fields).ignore().expire(&key, 86_400).ignore();
    if let Err(e) = pipe.query_async::<()>(conn).await {
        tracing::debug!(pipeline, error = %e, "cannot save pipeline status");
    }
}

/// `evercache status`: the facts as a table, read without the runtime.
pub async fn report(config: &Config) -> Result<String, SourceError> {
    let mut probes = Probes::new(config)?;
    let facts = probes.collect().await;
    let now = now_ms();
    let mut out = String::new();
    let mut rows = vec![
        [
            "PIPELINE",
            "SOURCE",
            "PLUGIN",
            "EVENTS",
            "DLQ",
            "LAG",
            "PENDING",
            "SLOT LAG",
            "FRESHEST",
            "LAST WRITE",
            "RUNTIME",
        ]
        .map(str::to_owned),
    ];
    let mut troubles = Vec::new();
    // Lines under the table: read-path figures and visibility gates.
    let mut reads = Vec::new();
    for (name, pipeline) in &config.pipelines {
        let saved: BTreeMap<String, String> = match probes.cache_conn(&pipeline.cache).await {
            Some(mut conn) => {
                redis::cmd("HGETALL").arg(status_key(name)).query_async(&mut conn).await.unwrap_or_default()
            }
            None => BTreeMap::new(),
        };
        let source = facts.source(&pipeline.source);
        let sum = |f: fn(&SourceLag) -> Option<u64>| {
            source.filter(|s| s.up).map(|s| s.lags.iter().filter_map(f).sum::<u64>()).map(|n| n.to_string())
        };
        let has = |f: fn(&SourceLag) -> Option<u64>| source.is_some_and(|s| s.lags.iter().any(|l| f(l).is_some()));
        let age = |field: &str| {
            saved.get(field).and_then(|v| v.parse::<u64>().ok()).map(|at| format!("{} ago", ago(now, at)))
        };
        let runtime = match saved.get("updated_at_ms").and_then(|v| v.parse::<u64>().ok()) {
            Some(at) if saved.get("state").is_some_and(|s| s == "stopped") => format!("stopped {} ago", ago(now, at)),
            Some(at) if now.saturating_sub(at) < 10_000 => "running".to_owned(),
            Some(at) => format!("seen {} ago", ago(now, at)),
            None => "never seen".to_owned(),
        };
        let count = |field: &str| saved.get(field).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if count("read_hits") + count("read_misses") > 0 {
            reads.push(format!(
                "pipeline {name}: reads {} hits, {} misses ({} recomputed, {} waited for, {} failed), {} refreshed ahead",
                count("read_hits"),
                count("read_misses"),
                count("read_filled"),
                count("read_waited"),
                count("read_failed"),
                count("read_refreshed")
            ));
        }
        if let Some(gate) = saved.get("visibility_gate") {
            reads.push(format!("pipeline {name}: visibility gate {gate}"));
        }
        if runtime == "running"
            && let Some(waiting) = saved.get("visibility_wait")
        {
            reads.push(format!("pipeline {name}: {waiting}"));
        }
        if runtime == "running"
            && let Some(trouble) = saved.get("trouble")
        {
            troubles.push((name.clone(), trouble.clone()));
        }
        let dash = || "-".to_owned();
        rows.push([
            name.clone(),
            format!("{}{}", pipeline.source, if source.is_some_and(|s| s.up) { "" } else { " (down)" }),
            saved.get("plugin").cloned().unwrap_or_else(|| pipeline.plugin.clone()),
            saved.get("events").cloned().unwrap_or_else(dash),
            sum(|l| l.dead_letters).unwrap_or_else(dash),
            if has(|l| l.lag_entries) { sum(|l| l.lag_entries) } else { None }.unwrap_or_else(dash),
            if has(|l| l.pending_entries) { sum(|l| l.pending_entries) } else { None }.unwrap_or_else(dash),
            match (
                sum(|l| l.lag_bytes).filter(|_| has(|l| l.lag_bytes)),
                source.filter(|s| s.up).and_then(|s| s.lags.iter().filter_map(|l| l.lag_seconds).reduce(f64::max)),
            ) {
                (Some(bytes), Some(seconds)) => format!("{bytes} B, {seconds:.1} s"),
                (Some(bytes), None) => format!("{bytes} B"),
                _ => dash(),
            },
            age("last_committed_at_ms").unwrap_or_else(dash),
            age("last_write_at_ms").unwrap_or_else(dash),
            runtime,
        ]);
    }
    write_table(&mut out, &rows);
    for line in &reads {
        let _ = writeln!(out, "{line}");
    }
    for (name, trouble) in &troubles {
        let _ = writeln!(out, "pipeline {name}: not ready: {trouble}");
    }
    for source in facts.sources.iter().filter(|s| !s.up) {
        let _ = writeln!(out, "source {}: unreachable: {}", source.source, source.error.as_deref().unwrap_or(""));
    }
    for cache in &facts.caches {
        match cache.used_memory {
            Some(bytes) => {
                let mib = bytes as f64 / 1048576.0;
                let _ = write!(out, "cache {}: used_memory {bytes} B ({mib:.1} MiB)", cache.cache);
                if let (Some(ratio), Some(hits), Some(misses)) =
                    (cache.hit_ratio(), cache.keyspace_hits, cache.keyspace_misses)
                {
                    let _ = write!(out, ", hit ratio {:.1}% ({hits} hits, {misses} misses)", ratio * 100.0);
                }
                out.push('\n');
            }
            None => {
                let _ = writeln!(out, "cache {}: unreachable: {}", cache.cache, cache.error.as_deref().unwrap_or(""));
            }
        }
    }
    Ok(out)
}

fn ago(now: u64, at: u64) -> String {
    let ms = now.saturating_sub(at);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}

fn write_table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}
