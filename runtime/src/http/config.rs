//! `[http]` in the runtime file: where the listener serves and how often it probes.

use std::time::Duration;

use serde::Deserialize;

/// `[http]` in the runtime file; without it no listener runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. "127.0.0.1:9464" (port 0 picks a free one).
    pub listen: String,
    /// How often source lag, pending entries and Redis memory are probed (default "1s").
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// A source failing, or a pipeline working on one batch (or with lag and
    /// no batch finished), for this long makes `/ready` false with the reason
    /// (default "30s").
    #[serde(default = "default_stuck_after", with = "humantime_serde")]
    pub stuck_after: Duration,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_stuck_after() -> Duration {
    Duration::from_secs(30)
}
