//! `[reload]` in the runtime file: whether and how quickly file changes are applied.

use std::time::Duration;

use serde::Deserialize;

/// `[reload]` in the runtime file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch `plugins_dir` and `pipelines_dir` and apply changes while running (default true).
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Quiet time after the last change to a file before it is reloaded, e.g. "200ms" (default).
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_watch() -> bool {
    true
}
fn default_debounce() -> Duration {
    Duration::from_millis(200)
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self { watch: default_watch(), debounce: default_debounce() }
    }
}
