//! Built-in capture (Postgres or MariaDB): commit→cache latency for single-row
//! commits at a steady rate, then the drain rate of one large transaction. The runtime runs
//! in-process with the testkit plugin; arrival in Redis is observed through
//! keyspace notifications, so nothing polls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use evercache::config::Config;
use evercache::runtime::Runtime;
use evercache_test_kit::RuntimeToml;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture_db::{Database, Target};
use crate::stats::{Latencies, ms};

const NAME: &str = "bench_capture";

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// Single-row commits per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rows changed by the one transaction of the burst run.
    #[arg(long, default_value_t = 100_000)]
    burst: u32,
    /// Which capture: postgres or mariadb.
    #[arg(long, value_enum, default_value = "postgres")]
    database: Database,
    /// Postgres (needs wal_level = logical).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// MariaDB (needs its binlog on, ROW format, full metadata).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

pub async fn run(options: Options) -> Result<()> {
    let rows = options.burst.max(options.rate * options.seconds);
    let db = Target::connect(options.database, &options.pg_url, &options.mysql_url).await?;
    db.create(NAME, rows).await?;
    let redis = redis::Client::open(options.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    // Keys and versions of an earlier run (perhaps of the other database, whose
    // positions do not compare with this one's) would make every write stale.
    crate::keys::delete_prefix(&mut conn, NAME).await?;
    let old_events: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut conn).await?;
    redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg("K$").query_async::<()>(&mut conn).await?;

    let (tx, mut arrivals) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut pubsub = redis.get_async_pubsub().await?;
    pubsub.psubscribe(format!("__keyspace@0__:{NAME}:item:*")).await?;
    let listener = tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let key = message.get_channel_name().trim_start_matches("__keyspace@0__:").to_owned();
            if tx.send((key, Instant::now())).is_err() {
                break;
            }
        }
    });

    let config = write_config(&options, &db)?;
    let runtime = Runtime::build(Config::load(&config)?).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = runtime.start(shutdown.clone()).await?;

    // Steady single-row commits.
    let total = (options.rate * options.seconds) as usize;
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
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
        sent.insert(format!("{NAME}:item:{id}"), Instant::now());
        let db = db.clone();
        writes.spawn(async move {
            let written = db.update_one(NAME, id).await;
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
        let Ok(Some((key, at))) = tokio::time::timeout_at(deadline.into(), arrivals.recv()).await else {
            bail!("only {} of {total} commits reached the cache within 30 s", latencies.len());
        };
        if let Some(start) = sent.remove(&key) {
            latencies.push(at.duration_since(start));
        }
    }
    let latencies = Latencies::new(latencies);

    // One transaction changing `burst` rows.
    let burst = options.burst as usize;
    let begin = Instant::now();
    db.update_many(NAME, options.burst).await?;
    let committed = Instant::now();
    let mut seen = 0usize;
    let mut last = committed;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < burst {
        let Ok(Some((_, at))) = tokio::time::timeout_at(deadline.into(), arrivals.recv()).await else {
            bail!("only {seen} of {burst} burst rows reached the cache within 300 s");
        };
        seen += 1;
        last = at;
    }
    let drain = last.duration_since(committed);

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    listener.abort();
    if let [_, value] = old_events.as_slice() {
        redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg(value).query_async::<()>(&mut conn).await?;
    }
    db.cleanup(NAME).await;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg(format!("{NAME}:binlog")).query_async::<()>(&mut conn).await?;
    // A burst leaves a key per row, which would slow every KEYS scan after it.
    crate::keys::delete_prefix(&mut conn, NAME).await?;

    println!("{} → testkit plugin → Redis, {} commits at {offered:.0}/s offered", db.label(), latencies.len());
    println!("| measure | value |");
    println!("|---|---|");
    println!("| commit→cache p50 | {} |", ms(latencies.percentile(50.0)));
    println!("| commit→cache p99 | {} |", ms(latencies.percentile(99.0)));
    println!("| commit→cache p99.9 | {} |", ms(latencies.percentile(99.9)));
    println!("| commit→cache max | {} |", ms(latencies.percentile(100.0)));
    println!("| burst: {burst} rows in one transaction, commit took | {} |", ms(committed.duration_since(begin)));
    println!("| burst: commit→last key written | {} |", ms(drain));
    println!("| burst: drain rate | {:.0} rows/s |", burst as f64 / drain.as_secs_f64());
    Ok(())
}

fn write_config(options: &Options, db: &Target) -> Result<PathBuf> {
    let root = evercache_test_kit::repo_root();
    let plugins = root.join("target/plugins");
    if !plugins.join("testkit.wasm").exists() {
        bail!("{} has no testkit.wasm; run: bash scripts/build-plugins.sh", plugins.display());
    }
    let dir = std::env::temp_dir().join("evercache-bench-capture");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    let redis = &options.redis_url;
    let runtime = RuntimeToml::with_plugins_dir(&plugins).cache("main", redis);
    std::fs::write(
        dir.join("evercache.toml"),
        db.runtime(runtime, NAME, &options.pg_url, &options.mysql_url, redis).build(),
    )?;
    std::fs::write(
        dir.join("pipelines/items.toml"),
        format!(
            "source = \"capture\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{NAME}.item\"]\n[config]\nschema = \"{NAME}\"\nkey_prefix = \"{NAME}:item\"\n{}",
            db.plugin_config()
        ),
    )?;
    Ok(dir.join("evercache.toml"))
}
