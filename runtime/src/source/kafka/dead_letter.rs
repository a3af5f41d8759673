//! The dead-letter topic: records that failed for good, produced with their
//! original key, value and headers plus the reason in `__evercache.*` headers.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::client::produce::{OutRecord, produce};
use super::client::{Cluster, KafkaError};
use super::record::{KEY_FIELD, VALUE_FIELD, parse_record_id};
use crate::source::{DeadLetter, SourceRecord};

/// The dead-letter topic for records of `topic`; `template` is e.g. "{topic}.dlq".
pub fn topic_for(template: &str, topic: &str) -> String {
    template.replace("{topic}", topic)
}

/// Produces every letter and waits until the brokers acknowledged all of them.
pub async fn write(
    cluster: &mut Cluster,
    template: &str,
    records: &[SourceRecord],
    letters: &[DeadLetter],
) -> Result<(), KafkaError> {
    let mut by_topic: BTreeMap<String, Vec<OutRecord>> = BTreeMap::new();
    for letter in letters {
        let record = &records[letter.record];
        let fields = record.fields();
        let field = |name: &str| fields.iter().find(|(f, _)| f == name).map(|(_, v)| Bytes::from(v.clone()));
        let mut headers: Vec<(String, Bytes)> = fields
            .iter()
            .filter(|(f, _)| f != KEY_FIELD && f != VALUE_FIELD)
            .map(|(name, value)| (name.clone(), Bytes::from(value.clone())))
            .collect();
        for (name, value) in [
            ("__evercache.topic", record.stream.clone()),
            ("__evercache.id", record.id.clone()),
            ("__evercache.pipeline", letter.pipeline.clone().unwrap_or_default()),
            ("__evercache.error", letter.error.clone()),
            ("__evercache.attempts", letter.attempts.to_string()),
        ] {
            headers.push((name.to_owned(), Bytes::from(value)));
        }
        // The source's partition keeps a partition's dead letters in their order.
        let partition = parse_record_id(&record.id).map_or(0, |(partition, _)| partition.max(0) as u32);
        by_topic.entry(topic_for(template, &record.stream)).or_default().push(OutRecord {
            key: field(KEY_FIELD),
            value: field(VALUE_FIELD),
            headers,
            partition_hint: partition,
        });
    }
    for (topic, out) in by_topic {
        produce(cluster, &topic, &out).await?;
    }
    Ok(())
}
