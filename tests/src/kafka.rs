//! Apache Kafka for a test: the suite's shared broker (or a private one for a
//! test that restarts it), a producer (librdkafka, a client independent of
//! evercache's own), topic creation, offset and topic inspection, and helpers
//! to drive the Kafka source directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use evercache::source::kafka::client::{Cluster, Settings, admin};
use evercache::source::kafka::lag::consumer_lag;
use evercache::source::{KafkaConfig, RecordBody, SourceRecord};
use evercache_test_kit::kafka_broker::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::debezium::{next_lsn, pg_change, with_schema};
use crate::{PG_URL, REDIS_URL, RuntimeToml, TestEnv, wait_until};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A broker and a producer for it.
pub struct Broker {
    kafka: KafkaBroker,
    producer: FutureProducer,
}

/// One record as a test reads it back: key and value text exactly as written.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Topic.
    pub topic: String,
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

impl ReadRecord {
    /// A consumed message, its bytes as (lossy) text.
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(text),
            value: message.payload().map(text),
            headers: message
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(text).unwrap_or_default())).collect())
                .unwrap_or_default(),
        }
    }

    /// The value's `payload`, parsed (Null for a tombstone).
    pub fn payload(&self) -> Value {
        let value: Value = self.value.as_deref().and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default();
        value["payload"].clone()
    }
}

impl Broker {
    /// The suite's shared broker (started when it is not running); a test
    /// keeps to topics and groups named after its own prefix.
    pub fn shared() -> Result<Self> {
        Self::with(KafkaBroker::shared()?)
    }

    /// A broker of the test's own, for a test that restarts it.
    pub fn private(extra: &[&str]) -> Result<Self> {
        Self::with(KafkaBroker::private(extra)?)
    }

    fn with(kafka: KafkaBroker) -> Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", kafka.address())
            // Long enough to ride out a broker restart, as a real producer's retries do.
            .set("message.timeout.ms", "60000")
            .set("acks", "all")
            .create()?;
        Ok(Self { kafka, producer })
    }

    /// Kills the broker, waits `down`, and starts it again on the same ports and data.
    pub fn restart(&mut self, down: Duration) -> Result<()> {
        self.kafka.restart(down)
    }

    /// The test's producer (librdkafka, `acks=all`), for a task of its own.
    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// The broker itself (listeners, CA).
    pub fn kafka(&self) -> &KafkaBroker {
        &self.kafka
    }

    /// `host:port` for `brokers =`.
    pub fn address(&self) -> String {
        self.kafka.address()
    }

    /// Creates a topic with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.create_topic_with(name, partitions, &[]).await
    }

    /// Creates a topic with `partitions` partitions and topic settings.
    pub async fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
        let settings = Settings::from_properties(&Default::default(), None).map_err(anyhow::Error::msg)?;
        let mut cluster = Cluster::new(&self.address(), Arc::new(settings));
        admin::create_topic(&mut cluster, name, partitions, configs).await?;
        // The partitions' leaders are known to metadata a moment after creation.
        let start = Instant::now();
        loop {
            cluster.refresh(Some(&[name.to_owned()]), false).await?;
            let ready = cluster
                .topics()
                .get(name)
                .is_some_and(|p| p.len() == partitions as usize && p.values().all(|l| *l >= 0));
            if ready {
                return Ok(());
            }
            ensure!(start.elapsed() < TIMEOUT, "topic {name} has no leaders after {TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        self.produce_bytes(topic, partition, key.map(str::as_bytes), value.map(str::as_bytes), headers).await
    }

    /// Produces one record of raw bytes (another converter's, say) and waits for the broker's ack.
    pub async fn produce_bytes(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<i64> {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(*value) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(partition).headers(owned);
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
            records.push(ReadRecord::from_message(&message));
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

/// How long a Kafka test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// An `item` row as the testkit plugin caches it.
pub fn item(id: i64, name: &str, version: i64) -> Value {
    json!({ "id": id, "name": name, "version": version })
}

/// A test environment with an `item` table.
pub async fn item_env(name: &str) -> Result<TestEnv> {
    let env = TestEnv::new(name).await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    Ok(env)
}

/// Does `key` exist in the cache?
pub async fn exists(env: &TestEnv, key: &str) -> Result<bool> {
    Ok(redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut env.redis.clone()).await? == 1)
}

/// Waits until `key` holds `expected` as JSON (`None`: absent).
pub async fn wait_json(env: &TestEnv, key: &str, expected: Option<&Value>) -> Result<()> {
    let what = format!("{key} == {expected:?}");
    wait_until(&what, WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.to_owned();
        let expected = expected.cloned();
        async move {
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            Ok(value.and_then(|v| serde_json::from_str::<Value>(&v).ok()) == expected)
        }
    })
    .await
    .map(drop)
}

/// Waits until the group committed every partition up to its end.
pub async fn wait_committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Result<()> {
    wait_until(&format!("{topic} fully committed by {group}"), WAIT, || {
        let offsets = broker.committed_and_end(group, topic, partitions);
        async move { Ok(offsets?.iter().all(|(committed, end)| committed == end)) }
    })
    .await
    .map(drop)
}

/// Produces a Debezium change of `item` keyed by id to partition `id % partitions`.
pub async fn produce_item(
    broker: &Broker,
    env: &TestEnv,
    topic: &str,
    partitions: i32,
    op: &str,
    row: Value,
) -> Result<()> {
    let id = row["id"].as_i64().context("row id")?;
    let (before, after) = if op == "d" { (Some(json!({ "id": id })), None) } else { (None, Some(row)) };
    let change = with_schema(pg_change(op, &env.prefix, "item", before, after, next_lsn()));
    let key = with_schema(json!({ "id": id })).to_string();
    broker.produce(topic, (id % partitions as i64) as i32, Some(&key), Some(&change.to_string()), &[]).await?;
    Ok(())
}

/// Waits until the group's lag, as evercache's own probe reads it, is zero.
pub async fn wait_no_lag(broker: &Broker, group: &str, topic: &str) -> Result<()> {
    let config = source_config(broker, &[topic.to_owned()], group, 100)?;
    wait_until(&format!("{topic} fully committed by {group}"), WAIT, || {
        let config = config.clone();
        async move { Ok(consumer_lag(&config).await.map_err(anyhow::Error::msg)?.iter().all(|(_, lag)| *lag == 0)) }
    })
    .await
    .map(drop)
}
