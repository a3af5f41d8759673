//! Kafka messages → [`SourceRecord`]s in the Redis sink's extended layout, so the
//! one Debezium decoder handles both sources.

use super::client::fetch::FetchedRecord;
use crate::source::SourceRecord;

/// Field carrying the message key (absent for a null key).
pub const KEY_FIELD: &str = "key";
/// Field carrying the message value.
pub const VALUE_FIELD: &str = "value";
/// A null value (Debezium's tombstone) as Debezium Server's Redis sink writes it,
/// which the decoder already reads as a tombstone.
const NULL_VALUE: &str = "default";

/// The record id of a message: `<partition>:<offset>`.
pub fn record_id(partition: i32, offset: i64) -> String {
    format!("{partition}:{offset}")
}

/// Parses [`record_id`]'s format back.
pub fn parse_record_id(id: &str) -> Option<(i32, i64)> {
    let (partition, offset) = id.split_once(':')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// Converts a message: `key` (when not null), `value`, then every header by its
/// own name (e.g. `__debezium.oldkey`), so the decoder sees them.
pub fn to_source_record(record: &FetchedRecord) -> SourceRecord {
    let headers = record.headers.iter().map(|(k, v)| (k.clone(), v.as_deref().map(text).unwrap_or_default())).collect();
    build(&record.topic, record.partition, record.offset, record.key.as_deref(), record.value.as_deref(), headers)
}

fn build(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Vec<(String, String)>,
) -> SourceRecord {
    let mut fields = Vec::with_capacity(2 + headers.len());
    if let Some(key) = key {
        fields.push((KEY_FIELD.to_owned(), text(key)));
    }
    fields.push((VALUE_FIELD.to_owned(), value.map_or_else(|| NULL_VALUE.to_owned(), text)));
    fields.extend(headers);
    SourceRecord::with_fields(topic.to_owned(), record_id(partition, offset), fields)
}

/// Invalid UTF-8 is kept lossily: it then fails JSON decoding and is dead-lettered.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::debezium::{Decoded, SkipReason, decode_stream_entry};

    const VALUE: &str = r#"{"schema":{},"payload":{"op":"u","before":null,"after":{"id":1},"source":{"schema":"public","table":"product","lsn":42}}}"#;

    #[test]
    fn a_change_decodes_with_key_and_headers() {
        let headers = vec![("__debezium.oldkey".to_owned(), r#"{"id":0}"#.to_owned())];
        let record = build("shop.public.product", 2, 17, Some(br#"{"id":1}"#), Some(VALUE.as_bytes()), headers);
        assert_eq!(record.id, "2:17");
        assert_eq!(parse_record_id(&record.id), Some((2, 17)));
        assert_eq!(record.fields()[2].0, "__debezium.oldkey");
        let Decoded::Change(event) = decode_stream_entry(&record.stream, &record.fields()).unwrap() else {
            panic!("expected a change")
        };
        assert_eq!(event.table, "product");
        assert_eq!(event.key, r#"{"id":1}"#);
    }

    #[test]
    fn a_null_value_is_a_tombstone_and_a_null_key_is_null() {
        let record = build("shop.public.product", 0, 3, Some(br#"{"id":1}"#), None, Vec::new());
        assert_eq!(
            decode_stream_entry(&record.stream, &record.fields()).unwrap(),
            Decoded::Skip(SkipReason::Tombstone)
        );
        let record = build("shop.public.product", 0, 4, None, Some(VALUE.as_bytes()), Vec::new());
        let Decoded::Change(event) = decode_stream_entry(&record.stream, &record.fields()).unwrap() else {
            panic!("expected a change")
        };
        assert_eq!(event.key, "null");
    }

    #[test]
    fn invalid_utf8_fails_decoding() {
        let record = build("t", 0, 0, None, Some(&[0xff, 0xfe]), Vec::new());
        assert!(decode_stream_entry(&record.stream, &record.fields()).is_err());
    }
}
