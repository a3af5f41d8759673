//! Repairs after a loss: a cache that came back older than evercache's writes,
//! or change records lost before they were read. Neither can be replayed from
//! the source in general (a replication slot or a trimmed stream does not go
//! back), so what may be stale is recomputed: every key the pipeline owns that
//! the cache holds now (a value whose row was deleted meanwhile goes), then
//! every key of its tables, as `resync --all` does (a key whose write was lost
//! comes back). Changes keep flowing meanwhile and win over the repairs. The
//! source is not ready while a repair runs; losses heard meanwhile are
//! repaired once more after it. A repair is recorded in the pipeline's cache
//! before the loss is acted on and cleared when done, so a process stopped or
//! killed meanwhile leaves it to the next start, which goes on from the table
//! scan's saved progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::pipeline::losses::pending_repair_key;
use crate::pipeline::{Loss, LossSender, Pipeline};
use crate::read::resync::{ResyncError, resync_keys};
use crate::read::resync_all::{ResyncAllOptions, resync_all};
use crate::source::health::SourceHealth;

/// Rows read per page by a repair's table scan.
const PAGE_SIZE: usize = 1000;
/// First wait before a failed repair is tried again; doubles up to a minute.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the repairer of one source's pipelines; the runner reports to the
/// returned sender. The task ends with `shutdown`.
pub fn spawn(
    pipelines: Vec<Arc<Pipeline>>,
    health: Arc<SourceHealth>,
    shutdown: CancellationToken,
) -> (LossSender, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = LossSender::channel();
    (sender, tokio::spawn(run(pipelines, health, receiver, shutdown)))
}

async fn run(
    pipelines: Vec<Arc<Pipeline>>,
    health: Arc<SourceHealth>,
    mut losses: mpsc::UnboundedReceiver<Loss>,
    shutdown: CancellationToken,
) {
    // Repairs owed by pipeline: why, and whether an earlier process began it.
    let mut owed: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for pipeline in &pipelines {
        if let Some(why) = owed_before(pipeline, &shutdown).await {
            tracing::warn!(pipeline = pipeline.name(), "a repair owed since before this start is resumed: {why}");
            owed.insert(pipeline.name().to_owned(), (why, true));
        }
    }
    loop {
        if owed.is_empty() {
            let loss = tokio::select! {
                _ = shutdown.cancelled() => return,
                loss = losses.recv() => match loss { Some(loss) => loss, None => return },
            };
            owe(&mut owed, &pipelines, loss);
        }
        // Losses heard together are repaired together.
        while let Ok(more) = losses.try_recv() {
            owe(&mut owed, &pipelines, more);
        }
        for pipeline in &pipelines {
            let Some((why, resume)) = owed.remove(pipeline.name()) else { continue };
            repair_until_done(pipeline, &why, resume, &health, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
        health.set_repairing(None);
    }
}

/// Adds the pipelines `loss` concerns to `owed`, each repaired from the start.
fn owe(owed: &mut BTreeMap<String, (String, bool)>, pipelines: &[Arc<Pipeline>], loss: Loss) {
    for pipeline in pipelines {
        let why = match &loss {
            Loss::Cache(lost) if pipeline.cache().name() == lost.cache => format!("cache '{}' lost writes", lost.cache),
            Loss::Cache(_) => continue,
            Loss::Events(_) => "change records were lost before they were read".to_owned(),
        };
        owed.insert(pipeline.name().to_owned(), (why, false));
    }
}

/// The repair a process before this one owed `pipeline` and did not finish,
/// read from its cache (retried until the cache answers).
async fn owed_before(pipeline: &Pipeline, shutdown: &CancellationToken) -> Option<String> {
    let key = pending_repair_key(pipeline.name());
    let mut delay = RETRY;
    loop {
        let mut conn = pipeline.cache().connection();
        match conn.get::<_, Option<String>>(&key).await {
            Ok(marker) => return marker.map(|m| m.split_once(' ').map_or(m.clone(), |(_, why)| why.to_owned())),
            Err(e) => {
                tracing::warn!(pipeline = pipeline.name(), error = %e, "reading whether a repair is owed failed; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Repairs `pipeline` (going on from an earlier process's progress when
/// `resume`), trying again (backing off) until it is done or shutdown; then
/// clears the record that it is owed, unless a new loss rewrote it meanwhile.
async fn repair_until_done(
    pipeline: &Pipeline,
    why: &str,
    resume: bool,
    health: &SourceHealth,
    shutdown: &CancellationToken,
) {
    let mut delay = RETRY;
    let mut resume = resume;
    loop {
        health.set_repairing(Some(format!("repairing pipeline '{}' because {why}", pipeline.name())));
        let marker = pipeline.cache().connection().get::<_, Option<String>>(pending_repair_key(pipeline.name())).await;
        match repair(pipeline, why, resume, health, shutdown).await {
            Ok(keys) => {
                tracing::warn!(pipeline = pipeline.name(), keys, "repaired after the loss: {why}");
                if let Ok(Some(marker)) = marker {
                    clear_owed(pipeline, &marker).await;
                }
                metrics::counter!(m::LOSS_REPAIRS_TOTAL, "pipeline" => pipeline.name().to_owned(), "outcome" => "done")
                    .increment(1);
                return;
            }
            Err(ResyncError::Stopped) => return,
            Err(e) => {
                metrics::counter!(m::LOSS_REPAIRS_TOTAL, "pipeline" => pipeline.name().to_owned(), "outcome" => "failed")
                    .increment(1);
                tracing::error!(pipeline = pipeline.name(), error = %e, retry_in = ?delay,
                    "the repair after a loss failed; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(60));
                resume = true;
            }
        }
    }
}

/// Deletes the record that `pipeline` owes a repair if it still reads `seen`.
async fn clear_owed(pipeline: &Pipeline, seen: &str) {
    let script = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    let mut conn = pipeline.cache().connection();
    let cleared: Result<i64, _> =
        script.key(pending_repair_key(pipeline.name())).arg(seen).invoke_async(&mut conn).await;
    if let Err(e) = cleared {
        tracing::warn!(pipeline = pipeline.name(), error = %e, "clearing the record of a finished repair failed; the next start repairs once more");
    }
}

/// The keys the cache holds, then the keys of the pipeline's tables; the count recomputed.
async fn repair(
    pipeline: &Pipeline,
    why: &str,
    resume: bool,
    health: &SourceHealth,
    shutdown: &CancellationToken,
) -> Result<u64, ResyncError> {
    let name = pipeline.name().to_owned();
    if pipeline.config().key_patterns.is_empty() {
        tracing::error!(pipeline = %name,
            "the pipeline has no key_patterns, so the keys the cache holds cannot be found: a key whose row was deleted \
             while writes were lost stays until its TTL; set key_patterns to have such keys repaired too");
    }
    let held = pipeline.owned_keys().await.map_err(|source| ResyncError::Meta { key: "(SCAN)".into(), source })?;
    tracing::warn!(pipeline = %name, keys = held.len(), "repairing: recomputing the keys the cache holds");
    resync_keys(pipeline, &held, |done, _| {
        health.set_repairing(Some(format!(
            "repairing pipeline '{name}' because {why}: {done} of the {} keys the cache holds",
            held.len()
        )));
    })
    .await?;
    metrics::counter!(m::LOSS_REPAIRED_KEYS_TOTAL, "pipeline" => name.clone()).increment(held.len() as u64);
    if pipeline.database().is_none() {
        tracing::warn!(pipeline = %name, "no database to read the tables from: keys whose writes were lost stay missing until read");
        return Ok(held.len() as u64);
    }
    let options = ResyncAllOptions { page_size: PAGE_SIZE, restart: !resume };
    let mut counted = 0;
    let done = resync_all(pipeline, options, shutdown, |progress| {
        metrics::counter!(m::LOSS_REPAIRED_KEYS_TOTAL, "pipeline" => name.clone()).increment(progress.keys - counted);
        counted = progress.keys;
        health.set_repairing(Some(format!(
            "repairing pipeline '{name}' because {why}: reading {}, {} rows, {} keys",
            progress.current_table().unwrap_or("-"),
            progress.rows,
            progress.keys
        )));
    })
    .await?;
    Ok(held.len() as u64 + done.keys)
}
