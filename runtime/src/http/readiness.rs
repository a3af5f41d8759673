//! Whether the runtime is doing its job, with the reasons when not: a source
//! that cannot be probed or has kept failing for `stuck_after`, a pipeline
//! that has worked on one batch, or had lag without finishing a batch, for
//! that long. `/ready`, the status page, the metrics and `evercache status`
//! all show the same verdict.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::metrics as m;
use crate::pipeline::Pipeline;
use crate::source::health::SourceHealth;
use crate::status::Facts;

/// The verdict of one evaluation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readiness {
    /// True when nothing below is wrong.
    pub ready: bool,
    /// What is wrong, one sentence each.
    pub reasons: Vec<String>,
    /// Why each stuck pipeline is stuck, by pipeline.
    pub stuck: BTreeMap<String, String>,
    /// Why each failing source is failing, by source.
    pub failing: BTreeMap<String, String>,
}

/// Remembers since when each pipeline has had lag, across probes.
#[derive(Debug, Default)]
pub struct LagWatch {
    since_ms: BTreeMap<String, u64>,
}

impl LagWatch {
    /// Judges the runtime now; also sets the source-up and pipeline-stuck gauges.
    pub fn judge(
        &mut self,
        now_ms: u64,
        stuck_after: Duration,
        facts: Option<&Facts>,
        sources: &[Arc<SourceHealth>],
        pipelines: &[Arc<Pipeline>],
    ) -> Readiness {
        let stuck_ms = stuck_after.as_millis() as u64;
        let mut verdict = Readiness::default();
        let Some(facts) = facts else {
            verdict.reasons.push("no probe of the sources has finished yet".to_owned());
            return verdict;
        };
        for source in &facts.sources {
            let health = sources.iter().find(|h| h.source() == source.source).map(|h| h.snapshot());
            let failing_for = health.as_ref().and_then(|h| h.failing_since_ms).map(|s| now_ms.saturating_sub(s));
            let mut up = source.up;
            if !source.up {
                let reason = format!("unreachable: {}", source.error.as_deref().unwrap_or("probe failed"));
                verdict.failing.insert(source.source.clone(), reason);
            } else if let Some(failing_for) = failing_for.filter(|ms| *ms >= stuck_ms) {
                up = false;
                let error = health.and_then(|h| h.last_error).unwrap_or_default();
                verdict.failing.insert(source.source.clone(), format!("failing for {}: {error}", seconds(failing_for)));
            } else if let Some(unconfirmed_for) = health
                .as_ref()
                .and_then(|h| h.unconfirmed_since_ms)
                .map(|s| now_ms.saturating_sub(s))
                .filter(|ms| *ms >= stuck_ms)
            {
                let why = health.and_then(|h| h.unconfirmed_reason).unwrap_or_default();
                verdict.failing.insert(
                    source.source.clone(),
                    format!("settled batches not confirmed for {}: {why}", seconds(unconfirmed_for)),
                );
            } else if let Some(busy) = health.and_then(|h| h.busy.or(h.repairing)) {
                verdict.failing.insert(source.source.clone(), busy);
            }
            metrics::gauge!(m::SOURCE_UP, "source" => source.source.clone()).set(if up { 1.0 } else { 0.0 });
        }
        for pipeline in pipelines {
            let name = pipeline.name().to_owned();
            let config = pipeline.config();
            let stats = pipeline.stats().snapshot();
            let lag: u64 = facts
                .source(&config.source)
                .map(|s| s.lags.iter().map(|l| l.lag_entries.unwrap_or(0) + l.pending_entries.unwrap_or(0)).sum())
                .unwrap_or(0);
            let lag_since = if lag > 0 { Some(*self.since_ms.entry(name.clone()).or_insert(now_ms)) } else { None };
            if lag == 0 {
                self.since_ms.remove(&name);
            }
            let last_error = stats.errors.last().map(|e| format!(" (last error: {})", e.message)).unwrap_or_default();
            let busy_for = stats.busy_since_ms.map(|s| now_ms.saturating_sub(s)).filter(|ms| *ms >= stuck_ms);
            let idle_for = stats.last_write_at_ms.map_or(u64::MAX, |at| now_ms.saturating_sub(at));
            let waiting_for =
                lag_since.map(|s| now_ms.saturating_sub(s)).filter(|ms| *ms >= stuck_ms && idle_for >= stuck_ms);
            let reason = match (busy_for, waiting_for) {
                (Some(busy_for), _) => match &stats.visibility_wait {
                    Some(waiting) => Some(format!("one batch has been running for {}, {waiting}", seconds(busy_for))),
                    None => Some(format!("one batch has been running for {}{last_error}", seconds(busy_for))),
                },
                (None, Some(waiting_for)) => Some(format!(
                    "{lag} entries waiting for {} and no batch finished{last_error}",
                    seconds(waiting_for)
                )),
                (None, None) => None,
            };
            let stuck = if reason.is_some() { 1.0 } else { 0.0 };
            metrics::gauge!(m::PIPELINE_STUCK, "pipeline" => name.clone()).set(stuck);
            if let Some(reason) = reason {
                verdict.stuck.insert(name, reason);
            }
        }
        verdict.reasons.extend(verdict.failing.iter().map(|(s, why)| format!("source '{s}': {why}")));
        verdict.reasons.extend(verdict.stuck.iter().map(|(p, why)| format!("pipeline '{p}': {why}")));
        verdict.ready = verdict.reasons.is_empty();
        verdict
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.0}s", ms as f64 / 1000.0)
}
