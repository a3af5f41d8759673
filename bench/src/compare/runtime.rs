//! Running one implementation over a stream of Debezium events: draining a
//! pre-filled stream, or keeping up with a steady rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use evercache::config::Config;
use evercache::runtime::Runtime;
use evercache_test_kit::RuntimeToml;
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Options, SCHEMA, Sent, entry, naive, native};
use crate::stats::Latencies;
use crate::steady::Arrivals;

/// What processes the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The runtime with the testkit Wasm plugin.
    Evercache,
    /// The runtime with the same logic compiled in.
    Native,
    /// The runtime with no plugin: the built-in row mapper (`[mapper]`), where
    /// it can express the logic (one row, one key).
    Mapper,
    /// One entry, one query, one SET, one XACK at a time.
    Naive,
}

impl Implementation {
    pub const ALL: [Self; 4] = [Self::Evercache, Self::Mapper, Self::Native, Self::Naive];

    pub fn name(self) -> &'static str {
        match self {
            Self::Evercache => "evercache",
            Self::Native => "native",
            Self::Mapper => "mapper",
            Self::Naive => "naive",
        }
    }
}

/// What the events are about, and the plugin that caches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logic {
    /// `item` rows cached one key each by `testkit`.
    Item,
    /// `category` renames fanned out to every product's key by `shop_product`.
    Shop,
}

impl Logic {
    /// True when `implementation` can run this logic (the mapper cannot fan out).
    pub fn runs_on(self, implementation: Implementation) -> bool {
        !(self == Self::Shop && implementation == Implementation::Mapper)
    }

    /// The table the events change.
    fn table(self) -> &'static str {
        match self {
            Self::Item => "item",
            Self::Shop => "category",
        }
    }

    /// The plugin (Wasm file stem, or native name) and the tables its pipeline handles.
    fn plugin(self, implementation: Implementation) -> (&'static str, &'static [&'static str]) {
        let native = implementation == Implementation::Native;
        match self {
            Self::Item => (if native { "native_testkit" } else { "testkit" }, &["item"]),
            Self::Shop => (if native { "native_shop_product" } else { "shop_product" }, &["category", "product"]),
        }
    }
}

async fn fill(
    conn: &mut MultiplexedConnection,
    stream: &str,
    table: &str,
    wrapped: bool,
    ids: impl Iterator<Item = i64>,
) -> Result<()> {
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for id in ids {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(entry::key(wrapped, id))
            .arg(entry::value(wrapped, table, id))
            .ignore();
        queued += 1;
        if queued == 1000 {
            pipe.query_async::<()>(conn).await?;
            pipe = redis::pipe();
            queued = 0;
        }
    }
    if queued > 0 {
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// Deletes the stream and every key (and metadata hash) under `prefix`.
async fn cleanup(conn: &mut MultiplexedConnection, stream: &str, prefix: &str) -> Result<()> {
    redis::cmd("DEL").arg(stream).query_async::<()>(conn).await?;
    crate::keys::delete_prefix(conn, prefix).await?;
    Ok(())
}

fn slug(workload: &str) -> String {
    workload.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// A running evercache (Wasm or native plugin) over one stream.
struct Running {
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

async fn start_runtime(
    options: &Options,
    implementation: Implementation,
    logic: Logic,
    stream: &str,
    prefix: &str,
) -> Result<Running> {
    let plugins = evercache_test_kit::repo_root().join("target/plugins");
    let (plugin, tables) = logic.plugin(implementation);
    let tables = tables.iter().map(|t| format!("\"{SCHEMA}.{t}\"")).collect::<Vec<_>>().join(", ");
    if implementation == Implementation::Evercache && !plugins.join(format!("{plugin}.wasm")).exists() {
        bail!("{} has no {plugin}.wasm; run: bash scripts/build-plugins.sh", plugins.display());
    }
    let dir = std::env::temp_dir().join(format!("evercache-bench-{}", slug(stream)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    let (pg, redis) = (&options.pg_url, &options.redis_url);
    std::fs::write(
        dir.join("evercache.toml"),
        RuntimeToml::with_plugins_dir(&plugins)
            .database("db", pg)
            .cache("main", redis)
            .redis_stream("events", redis, &[stream.to_owned()], "bench")
            .line(&format!("max_batch_entries = {}", options.max_batch_entries))
            .line(&format!("batch_size = {}", options.batch_size))
            .build(),
    )?;
    let wiring = "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\n";
    let pipeline = match implementation {
        // The same value as testkit's: the row's columns as JSON under `<prefix>:<id>`.
        Implementation::Mapper => format!("{wiring}tables = [{tables}]\n[mapper]\nkey = \"{prefix}:{{id}}\"\n"),
        _ => format!(
            "{wiring}plugin = \"{plugin}\"\ntables = [{tables}]\n[config]\nschema = \"{SCHEMA}\"\nkey_prefix = \"{prefix}\"\n"
        ),
    };
    std::fs::write(dir.join("pipelines/items.toml"), pipeline)?;
    let natives = HashMap::from([
        ("native_testkit".to_owned(), native::testkit()),
        ("native_shop_product".to_owned(), native::shop_product()),
    ]);
    let runtime = Runtime::build_with_native(Config::load(&dir.join("evercache.toml"))?, natives).await?;
    let shutdown = CancellationToken::new();
    let tasks = runtime.start(shutdown.clone()).await?;
    Ok(Running { shutdown, tasks })
}

impl Running {
    async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// True once the group has read and acknowledged everything.
async fn drained(conn: &mut MultiplexedConnection, stream: &str) -> Result<bool> {
    let groups: Vec<HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
    let int = |g: &HashMap<String, redis::Value>, f: &str| match g.get(f) {
        Some(redis::Value::Int(n)) => Some(*n),
        _ => None,
    };
    Ok(groups.first().is_some_and(|g| int(g, "lag") == Some(0) && int(g, "pending") == Some(0)))
}

/// Fills a stream with `events` updates of `logic`'s table cycling over `over`
/// rows, then measures how long the implementation takes to apply them all.
#[allow(clippy::too_many_arguments)]
pub async fn drain(
    options: &Options,
    redis: &redis::Client,
    pg: &PgPool,
    implementation: Implementation,
    logic: Logic,
    workload: &str,
    events: u32,
    over: u32,
) -> Result<(usize, Duration)> {
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let stream = format!("bench:{}:{}", slug(workload), implementation.name());
    let prefix = format!("bench:{}:{}:item", slug(workload), implementation.name());
    cleanup(&mut conn, &stream, &prefix).await?;
    let ids = (0..events).map(|i| i64::from(i % over) + 1);
    fill(&mut conn, &stream, logic.table(), options.schema_wrapper, ids).await?;
    let result = match implementation {
        Implementation::Naive => {
            let start = Instant::now();
            let naive = naive::Naive::new(redis, pg, &stream, SCHEMA, &prefix).await?;
            let handled = naive.run(logic, events as usize, Duration::from_millis(100)).await?;
            (handled, start.elapsed())
        }
        _ => {
            let running = start_runtime(options, implementation, logic, &stream, &prefix).await?;
            let start = Instant::now();
            while !drained(&mut conn, &stream).await? {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let elapsed = start.elapsed();
            running.stop().await;
            (events as usize, elapsed)
        }
    };
    cleanup(&mut conn, &stream, &prefix).await?;
    Ok(result)
}

/// Sends one event per distinct row at `rate` per second for `seconds` and
/// measures stream-entry → cache-write delay with keyspace notifications.
pub async fn steady(
    options: &Options,
    redis: &redis::Client,
    pg: &PgPool,
    implementation: Implementation,
    workload: &str,
    rate: u32,
    seconds: u32,
) -> Result<(usize, Duration, Latencies)> {
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let stream = format!("bench:{}:{}", slug(workload), implementation.name());
    let prefix = format!("bench:{}:{}:item", slug(workload), implementation.name());
    cleanup(&mut conn, &stream, &prefix).await?;
    let total = (rate * seconds) as usize;
    let rows: i64 = sqlx::query_scalar(&format!("select count(*) from {SCHEMA}.item")).fetch_one(pg).await?;

    let mut arrivals = Arrivals::listen(redis, &format!("{prefix}:")).await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("naive")
        .arg("$")
        .arg("MKSTREAM")
        .query_async::<()>(&mut conn)
        .await?;
    let (running, worker) = match implementation {
        Implementation::Naive => {
            let (redis, pg, stream, prefix) = (redis.clone(), pg.clone(), stream.clone(), prefix.clone());
            let worker = tokio::spawn(async move {
                let naive = naive::Naive::new(&redis, &pg, &stream, SCHEMA, &prefix).await?;
                naive.run(Logic::Item, total, Duration::from_secs(10)).await
            });
            (None, Some(worker))
        }
        _ => (Some(start_runtime(options, implementation, Logic::Item, &stream, &prefix).await?), None),
    };

    let mut sent = Sent::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let id = (i as i64 % rows) + 1;
        sent.insert(format!("{prefix}:{id}"), Instant::now());
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(entry::key(options.schema_wrapper, id))
            .arg(entry::value(options.schema_wrapper, "item", id))
            .query_async::<()>(&mut conn)
            .await?;
    }
    let mut latencies = Vec::with_capacity(total);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while latencies.len() < total {
        let Some((key, at)) = arrivals.next(deadline.into_std()).await else { break };
        if let Some(sent_at) = sent.remove(&key) {
            latencies.push(at.duration_since(sent_at));
        }
    }
    let elapsed = start.elapsed();
    arrivals.stop().await?;
    if let Some(running) = running {
        running.stop().await;
    }
    if let Some(worker) = worker {
        worker.abort();
    }
    cleanup(&mut conn, &stream, &prefix).await?;
    if latencies.len() < total {
        eprintln!(
            "{workload} {}: only {} of {total} events reached the cache in time",
            implementation.name(),
            latencies.len()
        );
    }
    Ok((latencies.len(), elapsed, Latencies::new(latencies)))
}
