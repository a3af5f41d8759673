//! The read path (`GET /v1/keys/{key}`): 1,000 clients asking at once for one
//! missing hot key, then read latency for hits and for misses at 1, 100 and
//! 1,000 concurrent clients, beside a plain Redis `GET`, a direct database
//! query and the plugin's own recompute, all in the same run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use evercache::config::Config;
use evercache::plugin::{PluginEngine, PluginInstance, SandboxConfig, load_file};
use evercache::runtime::Runtime;
use evercache_test_kit::RuntimeToml;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use crate::stats::{Latencies, ms};

const NAME: &str = "bench_read";

/// `read-path` options.
#[derive(clap::Args)]
pub struct Options {
    /// Concurrent clients per measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    clients: Vec<usize>,
    /// Requests per measurement, split between the clients (each makes at least one).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Clients asking for one missing key at once.
    #[arg(long, default_value_t = 1000)]
    herd: usize,
    /// Postgres the plugin reads.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Redis the cache is on.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// A few requests only, to keep the harness working in CI.
    #[arg(long)]
    tiny: bool,
}

pub async fn run(mut options: Options) -> Result<()> {
    if options.tiny {
        (options.clients, options.requests, options.herd) = (vec![1, 10], 20, 20);
    }
    let rows = options.requests * (options.clients.len() + 1) + 10;
    let pg = sqlx::PgPool::connect(&options.pg_url).await?;
    sqlx::raw_sql(&format!(
        "drop schema if exists {NAME} cascade; create schema {NAME};
         create table {NAME}.item (id bigint primary key, name text, version bigint);
         insert into {NAME}.item select g, 'item ' || g, 1 from generate_series(1, {rows}) g;"
    ))
    .execute(&pg)
    .await?;
    let redis = redis::Client::open(options.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let old: Vec<String> = redis::cmd("KEYS").arg(format!("*{NAME}:item:*")).query_async(&mut conn).await?;
    if !old.is_empty() {
        redis::cmd("DEL").arg(old).query_async::<()>(&mut conn).await?;
    }

    let mut runtime = Runtime::build(Config::load(&write_config(&options)?)?).await?;
    let addr = runtime.bind_http().await?.context("no [http] listener")?;
    let shutdown = CancellationToken::new();
    let mut tasks = runtime.start(shutdown.clone()).await?;
    let key = |id: usize| format!("{NAME}:item:{id}");

    // The herd: every client connected first, then all ask at once.
    let herd_key = key(rows);
    let barrier = Arc::new(Barrier::new(options.herd));
    let clients: Vec<_> = (0..options.herd)
        .map(|_| {
            let (barrier, path) = (barrier.clone(), format!("/v1/keys/{herd_key}"));
            tokio::spawn(async move {
                let mut client = HttpClient::connect(addr).await?;
                barrier.wait().await;
                let started = Instant::now();
                let (code, body) = client.get(&path).await?;
                ensure!(code == 200, "{code}: {}", String::from_utf8_lossy(&body));
                Ok::<_, anyhow::Error>(started.elapsed())
            })
        })
        .collect();
    let mut herd = Vec::new();
    for client in clients {
        herd.push(client.await?.context("a herd client (raise `ulimit -n` for many clients)")?);
    }
    let filled = reads(addr).await?["filled"].as_u64().unwrap_or(0);
    let herd = Latencies::new(herd);

    // Hits read the first `requests` keys, filled now; each round of misses its own fresh keys.
    for id in 1..=options.requests {
        HttpClient::connect(addr).await?.get(&format!("/v1/keys/{}", key(id))).await?;
    }
    let plugin_recompute = plugin_recompute(&options, (1..=options.requests.min(200)).map(key).collect()).await?;
    println!(
        "read path: {} clients asking at once for one missing key → {filled} recompute(s), all {} served; latency p50 {} p99 {} max {}",
        options.herd,
        herd.len(),
        ms(herd.percentile(50.0)),
        ms(herd.percentile(99.0)),
        ms(herd.percentile(100.0))
    );
    println!(
        "plugin's own recompute of one key (host query included): p50 {} p99 {}",
        ms(plugin_recompute.percentile(50.0)),
        ms(plugin_recompute.percentile(99.0))
    );
    println!(
        "| clients | Redis GET p50 / p99 | read script p50 / p99 | HTTP no-op p50 / p99 | hit p50 / p99 | miss p50 / p99 | direct query p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (round, &clients) in options.clients.iter().enumerate() {
        let per_client = (options.requests / clients).max(1);
        let hit_ids = move |c: usize, i: usize| (c * per_client + i) % options.requests + 1;
        let miss_base = options.requests * (round + 1);
        let miss_ids = move |c: usize, i: usize| miss_base + c * per_client + i + 1;
        // One multiplexed connection for all clients, as an application (and evercache) holds it.
        let shared = redis.get_multiplexed_async_connection().await?;
        let redis_get = run_clients(clients, per_client, |c| {
            let mut conn = shared.clone();
            async move {
                let mut samples = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let started = Instant::now();
                    let _: Option<String> = redis::cmd("GET").arg(key(hit_ids(c, i))).query_async(&mut conn).await?;
                    samples.push(started.elapsed());
                }
                Ok(samples)
            }
        })
        .await?;
        // The read script alone, as the runtime calls it (no HTTP): the cache's share of a hit.
        let manager = redis::aio::ConnectionManager::new(redis.clone()).await?;
        let script = run_clients(clients, per_client, |c| {
            let mut conn = evercache::redis_conn::RedisConn::Node(manager.clone());
            async move {
                let mut samples = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let started = Instant::now();
                    evercache::read::read_cached(&mut conn, &key(hit_ids(c, i))).await?;
                    samples.push(started.elapsed());
                }
                Ok(samples)
            }
        })
        .await?;
        // The floor of any answer over HTTP on this box: the listener's `/health`, which reads nothing.
        let no_op =
            run_clients(clients, per_client, |_| http_gets(addr, (0..per_client).map(|_| "/health".to_owned())))
                .await?;
        let hits =
            run_clients(clients, per_client, |c| http_reads(addr, (0..per_client).map(move |i| key(hit_ids(c, i)))))
                .await?;
        let misses =
            run_clients(clients, per_client, |c| http_reads(addr, (0..per_client).map(move |i| key(miss_ids(c, i)))))
                .await?;
        let query = run_clients(clients, per_client, |c| {
            let pg = pg.clone();
            async move {
                let mut samples = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let started = Instant::now();
                    let ids = vec![hit_ids(c, i) as i64];
                    sqlx::query(&format!("select id, name, version from {NAME}.item where id = any($1)"))
                        .bind(ids)
                        .fetch_all(&pg)
                        .await?;
                    samples.push(started.elapsed());
                }
                Ok(samples)
            }
        })
        .await?;
        let pair = |l: &Latencies| format!("{} / {}", ms(l.percentile(50.0)), ms(l.percentile(99.0)));
        println!(
            "| {clients} | {} | {} | {} | {} | {} | {} |",
            pair(&redis_get),
            pair(&script),
            pair(&no_op),
            pair(&hits),
            pair(&misses),
            pair(&query)
        );
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    sqlx::raw_sql(&format!("drop schema {NAME} cascade")).execute(&pg).await?;
    Ok(())
}

/// Runs `clients` tasks of `per_client` requests each; all their latencies.
async fn run_clients<F, Fut>(clients: usize, per_client: usize, client: F) -> Result<Latencies>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(client(c))).collect();
    let mut samples = Vec::with_capacity(clients * per_client);
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok(Latencies::new(samples))
}

/// One keep-alive client reading `keys` in turn; each must answer 200.
async fn http_reads(addr: SocketAddr, keys: impl Iterator<Item = String> + Send + 'static) -> Result<Vec<Duration>> {
    http_gets(addr, keys.map(|key| format!("/v1/keys/{key}"))).await
}

/// One keep-alive client asking for `paths` in turn; each must answer 200.
async fn http_gets(addr: SocketAddr, paths: impl Iterator<Item = String> + Send + 'static) -> Result<Vec<Duration>> {
    let mut client = HttpClient::connect(addr).await?;
    let mut samples = Vec::new();
    for path in paths {
        let started = Instant::now();
        let (code, body) = client.get(&path).await?;
        samples.push(started.elapsed());
        ensure!(code == 200, "{path}: {code}: {}", String::from_utf8_lossy(&body));
    }
    Ok(samples)
}

/// The plugin's `recompute` of one key at a time, on an instance of its own.
async fn plugin_recompute(options: &Options, keys: Vec<String>) -> Result<Latencies> {
    let plugin = evercache_test_kit::repo_root().join("target/plugins/testkit.wasm");
    let engine = PluginEngine::new(SandboxConfig::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let runtime = format!("[databases.db]\nurl = \"{}\"\n", options.pg_url);
    let database: toml::Table = toml::from_str(&runtime)?;
    let database =
        evercache::query::DatabaseConfig::deserialize(database["databases"]["db"].clone())?.build("bench")?;
    let config = vec![("schema".to_owned(), NAME.to_owned()), ("key_prefix".to_owned(), format!("{NAME}:item"))];
    let mut instance =
        PluginInstance::new(&engine, load_file(&engine, &plugin).await?, "bench", Some(database), config);
    instance.init().await?;
    let mut samples = Vec::with_capacity(keys.len());
    for key in keys {
        let started = Instant::now();
        instance.recompute(std::slice::from_ref(&key)).await?;
        samples.push(started.elapsed());
    }
    Ok(Latencies::new(samples))
}

/// The pipeline's read counters from `/api/status`.
async fn reads(addr: SocketAddr) -> Result<serde_json::Value> {
    let (_, body) = HttpClient::connect(addr).await?.get("/api/status").await?;
    let status: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(status["pipelines"][0]["reads"].clone())
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct HttpClient {
    stream: BufReader<TcpStream>,
}

impl HttpClient {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream: BufReader::new(stream) })
    }

    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let code = line.split(' ').nth(1).context("no status line")?.parse()?;
        let mut length = 0;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((code, body))
    }
}

fn write_config(options: &Options) -> Result<std::path::PathBuf> {
    let plugins = evercache_test_kit::repo_root().join("target/plugins");
    if !plugins.join("testkit.wasm").exists() {
        bail!("{} has no testkit.wasm; run: bash scripts/build-plugins.sh", plugins.display());
    }
    let dir = std::env::temp_dir().join("evercache-bench-read-path");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines"))?;
    let runtime = RuntimeToml::with_plugins_dir(&plugins)
        .database("db", &options.pg_url)
        .cache("main", &options.redis_url)
        .redis_stream("events", &options.redis_url, &[format!("{NAME}.stream")], NAME)
        .line("[http]\nlisten = \"127.0.0.1:0\"\n[reload]\nwatch = false")
        .build();
    std::fs::write(dir.join("evercache.toml"), runtime)?;
    std::fs::write(
        dir.join("pipelines/items.toml"),
        format!(
            "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{NAME}.item\"]\n\
             key_patterns = [\"{NAME}:item:*\"]\n[config]\nschema = \"{NAME}\"\nkey_prefix = \"{NAME}:item\"\n"
        ),
    )?;
    Ok(dir.join("evercache.toml"))
}
