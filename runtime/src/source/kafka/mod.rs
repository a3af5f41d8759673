//! Kafka source (Debezium on Kafka Connect): one consumer group over the
//! configured topics, offsets committed per partition only up to the highest
//! contiguous offset whose cache writes succeeded. The client is our own
//! (`client`), over the binary's one TLS stack.

pub mod client;
pub mod config;
pub mod dead_letter;
pub mod lag;
pub mod offsets;
pub mod record;
mod subscription;

use std::collections::VecDeque;
use std::sync::Arc;

use client::fetch::{EARLIEST, FetchedRecord, Fetcher, LATEST};
use client::group::Membership;
use client::{Cluster, KafkaError, TopicPartition};
pub use config::{KafkaConfig, StartFrom};
use offsets::OffsetTracker;
use subscription::Subscription;

use super::{DeadLetter, SourceError, SourceRecord};

/// A running Kafka consumer.
pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    cluster: Cluster,
    membership: Membership,
    subscription: Subscription,
    fetcher: Fetcher,
    tracker: OffsetTracker,
    assigned: Vec<TopicPartition>,
    fetched: VecDeque<FetchedRecord>,
    /// Partitions moved past a gap, to commit once the gap is recorded.
    skipped: Vec<(TopicPartition, i64)>,
}

impl KafkaConfig {
    /// Checks the settings and creates the consumer; it connects and joins the
    /// group with its first read.
    pub async fn build(&self, name: &str) -> Result<KafkaSource, SourceError> {
        self.validate(name)?;
        let settings =
            self.settings().map_err(|message| SourceError::BadConfig { source_name: name.to_owned(), message })?;
        let subscription = Subscription::new(&self.topics)
            .map_err(|message| SourceError::BadConfig { source_name: name.to_owned(), message })?;
        tracing::info!(source = %name, topics = ?self.topics, group = %self.group, ?settings, "kafka consumer created");
        Ok(KafkaSource {
            name: name.to_owned(),
            cluster: Cluster::new(&self.brokers, Arc::new(settings)),
            membership: Membership::new(&self.group),
            subscription,
            fetcher: Fetcher::new(match self.start_from {
                StartFrom::Earliest => EARLIEST,
                StartFrom::Latest => LATEST,
            }),
            tracker: OffsetTracker::default(),
            assigned: Vec::new(),
            fetched: VecDeque::new(),
            skipped: Vec::new(),
            config: self.clone(),
        })
    }
}

impl KafkaSource {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records lost before they were read (offsets past retention), since the last call.
    pub fn take_gaps(&mut self) -> Vec<String> {
        let (gaps, resumed) = self.fetcher.take_gaps();
        self.skipped.extend(resumed);
        gaps
    }

    /// The gaps taken are recorded for repair: their partitions' new start is
    /// committed, so a restart does not find them again.
    pub async fn gaps_recorded(&mut self) {
        for (partition, offset) in std::mem::take(&mut self.skipped) {
            self.tracker.skip_to(&partition, offset);
        }
        self.commit_ready(None).await;
    }

    /// The dead-letter topic for records of `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        dead_letter::topic_for(&self.config.dead_letter_topic, topic)
    }

    fn unavailable(&self, operation: &'static str) -> impl Fn(KafkaError) -> SourceError + '_ {
        move |e| SourceError::Unavailable { source_name: self.name.clone(), operation, message: e.to_string() }
    }

    /// Reads up to `batch_size` records across the assigned partitions, each
    /// partition's in offset order, waiting up to `block` for the first one.
    /// An empty batch means nothing arrived. Joins the group first when it is
    /// not a member or the group is rebalancing.
    pub async fn next_batch(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        // Commits that failed earlier are retried even while no records arrive.
        self.commit_ready(None).await;
        let metadata_due = self.subscription.due(self.cluster.settings().metadata_max_age);
        if self.membership.needs_join() || (metadata_due && self.subscription_changed().await?) {
            self.rebalance().await?;
        }
        if self.fetched.is_empty() {
            let fetched = self.fetcher.fetch(&mut self.cluster, self.config.block).await;
            self.fetched.extend(fetched.map_err(self.unavailable("fetch"))?);
        }
        let take = self.fetched.len().min(self.config.batch_size);
        let mut records = Vec::with_capacity(take);
        for fetched in self.fetched.drain(..take) {
            if self.tracker.deliver(&fetched.topic, fetched.partition, fetched.offset) {
                records.push(record::to_source_record(&fetched));
            }
        }
        Ok(records)
    }

    async fn subscription_changed(&mut self) -> Result<bool, SourceError> {
        let changed = self.subscription.changed(&mut self.cluster).await;
        changed.map_err(self.unavailable("metadata"))
    }

    /// Gives up every partition (committing what is finished, unless the group
    /// already dropped this member), joins again and starts the new assignment
    /// at its committed offsets.
    async fn rebalance(&mut self) -> Result<(), SourceError> {
        if !self.assigned.is_empty() {
            if !self.membership.lost() {
                self.commit_ready(None).await;
            }
            tracing::info!(source = %self.name, partitions = ?self.assigned, "partitions revoked");
            self.tracker.revoke(&self.assigned);
            self.assigned.clear();
        }
        self.fetcher.clear();
        self.fetched.clear();
        let topics = self.subscription.resolve(&mut self.cluster).await.map_err(self.unavailable("metadata"))?;
        let assigned =
            self.membership.join(&mut self.cluster, &topics).await.map_err(self.unavailable("join group"))?;
        let committed =
            self.membership.committed(&mut self.cluster, &assigned).await.map_err(self.unavailable("offset fetch"))?;
        self.tracker.assign(assigned.iter().cloned());
        self.fetcher.assign(assigned.iter().map(|tp| (tp.clone(), committed.get(tp).copied().unwrap_or(-1))).collect());
        tracing::info!(source = %self.name, partitions = ?assigned, "partitions assigned");
        self.assigned = assigned;
        Ok(())
    }

    /// Commits the finished prefix of `only` (all partitions when `None`);
    /// failures are logged and retried on the next commit.
    async fn commit_ready(&mut self, only: Option<&[TopicPartition]>) {
        let ready = self.tracker.ready(only);
        if ready.is_empty() {
            return;
        }
        match self.membership.commit(&mut self.cluster, &ready).await {
            Ok(()) => {
                tracing::debug!(source = %self.name, partitions = ready.len(), "offsets committed");
                self.tracker.committed(&ready);
            }
            // Not committing only means re-reading; the version guard makes that harmless.
            Err(e) => tracing::warn!(source = %self.name, error = %e, "offset commit failed; retried later"),
        }
    }

    /// Marks records finished (their cache writes succeeded or they were
    /// dead-lettered) and commits each partition's contiguous finished prefix.
    /// A failed commit is retried on the next call; the records are only re-read
    /// if the process stops before that.
    pub async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        for record in records {
            if let Some((partition, offset)) = record::parse_record_id(&record.id) {
                self.tracker.finish(&record.stream, partition, offset);
            }
        }
        self.commit_ready(None).await;
        Ok(())
    }

    /// Produces records to their dead-letter topics with the reason in headers;
    /// the caller acks them afterwards.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        let template = self.config.dead_letter_topic.clone();
        let result = dead_letter::write(&mut self.cluster, &template, records, letters).await;
        result.map_err(self.unavailable("produce dead letter"))
    }

    /// Commits what is finished and leaves the group, so the partitions move to
    /// the other instances at once.
    pub async fn shutdown(&mut self) {
        self.commit_ready(None).await;
        self.membership.leave(&mut self.cluster).await;
        tracing::info!(source = %self.name, "kafka consumer left the group");
    }
}
