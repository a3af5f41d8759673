//! Producing records (the dead-letter topic's): one batch per partition in a
//! request, each under the broker's message size limit, acknowledged by all
//! in-sync replicas.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

use super::KafkaError;
use super::cluster::Cluster;

/// A batch's size budget, under Kafka's default `max.message.bytes` (1 MiB):
/// a bigger batch is refused whole (MessageTooLarge).
const MAX_BATCH_BYTES: usize = 900 * 1024;

/// How long the broker may wait for the replicas before answering.
const ACK_TIMEOUT_MS: i32 = 30_000;

/// A record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Key, `None` for a null key.
    pub key: Option<Bytes>,
    /// Value, `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Bytes)>,
    /// Spreads records over the topic's partitions: partition `hint % count`.
    pub partition_hint: u32,
}

/// Produces `records` to `topic` and waits for every acknowledgement. Fails
/// when the topic does not exist and the brokers do not create it.
pub async fn produce(cluster: &mut Cluster, topic: &str, records: &[OutRecord]) -> Result<(), KafkaError> {
    if records.is_empty() {
        return Ok(());
    }
    if !cluster.topics().contains_key(topic) {
        cluster.refresh(Some(&[topic.to_owned()]), true).await?;
    }
    let partitions: Vec<i32> = match cluster.topics().get(topic) {
        Some(partitions) if !partitions.is_empty() => partitions.keys().copied().collect(),
        _ => return Err(KafkaError::api("Metadata", ResponseError::UnknownTopicOrPartition).context(topic)),
    };
    let now = chrono::Utc::now().timestamp_millis();
    // Each partition's records in batches under the broker's message size limit.
    let mut by_partition: BTreeMap<i32, Vec<Vec<Record>>> = BTreeMap::new();
    let mut filling: BTreeMap<i32, usize> = BTreeMap::new();
    for record in records {
        let partition = partitions[record.partition_hint as usize % partitions.len()];
        let size = record_size(record);
        let batches = by_partition.entry(partition).or_default();
        let bytes = filling.entry(partition).or_default();
        if batches.is_empty() || (*bytes + size > MAX_BATCH_BYTES && !batches.last().is_some_and(Vec::is_empty)) {
            batches.push(Vec::new());
            *bytes = 0;
        }
        *bytes += size;
        let batch = batches.last_mut().expect("pushed above");
        batch.push(to_record(record, batch.len(), now));
    }
    // Kafka takes one batch per partition in a request: the n-th batches of every partition go together.
    let rounds = by_partition.values().map(Vec::len).max().unwrap_or(0);
    for round in 0..rounds {
        let mut by_leader: BTreeMap<i32, Vec<PartitionProduceData>> = BTreeMap::new();
        for (partition, batches) in &by_partition {
            let Some(batch) = batches.get(round) else { continue };
            let leader = cluster
                .leader(topic, *partition)
                .ok_or_else(|| KafkaError::api("Produce", ResponseError::LeaderNotAvailable).context(topic))?;
            let mut data = PartitionProduceData::default();
            data.index = *partition;
            data.records = Some(encode_batch(batch)?);
            by_leader.entry(leader).or_default().push(data);
        }
        for (leader, partitions) in by_leader {
            send(cluster, topic, leader, partitions).await?;
        }
    }
    Ok(())
}

/// One produce request to `leader`, waiting for every in-sync replica.
async fn send(
    cluster: &mut Cluster,
    topic: &str,
    leader: i32,
    partitions: Vec<PartitionProduceData>,
) -> Result<(), KafkaError> {
    let mut topic_data = TopicProduceData::default();
    topic_data.name = TopicName(StrBytes::from_string(topic.to_owned()));
    topic_data.partition_data = partitions;
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = ACK_TIMEOUT_MS;
    request.topic_data = vec![topic_data];
    let answer = match cluster.call(leader, &request, 8).await {
        Ok(answer) => answer,
        Err(e) => {
            cluster.forget_topic(topic);
            return Err(e);
        }
    };
    for response in answer.responses.iter().flat_map(|t| &t.partition_responses) {
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            // A moved leader or a new topic shows up in the next metadata.
            cluster.forget_topic(topic);
            // The broker says why it refused a batch (e.g. which record was invalid).
            let why = response.error_message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default();
            return Err(KafkaError::api("Produce", error).context(&format!("{topic}{why}")));
        }
    }
    Ok(())
}

/// About what a record takes in a batch: its bytes and a few of framing each.
fn record_size(out: &OutRecord) -> usize {
    let field = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
    let headers: usize = out.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    field(&out.key) + field(&out.value) + headers + 30
}

/// `out` as the `position`-th record of its partition's batch, written at `timestamp`.
fn to_record(out: &OutRecord, position: usize, timestamp: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: position as i64,
        // No idempotence: the batch's base sequence must be -1. The encoder
        // derives it from the first record and starts a new batch wherever
        // offset − sequence changes, and Kafka refuses more than one batch
        // per partition (InvalidRecord), so the sequence follows the offset.
        sequence: position as i32 - 1,
        timestamp,
        key: out.key.clone(),
        value: out.value.clone(),
        headers: out
            .headers
            .iter()
            .map(|(k, v)| (StrBytes::from_string(k.clone()), Some(v.clone())))
            .collect::<IndexMap<_, _>>(),
    }
}

/// One partition's records as the one record batch Kafka accepts per partition.
fn encode_batch(records: &[Record]) -> Result<Bytes, KafkaError> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .map_err(|e| KafkaError::Protocol(format!("encoding a record batch: {e}")))?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::RecordBatchDecoder;

    use super::*;

    #[test]
    fn a_partitions_records_are_one_batch_without_a_sequence() {
        let out = OutRecord { key: None, value: Some(Bytes::from("v")), headers: Vec::new(), partition_hint: 0 };
        let records: Vec<Record> = (0..3).map(|n| to_record(&out, n, 0)).collect();
        let mut encoded = encode_batch(&records).unwrap();
        let batches = RecordBatchDecoder::decode_batch_info(&mut encoded.clone()).unwrap();
        assert_eq!(batches.len(), 1, "Kafka refuses a second batch for one partition");
        assert_eq!((batches[0].record_count, batches[0].base_sequence), (3, -1));
        assert_eq!(RecordBatchDecoder::decode(&mut encoded).unwrap().records.len(), 3);
    }

    #[test]
    fn record_sizes_count_key_value_and_headers() {
        let out = OutRecord {
            key: Some(Bytes::from("k")),
            value: Some(Bytes::from(vec![0u8; 1000])),
            headers: vec![("h".to_owned(), Bytes::from("v"))],
            partition_hint: 0,
        };
        assert_eq!(record_size(&out), 1 + 1000 + 12 + 30);
    }
}
