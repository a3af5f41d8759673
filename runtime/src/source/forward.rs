//! `evercache capture --to redis-stream`: captured changes written as Debezium
//! Server's Redis sink writes them (compact layout, one stream per table named
//! `<prefix>.<schema>.<table>`), so any Debezium consumer, including another
//! evercache, can read them.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceError, SourceRecord};

/// Writes records to Redis Streams.
pub struct DebeziumStreamWriter {
    conn: ConnectionManager,
    schemas: bool,
}

impl DebeziumStreamWriter {
    /// Connects to `url`. With `schemas`, keys and values are wrapped as
    /// JsonConverter's `schemas.enable=true` does (`{"schema":…,"payload":…}`;
    /// the schema names the envelope but does not describe the columns).
    pub async fn connect(url: &str, schemas: bool) -> Result<Self, redis::RedisError> {
        let conn = ConnectionManager::new(redis::Client::open(url)?).await?;
        Ok(Self { conn, schemas })
    }

    /// XADDs every record in one round trip.
    pub async fn write(&mut self, records: &[SourceRecord]) -> Result<(), redis::RedisError> {
        let mut pipe = redis::pipe();
        for record in records {
            for (key, value) in record.fields().iter() {
                // Debezium Server writes a null key (truncates, key-less tables) as "default".
                if key == "null" {
                    let value =
                        if self.schemas { wrap(value, &format!("{}.Envelope", record.stream)) } else { value.clone() };
                    pipe.cmd("XADD").arg(&record.stream).arg("*").arg("default").arg(value).ignore();
                    continue;
                }
                let (key, value) = if self.schemas {
                    (wrap(key, &format!("{}.Key", record.stream)), wrap(value, &format!("{}.Envelope", record.stream)))
                } else {
                    (key.clone(), value.clone())
                };
                pipe.cmd("XADD").arg(&record.stream).arg("*").arg(key).arg(value).ignore();
            }
        }
        pipe.query_async::<()>(&mut self.conn).await
    }
}

fn wrap(payload: &str, name: &str) -> String {
    format!(
        r#"{{"schema":{{"type":"struct","optional":false,"name":{}}},"payload":{payload}}}"#,
        serde_json::json!(name)
    )
}

/// Streams changes from a built-in `capture` (Postgres or MySQL) into Redis
/// until `shutdown`, confirming its position only after each batch's XADDs
/// succeeded. A capture that fails (the
/// database restarting, its connection lost) is retried with backoff: it
/// reconnects and resumes from the confirmed position. Returns how many
/// changes were written.
pub async fn forward(capture: &mut Source, writer: &mut DebeziumStreamWriter, shutdown: &CancellationToken) -> u64 {
    let mut written = 0u64;
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = capture.next_batch() => batch,
        };
        let records = match batch {
            Ok(records) => {
                failures = 0;
                records
            }
            // The capture waited on the batch itself and holds it: read again at once.
            Err(e @ SourceError::NotVisible { .. }) => {
                tracing::warn!(source = %capture.name(), error = %e, "batch held until its transactions are visible");
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(source = %capture.name(), error = %e, "capture failed; retrying");
                let delay = Duration::from_millis(500).saturating_mul(1 << failures.min(4)).min(Duration::from_secs(5));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        loop {
            match writer.write(&records).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(source = %capture.name(), error = %e, "cannot write to Redis; retrying, nothing confirmed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return written,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        loop {
            match capture.ack(&records).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(source = %capture.name(), error = %e, "cannot confirm the position; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return written,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        written += records.len() as u64;
    }
    capture.close().await;
    written
}
