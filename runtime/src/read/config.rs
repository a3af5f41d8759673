//! `[read]` in the runtime file: the read path behind `GET /v1/keys/{key}`.

use std::time::Duration;

use serde::Deserialize;

/// `[read]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadConfig {
    /// How long a read that missed waits for the key to be filled, by this
    /// process or another, before answering 504; also how long the fill lock
    /// lives, so a holder that died frees the key after it. Keep it above the
    /// pipelines' `call_timeout` (default "10s").
    #[serde(default = "default_fill_timeout", with = "humantime_serde")]
    pub fill_timeout: Duration,
    /// How early a key with a TTL is refreshed ahead of expiry: a read
    /// refreshes it in the background when `recompute time × beta × −ln(random)`
    /// reaches the TTL left (XFetch). 1 is the paper's choice; larger refreshes
    /// earlier (for keys read less often), 0 turns refresh-ahead off (default 1).
    #[serde(default = "default_refresh_ahead_beta")]
    pub refresh_ahead_beta: f64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self { fill_timeout: default_fill_timeout(), refresh_ahead_beta: default_refresh_ahead_beta() }
    }
}

fn default_refresh_ahead_beta() -> f64 {
    1.0
}

fn default_fill_timeout() -> Duration {
    Duration::from_secs(10)
}
