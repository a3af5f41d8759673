//! Record batches (format v2) of one fetched partition → records: control
//! batches and, when reading committed, aborted transactions skipped; a batch
//! cut off by the fetch's size limit left for the next fetch.

use std::collections::HashSet;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::records::RecordBatchDecoder;

use super::KafkaError;
use super::assign::TopicPartition;

/// Size of a v2 record batch's header.
const BATCH_HEADER: usize = 61;

/// One record as fetched.
#[derive(Debug, Clone)]
pub struct FetchedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, `None` when null.
    pub key: Option<Bytes>,
    /// Value, `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Appends the records at or after `position` of one partition's fetched
/// bytes to `out` and returns the next position. A batch cut off at the end
/// (the fetch's size limit) is left for the next fetch.
pub fn decode_partition(
    (topic, partition): &TopicPartition,
    position: i64,
    mut bytes: Bytes,
    mut aborted: Vec<AbortedTransaction>,
    out: &mut Vec<FetchedRecord>,
) -> Result<i64, KafkaError> {
    aborted.sort_by_key(|a| a.first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut next = position;
    let bad = |message: String| KafkaError::Protocol(format!("{topic}/{partition}: {message}"));
    while bytes.len() >= BATCH_HEADER {
        let header = &bytes[..BATCH_HEADER];
        let at = |range: std::ops::Range<usize>| &header[range];
        let base_offset = at(0..8).get_i64();
        let length = usize::try_from(at(8..12).get_i32()).map_err(|_| bad("negative batch length".to_owned()))?;
        if bytes.len() < 12 + length {
            break;
        }
        let magic = header[16];
        if magic != 2 {
            return Err(bad(format!("record format v{magic} (before Kafka 0.11) is not supported")));
        }
        let attributes = at(21..23).get_i16();
        let last_offset = base_offset + i64::from(at(23..27).get_i32());
        let producer_id = at(43..51).get_i64();
        let (transactional, control) = (attributes & 0x10 != 0, attributes & 0x20 != 0);
        let mut batch = bytes.split_to(12 + length);
        next = next.max(last_offset + 1);
        if last_offset < position {
            continue;
        }
        if transactional {
            while let Some(a) = aborted.next_if(|a| a.first_offset <= last_offset) {
                aborting.insert(a.producer_id.0);
            }
        }
        let set =
            RecordBatchDecoder::decode(&mut batch).map_err(|e| bad(format!("record batch at {base_offset}: {e}")))?;
        if control {
            // A commit or abort marker ends the producer's transaction.
            aborting.remove(&producer_id);
            continue;
        }
        if transactional && aborting.contains(&producer_id) {
            continue;
        }
        for record in set.records.into_iter().filter(|r| r.offset >= position) {
            out.push(FetchedRecord {
                topic: topic.clone(),
                partition: *partition,
                offset: record.offset,
                key: record.key,
                value: record.value,
                headers: record.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            });
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::messages::ProducerId;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    use super::*;

    fn record(offset: i64, value: &str, producer_id: i64, transactional: bool, control: bool) -> Record {
        Record {
            transactional,
            control,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: Some(Bytes::from(value.to_owned())),
            headers: IndexMap::new(),
        }
    }

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, records, &RecordEncodeOptions { version: 2, compression }).unwrap();
        buf.freeze()
    }

    fn concat(batches: &[Bytes]) -> Bytes {
        batches.iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>().into()
    }

    fn decode(bytes: Bytes, position: i64, aborted: Vec<AbortedTransaction>) -> (Vec<(i64, String)>, i64) {
        let mut out = Vec::new();
        let next = decode_partition(&("t".to_owned(), 0), position, bytes, aborted, &mut out).unwrap();
        let records =
            out.into_iter().map(|r| (r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap())).collect();
        (records, next)
    }

    fn values(range: std::ops::RangeInclusive<i64>) -> Vec<(i64, String)> {
        range.map(|o| (o, format!("v{o}"))).collect()
    }

    #[test]
    fn batches_are_read_from_the_position_and_compressed_ones_too() {
        let first: Vec<Record> = (0..3).map(|o| record(o, &format!("v{o}"), -1, false, false)).collect();
        let second: Vec<Record> = (3..5).map(|o| record(o, &format!("v{o}"), -1, false, false)).collect();
        let third: Vec<Record> = (5..7).map(|o| record(o, &format!("v{o}"), -1, false, false)).collect();
        let bytes = concat(&[
            batch(&first, Compression::None),
            batch(&second, Compression::Gzip),
            batch(&third, Compression::Zstd),
        ]);
        assert_eq!(decode(bytes.clone(), 0, Vec::new()), (values(0..=6), 7));
        assert_eq!(decode(bytes, 1, Vec::new()), (values(1..=6), 7), "records before the position are skipped");
    }

    #[test]
    fn a_batch_cut_off_at_the_end_is_left_for_the_next_fetch() {
        let first: Vec<Record> = (0..3).map(|o| record(o, &format!("v{o}"), -1, false, false)).collect();
        let second: Vec<Record> = (3..5).map(|o| record(o, &format!("v{o}"), -1, false, false)).collect();
        let (first, second) = (batch(&first, Compression::None), batch(&second, Compression::Lz4));
        assert!(second.len() > BATCH_HEADER + 10);
        let cut = concat(&[first.clone(), second]).slice(..first.len() + BATCH_HEADER + 10);
        assert_eq!(decode(cut, 0, Vec::new()), (values(0..=2), 3));
    }

    #[test]
    fn aborted_transactions_and_control_batches_are_skipped() {
        let aborted_txn: Vec<Record> = (0..2).map(|o| record(o, &format!("v{o}"), 7, true, false)).collect();
        let mut marker = record(2, "", 7, true, true);
        marker.key = Some(Bytes::from_static(&[0, 0, 0, 0]));
        let committed_txn: Vec<Record> = (3..5).map(|o| record(o, &format!("v{o}"), 8, true, false)).collect();
        let mut commit = record(5, "", 8, true, true);
        commit.key = Some(Bytes::from_static(&[0, 0, 0, 1]));
        let plain = vec![record(6, "v6", -1, false, false)];
        let bytes = concat(&[
            batch(&aborted_txn, Compression::None),
            batch(&[marker], Compression::None),
            batch(&committed_txn, Compression::Snappy),
            batch(&[commit], Compression::None),
            batch(&plain, Compression::None),
        ]);
        let mut abort = AbortedTransaction::default();
        abort.producer_id = ProducerId(7);
        abort.first_offset = 0;
        let (records, next) = decode(bytes.clone(), 0, vec![abort]);
        assert_eq!(records, vec![(3, "v3".to_owned()), (4, "v4".to_owned()), (6, "v6".to_owned())]);
        assert_eq!(next, 7, "control batches still advance the position");
        let (records, _) = decode(bytes, 0, Vec::new());
        assert_eq!(records.len(), 5, "read_uncommitted sees the aborted records, never the markers");
    }
}
