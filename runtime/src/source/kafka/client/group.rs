//! Membership of a consumer group (the classic protocol, eager rebalancing):
//! find the coordinator, join, let the leader assign partitions, heartbeat in
//! the background, commit and read offsets, leave.

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::KafkaError;
use super::assign::{self, TopicPartition};
use super::cluster::Cluster;
use super::heartbeat::Heartbeat;

/// The only assignment strategy offered; every evercache instance speaks it.
const STRATEGY: &str = "range";
/// Rounds of the join dance (member id handshake, concurrent rebalances) before giving up for now.
const JOIN_ATTEMPTS: usize = 10;

/// This process's membership of one group.
pub struct Membership {
    group: GroupId,
    member_id: StrBytes,
    generation: i32,
    coordinator: Option<i32>,
    heartbeat: Option<Heartbeat>,
}

impl Membership {
    /// Not joined yet.
    pub fn new(group: &str) -> Self {
        Self {
            group: GroupId(StrBytes::from_string(group.to_owned())),
            member_id: StrBytes::default(),
            generation: -1,
            coordinator: None,
            heartbeat: None,
        }
    }

    /// True when the group must be (re)joined before reading on.
    pub fn needs_join(&self) -> bool {
        self.heartbeat.as_ref().is_none_or(Heartbeat::rejoin)
    }

    /// True when the coordinator dropped this member: committing would be refused.
    pub fn lost(&self) -> bool {
        self.heartbeat.as_ref().is_some_and(Heartbeat::lost)
    }

    /// Joins (or rejoins) the group subscribed to `topics` and returns the
    /// partitions assigned to this member.
    pub async fn join(&mut self, cluster: &mut Cluster, topics: &[String]) -> Result<Vec<TopicPartition>, KafkaError> {
        if self.lost() {
            self.member_id = StrBytes::default();
        }
        self.heartbeat = None;
        let mut last_error = None;
        for _ in 0..JOIN_ATTEMPTS {
            match self.join_once(cluster, topics).await {
                Ok(assignment) => {
                    self.start_heartbeat(cluster)?;
                    return Ok(assignment);
                }
                Err(e) => {
                    match &e {
                        KafkaError::Api { error: ResponseError::UnknownMemberId, .. } => {
                            self.member_id = StrBytes::default()
                        }
                        KafkaError::Api { error, .. } if is_coordinator_error(*error) => self.coordinator = None,
                        KafkaError::Api {
                            error: ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration,
                            ..
                        } => {}
                        KafkaError::Io { .. } => self.coordinator = None,
                        _ => return Err(e),
                    }
                    tracing::debug!(group = %self.group.0, error = %e, "joining the group again");
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(..200))).await;
                }
            }
        }
        Err(last_error.unwrap_or_else(|| KafkaError::Protocol("joining the group failed".to_owned())))
    }

    async fn join_once(&mut self, cluster: &mut Cluster, topics: &[String]) -> Result<Vec<TopicPartition>, KafkaError> {
        let coordinator = self.coordinator(cluster).await?;
        let settings = cluster.settings().clone();
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = StrBytes::from_static_str(STRATEGY);
        protocol.metadata = assign::encode_subscription(topics);
        let mut request = JoinGroupRequest::default();
        request.group_id = self.group.clone();
        request.session_timeout_ms = millis(settings.session_timeout);
        request.rebalance_timeout_ms = millis(settings.rebalance_timeout);
        request.protocol_type = StrBytes::from_static_str("consumer");
        request.protocols = vec![protocol];
        let joined = loop {
            request.member_id = self.member_id.clone();
            let (answer, _) = cluster.call_waiting(coordinator, &request, 7, settings.rebalance_timeout).await?;
            match ResponseError::try_from_code(answer.error_code) {
                // The coordinator hands out the id first (KIP-394); join again with it.
                Some(ResponseError::MemberIdRequired) => self.member_id = answer.member_id,
                Some(error) => return Err(KafkaError::api("JoinGroup", error)),
                None => break answer,
            }
        };
        self.member_id = joined.member_id.clone();
        self.generation = joined.generation_id;
        let assignments = if joined.leader == joined.member_id {
            let members: Vec<(String, Vec<String>)> = joined
                .members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        assign::decode_subscription(&m.metadata).unwrap_or_else(|| topics.to_vec()),
                    )
                })
                .collect();
            let mut wanted: Vec<String> = members.iter().flat_map(|(_, t)| t.iter().cloned()).collect();
            wanted.sort();
            wanted.dedup();
            cluster.refresh(Some(&wanted), false).await?;
            let counts: HashMap<String, Vec<i32>> =
                cluster.topics().iter().map(|(t, p)| (t.clone(), p.keys().copied().collect())).collect();
            assign::range(&members, &counts)
                .into_iter()
                .map(|(member, partitions)| {
                    let mut assignment = SyncGroupRequestAssignment::default();
                    assignment.member_id = StrBytes::from_string(member);
                    assignment.assignment = assign::encode_assignment(&partitions);
                    assignment
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut sync = SyncGroupRequest::default();
        sync.group_id = self.group.clone();
        sync.generation_id = self.generation;
        sync.member_id = self.member_id.clone();
        sync.protocol_type = Some(StrBytes::from_static_str("consumer"));
        sync.protocol_name = Some(StrBytes::from_static_str(STRATEGY));
        sync.assignments = assignments;
        let (synced, _) = cluster.call_waiting(coordinator, &sync, 5, settings.rebalance_timeout).await?;
        if let Some(error) = ResponseError::try_from_code(synced.error_code) {
            return Err(KafkaError::api("SyncGroup", error));
        }
        Ok(assign::decode_assignment(&synced.assignment))
    }

    async fn coordinator(&mut self, cluster: &mut Cluster) -> Result<i32, KafkaError> {
        if let Some(node) = self.coordinator {
            return Ok(node);
        }
        let mut request = FindCoordinatorRequest::default();
        request.key = self.group.0.clone();
        let answer = find_any(cluster, &request).await?;
        if let Some(error) = ResponseError::try_from_code(answer.error_code) {
            return Err(KafkaError::api("FindCoordinator", error));
        }
        cluster.learn_broker(answer.node_id.0, answer.host.as_str(), answer.port);
        self.coordinator = Some(answer.node_id.0);
        Ok(answer.node_id.0)
    }

    fn start_heartbeat(&mut self, cluster: &Cluster) -> Result<(), KafkaError> {
        let coordinator = self.coordinator.ok_or_else(|| KafkaError::Protocol("no coordinator".to_owned()))?;
        let address = cluster.address(coordinator)?;
        let mut request = HeartbeatRequest::default();
        request.group_id = self.group.clone();
        request.generation_id = self.generation;
        request.member_id = self.member_id.clone();
        self.heartbeat = Some(Heartbeat::start(address, cluster.settings().clone(), request));
        Ok(())
    }

    /// Commits `offsets` (the next offset to read, per partition) for this generation.
    pub async fn commit(&mut self, cluster: &mut Cluster, offsets: &[(TopicPartition, i64)]) -> Result<(), KafkaError> {
        let coordinator = self.coordinator(cluster).await?;
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        for ((topic, partition), offset) in offsets {
            let index = match topics.iter().position(|t| t.name.0.as_str() == topic) {
                Some(index) => index,
                None => {
                    let mut entry = OffsetCommitRequestTopic::default();
                    entry.name = TopicName(StrBytes::from_string(topic.clone()));
                    topics.push(entry);
                    topics.len() - 1
                }
            };
            let mut entry = OffsetCommitRequestPartition::default();
            entry.partition_index = *partition;
            entry.committed_offset = *offset;
            entry.committed_leader_epoch = -1;
            entry.committed_metadata = Some(StrBytes::default());
            topics[index].partitions.push(entry);
        }
        let mut request = OffsetCommitRequest::default();
        request.group_id = self.group.clone();
        request.generation_id_or_member_epoch = self.generation;
        request.member_id = self.member_id.clone();
        request.retention_time_ms = -1;
        request.topics = topics;
        let answer = match cluster.call(coordinator, &request, 7).await {
            Ok(answer) => answer,
            Err(e) => {
                self.coordinator = None;
                return Err(e);
            }
        };
        let first_error =
            answer.topics.iter().flat_map(|t| &t.partitions).find_map(|p| ResponseError::try_from_code(p.error_code));
        if let Some(error) = first_error {
            if is_coordinator_error(error) {
                self.coordinator = None;
            }
            if let Some(heartbeat) = &self.heartbeat
                && matches!(
                    error,
                    ResponseError::RebalanceInProgress
                        | ResponseError::IllegalGeneration
                        | ResponseError::UnknownMemberId
                )
            {
                heartbeat.request_rejoin();
            }
            return Err(KafkaError::api("OffsetCommit", error));
        }
        Ok(())
    }

    /// The group's committed offsets of `partitions`; `-1` where none is.
    pub async fn committed(
        &mut self,
        cluster: &mut Cluster,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
        let coordinator = self.coordinator(cluster).await?;
        let request = offset_fetch_request(&self.group, partitions);
        let answer = match cluster.call(coordinator, &request, 7).await {
            Ok(answer) => answer,
            Err(e) => {
                self.coordinator = None;
                return Err(e);
            }
        };
        if let Some(error) = ResponseError::try_from_code(answer.error_code) {
            if is_coordinator_error(error) {
                self.coordinator = None;
            }
            return Err(KafkaError::api("OffsetFetch", error));
        }
        let mut committed = HashMap::new();
        for topic in &answer.topics {
            for partition in &topic.partitions {
                if let Some(error) = ResponseError::try_from_code(partition.error_code) {
                    return Err(KafkaError::api("OffsetFetch", error));
                }
                committed.insert((topic.name.0.to_string(), partition.partition_index), partition.committed_offset);
            }
        }
        Ok(committed)
    }

    /// Leaves the group so its partitions move to the other members at once.
    pub async fn leave(&mut self, cluster: &mut Cluster) {
        self.heartbeat = None;
        let Some(coordinator) = self.coordinator.filter(|_| !self.member_id.is_empty()) else { return };
        let mut request = LeaveGroupRequest::default();
        request.group_id = self.group.clone();
        request.member_id = self.member_id.clone();
        if let Err(e) = cluster.call(coordinator, &request, 2).await {
            tracing::debug!(group = %self.group.0, error = %e, "leaving the group failed; the session expires instead");
        }
        self.member_id = StrBytes::default();
        self.generation = -1;
    }
}

/// An OffsetFetch request for `group` over `partitions`.
pub fn offset_fetch_request(group: &GroupId, partitions: &[TopicPartition]) -> OffsetFetchRequest {
    let mut topics: Vec<OffsetFetchRequestTopic> = Vec::new();
    for (topic, partition) in partitions {
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(entry) => entry.partition_indexes.push(*partition),
            None => {
                let mut entry = OffsetFetchRequestTopic::default();
                entry.name = TopicName(StrBytes::from_string(topic.clone()));
                entry.partition_indexes.push(*partition);
                topics.push(entry);
            }
        }
    }
    let mut request = OffsetFetchRequest::default();
    request.group_id = group.clone();
    request.topics = Some(topics);
    request
}

/// Asks the known brokers, then the bootstrap ones, for the group's coordinator.
pub async fn find_any(
    cluster: &mut Cluster,
    request: &FindCoordinatorRequest,
) -> Result<kafka_protocol::messages::FindCoordinatorResponse, KafkaError> {
    let mut last_error = KafkaError::Protocol("no brokers configured".to_owned());
    for node in cluster.nodes() {
        match cluster.call(node, request, 3).await {
            Ok(answer) => return Ok(answer),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

pub(super) fn is_coordinator_error(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
    )
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
