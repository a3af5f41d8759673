use super::*;
use crate::event::debezium::{Decoded, decode_record, decode_stream_entry};

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn unscaled_integers_become_decimal_text() {
    assert_eq!(decimal("AeJA", 2).unwrap(), "1234.56");
    assert_eq!(decimal("/xcrWvAB", 2).unwrap(), "-9999999999.99");
    assert_eq!(decimal(&base64(&[0xfb]), 2).unwrap(), "-0.05");
    assert_eq!(decimal(&base64(&[0x05]), 3).unwrap(), "0.005");
    assert_eq!(decimal(&base64(&[0x00]), 2).unwrap(), "0.00");
    assert_eq!(decimal(&base64(&[]), 0).unwrap(), "0");
    assert_eq!(decimal("BNI=", 0).unwrap(), "1234", "scale 0 has no point");
    assert_eq!(decimal(&base64(&[0xff; 9]), 0).unwrap(), "-1");
    let big = BigInt::parse_bytes(b"123456789012345678901234567890123456789", 10).unwrap();
    assert_eq!(decimal(&base64(&big.to_signed_bytes_be()), 10).unwrap(), "12345678901234567890123456789.0123456789");
    assert!(decimal("not base64!", 2).is_err());
}

#[test]
fn the_toast_placeholder_stays_a_placeholder() {
    assert_eq!(decimal(&base64(UNAVAILABLE.as_bytes()), 2).unwrap(), UNAVAILABLE);
}

const ENVELOPE_SCHEMA: &str = r#"{"type":"struct","fields":[
    {"type":"struct","field":"before","fields":[]},
    {"type":"struct","field":"after","fields":[
        {"type":"int64","field":"id"},
        {"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"12"},"field":"price"},
        {"type":"struct","name":"io.debezium.data.VariableScaleDecimal","fields":[],"field":"ratio"},
        {"type":"array","items":{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"1"}},"field":"history"},
        {"type":"string","field":"note"}]}]}"#;

#[test]
fn a_row_keeps_its_other_members_as_written() {
    let decimals = RowDecimals::of(ENVELOPE_SCHEMA, RowSchema::Envelope).expect("declares decimals");
    let row = r#"{"id":1,"price":"AeJA","ratio":{"scale":3,"value":"MDk="},"history":["Cg==",null],"note":"AeJA \"x\"","n":1.50E3}"#;
    assert_eq!(
        decimals.rewrite(row).unwrap(),
        r#"{"id":1,"price":"1234.56","ratio":"12.345","history":["1.0",null],"note":"AeJA \"x\"","n":1.50E3}"#
    );
    assert_eq!(
        decimals.rewrite(r#"{"id":2,"price":null,"ratio":null}"#).unwrap(),
        r#"{"id":2,"price":null,"ratio":null}"#
    );
    let error = decimals.rewrite(r#"{"id":3,"price":12}"#).unwrap_err().to_string();
    assert!(error.contains("column `price`"), "{error}");
}

#[test]
fn schemas_without_decimals_are_not_parsed() {
    assert_eq!(RowDecimals::of(r#"{"type":"struct","fields":[{"type":"int64","field":"id"}]}"#, RowSchema::Key), None);
    assert_eq!(RowDecimals::of(r#"{"not a schema": "org.apache.kafka.connect.data.Decimal"}"#, RowSchema::Key), None);
}

#[test]
fn a_decimal_key_is_made_plain_too() {
    let key = r#"{"schema":{"type":"struct","fields":[{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"0"},"field":"id"}]},"payload":{"id":"BNI="}}"#;
    let value = r#"{"op":"d","before":{"id":"BNI="},"after":null,"source":{"table":"t"}}"#;
    let Ok(Decoded::Change(event)) = decode_record("t", Some(key), Some(value)) else { panic!("a change") };
    assert_eq!(event.key, r#"{"id":"1234"}"#);
    assert_eq!(event.before.as_deref(), Some(r#"{"id":"BNI="}"#), "a value without a schema is left alone");
}

/// The conformance fixture's records, decoded as the runtime decodes them.
fn conformance(name: &str) -> Vec<crate::event::ChangeEvent> {
    let path = format!("{}/../tests/fixtures/debezium/conformance/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut events = Vec::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let (key, value) = (record["key"].as_str(), record["value"].as_str());
        let decoded = match record["topic"].as_str() {
            Some(topic) => decode_record(topic, key, value),
            None => {
                let stream = record["stream"].as_str().unwrap();
                decode_stream_entry(stream, &[(key.unwrap().to_owned(), value.unwrap().to_owned())])
            }
        };
        if let Decoded::Change(event) = decoded.unwrap_or_else(|e| panic!("{line}: {e}")) {
            events.push(event);
        }
    }
    events
}

#[test]
fn real_debezium_decimals_read_as_the_capture_writes_them() {
    let expected = [
        (1, "1234.56", Some("3.14159265358979323846")),
        (2, "-9999999999.99", Some("12345678901234567890123456789.0123456789")),
    ];
    for (file, column, unscaled) in
        [("pg_debezium.jsonl", "c_numeric_12_2", Some("c_numeric")), ("mariadb_debezium.jsonl", "c_decimal_12_2", None)]
    {
        let events = conformance(file);
        let mut seen = 0;
        for event in events.iter().filter(|e| e.after.is_some()) {
            let after: serde_json::Value = serde_json::from_str(event.after.as_deref().unwrap()).unwrap();
            let id = after["id"].as_i64().unwrap() % 100;
            let Some((_, fixed, variable)) = expected.iter().find(|(row, ..)| *row == id) else { continue };
            assert_eq!(after[column], *fixed, "{file}: {after}");
            if let (Some(unscaled), Some(variable)) = (unscaled, variable) {
                assert_eq!(after[unscaled], *variable, "{file}: {after}");
            }
            seen += 1;
        }
        assert!(seen >= 4, "{file}: snapshot reads and inserts of rows 1 and 2 ({seen})");
    }
}
