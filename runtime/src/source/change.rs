//! A change as a built-in capture decoded it: the event the pipeline needs,
//! plus what Debezium's envelope carries besides, so the same change can be
//! rendered as the JSON the Postgres or MySQL connector emits (for `evercache
//! capture` and dead letters) without the pipeline parsing it back.

use serde_json::json;

use crate::contract::{ChangeEvent, Op};

/// A captured change, ready for the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedChange {
    /// The event plugins receive.
    pub event: ChangeEvent,
    /// The database name (`source.db`).
    pub database: String,
    /// Where in the database's log it was read.
    pub origin: Origin,
    /// When it was captured (the envelope's `ts_ms`).
    pub captured_at_ms: u64,
    /// Where a snapshot read stands in its snapshot; `None` for a streamed change.
    pub snapshot: Option<SnapshotMark>,
}

/// Debezium's `source.snapshot` of a snapshot read: the first and last
/// records of the snapshot and of each table are marked, the rest are `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMark {
    /// The first record of the snapshot's first table.
    First,
    /// The first record of a later table.
    FirstInDataCollection,
    /// Any other record.
    True,
    /// The last record of a table other than the snapshot's last.
    LastInDataCollection,
    /// The snapshot's very last record.
    Last,
}

impl SnapshotMark {
    /// The text Debezium writes.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMark::First => "first",
            SnapshotMark::FirstInDataCollection => "first_in_data_collection",
            SnapshotMark::True => "true",
            SnapshotMark::LastInDataCollection => "last_in_data_collection",
            SnapshotMark::Last => "last",
        }
    }
}

/// Where a change was read, in the terms of the database's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// Postgres' WAL.
    Postgres {
        /// The transaction id (`source.txId`).
        xid: u32,
        /// The commit LSN of its transaction.
        commit_lsn: u64,
        /// Its own LSN.
        lsn: u64,
        /// The server's timeline, rendered as `source.timeline` (not a
        /// Debezium field) so a pipeline reading forwarded changes ranks them
        /// as the capture does across a promotion.
        timeline: u32,
    },
    /// A MySQL or MariaDB binlog.
    MySql {
        /// The server that wrote the binlog (`source.server_id`).
        server_id: u32,
        /// The binlog file (`source.file`).
        file: String,
        /// Where its rows event starts in the file (`source.pos`).
        pos: u64,
        /// Its row within the rows event (`source.row`).
        row: u32,
        /// Its transaction's GTID, when the server has them (`source.gtid`).
        gtid: Option<String>,
        /// The server is MariaDB, whose Debezium connector names itself `mariadb`.
        mariadb: bool,
    },
}

impl CapturedChange {
    /// The Redis sink's compact layout: one field, named by the key JSON
    /// (`null` for a key-less change), holding the envelope JSON.
    pub fn debezium_fields(&self) -> Vec<(String, String)> {
        vec![(self.event.key.clone(), self.envelope())]
    }

    /// The Debezium envelope (`schemas.enable=false`).
    pub fn envelope(&self) -> String {
        let event = &self.event;
        let version = concat!("evercache-", env!("CARGO_PKG_VERSION"));
        let snapshot = self.snapshot.map_or("false", SnapshotMark::as_str);
        let source = match &self.origin {
            Origin::Postgres { xid, commit_lsn, lsn, timeline } => json!({
                "version": version,
                "connector": "postgresql",
                "name": event.source,
                "ts_ms": event.committed_at_ms,
                "snapshot": snapshot,
                "db": self.database,
                "sequence": format!("[\"{commit_lsn}\",\"{lsn}\"]"),
                "schema": event.schema,
                "table": event.table,
                "txId": xid,
                "lsn": lsn,
                "timeline": timeline,
            }),
            Origin::MySql { server_id, file, pos, row, gtid, mariadb } => json!({
                "version": version,
                "connector": if *mariadb { "mariadb" } else { "mysql" },
                "name": event.source,
                "ts_ms": event.committed_at_ms,
                "snapshot": snapshot,
                "db": self.database,
                "sequence": null,
                "table": event.table,
                "server_id": server_id,
                "gtid": gtid,
                "file": file,
                "pos": pos,
                "row": row,
                "thread": null,
                "query": null,
            }),
        };
        format!(
            r#"{{"before":{},"after":{},"source":{source},"op":"{}","ts_ms":{},"transaction":null}}"#,
            event.before.as_deref().unwrap_or("null"),
            event.after.as_deref().unwrap_or("null"),
            op_code(event.op),
            self.captured_at_ms
        )
    }

    /// What it costs in memory, roughly: its text.
    pub fn bytes(&self) -> usize {
        let event = &self.event;
        event.key.len()
            + event.before.as_ref().map_or(0, String::len)
            + event.after.as_ref().map_or(0, String::len)
            + event.table.len()
            + event.position.len()
    }
}

/// Debezium's `op` letter.
pub fn op_code(op: Op) -> char {
    match op {
        Op::Create => 'c',
        Op::Update => 'u',
        Op::Delete => 'd',
        Op::SnapshotRead => 'r',
        Op::Truncate => 't',
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::debezium::{Decoded, decode_stream_entry};
    use crate::event::position;

    fn captured(op: Op, key: &str, before: Option<&str>, after: Option<&str>) -> CapturedChange {
        CapturedChange {
            event: ChangeEvent {
                op,
                source: "shop".into(),
                schema: Some("public".into()),
                table: "product".into(),
                key: key.into(),
                before: before.map(str::to_owned),
                after: after.map(str::to_owned),
                position: position::postgres_on_timeline(1, 4096, 4000),
                committed_at_ms: 1_700_000_000_123,
            },
            database: "shop".into(),
            origin: Origin::Postgres { xid: 771, commit_lsn: 4096, lsn: 4000, timeline: 1 },
            captured_at_ms: 1_700_000_000_200,
            snapshot: None,
        }
    }

    fn source_of(change: &CapturedChange) -> serde_json::Value {
        let envelope: serde_json::Value = serde_json::from_str(&change.envelope()).expect("the envelope is JSON");
        envelope["source"].clone()
    }

    #[test]
    fn a_postgres_change_forwarded_keeps_its_timeline_in_its_rank() {
        let change = captured(Op::Update, r#"{"id":1}"#, Some(r#"{"id":1}"#), Some(r#"{"id":1,"n":"2.50"}"#));
        assert_eq!(source_of(&change)["timeline"], 1);
        let fields = change.debezium_fields();
        let Ok(Decoded::Change(decoded)) = decode_stream_entry("shop.public.product", &fields) else {
            panic!("not a change: {fields:?}")
        };
        assert_eq!(decoded.position, position::postgres_on_timeline(1, 4096, 4000));
    }

    #[test]
    fn a_binlog_change_rendered_as_debezium_mysql_or_mariadb_decodes_to_the_same_event() {
        for (mariadb, connector) in [(true, "mariadb"), (false, "mysql")] {
            let mut change = captured(Op::Update, r#"{"id":1}"#, Some(r#"{"id":1}"#), Some(r#"{"id":1,"n":"2.50"}"#));
            change.event.position = position::mariadb(77, 1041, 2);
            change.event.schema = Some("shop".into());
            change.origin = Origin::MySql {
                server_id: 1,
                file: "mariadb-bin.000003".into(),
                pos: 1041,
                row: 2,
                gtid: Some("0-1-77".into()),
                mariadb,
            };
            assert_eq!(source_of(&change)["connector"], connector);
            let fields = change.debezium_fields();
            let Ok(Decoded::Change(decoded)) = decode_stream_entry("shop.shop.product", &fields) else {
                panic!("not a change: {fields:?}")
            };
            assert_eq!(decoded, change.event, "{fields:?}");
        }
    }

    #[test]
    fn source_snapshot_is_the_mark_of_a_snapshot_read_and_false_for_a_streamed_change() {
        let streamed = captured(Op::Create, r#"{"id":1}"#, None, Some(r#"{"id":1}"#));
        assert_eq!(source_of(&streamed)["snapshot"], "false");
        for (mark, text) in [
            (SnapshotMark::First, "first"),
            (SnapshotMark::FirstInDataCollection, "first_in_data_collection"),
            (SnapshotMark::True, "true"),
            (SnapshotMark::LastInDataCollection, "last_in_data_collection"),
            (SnapshotMark::Last, "last"),
        ] {
            let mut read = captured(Op::SnapshotRead, r#"{"id":1}"#, None, Some(r#"{"id":1}"#));
            read.snapshot = Some(mark);
            assert_eq!(source_of(&read)["snapshot"], text);
            let Ok(Decoded::Change(decoded)) = decode_stream_entry("shop.public.product", &read.debezium_fields())
            else {
                panic!("not a change")
            };
            assert_eq!(decoded, read.event);
        }
    }

    #[test]
    fn rendered_as_debezium_it_decodes_to_the_same_event() {
        for change in [
            captured(Op::Create, r#"{"id":1}"#, None, Some(r#"{"id":1,"name":"a \"b\"","price":"9.90"}"#)),
            captured(Op::Update, r#"{"id":1}"#, Some(r#"{"id":1}"#), Some(r#"{"id":1,"name":null}"#)),
            captured(Op::Delete, r#"{"id":1}"#, Some(r#"{"id":1,"name":"x"}"#), None),
            CapturedChange {
                snapshot: Some(SnapshotMark::True),
                ..captured(Op::SnapshotRead, r#"{"id":2}"#, None, Some(r#"{"id":2}"#))
            },
            captured(Op::Truncate, "null", None, None),
        ] {
            let fields = change.debezium_fields();
            let Ok(Decoded::Change(decoded)) = decode_stream_entry("shop.public.product", &fields) else {
                panic!("not a change: {fields:?}")
            };
            assert_eq!(decoded, change.event, "{fields:?}");
        }
    }
}
