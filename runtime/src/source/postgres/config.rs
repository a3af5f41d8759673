//! `[sources.<name>]` with `type = "postgres"`: the built-in capture's settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::setup;
use crate::secret::SecretUrl;
use crate::source::SnapshotMode;

/// `[sources.<name>]` with `type = "postgres"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCaptureConfig {
    /// Postgres URL of a role with REPLICATION and SELECT on the tables, e.g.
    /// "postgres://evercache_capture@127.0.0.1:5432/shop". Needs `wal_level = logical`.
    pub url: SecretUrl,
    /// A file holding the password, which replaces the URL's (e.g. a mounted secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Tables to capture, as "schema.table", e.g. ["public.product"].
    pub tables: Vec<String>,
    /// Publication, created for `tables` when missing (default "evercache").
    #[serde(default = "default_name")]
    pub publication: String,
    /// Logical replication slot, created when missing (default "evercache").
    #[serde(default = "default_name")]
    pub slot: String,
    /// "initial" (default): on first start, emit every existing row as a snapshot
    /// read so the cache is warm; "never": only changes made after the slot exists.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Debezium's `topic.prefix`: the events' `source.name` and the stream names
    /// `<prefix>.<schema>.<table>` (default: the database name).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Most changes per read (default 500). While a batch is applied the
    /// capture reads on, and up to ten reads join the next batch, so a backlog
    /// is applied in bigger batches.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a read waits for more changes once it has one, and how long a
    /// read ahead waits for a first one (default "5ms").
    #[serde(default = "default_batch_delay", with = "humantime_serde")]
    pub max_batch_delay: Duration,
    /// Redis URL for dead letters, e.g. "redis://127.0.0.1:6379".
    pub dead_letter_url: SecretUrl,
    /// Dead-letter stream; `{stream}` is the record's `<prefix>.<schema>.<table>`
    /// (default "{stream}:dlq").
    #[serde(default = "default_dead_letter_stream")]
    pub dead_letter_stream: String,
    /// "on" (default): a batch is handed on only once every transaction in it
    /// is visible to a new snapshot, however long that takes (a synchronous
    /// standby that does not answer keeps a decoded commit invisible). Held
    /// over 2 s, it is reported, and again every 2 s, as the source's error
    /// (kind `not_visible`, naming the transactions and the wait: `/ready`'s
    /// `last_error`; `/ready` false and `evercache status` once that lasts
    /// `[http] stuck_after`), and the capture keeps waiting on it. "off":
    /// batches are handed on unchecked, so a change read in that window is
    /// recomputed from the row before it and the key stays stale until the
    /// row changes again.
    #[serde(default)]
    pub visibility: Visibility,
}

/// `visibility` of a `type = "postgres"` source: whether batches wait until
/// their transactions are visible to new queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Hold each batch until its transactions are visible (the default).
    #[default]
    On,
    /// Hand batches on without checking.
    Off,
}

impl PostgresCaptureConfig {
    /// The stream names its records carry, `<prefix>.<schema>.<table>`, one per table.
    pub fn stream_names(&self) -> Result<Vec<String>, String> {
        let prefix = match &self.topic_prefix {
            Some(prefix) => prefix.clone(),
            None => setup::Target::parse(self.url.expose())?.database,
        };
        Ok(self.tables.iter().map(|t| format!("{prefix}.{t}")).collect())
    }
}

fn default_name() -> String {
    "evercache".to_owned()
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_delay() -> Duration {
    Duration::from_millis(5)
}
fn default_dead_letter_stream() -> String {
    "{stream}:dlq".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &str = r#"
url = "postgres://u@h/db"
tables = ["public.t"]
dead_letter_url = "redis://h"
"#;

    #[test]
    fn visibility_is_checked_unless_turned_off() {
        let parse = |extra: &str| toml::from_str::<PostgresCaptureConfig>(&format!("{REQUIRED}{extra}"));
        assert_eq!(parse("").unwrap().visibility, Visibility::On);
        assert_eq!(parse("visibility = \"on\"").unwrap().visibility, Visibility::On);
        assert_eq!(parse("visibility = \"off\"").unwrap().visibility, Visibility::Off);
        assert!(parse("visibility = \"sometimes\"").is_err());
        assert!(parse("visibility = false").is_err(), "a string, as the reference says");
    }
}
