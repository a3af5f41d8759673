//! Redis Streams source: a consumer group over the configured streams, own
//! pending entries first, entries of dead consumers claimed with `XAUTOCLAIM`,
//! `XACK` only after the batch's cache writes succeeded.

mod acker;
mod config;
mod gaps;
mod reply;
mod trim;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::{Value, cmd};

use super::dead_letter::{DeadLetter, DeadLetterWriter};
use super::{RecordBody, SourceError, SourceRecord};
use crate::redis_conn::{RedisConn, key_slot};
pub use acker::StreamAcker;
pub use config::RedisStreamConfig;
use reply::{parse_autoclaim_reply, parse_pending_deliveries, parse_read_reply};

/// How often the streams are checked for entries deleted before the group read them.
const GAP_CHECK_EVERY: Duration = Duration::from_secs(30);

/// How long a read ahead blocks at most: entries gathered meanwhile wait for it.
const READ_MORE_BLOCK: Duration = Duration::from_millis(5);

/// A running Redis Streams consumer.
pub struct RedisStreamSource {
    name: String,
    config: RedisStreamConfig,
    consumer: String,
    /// Dedicated to blocking reads, so acks and dead letters never wait behind them.
    reader: RedisConn,
    commands: RedisConn,
    acker: StreamAcker,
    /// While re-reading the own pending entries list after a start: the last id
    /// read per stream, so a batch still in flight is not read twice.
    pending_cursor: Option<HashMap<String, String>>,
    /// `XAUTOCLAIM` cursor per stream, and when claiming is next due.
    claim_cursors: HashMap<String, String>,
    next_claim: Instant,
    next_trim: Instant,
    /// Gaps found and not yet taken by the runner, and when to look again.
    gaps: Vec<String>,
    /// Where to move the group past gaps taken, once they are recorded.
    moves: Vec<(String, (String, Option<u64>))>,
    next_gap_check: Instant,
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
        if self.cluster
            && let Some(other) =
                self.streams.iter().find(|s| key_slot(s.as_bytes()) != key_slot(self.streams[0].as_bytes()))
        {
            return Err(SourceError::BadConfig {
                source_name: name.to_owned(),
                message: format!(
                    "on a Redis Cluster one read covers all streams, so they must share a slot, but `{}` and `{other}` \
                     do not: give them one hash tag (e.g. Debezium's topic.prefix = \"{{shop}}\") or use one source per stream",
                    self.streams[0]
                ),
            });
        }
        let target = self.target();
        let reader =
            target.connect(self.block + Duration::from_secs(10)).await.map_err(|e| unavailable("connect", e))?;
        let mut commands = target.connect(Duration::from_secs(10)).await.map_err(|e| unavailable("connect", e))?;
        for stream in &self.streams {
            if create_group(&mut commands, stream, &self.group).await.map_err(|e| unavailable("XGROUP CREATE", e))? {
                tracing::info!(source = %name, %stream, group = %self.group, "consumer group created");
            }
        }
        let consumer = self.consumer.clone().unwrap_or_else(default_consumer);
        Ok(RedisStreamSource {
            name: name.to_owned(),
            config: self.clone(),
            consumer,
            reader,
            acker: StreamAcker::new(
                name,
                &self.group,
                &self.streams,
                commands.clone(),
                DeadLetterWriter::new(name, commands.clone(), &self.dead_letter_stream),
            ),
            commands,
            pending_cursor: Some(self.streams.iter().map(|s| (s.clone(), "0".to_owned())).collect()),
            claim_cursors: HashMap::new(),
            next_claim: Instant::now(),
            next_trim: Instant::now() + self.trim_interval,
            gaps: Vec::new(),
            moves: Vec::new(),
            // Checked before the first read.
            next_gap_check: Instant::now(),
        })
    }
}

/// Creates the group at the stream's start (and the stream, if missing);
/// false when it existed. A new group owes the cache everything in the stream.
async fn create_group(conn: &mut RedisConn, stream: &str, group: &str) -> Result<bool, redis::RedisError> {
    let created: Result<(), redis::RedisError> =
        cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").arg("MKSTREAM").query_async(conn).await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

fn default_consumer() -> String {
    let host = crate::host::name().unwrap_or_else(|| "local".to_owned());
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

    /// Most entries to gather into one batch while the previous one is applied.
    pub fn max_batch_entries(&self) -> usize {
        self.config.max_batch_entries.max(self.config.batch_size)
    }

    /// Most bytes of entries to gather into one batch.
    pub fn max_batch_bytes(&self) -> usize {
        self.config.max_batch_bytes.max(1)
    }

    /// Most entries one read returns per stream.
    pub fn read_size(&self) -> usize {
        self.config.batch_size
    }

    /// The consumer name used in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Reads the next batch: own pending entries first (left over from a crash),
    /// then entries claimed from dead consumers, then new ones, blocking up to
    /// `block`. An empty batch means nothing arrived.
    pub async fn next_batch(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        self.next_batch_blocking(self.config.block).await
    }

    /// A read ahead while a batch is gathered: blocks at most [`READ_MORE_BLOCK`]
    /// for new entries, so what was gathered is not held back by a quiet stream.
    pub async fn read_more(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        self.next_batch_blocking(self.config.block.min(READ_MORE_BLOCK)).await
    }

    async fn next_batch_blocking(&mut self, block: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        let records = match self.next_records(block).await {
            Ok(records) => records,
            Err(ReadError::GroupMissing) => {
                self.recreate_groups().await?;
                Vec::new()
            }
            Err(ReadError::Failed(e)) => {
                // A read whose reply was lost left entries pending on us that we
                // never saw: once Redis answers again, the own list is read anew.
                self.pending_cursor = Some(self.pending_start());
                return Err(e);
            }
        };
        self.acker.track(&records);
        Ok(records)
    }

    /// The group is gone (`XGROUP DESTROY`, or a Redis restart without
    /// persistence took the streams with it): create it again at the streams'
    /// start, so nothing still in a stream is skipped (what was applied before
    /// is applied again, harmlessly: the version guard keeps the newest).
    async fn recreate_groups(&mut self) -> Result<(), SourceError> {
        for stream in &self.config.streams {
            let created = create_group(&mut self.commands, stream, &self.config.group)
                .await
                .map_err(|e| self.unavailable("XGROUP CREATE", e))?;
            if created {
                let length: u64 = cmd("XLEN").arg(stream).query_async(&mut self.commands).await.unwrap_or(0);
                tracing::warn!(source = %self.name, %stream, group = %self.config.group, entries = length,
                    "consumer group was missing (destroyed, or Redis restarted without persistence); created it again at the stream's start");
                metrics::counter!(crate::metrics::GROUPS_RECREATED_TOTAL, "source" => self.name.clone(), "stream" => stream.clone())
                    .increment(1);
            }
        }
        self.pending_cursor = Some(self.pending_start());
        self.claim_cursors.clear();
        self.next_gap_check = Instant::now();
        Ok(())
    }

    /// Gaps found since the last call, each in a sentence.
    pub fn take_gaps(&mut self) -> Vec<String> {
        std::mem::take(&mut self.gaps)
    }

    /// The gaps taken are recorded for repair: the group is moved past them,
    /// so they are not found again (a failure is logged; the next check finds
    /// the gap again and it is repaired once more).
    pub async fn gaps_recorded(&mut self) {
        for (stream, to) in std::mem::take(&mut self.moves) {
            if let Err(e) = gaps::move_past(&mut self.commands, &stream, &self.config.group, &to).await {
                tracing::warn!(source = %self.name, %stream, error = %e, "moving the group past a gap failed");
            }
        }
    }

    async fn find_gaps(&mut self) -> Result<(), ReadError> {
        for stream in &self.config.streams {
            let found = gaps::find(&mut self.commands, stream, &self.config.group).await;
            if let Some(gap) = found.map_err(|e| self.read_error("XINFO STREAM", e))? {
                self.gaps.push(gap.to_string());
                if let Some(to) = gap.move_to {
                    self.moves.push((stream.clone(), to));
                }
            }
        }
        self.next_gap_check = Instant::now() + GAP_CHECK_EVERY;
        Ok(())
    }

    fn pending_start(&self) -> HashMap<String, String> {
        self.config.streams.iter().map(|s| (s.clone(), "0".to_owned())).collect()
    }

    async fn next_records(&mut self, block: Duration) -> Result<Vec<SourceRecord>, ReadError> {
        if Instant::now() >= self.next_gap_check {
            self.find_gaps().await?;
        }
        while let Some(mut cursor) = self.pending_cursor.take() {
            let ids: Vec<&str> = self.config.streams.iter().map(|s| cursor[s].as_str()).collect();
            let mut records = self.read(&ids, None).await?;
            if records.is_empty() {
                tracing::debug!(source = %self.name, "own pending entries drained");
                break;
            }
            for record in &records {
                cursor.insert(record.stream.clone(), record.id.clone());
            }
            let deleted: Vec<&SourceRecord> =
                records.iter().filter(|r| matches!(&r.body, RecordBody::Fields(f) if f.is_empty())).collect();
            if let (Some(first), Some(last)) = (deleted.first(), deleted.last()) {
                self.gaps.push(format!(
                    "stream '{}': {} entries delivered to this consumer ({} … {}) were deleted before they were applied",
                    first.stream,
                    deleted.len(),
                    first.id,
                    last.id
                ));
            }
            self.pending_cursor = Some(cursor);
            self.acker.untracked(&mut records);
            if !records.is_empty() {
                return self.without_exhausted(records).await;
            }
        }
        if Instant::now() >= self.next_claim {
            let mut claimed = self.claim().await?;
            // Our own entries still being processed are not orphans.
            self.acker.untracked(&mut claimed);
            if !claimed.is_empty() {
                tracing::info!(source = %self.name, entries = claimed.len(), "claimed entries idle on other consumers");
                return self.without_exhausted(claimed).await;
            }
            self.next_claim = Instant::now() + (self.config.claim_idle / 2).max(Duration::from_millis(100));
        }
        if self.config.trim_acked && Instant::now() >= self.next_trim {
            self.next_trim = Instant::now() + self.config.trim_interval;
            self.trim().await;
        }
        let new = vec![">"; self.config.streams.len()];
        self.read(&new, Some(block)).await
    }

    async fn read(&mut self, ids: &[&str], block: Option<Duration>) -> Result<Vec<SourceRecord>, ReadError> {
        let mut command = cmd("XREADGROUP");
        command.arg("GROUP").arg(&self.config.group).arg(&self.consumer).arg("COUNT").arg(self.config.batch_size);
        if let Some(block) = block {
            // BLOCK 0 would wait forever.
            command.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        command.arg("STREAMS").arg(&self.config.streams).arg(ids);
        let reply: Result<Value, _> = command.query_async(&mut self.reader).await;
        Ok(parse_read_reply(reply.map_err(|e| self.read_error("XREADGROUP", e))?))
    }

    /// Takes over entries idle longer than `claim_idle` on any consumer: their
    /// owner died or hangs. Only called between batches, so none is ours in flight.
    async fn claim(&mut self) -> Result<Vec<SourceRecord>, ReadError> {
        let mut claimed = Vec::new();
        for stream in &self.config.streams {
            let cursor = self.claim_cursors.get(stream).map_or("0-0", String::as_str);
            let reply: Result<Value, _> = cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.config.group)
                .arg(&self.consumer)
                .arg(self.config.claim_idle.as_millis() as u64)
                .arg(cursor)
                .arg("COUNT")
                .arg(self.config.batch_size)
                .query_async(&mut self.commands)
                .await;
            let reply = reply.map_err(|e| self.read_error("XAUTOCLAIM", e))?;
            let (next, records) = parse_autoclaim_reply(stream, reply);
            self.claim_cursors.insert(stream.clone(), next);
            claimed.extend(records);
        }
        Ok(claimed)
    }

    /// Dead-letters and acks redelivered entries whose delivery count passed
    /// `max_deliveries`; returns the rest.
    async fn without_exhausted(&mut self, records: Vec<SourceRecord>) -> Result<Vec<SourceRecord>, ReadError> {
        let mut deliveries = HashMap::new();
        for stream in &self.config.streams {
            let ids: Vec<&str> = records.iter().filter(|r| &r.stream == stream).map(|r| r.id.as_str()).collect();
            let (Some(first), Some(last)) =
                (ids.iter().min_by_key(|id| id_key(id)), ids.iter().max_by_key(|id| id_key(id)))
            else {
                continue;
            };
            let reply: Result<Value, _> = cmd("XPENDING")
                .arg(stream)
                .arg(&self.config.group)
                .arg(*first)
                .arg(*last)
                .arg(ids.len())
                .arg(&self.consumer)
                .query_async(&mut self.commands)
                .await;
            for (id, count) in parse_pending_deliveries(reply.map_err(|e| self.read_error("XPENDING", e))?) {
                deliveries.insert((stream.clone(), id), count);
            }
        }
        let limit = self.config.max_deliveries;
        let (exhausted, keep): (Vec<SourceRecord>, Vec<SourceRecord>) = records
            .into_iter()
            .partition(|r| deliveries.get(&(r.stream.clone(), r.id.clone())).is_some_and(|n| *n > limit));
        if !exhausted.is_empty() {
            let letters: Vec<DeadLetter> = exhausted
                .iter()
                .enumerate()
                .map(|(index, record)| {
                    let delivered = deliveries.get(&(record.stream.clone(), record.id.clone())).copied().unwrap_or(0);
                    tracing::error!(source = %self.name, stream = %record.stream, id = %record.id, delivered, "entry delivered too often without being acknowledged; dead-lettered");
                    DeadLetter {
                        record: index,
                        pipeline: None,
                        error: format!(
                            "delivered {delivered} times without being acknowledged (max_deliveries = {limit}); its consumers crashed or stalled on it"
                        ),
                        attempts: delivered as u32,
                    }
                })
                .collect();
            self.acker.dead_letter(&exhausted, &letters).await?;
            crate::metrics::dead_lettered(&self.name, &letters);
            self.ack(&exhausted).await?;
        }
        Ok(keep)
    }

    /// Best effort: a failed trim is logged and tried again at the next interval.
    async fn trim(&mut self) {
        for stream in &self.config.streams {
            match trim::trim_acknowledged(&mut self.commands, stream).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(source = %self.name, %stream, removed, "acknowledged entries trimmed"),
                Err(e) => {
                    tracing::warn!(source = %self.name, %stream, error = %e, "trimming acknowledged entries failed")
                }
            }
        }
    }

    /// Acknowledges records; call only after their cache writes succeeded.
    pub async fn ack(&mut self, records: &[SourceRecord]) -> Result<(), SourceError> {
        self.acker.ack(records).await
    }

    /// Appends records to their dead-letter streams with the reason; the caller
    /// acks them afterwards.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        self.acker.dead_letter(records, letters).await
    }

    /// Dead-letters and acknowledges this source's records from another task.
    pub fn acker(&self) -> &StreamAcker {
        &self.acker
    }

    fn unavailable(&self, operation: &'static str, e: redis::RedisError) -> SourceError {
        SourceError::Unavailable { source_name: self.name.clone(), operation, message: e.to_string() }
    }

    fn read_error(&self, operation: &'static str, e: redis::RedisError) -> ReadError {
        if e.code() == Some("NOGROUP") {
            ReadError::GroupMissing
        } else {
            ReadError::Failed(self.unavailable(operation, e))
        }
    }
}

/// Why a read failed: the group is gone, or something else went wrong.
enum ReadError {
    GroupMissing,
    Failed(SourceError),
}

impl From<SourceError> for ReadError {
    fn from(e: SourceError) -> Self {
        ReadError::Failed(e)
    }
}

/// An entry id as (milliseconds, sequence), as ids compare (not as text);
/// `None` when it is not one.
pub fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// [`entry_id`], with anything else first.
fn id_key(id: &str) -> (u64, u64) {
    entry_id(id).unwrap_or((0, 0))
}
