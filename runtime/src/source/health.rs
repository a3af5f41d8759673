//! What a source's runner knows of its source: failing since when, why, and
//! how often by kind. `/ready`, the status page and `evercache status` read it,
//! so a source that keeps failing is reported instead of retried in silence.

use std::sync::Mutex;

use serde::Serialize;

use super::SourceError;
use crate::metrics as m;

/// A source's health as its runner sees it; shared with the HTTP listener.
#[derive(Debug)]
pub struct SourceHealth {
    source: String,
    state: Mutex<HealthState>,
}

/// A copy of a source's health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthState {
    /// When the current run of failures began (Unix ms); `None` while it works.
    pub failing_since_ms: Option<u64>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Its kind, e.g. "unavailable", "group_missing", "slot_missing".
    pub last_error_kind: Option<String>,
    /// When the source last delivered or confirmed anything (Unix ms).
    pub last_ok_ms: Option<u64>,
    /// What it is busy with that keeps it from being ready, e.g. following a failover.
    pub busy: Option<String>,
    /// The repair under way after a loss (a cache rollback, an event gap),
    /// which keeps it from being ready too.
    pub repairing: Option<String>,
    /// Since when settled batches cannot be confirmed to the source because
    /// the cache's watermark cannot be advanced (Unix ms), and why.
    pub unconfirmed_since_ms: Option<u64>,
    /// Why they cannot.
    pub unconfirmed_reason: Option<String>,
}

impl SourceHealth {
    /// A source not yet tried.
    pub fn new(source: &str) -> Self {
        Self { source: source.to_owned(), state: Mutex::default() }
    }

    /// The `[sources.<name>]` name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A read or command failed.
    pub fn failed(&self, error: &SourceError) {
        let kind = error.kind();
        metrics::counter!(m::SOURCE_ERRORS_TOTAL, "source" => self.source.clone(), "kind" => kind).increment(1);
        let mut state = self.lock();
        state.failing_since_ms.get_or_insert_with(crate::clock::now_ms);
        state.last_error = Some(error.to_string());
        state.last_error_kind = Some(kind.to_owned());
    }

    /// A read succeeded.
    pub fn ok(&self) {
        let mut state = self.lock();
        state.failing_since_ms = None;
        state.last_ok_ms = Some(crate::clock::now_ms());
    }

    /// What the source says keeps it from being ready while it works (`None`: nothing).
    pub fn set_busy(&self, what: Option<&str>) {
        let mut state = self.lock();
        if state.busy.as_deref() != what {
            state.busy = what.map(str::to_owned);
        }
    }

    /// Settled batches cannot be confirmed (`Some(why)`), or can again (`None`).
    pub fn set_unconfirmed(&self, why: Option<String>) {
        let mut state = self.lock();
        match why {
            Some(why) => {
                state.unconfirmed_since_ms.get_or_insert_with(crate::clock::now_ms);
                state.unconfirmed_reason = Some(why);
            }
            None => {
                state.unconfirmed_since_ms = None;
                state.unconfirmed_reason = None;
            }
        }
    }

    /// What repair runs after a loss (`None`: none).
    pub fn set_repairing(&self, what: Option<String>) {
        self.lock().repairing = what;
    }

    /// The state now.
    pub fn snapshot(&self) -> HealthState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_source_is_busy_with_shows_in_its_health_until_it_is_done() {
        let health = SourceHealth::new("busy");
        assert_eq!(health.snapshot().busy, None);
        health.set_busy(Some("following a failover"));
        assert_eq!(health.snapshot().busy.as_deref(), Some("following a failover"));
        health.set_busy(None);
        assert_eq!(health.snapshot().busy, None);
    }
}
