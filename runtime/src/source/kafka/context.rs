//! The consumer's callbacks: keep the offset tracker in step with the group's
//! assignment and commit the finished prefix before partitions are given up.

use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::offsets::{OffsetTracker, TopicPartition};

/// Shared between the consumer's callbacks and the source.
#[derive(Clone, Default)]
pub struct GroupContext {
    source: String,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl GroupContext {
    /// A context for the `[sources.<name>]` source.
    pub fn new(source: &str) -> Self {
        Self { source: source.to_owned(), tracker: Arc::default() }
    }

    /// The offset tracker; never held across an await.
    pub fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.tracker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits the finished prefix of `only` (all partitions when `None`) and
    /// notes it; failures are logged and retried on the next commit.
    pub fn commit_ready<C: Consumer<Self>>(&self, consumer: &C, only: Option<&[TopicPartition]>) {
        let ready = self.tracker().ready(only);
        if ready.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &ready {
            if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(source = %self.source, %topic, partition, error = %e, "offset not committable");
            }
        }
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => {
                tracing::debug!(source = %self.source, partitions = ready.len(), "offsets committed");
                self.tracker().committed(&ready);
            }
            // Not committing only means re-reading; the version guard makes that harmless.
            Err(e) => tracing::warn!(source = %self.source, error = %e, "offset commit failed; retried later"),
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked = partitions(list);
                // Records of these partitions still in the runner's hands are never
                // polled concurrently with this callback, so all finished work is
                // in the tracker; anything unfinished is re-read by the next owner.
                if !consumer.assignment_lost() {
                    self.commit_ready(consumer, Some(&revoked));
                }
                self.tracker().revoke(&revoked);
                tracing::info!(source = %self.source, partitions = ?revoked, "partitions revoked");
            }
            Rebalance::Assign(list) => {
                let assigned = partitions(list);
                self.tracker().assign(assigned.iter().cloned());
                tracing::info!(source = %self.source, partitions = ?assigned, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(source = %self.source, error = %e, "rebalance failed"),
        }
    }
}
