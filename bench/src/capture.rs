//! Built-in capture (Postgres or MariaDB): commit→cache latency for single-row
//! commits at a steady rate, then the drain rate of one large transaction. The runtime runs
//! in-process with the testkit plugin; arrival in Redis is observed through
//! keyspace notifications, so nothing polls.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use evercache::config::Config;
use evercache::runtime::Runtime;
use evercache_test_kit::RuntimeToml;
use tokio_util::sync::CancellationToken;

use crate::capture_db::{DbArgs, Target};
use crate::stats::ms;
use crate::steady::{Arrivals, commits_to_cache};

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
    /// The database and Redis.
    #[command(flatten)]
    db: DbArgs,
}

pub async fn run(options: Options) -> Result<()> {
    let rows = options.burst.max(options.rate * options.seconds);
    let db = Target::connect(options.db.database, &options.db.pg_url, &options.db.mysql_url).await?;
    db.create(NAME, rows).await?;
    let redis = redis::Client::open(options.db.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    // Keys and versions of an earlier run (perhaps of the other database, whose
    // positions do not compare with this one's) would make every write stale.
    crate::keys::delete_prefix(&mut conn, NAME).await?;
    let mut arrivals = Arrivals::listen(&redis, &format!("{NAME}:item:")).await?;

    let config = write_config(&options, &db)?;
    let runtime = Runtime::build(Config::load(&config)?).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = runtime.start(shutdown.clone()).await?;

    let (latencies, offered) = commits_to_cache(&db, NAME, &mut arrivals, options.rate, options.seconds).await?;

    // One transaction changing `burst` rows.
    let burst = options.burst as usize;
    let begin = Instant::now();
    db.update_many(NAME, options.burst).await?;
    let committed = Instant::now();
    let mut seen = 0usize;
    let mut last = committed;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < burst {
        let Some((_, at)) = arrivals.next(deadline).await else {
            bail!("only {seen} of {burst} burst rows reached the cache within 300 s");
        };
        seen += 1;
        last = at;
    }
    let drain = last.duration_since(committed);

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    arrivals.stop().await?;
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
    let redis = &options.db.redis_url;
    let runtime = RuntimeToml::with_plugins_dir(&plugins).cache("main", redis);
    std::fs::write(
        dir.join("evercache.toml"),
        db.runtime(runtime, NAME, &options.db.pg_url, &options.db.mysql_url, redis).build(),
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
