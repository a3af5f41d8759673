//! `evercache resync`: named keys recomputed and repaired in place, even where
//! the cached value is wrong at the current position, without ever replacing
//! a value that a change wrote after the resync read the key's metadata.

use std::collections::HashMap;
use std::time::Duration;

use super::table_scan::ScanError;
use crate::pipeline::{Pipeline, RepairError, RepairKey, RepairReport};
use crate::redis_conn::RedisConn;
use crate::sink::{KeyMeta, SinkError, meta_key};

/// Why a resync stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// Keys' metadata could not be read.
    #[error("reading the metadata of \"{key}\" (and the keys after it in its chunk): {source}")]
    Meta {
        /// The key.
        key: String,
        /// The Redis error.
        source: SinkError,
    },
    /// A recompute or write failed.
    #[error(transparent)]
    Repair(#[from] RepairError),
    /// `--all` needs the pipeline's database to read its tables from.
    #[error("pipeline '{pipeline}' has no database to read its tables from")]
    NoDatabase {
        /// The pipeline.
        pipeline: String,
    },
    /// A table could not be read.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The progress of `--all` could not be read or saved.
    #[error("the resync's progress in \"{key}\": {source}")]
    Progress {
        /// The Redis key holding it.
        key: String,
        /// The Redis error.
        source: SinkError,
    },
    /// Another `--all` of the pipeline holds its lease.
    #[error(
        "another `resync --all` of pipeline '{pipeline}' is running ({holder}); wait for it to finish, or, if it died, for its lease to expire in {}s",
        expires_in.as_secs_f64().ceil()
    )]
    Running {
        /// The pipeline.
        pipeline: String,
        /// Who holds the lease.
        holder: String,
        /// When the lease expires unless renewed.
        expires_in: Duration,
    },
    /// This run's lease lapsed (unrenewed for its whole lifetime) and another
    /// run took it.
    #[error(
        "another `resync --all` of pipeline '{pipeline}' took over the lease after this run left it unrenewed for {}s; this run stopped without saving more progress",
        ttl.as_secs()
    )]
    LeaseLost {
        /// The pipeline.
        pipeline: String,
        /// The lease's lifetime.
        ttl: Duration,
    },
    /// Asked to stop (a signal); the progress up to the last page is saved.
    #[error("stopped on request")]
    Stopped,
}

/// Repairs `keys` through `pipeline`, `recompute_batch` keys per plugin call;
/// `progress` hears the running totals after each call.
pub async fn resync_keys(
    pipeline: &Pipeline,
    keys: &[String],
    mut progress: impl FnMut(usize, &RepairReport),
) -> Result<RepairReport, ResyncError> {
    let mut conn = pipeline.cache().connection();
    let mut total = RepairReport::default();
    let mut done = 0;
    for chunk in keys.chunks(pipeline.config().recompute_batch.max(1)) {
        let report = repair_chunk(pipeline, &mut conn, chunk).await?;
        total.written.add(&report.written);
        total.kept += report.kept;
        done += chunk.len();
        progress(done, &total);
    }
    Ok(total)
}

/// Repairs one plugin call's worth of keys, their write counts read first.
pub(super) async fn repair_chunk(
    pipeline: &Pipeline,
    conn: &mut RedisConn,
    chunk: &[String],
) -> Result<RepairReport, ResyncError> {
    let Some(first) = chunk.first() else { return Ok(RepairReport::default()) };
    // Seen before the plugin reads the database, as the guard requires: one round trip per chunk.
    let mut reads = redis::pipe();
    for key in chunk {
        reads.hgetall(meta_key(key).map_err(|source| ResyncError::Meta { key: key.clone(), source })?);
    }
    let metas: Vec<HashMap<String, String>> = reads
        .query_async(conn)
        .await
        .map_err(|e| ResyncError::Meta { key: first.clone(), source: SinkError::redis(e) })?;
    let repairs: Vec<RepairKey> = chunk
        .iter()
        .zip(&metas)
        .map(|(key, fields)| RepairKey {
            key: key.clone(),
            seen_writes: KeyMeta::from_fields(fields).map(|m| m.writes),
        })
        .collect();
    Ok(pipeline.repair(&repairs).await?)
}
