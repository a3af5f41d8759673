//! Parsing of the RESP2 replies the Redis Streams source reads: `XREADGROUP`,
//! `XAUTOCLAIM` and the extended form of `XPENDING`.

use std::collections::HashMap;

use redis::Value;

use crate::source::SourceRecord;

/// Parses `XREADGROUP`'s reply: `[[stream, [[id, [f, v, …]], …]], …]` or nil.
pub(super) fn parse_read_reply(reply: Value) -> Vec<SourceRecord> {
    let mut records = Vec::new();
    let Value::Array(streams) = reply else {
        return records;
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else { continue };
        if parts.len() != 2 {
            continue;
        }
        let entries = parts.pop();
        let name = text(parts.pop());
        if let Some(entries) = entries {
            records.extend(parse_entries(&name, entries));
        }
    }
    records
}

/// Parses `XAUTOCLAIM`'s reply `[next-cursor, [[id, [f, v, …]], …], [deleted ids]]`
/// into the cursor to continue from and the claimed entries.
pub(super) fn parse_autoclaim_reply(stream: &str, reply: Value) -> (String, Vec<SourceRecord>) {
    let Value::Array(mut parts) = reply else {
        return ("0-0".to_owned(), Vec::new());
    };
    if parts.len() < 2 {
        return ("0-0".to_owned(), Vec::new());
    }
    let entries = parts.remove(1);
    let cursor = text(Some(parts.remove(0)));
    (cursor, parse_entries(stream, entries))
}

/// Parses the extended `XPENDING` reply `[[id, consumer, idle-ms, deliveries], …]`
/// into deliveries by entry id.
pub(super) fn parse_pending_deliveries(reply: Value) -> HashMap<String, u64> {
    let mut deliveries = HashMap::new();
    let Value::Array(entries) = reply else {
        return deliveries;
    };
    for entry in entries {
        let Value::Array(fields) = entry else { continue };
        if let (Some(id), Some(Value::Int(count))) = (fields.first(), fields.get(3)) {
            deliveries.insert(text(Some(id.clone())), *count as u64);
        }
    }
    deliveries
}

fn parse_entries(stream: &str, entries: Value) -> Vec<SourceRecord> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut entry) = entry else { continue };
        if entry.len() != 2 {
            continue;
        }
        let raw_fields = entry.pop();
        let id = text(entry.pop());
        // A pending entry deleted from the stream comes back with nil fields;
        // it is delivered with none so it gets acked like any skipped record.
        let mut fields = Vec::new();
        if let Some(Value::Array(values)) = raw_fields {
            let mut it = values.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                fields.push((text(Some(f)), text(Some(v))));
            }
        }
        records.push(SourceRecord::with_fields(stream.to_owned(), id, fields));
    }
    records
}

/// A reply element as text; anything that is not a string becomes "".
pub(super) fn text(value: Option<Value>) -> String {
    match value {
        Some(Value::BulkString(bytes)) => {
            String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
        Some(Value::SimpleString(s)) => s,
        Some(Value::VerbatimString { text, .. }) => text,
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_in_field_order_and_deleted_pending_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("shop.public.product"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("key"), bulk("{}"), bulk("value"), bulk("default")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let records = parse_read_reply(reply);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].stream, "shop.public.product");
        assert_eq!(records[0].id, "1-0");
        assert_eq!(
            records[0].fields().to_vec(),
            vec![("key".to_owned(), "{}".to_owned()), ("value".to_owned(), "default".to_owned())]
        );
        assert!(records[1].fields().is_empty());
        assert!(parse_read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn parses_autoclaim_and_pending_replies() {
        let reply = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![Value::Array(vec![bulk("5-0"), Value::Array(vec![bulk("a"), bulk("1")])])]),
            Value::Array(vec![bulk("6-0")]),
        ]);
        let (cursor, records) = parse_autoclaim_reply("s", reply);
        assert_eq!(cursor, "7-0");
        assert_eq!(records, vec![SourceRecord::with_fields("s".into(), "5-0".into(), vec![("a".into(), "1".into())])]);

        let pending = Value::Array(vec![
            Value::Array(vec![bulk("5-0"), bulk("c"), Value::Int(1200), Value::Int(3)]),
            Value::Array(vec![bulk("6-0"), bulk("c"), Value::Int(1100), Value::Int(1)]),
        ]);
        let deliveries = parse_pending_deliveries(pending);
        assert_eq!(deliveries["5-0"], 3);
        assert_eq!(deliveries["6-0"], 1);
    }
}
