//! The dead-letter topic: records that failed for good, produced with their
//! original key, value and headers plus the reason in `__evercache.*` headers.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::record::{KEY_FIELD, VALUE_FIELD};
use crate::source::{DeadLetter, SourceError, SourceRecord};

/// How long a dead letter may wait in the producer's queue when it is full.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Produces dead letters to `<template with {topic} replaced>`.
pub struct DeadLetterProducer {
    source: String,
    producer: FutureProducer,
    template: String,
}

impl DeadLetterProducer {
    /// Produces through `producer`; `template` is e.g. "{topic}.dlq".
    pub fn new(source: &str, producer: FutureProducer, template: &str) -> Self {
        Self { source: source.to_owned(), producer, template: template.to_owned() }
    }

    /// The dead-letter topic for records of `topic`.
    pub fn topic_for(&self, topic: &str) -> String {
        self.template.replace("{topic}", topic)
    }

    /// Produces every letter and waits until the brokers acknowledged all of them.
    pub async fn write(&self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        let sends = letters.iter().map(|letter| async move {
            let record = &records[letter.record];
            let fields = record.fields();
            let field = |name: &str| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str());
            let attempts = letter.attempts.to_string();
            let mut headers = OwnedHeaders::new();
            for (name, value) in fields.iter().filter(|(f, _)| f != KEY_FIELD && f != VALUE_FIELD) {
                headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
            }
            for (name, value) in [
                ("__evercache.topic", record.stream.as_str()),
                ("__evercache.id", record.id.as_str()),
                ("__evercache.pipeline", letter.pipeline.as_deref().unwrap_or("")),
                ("__evercache.error", letter.error.as_str()),
                ("__evercache.attempts", attempts.as_str()),
            ] {
                headers = headers.insert(Header { key: name, value: Some(value) });
            }
            let topic = self.topic_for(&record.stream);
            let mut out: FutureRecord<'_, str, str> = FutureRecord::to(&topic).headers(headers);
            if let Some(key) = field(KEY_FIELD) {
                out = out.key(key);
            }
            if let Some(value) = field(VALUE_FIELD) {
                out = out.payload(value);
            }
            self.producer.send(out, QUEUE_TIMEOUT).await.map(|_| ()).map_err(|(e, _)| SourceError::Unavailable {
                source_name: self.source.clone(),
                operation: "produce dead letter",
                message: format!("{topic}: {e}"),
            })
        });
        try_join_all(sends).await.map(|_| ())
    }
}
