//! Kafka source (Debezium on Kafka Connect): one consumer group over the
//! configured topics, offsets committed per partition only up to the highest
//! contiguous offset whose cache writes succeeded.

pub mod config;
pub mod context;
pub mod dead_letter;
pub mod lag;
pub mod offsets;
pub mod record;

use std::time::Duration;

use rdkafka::Message;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;

pub use config::{KafkaConfig, StartFrom};
use context::GroupContext;
use dead_letter::DeadLetterProducer;

use super::{DeadLetter, SourceError, SourceRecord};

/// How long a batch keeps collecting once its first record arrived: short, so a
/// trickle of changes is not delayed, long enough to gather what is already fetched.
const LINGER: Duration = Duration::from_millis(5);

/// A running Kafka consumer.
pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    consumer: StreamConsumer<GroupContext>,
    context: GroupContext,
    dead_letters: DeadLetterProducer,
}

impl KafkaConfig {
    /// Creates the consumer and the dead-letter producer and joins the group;
    /// partitions arrive with the first reads.
    pub async fn build(&self, name: &str) -> Result<KafkaSource, SourceError> {
        self.validate(name)?;
        let bad = |e: rdkafka::error::KafkaError| SourceError::BadConfig {
            source_name: name.to_owned(),
            message: e.to_string(),
        };
        let context = GroupContext::new(name);
        let consumer: StreamConsumer<GroupContext> =
            StreamConsumer::from_config_and_context(&self.consumer_config(), context.clone()).map_err(bad)?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(bad)?;
        let producer: FutureProducer = self.producer_config().create().map_err(bad)?;
        tracing::info!(source = %name, topics = ?self.topics, group = %self.group, "kafka consumer subscribed");
        Ok(KafkaSource {
            name: name.to_owned(),
            config: self.clone(),
            consumer,
            dead_letters: DeadLetterProducer::new(name, producer, &self.dead_letter_topic),
            context,
        })
    }
}

impl KafkaSource {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dead-letter topic for records of `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        self.dead_letters.topic_for(topic)
    }

    /// Reads up to `batch_size` records across the assigned partitions, each
    /// partition's in offset order, waiting up to `block` for the first one.
    /// An empty batch means nothing arrived.
    pub async fn next_batch(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        // Commits that failed earlier are retried even while no records arrive.
        self.context.commit_ready(&self.consumer, None);
        let mut records = Vec::new();
        let mut deadline = tokio::time::Instant::now() + self.config.block;
        while records.len() < self.config.batch_size {
            let received = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Err(e)) => {
                    if records.is_empty() {
                        return Err(SourceError::Unavailable {
                            source_name: self.name.clone(),
                            operation: "consume",
                            message: e.to_string(),
                        });
                    }
                    tracing::warn!(source = %self.name, error = %e, "consume failed; delivering the batch so far");
                    break;
                }
                Ok(Ok(message)) => {
                    let delivered =
                        self.context.tracker().deliver(message.topic(), message.partition(), message.offset());
                    delivered.then(|| record::to_source_record(&message))
                }
            };
            if records.is_empty() && received.is_some() {
                deadline = tokio::time::Instant::now() + LINGER;
            }
            records.extend(received);
        }
        // A rebalance during the reads may have revoked partitions whose records
        // were already gathered; their next owner reads them from the committed offset.
        let tracker = self.context.tracker();
        records.retain(|r| {
            record::parse_record_id(&r.id)
                .is_some_and(|(partition, offset)| tracker.is_pending(&r.stream, partition, offset))
        });
        drop(tracker);
        Ok(records)
    }

    /// Marks records finished (their cache writes succeeded or they were
    /// dead-lettered) and commits each partition's contiguous finished prefix.
    /// A failed commit is retried on the next call; the records are only re-read
    /// if the process stops before that.
    pub async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        {
            let mut tracker = self.context.tracker();
            for record in records {
                if let Some((partition, offset)) = record::parse_record_id(&record.id) {
                    tracker.finish(&record.stream, partition, offset);
                }
            }
        }
        self.context.commit_ready(&self.consumer, None);
        Ok(())
    }

    /// Produces records to their dead-letter topics with the reason in headers;
    /// the caller acks them afterwards.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        self.dead_letters.write(records, letters).await
    }

    /// Commits what is finished and leaves the group, so the partitions move to
    /// the other instances at once.
    pub async fn shutdown(&mut self) {
        self.context.commit_ready(&self.consumer, None);
        self.consumer.unsubscribe();
        tracing::info!(source = %self.name, "kafka consumer left the group");
    }
}
