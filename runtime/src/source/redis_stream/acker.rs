//! Acknowledging a Redis Streams source's entries from any task, so the runner
//! settles one batch while the reader goes on with the next.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::redis_conn::RedisConn;

use super::id_key;
use crate::source::dead_letter::{DeadLetter, DeadLetterWriter};
use crate::source::{SourceError, SourceRecord};

/// A stream (by index into `streams`) and an entry id.
type EntryKey = (usize, (u64, u64));

/// Writes dead letters and acknowledges entries for one source; cheap to clone.
#[derive(Clone)]
pub struct StreamAcker {
    name: Arc<str>,
    group: Arc<str>,
    streams: Arc<[String]>,
    commands: RedisConn,
    dead_letters: DeadLetterWriter,
    /// Entries handed out and not yet acknowledged: never claimed back from ourselves.
    in_flight: Arc<Mutex<HashSet<EntryKey>>>,
}

impl StreamAcker {
    pub(super) fn new(
        name: &str,
        group: &str,
        streams: &[String],
        commands: RedisConn,
        dead_letters: DeadLetterWriter,
    ) -> Self {
        Self {
            name: Arc::from(name),
            group: Arc::from(group),
            streams: Arc::from(streams),
            commands,
            dead_letters,
            in_flight: Arc::default(),
        }
    }

    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records handed out to the runner.
    pub(super) fn track(&self, records: &[SourceRecord]) {
        let keys: Vec<EntryKey> = records.iter().map(|r| self.key(r)).collect();
        self.in_flight().extend(keys);
    }

    /// Keeps the records not handed out already.
    pub(super) fn untracked(&self, records: &mut Vec<SourceRecord>) {
        let in_flight = self.in_flight();
        records.retain(|r| !in_flight.contains(&self.key(r)));
    }

    /// Acknowledges records; call only after their cache writes succeeded.
    pub async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for stream in self.streams.iter() {
            let ids: Vec<&str> = records.iter().filter(|r| &r.stream == stream).map(|r| r.id.as_str()).collect();
            if !ids.is_empty() {
                pipe.cmd("XACK").arg(stream).arg(&*self.group).arg(ids).ignore();
            }
        }
        pipe.query_async::<()>(&mut self.commands).await.map_err(|e| SourceError::Unavailable {
            source_name: self.name.to_string(),
            operation: "XACK",
            message: e.to_string(),
        })?;
        let mut in_flight = self.in_flight();
        for record in records {
            in_flight.remove(&self.key(record));
        }
        Ok(())
    }

    /// Appends records to their dead-letter streams with the reason; the caller
    /// acks them afterwards.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        self.dead_letters.write(records, letters).await
    }

    /// Moves the group back so every entry from `since` on (per stream, ids
    /// as `(ms, seq)`) and every entry in flight is delivered again, for a
    /// cache that lost their writes: `XGROUP SETID` to just before the oldest,
    /// never forward (another consumer may have moved it back further). False
    /// when an entry to replay is gone from its stream (trimmed or deleted), so
    /// replaying cannot repair.
    pub async fn rewind(&mut self, since: &HashMap<String, (u64, u64)>) -> Result<bool, redis::RedisError> {
        let mut from: HashMap<String, (u64, u64)> = since.clone();
        for (stream, id) in self.in_flight().iter() {
            if let Some(name) = self.streams.get(*stream) {
                let oldest = from.entry(name.clone()).or_insert(*id);
                *oldest = (*oldest).min(*id);
            }
        }
        let mut moves = Vec::new();
        for (stream, oldest) in &from {
            let info: HashMap<String, redis::Value> =
                redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(&mut self.commands).await?;
            let first = super::gaps::first_entry(&info);
            let deleted = super::reply::text(info.get("max-deleted-entry-id").cloned());
            let trimmed = first.as_deref().is_none_or(|first| id_key(first) > *oldest);
            if trimmed || (!deleted.is_empty() && id_key(&deleted) >= *oldest) {
                return Ok(false);
            }
            let groups: Vec<HashMap<String, redis::Value>> =
                redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut self.commands).await?;
            let delivered = groups
                .iter()
                .find(|g| super::reply::text(g.get("name").cloned()) == *self.group)
                .map(|g| id_key(&super::reply::text(g.get("last-delivered-id").cloned())));
            let before = predecessor(*oldest);
            if delivered.is_some_and(|delivered| delivered > before) {
                moves.push((stream.clone(), format!("{}-{}", before.0, before.1)));
            }
        }
        for (stream, to) in moves {
            redis::cmd("XGROUP")
                .arg("SETID")
                .arg(&stream)
                .arg(&*self.group)
                .arg(&to)
                .query_async::<()>(&mut self.commands)
                .await?;
        }
        Ok(true)
    }

    /// A record's identity without allocating: its stream's index and its id.
    fn key(&self, record: &SourceRecord) -> EntryKey {
        let stream = self.streams.iter().position(|s| *s == record.stream).unwrap_or(usize::MAX);
        (stream, id_key(&record.id))
    }

    fn in_flight(&self) -> MutexGuard<'_, HashSet<EntryKey>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The id just before `id`.
fn predecessor((ms, seq): (u64, u64)) -> (u64, u64) {
    match (ms, seq) {
        (0, 0) => (0, 0),
        (ms, 0) => (ms - 1, u64::MAX),
        (ms, seq) => (ms, seq - 1),
    }
}
