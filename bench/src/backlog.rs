//! Memory while draining a backlog: a Redis stream is filled with Debezium
//! updates (one per row, so nothing coalesces), then the `evercache` binary
//! runs as its own process and drains it while its resident memory is
//! sampled. Several backlog sizes in one run show whether the peak follows the
//! batch settings or the backlog.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use evercache_test_kit::RuntimeToml;
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use crate::compare::SCHEMA;
use crate::compare::entry;

const STREAM: &str = "bench:backlog";
const PREFIX: &str = "bench:backlog:item";

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// Backlog sizes (entries), each drained by a fresh process.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    entries: Vec<u32>,
    /// The source's `max_batch_entries`.
    #[arg(long, default_value_t = 5_000)]
    max_batch_entries: u32,
    /// Entries carry Debezium's default `schema`/`payload` wrapper.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    schema_wrapper: bool,
    /// Small backlogs, to keep the harness working in CI (figures meaningless).
    #[arg(long)]
    tiny: bool,
    /// Postgres.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// One backlog drained.
struct Drained {
    entries: u32,
    backlog_bytes: u64,
    elapsed: Duration,
    peak_rss_kb: u64,
    /// Resident memory when a tenth of the backlog was drained.
    early_rss_kb: u64,
}

pub async fn run(mut options: Options) -> Result<()> {
    if options.tiny {
        options.entries = vec![2_000, 5_000];
    }
    let binary = runtime_binary()?;
    let pg = PgPool::connect(&options.pg_url).await.context("Postgres; run: bash scripts/dev-services.sh")?;
    let redis = redis::Client::open(options.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let rows = options.entries.iter().copied().max().unwrap_or(0);
    sqlx::raw_sql(&format!(
        "drop schema if exists {SCHEMA} cascade; create schema {SCHEMA};
         create table {SCHEMA}.item (id bigint primary key, name text, version bigint);
         insert into {SCHEMA}.item select g, 'row ' || g, 1 from generate_series(1, {rows}) g;
         analyze {SCHEMA}.item;"
    ))
    .execute(&pg)
    .await?;
    let mut results = Vec::new();
    for &entries in &options.entries {
        cleanup(&mut conn).await?;
        let before = used_memory(&mut conn).await?;
        fill(&mut conn, entries, options.schema_wrapper).await?;
        let backlog_bytes = used_memory(&mut conn).await?.saturating_sub(before);
        let drained = drain(&options, &binary, &mut conn, entries, backlog_bytes).await?;
        eprintln!(
            "{entries:>9} entries | {:>6.0} events/s | peak RSS {} MB",
            f64::from(entries) / drained.elapsed.as_secs_f64(),
            drained.peak_rss_kb / 1024
        );
        results.push(drained);
        cleanup(&mut conn).await?;
    }
    sqlx::query(&format!("drop schema if exists {SCHEMA} cascade")).execute(&pg).await?;

    println!(
        "`{}` draining a stream backlog (one update per row), max_batch_entries = {}",
        binary.display(),
        options.max_batch_entries
    );
    println!("| backlog entries | backlog in Redis | drained in | events/s | RSS at 10 % | peak RSS |");
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} MB | {:.1} s | {:.0} | {} | {} MB |",
            r.entries,
            r.backlog_bytes >> 20,
            r.elapsed.as_secs_f64(),
            f64::from(r.entries) / r.elapsed.as_secs_f64(),
            // A backlog drained between two samples has no 10 % figure.
            if r.early_rss_kb == 0 { "–".to_owned() } else { format!("{} MB", r.early_rss_kb / 1024) },
            r.peak_rss_kb / 1024
        );
    }
    Ok(())
}

/// The `evercache` binary built beside this one (same profile).
fn runtime_binary() -> Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name(format!("evercache{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        bail!("{} is missing; build it first: cargo build --release -p evercache", binary.display());
    }
    Ok(binary)
}

async fn fill(conn: &mut MultiplexedConnection, entries: u32, wrapped: bool) -> Result<()> {
    let mut pipe = redis::pipe();
    for id in 1..=i64::from(entries) {
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg(entry::key(wrapped, id))
            .arg(entry::value(wrapped, "item", id))
            .ignore();
        if id % 1000 == 0 {
            pipe.query_async::<()>(conn).await?;
            pipe = redis::pipe();
        }
    }
    if !entries.is_multiple_of(1000) {
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

async fn drain(
    options: &Options,
    binary: &PathBuf,
    conn: &mut MultiplexedConnection,
    entries: u32,
    backlog_bytes: u64,
) -> Result<Drained> {
    let dir = std::env::temp_dir().join("evercache-bench-backlog");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    let plugins = evercache_test_kit::repo_root().join("target/plugins");
    if !plugins.join("testkit.wasm").exists() {
        bail!("{} has no testkit.wasm; run: bash scripts/build-plugins.sh", plugins.display());
    }
    let (pg, redis) = (&options.pg_url, &options.redis_url);
    std::fs::write(
        dir.join("evercache.toml"),
        RuntimeToml::with_plugins_dir(&plugins)
            .database("db", pg)
            .cache("main", redis)
            .redis_stream("events", redis, &[STREAM.to_owned()], "bench")
            .line(&format!("max_batch_entries = {}", options.max_batch_entries))
            .build(),
    )?;
    std::fs::write(
        dir.join("pipelines/items.toml"),
        format!(
            "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{SCHEMA}.item\"]\n[config]\nschema = \"{SCHEMA}\"\nkey_prefix = \"{PREFIX}\"\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("evercache.log"))?;
    let child = Command::new(binary)
        .arg("run")
        .arg("--config")
        .arg(dir.join("evercache.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut child = Killed(child);
    let pid = child.0.id();
    let start = Instant::now();
    let mut early_rss_kb = 0;
    let deadline = start + Duration::from_secs(600);
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!("evercache exited with {status} before draining; see {}", dir.join("evercache.log").display());
        }
        let (lag, pending) = group_state(conn).await?;
        if lag == Some(0) && pending == Some(0) {
            break;
        }
        let done = u64::from(entries).saturating_sub(lag.unwrap_or(u64::from(entries)) + pending.unwrap_or(0));
        if early_rss_kb == 0 && done * 10 >= u64::from(entries) {
            early_rss_kb = status_kb(pid, "VmRSS:")?;
        }
        if Instant::now() > deadline {
            bail!("the backlog of {entries} was not drained within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let peak_rss_kb = status_kb(pid, "VmHWM:")?;
    Ok(Drained { entries, backlog_bytes, elapsed, peak_rss_kb, early_rss_kb })
}

/// Kills the runtime process when dropped, also on an early return.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/<pid>/status` figure in kB (Linux).
fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc (Linux only)")?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in status"))?;
    Ok(line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0))
}

/// The group's `lag` and `pending`, once it exists.
async fn group_state(conn: &mut MultiplexedConnection) -> Result<(Option<u64>, Option<u64>)> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(STREAM).query_async(conn).await?;
    let int = |field: &str| match groups.first().and_then(|g| g.get(field)) {
        Some(redis::Value::Int(n)) => Some(*n as u64),
        _ => None,
    };
    Ok((int("lag"), int("pending")))
}

async fn used_memory(conn: &mut MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

async fn cleanup(conn: &mut MultiplexedConnection) -> Result<()> {
    redis::cmd("DEL").arg(STREAM).query_async::<()>(conn).await?;
    crate::keys::delete_prefix(conn, PREFIX).await
}
