//! A record as a source hands it to the pipeline: the Debezium fields it was
//! written with (Redis Streams, Kafka), or a change the built-in capture
//! decoded itself, which is rendered as Debezium JSON only where a stream or a
//! dead letter needs it.

use std::borrow::Cow;

use super::change::CapturedChange;

/// One record of a source, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Stream (or topic) the record came from; Debezium names it `<prefix>.<schema>.<table>`.
    pub stream: String,
    /// The source's id for the record (a Redis Stream entry id; `<partition>:<offset>` for Kafka; an LSN for the capture).
    pub id: String,
    /// What it carries.
    pub body: RecordBody,
}

/// What a record carries.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordBody {
    /// Field/value pairs in the order they were written (Debezium JSON), decoded by the pipeline.
    Fields(Vec<(String, String)>),
    /// A change the built-in capture decoded itself.
    Change(Box<CapturedChange>),
}

impl SourceRecord {
    /// A record of field/value pairs.
    pub fn with_fields(stream: String, id: String, fields: Vec<(String, String)>) -> Self {
        Self { stream, id, body: RecordBody::Fields(fields) }
    }

    /// Its fields as a stream or topic carries them: as read, or a captured
    /// change rendered in Debezium Server's compact layout (key JSON, envelope JSON).
    pub fn fields(&self) -> Cow<'_, [(String, String)]> {
        match &self.body {
            RecordBody::Fields(fields) => Cow::Borrowed(fields),
            RecordBody::Change(change) => Cow::Owned(change.debezium_fields()),
        }
    }

    /// What it costs in memory, roughly: its text.
    pub fn bytes(&self) -> usize {
        let body = match &self.body {
            RecordBody::Fields(fields) => fields.iter().map(|(k, v)| k.len() + v.len()).sum(),
            RecordBody::Change(change) => change.bytes(),
        };
        self.stream.len() + self.id.len() + body
    }
}
