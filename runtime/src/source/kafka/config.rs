//! `[sources.<name>]` with `type = "kafka"`: where the Debezium topics are and
//! how the consumer group reads them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

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
    /// Extra librdkafka properties for consumer and producer, e.g.
    /// `{ "session.timeout.ms" = "10000" }` (TLS and SASL are not compiled in).
    #[serde(default)]
    pub properties: KafkaProperties,
}

/// librdkafka properties; `Debug` masks the values of secret ones
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

    /// The consumer's librdkafka settings: offsets are committed by hand, only
    /// after the cache writes succeeded.
    pub(super) fn consumer_config(&self) -> ClientConfig {
        let mut config = self.common_config();
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match self.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        self.apply_properties(&mut config);
        config
    }

    /// The dead-letter producer's settings: every record acknowledged by all in-sync replicas.
    pub(super) fn producer_config(&self) -> ClientConfig {
        let mut config = self.common_config();
        config.set("acks", "all").set("enable.idempotence", "false").set("message.timeout.ms", "30000");
        self.apply_properties(&mut config);
        config
    }

    fn common_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", "evercache");
        config
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties.0 {
            config.set(key, value);
        }
    }
}
