//! Per-source lag probes: how far the consumer is behind, read from the source's
//! own servers (Redis `XINFO GROUPS`, Postgres `pg_replication_slots`, MySQL
//! `SHOW BINARY LOGS` against the stored position), so the
//! runtime and `evercache status` share them; a new source kind adds a variant.

use crate::secret::SecretUrl;
use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::{SourceConfig, SourceError};
use crate::redis_conn::{RedisConn, RedisTarget};

/// Longest a probe may take before the source counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How far one stream (or slot) of a source is behind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceLag {
    /// The stream, or `slot <name>` for a replication slot.
    pub stream: String,
    /// Entries not yet delivered to the consumer group.
    pub lag_entries: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending_entries: Option<u64>,
    /// WAL (or binlog) bytes the capture has not confirmed.
    pub lag_bytes: Option<u64>,
    /// Seconds since the last confirmed change was committed, while behind (MySQL capture).
    pub lag_seconds: Option<f64>,
    /// Entries in the stream's dead-letter stream(s).
    pub dead_letters: Option<u64>,
}

/// A probe of one configured source.
pub struct LagProbe {
    source: String,
    kind: ProbeKind,
    redis: Option<(RedisTarget, Option<RedisConn>)>,
    postgres: Option<PgConnection>,
}

enum ProbeKind {
    RedisStream {
        streams: Vec<String>,
        group: String,
        dead_letters: Vec<String>,
    },
    Postgres {
        url: SecretUrl,
        slot: String,
        dead_letters: Vec<String>,
    },
    MySql {
        url: SecretUrl,
        position_key: String,
        dead_letters: Vec<String>,
    },
    /// Consumer-group lag from the broker's committed offsets and watermarks.
    #[cfg(feature = "kafka")]
    Kafka(Box<super::KafkaConfig>),
}

impl LagProbe {
    /// A probe for `[sources.<name>]`; it connects on first use.
    pub fn new(name: &str, config: &SourceConfig) -> Result<Self, SourceError> {
        let bad = |message: String| SourceError::BadConfig { source_name: name.to_owned(), message };
        let (kind, redis_target) = match config {
            SourceConfig::RedisStream(c) => {
                let dead_letters = c.streams.iter().map(|s| c.dead_letter_stream.replace("{stream}", s)).collect();
                let kind = ProbeKind::RedisStream { streams: c.streams.clone(), group: c.group.clone(), dead_letters };
                (kind, c.target())
            }
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(c) => {
                let kind = ProbeKind::Kafka(Box::new(c.clone()));
                return Ok(Self { source: name.to_owned(), kind, redis: None, postgres: None });
            }
            SourceConfig::Postgres(c) => {
                let prefix = c.topic_prefix.clone().unwrap_or_else(|| database_name(c.url.expose()));
                let dead_letters = c
                    .tables
                    .iter()
                    .map(|t| c.dead_letter_stream.replace("{stream}", &format!("{prefix}.{t}")))
                    .collect();
                let kind = ProbeKind::Postgres { url: c.url.clone(), slot: c.slot.clone(), dead_letters };
                (kind, RedisTarget::new(&c.dead_letter_url, None, false))
            }
            SourceConfig::MySql(c) => {
                let dead_letters =
                    c.stream_names(name).iter().map(|s| c.dead_letter_stream.replace("{stream}", s)).collect();
                let kind = ProbeKind::MySql { url: c.url.clone(), position_key: c.position_key(name), dead_letters };
                (kind, RedisTarget::new(&c.dead_letter_url, None, false))
            }
        };
        crate::tls::redis_certificates(redis_target.tls.as_ref()).map_err(|e| bad(format!("redis: {e}")))?;
        Ok(Self { source: name.to_owned(), kind, redis: Some((redis_target, None)), postgres: None })
    }

    /// The `[sources.<name>]` name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Reads the lag now; an error means the source could not be reached.
    pub async fn probe(&mut self) -> Result<Vec<SourceLag>, SourceError> {
        let source = self.source.clone();
        let result = tokio::time::timeout(PROBE_TIMEOUT, self.probe_inner()).await.unwrap_or_else(|_| {
            Err(SourceError::Unavailable { source_name: source, operation: "probe", message: "timed out".to_owned() })
        });
        if result.is_err() {
            // Reconnect next time: the connection may be the broken part.
            self.postgres = None;
            if let Some((_, conn)) = &mut self.redis {
                *conn = None;
            }
        }
        result
    }

    async fn probe_inner(&mut self) -> Result<Vec<SourceLag>, SourceError> {
        #[cfg(feature = "kafka")]
        if let ProbeKind::Kafka(config) = &self.kind {
            let lags = super::kafka::lag::consumer_lag(config).await.map_err(|message| SourceError::Unavailable {
                source_name: self.source.clone(),
                operation: "Kafka consumer lag",
                message,
            })?;
            return Ok(lags
                .into_iter()
                .map(|(topic, lag)| SourceLag {
                    stream: topic,
                    lag_entries: Some(lag),
                    pending_entries: None,
                    lag_bytes: None,
                    lag_seconds: None,
                    dead_letters: None,
                })
                .collect());
        }
        let unavailable = |operation: &'static str, message: String| SourceError::Unavailable {
            source_name: self.source.clone(),
            operation,
            message,
        };
        let redis = match &mut self.redis {
            Some((target, conn @ None)) => {
                let connected =
                    target.connect(PROBE_TIMEOUT).await.map_err(|e| unavailable("connect", e.to_string()))?;
                conn.insert(connected).clone()
            }
            Some((_, Some(conn))) => conn.clone(),
            None => return Ok(Vec::new()),
        };
        match &self.kind {
            // Answered above, without Redis.
            #[cfg(feature = "kafka")]
            ProbeKind::Kafka(_) => Ok(Vec::new()),
            ProbeKind::RedisStream { streams, group, dead_letters } => {
                let mut lags = Vec::with_capacity(streams.len());
                for (stream, dlq) in streams.iter().zip(dead_letters) {
                    let mut conn = redis.clone();
                    let groups: Result<Vec<HashMap<String, redis::Value>>, _> =
                        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut conn).await;
                    let groups = match groups {
                        Ok(groups) => groups,
                        // A stream nobody wrote to yet has no groups and no lag.
                        Err(e) if e.code() == Some("ERR") && e.to_string().contains("no such key") => Vec::new(),
                        Err(e) => return Err(unavailable("XINFO GROUPS", e.to_string())),
                    };
                    let ours = groups.iter().find(|g| g.get("name").and_then(as_string).as_deref() == Some(group));
                    let xlen: u64 = redis::cmd("XLEN")
                        .arg(dlq)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| unavailable("XLEN", e.to_string()))?;
                    lags.push(SourceLag {
                        stream: stream.clone(),
                        lag_entries: ours.and_then(|g| g.get("lag")).and_then(as_u64),
                        pending_entries: Some(ours.and_then(|g| g.get("pending")).and_then(as_u64).unwrap_or(0)),
                        lag_bytes: None,
                        lag_seconds: None,
                        dead_letters: Some(xlen),
                    });
                }
                Ok(lags)
            }
            ProbeKind::Postgres { url, slot, dead_letters } => {
                let conn = match &mut self.postgres {
                    Some(conn) => conn,
                    None => {
                        // sqlx errors never carry the URL, so no password reaches the log.
                        let connected = PgConnection::connect(url.expose())
                            .await
                            .map_err(|e| unavailable("connect", e.to_string()))?;
                        self.postgres.insert(connected)
                    }
                };
                let lag: Option<Option<i64>> = sqlx::query_scalar(
                    "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
                     from pg_replication_slots where slot_name = $1",
                )
                .bind(slot)
                .fetch_optional(conn)
                .await
                .map_err(|e| unavailable("pg_replication_slots", e.to_string()))?;
                let total = dead_letter_total(&mut redis.clone(), dead_letters)
                    .await
                    .map_err(|e| unavailable("XLEN", e.to_string()))?;
                Ok(vec![SourceLag {
                    stream: format!("slot {slot}"),
                    lag_entries: None,
                    pending_entries: None,
                    lag_bytes: lag.flatten().map(|b| b.max(0) as u64),
                    lag_seconds: None,
                    dead_letters: Some(total),
                }])
            }
            ProbeKind::MySql { url, position_key, dead_letters } => {
                let mut conn = redis.clone();
                let stored: Option<String> = redis::cmd("GET")
                    .arg(position_key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| unavailable("GET", e.to_string()))?;
                let (bytes, seconds) = super::mysql::lag::binlog_lag(url.expose(), stored.as_deref())
                    .await
                    .map_err(|e| unavailable("SHOW BINARY LOGS", e))?;
                let total =
                    dead_letter_total(&mut conn, dead_letters).await.map_err(|e| unavailable("XLEN", e.to_string()))?;
                Ok(vec![SourceLag {
                    stream: "binlog".to_owned(),
                    lag_entries: None,
                    pending_entries: None,
                    lag_bytes: Some(bytes),
                    lag_seconds: Some(seconds),
                    dead_letters: Some(total),
                }])
            }
        }
    }
}

/// Entries in all of a source's dead-letter streams.
async fn dead_letter_total(redis: &mut RedisConn, streams: &[String]) -> redis::RedisResult<u64> {
    let mut total = 0;
    for stream in streams {
        total += redis::cmd("XLEN").arg(stream).query_async::<u64>(redis).await?;
    }
    Ok(total)
}

fn as_u64(value: &redis::Value) -> Option<u64> {
    match value {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

fn as_string(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The database name in a Postgres URL, the capture's default topic prefix.
fn database_name(url: &str) -> String {
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = path.split_once('/').map_or("", |(_, db)| db);
    path.split(['?', '#']).next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_from_url() {
        assert_eq!(super::database_name("postgres://u:p@h:5432/shop?sslmode=disable"), "shop");
        assert_eq!(super::database_name("postgres://h/test"), "test");
    }
}
