//! The consumer protocol's subscription and assignment payloads, and the
//! `range` assignor the group leader runs.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Version 0 of the payloads: every consumer since Kafka 0.9 reads it.
const VERSION: i16 = 0;

/// A member's subscription to `topics`.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = topics.iter().map(|t| StrBytes::from_string(t.clone())).collect();
    let mut buf = BytesMut::new();
    buf.put_i16(VERSION);
    // Encoding a list of strings at version 0 cannot fail.
    let _ = subscription.encode(&mut buf, VERSION);
    buf.freeze()
}

/// The topics of a member's subscription; `None` when it cannot be read.
pub fn decode_subscription(bytes: &Bytes) -> Option<Vec<String>> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return None;
    }
    // Newer versions only add fields after the topics, so read them as the highest known version.
    let version = buf.get_i16().clamp(0, 3);
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(subscription.topics.iter().map(|t| t.to_string()).collect())
}

/// An assignment of `partitions`.
pub fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    let mut assignment = ConsumerProtocolAssignment::default();
    for (topic, partition) in partitions {
        match assignment.assigned_partitions.iter_mut().find(|t| t.topic.0.as_str() == topic) {
            Some(entry) => entry.partitions.push(*partition),
            None => {
                let mut entry = AssignedTopic::default();
                entry.topic = TopicName(StrBytes::from_string(topic.clone()));
                entry.partitions.push(*partition);
                assignment.assigned_partitions.push(entry);
            }
        }
    }
    let mut buf = BytesMut::new();
    buf.put_i16(VERSION);
    let _ = assignment.encode(&mut buf, VERSION);
    buf.freeze()
}

/// The partitions of an assignment; an empty or unreadable one assigns nothing.
pub fn decode_assignment(bytes: &Bytes) -> Vec<TopicPartition> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16().clamp(0, 3);
    let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut buf, version) else { return Vec::new() };
    assignment
        .assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
        .collect()
}

/// Kafka's `range` assignor: per topic, the subscribed members in id order
/// take consecutive runs of partitions, the first ones one more when the
/// partitions do not divide evenly. Every member gets an entry, maybe empty.
pub fn range(
    members: &[(String, Vec<String>)],
    partitions: &HashMap<String, Vec<i32>>,
) -> Vec<(String, Vec<TopicPartition>)> {
    let mut assignment: Vec<(String, Vec<TopicPartition>)> =
        members.iter().map(|(member, _)| (member.clone(), Vec::new())).collect();
    assignment.sort_by(|a, b| a.0.cmp(&b.0));
    let mut topics: Vec<&String> = partitions.keys().collect();
    topics.sort();
    for topic in topics {
        let mut ids: Vec<i32> = partitions[topic].clone();
        ids.sort();
        let subscribed: Vec<usize> = assignment
            .iter()
            .enumerate()
            .filter(|(_, (member, _))| members.iter().any(|(m, t)| m == member && t.contains(topic)))
            .map(|(i, _)| i)
            .collect();
        if subscribed.is_empty() {
            continue;
        }
        let (quota, extra) = (ids.len() / subscribed.len(), ids.len() % subscribed.len());
        let mut next = 0;
        for (rank, index) in subscribed.into_iter().enumerate() {
            let take = quota + usize::from(rank < extra);
            assignment[index].1.extend(ids[next..next + take].iter().map(|p| (topic.clone(), *p)));
            next += take;
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn payloads_round_trip() {
        let subscription = encode_subscription(&topics(&["a", "b"]));
        assert_eq!(decode_subscription(&subscription), Some(topics(&["a", "b"])));
        let partitions = vec![("a".to_owned(), 0), ("a".to_owned(), 2), ("b".to_owned(), 1)];
        assert_eq!(decode_assignment(&encode_assignment(&partitions)), partitions);
        assert!(decode_assignment(&Bytes::new()).is_empty());
    }

    #[test]
    fn range_splits_each_topic_in_member_order() {
        let members = vec![("m2".to_owned(), topics(&["t", "u"])), ("m1".to_owned(), topics(&["t", "u"]))];
        let partitions: HashMap<String, Vec<i32>> =
            [("t".to_owned(), vec![0, 1, 2]), ("u".to_owned(), vec![0])].into_iter().collect();
        let assignment = range(&members, &partitions);
        let t = |p: i32| ("t".to_owned(), p);
        assert_eq!(assignment[0], ("m1".to_owned(), vec![t(0), t(1), ("u".to_owned(), 0)]));
        assert_eq!(assignment[1], ("m2".to_owned(), vec![t(2)]));
    }

    #[test]
    fn range_skips_members_not_subscribed() {
        let members = vec![("a".to_owned(), topics(&["t"])), ("b".to_owned(), topics(&["other"]))];
        let partitions: HashMap<String, Vec<i32>> = [("t".to_owned(), vec![0, 1])].into_iter().collect();
        let assignment = range(&members, &partitions);
        assert_eq!(assignment[0].1.len(), 2);
        assert!(assignment[1].1.is_empty());
    }
}
