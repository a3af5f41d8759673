//! Stream entries as Debezium Server's Redis sink writes them (compact layout:
//! field = key JSON, value = change JSON), with the JsonConverter's
//! `schema`/`payload` wrapper, Debezium's default, or without it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use super::SCHEMA;

/// The columns of the bench's tables, as (name, Connect type).
fn columns(table: &str) -> &'static [(&'static str, &'static str)] {
    match table {
        "category" => &[("id", "int64"), ("name", "string")],
        _ => &[("id", "int64"), ("name", "string"), ("version", "int64")],
    }
}

fn fields(table: &str, optional_after_key: bool) -> Vec<Value> {
    columns(table)
        .iter()
        .map(|(name, kind)| json!({"type": kind, "optional": optional_after_key && *name != "id", "field": name}))
        .collect()
}

/// The value schema Debezium's Postgres connector sends with every change of `table`.
fn value_schema(table: &str) -> Value {
    let row = |field: &str| {
        json!({"type": "struct", "fields": fields(table, true), "optional": true,
               "name": format!("bench.{SCHEMA}.{table}.Value"), "field": field})
    };
    let source_fields: Vec<Value> = [
        ("version", "string", false),
        ("connector", "string", false),
        ("name", "string", false),
        ("ts_ms", "int64", false),
        ("ts_us", "int64", true),
        ("ts_ns", "int64", true),
        ("snapshot", "string", true),
        ("db", "string", false),
        ("sequence", "string", true),
        ("schema", "string", false),
        ("table", "string", false),
        ("txId", "int64", true),
        ("lsn", "int64", true),
        ("xmin", "int64", true),
    ]
    .iter()
    .map(|(name, kind, optional)| {
        if *name == "snapshot" {
            json!({"type": kind, "optional": optional, "name": "io.debezium.data.Enum", "version": 1,
                   "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
                   "default": "false", "field": name})
        } else {
            json!({"type": kind, "optional": optional, "field": name})
        }
    })
    .collect();
    json!({
        "type": "struct",
        "fields": [
            row("before"),
            row("after"),
            {"type": "struct", "fields": source_fields, "optional": false,
             "name": "io.debezium.connector.postgresql.Source", "field": "source"},
            {"type": "string", "optional": false, "field": "op"},
            {"type": "int64", "optional": true, "field": "ts_ms"},
            {"type": "int64", "optional": true, "field": "ts_us"},
            {"type": "int64", "optional": true, "field": "ts_ns"},
            {"type": "struct", "fields": [
                {"type": "string", "optional": false, "field": "id"},
                {"type": "int64", "optional": false, "field": "total_order"},
                {"type": "int64", "optional": false, "field": "data_collection_order"}
             ], "optional": true, "name": "event.block", "version": 1, "field": "transaction"}
        ],
        "optional": false,
        "name": format!("bench.{SCHEMA}.{table}.Envelope"),
        "version": 2
    })
}

fn cached_schema(table: &str) -> &'static str {
    static ITEM: OnceLock<String> = OnceLock::new();
    static CATEGORY: OnceLock<String> = OnceLock::new();
    let cell = if table == "category" { &CATEGORY } else { &ITEM };
    cell.get_or_init(|| value_schema(table).to_string())
}

/// The key field of row `id`'s entry.
pub fn key(wrapped: bool, id: i64) -> String {
    if wrapped {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"id"}}],"optional":false,"name":"bench.{SCHEMA}.item.Key"}},"payload":{{"id":{id}}}}}"#
        )
    } else {
        format!(r#"{{"id":{id}}}"#)
    }
}

/// An update event of row `id` of `table`.
pub fn value(wrapped: bool, table: &str, id: i64) -> String {
    static LSN: AtomicU64 = AtomicU64::new(1 << 32);
    let lsn = LSN.fetch_add(16, Ordering::Relaxed);
    let ts = evercache::clock::now_ms();
    let row = match table {
        "category" => format!(r#"{{"id":{id},"name":"category {id}"}}"#),
        _ => format!(r#"{{"id":{id},"name":"row {id}","version":1}}"#),
    };
    let payload = format!(
        r#"{{"before":null,"after":{row},"source":{{"version":"3.0.1.Final","connector":"postgresql","name":"bench","ts_ms":{ts},"ts_us":{ts}000,"ts_ns":{ts}000000,"snapshot":"false","db":"test","sequence":"[\"{lsn}\",\"{lsn}\"]","schema":"{SCHEMA}","table":"{table}","txId":1,"lsn":{lsn},"xmin":null}},"op":"u","ts_ms":{ts},"ts_us":{ts}000,"ts_ns":{ts}000000,"transaction":null}}"#
    );
    if wrapped { format!(r#"{{"schema":{},"payload":{payload}}}"#, cached_schema(table)) } else { payload }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapped_entry_decodes_like_the_bare_one() {
        for table in ["item", "category"] {
            let wrapped =
                evercache::event::debezium::decode_record("t", Some(&key(true, 7)), Some(&value(true, table, 7)));
            let bare =
                evercache::event::debezium::decode_record("t", Some(&key(false, 7)), Some(&value(false, table, 7)));
            let (
                Ok(evercache::event::debezium::Decoded::Change(w)),
                Ok(evercache::event::debezium::Decoded::Change(b)),
            ) = (wrapped, bare)
            else {
                panic!("both decode")
            };
            assert_eq!((w.key, w.after, w.table), (b.key, b.after, b.table));
        }
        let size = key(true, 1).len() + value(true, "item", 1).len();
        assert!((2_500..4_500).contains(&size), "a wrapped item entry is about 3.3 KB, as Debezium's: {size}");
    }
}
