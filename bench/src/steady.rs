//! Steady single-row commits at a rate and when each reached the cache,
//! observed through Redis keyspace notifications so nothing polls; shared by
//! the capture and visibility workloads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::capture_db::Target;
use crate::stats::Latencies;

/// Keys under a prefix as they are written.
pub struct Arrivals {
    keys: mpsc::UnboundedReceiver<(String, Instant)>,
    listener: JoinHandle<()>,
    old_events: Option<String>,
    conn: redis::aio::MultiplexedConnection,
}

impl Arrivals {
    /// Turns keyspace notifications on (until [`Self::stop`]) and listens for
    /// writes of keys starting with `prefix`.
    pub async fn listen(redis: &redis::Client, prefix: &str) -> Result<Self> {
        let mut conn = redis.get_multiplexed_async_connection().await?;
        let old: Vec<String> =
            redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut conn).await?;
        redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg("K$").query_async::<()>(&mut conn).await?;
        let (tx, keys) = mpsc::unbounded_channel();
        let mut pubsub = redis.get_async_pubsub().await?;
        pubsub.psubscribe(format!("__keyspace@0__:{prefix}*")).await?;
        let listener = tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let key = message.get_channel_name().trim_start_matches("__keyspace@0__:").to_owned();
                if tx.send((key, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Ok(Self { keys, listener, old_events: old.get(1).cloned(), conn })
    }

    /// The next key written, by `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Option<(String, Instant)> {
        tokio::time::timeout_at(deadline.into(), self.keys.recv()).await.ok().flatten()
    }

    /// Keys written before now that nobody waits for.
    pub fn drain(&mut self) {
        while self.keys.try_recv().is_ok() {}
    }

    /// Stops listening and puts the notification setting back.
    pub async fn stop(mut self) -> Result<()> {
        self.listener.abort();
        if let Some(value) = self.old_events {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(value)
                .query_async::<()>(&mut self.conn)
                .await?;
        }
        Ok(())
    }
}

/// Commits `rate × seconds` single-row updates (rows `1..`) at `rate` per
/// second on up to 64 connections, and returns each commit's commit→cache
/// time with the rate actually offered.
pub async fn commits_to_cache(
    db: &Target,
    name: &str,
    arrivals: &mut Arrivals,
    rate: u32,
    seconds: u32,
) -> Result<(Latencies, f64)> {
    let total = (rate * seconds) as usize;
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    // Commits overlap on several connections, as an application's would: one
    // connection committing in turn cannot offer much more than 1,000/s.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let id = i as i64 + 1;
        let permit = permits.clone().acquire_owned().await?;
        // Taken before the statement is sent, so the figure includes the commit itself.
        sent.insert(format!("{name}:item:{id}"), Instant::now());
        let (db, name) = (db.clone(), name.to_owned());
        writes.spawn(async move {
            let written = db.update_one(&name, id).await;
            drop(permit);
            written
        });
        while let Some(done) = writes.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < total {
        let Some((key, at)) = arrivals.next(deadline).await else {
            bail!("only {} of {total} commits reached the cache within 30 s", latencies.len());
        };
        if let Some(start) = sent.remove(&key) {
            latencies.push(at.duration_since(start));
        }
    }
    Ok((Latencies::new(latencies), offered))
}
