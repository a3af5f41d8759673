//! `evercache resync --all`: every key a pipeline's tables give, found by
//! reading the tables page by page and asking the plugin's `keys` about each
//! row (as a snapshot does), then repaired like named keys.
//!
//! After each page the progress (table, cursor, totals) is saved in the
//! pipeline's cache, so an interrupted resync goes on from its last page when
//! run again. The stream keeps flowing meanwhile: a repair never replaces a
//! value that a change wrote after its key's write count was read.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::resync::{ResyncError, repair_chunk};
use super::resync_lease::ResyncLease;
use super::table_scan::{ScanCursor, ScanError, ScannedRow, TableScan};
use crate::clock::now_ms;
use crate::contract::{ChangeEvent, Op};
use crate::pipeline::{Pipeline, RepairError, RepairReport};
use crate::query::QueryRunner;
use crate::redis_conn::RedisConn;
use crate::sink::SinkError;

/// How long a failing database, cache or plugin call is retried before the
/// resync stops (its progress saved).
const RETRY_FOR: Duration = Duration::from_secs(120);

/// Keys remembered as done, so a key many rows name is recomputed once per
/// run; past this many, keys may be recomputed again (harmless, only slower).
const MAX_REMEMBERED_KEYS: usize = 1_000_000;

/// The Redis key holding a pipeline's resync progress.
pub fn progress_key(pipeline: &str) -> String {
    format!("evercache:resync:{pipeline}")
}

/// How `--all` runs.
#[derive(Debug, Clone, Copy)]
pub struct ResyncAllOptions {
    /// Rows read per page (and progress saved per page).
    pub page_size: usize,
    /// Start over even if an earlier run's progress is saved.
    pub restart: bool,
}

/// Where a resync is and what it did so far; saved after every page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResyncProgress {
    /// The pipeline's tables when the resync started; other tables start over.
    pub tables: Vec<String>,
    /// Index into `tables` of the table being read (`tables.len()`: done).
    pub table: usize,
    /// Where that table's next page starts.
    pub cursor: ScanCursor,
    /// Rows read.
    pub rows: u64,
    /// Keys repaired (distinct within a run; a key named in pages before and
    /// after an interruption is repaired again).
    pub keys: u64,
    /// What the repairs wrote.
    pub stored: usize,
    /// Keys deleted because their rows are gone.
    pub deleted: usize,
    /// Keys left alone because a change wrote them during the resync.
    pub left_to_changes: usize,
    /// Keys the plugin said to keep as they are.
    pub kept: usize,
    /// Rows the plugin's `keys` failed on (logged with their key).
    pub failed_rows: u64,
    /// Keys whose `recompute` failed (logged with the plugin's message).
    pub failed_keys: u64,
    /// When the first run of this resync started.
    pub started_at_ms: u64,
    /// True when this run went on from a saved progress.
    #[serde(skip)]
    pub resumed: bool,
}

impl ResyncProgress {
    fn new(tables: Vec<String>) -> Self {
        Self {
            tables,
            table: 0,
            cursor: ScanCursor::Start,
            rows: 0,
            keys: 0,
            stored: 0,
            deleted: 0,
            left_to_changes: 0,
            kept: 0,
            failed_rows: 0,
            failed_keys: 0,
            started_at_ms: now_ms(),
            resumed: false,
        }
    }

    /// The table being read, if any is left.
    pub fn current_table(&self) -> Option<&str> {
        self.tables.get(self.table).map(String::as_str)
    }

    fn add(&mut self, report: &RepairReport) {
        self.stored += report.written.applied;
        self.deleted += report.written.deleted;
        self.left_to_changes += report.written.stale;
        self.kept += report.kept;
    }
}

/// Repairs every key of `pipeline`'s tables, resuming a saved run unless
/// `options.restart`; `progress` hears the totals after every page. Only one
/// run per pipeline at a time holds its lease; `stop` ends a run between
/// pages, its progress saved.
pub async fn resync_all(
    pipeline: &Pipeline,
    options: ResyncAllOptions,
    stop: &CancellationToken,
    progress: impl FnMut(&ResyncProgress),
) -> Result<ResyncProgress, ResyncError> {
    let database =
        pipeline.database().ok_or_else(|| ResyncError::NoDatabase { pipeline: pipeline.name().to_owned() })?;
    let key = progress_key(pipeline.name());
    let mut lease = ResyncLease::acquire(&pipeline.cache().connection(), pipeline.name(), &key).await?;
    match run(pipeline, &database, options, stop, &mut lease, progress).await {
        Ok(done) => {
            lease.finish(&key).await?;
            Ok(done)
        }
        Err(e) => {
            lease.release().await;
            Err(e)
        }
    }
}

async fn run(
    pipeline: &Pipeline,
    database: &QueryRunner,
    options: ResyncAllOptions,
    stop: &CancellationToken,
    lease: &mut ResyncLease,
    mut progress: impl FnMut(&ResyncProgress),
) -> Result<ResyncProgress, ResyncError> {
    let config = pipeline.config();
    let mut conn = pipeline.cache().connection();
    let key = progress_key(pipeline.name());
    let saved = if options.restart { None } else { load(&mut conn, &key).await? };
    let mut state = match saved {
        Some(mut saved) if saved.tables == config.tables => {
            saved.resumed = true;
            saved
        }
        Some(_) => {
            tracing::warn!(
                pipeline = pipeline.name(),
                "the pipeline's tables changed since the saved resync; starting over"
            );
            ResyncProgress::new(config.tables.clone())
        }
        None => ResyncProgress::new(config.tables.clone()),
    };
    let mut done_keys = HashSet::new();
    while let Some(table) = state.current_table().map(str::to_owned) {
        let mut retry = Retry::new();
        let scan = loop {
            match TableScan::describe(database, &table).await {
                Err(e @ ScanError::Database { .. }) if retry.again(e.to_string()).await => continue,
                other => break other?,
            }
        };
        if !scan.has_key() {
            tracing::warn!(pipeline = pipeline.name(), %table,
                "the table has no primary key; it is paged by row position, so rows moved meanwhile are left to their changes");
        }
        loop {
            if stop.is_cancelled() {
                return Err(ResyncError::Stopped);
            }
            lease.check()?;
            let mut retry = Retry::new();
            let page = loop {
                match scan.page(&state.cursor, options.page_size.max(1)).await {
                    Err(e @ ScanError::Database { .. }) if retry.again(e.to_string()).await => continue,
                    other => break other?,
                }
            };
            if page.rows.is_empty() {
                break;
            }
            let keys = keys_of_rows(pipeline, &config.source, &table, &page.rows, &mut state).await;
            let fresh: Vec<String> = keys
                .into_iter()
                .filter(|k| done_keys.len() >= MAX_REMEMBERED_KEYS || done_keys.insert(k.clone()))
                .collect();
            for chunk in fresh.chunks(config.recompute_batch.max(1)) {
                repair_isolating(pipeline, &mut conn, chunk, &mut state).await?;
            }
            state.rows += page.rows.len() as u64;
            state.keys += fresh.len() as u64;
            state.cursor = page.next;
            save(lease, &key, &state).await?;
            progress(&state);
        }
        state.table += 1;
        state.cursor = ScanCursor::Start;
        save(lease, &key, &state).await?;
    }
    Ok(state)
}

/// The keys the plugin names for `rows`, a failing row logged and counted.
async fn keys_of_rows(
    pipeline: &Pipeline,
    source: &str,
    table: &str,
    rows: &[ScannedRow],
    state: &mut ResyncProgress,
) -> Vec<String> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    let events: Vec<ChangeEvent> = rows
        .iter()
        .map(|row| ChangeEvent {
            op: Op::SnapshotRead,
            source: source.to_owned(),
            schema: Some(schema.to_owned()),
            table: name.to_owned(),
            key: row.key.to_string(),
            before: None,
            after: Some(row.image.to_string()),
            position: String::new(),
            committed_at_ms: now_ms(),
        })
        .collect();
    let mut keys = Vec::new();
    for (row, named) in rows.iter().zip(pipeline.keys_of(&events).await) {
        match named {
            Ok(named) => keys.extend(named),
            Err(e) => {
                state.failed_rows += 1;
                tracing::warn!(pipeline = pipeline.name(), %table, row = %row.key, error = %e,
                    "resync: the plugin's keys failed on a row; it is skipped");
            }
        }
    }
    keys
}

/// Repairs `keys`, retrying what looks transient; a plugin error splits the
/// keys in halves until it names the one key it fails on, which is counted.
async fn repair_isolating(
    pipeline: &Pipeline,
    conn: &mut RedisConn,
    keys: &[String],
    state: &mut ResyncProgress,
) -> Result<(), ResyncError> {
    let mut parts = vec![keys.to_vec()];
    while let Some(part) = parts.pop() {
        let mut retry = Retry::new();
        let result = loop {
            match repair_chunk(pipeline, conn, &part).await {
                Err(e) if transient(&e) && retry.again(e.to_string()).await => continue,
                other => break other,
            }
        };
        match result {
            Ok(report) => state.add(&report),
            Err(ResyncError::Repair(RepairError::Plugin { .. })) if part.len() > 1 => {
                let (left, right) = part.split_at(part.len() / 2);
                parts.push(right.to_vec());
                parts.push(left.to_vec());
            }
            Err(ResyncError::Repair(e @ RepairError::Plugin { .. })) => {
                state.failed_keys += 1;
                tracing::warn!(pipeline = pipeline.name(), key = %part[0], error = %e,
                    "resync: recomputing a key failed; it is left as it was");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn transient(e: &ResyncError) -> bool {
    match e {
        ResyncError::Meta { .. } | ResyncError::Progress { .. } => true,
        ResyncError::Repair(RepairError::Cache { .. }) => true,
        ResyncError::Repair(RepairError::Plugin { source, .. }) => source.is_transient(),
        _ => false,
    }
}

/// Backoff for one failing step, given up after [`RETRY_FOR`].
struct Retry {
    started: Instant,
    delay: Duration,
}

impl Retry {
    fn new() -> Self {
        Self { started: Instant::now(), delay: Duration::from_millis(100) }
    }

    /// Waits before the next attempt, or says to give up.
    async fn again(&mut self, error: String) -> bool {
        if self.started.elapsed() >= RETRY_FOR {
            return false;
        }
        tracing::warn!(%error, retry_in = ?self.delay, "resync: retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        true
    }
}

async fn load(conn: &mut RedisConn, key: &str) -> Result<Option<ResyncProgress>, ResyncError> {
    let text: Option<String> =
        conn.get(key).await.map_err(|e| ResyncError::Progress { key: key.to_owned(), source: SinkError::redis(e) })?;
    Ok(text.and_then(|text| match serde_json::from_str(&text) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!(%key, error = %e, "the saved resync progress is unreadable; starting over");
            None
        }
    }))
}

async fn save(lease: &mut ResyncLease, key: &str, state: &ResyncProgress) -> Result<(), ResyncError> {
    let text = serde_json::to_string(state).unwrap_or_default();
    let mut retry = Retry::new();
    loop {
        match lease.save(key, &text).await {
            Ok(()) => return lease.check(),
            Err(e) if retry.again(e.to_string()).await => {}
            Err(e) => return Err(ResyncError::Progress { key: key.to_owned(), source: SinkError::redis(e) }),
        }
    }
}
