//! The dead-letter stream: records that failed for good, with the reason, so
//! they can be inspected and re-injected after a fix.

use redis::aio::ConnectionManager;

use super::{RawRecord, SourceError};

/// A record a pipeline (or the decoder) gave up on.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The record as it was read.
    pub record: &'a RawRecord,
    /// The pipeline that gave up on it, if it got that far.
    pub pipeline: Option<String>,
    /// Why.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
}

/// Appends dead letters to `<template with {stream} replaced>` streams.
#[derive(Clone)]
pub struct DeadLetterWriter {
    source: String,
    conn: ConnectionManager,
    template: String,
}

impl DeadLetterWriter {
    /// Writes through `conn`; `template` is e.g. "{stream}:dlq".
    pub fn new(source: &str, conn: ConnectionManager, template: &str) -> Self {
        Self { source: source.to_owned(), conn, template: template.to_owned() }
    }

    /// The dead-letter stream for records of `stream`.
    pub fn stream_for(&self, stream: &str) -> String {
        self.template.replace("{stream}", stream)
    }

    /// Appends each record's original fields plus `__evercache.stream`, `.id`,
    /// `.pipeline`, `.error` and `.attempts`, in one round trip.
    pub async fn write(&mut self, letters: &[DeadLetter<'_>]) -> Result<(), SourceError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for letter in letters {
            let mut fields: Vec<(&str, &str)> =
                letter.record.fields.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
            let attempts = letter.attempts.to_string();
            fields.push(("__evercache.stream", &letter.record.stream));
            fields.push(("__evercache.id", &letter.record.id));
            fields.push(("__evercache.pipeline", letter.pipeline.as_deref().unwrap_or("")));
            fields.push(("__evercache.error", &letter.error));
            fields.push(("__evercache.attempts", &attempts));
            pipe.xadd(self.stream_for(&letter.record.stream), "*", &fields).ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await.map_err(|e| SourceError::Unavailable {
            source_name: self.source.clone(),
            operation: "XADD dead letter",
            message: e.to_string(),
        })
    }
}
