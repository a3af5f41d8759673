//! Built-in change capture from Postgres: logical replication with `pgoutput`,
//! no JVM or Kafka. Changes become Debezium-compatible records, so they take
//! the same path as Debezium's; the slot's confirmed position advances only to
//! the commit of the last transaction whose cache writes all succeeded. The
//! replication and snapshot connections are opened again when lost.

mod config;
mod failover;
mod pgoutput;
mod records;
mod session;
mod setup;
mod snapshot;
mod values;
mod visibility;

use crate::redis_conn::RedisConn;
use std::time::{Duration, Instant};

use pgwire_replication::{ReplicationConfig, ReplicationEvent};

use super::acker::CaptureAcker;
use super::confirmations::{Confirmations, RELEASE_AFTER, RELEASE_REASON};
use super::dead_letter::{DeadLetter, DeadLetterWriter};
use super::{SourceError, SourceRecord};
use crate::source::SnapshotMode;
pub use config::{PostgresCaptureConfig, Visibility};
use failover::{MarkerStore, Server, Start};
pub use pgoutput::{Decoder, RowChange};
use session::Session;
pub(crate) use snapshot::DESCRIBE_COLUMNS;
use snapshot::Snapshot;
pub(crate) use values::debezium_value;
use visibility::{HeldBatch, Hold, VisibilityGate};

/// Microseconds from the Unix epoch to Postgres' epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The transaction whose changes are streaming.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    commit_lsn: u64,
    xid: u32,
    committed_at_ms: i64,
    /// The timeline of the server it was read from, which ranks its positions.
    timeline: u32,
}

/// A running capture.
pub struct PostgresCapture {
    name: String,
    prefix: String,
    database: String,
    url: String,
    slot: String,
    tables: Vec<String>,
    snapshot_mode: SnapshotMode,
    session: Session,
    decoder: Decoder,
    transaction: Option<Transaction>,
    /// End of the last commit read into the batch being built.
    unconfirmed: Option<u64>,
    /// Positions of the batches handed out, confirmed as they are settled.
    confirmations: Confirmations<u64>,
    /// Committed transactions in the batch being built.
    batch_xids: Vec<u32>,
    visibility: VisibilityGate,
    /// A batch read whose transactions are not all visible yet; the next read
    /// resumes waiting on it before reading anything else.
    held: Option<HeldBatch>,
    batch_size: usize,
    max_batch_delay: Duration,
    dead_letters: DeadLetterWriter,
    /// The initial snapshot, or the re-read after a failover, while it runs.
    snapshot: Option<Snapshot>,
    /// The server whose failover is followed, while its re-read runs, and what `/ready` says meanwhile.
    following: Option<(Server, String)>,
    /// Whether the capture ran before, and whether a failover's re-read is owed.
    marker: MarkerStore,
}

impl PostgresCaptureConfig {
    /// Checks `wal_level`, creates the publication and slot when missing, warns
    /// about tables whose deletes would lack the key, and starts streaming from
    /// the slot's confirmed position. A slot missing where the capture ran
    /// before is a failover followed (`failover.rs`).
    pub async fn build(&self, name: &str) -> Result<PostgresCapture, SourceError> {
        let unavailable =
            |operation, message: String| SourceError::Unavailable { source_name: name.to_owned(), operation, message };
        let target = setup::Target::parse(self.url.expose())
            .map_err(|message| SourceError::BadConfig { source_name: name.to_owned(), message })?;
        let slot = setup::prepare(name, self).await?;
        let dead_letter_client = redis::Client::open(self.dead_letter_url.expose()).map_err(|e| {
            SourceError::BadConfig { source_name: name.to_owned(), message: format!("dead_letter_url: {e}") }
        })?;
        let redis_config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_max_delay(Duration::from_secs(2));
        let dead_letter_conn = redis::aio::ConnectionManager::new_with_config(dead_letter_client, redis_config)
            .await
            .map_err(|e| unavailable("connect dead-letter Redis", e.to_string()))?;
        let marker_key = format!("evercache:snapshot:{}:{}", target.database, self.slot);
        let mut marker = MarkerStore::new(marker_key, dead_letter_conn.clone());
        let start = failover::on_start(slot.is_none(), &marker.get(name).await?, self.snapshot);
        let lsn = match slot {
            Some(lsn) => lsn,
            None => {
                // Recorded before the slot exists, so a crash in between still re-reads the tables.
                if let Start::Follow { previous, .. } = &start {
                    marker.set(name, &failover::Marker::Following(previous.clone())).await?;
                }
                setup::create_slot(name, self).await?
            }
        };
        let config = ReplicationConfig::new(
            target.host.clone(),
            target.user.clone(),
            target.password.clone(),
            target.database.clone(),
            self.slot.clone(),
            self.publication.as_str(),
        )
        .with_port(target.port)
        .with_tls(target.tls.clone())
        .with_application_name(format!("evercache-{name}"))
        // Pin how values print so the text format decodes the same everywhere.
        .with_options("-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=3")
        .with_status_interval(Duration::from_secs(1));
        let visibility = VisibilityGate::new(name, self.url.expose(), self.visibility)?;
        let session = Session::open(name, &self.slot, config).await?;
        let mut capture = PostgresCapture {
            name: name.to_owned(),
            prefix: self.topic_prefix.clone().unwrap_or_else(|| target.database.clone()),
            database: target.database,
            url: self.url.expose().to_owned(),
            slot: self.slot.clone(),
            tables: self.tables.clone(),
            snapshot_mode: self.snapshot,
            session,
            decoder: Decoder::default(),
            transaction: None,
            unconfirmed: None,
            confirmations: Confirmations::default(),
            batch_xids: Vec::new(),
            visibility,
            held: None,
            batch_size: self.batch_size.max(1),
            max_batch_delay: self.max_batch_delay,
            dead_letters: DeadLetterWriter::new(name, RedisConn::Node(dead_letter_conn), &self.dead_letter_stream),
            snapshot: None,
            following: None,
            marker,
        };
        capture.begin(start, lsn).await?;
        tracing::info!(source = %name, slot = %self.slot, publication = %self.publication, "capture started");
        Ok(capture)
    }
}

impl PostgresCapture {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What keeps the capture from being ready while it works, e.g. following a failover.
    pub fn busy(&self) -> Option<&str> {
        self.following.as_ref().map(|(_, why)| why.as_str())
    }

    /// Reads the next batch of changes as Debezium-compatible records, waiting
    /// up to a second for the first. A batch may end inside a large
    /// transaction; the slot is then confirmed only up to the previous commit,
    /// and the rest of the transaction follows in later batches. A batch still
    /// not visible after [`crate::event::visibility::REPORT_AFTER`] gives
    /// [`SourceError::NotVisible`] and stays held: the next read resumes it.
    pub async fn next_batch(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        self.next_batch_within(Duration::from_secs(1), None).await
    }

    /// Like [`Self::next_batch`], waiting at most `max_batch_delay` for the
    /// first change: a read ahead while a batch is gathered, which must not
    /// hold back what was gathered when the database is quiet (a batch not
    /// visible by then is held for the next read, and this one returns nothing).
    pub async fn read_more(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        self.next_batch_within(self.max_batch_delay, Some(self.max_batch_delay)).await
    }

    /// A handle that settles handed-out batches from another task, making
    /// their positions confirmable in read order.
    pub fn acker(&self) -> CaptureAcker {
        CaptureAcker::new(&self.name, self.dead_letters.clone(), std::sync::Arc::new(self.confirmations.clone()))
    }

    /// Most changes per read.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    async fn next_batch_within(
        &mut self,
        first_wait: Duration,
        read_ahead: Option<Duration>,
    ) -> Result<Vec<SourceRecord>, SourceError> {
        // Nothing read after a held batch may overtake it, so it goes first.
        if self.held.is_some() {
            return self.hand_on(read_ahead).await;
        }
        // A batch handed out long ago is still not written (the database or a
        // plugin holds it up): reading ahead stops and the replication connection
        // is let go, so a server shutting down is not held by it; reading
        // resumes from the confirmed position once the batch is settled.
        if self.confirmations.overdue() {
            self.session.release(RELEASE_REASON);
            tokio::time::sleep(first_wait.min(Duration::from_millis(100))).await;
            return Ok(Vec::new());
        }
        if let Some(records) = self.snapshot_batch().await? {
            self.confirmations.handed_out(records.len(), None);
            return Ok(records);
        }
        let records = self.stream_batch(first_wait).await?;
        let xids = std::mem::take(&mut self.batch_xids);
        if records.is_empty() {
            self.confirmations.handed_out(0, self.unconfirmed.take());
            return Ok(records);
        }
        self.held = Some(HeldBatch::new(records, xids, self.unconfirmed.take()));
        self.hand_on(read_ahead).await
    }

    /// Waits on the held batch and hands it on once its transactions are
    /// visible; `read_ahead` bounds the wait of a read ahead, which then returns nothing.
    async fn hand_on(&mut self, read_ahead: Option<Duration>) -> Result<Vec<SourceRecord>, SourceError> {
        let Some(held) = self.held.as_mut() else { return Ok(Vec::new()) };
        let until = read_ahead.map(|wait| Instant::now() + wait);
        // What the acker settled meanwhile reaches the server while the batch is held.
        self.session.confirm(self.confirmations.confirmable().unwrap_or(0));
        match self.visibility.hold(held, until).await {
            Ok(Hold::Visible) => {
                let Some(held) = self.held.take() else { return Ok(Vec::new()) };
                self.confirmations.handed_out(held.records.len(), held.position);
                Ok(held.records)
            }
            Ok(Hold::Waiting) => Ok(Vec::new()),
            Ok(Hold::Report(e)) => Err(e),
            // A batch that cannot be checked cannot go on: it is dropped, the
            // connection let go (a server shutting down waits for it), and the
            // stream sends the batch again.
            Err(e) => {
                self.held = None;
                self.forget_stream();
                self.session.release("the transaction visibility check failed");
                Err(e)
            }
        }
    }

    async fn stream_batch(&mut self, first_wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        self.connect_stream().await?;
        if self.snapshot.is_some() {
            // A failover followed: its re-read goes first.
            return Ok(Vec::new());
        }
        let mut records = Vec::new();
        let mut deadline: Option<Instant> = None;
        let started = Instant::now();
        loop {
            // What the acker settled meanwhile reaches the server with the next status update.
            self.session.confirm(self.confirmations.confirmable().unwrap_or(0));
            let wait = match deadline {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => (started + first_wait).saturating_duration_since(Instant::now()),
            };
            let event = match self.session.recv(wait, &self.visibility).await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(records),
                Err(e) => {
                    // The server sends everything after the confirmed position again.
                    self.forget_stream();
                    return Err(e);
                }
            };
            match event {
                ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                    self.transaction = Some(Transaction {
                        commit_lsn: final_lsn.as_u64(),
                        xid,
                        committed_at_ms: (commit_time_micros + PG_EPOCH_MICROS) / 1000,
                        timeline: self.session.timeline(),
                    });
                }
                ReplicationEvent::XLogData { wal_start, data, .. } => {
                    let lsn = wal_start.as_u64();
                    match self.decoder.decode(&data) {
                        Ok(changes) => records.extend(changes.into_iter().map(|change| self.record(change, lsn))),
                        // Never skipped: dead-lettered with its position and bytes.
                        Err(e) => records.push(self.undecodable(&data, lsn, &e.to_string())),
                    }
                    if let Some(tx) = self.transaction
                        && self.batch_xids.last() != Some(&tx.xid)
                    {
                        self.batch_xids.push(tx.xid);
                    }
                    deadline.get_or_insert_with(|| Instant::now() + self.max_batch_delay);
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.transaction = None;
                    self.unconfirmed = Some(end_lsn.as_u64());
                    if records.is_empty() {
                        // A transaction with nothing for us: confirmable with the batches before it.
                        self.confirmations.handed_out(0, self.unconfirmed.take());
                    } else if records.len() >= self.batch_size {
                        return Ok(records);
                    } else {
                        // At a commit, take only what has already arrived: low
                        // latency when quiet, full batches under load.
                        deadline = Some(Instant::now());
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Idle and everything handed out is confirmed: let the slot move
                    // on so it does not hold WAL for other databases' traffic.
                    if records.is_empty() && self.transaction.is_none() && self.confirmations.all_settled() {
                        self.session.confirm(wal_end.as_u64());
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => {
                    self.forget_stream();
                    return Err(self.unavailable("replication stopped"));
                }
            }
            // A huge transaction is cut into batches instead of held in memory.
            if records.len() >= self.batch_size * 4 {
                return Ok(records);
            }
        }
    }

    /// The batch handed out has been applied for `waiting` without being
    /// settled: past [`RELEASE_AFTER`] the replication connection is let go, so
    /// a server shutting down or failing over is not held by it. Reading
    /// resumes from the slot's confirmed position.
    pub fn stalled(&mut self, waiting: Duration) {
        if waiting >= RELEASE_AFTER {
            self.session.release(RELEASE_REASON);
        }
    }

    /// The connection was lost mid-stream: what was gathered and not handed
    /// out is dropped (the server sends it again), and so is the state of the
    /// transaction in progress.
    fn forget_stream(&mut self) {
        self.decoder = Decoder::default();
        self.transaction = None;
        self.unconfirmed = None;
        self.batch_xids.clear();
    }

    /// Settles the next `records` handed out, in read order: call only after
    /// their cache writes succeeded.
    pub fn settled(&mut self, records: usize) {
        self.confirmations.settled(records);
        self.session.confirm(self.confirmations.confirmable().unwrap_or(0));
    }

    /// Appends dead letters to Redis.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        self.dead_letters.write(records, letters).await
    }

    /// Stops streaming, sending the last confirmed position.
    pub async fn shutdown(&mut self) {
        self.session.confirm(self.confirmations.confirmable().unwrap_or(0));
        self.session.shutdown().await;
    }

    fn unavailable(&self, message: &str) -> SourceError {
        SourceError::Unavailable {
            source_name: self.name.clone(),
            operation: "replication",
            message: message.to_owned(),
        }
    }
}
