//! A private Kafka-protocol broker for a test: `tansu` with in-memory storage on
//! a free loopback port, plus a producer, offset/topic inspection and helpers to
//! drive the Kafka source directly.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use evercache::source::{KafkaConfig, RecordBody, SourceRecord};
use evercache_test_kit::tansu::Tansu;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::{PG_URL, REDIS_URL, RuntimeToml, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A private broker and a producer for it.
pub struct Broker {
    tansu: Tansu,
    producer: FutureProducer,
}

/// One record as a test reads it back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key text.
    pub key: Option<String>,
    /// Value text.
    pub value: Option<String>,
    /// Headers with text values.
    pub headers: Vec<(String, String)>,
}

impl Broker {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let tansu = Tansu::start()?;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", tansu.address())
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(Self { tansu, producer })
    }

    /// `host:port` for `brokers =`.
    pub fn address(&self) -> String {
        self.tansu.address()
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.tansu.create_topic(name, partitions)
    }

    /// Produces one record to a given partition and waits for the broker's ack.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<i64> {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(*value) });
        }
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).partition(partition).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self.producer.send(record, TIMEOUT).await.map_err(|(e, _)| e)?;
        Ok(delivery.offset)
    }

    fn client(&self, group: &str) -> Result<BaseConsumer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?)
    }

    /// Per partition: (committed offset of `group`, high watermark).
    pub fn committed_and_end(&self, group: &str, topic: &str, partitions: i32) -> Result<Vec<(i64, i64)>> {
        let client = self.client(group)?;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let committed = client.committed_offsets(list, TIMEOUT)?;
        (0..partitions)
            .map(|partition| {
                let offset = match committed.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => offset,
                    _ => -1,
                };
                let (_, high) = client.fetch_watermarks(topic, partition, TIMEOUT)?;
                Ok((offset, high))
            })
            .collect()
    }

    /// Reads `topic` (all partitions, from the start, without a group) until
    /// `count` records came or 10 s passed.
    pub fn read_all(&self, topic: &str, partitions: i32, count: usize) -> Result<Vec<ReadRecord>> {
        let client = self.client("evercache-test-reader")?;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        client.assign(&list)?;
        let mut records = Vec::new();
        let start = Instant::now();
        while records.len() < count && start.elapsed() < TIMEOUT {
            let Some(message) = client.poll(Duration::from_millis(100)) else { continue };
            let message = message?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            records.push(ReadRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(text),
                value: message.payload().map(text),
                headers: message
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(text).unwrap_or_default())).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(records)
    }
}

/// A runtime file whose source "events" is the Kafka consumer group `<prefix>`.
pub fn kafka_runtime_toml(env: &TestEnv, broker: &Broker, topics: &[String], extra: &str) -> String {
    let topics = serde_json::to_string(topics).unwrap_or_default();
    RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .section("sources.events")
        .line(&format!("type = \"kafka\"\nbrokers = \"{}\"\ntopics = {topics}", broker.address()))
        .line(&format!("group = \"{}\"\nblock = \"200ms\"", env.prefix))
        .line("properties = { \"session.timeout.ms\" = \"10000\" }")
        .line(extra)
        .build()
}

/// Reads with the source itself until `count` records came, acking each batch.
pub async fn read_records(config: &KafkaConfig, name: &str, count: usize) -> Result<Vec<SourceRecord>> {
    let mut source = config.build(name).await?;
    let mut records = Vec::new();
    let start = Instant::now();
    while records.len() < count && start.elapsed() < Duration::from_secs(30) {
        let batch = source.next_batch().await?;
        ensure!(batch.len() <= config.batch_size, "batch of {} over batch_size", batch.len());
        source.ack(&batch).await?;
        records.extend(batch);
    }
    source.shutdown().await;
    Ok(records)
}

/// `(partition, offset)` from a record id `<partition>:<offset>`.
pub fn partition_offset(record: &SourceRecord) -> (i32, i64) {
    let (partition, offset) = record.id.split_once(':').unwrap_or_default();
    (partition.parse().unwrap_or(-1), offset.parse().unwrap_or(-1))
}

/// A record field's value.
pub fn field<'a>(record: &'a SourceRecord, name: &str) -> Option<&'a str> {
    match &record.body {
        RecordBody::Fields(fields) => fields.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str()),
        RecordBody::Change(_) => None,
    }
}

/// A Kafka source configuration for group `group`, with short waits.
pub fn source_config(broker: &Broker, topics: &[String], group: &str, batch_size: usize) -> Result<KafkaConfig> {
    Ok(serde_json::from_value(json!({
        "brokers": broker.address(),
        "topics": topics,
        "group": group,
        "batch_size": batch_size,
        "block": "200ms",
        "properties": { "session.timeout.ms": "10000" },
    }))?)
}
