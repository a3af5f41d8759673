//! Finishing one pipeline's share of a batch: retries with backoff, health
//! checks that tell the batch's own failures from its dependencies', and
//! isolation of the failing records by bisection.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::failure::{ApplyError, Blame, Interrupted};
use super::key_plan::KeyPlan;
use super::plan_ahead::Planning;
use super::running::{Generation, Pipeline};
use crate::event::ChangeEvent;
use crate::source::DeadLetter;

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Pipeline {
    /// Recomputes and writes a planned batch (record index, event). Returns
    /// the records that failed permanently, to be dead-lettered; everything
    /// else was written.
    #[tracing::instrument(skip_all, fields(pipeline = %self.name(), plugin = tracing::field::Empty, events = planning.events.len()))]
    pub async fn finish(
        &self,
        planning: Planning,
        shutdown: &CancellationToken,
    ) -> Result<Vec<DeadLetter>, Interrupted> {
        // Every attempt of this batch runs on the version live when it was planned.
        let Planning { generation, events, plan, commits } = planning;
        let max_attempts = generation.config.max_attempts;
        tracing::Span::current().record("plugin", generation.config.plugin.as_str());
        self.stats().started();
        // No recompute before the database shows what the events say happened.
        generation.gate.wait(&commits, shutdown).await?;
        let all: Vec<&ChangeEvent> = events.iter().map(|(_, e)| e).collect();
        let result = self.retry(&generation, &all, max_attempts, shutdown, plan).await;
        let failures = match result {
            Ok(None) => Ok(Vec::new()),
            Ok(Some(error)) => self.isolate(&generation, &events, error, max_attempts, shutdown).await,
            Err(interrupted) => Err(interrupted),
        };
        self.set_struggling(false);
        let failures = failures?;
        self.stats().finished(&events, &failures.iter().map(|f| f.record).collect::<Vec<_>>());
        Ok(failures)
    }

    /// Finds the records that fail on their own by bisection, so a poison
    /// record costs O(log n) attempts and the rest of the batch is written.
    /// Each half gets one attempt; a record that fails alone is dead-lettered.
    async fn isolate(
        &self,
        generation: &Generation,
        events: &[(usize, ChangeEvent)],
        error: ApplyError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<Vec<DeadLetter>, Interrupted> {
        if events.len() > 1 {
            tracing::warn!(pipeline = %self.name(), records = events.len(), error = %error, "batch keeps failing; isolating the failing records by bisection");
        }
        let mut failures = Vec::new();
        // Depth first, first half first: failures come out in record order.
        let mut failing: VecDeque<(Range<usize>, ApplyError, u32)> =
            VecDeque::from([(0..events.len(), error, attempts)]);
        while let Some((range, error, attempts)) = failing.pop_front() {
            if range.len() <= 1 {
                let (record, event) = &events[range.start];
                failures.push(self.failure(*record, event, &error, attempts));
                continue;
            }
            let middle = range.start + range.len() / 2;
            let mut split = Vec::new();
            for half in [range.start..middle, middle..range.end] {
                let part: Vec<&ChangeEvent> = events[half.clone()].iter().map(|(_, e)| e).collect();
                if let Some(error) = self.retry(generation, &part, 1, shutdown, None).await? {
                    split.push((half, error, attempts + 1));
                }
            }
            for part in split.into_iter().rev() {
                failing.push_front(part);
            }
        }
        Ok(failures)
    }

    fn failure(&self, record: usize, event: &ChangeEvent, error: &ApplyError, attempts: u32) -> DeadLetter {
        let table = event.table.as_str();
        tracing::error!(pipeline = %self.name(), table, key = %event.key, error = %error, attempts, "record failed permanently; dead-lettered");
        DeadLetter { record, pipeline: Some(self.name().to_owned()), error: error.to_string(), attempts }
    }

    /// Tries up to `attempts` times, the first with `planned` when given.
    /// Failures the database or Redis cause are retried without counting while
    /// a health check of either fails; while both answer, such failures count
    /// as the batch's own once they have lasted `max_transient_wait`, so a
    /// plugin cannot hold a batch in an endless "transient" loop. Returns the
    /// last counted error, or `None` on success.
    async fn retry(
        &self,
        generation: &Generation,
        events: &[&ChangeEvent],
        attempts: u32,
        shutdown: &CancellationToken,
        mut planned: Option<Result<KeyPlan, ApplyError>>,
    ) -> Result<Option<ApplyError>, Interrupted> {
        let mut failed = 0;
        let mut waits = 0u32;
        let mut answering_since: Option<Instant> = None;
        loop {
            // The first attempt uses the keys planned ahead; retries plan again.
            let attempt = match planned.take() {
                Some(Ok(plan)) => self.execute(generation, plan, events.len()).await,
                Some(Err(error)) => Err(error),
                None => self.apply(generation, events).await,
            };
            let error = match attempt {
                Ok(report) => {
                    self.stats().written(&report);
                    tracing::debug!(pipeline = %self.name(), events = events.len(), applied = report.applied, deleted = report.deleted, stale = report.stale, "batch written");
                    return Ok(None);
                }
                Err(error) => error,
            };
            self.stats().failed(&error);
            self.set_struggling(true);
            let counts = match error.blame() {
                Blame::Batch => true,
                Blame::Unclear => generation.dependencies_answer().await,
                Blame::Dependencies if generation.dependencies_answer().await => {
                    answering_since.get_or_insert_with(Instant::now).elapsed() >= generation.config.max_transient_wait
                }
                Blame::Dependencies => {
                    answering_since = None;
                    false
                }
            };
            let delay = if counts {
                failed += 1;
                if failed >= attempts {
                    return Ok(Some(error));
                }
                tracing::warn!(pipeline = %self.name(), error = %error, attempt = failed, "batch failed; retrying");
                backoff(generation.config.retry_backoff, failed)
            } else {
                waits += 1;
                tracing::warn!(pipeline = %self.name(), error = %error, "dependency unavailable; waiting, nothing acked");
                backoff(generation.config.retry_backoff, waits)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Interrupted),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn backoff(first: Duration, attempt: u32) -> Duration {
    first.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let first = Duration::from_millis(100);
        assert_eq!(backoff(first, 1), Duration::from_millis(100));
        assert_eq!(backoff(first, 3), Duration::from_millis(400));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
    }
}
