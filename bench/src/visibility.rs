//! What the visibility gates cost: commit→cache delay at a steady commit rate
//! with the gate on and off, side by side in one run (alternating, so drift
//! falls on both), on two paths: the built-in capture (the capture's own
//! gate) and a pipeline fed Debezium envelopes through a Redis stream (the
//! pipeline's gate; the envelopes are written by a capture with its own gate
//! off, exactly as `evercache capture --to redis-stream` writes them).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use evercache::config::Config;
use evercache::runtime::Runtime;
use evercache::source::forward::{DebeziumStreamWriter, forward};
use evercache_test_kit::RuntimeToml;
use tokio_util::sync::CancellationToken;

use crate::capture_db::{DbArgs, Target};
use crate::stats::{Latencies, ms};
use crate::steady::{Arrivals, commits_to_cache};

const NAME: &str = "bench_visibility";

/// What to run.
#[derive(clap::Args)]
pub struct Options {
    /// Single-row commits per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of steady load per run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Runs of each of the four configurations.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// The database and Redis.
    #[command(flatten)]
    db: DbArgs,
}

/// The path a change takes to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The built-in capture feeds the pipeline; the capture gates.
    Capture,
    /// Debezium envelopes in a Redis stream; the pipeline gates.
    Stream,
}

pub async fn run(options: Options) -> Result<()> {
    let db = Target::connect(options.db.database, &options.db.pg_url, &options.db.mysql_url).await?;
    db.create(NAME, options.rate * options.seconds).await?;
    let redis = redis::Client::open(options.db.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let mut arrivals = Arrivals::listen(&redis, &format!("{NAME}:item:")).await?;
    let mut results: Vec<(Path, bool, Latencies)> = Vec::new();
    for round in 0..options.rounds {
        let mut runs = [(Path::Capture, true), (Path::Capture, false), (Path::Stream, true), (Path::Stream, false)];
        if round % 2 == 1 {
            runs.reverse();
        }
        for (path, gate) in runs {
            crate::keys::delete_prefix(&mut conn, NAME).await?;
            redis::cmd("DEL").arg(stream()).query_async::<()>(&mut conn).await?;
            // Each run reads only its own changes: a capture stopped during the
            // other runs would otherwise replay theirs into this one.
            db.forget_position(NAME, &mut conn).await?;
            db.forget_position(&forwarder_slot(), &mut conn).await?;
            let shutdown = CancellationToken::new();
            let forwarder = match path {
                Path::Stream => Some(start_forwarder(&options, &db, shutdown.clone()).await?),
                Path::Capture => None,
            };
            let config = write_config(&options, &db, path, gate)?;
            let mut tasks = Runtime::build(Config::load(&config)?).await?.start(shutdown.clone()).await?;
            // Let the sources connect before the clock starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
            arrivals.drain();
            let (latencies, offered) =
                commits_to_cache(&db, NAME, &mut arrivals, options.rate, options.seconds).await?;
            shutdown.cancel();
            while tasks.join_next().await.is_some() {}
            if let Some(forwarder) = forwarder {
                forwarder.await?;
            }
            eprintln!(
                "{path:?} gate {}: {offered:.0}/s, p50 {}, p99 {}",
                if gate { "on" } else { "off" },
                ms(latencies.percentile(50.0)),
                ms(latencies.percentile(99.0))
            );
            results.push((path, gate, latencies));
        }
    }
    arrivals.stop().await?;
    db.cleanup(NAME).await;
    db.cleanup(&forwarder_slot()).await;
    crate::keys::delete_prefix(&mut conn, NAME).await?;
    redis::cmd("DEL").arg(stream()).arg(format!("{NAME}:binlog")).query_async::<()>(&mut conn).await?;
    report(&db, &options, &results);
    Ok(())
}

fn report(db: &Target, options: &Options, results: &[(Path, bool, Latencies)]) {
    println!(
        "visibility gates, {}: {} single-row commits/s for {} s, {} runs of each, commit→cache (median of the runs)",
        db.label(),
        options.rate,
        options.seconds,
        options.rounds
    );
    println!("| path | gate | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|");
    let median = |path: Path, gate: bool, p: f64| {
        let mut values: Vec<Duration> =
            results.iter().filter(|(a, b, _)| *a == path && *b == gate).map(|(_, _, l)| l.percentile(p)).collect();
        values.sort();
        // The middle run, or the mean of the middle two.
        match values.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2,
        }
    };
    for path in [Path::Capture, Path::Stream] {
        let label = match path {
            Path::Capture => "built-in capture",
            Path::Stream => "Debezium envelopes via a stream",
        };
        for gate in [true, false] {
            let [p50, p99, p999] = [50.0, 99.0, 99.9].map(|p| median(path, gate, p));
            println!("| {label} | {} | {} | {} | {} |", if gate { "on" } else { "off" }, ms(p50), ms(p99), ms(p999));
        }
        let ratio = |p: f64| median(path, true, p).as_secs_f64() / median(path, false, p).as_secs_f64().max(1e-9);
        println!("| {label} | on ÷ off | {:.2}× | {:.2}× | {:.2}× |", ratio(50.0), ratio(99.0), ratio(99.9));
    }
}

/// The stream the forwarder writes (`<topic_prefix>.<schema>.<table>`).
fn stream() -> String {
    format!("{NAME}.{NAME}.item")
}

fn forwarder_slot() -> String {
    format!("{NAME}_fwd")
}

/// A capture with its gate off writing Debezium envelopes to the stream, as
/// `evercache capture --to redis-stream` does.
async fn start_forwarder(
    options: &Options,
    db: &Target,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<u64>> {
    let runtime = RuntimeToml::new().cache("main", &options.db.redis_url);
    let source = db.capture_source(runtime, "fwd", &forwarder_slot(), NAME, 7002, &options.db.urls());
    let dir = std::env::temp_dir().join("evercache-bench-visibility-fwd");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    std::fs::write(dir.join("evercache.toml"), source.line("visibility = \"off\"").build())?;
    let config = Config::load(&dir.join("evercache.toml"))?;
    let mut capture = config.runtime.sources["fwd"].build("fwd").await?;
    let mut writer = DebeziumStreamWriter::connect(&options.db.redis_url, false).await?;
    Ok(tokio::spawn(async move { forward(&mut capture, &mut writer, &shutdown).await }))
}

fn write_config(options: &Options, db: &Target, path: Path, gate: bool) -> Result<PathBuf> {
    let root = evercache_test_kit::repo_root();
    let plugins = root.join("target/plugins");
    if !plugins.join("testkit.wasm").exists() {
        bail!("{} has no testkit.wasm; run: bash scripts/build-plugins.sh", plugins.display());
    }
    let dir = std::env::temp_dir().join("evercache-bench-visibility");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    let redis = &options.db.redis_url;
    let runtime = RuntimeToml::with_plugins_dir(&plugins).cache("main", redis);
    let on_off = if gate { "on" } else { "off" };
    let (runtime, pipeline_gate) = match path {
        Path::Capture => {
            let urls = options.db.urls();
            let runtime = db.capture_source(db.database(runtime, NAME, &urls), "events", NAME, NAME, 7001, &urls);
            (runtime.line(&format!("visibility = \"{on_off}\"")), "")
        }
        Path::Stream => {
            let runtime =
                db.database(runtime, NAME, &options.db.urls()).redis_stream("events", redis, &[stream()], "bench");
            (runtime, if gate { "" } else { "visibility = \"off\"\n" })
        }
    };
    std::fs::write(dir.join("evercache.toml"), runtime.build())?;
    std::fs::write(
        dir.join("pipelines/items.toml"),
        format!(
            "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{NAME}.item\"]\n{pipeline_gate}[config]\nschema = \"{NAME}\"\nkey_prefix = \"{NAME}:item\"\n{}",
            db.plugin_config()
        ),
    )?;
    Ok(dir.join("evercache.toml"))
}
