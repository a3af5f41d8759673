//! A pipeline file (`<pipelines_dir>/<name>.toml`): which tables feed which
//! plugin, on which database, into which cache.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::key_pattern::KeyPattern;
use super::visibility::Visibility;
use crate::plugin::mapper::{MAPPER_PLUGIN, MapperConfig};

/// What a change does to the keys it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Rebuild each key with the plugin's `recompute` and store the result.
    #[default]
    Recompute,
    /// Delete the keys; the application refills them on its next miss.
    Invalidate,
}

/// One pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The `[sources.<name>]` to consume, e.g. "shop".
    pub source: String,
    /// The `[databases.<name>]` the plugin's queries run on, e.g. "shop".
    /// Optional for `on_change = "invalidate"` plugins that never query.
    #[serde(default)]
    pub database: Option<String>,
    /// The `[caches.<name>]` written to, e.g. "main".
    pub cache: String,
    /// Plugin file stem in `plugins_dir`, e.g. "specialist_status" for
    /// `specialist_status.wasm`; leave it out when `[mapper]` declares the keys.
    #[serde(default)]
    pub plugin: String,
    /// The built-in row mapper instead of a plugin: one row of the (single)
    /// table under one key. See [`MapperConfig`].
    #[serde(default)]
    pub mapper: Option<MapperConfig>,
    /// Tables whose changes this pipeline handles, as "schema.table", e.g. ["public.session"].
    pub tables: Vec<String>,
    /// The cache keys this pipeline owns, e.g. ["product:*"] (`*` any run of
    /// characters, `?` one, `\` escapes): the read path (`GET /v1/keys/…`)
    /// fills a missing key through the pipeline whose pattern it matches (an
    /// `on_change = "invalidate"` pipeline never fills: such a read is a 404),
    /// and a `TRUNCATE` of one of its tables recomputes (or, invalidating,
    /// deletes) every key it owns in the cache (found by `SCAN`). Patterns of
    /// two pipelines may not overlap. Default: none (keys cannot be read
    /// through; a truncate goes to the plugin's `keys`).
    #[serde(default)]
    pub key_patterns: Vec<KeyPattern>,
    /// "recompute" (default) or "invalidate".
    #[serde(default)]
    pub on_change: OnChange,
    /// Safety TTL for every written key, e.g. "24h"; a plugin's own TTL wins. Default: none.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// A random share added to every key's TTL (the pipeline's `ttl` or the
    /// plugin's own), so keys written together do not expire together and
    /// send their misses to the database at once: a share of the TTL such as
    /// `0.1` (up to a tenth longer) or a duration such as `"5m"`. Default: none.
    #[serde(default)]
    pub ttl_jitter: Option<crate::sink::TtlJitter>,
    /// Attempts for a failing batch before its failing records are isolated by
    /// bisection and dead-lettered (default 5).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to 5s (default "100ms").
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Longest one plugin call may run for this pipeline, e.g. "500ms"; default:
    /// `[sandbox] call_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    /// Most keys handed to one `recompute` call (default 500).
    #[serde(default = "default_recompute_batch")]
    pub recompute_batch: usize,
    /// Most distinct keys one batch holds in memory (default 50000): a fan-out
    /// batch naming more is recomputed and written in consecutive parts.
    #[serde(default = "default_max_batch_keys")]
    pub max_batch_keys: usize,
    /// How long a batch may keep failing with errors that look transient (a
    /// statement timeout, a serialization failure, a dropped connection, a
    /// Redis `BUSY`) while the database and the cache answer health checks,
    /// e.g. "30s"; after that its failures count as its own: retried
    /// `max_attempts` times, then isolated and dead-lettered (default "2m").
    /// While a health check fails, the batch waits without limit.
    #[serde(default = "default_max_transient_wait", with = "humantime_serde")]
    pub max_transient_wait: Duration,
    /// Whether a batch of Debezium events waits until their transactions are
    /// visible on `database` before it is recomputed: "auto" (default; see
    /// [`Visibility`] for when it applies, and a warning at the first batch
    /// where it cannot) or "off". Built-in captures hold their batches
    /// themselves (their own `visibility` option).
    #[serde(default)]
    pub visibility: Visibility,
    /// Handed to the plugin's `init` as string pairs, e.g. `key_prefix = "specialist"`.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_recompute_batch() -> usize {
    500
}
fn default_max_batch_keys() -> usize {
    50_000
}
fn default_max_transient_wait() -> Duration {
    Duration::from_secs(120)
}

impl PipelineConfig {
    /// A `[mapper]` pipeline runs the built-in mapper as its plugin and, unless
    /// it says otherwise, owns the keys its template renders.
    /// On a mistake: the TOML table and key at fault, and what is wrong.
    pub(crate) fn adopt_mapper(&mut self) -> Result<(), (&'static str, &'static str, String)> {
        let Some(mapper) = &self.mapper else {
            if self.plugin.is_empty() {
                return Err(("", "plugin", "name a plugin, or declare the keys with [mapper]".to_owned()));
            }
            return Ok(());
        };
        if !self.plugin.is_empty() {
            return Err(("", "plugin", "a pipeline has either a plugin or a [mapper], not both".to_owned()));
        }
        let template = mapper.validate(&self.tables).map_err(|(field, message)| match field {
            "" => ("", "tables", message),
            field => ("mapper", field, message),
        })?;
        self.plugin = MAPPER_PLUGIN.to_owned();
        if self.key_patterns.is_empty() && self.on_change == OnChange::Recompute {
            let pattern = KeyPattern::parse(&template.pattern()).map_err(|message| ("mapper", "key", message))?;
            self.key_patterns.push(pattern);
        }
        Ok(())
    }

    /// The `[config]` table as the string pairs `init` receives: strings as they
    /// are, other values in their TOML form.
    pub fn plugin_config(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}
