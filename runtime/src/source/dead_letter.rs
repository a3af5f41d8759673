//! The dead-letter stream: records that failed for good, with the reason, so
//! they can be inspected (`evercache dlq list`) and re-injected after a fix
//! (`evercache dlq replay`).

use crate::redis_conn::{RedisConn, key_slot};
use serde::Serialize;

use super::{SourceError, SourceRecord};

/// A record given up on: by the decoder, a pipeline, or the source itself. It
/// names the record by its index in its batch; the writers take the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Index of the record in its batch.
    pub record: usize,
    /// The pipeline that gave up on it, if it got that far.
    pub pipeline: Option<String>,
    /// Why.
    pub error: String,
    /// How many attempts included it.
    pub attempts: u32,
}

/// Appends dead letters to `<template with {stream} replaced>` streams.
#[derive(Clone)]
pub struct DeadLetterWriter {
    source: String,
    conn: RedisConn,
    template: String,
}

impl DeadLetterWriter {
    /// Writes through `conn`; `template` is e.g. "{stream}:dlq".
    pub fn new(source: &str, conn: RedisConn, template: &str) -> Self {
        Self { source: source.to_owned(), conn, template: template.to_owned() }
    }

    /// The dead-letter stream for records of `stream`.
    pub fn stream_for(&self, stream: &str) -> String {
        self.template.replace("{stream}", stream)
    }

    /// Appends each record's original fields plus `__evercache.stream`, `.id`,
    /// `.pipeline`, `.error` and `.attempts`, in one round trip (per node, on a cluster).
    pub async fn write(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for letter in letters {
            let record = &records[letter.record];
            let original = record.fields();
            let mut fields: Vec<(&str, &str)> = original.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
            let attempts = letter.attempts.to_string();
            fields.push(("__evercache.stream", &record.stream));
            fields.push(("__evercache.id", &record.id));
            fields.push(("__evercache.pipeline", letter.pipeline.as_deref().unwrap_or("")));
            fields.push(("__evercache.error", &letter.error));
            fields.push(("__evercache.attempts", &attempts));
            pipe.xadd(self.stream_for(&record.stream), "*", &fields).ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await.map_err(|e| SourceError::Unavailable {
            source_name: self.source.clone(),
            operation: "XADD dead letter",
            message: e.to_string(),
        })
    }
}

/// Field names the writer adds to the original record's fields.
const META_PREFIX: &str = "__evercache.";

/// A dead letter as stored, split into the original record and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredDeadLetter {
    /// The dead-letter stream holding it.
    pub dlq: String,
    /// Its entry id in the dead-letter stream.
    pub id: String,
    /// The stream the record came from.
    pub stream: String,
    /// The record's entry id there.
    pub entry: String,
    /// The pipeline that gave up on it ("" when it could not be decoded).
    pub pipeline: String,
    /// Why.
    pub error: String,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// The record's original fields, in order.
    pub fields: Vec<(String, String)>,
}

/// Reads up to `count` dead letters of `dlq`, oldest first, after entry id
/// `after` (all when `None`).
pub async fn read_dead_letters(
    conn: &mut RedisConn,
    dlq: &str,
    after: Option<&str>,
    count: usize,
) -> redis::RedisResult<Vec<StoredDeadLetter>> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    // Pairs, not a map: the original fields are re-injected in their order.
    let reply: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(dlq).arg(&start).arg("+").arg("COUNT").arg(count).query_async(conn).await?;
    let mut letters = Vec::with_capacity(reply.len());
    for (id, pairs) in reply {
        let mut letter = StoredDeadLetter {
            dlq: dlq.to_owned(),
            id,
            stream: String::new(),
            entry: String::new(),
            pipeline: String::new(),
            error: String::new(),
            attempts: 0,
            fields: Vec::new(),
        };
        for (field, value) in pairs {
            match field.strip_prefix(META_PREFIX) {
                Some("stream") => letter.stream = value,
                Some("id") => letter.entry = value,
                Some("pipeline") => letter.pipeline = value,
                Some("error") => letter.error = value,
                Some("attempts") => letter.attempts = value.parse().unwrap_or(0),
                _ => letter.fields.push((field, value)),
            }
        }
        letters.push(letter);
    }
    Ok(letters)
}

/// Re-injects a dead letter into its original stream with its original fields
/// and removes it from the dead-letter stream, atomically. Returns the new entry id.
pub async fn replay_dead_letter(conn: &mut RedisConn, letter: &StoredDeadLetter) -> redis::RedisResult<String> {
    if conn.is_cluster() && key_slot(letter.stream.as_bytes()) != key_slot(letter.dlq.as_bytes()) {
        // No transaction spans two slots: re-inject first, so a failure in
        // between leaves a duplicate (harmless behind the version guard), never a loss.
        let new_id: String =
            redis::cmd("XADD").arg(&letter.stream).arg("*").arg(&letter.fields).query_async(conn).await?;
        redis::cmd("XDEL").arg(&letter.dlq).arg(&letter.id).query_async::<u64>(conn).await?;
        return Ok(new_id);
    }
    let (new_id, _removed): (String, u64) = redis::pipe()
        .atomic()
        .xadd(&letter.stream, "*", &letter.fields)
        .xdel(&letter.dlq, &[&letter.id])
        .query_async(conn)
        .await?;
    Ok(new_id)
}
