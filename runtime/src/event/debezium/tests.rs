//! Every real Debezium fixture in `runtime/tests/fixtures/debezium/` decoded.

use super::source_block::sequence_lsns;
use super::*;
use crate::event::position;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/debezium/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn change(decoded: Result<Decoded, DecodeError>) -> ChangeEvent {
    match decoded {
        Ok(Decoded::Change(event)) => event,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn skip(decoded: Result<Decoded, DecodeError>) -> SkipReason {
    match decoded {
        Ok(Decoded::Skip(reason)) => reason,
        other => panic!("expected a skip, got {other:?}"),
    }
}

fn json(text: &Option<String>) -> serde_json::Value {
    serde_json::from_str(text.as_deref().expect("row present")).expect("row is JSON")
}

/// Parses redis-cli's XRANGE output into the entry's field/value pairs.
fn redis_cli_fields(text: &str) -> Vec<(String, String)> {
    let mut strings = Vec::new();
    for line in text.lines() {
        let Some(start) = line.find('"') else { continue };
        let quoted = &line[start + 1..line.rfind('"').unwrap_or(line.len())];
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        strings.push(out);
    }
    // The first quoted string is the entry id; the rest alternate field, value.
    strings[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()
}

#[test]
fn pg_insert_with_schema_wrapper() {
    let event =
        change(decode_record("dbserver1.inventory.customers", None, Some(&fixture("pg_insert_with_schema.json"))));
    assert_eq!(event.op, Op::Create);
    assert_eq!(event.source, "PostgreSQL_server");
    assert_eq!(event.schema.as_deref(), Some("public"));
    assert_eq!(event.table, "customers");
    assert_eq!(event.key, "null");
    assert!(event.before.is_none());
    assert_eq!(json(&event.after)["email"], "annek@noanswer.org");
    assert_eq!(event.position, position::postgres(24023119, 24023128));
    assert_eq!(event.committed_at_ms, 1559033904863);
}

#[test]
fn pg_insert_and_update_without_wrapper_with_key() {
    let key = fixture("pg_key_no_schema.json");
    let insert =
        change(decode_record("dbserver1.inventory.orderline", Some(&key), Some(&fixture("pg_insert_no_schema.json"))));
    assert_eq!(insert.op, Op::Create);
    assert_eq!(insert.key, r#"{"id":2}"#);
    assert_eq!(insert.schema.as_deref(), Some("inventory"));
    assert_eq!(insert.table, "orderline");
    assert_eq!(json(&insert.after)["totalprice"], "C7c=", "decimals stay as Debezium encodes them");
    let update =
        change(decode_record("dbserver1.inventory.orderline", Some(&key), Some(&fixture("pg_update_no_schema.json"))));
    assert_eq!(update.op, Op::Update);
    assert!(update.before.is_none(), "DEFAULT replica identity gives no before image");
    assert_eq!(json(&update.after)["status"], "CANCELLED");
    assert_eq!(update.position, position::postgres(34251752, 34251752), "no sequence: the lsn orders it");
    assert_eq!(update.committed_at_ms, 1610716988917);
}

#[test]
fn pg_update_with_unavailable_toast_value() {
    let event = change(decode_record("t", None, Some(&fixture("pg_update_toast_unavailable_value.json"))));
    assert_eq!(event.op, Op::Update);
    assert_eq!(json(&event.after)["biography"], "__debezium_unavailable_value");
}

#[test]
fn pg_delete_and_truncate_payloads() {
    let delete = change(decode_record("t", Some(r#"{"id":1}"#), Some(&fixture("pg_delete_payload.json"))));
    assert_eq!(delete.op, Op::Delete);
    assert!(delete.after.is_none());
    assert_eq!(json(&delete.before)["id"], 1);
    assert_eq!(delete.schema.as_deref(), Some("public"));
    let truncate = change(decode_record("t", None, Some(&fixture("pg_truncate_payload.json"))));
    assert_eq!(truncate.op, Op::Truncate);
    assert_eq!(truncate.key, "null");
    assert!(truncate.before.is_none() && truncate.after.is_none());
}

#[test]
fn pg_transaction_markers_are_skipped() {
    for name in ["pg_transaction_begin.json", "pg_transaction_end.json"] {
        assert_eq!(
            skip(decode_record("dbserver1.transaction", None, Some(&fixture(name)))),
            SkipReason::TransactionMarker,
            "{name}"
        );
    }
}

#[test]
fn mysql_fixtures() {
    let insert = change(decode_record("t", None, Some(&fixture("mysql_insert_with_schema.json"))));
    assert_eq!(insert.op, Op::Create);
    assert_eq!(insert.key, "null");
    assert!(insert.position.starts_with("my:"), "{}", insert.position);

    let key = fixture("mysql_key_with_schema.json");
    let delete =
        change(decode_record("dbserver1.inventory.customers", Some(&key), Some(&fixture("mysql_delete_payload.json"))));
    assert_eq!(delete.op, Op::Delete);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&delete.key).unwrap()["id"], 1004);
    assert!(delete.before.is_some() && delete.after.is_none());

    let update = change(decode_record("wasm.inventory.customers", None, Some(&fixture("mysql_update_no_schema.json"))));
    assert_eq!(update.op, Op::Update);
    assert_eq!(update.source, "wasm");
    assert_eq!(update.schema.as_deref(), Some("inventory"), "MySQL's database is the schema");
    assert_eq!(update.table, "customers");
    assert_eq!(json(&update.before)["first_name"], "Sally");
    assert_eq!(json(&update.after)["first_name"], "Sarah");
    assert_eq!(update.position, position::mysql(3, 1041, 0));
    assert_eq!(update.committed_at_ms, 1731327659000);

    let read =
        change(decode_record("wasm.inventory.customers", None, Some(&fixture("mysql_snapshot_read_no_schema.json"))));
    assert_eq!(read.op, Op::SnapshotRead);
    assert!(read.after.is_some());

    assert_eq!(
        skip(decode_record("dbserver1", None, Some(&fixture("mysql_schema_change_event.json")))),
        SkipReason::SchemaChange
    );
}

#[test]
fn legacy_jsonconverter_tombstone() {
    assert_eq!(
        skip(decode_record("t", Some(r#"{"id":1}"#), Some(&fixture("tombstone_value_legacy_jsonconverter.json")))),
        SkipReason::Tombstone
    );
}

#[test]
fn redis_sink_compact_and_extended_layouts_decode_alike() {
    let compact = redis_cli_fields(&fixture("redis_xrange_compact_sqlserver_delete.txt"));
    let extended = redis_cli_fields(&fixture("redis_xrange_extended_sqlserver_delete.txt"));
    assert_eq!(compact.len(), 1);
    assert_eq!(extended[0].0, "key");
    assert_eq!(extended[1].0, "value");
    let a = change(decode_stream_entry("redislabs.dbo.emp", &compact));
    let b = change(decode_stream_entry("redislabs.dbo.emp", &extended));
    assert_eq!(a, b);
    assert_eq!(a.op, Op::Delete);
    assert_eq!(a.schema.as_deref(), Some("dbo"));
    assert_eq!(a.table, "emp");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&a.key).unwrap()["empno"], 11);
    // The schema declares `sal` a Decimal of scale 4: the runtime hands plugins its text.
    assert_eq!(json(&a.before)["sal"], "200000.0000");
    assert_eq!(json(&a.before)["comm"], "10.0000");
    assert!(a.after.is_none());
    assert_eq!(a.position, "ms:0000003a00002f500005:0000003a00002f500002:0000000000000001");
    assert_eq!(a.committed_at_ms, 1637859764960);
}

/// Every fixture as (file name, text), SOURCES.md left out.
fn all_fixtures() -> Vec<(String, String)> {
    let dir = format!("{}/tests/fixtures/debezium", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "SOURCES.md")
        .map(|name| {
            let text = fixture(&name);
            (name, text)
        })
        .collect()
}

#[test]
fn every_fixture_decodes() {
    let mut seen = 0;
    for (name, text) in all_fixtures() {
        let decoded = match name.as_str() {
            n if n.ends_with(".txt") => decode_stream_entry("t", &redis_cli_fields(&text)),
            n if n.contains("_key_") => decode_key(Some(&text)).map(|_| Decoded::Skip(SkipReason::Empty)),
            _ => decode_record("t", None, Some(&text)),
        };
        assert!(decoded.is_ok(), "{name}: {decoded:?}");
        seen += 1;
    }
    assert_eq!(seen, 18, "every fixture is covered");
}

#[test]
fn the_wrapper_shortcut_decodes_like_the_full_parse() {
    let mut wrapped = 0;
    // The redis-cli listings (.txt) are left out; each JSON file is written
    // without spaces, as Debezium's JsonConverter writes it.
    for (name, text) in all_fixtures().into_iter().filter(|(name, _)| !name.ends_with(".txt")) {
        let compact = minified(&text);
        if !compact.starts_with(r#"{"schema":"#) {
            continue;
        }
        wrapped += 1;
        // A space after the brace takes the value past the shortcut, to the full parse.
        let spaced = format!("{{ {}", &compact[1..]);
        if name.contains("_key_") {
            assert_eq!(decode_key(Some(&compact)).unwrap(), decode_key(Some(&spaced)).unwrap(), "{name}");
        } else {
            assert_eq!(
                decode_record("t", None, Some(&compact)).unwrap(),
                decode_record("t", None, Some(&spaced)).unwrap(),
                "{name}"
            );
        }
    }
    assert!(wrapped >= 3, "fixtures with the wrapper: {wrapped}");
}

/// `text` without the whitespace between tokens, keys in their order.
fn minified(text: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if c.is_whitespace() {
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn postgres_sequences_with_and_without_numbers() {
    assert_eq!(sequence_lsns(r#"["24023128","24023184"]"#), Some([Some(24_023_128), Some(24_023_184)]));
    assert_eq!(sequence_lsns(r#"[null,"24023184"]"#), Some([None, Some(24_023_184)]));
    assert_eq!(sequence_lsns(r#"[ "1" , null ]"#), Some([Some(1), None]));
    assert_eq!(sequence_lsns(r#"["x","2"]"#), Some([None, Some(2)]));
    assert_eq!(sequence_lsns(r#"["\u0031","2"]"#), Some([Some(1), Some(2)]), "escapes go through serde");
    assert_eq!(sequence_lsns(r#"[1,2]"#), None);
    assert_eq!(sequence_lsns(r#"["1","2","3"]"#), None);
    assert_eq!(sequence_lsns("nope"), None);
}

#[test]
fn tombstones_heartbeats_and_errors() {
    assert_eq!(
        skip(decode_stream_entry("s.public.t", &[(r#"{"id":1}"#.into(), "default".into())])),
        SkipReason::Tombstone
    );
    assert_eq!(skip(decode_record("s.public.t", Some(r#"{"id":1}"#), None)), SkipReason::Tombstone);
    assert_eq!(skip(decode_record("s.public.t", None, Some("null"))), SkipReason::Tombstone);
    assert_eq!(
        skip(decode_record("__debezium-heartbeat.s", Some(r#"{"serverName":"s"}"#), Some(r#"{"ts_ms":1}"#))),
        SkipReason::Heartbeat
    );
    assert_eq!(skip(decode_record("s.beat", None, Some(r#"{"ts_ms":1}"#))), SkipReason::Heartbeat);
    assert_eq!(skip(decode_stream_entry("s.public.t", &[])), SkipReason::Empty);
    assert_eq!(
        skip(decode_record("s.public.t", None, Some(r#"{"op":"m","source":{"table":"t"}}"#))),
        SkipReason::Message
    );

    let err = decode_record("s.public.t", None, Some(r#"{"op":"x","source":{"table":"t"}}"#)).unwrap_err();
    assert!(matches!(err, DecodeError::UnknownOp(ref op) if op == "x"), "{err}");
    let err = decode_record("s.public.t", None, Some("{not json")).unwrap_err();
    assert!(err.to_string().starts_with("value is not a valid"), "{err}");
    let err = decode_stream_entry("s.public.t", &[("{not json".into(), r#"{"op":"c","source":{"table":"t"}}"#.into())])
        .unwrap_err();
    assert!(err.to_string().starts_with("key is not a valid"), "{err}");
    let err = decode_record("s.public.t", None, Some(r#"{"op":"c"}"#)).unwrap_err();
    assert!(matches!(err, DecodeError::MissingField("source")), "{err}");
    let err = decode_record("s.public.t", None, Some(r#"{"after":{"id":1}}"#)).unwrap_err();
    assert!(matches!(err, DecodeError::MissingField("op")), "{err}");
    let err = decode_stream_entry("s", &[("a".into(), "1".into()), ("b".into(), "2".into())]).unwrap_err();
    assert!(matches!(err, DecodeError::UnknownLayout { fields: 2 }), "{err}");
}

#[test]
fn extended_headers_are_ignored_and_key_wrapper_unwrapped() {
    let value = r#"{"before":null,"after":{"id":5},"source":{"connector":"postgresql","name":"s","schema":"public","table":"t","sequence":"[\"100\",\"120\"]","lsn":120,"ts_ms":7},"op":"c","ts_ms":9}"#;
    let fields = vec![
        ("key".to_owned(), r#"{"schema":{"type":"struct"},"payload":{"id":5}}"#.to_owned()),
        ("value".to_owned(), value.to_owned()),
        ("__DEBEZIUM.CONTEXT.TASKID".to_owned(), "0".to_owned()),
        ("__DEBEZIUM.NEWKEY".to_owned(), r#"{"id":5}"#.to_owned()),
    ];
    let event = change(decode_stream_entry("s.public.t", &fields));
    assert_eq!(event.key, r#"{"id":5}"#);
    assert_eq!(event.after.as_deref(), Some(r#"{"id":5}"#));
    assert_eq!(event.position, position::postgres(100, 120));
    assert_eq!(event.committed_at_ms, 7);
    let null_commit = value.replace(r#"[\"100\",\"120\"]"#, r#"[null,\"120\"]"#);
    let event = change(decode_record("s.public.t", None, Some(&null_commit)));
    assert_eq!(event.position, position::postgres(120, 120));
}

#[test]
fn a_change_the_capture_could_not_decode_is_an_error_never_a_skip() {
    let fields = vec![
        (CAPTURE_ERROR_FIELD.to_owned(), "pgoutput message at LSN 0/16B3748 could not be decoded: boom".to_owned()),
        ("pgoutput".to_owned(), "49000000".to_owned()),
    ];
    let err = decode_stream_entry("shop.public.product", &fields).unwrap_err();
    assert!(matches!(err, DecodeError::Capture(_)), "{err}");
    assert!(err.to_string().contains("LSN 0/16B3748"), "{err}");
}

#[test]
fn bytes_of_another_converter_name_it_and_the_converter_expected() {
    // Avro through a schema registry: magic byte 0, schema id 7, then the Avro body.
    let avro = String::from_utf8_lossy(&[0, 0, 0, 0, 7, 0x02, 0x06, 0xfe]).into_owned();
    let err = decode_record("shop.public.product", Some(r#"{"id":1}"#), Some(&avro)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DecodeError::OtherConverter { part: "value", .. }), "{text}");
    assert!(text.contains("Confluent wire format") && text.contains("schema id 7"), "{text}");
    assert!(text.contains("org.apache.kafka.connect.json.JsonConverter"), "{text}");

    let value = r#"{"op":"c","after":{"id":1},"source":{"schema":"public","table":"product","lsn":1}}"#;
    let err = decode_record("shop.public.product", Some("Struct{id=1}"), Some(value)).unwrap_err();
    assert!(
        err.to_string().contains("key was written by another converter") && err.to_string().contains("StringConverter"),
        "{err}"
    );
    let err = decode_record("shop.public.product", Some("{not json"), Some(value)).unwrap_err();
    assert!(err.to_string().contains("JsonConverter"), "plain bad JSON names the converter too: {err}");
}

#[test]
fn a_postgres_snapshot_read_ranks_where_the_snapshot_began() {
    // What Debezium 3.6.1 sent (tests/tests/debezium_kafka.rs): the snapshot began at
    // LSN 32602808; a transaction open across it had changed the row at 32602576.
    // The snapshot read ranks above that change, and the guard keeps snapshot reads
    // from ever becoming a key's change version, so the change still applies
    // (sink/redis_writer/tests.rs).
    let position = |op: &str, sequence: &str, lsn: u64| {
        let value = format!(
            r#"{{"before":null,"after":{{"id":1}},"op":"{op}","source":{{"connector":"postgresql","schema":"public","table":"product","sequence":"{sequence}","lsn":{lsn}}}}}"#
        );
        change(decode_record("shop.public.product", Some(r#"{"id":1}"#), Some(&value))).position
    };
    let snapshot = position("r", r#"[null,\"32602808\"]"#, 32602808);
    let streamed = position("u", r#"[null,\"32602576\"]"#, 32602576);
    assert_eq!(snapshot, position::postgres(32602808, 32602808));
    assert_eq!(streamed, position::postgres(32602576, 32602576), "a change without a commit LSN: its own LSN");
    let later = position("u", r#"[\"32603000\",\"32602900\"]"#, 32602900);
    assert_eq!(later, position::postgres(32603000, 32602900), "with a commit LSN, as before");
    assert!(snapshot < later, "a transaction committed after the snapshot ranks above it");
    assert_eq!(position("r", r#"[\"4096\",\"4000\"]"#, 4000), position::postgres(4096, 4000), "the capture's reads");
}
