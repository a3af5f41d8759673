//! A captured row change on its way to a record, and what the capture reads
//! out of binlog events the parser leaves raw: rotate file names, MariaDB GTIDs
//! and the table a TRUNCATE statement names.

use mysql_async::binlog::events::Event;

use crate::contract::{ChangeEvent, Op};
use crate::source::{CapturedChange, Origin, RecordBody, SnapshotMark, SourceRecord};

/// One captured row change, before it becomes a record.
pub(super) struct Change<'a> {
    pub(super) prefix: &'a str,
    pub(super) table: &'a (String, String),
    pub(super) op: Op,
    pub(super) key: String,
    pub(super) before: Option<String>,
    pub(super) after: Option<String>,
    pub(super) position: String,
    pub(super) committed_at_ms: u64,
    pub(super) id: String,
    pub(super) origin: Origin,
}

impl Change<'_> {
    pub(super) fn into_record(self) -> SourceRecord {
        let (database, table) = self.table;
        let event = ChangeEvent {
            op: self.op,
            source: self.prefix.to_owned(),
            schema: Some(database.clone()),
            table: table.clone(),
            key: self.key,
            before: self.before,
            after: self.after,
            position: self.position,
            committed_at_ms: self.committed_at_ms,
        };
        SourceRecord {
            stream: format!("{}.{database}.{table}", self.prefix),
            id: self.id,
            body: RecordBody::Change(Box::new(CapturedChange {
                event,
                database: database.clone(),
                origin: self.origin,
                captured_at_ms: crate::clock::now_ms(),
                // The snapshot sets the real mark once the rows after it are read.
                snapshot: (self.op == Op::SnapshotRead).then_some(SnapshotMark::True),
            })),
        }
    }
}

/// A rotate event's file name without what may trail it: the rotate that opens
/// a stream comes before the format description, so the parser leaves its
/// checksum bytes on the name.
pub(super) fn binlog_file_name(raw: &str) -> String {
    match raw.rfind('.') {
        Some(dot) => {
            let digits = raw[dot + 1..].chars().take_while(char::is_ascii_digit).count();
            raw[..dot + 1 + digits].to_owned()
        }
        None => raw.to_owned(),
    }
}

/// `domain-server-seq` from MariaDB's GTID event (seq u64, domain u32, little-endian).
pub(super) fn mariadb_gtid(event: &Event) -> Option<String> {
    let data = event.data();
    let seq = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    Some(format!("{domain}-{}-{seq}", event.header().server_id()))
}

/// The table a `TRUNCATE [TABLE] [db.]name` statement empties, with `schema`
/// (the statement's default database) when it names none.
pub(super) fn truncated_table(statement: &str, schema: &str) -> Option<(String, String)> {
    let mut words = statement.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("truncate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("table") {
        name = words.next()?;
    }
    let name = name.trim_end_matches(';').replace('`', "");
    Some(match name.split_once('.') {
        Some((database, table)) => (database.to_owned(), table.to_owned()),
        None => (schema.to_owned(), name),
    })
}

#[cfg(test)]
mod tests {
    use super::{binlog_file_name, truncated_table};

    #[test]
    fn rotate_names_lose_trailing_checksum_bytes() {
        assert_eq!(binlog_file_name("mariadb-bin.000002|\u{fffd}y1"), "mariadb-bin.000002");
        assert_eq!(binlog_file_name("mysql-bin.000010"), "mysql-bin.000010");
    }

    #[test]
    fn truncate_statements_name_their_table() {
        let t = |db: &str, table: &str| Some((db.to_owned(), table.to_owned()));
        assert_eq!(truncated_table("TRUNCATE TABLE `shop`.`item`", "x"), t("shop", "item"));
        assert_eq!(truncated_table("truncate item", "shop"), t("shop", "item"));
        assert_eq!(truncated_table("ALTER TABLE item ADD c INT", "shop"), None);
    }
}
