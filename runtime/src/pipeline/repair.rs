//! Repairs: named keys recomputed outside the change stream (a read that
//! missed, a resync) and written so that they never win against a change.

use std::time::Instant;

use super::running::Pipeline;
use crate::clock::now_ms;
use crate::contract::{ChangeEvent, Outcome};
use crate::plugin::CallError;
use crate::sink::{KeyAction, KeyVersion, KeyWrite, SinkError, VersionKind, WriteReport};

/// A key to repair, with the write count its metadata had before the read
/// (`None`: no metadata).
#[derive(Debug, Clone)]
pub struct RepairKey {
    /// The cache key.
    pub key: String,
    /// [`crate::sink::KeyMeta::writes`] as seen before recomputing.
    pub seen_writes: Option<u64>,
}

/// Why a repair failed; nothing was written for the failing call.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The plugin's `recompute` failed.
    #[error("pipeline '{pipeline}': {source}")]
    Plugin {
        /// The pipeline.
        pipeline: String,
        /// The failed call.
        source: CallError,
    },
    /// The cache refused the write.
    #[error("pipeline '{pipeline}': cache write: {source}")]
    Cache {
        /// The pipeline.
        pipeline: String,
        /// The Redis error.
        source: SinkError,
    },
}

/// What a repair did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairReport {
    /// Written (stored, deleted, or skipped because another write came first).
    pub written: WriteReport,
    /// Keys the plugin said to leave as they are.
    pub kept: usize,
}

impl Pipeline {
    /// The keys the plugin names for each of `events` (a resync's rows), asked
    /// on the read instance; a row the plugin fails on gets its own error.
    pub async fn keys_of(&self, events: &[ChangeEvent]) -> Vec<Result<Vec<String>, CallError>> {
        let generation = self.generation();
        let mut instance = generation.reader().lock().await;
        let mut named = Vec::with_capacity(events.len());
        for event in events {
            named.push(instance.keys(event).await);
        }
        named
    }

    /// Recomputes `keys` on the pipeline's read instance (not the one its
    /// batches use) and writes each as a [`VersionKind::Repair`]: stored only
    /// if no other write reached the key since its count was seen, and with
    /// the key's version kept, so every change not yet applied still wins.
    pub async fn repair(&self, keys: &[RepairKey]) -> Result<RepairReport, RepairError> {
        let generation = self.generation();
        let names: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
        let mut instance = generation.reader().lock().await;
        let label = instance.label();
        // Stamped before the call: the value reflects the database at least as of now.
        let read_at_ms = now_ms();
        let started = Instant::now();
        let outcomes = instance.recompute(&names).await;
        drop(instance);
        self.stats().recomputed(started.elapsed());
        let outcomes = outcomes.map_err(|source| RepairError::Plugin { pipeline: self.name().to_owned(), source })?;
        let mut report = RepairReport::default();
        let mut writes = Vec::with_capacity(keys.len());
        for (key, outcome) in keys.iter().zip(outcomes) {
            let action = match outcome {
                Outcome::Put(value) => KeyAction::Put(value),
                Outcome::Delete => KeyAction::Delete,
                Outcome::Keep => {
                    report.kept += 1;
                    continue;
                }
            };
            let kind = VersionKind::Repair { seen_writes: key.seen_writes };
            let version = KeyVersion { position: String::new(), kind, committed_at_ms: 0, read_at_ms };
            writes.push(KeyWrite { key: key.key.clone(), action, version });
        }
        report.written = generation
            .writer
            .write(&label, &writes)
            .await
            .map_err(|source| RepairError::Cache { pipeline: self.name().to_owned(), source })?;
        Ok(report)
    }
}
