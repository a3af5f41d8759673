//! Redis Streams source: a consumer group over the configured streams, own
//! pending entries first, `XACK` only after the batch's cache writes succeeded.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Value, cmd};
use serde::Deserialize;

use super::dead_letter::{DeadLetter, DeadLetterWriter};
use super::{RawRecord, SourceError};

/// `[sources.<name>]` with `type = "redis-stream"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// Redis URL holding the streams, e.g. "redis://127.0.0.1:6379".
    pub url: String,
    /// Streams to consume, e.g. ["shop.public.product"] (Debezium: `<prefix>.<schema>.<table>`).
    pub streams: Vec<String>,
    /// Consumer group, created (with MKSTREAM) when missing, e.g. "evercache".
    #[serde(default = "default_group")]
    pub group: String,
    /// Consumer name within the group; keep it stable across restarts so own
    /// pending entries are re-read (default "evercache-<hostname>").
    #[serde(default)]
    pub consumer: Option<String>,
    /// Most entries read per stream and batch (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long one read blocks waiting for new entries (default "1s").
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// Where permanently failing records go; `{stream}` is replaced by the
    /// record's stream (default "{stream}:dlq").
    #[serde(default = "default_dead_letter_stream")]
    pub dead_letter_stream: String,
}

fn default_group() -> String {
    "evercache".to_owned()
}
fn default_batch_size() -> usize {
    500
}
fn default_block() -> Duration {
    Duration::from_secs(1)
}
fn default_dead_letter_stream() -> String {
    "{stream}:dlq".to_owned()
}

/// A running Redis Streams consumer.
pub struct RedisStreamSource {
    name: String,
    config: RedisStreamConfig,
    consumer: String,
    /// Dedicated to blocking reads, so acks and dead letters never wait behind them.
    reader: ConnectionManager,
    commands: ConnectionManager,
    dead_letters: DeadLetterWriter,
    /// True until the own pending entries list has been drained once.
    reading_pending: bool,
}

impl RedisStreamConfig {
    /// Connects, creates the consumer groups when missing and returns the source.
    pub async fn build(&self, name: &str) -> Result<RedisStreamSource, SourceError> {
        if self.streams.is_empty() {
            return Err(SourceError::BadConfig {
                source_name: name.to_owned(),
                message: "`streams` is empty".to_owned(),
            });
        }
        let unavailable = |operation, e: redis::RedisError| SourceError::Unavailable {
            source_name: name.to_owned(),
            operation,
            message: e.to_string(),
        };
        let client = redis::Client::open(self.url.as_str()).map_err(|e| SourceError::BadConfig {
            source_name: name.to_owned(),
            message: format!("invalid url: {e}"),
        })?;
        let read_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.block + Duration::from_secs(10)))
            .set_max_delay(Duration::from_secs(2));
        let reader = ConnectionManager::new_with_config(client.clone(), read_config)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let command_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_max_delay(Duration::from_secs(2));
        let mut commands =
            ConnectionManager::new_with_config(client, command_config).await.map_err(|e| unavailable("connect", e))?;
        for stream in &self.streams {
            // Start at 0: a new group owes the cache everything already in the stream.
            let created: Result<(), redis::RedisError> = cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut commands)
                .await;
            match created {
                Ok(()) => tracing::info!(source = %name, %stream, group = %self.group, "consumer group created"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(unavailable("XGROUP CREATE", e)),
            }
        }
        let consumer = self.consumer.clone().unwrap_or_else(default_consumer);
        Ok(RedisStreamSource {
            name: name.to_owned(),
            config: self.clone(),
            consumer,
            reader,
            dead_letters: DeadLetterWriter::new(name, commands.clone(), &self.dead_letter_stream),
            commands,
            reading_pending: true,
        })
    }
}

fn default_consumer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("evercache-{host}")
}

impl RedisStreamSource {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The streams this source reads.
    pub fn streams(&self) -> &[String] {
        &self.config.streams
    }

    /// The consumer name used in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Reads the next batch: own pending entries first (left over from a crash),
    /// then new ones, blocking up to `block`. An empty batch means nothing arrived.
    pub async fn next_batch(&mut self) -> Result<Vec<RawRecord>, SourceError> {
        if self.reading_pending {
            let records = self.read("0", false).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            self.reading_pending = false;
            tracing::debug!(source = %self.name, "own pending entries drained");
        }
        self.read(">", true).await
    }

    async fn read(&mut self, id: &str, block: bool) -> Result<Vec<RawRecord>, SourceError> {
        let mut command = cmd("XREADGROUP");
        command.arg("GROUP").arg(&self.config.group).arg(&self.consumer).arg("COUNT").arg(self.config.batch_size);
        if block {
            command.arg("BLOCK").arg(self.config.block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&self.config.streams);
        for _ in &self.config.streams {
            command.arg(id);
        }
        let reply: Value =
            command.query_async(&mut self.reader).await.map_err(|e| self.unavailable("XREADGROUP", e))?;
        Ok(parse_read_reply(reply))
    }

    /// Acknowledges records; call only after their cache writes succeeded.
    pub async fn ack(&mut self, records: &[RawRecord]) -> Result<(), SourceError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for stream in &self.config.streams {
            let ids: Vec<&str> = records.iter().filter(|r| &r.stream == stream).map(|r| r.id.as_str()).collect();
            if !ids.is_empty() {
                pipe.cmd("XACK").arg(stream).arg(&self.config.group).arg(ids).ignore();
            }
        }
        pipe.query_async::<()>(&mut self.commands).await.map_err(|e| self.unavailable("XACK", e))
    }

    /// Appends records to their dead-letter streams with the reason; the caller
    /// acks them afterwards.
    pub async fn dead_letter(&mut self, letters: &[DeadLetter<'_>]) -> Result<(), SourceError> {
        self.dead_letters.write(letters).await
    }

    fn unavailable(&self, operation: &'static str, e: redis::RedisError) -> SourceError {
        SourceError::Unavailable { source_name: self.name.clone(), operation, message: e.to_string() }
    }
}

/// Parses `XREADGROUP`'s RESP2 reply: `[[stream, [[id, [f, v, …]], …]], …]` or nil.
fn parse_read_reply(reply: Value) -> Vec<RawRecord> {
    let mut records = Vec::new();
    let Value::Array(streams) = reply else {
        return records;
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else { continue };
        if parts.len() != 2 {
            continue;
        }
        let entries = parts.pop();
        let name = text(parts.pop());
        let Some(Value::Array(entries)) = entries else { continue };
        for entry in entries {
            let Value::Array(mut entry) = entry else { continue };
            if entry.len() != 2 {
                continue;
            }
            let raw_fields = entry.pop();
            let id = text(entry.pop());
            // A pending entry deleted from the stream comes back with nil fields;
            // it is delivered with none so it gets acked like any skipped record.
            let mut fields = Vec::new();
            if let Some(Value::Array(values)) = raw_fields {
                let mut it = values.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    fields.push((text(Some(f)), text(Some(v))));
                }
            }
            records.push(RawRecord { stream: name.clone(), id, fields });
        }
    }
    records
}

fn text(value: Option<Value>) -> String {
    match value {
        Some(Value::BulkString(bytes)) => {
            String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
        Some(Value::SimpleString(s)) => s,
        Some(Value::VerbatimString { text, .. }) => text,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_in_field_order_and_deleted_pending_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("shop.public.product"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("key"), bulk("{}"), bulk("value"), bulk("default")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let records = parse_read_reply(reply);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].stream, "shop.public.product");
        assert_eq!(records[0].id, "1-0");
        assert_eq!(
            records[0].fields,
            vec![("key".to_owned(), "{}".to_owned()), ("value".to_owned(), "default".to_owned())]
        );
        assert!(records[1].fields.is_empty());
        assert!(parse_read_reply(Value::Nil).is_empty());
    }
}
