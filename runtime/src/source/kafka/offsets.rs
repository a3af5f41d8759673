//! Which offsets of each assigned partition may be committed: only the highest
//! contiguous run of delivered offsets whose cache writes succeeded.

use std::collections::{BTreeMap, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Delivered-but-unfinished offsets and commit positions per assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Delivered offsets in order; `true` once their writes succeeded.
    delivered: BTreeMap<i64, bool>,
    /// Next offset to read after everything finished so far (Kafka's commit value).
    done_upto: Option<i64>,
    /// What was last committed successfully.
    committed: Option<i64>,
}

impl OffsetTracker {
    /// Starts tracking newly assigned partitions; an already tracked one is left as is.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        for partition in partitions {
            self.partitions.entry(partition).or_default();
        }
    }

    /// Forgets revoked partitions; their unfinished records belong to the next owner.
    pub fn revoke(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }

    /// Records that `offset` was handed to the pipelines. Returns false when the
    /// partition is not assigned (a message that raced a revocation).
    pub fn deliver(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        match self.partitions.get_mut(&(topic.to_owned(), partition)) {
            Some(state) => {
                state.delivered.entry(offset).or_insert(false);
                true
            }
            None => false,
        }
    }

    /// True while `offset` is delivered and unfinished on an assigned partition.
    pub fn is_pending(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|state| state.delivered.get(&offset))
            .is_some_and(|done| !done)
    }

    /// Marks `offset` finished (its writes succeeded) and advances the partition's
    /// contiguous prefix. Offsets never delivered or on revoked partitions are ignored.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        let Some(state) = self.partitions.get_mut(&(topic.to_owned(), partition)) else { return };
        let Some(done) = state.delivered.get_mut(&offset) else { return };
        *done = true;
        // Kafka offsets have gaps (compaction, transaction markers), so the prefix
        // is over delivered offsets, not over consecutive integers.
        while let Some(entry) = state.delivered.first_entry() {
            if !*entry.get() {
                break;
            }
            let (offset, _) = entry.remove_entry();
            state.done_upto = Some(offset + 1);
        }
    }

    /// Moves a partition whose records before `offset` are gone (deleted by
    /// retention before they were read) to `offset`, when nothing delivered
    /// waits before it, so the gap is committed and not found again.
    pub fn skip_to(&mut self, partition: &TopicPartition, offset: i64) {
        let Some(state) = self.partitions.get_mut(partition) else { return };
        if state.delivered.values().any(|done| !done) {
            return;
        }
        state.done_upto = Some(state.done_upto.map_or(offset, |done| done.max(offset)));
    }

    /// Partitions whose finished prefix moved past the last commit, with the offset
    /// to commit (the next one to read). Optionally only among `only`.
    pub fn ready(&self, only: Option<&[TopicPartition]>) -> Vec<(TopicPartition, i64)> {
        let mut ready: Vec<(TopicPartition, i64)> = self
            .partitions
            .iter()
            .filter(|(partition, _)| only.is_none_or(|only| only.contains(partition)))
            .filter_map(|(partition, state)| match (state.done_upto, state.committed) {
                (Some(done), committed) if committed.is_none_or(|c| c < done) => Some((partition.clone(), done)),
                _ => None,
            })
            .collect();
        ready.sort();
        ready
    }

    /// Notes a successful commit.
    pub fn committed(&mut self, offsets: &[(TopicPartition, i64)]) {
        for (partition, offset) in offsets {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.committed = Some(state.committed.map_or(*offset, |c| c.max(*offset)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        ("t".to_owned(), partition)
    }

    #[test]
    fn commits_only_the_contiguous_finished_prefix() {
        let mut tracker = OffsetTracker::default();
        tracker.assign([tp(0)]);
        for offset in 10..15 {
            assert!(tracker.deliver("t", 0, offset));
        }
        tracker.finish("t", 0, 11);
        tracker.finish("t", 0, 12);
        assert!(tracker.ready(None).is_empty(), "10 is unfinished, so nothing may be committed");
        tracker.finish("t", 0, 10);
        assert_eq!(tracker.ready(None), vec![(tp(0), 13)]);
        tracker.committed(&[(tp(0), 13)]);
        assert!(tracker.ready(None).is_empty());
        tracker.finish("t", 0, 14);
        assert!(tracker.ready(None).is_empty(), "13 is unfinished");
        tracker.finish("t", 0, 13);
        assert_eq!(tracker.ready(None), vec![(tp(0), 15)]);
    }

    #[test]
    fn gaps_in_offsets_do_not_block_the_prefix() {
        let mut tracker = OffsetTracker::default();
        tracker.assign([tp(0)]);
        for offset in [3, 7, 8] {
            tracker.deliver("t", 0, offset);
        }
        tracker.finish("t", 0, 3);
        tracker.finish("t", 0, 8);
        assert_eq!(tracker.ready(None), vec![(tp(0), 4)]);
        tracker.finish("t", 0, 7);
        assert_eq!(tracker.ready(None), vec![(tp(0), 9)]);
    }

    #[test]
    fn partitions_advance_independently() {
        let mut tracker = OffsetTracker::default();
        tracker.assign([tp(0), tp(1)]);
        tracker.deliver("t", 0, 0);
        tracker.deliver("t", 1, 0);
        tracker.deliver("t", 1, 1);
        tracker.finish("t", 1, 0);
        tracker.finish("t", 1, 1);
        assert_eq!(tracker.ready(None), vec![(tp(1), 2)]);
        assert!(tracker.ready(Some(&[tp(0)])).is_empty());
        assert!(tracker.is_pending("t", 0, 0));
        assert!(!tracker.is_pending("t", 1, 0));
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut tracker = OffsetTracker::default();
        tracker.assign([tp(0)]);
        tracker.deliver("t", 0, 5);
        tracker.revoke(&[tp(0)]);
        assert!(!tracker.is_pending("t", 0, 5));
        assert!(!tracker.deliver("t", 0, 6), "not assigned any more");
        tracker.finish("t", 0, 5);
        assert!(tracker.ready(None).is_empty());
        tracker.assign([tp(0)]);
        assert!(tracker.deliver("t", 0, 5));
        assert!(tracker.is_pending("t", 0, 5));
    }
}
