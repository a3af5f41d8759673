//! Built-in change capture from MySQL and MariaDB: the binlog read as a
//! replica reads it (row format, full images, column names from the table
//! maps), no JVM or Kafka. Changes become Debezium-compatible records, so they
//! take the same path as Debezium's; the resume position is stored in Redis
//! only once every change before it was written.

mod change;
mod config;
mod ddl;
mod debezium_json;
mod failover;
mod gtids;
mod held;
pub mod lag;
mod position;
mod query_values;
mod records;
mod schema;
mod session;
mod snapshot;
mod values;
mod visibility;

#[cfg(test)]
mod live_tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::binlog::events::EventData;

use super::acker::CaptureAcker;
use super::confirmations::{Confirmations, RELEASE_AFTER, RELEASE_REASON};
use super::dead_letter::{DeadLetter, DeadLetterWriter};
use super::{SourceError, SourceRecord};
use change::{mariadb_gtid, truncated_table};
pub use config::{MySqlCaptureConfig, Visibility};
use gtids::GtidPosition;
use held::Held;
use position::PositionStore;
pub use position::{BinlogPosition, StoredState};
pub(crate) use query_values::render_query_row;
use schema::{Catalogue, TableSchema};
use session::BinlogSession;
use snapshot::Snapshot;
use visibility::{Awaited, VisibilityGate};

/// MariaDB's GTID event, unknown to the binlog parser.
const MARIADB_GTID_EVENT: u8 = 162;

/// Most often the position of idle traffic (transactions on other tables) is stored.
const IDLE_STORE_EVERY: Duration = Duration::from_secs(1);

/// Most often an acknowledged position is stored while changes keep coming; a
/// crash reads at most this much again. Stored at once when the stream goes quiet.
const STORE_EVERY: Duration = Duration::from_millis(100);

/// The transaction whose events are streaming.
#[derive(Debug, Clone, Default)]
struct Transaction {
    gtid: Option<String>,
}

/// A running capture.
pub struct MySqlCapture {
    name: String,
    prefix: String,
    tables: HashSet<(String, String)>,
    session: BinlogSession,
    store: PositionStore,
    transaction: Option<Transaction>,
    /// The end of the last commit read into the batch being built.
    unconfirmed: Option<BinlogPosition>,
    /// Positions of the batches handed out, confirmed as they are settled.
    confirmations: Confirmations<BinlogPosition>,
    /// The newest position whose changes were all written.
    confirmed: BinlogPosition,
    /// MariaDB: the GTID position after the last commit read.
    gtids: Option<GtidPosition>,
    stored: BinlogPosition,
    stored_at: Instant,
    /// Checks that a batch is visible before it is handed on; `None` with `visibility = "off"`.
    visibility: Option<VisibilityGate>,
    /// A batch read and not yet visible, handed on before anything more is read.
    held: Option<Held>,
    batch_size: usize,
    max_batch_delay: Duration,
    dead_letters: DeadLetterWriter,
    /// The initial snapshot while it runs.
    snapshot: Option<Snapshot>,
    /// Commit time of the last event handed out, for the lag in seconds.
    last_commit_ms: u64,
    /// Column names for table maps that carry none.
    catalogue: Catalogue,
    /// The server is MariaDB (`source.connector`).
    mariadb: bool,
}

/// The catalogue's description of a rows event's table, when its table map
/// names no columns: `Err` when it does not match the table map.
type CatalogueSchema = Option<Result<Arc<TableSchema>, String>>;

impl MySqlCapture {
    /// The `[sources.<name>]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The newest position whose changes were all written.
    pub fn confirmed(&self) -> &BinlogPosition {
        &self.confirmed
    }

    /// Reads the next batch of changes as Debezium-compatible records: snapshot
    /// pages first (when one runs), then the binlog, waiting up to a second for
    /// a first change. A batch may end inside a large transaction; the
    /// position is then stored only up to the previous commit, and the rest of
    /// the transaction follows in later batches. A binlog batch is handed out
    /// only once its transactions are visible to new queries; one that is not
    /// after `REPORT_AFTER` is held and reported as `NotVisible`, and the next
    /// read waits on it again.
    pub async fn next_batch(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        self.next_batch_within(Duration::from_secs(1), false).await
    }

    /// Like [`Self::next_batch`], waiting at most `max_batch_delay` for a first
    /// change: a read ahead while a batch is gathered, which must not hold back
    /// what was gathered when the database is quiet.
    pub async fn read_more(&mut self) -> Result<Vec<SourceRecord>, SourceError> {
        self.next_batch_within(self.max_batch_delay, true).await
    }

    /// A handle that settles handed-out batches from another task, making
    /// their positions confirmable in read order.
    pub fn acker(&self) -> CaptureAcker {
        CaptureAcker::new(&self.name, self.dead_letters.clone(), Arc::new(self.confirmations.clone()))
    }

    /// Most changes per read.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    async fn stream_batch(
        &mut self,
        first_wait: Duration,
    ) -> Result<(Vec<SourceRecord>, Option<Awaited>), SourceError> {
        let mut records = Vec::new();
        // What makes every transaction this batch has a change of visible.
        let mut awaited = None;
        let mut deadline: Option<Instant> = None;
        // Heartbeats and other databases' traffic keep arriving on an idle
        // stream; an empty batch still ends after a second, and a batch takes
        // what is already buffered past its deadline for at most another one.
        let started = Instant::now();
        let idle_until = started + first_wait;
        loop {
            // What the acker settled meanwhile: the session, the catalogue and the stored position follow it.
            self.take_confirmable();
            self.store_due(STORE_EVERY).await;
            let until = deadline.unwrap_or(idle_until);
            if Instant::now() >= until + Duration::from_secs(1) {
                break;
            }
            let wait = until.saturating_duration_since(Instant::now());
            self.permit_follow();
            let event = match self.session.recv(wait).await {
                Ok(Some(event)) => {
                    if let Some(followed) = self.session.take_followed() {
                        self.followed(followed).await?;
                    }
                    event
                }
                Ok(None) => {
                    // Nothing buffered: a good moment to store what was acknowledged.
                    self.store_due(STORE_EVERY).await;
                    break;
                }
                Err(e) => {
                    // The server sends everything after the confirmed position again.
                    self.forget_stream();
                    return Err(e);
                }
            };
            let header = event.header();
            let end = u64::from(header.log_pos());
            if header.event_type_raw() == MARIADB_GTID_EVENT {
                self.transaction = Some(Transaction { gtid: mariadb_gtid(&event) });
                continue;
            }
            let data = match event.read_data() {
                Ok(Some(data)) => data,
                Ok(None) => continue,
                Err(e) => {
                    records.push(self.undecodable(&event, &format!("unreadable {:?} event: {e}", header.event_type())));
                    continue;
                }
            };
            let had = records.len();
            let committed = match data {
                EventData::GtidEvent(gtid) => {
                    let sid = gtid.sid().iter().map(|b| format!("{b:02x}")).collect::<String>();
                    let uuid =
                        format!("{}-{}-{}-{}-{}", &sid[..8], &sid[8..12], &sid[12..16], &sid[16..20], &sid[20..]);
                    self.transaction = Some(Transaction { gtid: Some(format!("{uuid}:{}", gtid.gno())) });
                    false
                }
                EventData::QueryEvent(query) => {
                    let text = query.query();
                    let statement = text.trim();
                    if statement.eq_ignore_ascii_case("BEGIN") {
                        self.transaction.get_or_insert_with(Transaction::default);
                        false
                    } else {
                        // COMMIT (non-transactional tables) or a DDL statement, which commits on its own.
                        let at =
                            BinlogPosition { file: self.session.file().to_owned(), pos: end, gtid: None, gtids: None };
                        self.catalogue.statement(statement, &query.schema(), at.ordinal());
                        if let Some(table) = truncated_table(statement, &query.schema())
                            && self.tables.contains(&table)
                        {
                            records.push(self.truncate_record(&event, table));
                        }
                        true
                    }
                }
                EventData::RowsEvent(rows) => {
                    let schema = match self.catalogue_schema(rows.table_id(), end).await {
                        Ok(schema) => schema,
                        Err(e) => {
                            self.forget_stream();
                            self.session.release("the catalogue could not be read");
                            return Err(e);
                        }
                    };
                    self.rows_records(&event, &rows, schema, &mut records);
                    false
                }
                EventData::XidEvent(_) => true,
                _ => false,
            };
            if records.len() > had {
                let gtid = self.transaction.as_ref().and_then(|t| t.gtid.clone());
                let at = BinlogPosition { file: self.session.file().to_owned(), pos: end, gtid, gtids: None };
                awaited = Some(Awaited::extend(awaited.take(), at));
            }
            if committed {
                let gtid = self.transaction.take().and_then(|t| t.gtid);
                let gtids = self.gtids.as_mut().map(|at| {
                    if let Some(gtid) = &gtid {
                        at.commit(gtid);
                    }
                    at.to_string()
                });
                let position = BinlogPosition { file: self.session.file().to_owned(), pos: end, gtid, gtids };
                self.last_commit_ms = u64::from(header.timestamp()) * 1000;
                if records.is_empty() {
                    // A transaction with nothing for us: confirmable with the batches before it.
                    self.confirmations.handed_out(0, Some(position));
                    self.take_confirmable();
                    self.store_due(IDLE_STORE_EVERY).await;
                    continue;
                }
                self.unconfirmed = Some(position);
                if records.len() >= self.batch_size {
                    break;
                }
                // At a commit, take only what has already arrived: low latency
                // when quiet, full batches under load.
                deadline = Some(Instant::now());
            } else if !records.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + self.max_batch_delay);
            }
            // A huge transaction is cut into batches instead of held in memory.
            if records.len() >= self.batch_size * 4 {
                break;
            }
        }
        Ok((records, awaited))
    }

    /// The next page of the initial snapshot, or `None` once it is done. Its
    /// completion is stored only after every page's batch was settled, so a
    /// crash repeats it.
    async fn snapshot_batch(&mut self) -> Result<Option<Vec<SourceRecord>>, SourceError> {
        let Some(snapshot) = &mut self.snapshot else { return Ok(None) };
        let page = snapshot.next_page(self.batch_size).await?;
        if !page.is_empty() {
            return Ok(Some(page));
        }
        if !self.confirmations.all_settled() {
            // Pages read ahead are not written yet: the snapshot is not done until they are.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(Some(Vec::new()));
        }
        let position = snapshot.position().await?;
        self.snapshot = None;
        self.confirmed = position.clone();
        self.store_now().await?;
        tracing::info!(source = %self.name, %position, "initial snapshot done; streaming the binlog");
        Ok(None)
    }

    /// The batch handed out has been applied for `waiting` without being
    /// settled: past [`RELEASE_AFTER`] the binlog connection is let go.
    pub fn stalled(&mut self, waiting: Duration) {
        if waiting >= RELEASE_AFTER {
            self.session.release(RELEASE_REASON);
        }
    }

    /// The connection was lost mid-stream: the transaction in progress and
    /// what was not handed out come again from the confirmed position.
    fn forget_stream(&mut self) {
        self.transaction = None;
        self.gtids = self.confirmed.gtids.as_deref().and_then(GtidPosition::parse);
        self.unconfirmed = None;
        self.catalogue.rewind();
    }

    /// Settles the next `records` handed out, in read order: call only after
    /// their cache writes succeeded.
    pub async fn settled(&mut self, records: usize) -> Result<(), SourceError> {
        self.confirmations.settled(records);
        if self.take_confirmable() && self.stored_at.elapsed() >= STORE_EVERY {
            self.store_now().await?;
        }
        Ok(())
    }

    /// Moves the confirmed position to the newest one settled; true when it moved.
    fn take_confirmable(&mut self) -> bool {
        match self.confirmations.confirmable() {
            Some(position) if position.ordinal() > self.confirmed.ordinal() => {
                self.session.confirm(&position);
                self.catalogue.confirm(position.ordinal());
                self.confirmed = position;
                true
            }
            _ => false,
        }
    }

    async fn store_now(&mut self) -> Result<(), SourceError> {
        let state = StoredState {
            position: self.confirmed.clone(),
            snapshot_done: self.snapshot.is_none(),
            committed_at_ms: self.last_commit_ms,
            tables: position::stored_tables(self.catalogue.confirmed()),
            server_id: Some(self.session.server_id()),
        };
        self.store.store(&state).await.map_err(|message| SourceError::Unavailable {
            source_name: self.name.clone(),
            operation: "store the binlog position",
            message,
        })?;
        self.stored = self.confirmed.clone();
        self.stored_at = Instant::now();
        Ok(())
    }

    /// Stores the confirmed position when it moved and `every` has passed
    /// since the last store: idle traffic moves it too, and storing it now and
    /// then keeps a restart from reading it all again.
    async fn store_due(&mut self, every: Duration) {
        if self.stored != self.confirmed
            && self.stored_at.elapsed() >= every
            && let Err(e) = self.store_now().await
        {
            tracing::debug!(source = %self.name, error = %e, "idle position not stored");
        }
    }

    /// Appends dead letters to Redis.
    pub async fn dead_letter(&mut self, records: &[SourceRecord], letters: &[DeadLetter]) -> Result<(), SourceError> {
        self.dead_letters.write(records, letters).await
    }

    /// Stores the last confirmed position and closes the connection.
    pub async fn shutdown(&mut self) {
        self.take_confirmable();
        if self.stored != self.confirmed
            && let Err(e) = self.store_now().await
        {
            tracing::warn!(source = %self.name, error = %e, "the last position was not stored");
        }
        self.session.shutdown().await;
    }

    /// Milliseconds between the commit of the last change handed out and now.
    pub fn last_commit_ms(&self) -> u64 {
        self.last_commit_ms
    }
}
