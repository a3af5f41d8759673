//! Replaying what a cache lost instead of recomputing it, where the source can
//! deliver it again: a Redis Streams group whose entries are still in the
//! stream. The watermark still in the cache says every write made before this
//! process advanced it survived; the batches settled after it, and those in
//! flight, are delivered again by moving the group back, which costs a few
//! seconds of changes instead of a read of every table. Kept in memory, so
//! only losses this process saw happen can be replayed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::source::redis_stream::entry_id;
use crate::source::{SourceRecord, StreamAcker};

/// Settled batches remembered, at most; a loss reaching further back is recomputed.
const HISTORY: usize = 20_000;

/// A Redis Streams entry id as `(ms, seq)`.
type EntryId = (u64, u64);

/// Per settled batch: the value each watermark advanced to after its writes,
/// and its oldest entry per stream.
struct Settled {
    tokens: Vec<u64>,
    oldest: HashMap<String, EntryId>,
}

/// What the source's batches were, for moving it back.
pub(super) struct Replay {
    rewinder: Option<StreamAcker>,
    state: Mutex<History>,
}

#[derive(Default)]
struct History {
    batches: VecDeque<Settled>,
    /// Per watermark, the newest token of a batch forgotten (0: none).
    forgotten: Vec<u64>,
}

impl Replay {
    /// For a source `rewinder` can move back (`None`: every loss is recomputed).
    pub(super) fn new(rewinder: Option<StreamAcker>) -> Self {
        Self { rewinder, state: Mutex::default() }
    }

    /// A batch settled after its writes, the watermarks advanced to `tokens`.
    pub(super) fn settled(&self, tokens: Vec<u64>, records: &[SourceRecord]) {
        if self.rewinder.is_none() || records.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.batches.len() >= HISTORY
            && let Some(old) = state.batches.pop_front()
        {
            let len = old.tokens.len().max(state.forgotten.len());
            state.forgotten.resize(len, 0);
            for (forgotten, token) in state.forgotten.iter_mut().zip(&old.tokens) {
                *forgotten = (*forgotten).max(*token);
            }
        }
        state.batches.push_back(Settled { tokens, oldest: oldest_per_stream(records) });
    }

    /// Moves the source back so that everything settled after watermark
    /// `mark` reached `survived`, everything in flight and `current` (the
    /// batch being settled) is delivered again; says what it did, or `None`
    /// when it cannot (no rewinder, a loss older than the history, entries gone).
    pub(super) async fn rewind(&self, mark: usize, survived: Option<u64>, current: &[SourceRecord]) -> Option<String> {
        let mut rewinder = self.rewinder.clone()?;
        let survived = survived?;
        let since = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.forgotten.get(mark).is_some_and(|forgotten| *forgotten > survived) {
                return None;
            }
            let mut since = oldest_per_stream(current);
            for batch in state.batches.iter().filter(|b| b.tokens.get(mark).is_some_and(|t| *t > survived)) {
                for (stream, id) in &batch.oldest {
                    let oldest = since.entry(stream.clone()).or_insert(*id);
                    *oldest = (*oldest).min(*id);
                }
            }
            since
        };
        match rewinder.rewind(&since).await {
            Ok(true) => Some(describe(&since)),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(source = %rewinder.name(), error = %e, "moving the group back failed; recomputing instead");
                None
            }
        }
    }
}

fn oldest_per_stream(records: &[SourceRecord]) -> HashMap<String, EntryId> {
    let mut oldest: HashMap<String, EntryId> = HashMap::new();
    for record in records {
        let Some(id) = entry_id(&record.id) else { continue };
        let entry = oldest.entry(record.stream.clone()).or_insert(id);
        *entry = (*entry).min(id);
    }
    oldest
}

fn describe(since: &HashMap<String, EntryId>) -> String {
    let mut streams: Vec<String> =
        since.iter().map(|(stream, (ms, seq))| format!("'{stream}' from {ms}-{seq}")).collect();
    streams.sort();
    if streams.is_empty() {
        "nothing had been settled since; the entries in flight are delivered again".to_owned()
    } else {
        format!("the group moved back to deliver again {}", streams.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: &str, id: &str) -> SourceRecord {
        SourceRecord::with_fields(stream.into(), id.into(), Vec::new())
    }

    #[test]
    fn the_oldest_entry_per_stream_is_kept() {
        let records = [record("a", "5-1"), record("a", "4-9"), record("b", "7-0"), record("a", "x")];
        let oldest = oldest_per_stream(&records);
        assert_eq!(oldest.get("a"), Some(&(4, 9)));
        assert_eq!(oldest.get("b"), Some(&(7, 0)));
        assert!(describe(&oldest).contains("'a' from 4-9, 'b' from 7-0"));
    }
}
