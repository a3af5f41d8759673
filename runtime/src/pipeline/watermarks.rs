//! A source's watermarks, one per cache its pipelines write to: advanced when
//! a batch is settled (after its writes, before the source hears it is done)
//! and every few seconds while the source is quiet, so a cache that lost
//! writes is noticed at its next advance. Between advances the watch also
//! says when a cache stops answering, answers again, or restarted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::losses::{Loss, LossSender, mark_repairs};
use super::replay::Replay;
use super::running::Pipeline;
use crate::metrics as m;
use crate::sink::{Lost, SinkError, Watermark};
use crate::source::health::SourceHealth;
use crate::source::{SourceRecord, StreamAcker};

/// How often the watch advances the watermarks and checks who answers.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// One source's watermarks.
pub(super) struct Watermarks {
    source: String,
    marks: Vec<Watermark>,
    pipelines: Vec<Arc<Pipeline>>,
    losses: LossSender,
    health: Arc<SourceHealth>,
    replay: Replay,
}

impl Watermarks {
    /// A watermark on each cache `pipelines` write to, kept by this process;
    /// a loss is replayed through `rewinder` where it can be.
    pub(super) fn new(
        source: &str,
        pipelines: &[Arc<Pipeline>],
        losses: LossSender,
        health: Arc<SourceHealth>,
        rewinder: Option<StreamAcker>,
    ) -> Self {
        let instance = instance_name();
        let mut marks: Vec<Watermark> = Vec::new();
        for pipeline in pipelines {
            let cache = pipeline.cache();
            if !marks.iter().any(|mark| mark.cache() == cache.name()) {
                marks.push(Watermark::new(cache, source, &instance));
            }
        }
        let replay = Replay::new(rewinder);
        Self { source: source.to_owned(), marks, pipelines: pipelines.to_vec(), losses, health, replay }
    }

    /// Advances every watermark past the writes of `settled` (the batch
    /// being settled; none for the watch); a cache found behind is logged,
    /// counted, and replayed or reported for repair.
    pub(super) async fn advance(&self, settled: &[SourceRecord]) -> Result<(), SinkError> {
        let advanced = self.advance_each(settled).await;
        // Until it advances, nothing settled is confirmed: the source's health says why.
        self.health.set_unconfirmed(advanced.as_ref().err().map(ToString::to_string));
        advanced
    }

    async fn advance_each(&self, settled: &[SourceRecord]) -> Result<(), SinkError> {
        let mut tokens = Vec::with_capacity(self.marks.len());
        for (index, mark) in self.marks.iter().enumerate() {
            let advanced = mark.advance().await?;
            tokens.push(advanced.token);
            let mut unreplayed = Vec::new();
            for lost in advanced.lost {
                match self.replay.rewind(index, lost.survived, settled).await {
                    Some(how) => {
                        self.announce(&lost, &format!("replayed instead of recomputed: {how}"));
                        metrics::counter!(m::LOSS_REPLAYS_TOTAL, "source" => self.source.clone()).increment(1);
                    }
                    None => unreplayed.push(lost),
                }
            }
            self.report(unreplayed).await?;
        }
        self.replay.settled(tokens, settled);
        Ok(())
    }

    /// The last advance, once every batch is settled: a process starting
    /// later knows nothing was written after it.
    pub(super) async fn stop(&self) {
        for mark in &self.marks {
            // A cache that does not answer must not hold up the shutdown.
            match tokio::time::timeout(WATCH_EVERY, mark.stop()).await {
                Ok(Ok(advanced)) => {
                    let _ = self.report(advanced.lost).await;
                }
                Ok(Err(e)) => tracing::warn!(source = %self.source, cache = %mark.cache(), error = %e,
                    "the last watermark could not be written; the next start will check this cache"),
                Err(_) => tracing::warn!(source = %self.source, cache = %mark.cache(),
                    "the last watermark could not be written in time; the next start will check this cache"),
            }
        }
    }

    /// What processes before this one left: retried until every cache answers.
    async fn check_at_start(&self, shutdown: &CancellationToken) {
        for mark in &self.marks {
            loop {
                match mark.check_at_start().await {
                    Ok(lost) => match self.report(lost).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(source = %self.source, error = %e, "recording a repair failed; retrying")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(source = %self.source, cache = %mark.cache(), error = %e,
                            "checking the cache's watermarks at start failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(WATCH_EVERY) => {}
                        }
                    }
                }
            }
        }
    }

    /// Logs a loss with what is done about it, and counts it.
    fn announce(&self, lost: &Lost, done: &str) {
        tracing::error!(source = %self.source, cache = %lost.cache, node = %lost.node, "{lost}; {done}");
        metrics::counter!(m::CACHE_ROLLBACKS_TOTAL, "source" => self.source.clone(), "cache" => lost.cache.clone())
            .increment(1);
    }

    /// Logs, counts and records each loss for repair (in the cache, so a
    /// process stopped before the repair is done repairs at its next start),
    /// then hands it to the repairer.
    async fn report(&self, losses: Vec<Lost>) -> Result<(), SinkError> {
        for lost in losses {
            self.announce(&lost, "every key its pipelines wrote since may be stale: repairing them");
            let affected: Vec<Arc<Pipeline>> =
                self.pipelines.iter().filter(|p| p.cache().name() == lost.cache).cloned().collect();
            mark_repairs(&affected, &format!("cache '{}' lost writes", lost.cache)).await?;
            self.losses.report(Loss::Cache(lost));
        }
        Ok(())
    }

    /// Until `shutdown`: advances the watermarks every [`WATCH_EVERY`] and says
    /// when a cache stops answering, answers again, or is another Redis than before.
    pub(super) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        self.check_at_start(&shutdown).await;
        let mut known: HashMap<String, String> = HashMap::new();
        let mut unreachable = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            match self.advance(&[]).await {
                Ok(()) if unreachable => {
                    unreachable = false;
                    tracing::warn!(source = %self.source, "the cache's watermark advances again");
                }
                Ok(()) => {}
                Err(e) if !unreachable => {
                    unreachable = true;
                    tracing::warn!(source = %self.source, error = %e, "the cache's watermark cannot be advanced; batches are not confirmed until it can");
                }
                Err(_) => {}
            }
            for mark in &self.marks {
                let Ok(identities) = mark.identities().await else { continue };
                for (node, identity) in identities {
                    let place = format!("{}@{node}", mark.cache());
                    match known.insert(place, identity.clone()) {
                        Some(before) if before != identity => {
                            tracing::warn!(cache = %mark.cache(), %node, %before, now = %identity,
                                "the cache's Redis restarted or was replaced; its watermark tells whether writes were lost");
                            metrics::counter!(m::CACHE_RESTARTS_TOTAL, "cache" => mark.cache().to_owned()).increment(1);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A name unique to this runner: host, pid, start time and a count within
/// the process (tests run several runtimes in one).
fn instance_name() -> String {
    static RUNNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let runner = RUNNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let host = crate::host::name().unwrap_or_else(|| "local".to_owned());
    format!("{host}-{}-{:x}-{runner}", std::process::id(), crate::clock::now_ms())
}
