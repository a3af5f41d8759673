//! Builders for Debezium change events as Debezium Server writes them, so
//! tests can feed the runtime exactly what production sees.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// A monotonically increasing fake LSN, so events built later sort later.
pub fn next_lsn() -> u64 {
    static LSN: AtomicU64 = AtomicU64::new(0x1000_0000);
    LSN.fetch_add(0x100, Ordering::SeqCst)
}

/// A Postgres change value (no schema wrapper), as the pgoutput connector emits it.
pub fn pg_change(op: &str, schema: &str, table: &str, before: Option<Value>, after: Option<Value>, lsn: u64) -> Value {
    let commit = lsn.saturating_sub(0x10);
    json!({
        "before": before,
        "after": after,
        "source": {
            "version": "3.0.1.Final",
            "connector": "postgresql",
            "name": "test",
            "ts_ms": 1_700_000_000_000u64 + lsn / 0x100,
            "snapshot": "false",
            "db": "test",
            "sequence": format!("[\"{commit}\",\"{lsn}\"]"),
            "schema": schema,
            "table": table,
            "txId": 1000 + lsn / 0x100,
            "lsn": lsn,
            "xmin": null
        },
        "op": op,
        "ts_ms": 1_700_000_000_100u64 + lsn / 0x100,
        "transaction": null
    })
}

/// The key JSON Debezium puts in the entry's field name (no schema wrapper).
pub fn pg_key(id: i64) -> String {
    json!({ "id": id }).to_string()
}

/// Wraps a value in the JsonConverter `{"schema":…,"payload":…}` envelope.
pub fn with_schema(payload: Value) -> Value {
    json!({
        "schema": { "type": "struct", "optional": false, "name": "test.Envelope", "fields": [] },
        "payload": payload
    })
}

/// Each envelope's (table, `after.id`, `source.snapshot`, `op`), for checking snapshot marks.
pub fn snapshot_marks(envelopes: &[Value]) -> Vec<(String, i64, String, String)> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    envelopes
        .iter()
        .map(|e| {
            (
                text(&e["source"]["table"]),
                e["after"]["id"].as_i64().unwrap_or(0),
                text(&e["source"]["snapshot"]),
                text(&e["op"]),
            )
        })
        .collect()
}

/// The marks Debezium gives a snapshot of tables `a` (rows 1..=3), `b` (empty),
/// `c` (row 1), `d` (rows 1, 2) and `e` (empty), read in that order.
pub fn expected_snapshot_marks() -> Vec<(String, i64, String, String)> {
    [
        ("a", 1, "first"),
        ("a", 2, "true"),
        ("a", 3, "last_in_data_collection"),
        ("c", 1, "last_in_data_collection"),
        ("d", 1, "first_in_data_collection"),
        ("d", 2, "last"),
    ]
    .map(|(table, id, mark)| (table.to_owned(), id, mark.to_owned(), "r".to_owned()))
    .to_vec()
}
