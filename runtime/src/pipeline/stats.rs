//! A pipeline's live figures: it feeds the Prometheus metrics and keeps the
//! last minutes per second, plus the last errors, for the status page.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use serde::Serialize;

use super::failure::ApplyError;
use crate::clock::now_ms;
use crate::event::{ChangeEvent, Op};
use crate::metrics as m;
use crate::plugin::CallError;
use crate::sink::WriteReport;

/// Seconds of history kept for the sparklines.
pub const HISTORY_SECONDS: usize = 300;
/// Errors kept for the status page.
const LAST_ERRORS: usize = 10;

/// One second of a pipeline's work.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    /// Unix second.
    pub at: u64,
    /// Events written in that second.
    pub events: u64,
    /// Largest end-to-end delay (ms) among them; 0 when none had a commit time.
    pub max_delay_ms: u64,
}

/// An error the pipeline met, for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The error's kind (plugin/trap/timeout/contract/unavailable/sink/ordering).
    pub kind: String,
    /// Its message.
    pub message: String,
}

/// The read path's figures for the keys a pipeline owns, since start.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReadCounts {
    /// Reads answered from the cache as it was.
    pub hits: u64,
    /// Reads that found no value.
    pub misses: u64,
    /// Misses this process recomputed.
    pub filled: u64,
    /// Misses answered after another request or instance filled the key.
    pub waited: u64,
    /// Misses that failed (plugin, cache or timeout).
    pub failed: u64,
    /// Keys recomputed ahead of their expiry.
    pub refreshed: u64,
}

/// Totals and history of one pipeline, as the status page shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    /// `name@version` of the running plugin.
    pub plugin: String,
    /// When that version was loaded (Unix ms).
    pub plugin_loaded_at_ms: u64,
    /// Events written since start.
    pub events: u64,
    /// Records dead-lettered since start.
    pub dead_letters: u64,
    /// Keys recomputed since start.
    pub keys_recomputed: u64,
    /// Guarded writes applied / skipped as stale / deleted since start.
    pub writes: [u64; 3],
    /// End-to-end delay of the last written event with a commit time (ms).
    pub last_delay_ms: Option<u64>,
    /// Commit time (Unix ms) of the newest change written.
    pub last_committed_at_ms: Option<u64>,
    /// When the last batch was written (Unix ms).
    pub last_write_at_ms: Option<u64>,
    /// When the batch being applied now was started (Unix ms); `None` while idle.
    pub busy_since_ms: Option<u64>,
    /// The last `HISTORY_SECONDS` seconds, oldest first, gaps filled with zeros.
    pub history: Vec<Second>,
    /// The last errors, newest last.
    pub errors: Vec<ErrorEntry>,
    /// The read path's figures.
    pub reads: ReadCounts,
    /// The visibility gate: "on: <how>" or "off: <why>"; `None` until the
    /// first batch whose events name their transactions decided it.
    pub gate: Option<String>,
    /// What a batch held by the gate waits for, and how long it has.
    pub visibility_wait: Option<String>,
}

/// A pipeline's live figures.
#[derive(Debug)]
pub struct PipelineStats {
    pipeline: String,
    plugin: String,
    inner: Mutex<StatsSnapshot>,
}

impl PipelineStats {
    /// Empty figures for `pipeline` running `plugin` (its name, without version).
    pub fn new(pipeline: &str, plugin: &str) -> Self {
        Self { pipeline: pipeline.to_owned(), plugin: plugin.to_owned(), inner: Mutex::default() }
    }

    /// Publishes which plugin version runs and since when.
    pub fn plugin_loaded(&self, version: &str, loaded_at: SystemTime) {
        let at = loaded_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let labels = [("pipeline", self.pipeline.clone()), ("plugin", self.plugin.clone())];
        gauge!(m::PLUGIN_LOADED_SECONDS, &[&labels[..], &[("version", version.to_owned())]].concat()).set(at);
        m::register_plugin(&self.plugin);
        let mut inner = self.lock();
        inner.plugin = format!("{}@{version}", self.plugin);
        inner.plugin_loaded_at_ms = (at * 1000.0) as u64;
    }

    /// A read of an owned key found a value (or a tombstone), or missed.
    pub fn read(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        counter!(m::READS_TOTAL, "pipeline" => self.pipeline.clone(), "result" => result).increment(1);
        let mut inner = self.lock();
        if hit {
            inner.reads.hits += 1;
        } else {
            inner.reads.misses += 1;
        }
    }

    /// A miss was settled: `recomputed` here, `waited` for, or `failed`.
    pub fn read_settled(&self, how: &'static str) {
        counter!(m::READ_FILLS_TOTAL, "pipeline" => self.pipeline.clone(), "how" => how).increment(1);
        let mut inner = self.lock();
        match how {
            "recomputed" => inner.reads.filled += 1,
            "waited" => inner.reads.waited += 1,
            _ => inner.reads.failed += 1,
        }
    }

    /// A key was refreshed ahead of its expiry.
    pub fn read_refreshed(&self) {
        counter!(m::READ_REFRESHES_TOTAL, "pipeline" => self.pipeline.clone()).increment(1);
        self.lock().reads.refreshed += 1;
    }

    /// A batch is being applied from now on.
    pub fn started(&self) {
        self.lock().busy_since_ms = Some(now_ms());
    }

    /// How the visibility gate checks, or why it does not.
    pub fn set_gate(&self, state: String) {
        self.lock().gate = Some(state);
    }

    /// What a held batch waits for (`None`: nothing is held).
    pub fn set_visibility_wait(&self, waiting: Option<String>) {
        self.lock().visibility_wait = waiting;
    }

    /// Keys planned for one attempt: `named` by the plugin, `distinct` after coalescing.
    pub fn planned(&self, events: usize, named: usize, distinct: usize) {
        let p = self.pipeline.clone();
        histogram!(m::BATCH_EVENTS, "pipeline" => p.clone()).record(events as f64);
        counter!(m::KEYS_PLANNED_TOTAL, "pipeline" => p.clone()).increment(named as u64);
        counter!(m::KEYS_RECOMPUTED_TOTAL, "pipeline" => p.clone()).increment(distinct as u64);
        if distinct > 0 {
            histogram!(m::COALESCING_RATIO, "pipeline" => p).record(named as f64 / distinct as f64);
        }
        self.lock().keys_recomputed += distinct as u64;
    }

    /// One `recompute` call took `elapsed`.
    pub fn recomputed(&self, elapsed: Duration) {
        histogram!(m::RECOMPUTE_SECONDS, "pipeline" => self.pipeline.clone()).record(elapsed.as_secs_f64());
    }

    /// The guarded writes of one attempt succeeded.
    pub fn written(&self, report: &WriteReport) {
        for (outcome, n) in [("applied", report.applied), ("stale", report.stale), ("deleted", report.deleted)] {
            counter!(m::WRITES_TOTAL, "pipeline" => self.pipeline.clone(), "outcome" => outcome).increment(n as u64);
        }
        let mut inner = self.lock();
        inner.writes[0] += report.applied as u64;
        inner.writes[1] += report.stale as u64;
        inner.writes[2] += report.deleted as u64;
    }

    /// The batch is done: `failed` of `events` (by index) were dead-lettered, the rest written.
    pub fn finished(&self, events: &[(usize, ChangeEvent)], failed: &[usize]) {
        let now = now_ms();
        let mut written = 0;
        let mut max_delay = None::<u64>;
        let mut newest = None::<u64>;
        // Counted per batch and looked up once: a backlog batch holds thousands of events.
        let mut counts: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        let delays = histogram!(m::DELAY_SECONDS, "pipeline" => self.pipeline.clone());
        for (record, event) in events {
            let outcome = if failed.contains(record) { "dead_lettered" } else { "written" };
            *counts.entry((op_code(event.op), outcome)).or_default() += 1;
            if outcome == "dead_lettered" {
                continue;
            }
            written += 1;
            // Snapshot reads carry the snapshot's time, not a change's: no delay.
            if event.committed_at_ms > 0 && event.op != Op::SnapshotRead {
                let delay = now.saturating_sub(event.committed_at_ms);
                delays.record(delay as f64 / 1000.0);
                max_delay = max_delay.max(Some(delay));
                newest = newest.max(Some(event.committed_at_ms));
            }
        }
        for ((op, outcome), n) in counts {
            counter!(m::EVENTS_TOTAL, "pipeline" => self.pipeline.clone(), "op" => op, "outcome" => outcome)
                .increment(n);
        }
        let mut inner = self.lock();
        inner.events += written;
        inner.dead_letters += failed.len() as u64;
        inner.last_write_at_ms = Some(now);
        inner.busy_since_ms = None;
        if max_delay.is_some() {
            inner.last_delay_ms = max_delay;
            inner.last_committed_at_ms = inner.last_committed_at_ms.max(newest);
        }
        let second = now / 1000;
        match inner.history.last_mut() {
            Some(last) if last.at == second => {
                last.events += written;
                last.max_delay_ms = last.max_delay_ms.max(max_delay.unwrap_or(0));
            }
            _ => inner.history.push(Second { at: second, events: written, max_delay_ms: max_delay.unwrap_or(0) }),
        }
        let keep_from = second.saturating_sub(HISTORY_SECONDS as u64);
        inner.history.retain(|s| s.at > keep_from);
    }

    /// An attempt failed with `error`.
    pub fn failed(&self, error: &ApplyError) {
        let kind = match error {
            ApplyError::Plugin(e) => {
                let kind = plugin_error_kind(e);
                let labels = [("pipeline", self.pipeline.clone()), ("plugin", self.plugin.clone())];
                counter!(m::PLUGIN_ERRORS_TOTAL, &[&labels[..], &[("kind", kind.to_owned())]].concat()).increment(1);
                kind
            }
            ApplyError::Sink(_) => "sink",
        };
        self.error(kind, error.to_string());
    }

    /// An error of `kind` for the status page's last errors.
    pub fn error(&self, kind: &str, message: String) {
        let mut inner = self.lock();
        let mut errors: VecDeque<ErrorEntry> = std::mem::take(&mut inner.errors).into();
        errors.push_back(ErrorEntry { at_ms: now_ms(), kind: kind.to_owned(), message });
        while errors.len() > LAST_ERRORS {
            errors.pop_front();
        }
        inner.errors = errors.into();
    }

    /// The figures now, with the history's gaps filled up to the current second.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.lock().clone();
        let now = now_ms() / 1000;
        let mut filled = Vec::with_capacity(HISTORY_SECONDS);
        let mut recorded = snapshot.history.iter().peekable();
        for at in now + 1 - HISTORY_SECONDS as u64..=now {
            while recorded.peek().is_some_and(|s| s.at < at) {
                recorded.next();
            }
            match recorded.peek() {
                Some(s) if s.at == at => filled.push(**s),
                _ => filled.push(Second { at, ..Second::default() }),
            }
        }
        snapshot.history = filled;
        snapshot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsSnapshot> {
        // A panic while holding the lock leaves plain counters: still fine to read.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `kind` label of a failed plugin call.
pub fn plugin_error_kind(error: &CallError) -> &'static str {
    match error {
        CallError::Plugin { .. } => "plugin",
        CallError::Trap { .. } => "trap",
        CallError::Timeout { .. } => "timeout",
        CallError::Contract { .. } => "contract",
        CallError::Unavailable { .. } => "unavailable",
    }
}

fn op_code(op: Op) -> &'static str {
    match op {
        Op::Create => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::SnapshotRead => "r",
        Op::Truncate => "t",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_filled_per_second_and_errors_are_capped() {
        let stats = PipelineStats::new("p", "plug");
        stats.finished(&[], &[]);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.history.len(), HISTORY_SECONDS);
        assert!(snapshot.history.windows(2).all(|w| w[1].at == w[0].at + 1));
        for i in 0..15 {
            let error = CallError::Plugin { plugin: "plug@1".into(), call: "keys", message: format!("e{i}") };
            stats.failed(&ApplyError::Plugin(error));
        }
        let errors = stats.snapshot().errors;
        assert_eq!(errors.len(), LAST_ERRORS);
        assert!(errors.last().is_some_and(|e| e.message.contains("e14") && e.kind == "plugin"));
    }
}
