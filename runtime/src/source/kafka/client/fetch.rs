//! Reading partitions: where each one stands (committed offsets, or the reset
//! point through ListOffsets) and fetching from each leader; `records` turns
//! the fetched batches into records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::KafkaError;
use super::assign::TopicPartition;
use super::cluster::Cluster;
pub use super::records::FetchedRecord;
use super::records::decode_partition;

/// `ListOffsets` timestamp of the oldest retained record.
pub const EARLIEST: i64 = -2;
/// `ListOffsets` timestamp of the next record to be written.
pub const LATEST: i64 = -1;

/// The next offset to fetch of each assigned partition.
#[derive(Debug, Default)]
pub struct Fetcher {
    positions: BTreeMap<TopicPartition, i64>,
    /// Where a partition without a valid position starts: [`EARLIEST`] or [`LATEST`].
    reset_to: i64,
    stale_metadata: bool,
    /// Partitions whose position the broker refused as out of range, with it.
    out_of_range: Vec<(TopicPartition, i64)>,
    /// Records lost before they were read, each said in a sentence, not yet taken.
    gaps: Vec<String>,
    /// Where the partitions of those gaps resumed.
    resumed: Vec<(TopicPartition, i64)>,
}

impl Fetcher {
    /// A fetcher that starts partitions without a position at `reset_to`.
    pub fn new(reset_to: i64) -> Self {
        Self {
            positions: BTreeMap::new(),
            reset_to,
            stale_metadata: false,
            out_of_range: Vec::new(),
            gaps: Vec::new(),
            resumed: Vec::new(),
        }
    }

    /// Reads from `positions` on (a negative position means "reset").
    pub fn assign(&mut self, positions: HashMap<TopicPartition, i64>) {
        self.positions = positions.into_iter().collect();
    }

    /// Stops reading every partition.
    pub fn clear(&mut self) {
        self.positions.clear();
        self.out_of_range.clear();
    }

    /// Records lost before they were read since the last call, each in a
    /// sentence, with the partitions and the offsets reading resumed at.
    pub fn take_gaps(&mut self) -> (Vec<String>, Vec<(TopicPartition, i64)>) {
        (std::mem::take(&mut self.gaps), std::mem::take(&mut self.resumed))
    }

    /// Moves partitions whose position was out of range to where their log
    /// now starts (retention deleted records the group had not read) or ends
    /// (the log was truncated below it), saying what was lost either way.
    async fn recover_out_of_range(&mut self, cluster: &mut Cluster) -> Result<(), KafkaError> {
        if self.out_of_range.is_empty() {
            return Ok(());
        }
        let partitions: Vec<TopicPartition> = self.out_of_range.iter().map(|(tp, _)| tp.clone()).collect();
        let read_committed = cluster.settings().read_committed;
        let starts = list_offsets(cluster, &partitions, EARLIEST, read_committed).await?;
        let ends = list_offsets(cluster, &partitions, LATEST, read_committed).await?;
        for (tp, position) in std::mem::take(&mut self.out_of_range) {
            let (Some(&start), Some(&end)) = (starts.get(&tp), ends.get(&tp)) else { continue };
            let (resume, what) = if position < start {
                (
                    start,
                    format!(
                        "{} records before the log start {start} were deleted before the group read them",
                        start - position
                    ),
                )
            } else {
                (end, format!("the log now ends at {end}: records the group read past it were truncated away"))
            };
            self.gaps.push(format!(
                "topic '{}' partition {}: the group's offset {position} is out of range: {what}; reading on from {resume}",
                tp.0, tp.1
            ));
            if self.positions.contains_key(&tp) {
                self.resumed.push((tp.clone(), resume));
                self.positions.insert(tp, resume);
            }
        }
        Ok(())
    }

    /// Resolves partitions without a position to [`Self::new`]'s reset point.
    async fn reset(&mut self, cluster: &mut Cluster) -> Result<(), KafkaError> {
        let unset: Vec<TopicPartition> =
            self.positions.iter().filter(|(_, p)| **p < 0).map(|(tp, _)| tp.clone()).collect();
        if unset.is_empty() {
            return Ok(());
        }
        let offsets = list_offsets(cluster, &unset, self.reset_to, cluster.settings().read_committed).await?;
        for (tp, offset) in offsets {
            tracing::info!(topic = %tp.0, partition = tp.1, offset, "no committed offset; starting at the reset point");
            self.positions.insert(tp, offset);
        }
        Ok(())
    }

    /// Fetches once from every leader of an assigned partition, each waiting at
    /// most its share of `max_wait` for records, and advances the positions.
    pub async fn fetch(&mut self, cluster: &mut Cluster, max_wait: Duration) -> Result<Vec<FetchedRecord>, KafkaError> {
        if self.positions.is_empty() {
            tokio::time::sleep(max_wait).await;
            return Ok(Vec::new());
        }
        if self.stale_metadata || self.positions.keys().any(|(t, p)| cluster.leader(t, *p).is_none()) {
            let topics: Vec<String> =
                self.positions.keys().map(|(t, _)| t.clone()).collect::<HashSet<_>>().into_iter().collect();
            cluster.refresh(Some(&topics), false).await?;
            self.stale_metadata = false;
        }
        self.reset(cluster).await?;
        self.recover_out_of_range(cluster).await?;
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for (tp, position) in &self.positions {
            if let Some(leader) = cluster.leader(&tp.0, tp.1) {
                by_leader.entry(leader).or_default().push((tp.clone(), *position));
            }
        }
        if by_leader.is_empty() {
            self.stale_metadata = true;
            tokio::time::sleep(max_wait.min(Duration::from_millis(200))).await;
            return Ok(Vec::new());
        }
        let share = max_wait / by_leader.len() as u32;
        let mut records = Vec::new();
        for (leader, partitions) in by_leader {
            let result = self.fetch_from(cluster, leader, &partitions, share, &mut records).await;
            if let Err(e) = result {
                self.stale_metadata = true;
                if records.is_empty() {
                    return Err(e);
                }
                tracing::warn!(leader, error = %e, "fetch failed; delivering what the other leaders sent");
            }
        }
        Ok(records)
    }

    async fn fetch_from(
        &mut self,
        cluster: &mut Cluster,
        leader: i32,
        partitions: &[(TopicPartition, i64)],
        max_wait: Duration,
        records: &mut Vec<FetchedRecord>,
    ) -> Result<(), KafkaError> {
        let settings = cluster.settings().clone();
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        request.min_bytes = 1;
        request.max_bytes = settings.fetch_bytes;
        request.isolation_level = i8::from(settings.read_committed);
        request.session_epoch = -1;
        for ((topic, partition), position) in partitions {
            let mut entry = FetchPartition::default();
            entry.partition = *partition;
            entry.current_leader_epoch = -1;
            entry.fetch_offset = *position;
            entry.log_start_offset = -1;
            entry.partition_max_bytes = settings.partition_fetch_bytes;
            match request.topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
                Some(t) => t.partitions.push(entry),
                None => {
                    let mut t = FetchTopic::default();
                    t.topic = TopicName(StrBytes::from_string(topic.clone()));
                    t.partitions.push(entry);
                    request.topics.push(t);
                }
            }
        }
        let (answer, _) = cluster.call_waiting(leader, &request, 11, max_wait).await?;
        if let Some(error) = ResponseError::try_from_code(answer.error_code) {
            return Err(KafkaError::api("Fetch", error));
        }
        for topic in answer.responses {
            let name = topic.topic.0.to_string();
            for data in topic.partitions {
                let tp = (name.clone(), data.partition_index);
                let Some(&position) = self.positions.get(&tp) else { continue };
                match ResponseError::try_from_code(data.error_code) {
                    None => {}
                    Some(ResponseError::OffsetOutOfRange) => {
                        self.out_of_range.push((tp, position));
                        continue;
                    }
                    Some(error) if error.is_retriable() => {
                        tracing::debug!(topic = %tp.0, partition = tp.1, %error, "fetch refused; refreshing metadata");
                        self.stale_metadata = true;
                        continue;
                    }
                    Some(error) => return Err(KafkaError::api("Fetch", error)),
                }
                let aborted =
                    if settings.read_committed { data.aborted_transactions.unwrap_or_default() } else { Vec::new() };
                let bytes = data.records.unwrap_or_default();
                let next = decode_partition(&tp, position, bytes, aborted, records)?;
                self.positions.insert(tp, next);
            }
        }
        Ok(())
    }
}

/// The offsets at `timestamp` ([`EARLIEST`] or [`LATEST`]) of `partitions`, asked of their leaders.
pub async fn list_offsets(
    cluster: &mut Cluster,
    partitions: &[TopicPartition],
    timestamp: i64,
    read_committed: bool,
) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
    if partitions.iter().any(|(t, p)| cluster.leader(t, *p).is_none()) {
        let topics: Vec<String> =
            partitions.iter().map(|(t, _)| t.clone()).collect::<HashSet<_>>().into_iter().collect();
        cluster.refresh(Some(&topics), false).await?;
    }
    let mut by_leader: BTreeMap<i32, ListOffsetsRequest> = BTreeMap::new();
    for (topic, partition) in partitions {
        let leader = cluster
            .leader(topic, *partition)
            .ok_or_else(|| KafkaError::Protocol(format!("{topic}/{partition} has no leader")))?;
        let request = by_leader.entry(leader).or_insert_with(|| {
            let mut request = ListOffsetsRequest::default();
            request.replica_id = BrokerId(-1);
            request.isolation_level = i8::from(read_committed);
            request
        });
        let mut entry = ListOffsetsPartition::default();
        entry.partition_index = *partition;
        entry.current_leader_epoch = -1;
        entry.timestamp = timestamp;
        match request.topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(entry),
            None => {
                let mut t = ListOffsetsTopic::default();
                t.name = TopicName(StrBytes::from_string(topic.clone()));
                t.partitions.push(entry);
                request.topics.push(t);
            }
        }
    }
    let mut offsets = HashMap::new();
    for (leader, request) in by_leader {
        let answer = cluster.call(leader, &request, 5).await?;
        for topic in answer.topics {
            for partition in topic.partitions {
                if let Some(error) = ResponseError::try_from_code(partition.error_code) {
                    return Err(KafkaError::api("ListOffsets", error));
                }
                offsets.insert((topic.name.0.to_string(), partition.partition_index), partition.offset);
            }
        }
    }
    Ok(offsets)
}
