//! Row changes decoded from pgoutput (or read by the snapshot) turned into
//! records, and the messages that cannot be decoded into dead-letter records.

use pgwire_replication::Lsn;
use serde_json::Value;

use super::{PostgresCapture, RowChange, Transaction};
use crate::contract::{ChangeEvent, Op};
use crate::event::position;
use crate::source::{CapturedChange, Origin, RecordBody, SnapshotMark, SourceRecord};

impl PostgresCapture {
    /// A change the decoder could not read, as a record the pipeline dead-letters.
    pub(super) fn undecodable(&self, data: &[u8], lsn: u64, error: &str) -> SourceRecord {
        let stream = match self.decoder.relation_of(data) {
            Some(relation) => format!("{}.{}.{}", self.prefix, relation.schema, relation.table),
            None => format!("{}.pgoutput", self.prefix),
        };
        let position = Lsn::from_u64(lsn).to_pg_string();
        tracing::error!(source = %self.name, %stream, lsn = %position, %error, "undecodable pgoutput message; dead-lettered");
        SourceRecord {
            stream,
            id: position.clone(),
            body: RecordBody::Fields(vec![
                (
                    crate::event::debezium::CAPTURE_ERROR_FIELD.to_owned(),
                    format!("pgoutput message at LSN {position} could not be decoded: {error}"),
                ),
                ("pgoutput".to_owned(), hex::encode(data)),
            ]),
        }
    }

    /// A streamed change, in the transaction being read.
    pub(super) fn record(&self, change: RowChange, lsn: u64) -> SourceRecord {
        let timeline = self.session.timeline();
        let tx = self.transaction.unwrap_or(Transaction { commit_lsn: lsn, xid: 0, committed_at_ms: 0, timeline });
        self.record_in(change, tx, lsn, None)
    }

    /// A change of transaction `tx` at `lsn`; `snapshot` marks a snapshot read.
    pub(super) fn record_in(
        &self,
        change: RowChange,
        tx: Transaction,
        lsn: u64,
        snapshot: Option<SnapshotMark>,
    ) -> SourceRecord {
        let op = match change.op {
            'c' => Op::Create,
            'd' => Op::Delete,
            'r' => Op::SnapshotRead,
            't' => Op::Truncate,
            _ => Op::Update,
        };
        let text = |image: Option<Value>| image.filter(|v| !v.is_null()).map(|v| v.to_string());
        let event = ChangeEvent {
            op,
            source: self.prefix.clone(),
            schema: Some(change.schema.clone()),
            table: change.table.clone(),
            key: change.key.to_string(),
            before: text(change.before),
            after: text(change.after),
            position: position::postgres_on_timeline(tx.timeline, tx.commit_lsn, lsn),
            committed_at_ms: tx.committed_at_ms.max(0) as u64,
        };
        let captured = CapturedChange {
            event,
            database: self.database.clone(),
            origin: Origin::Postgres { xid: tx.xid, commit_lsn: tx.commit_lsn, lsn, timeline: tx.timeline },
            captured_at_ms: crate::clock::now_ms(),
            snapshot,
        };
        SourceRecord {
            stream: format!("{}.{}.{}", self.prefix, change.schema, change.table),
            id: Lsn::from_u64(lsn).to_pg_string(),
            body: RecordBody::Change(Box::new(captured)),
        }
    }
}
