//! `evercache resync`: named keys recomputed and repaired in place, even where
//! the cached value is wrong at the current position, without ever replacing
//! a value that a change wrote after the resync read the key's metadata.

use crate::pipeline::{Pipeline, RepairError, RepairKey, RepairReport};
use crate::sink::{SinkError, read_meta};

/// Why a resync stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// A key's metadata could not be read.
    #[error("reading the metadata of \"{key}\": {source}")]
    Meta {
        /// The key.
        key: String,
        /// The Redis error.
        source: SinkError,
    },
    /// A recompute or write failed.
    #[error(transparent)]
    Repair(#[from] RepairError),
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
        let mut repairs = Vec::with_capacity(chunk.len());
        for key in chunk {
            // Seen before the plugin reads the database, as the guard requires.
            let meta =
                read_meta(&mut conn, key).await.map_err(|source| ResyncError::Meta { key: key.clone(), source })?;
            repairs.push(RepairKey { key: key.clone(), seen_writes: meta.map(|m| m.writes) });
        }
        let report = pipeline.repair(&repairs).await?;
        total.written.add(&report.written);
        total.kept += report.kept;
        done += chunk.len();
        progress(done, &total);
    }
    Ok(total)
}
