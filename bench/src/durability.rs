//! What a cache's `durability` setting costs on commit→cache delay, side by
//! side in one run, with the built-in Postgres capture and the testkit plugin:
//! a Redis primary with one replica, without `durability` and with
//! `{ replicas = 1 }` (`WAIT`), and a Valkey with `appendfsync everysec`,
//! without and with `{ fsync = true }` (`WAITAOF`). The bench starts those
//! servers itself on free ports and stops them at the end. Each run measures
//! single-row commits at a steady rate and the drain of one large transaction;
//! keys arrive through keyspace notifications on the bench's own servers.
//! `INFO commandstats` shows each run used `WAIT`/`WAITAOF` or not.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use evercache::config::Config;
use evercache::runtime::Runtime;
use evercache_test_kit::{RuntimeToml, free_port, repo_root};
use tokio_util::sync::CancellationToken;

use crate::capture_db::{Database, Target};
use crate::stats::{Latencies, ms};
use crate::steady::{Arrivals, commits_to_cache};

const NAME: &str = "bench_durability";

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// Single-row commits per second in the steady run.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of steady load per run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Rows changed by the one transaction of each burst.
    #[arg(long, default_value_t = 20_000)]
    burst: u32,
    /// Runs of each of the four configurations (alternating order).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Postgres (needs wal_level = logical).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
}

/// A cache server the bench runs, with its setting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Redis primary + replica; `durability = { replicas = 1 }` or none.
    Replica(bool),
    /// Valkey with an AOF fsynced every second; `durability = { fsync = true }` or none.
    Fsync(bool),
}

impl Variant {
    fn durable(self) -> bool {
        matches!(self, Variant::Replica(true) | Variant::Fsync(true))
    }

    fn setting(self) -> &'static str {
        match self {
            Variant::Replica(true) => "durability = { replicas = 1 }",
            Variant::Fsync(true) => "durability = { fsync = true }",
            _ => "",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Replica(_) => "Redis 7.0 + 1 replica",
            Variant::Fsync(_) => "Valkey, appendfsync everysec",
        }
    }
}

/// One run's figures.
struct Run {
    variant: Variant,
    steady: Latencies,
    drain: Duration,
    /// `WAIT` or `WAITAOF` calls the cache saw during the run.
    waits: u64,
}

/// Child processes, killed when dropped.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn run(options: Options) -> Result<()> {
    let db = Target::connect(Database::Postgres, &options.pg_url, "").await?;
    db.create(NAME, options.burst.max(options.rate * options.seconds)).await?;
    let dir = std::env::temp_dir().join("evercache-bench-durability");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    let mut servers = Servers(Vec::new());
    let redis_url = start_redis_pair(&dir, &mut servers).await?;
    let valkey_url = match valkey_binary() {
        Some(binary) => Some(start_valkey(&dir, &binary, &mut servers).await?),
        None => {
            eprintln!("no Valkey (bash scripts/valkey.sh installs it): the fsync variants are skipped");
            None
        }
    };

    let probe = match &valkey_url {
        Some(url) => Some(waitaof_wait(url).await?),
        None => None,
    };

    // A discarded short run first, so what a process's first run pays (first
    // connections, the table's pages) falls on no variant.
    let warm_up = Load { rate: options.rate, seconds: 1, burst: options.burst.min(1000) };
    run_one(&options, warm_up, &db, &dir, &redis_url, Variant::Replica(false)).await?;

    let load = Load { rate: options.rate, seconds: options.seconds, burst: options.burst };
    let mut results = Vec::new();
    for round in 0..options.rounds {
        let mut variants = vec![Variant::Replica(false), Variant::Replica(true)];
        if valkey_url.is_some() {
            variants.extend([Variant::Fsync(false), Variant::Fsync(true)]);
        }
        if round % 2 == 1 {
            variants.reverse();
        }
        for variant in variants {
            let url = match variant {
                Variant::Replica(_) => &redis_url,
                Variant::Fsync(_) => valkey_url.as_ref().context("no Valkey")?,
            };
            let run = run_one(&options, load, &db, &dir, url, variant).await?;
            eprintln!(
                "{} {}: p50 {}, p99 {}, burst drain {}, {} WAIT/WAITAOF calls",
                variant.label(),
                if variant.durable() { variant.setting() } else { "no durability" },
                ms(run.steady.percentile(50.0)),
                ms(run.steady.percentile(99.0)),
                ms(run.drain),
                run.waits
            );
            results.push(run);
        }
    }
    db.cleanup(NAME).await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    report(&options, &results);
    if let Some(probe) = probe {
        println!(
            "Valkey alone: `SET` then `WAITAOF 1 0 1000` on one connection answers in {} (median of 5, 10 ms apart); \
             with `appendfsync everysec` the AOF is fsynced once a second, so a WAITAOF that waited for that fsync \
             would take up to 1 s (0.5 s on average)",
            ms(probe)
        );
    }
    Ok(())
}

/// How long `WAITAOF 1 0` takes right after a write on the same connection:
/// the median of 5 tries 10 ms apart.
async fn waitaof_wait(url: &str) -> Result<Duration> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let mut took = Vec::new();
    for i in 0..5 {
        redis::cmd("SET").arg(format!("{NAME}:probe")).arg(i).query_async::<()>(&mut conn).await?;
        let start = Instant::now();
        let _: Vec<u32> = redis::cmd("WAITAOF").arg(1).arg(0).arg(1000).query_async(&mut conn).await?;
        took.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took.sort();
    Ok(took[took.len() / 2])
}

/// What one run offers: single-row commits at `rate` for `seconds`, then one transaction of `burst` rows.
#[derive(Clone, Copy)]
struct Load {
    rate: u32,
    seconds: u32,
    burst: u32,
}

/// One runtime over the cache at `url` configured as `variant`: a steady run, then a burst.
async fn run_one(options: &Options, load: Load, db: &Target, dir: &Path, url: &str, variant: Variant) -> Result<Run> {
    let redis = redis::Client::open(url)?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    // Each run starts from an empty cache (no versions, no watermark) and at the log's head.
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut conn).await?;
    db.forget_position(NAME, &mut conn).await?;
    let mut arrivals = Arrivals::listen(&redis, &format!("{NAME}:item:")).await?;

    let config = write_config(options, db, dir, url, variant)?;
    let shutdown = CancellationToken::new();
    let mut tasks = Runtime::build(Config::load(&config)?).await?.start(shutdown.clone()).await?;
    // Let the capture connect before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    arrivals.drain();
    let (steady, _) = commits_to_cache(db, NAME, &mut arrivals, load.rate, load.seconds).await?;

    // One transaction changing `burst` rows: commit → its last key written.
    db.update_many(NAME, load.burst).await?;
    let committed = Instant::now();
    let mut last = committed;
    let deadline = committed + Duration::from_secs(300);
    for seen in 0..load.burst {
        let Some((_, at)) = arrivals.next(deadline).await else {
            bail!("only {seen} of {} burst rows reached the cache within 300 s", load.burst);
        };
        last = at;
    }
    let drain = last.duration_since(committed);

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    arrivals.stop().await?;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await?;
    Ok(Run { variant, steady, drain, waits: wait_calls(&stats) })
}

/// Calls of `WAIT` and `WAITAOF` in an `INFO commandstats` reply.
fn wait_calls(stats: &str) -> u64 {
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_wait:") || line.starts_with("cmdstat_waitaof:"))
        .filter_map(|line| line.split([':', ',']).find_map(|field| field.strip_prefix("calls=")))
        .filter_map(|calls| calls.parse::<u64>().ok())
        .sum()
}

fn report(options: &Options, results: &[Run]) {
    println!(
        "durability, built-in capture (pgoutput) → testkit plugin → the bench's own cache servers: {} single-row \
         commits/s for {} s, then one transaction of {} rows; {} run(s) of each (median of the runs)",
        options.rate, options.seconds, options.burst, options.rounds
    );
    println!("| cache | durability | p50 | p99 | burst drain | WAIT/WAITAOF calls |");
    println!("|---|---|---|---|---|---|");
    // The middle run, or the mean of the middle two.
    let median = |variant: Variant, figure: &dyn Fn(&Run) -> Duration| {
        let mut values: Vec<Duration> = results.iter().filter(|r| r.variant == variant).map(figure).collect();
        values.sort();
        match values.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2,
        }
    };
    let p50 = |r: &Run| r.steady.percentile(50.0);
    let p99 = |r: &Run| r.steady.percentile(99.0);
    let drain = |r: &Run| r.drain;
    for (base, durable) in
        [(Variant::Replica(false), Variant::Replica(true)), (Variant::Fsync(false), Variant::Fsync(true))]
    {
        if !results.iter().any(|r| r.variant == base) {
            continue;
        }
        for variant in [base, durable] {
            let calls: Vec<String> =
                results.iter().filter(|r| r.variant == variant).map(|r| r.waits.to_string()).collect();
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                variant.label(),
                if variant.durable() { variant.setting() } else { "none" },
                ms(median(variant, &p50)),
                ms(median(variant, &p99)),
                ms(median(variant, &drain)),
                calls.join(", ")
            );
        }
        let ratio = |figure: &dyn Fn(&Run) -> Duration| {
            median(durable, figure).as_secs_f64() / median(base, figure).as_secs_f64().max(1e-9)
        };
        println!(
            "| {} | with ÷ without | {:.2}× | {:.2}× | {:.2}× | |",
            base.label(),
            ratio(&p50),
            ratio(&p99),
            ratio(&drain)
        );
    }
}

/// `[caches.main]` at `url` with the variant's setting, the Postgres capture, the testkit pipeline.
fn write_config(options: &Options, db: &Target, dir: &Path, url: &str, variant: Variant) -> Result<PathBuf> {
    let plugins = repo_root().join("target/plugins");
    if !plugins.join("testkit.wasm").exists() {
        bail!("{} has no testkit.wasm; run: bash scripts/build-plugins.sh", plugins.display());
    }
    let dir = dir.join("config");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    let runtime = RuntimeToml::with_plugins_dir(&plugins).cache("main", url).line(variant.setting());
    std::fs::write(dir.join("evercache.toml"), db.runtime(runtime, NAME, &options.pg_url, "", url).build())?;
    std::fs::write(
        dir.join("pipelines/items.toml"),
        format!(
            "source = \"capture\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{NAME}.item\"]\n[config]\nschema = \"{NAME}\"\nkey_prefix = \"{NAME}:item\"\n"
        ),
    )?;
    Ok(dir.join("evercache.toml"))
}

/// Starts `binary` on a free port with `args`, its files in `dir/<name>`; returns its URL once it answers.
async fn start_server(dir: &Path, name: &str, binary: &str, args: &[&str], servers: &mut Servers) -> Result<String> {
    let port = free_port();
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir"])
        .arg(&home)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    servers.0.push(child);
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            return Ok(url);
        }
        if Instant::now() > deadline {
            bail!("{binary} on port {port} did not answer within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis primary without persistence and one replica of it, in sync; the primary's URL.
async fn start_redis_pair(dir: &Path, servers: &mut Servers) -> Result<String> {
    let primary = start_server(dir, "primary", "redis-server", &["--appendonly", "no"], servers).await?;
    let port = primary.rsplit(':').next().unwrap_or_default().to_owned();
    let replica_args = ["--appendonly", "no", "--replicaof", "127.0.0.1", &port];
    let replica = start_server(dir, "replica", "redis-server", &replica_args, servers).await?;
    let mut conn = redis::Client::open(replica.as_str())?.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await?;
        if info.lines().any(|line| line.trim() == "master_link_status:up") {
            return Ok(primary);
        }
        if Instant::now() > deadline {
            bail!("the replica did not sync with its primary within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Valkey with an AOF fsynced every second; its URL.
async fn start_valkey(dir: &Path, binary: &str, servers: &mut Servers) -> Result<String> {
    start_server(dir, "valkey", binary, &["--appendonly", "yes", "--appendfsync", "everysec"], servers).await
}

/// valkey-server, if `scripts/valkey.sh` installed it (this bench never installs it).
fn valkey_binary() -> Option<String> {
    let script = repo_root().join("scripts/valkey.sh");
    let out = Command::new("bash").arg(script).arg("--binary").output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!path.is_empty() && Path::new(&path).exists()).then_some(path)
}
