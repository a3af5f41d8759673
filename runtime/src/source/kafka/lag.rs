//! Consumer-group lag of a Kafka source, read from the broker: per topic, the
//! sum over partitions of the high watermark minus the group's committed offset
//! (the low watermark where nothing is committed yet).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;

/// Lag per subscribed topic, in messages. Blocking: call it off the async workers.
pub fn consumer_lag(config: &KafkaConfig, timeout: Duration) -> Result<Vec<(String, u64)>, String> {
    // A plain consumer with the group's id reads the group's offsets without joining it.
    let consumer: BaseConsumer = config.consumer_config().create().map_err(|e| e.to_string())?;
    let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| e.to_string())?;
    let patterns: Vec<regex::Regex> = config
        .topics
        .iter()
        .filter(|t| t.starts_with('^'))
        .map(|t| regex::Regex::new(t).map_err(|e| format!("topic pattern {t}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut list = TopicPartitionList::new();
    let mut topics = Vec::new();
    for topic in metadata.topics() {
        let name = topic.name();
        if config.topics.iter().any(|t| t == name) || patterns.iter().any(|p| p.is_match(name)) {
            topics.push(name.to_owned());
            for partition in topic.partitions() {
                list.add_partition(name, partition.id());
            }
        }
    }
    let committed = consumer.committed_offsets(list.clone(), timeout).map_err(|e| e.to_string())?;
    let mut lags: Vec<(String, u64)> = topics.into_iter().map(|t| (t, 0)).collect();
    for element in list.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).map_err(|e| e.to_string())?;
        let done = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        if let Some((_, lag)) = lags.iter_mut().find(|(t, _)| t == topic) {
            *lag += (high - done).max(0) as u64;
        }
    }
    Ok(lags)
}
