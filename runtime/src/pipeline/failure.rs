//! Why an attempt at a batch failed, and whose fault that is as far as the
//! error itself tells: the batch's own, the dependencies' (database or Redis),
//! or unclear until health checks say which.

use crate::plugin::CallError;
use crate::sink::SinkError;

/// Why one attempt at a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A plugin call failed.
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The cache write failed.
    #[error("cache write failed: {0}")]
    Sink(#[from] SinkError),
}

/// Whose fault a failure is, as far as the error itself tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blame {
    /// The batch's own (plugin error, trap, contract, a key Redis refuses).
    Batch,
    /// The database or Redis (unreachable, overloaded, refusing for now).
    Dependencies,
    /// A call cut off at its deadline while a host query ran: a query that
    /// sleeps, or a database that stopped answering; health checks tell which.
    Unclear,
}

impl ApplyError {
    /// Transient by its kind: never counted as an attempt while the database
    /// and the cache fail their health checks.
    pub fn is_transient(&self) -> bool {
        self.blame() == Blame::Dependencies
    }

    pub(super) fn blame(&self) -> Blame {
        match self {
            ApplyError::Plugin(CallError::Unavailable { .. }) => Blame::Dependencies,
            ApplyError::Plugin(CallError::Timeout { in_query: true, .. }) => Blame::Unclear,
            ApplyError::Plugin(_) => Blame::Batch,
            ApplyError::Sink(e) if e.is_transient() => Blame::Dependencies,
            ApplyError::Sink(_) => Blame::Batch,
        }
    }
}

/// Shutdown was requested while the batch could not complete; nothing of it may be acked.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown")]
pub struct Interrupted;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn failures_are_blamed_by_what_they_mean() {
        let timeout = |in_query| {
            ApplyError::Plugin(CallError::Timeout {
                plugin: "p@1".into(),
                call: "keys",
                timeout: Duration::from_secs(1),
                in_query,
            })
        };
        assert_eq!(timeout(false).blame(), Blame::Batch);
        assert_eq!(timeout(true).blame(), Blame::Unclear);
        let unavailable = CallError::Unavailable { plugin: "p@1".into(), call: "recompute", message: "down".into() };
        assert_eq!(ApplyError::Plugin(unavailable).blame(), Blame::Dependencies);
        let bad_key = SinkError::BadKey { key: "k".into(), reason: "is empty" };
        assert_eq!(ApplyError::Sink(bad_key).blame(), Blame::Batch);
    }
}
