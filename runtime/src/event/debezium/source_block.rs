//! The `source` block of a Debezium envelope: where the change happened, as a
//! comparable position and as what a visibility gate needs of its transaction.

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::position;
use crate::event::visibility::CommitMark;

/// The `source` block: where and when the change happened.
#[derive(Deserialize)]
pub(super) struct Source<'a> {
    #[serde(default, borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) connector: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) db: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) schema: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) table: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) ts_ms: Option<u64>,
    #[serde(default, borrow)]
    pub(super) sequence: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) lsn: Option<u64>,
    #[serde(default, borrow)]
    pub(super) file: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) pos: Option<u64>,
    #[serde(default)]
    pub(super) row: Option<u32>,
    #[serde(default, borrow)]
    pub(super) commit_lsn: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) change_lsn: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) event_serial_no: Option<u64>,
    #[serde(default, rename = "txId")]
    pub(super) tx_id: Option<u64>,
    #[serde(default)]
    pub(super) server_id: Option<u32>,
    #[serde(default, borrow)]
    pub(super) gtid: Option<Cow<'a, str>>,
    /// Not Debezium's: evercache's capture names the Postgres timeline.
    #[serde(default)]
    pub(super) timeline: Option<u32>,
}

impl Source<'_> {
    /// The transaction, as far as the block names it.
    pub(super) fn commit(&self) -> Option<CommitMark> {
        if let Some(xid) = self.tx_id
            && (self.connector.as_deref() == Some("postgresql") || self.lsn.is_some())
        {
            return Some(CommitMark::Postgres { xid, database: self.db.as_deref().unwrap_or_default().to_owned() });
        }
        let (Some(server_id), Some(file), Some(pos)) = (self.server_id, &self.file, self.pos) else { return None };
        Some(CommitMark::Binlog {
            server_id,
            file: file.to_string(),
            pos,
            gtid: self.gtid.as_deref().filter(|g| !g.is_empty()).map(str::to_owned),
        })
    }

    pub(super) fn position(&self) -> String {
        if let Some(position) = self.postgres_position() {
            return position;
        }
        if let (Some(gtid), Some(pos)) = (self.gtid.as_deref().and_then(position::parse_mariadb_gtid), self.pos) {
            return position::mariadb(gtid.seq, pos, self.row.unwrap_or(0));
        }
        if let (Some(file), Some(pos)) = (&self.file, self.pos)
            && let Some(number) = position::binlog_file_number(file)
        {
            return position::mysql(number, pos, self.row.unwrap_or(0));
        }
        if let (Some(commit), Some(change)) = (&self.commit_lsn, &self.change_lsn)
            && let Some(position) = position::sqlserver(commit, change, self.event_serial_no.unwrap_or(0))
        {
            return position;
        }
        String::new()
    }

    /// `sequence` is `["<lastCommitLsn>","<lsn>"]` as a string; either part may be null.
    fn postgres_position(&self) -> Option<String> {
        if self.connector.as_deref() != Some("postgresql") && self.sequence.is_none() {
            return None;
        }
        let (commit, lsn) = match self.sequence.as_deref().and_then(sequence_lsns) {
            Some([commit, lsn]) => (commit, lsn.or(self.lsn)),
            None => (None, self.lsn),
        };
        let lsn = lsn?;
        // Debezium's snapshot reads carry `[null, <LSN where the snapshot began>]`
        // and rank there, as the capture's do: a later snapshot repairs what an
        // earlier version missed. (A transaction open across the snapshot is
        // streamed after it with changes below that LSN; the guard never lets a
        // snapshot read's position become a key's change version, so they apply.)
        // Without a commit LSN a change's own LSN is the best order available.
        let commit = commit.unwrap_or(lsn);
        Some(match self.timeline {
            Some(timeline) => position::postgres_on_timeline(timeline, commit, lsn),
            None => position::postgres(commit, lsn),
        })
    }
}

/// `sequence`'s two LSNs; a part that is null or not a number is `None`, and
/// text that is not a pair of them is `None` altogether.
pub(super) fn sequence_lsns(text: &str) -> Option<[Option<u64>; 2]> {
    let lsn = |part: &str| match part.trim() {
        "null" => Some(None),
        part => part.strip_prefix('"')?.strip_suffix('"').map(|digits| digits.parse().ok()),
    };
    // Debezium writes plain digits; anything fancier (escapes) goes through serde.
    let plain = || {
        let (first, second) = text.trim().strip_prefix('[')?.strip_suffix(']')?.split_once(',')?;
        if text.contains('\\') || second.contains(',') {
            return None;
        }
        Some([lsn(first)?, lsn(second)?])
    };
    plain().or_else(|| {
        let parts: [Option<String>; 2] = serde_json::from_str(text).ok()?;
        Some(parts.map(|part| part.and_then(|p| p.parse().ok())))
    })
}

#[cfg(test)]
mod tests {
    use crate::event::debezium::{Decoded, decode_stream_entry_with_commit};
    use crate::event::visibility::CommitMark;
    use crate::event::{ChangeEvent, Op};

    /// Each change of a conformance fixture (real Debezium 3.6) with its commit mark.
    fn marks(name: &str) -> Vec<(ChangeEvent, Option<CommitMark>)> {
        let path = format!("{}/../tests/fixtures/debezium/conformance/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut out = Vec::new();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let topic = record["topic"].as_str().or(record["stream"].as_str()).unwrap();
            let (Some(key), Some(value)) = (record["key"].as_str(), record["value"].as_str()) else { continue };
            let fields = [(key.to_owned(), value.to_owned())];
            if let (Decoded::Change(event), mark) = decode_stream_entry_with_commit(topic, &fields).unwrap() {
                out.push((event, mark));
            }
        }
        out
    }

    #[test]
    fn postgres_changes_name_their_transaction_and_snapshot_reads_none() {
        let marks = marks("pg_debezium.jsonl");
        assert!(marks.len() >= 8, "three snapshot reads and five changes: {}", marks.len());
        for (event, mark) in &marks {
            match (event.op, mark) {
                (Op::SnapshotRead, None) => {}
                (_, Some(CommitMark::Postgres { xid, database })) => {
                    assert!(*xid > 0);
                    assert_eq!(database, "conformance");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn mariadb_changes_name_their_binlog_place_and_gtid() {
        let marks = marks("mariadb_debezium.jsonl");
        let streamed: Vec<_> = marks.iter().filter(|(e, _)| e.op != Op::SnapshotRead).collect();
        assert!(streamed.len() >= 6, "{}", streamed.len());
        for (_, mark) in streamed {
            let Some(CommitMark::Binlog { server_id, file, pos, gtid }) = mark else { panic!("{mark:?}") };
            assert_eq!(*server_id, 1);
            assert!(file.contains("bin.") && *pos > 0, "{file}:{pos}");
            assert!(gtid.as_deref().is_some_and(|g| g.starts_with("0-1-")), "{gtid:?}");
        }
        assert!(marks.iter().filter(|(e, _)| e.op == Op::SnapshotRead).all(|(_, mark)| mark.is_none()));
    }
}
