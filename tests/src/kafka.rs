//! A private Kafka-protocol broker for a test: `tansu` with in-memory storage on
//! a free loopback port, plus a producer, offset/topic inspection and helpers to
//! drive the Kafka source directly.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use evercache::source::{KafkaConfig, RecordBody, SourceRecord};
use evercache_test_kit::tansu::{Tansu, TansuOptions};
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
    options: TansuOptions,
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
        Self::start_with(TansuOptions::default())
    }

    /// Starts a broker with `options` (e.g. Postgres storage, which survives a restart).
    pub fn start_with(mut options: TansuOptions) -> Result<Self> {
        let tansu = Tansu::start_with(&options)?;
        options.port = Some(tansu.port());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", tansu.address())
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(Self { tansu, options, producer })
    }

    /// Kills the broker, waits `down`, and starts it again on the same port and storage.
    pub fn restart(&mut self, down: Duration) -> Result<()> {
        self.tansu.kill();
        std::thread::sleep(down);
        self.tansu = Tansu::start_with(&self.options)?;
        Ok(())
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

/// A database of the test's own holding tansu's schema, dropped on drop.
pub struct TansuDatabase {
    name: String,
}

impl TansuDatabase {
    /// Creates (or recreates) database `name` with tansu's schema.
    pub async fn create(name: &str) -> Result<Self> {
        let admin = sqlx::PgPool::connect(PG_URL).await?;
        sqlx::raw_sql(&format!("drop database if exists {name} with (force)")).execute(&admin).await?;
        sqlx::raw_sql(&format!("create database {name}")).execute(&admin).await?;
        let url = format!("{}/{name}", PG_URL.rsplit_once('/').map_or(PG_URL, |(base, _)| base));
        let db = sqlx::PgPool::connect(&url).await?;
        sqlx::raw_sql(include_str!("../fixtures/tansu/postgres-schema.sql")).execute(&db).await?;
        db.close().await;
        Ok(Self { name: name.to_owned() })
    }

    /// `--storage-engine` for tansu.
    pub fn storage_url(&self) -> String {
        // tansu would check Postgres's own certificate, which is not what this test is about.
        format!("{}/{}?sslmode=disable", PG_URL.rsplit_once('/').map_or(PG_URL, |(base, _)| base), self.name)
    }
}

impl Drop for TansuDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let admin = sqlx::PgPool::connect(PG_URL).await.ok()?;
                sqlx::raw_sql(&format!("drop database if exists {name} with (force)")).execute(&admin).await.ok()
            })
        })
        .join();
    }
}
