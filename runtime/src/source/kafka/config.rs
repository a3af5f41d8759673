//! `[sources.<name>]` with `type = "kafka"`: where the Debezium topics are and
//! how the consumer group reads them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::client::Settings;
use crate::source::SourceError;

/// `[sources.<name>]` with `type = "kafka"` (Debezium on Kafka Connect).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, e.g. "kafka-1:9092,kafka-2:9092".
    pub brokers: String,
    /// Topics to consume, e.g. ["shop.public.product"]; an entry starting with `^`
    /// is a regular expression matching topic names, e.g. "^shop\\.public\\..*".
    pub topics: Vec<String>,
    /// Consumer group; instances sharing it split the partitions (default "evercache").
    #[serde(default = "default_group")]
    pub group: String,
    /// Most records per batch across all partitions (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long one read waits for the first record of a batch (default "1s").
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// Where a group without committed offsets starts: "earliest" (default; the
    /// cache is owed everything retained) or "latest".
    #[serde(default = "default_start")]
    pub start_from: StartFrom,
    /// Topic permanently failing records are produced to; `{topic}` is replaced by
    /// the record's topic (default "{topic}.dlq"). The topic must exist unless the
    /// brokers create topics automatically.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Client properties under Kafka's own names, e.g.
    /// `{ "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512",
    /// "sasl.username" = "cdc", "session.timeout.ms" = "10000" }`. Supported:
    /// `security.protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    /// `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), `sasl.username`,
    /// `sasl.password`, `ssl.ca.location` (else the system's roots),
    /// `ssl.certificate.location` / `ssl.key.location` (a client certificate),
    /// `enable.ssl.certificate.verification` ("false" only by explicit opt-in),
    /// `client.id`, `session.timeout.ms` (45000), `heartbeat.interval.ms` (3000),
    /// `max.poll.interval.ms` (300000), `request.timeout.ms` (30000),
    /// `max.partition.fetch.bytes` (1 MiB), `fetch.max.bytes` (50 MiB),
    /// `isolation.level` (read_committed) and `metadata.max.age.ms` (300000).
    /// Any other property is refused.
    #[serde(default)]
    pub properties: KafkaProperties,
    /// File holding the SASL password, instead of `sasl.password` (relative to
    /// the runtime file; trailing newlines are ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// Client properties; `Debug` masks the values of secret ones
/// (`sasl.password`, `ssl.key.password`, anything naming a password or secret).
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |key: &str| key.contains("password") || key.contains("secret") || key.ends_with(".pem");
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if secret(k) { crate::secret::MASK } else { v.as_str() })))
            .finish()
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained record.
    Earliest,
    /// Only records produced from now on.
    Latest,
}

fn default_group() -> String {
    "evercache".to_owned()
}
fn default_batch_size() -> usize {
    500
}
fn default_block() -> Duration {
    Duration::from_secs(1)
}
fn default_start() -> StartFrom {
    StartFrom::Earliest
}
fn default_dead_letter_topic() -> String {
    "{topic}.dlq".to_owned()
}

impl KafkaConfig {
    /// Rejects configurations that cannot work.
    pub(super) fn validate(&self, name: &str) -> Result<(), SourceError> {
        let bad = |message: &str| SourceError::BadConfig { source_name: name.to_owned(), message: message.to_owned() };
        if self.topics.is_empty() {
            return Err(bad("`topics` is empty"));
        }
        if self.brokers.trim().is_empty() {
            return Err(bad("`brokers` is empty"));
        }
        if self.batch_size == 0 {
            return Err(bad("`batch_size` must be at least 1"));
        }
        Ok(())
    }

    /// The client settings from `properties` and `password_file`.
    pub fn settings(&self) -> Result<Settings, String> {
        let password = self.password_file.as_deref().map(crate::secret::read_password_file).transpose()?;
        Settings::from_properties(&self.properties.0, password.as_deref())
    }

    /// Paths of `password_file` and the `ssl.*.location` properties relative to `base`.
    pub fn relative_to(&mut self, base: &std::path::Path) {
        if let Some(file) = &mut self.password_file {
            *file = base.join(&*file);
        }
        for key in ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location"] {
            if let Some(path) = self.properties.0.get_mut(key) {
                *path = base.join(&*path).to_string_lossy().into_owned();
            }
        }
    }
}
