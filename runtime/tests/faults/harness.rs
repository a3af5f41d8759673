//! Throwaway servers and runtime processes for the fault suite: a `redis-server`
//! with AOF on a free loopback port (so killing it never touches the machine's
//! shared services; the Postgres and MariaDB ones are in the test kit), and
//! `evercache run` as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sqlx::PgPool;

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
pub const SHARED_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

pub use evercache_test_kit::pg_cluster::PgCluster;
pub use evercache_test_kit::{RuntimeToml, free_port};

/// A fresh scratch directory for one scenario.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-faults").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small xorshift generator: reproducible from the printed seed, no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(name: &str) -> Self {
        let seed = std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
        });
        println!("[{name}] seed {seed} (rerun with FAULT_SEED={seed})");
        Self(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Polls `check` until true, panicking with `what` after `timeout`; how long it took.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = evercache_test_kit::wait_until(what, timeout, || {
        let check = check();
        async move { Ok(check.await) }
    });
    waited.await.unwrap_or_else(|e| panic!("{e}"))
}

/// A `redis-server` of the test's own, with every write fsynced to its AOF,
/// or keeping nothing on disk (`volatile`), as Redis runs on many hosts.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    persistence: Persistence,
    /// `--replicaof 127.0.0.1 <port>` at every start, until promoted.
    primary: Option<u16>,
}

/// What a test's Redis keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persistence {
    /// AOF with every write fsynced.
    Always,
    /// Nothing.
    Volatile,
    /// An RDB file written only by `SAVE`, loaded at start (as with `save` points).
    Snapshot,
}

impl RedisServer {
    pub fn start(dir: &Path) -> Self {
        Self::launch(dir, "redis", Persistence::Always, None)
    }

    /// A server without persistence: a restart loses every stream, group and key.
    pub fn start_volatile(dir: &Path, name: &str) -> Self {
        Self::launch(dir, name, Persistence::Volatile, None)
    }

    /// A server whose disk holds what the last [`Self::save`] wrote: a restart
    /// brings back that snapshot, older than the writes after it.
    pub fn start_snapshotting(dir: &Path, name: &str) -> Self {
        Self::launch(dir, name, Persistence::Snapshot, None)
    }

    /// A replica of `primary` keeping nothing on disk.
    pub fn start_replica(dir: &Path, name: &str, primary: u16) -> Self {
        Self::launch(dir, name, Persistence::Volatile, Some(primary))
    }

    fn launch(dir: &Path, name: &str, persistence: Persistence, primary: Option<u16>) -> Self {
        let mut server = Self { port: free_port(), dir: dir.join(name), child: None, persistence, primary };
        std::fs::create_dir_all(&server.dir).unwrap();
        server.spawn();
        server
    }

    /// `SAVE`: the RDB file now holds every write so far.
    pub fn save(&self) {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string(), "save"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK"), "SAVE on {} failed: {out:?}", self.port);
    }

    /// `REPLICAOF NO ONE`: a replica becomes a primary (and stays one across restarts).
    pub fn promote(&mut self) {
        self.primary = None;
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string(), "replicaof", "no", "one"]).output();
        assert!(
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("OK")),
            "promotion of {} failed",
            self.port
        );
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a frozen replica takes nothing from its primary.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let appendonly = if self.persistence == Persistence::Always { "yes" } else { "no" };
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--appendonly", appendonly]).args([
            "--appendfsync",
            "always",
            "--save",
            "",
            "--dir",
            self.dir.to_str().unwrap(),
        ]);
        if self.persistence == Persistence::Volatile {
            // A restart must not load an RDB file an earlier `SAVE` or shutdown left behind.
            let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        }
        if let Some(primary) = self.primary {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not installed; run bash scripts/dev-services.sh");
        self.child = Some(child);
        let start = Instant::now();
        while Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .map_or(true, |o| !String::from_utf8_lossy(&o.stdout).contains("PONG"))
        {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: whatever was acknowledged to a client is in the AOF.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `evercache run` as a child process, killed (SIGKILL) when dropped.
pub struct RuntimeProcess {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl RuntimeProcess {
    pub fn start(config: &Path, log: &Path) -> Self {
        let mut process = Self { child: None, config: config.to_owned(), log: log.to_owned() };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_evercache"))
            .args(["run", "--config", self.config.to_str().unwrap()])
            .env("RUST_LOG", "warn,evercache=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a frozen process holds what it
    /// was given, so a test can look at it before killing it.
    pub fn freeze(&mut self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM and wait for the drain.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a runtime file with one Redis Streams source named `events`, plus one
/// testkit pipeline per `(name, key_prefix)`, all over `<schema>.item`.
pub struct Setup<'a> {
    pub dir: &'a Path,
    pub redis_url: &'a str,
    pub pg_url: &'a str,
    pub schema: &'a str,
    pub streams: &'a [String],
    pub consumer: &'a str,
    pub source_extra: &'a str,
}

impl Setup<'_> {
    pub fn write(&self, key_prefix: &str) -> PathBuf {
        std::fs::create_dir_all(self.dir.join("pipelines")).unwrap();
        let runtime = RuntimeToml::new()
            .database("db", self.pg_url)
            .cache("main", self.redis_url)
            .redis_stream("events", self.redis_url, self.streams, self.consumer)
            .line(self.source_extra)
            .build();
        let path = self.dir.join(format!("{}.toml", self.consumer));
        std::fs::write(&path, runtime).unwrap();
        let pipeline = format!(
            "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{s}.item\"]\nretry_backoff = \"20ms\"\n[config]\nschema = \"{s}\"\nkey_prefix = \"{key_prefix}\"\n",
            s = self.schema
        );
        std::fs::write(self.dir.join("pipelines/items.toml"), pipeline).unwrap();
        path
    }
}

/// A Debezium Postgres update event (no schema wrapper) for `<schema>.item` row `id`.
pub fn item_event(schema: &str, op: &str, id: i64, lsn: u64) -> (String, String) {
    let value = json!({
        "before": null,
        "after": if op == "d" { Value::Null } else { json!({"id": id, "name": "from-event", "version": 0}) },
        "source": {
            "version": "3.0.1.Final", "connector": "postgresql", "name": "faults", "ts_ms": 1_700_000_000_000u64,
            "snapshot": "false", "db": "test", "sequence": format!("[\"{lsn}\",\"{lsn}\"]"),
            "schema": schema, "table": "item", "txId": lsn, "lsn": lsn, "xmin": null
        },
        "op": op, "ts_ms": 1_700_000_000_100u64, "transaction": null
    });
    (json!({ "id": id }).to_string(), value.to_string())
}

/// Waits until a capture streams from `slot`: changes made before it
/// created the slot are not captured.
pub async fn wait_slot_active(pg: &PgPool, slot: &str) {
    wait_until("the capture's slot", Duration::from_secs(60), || {
        let (pg, slot) = (pg.clone(), slot.to_owned());
        async move {
            sqlx::query_scalar::<_, bool>(
                "select exists (select 1 from pg_replication_slots where slot_name = $1 and active)",
            )
            .bind(&slot)
            .fetch_one(&pg)
            .await
            .unwrap_or(false)
        }
    })
    .await;
}

/// Creates `<schema>.item(id, name, version)` with `rows` rows.
pub async fn create_items(pg: &PgPool, schema: &str, rows: i64) {
    sqlx::raw_sql(&format!(
        "drop schema if exists {schema} cascade; create schema {schema};
         create table {schema}.item (id bigint primary key, name text, version bigint not null);
         insert into {schema}.item select g, 'v0', 0 from generate_series(1, {rows}) g;"
    ))
    .execute(pg)
    .await
    .unwrap();
}

/// Keys whose cached JSON differs from what testkit computes from the database
/// now; a row no change touched (version 0) must have no key at all.
pub async fn mismatches(pg: &PgPool, redis: &mut MultiplexedConnection, schema: &str, prefix: &str) -> Vec<String> {
    let rows: Vec<(i64, Option<String>, i64)> =
        sqlx::query_as(&format!("select id, name, version from {schema}.item order by id"))
            .fetch_all(pg)
            .await
            .unwrap();
    let keys: Vec<String> = rows.iter().map(|(id, _, _)| format!("{prefix}:{id}")).collect();
    let cached: Vec<Option<String>> =
        if keys.is_empty() { Vec::new() } else { redis::cmd("MGET").arg(&keys).query_async(redis).await.unwrap() };
    let mut wrong = Vec::new();
    for ((id, name, version), value) in rows.iter().zip(cached) {
        let expected = (*version > 0).then(|| json!({ "id": id, "name": name, "version": version }));
        if value.as_deref().and_then(|v| serde_json::from_str::<Value>(v).ok()) != expected {
            wrong.push(format!("{prefix}:{id}"));
        }
    }
    wrong
}

/// `XPENDING` count of the group, and entries not yet delivered to it.
pub async fn backlog(redis: &mut MultiplexedConnection, stream: &str) -> (u64, u64) {
    let summary: Vec<redis::Value> =
        redis::cmd("XPENDING").arg(stream).arg("evercache").query_async(redis).await.unwrap_or_default();
    let pending = match summary.first() {
        Some(redis::Value::Int(n)) => *n as u64,
        _ => 0,
    };
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(redis).await.unwrap_or_default();
    let lag = groups
        .iter()
        .find_map(|g| match g.get("lag") {
            Some(redis::Value::Int(n)) => Some(*n as u64),
            _ => None,
        })
        .unwrap_or(u64::MAX);
    (pending, lag)
}

pub async fn dead_letters(redis: &mut MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(format!("{stream}:dlq")).query_async(redis).await.unwrap_or(0)
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis not reachable; run bash scripts/dev-services.sh")
}

/// Deletes every key of the shared Redis starting with `prefix`.
pub async fn clear_prefix(redis: &mut MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("*{prefix}*")).query_async(redis).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(redis).await.unwrap();
    }
}

/// Writes `<dir>/evercache.toml` and one file per pipeline; returns the runtime file.
pub fn write_config(dir: &Path, runtime: RuntimeToml, pipelines: &[(&str, String)]) -> PathBuf {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let path = dir.join("evercache.toml");
    std::fs::write(&path, runtime.build()).unwrap();
    for (name, text) in pipelines {
        std::fs::write(dir.join("pipelines").join(format!("{name}.toml")), text).unwrap();
    }
    path
}

/// A testkit pipeline over `<schema>.item` on source `source`, caching `<key_prefix>:<id>`.
pub fn testkit_pipeline(source: &str, schema: &str, key_prefix: &str, extra: &str, config: &str) -> String {
    format!(
        "source = \"{source}\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{schema}.item\"]\n\
         retry_backoff = \"20ms\"\n{extra}\n[config]\nschema = \"{schema}\"\nkey_prefix = \"{key_prefix}\"\n{config}\n"
    )
}

/// `GET path` on the runtime's `[http]` listener: status code and body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// `/ready` as (ready, reasons), or None while the listener does not answer.
pub async fn readiness(port: u16) -> Option<(bool, Vec<String>)> {
    let (code, body) = http_get(port, "/ready").await?;
    let body: Value = serde_json::from_str(&body).ok()?;
    let reasons = body["reasons"].as_array()?.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect();
    Some((code == 200, reasons))
}

/// The sum of a metric's samples whose labels include `labels`, from `/metrics`.
pub async fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some((_, page)) = http_get(port, "/metrics").await else { return 0.0 };
    page.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|line| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until `/ready` is false with a reason containing `needle`; that reason.
pub async fn wait_reason(port: u16, needle: &str, timeout: Duration) -> String {
    let mut last = Vec::new();
    let start = Instant::now();
    loop {
        if let Some((false, reasons)) = readiness(port).await {
            if let Some(reason) = reasons.iter().find(|r| r.contains(needle)) {
                return reason.clone();
            }
            last = reasons;
        }
        assert!(start.elapsed() < timeout, "/ready never said `{needle}` within {timeout:?}; last reasons: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/ready` answers `ready`, returning how long that took and the
/// reasons last seen while not ready.
pub async fn wait_ready(port: u16, ready: bool, timeout: Duration) -> (Duration, Vec<String>) {
    let start = Instant::now();
    let mut reasons = Vec::new();
    loop {
        if let Some((now, why)) = readiness(port).await {
            if !now {
                reasons = why;
            }
            if now == ready {
                return (start.elapsed(), reasons);
            }
        }
        assert!(start.elapsed() < timeout, "/ready did not turn {ready} within {timeout:?}; last reasons: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(id, name, version)` of an `item` row.
pub type ItemRow = (i64, Option<String>, i64);

/// Keys under `prefix` that differ from `rows`, strictly: each row's key holds
/// its JSON and no key outlives its row. Names what does not answer instead.
pub async fn strict_differences(rows: &[ItemRow], cache: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
    let Ok(held) = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async::<Vec<String>>(cache).await else {
        return vec!["(the cache does not answer)".into()];
    };
    let keys: Vec<String> = rows.iter().map(|(id, _, _)| format!("{prefix}:{id}")).collect();
    let Ok(cached) = redis::cmd("MGET").arg(&keys).query_async::<Vec<Option<String>>>(cache).await else {
        return vec!["(the cache does not answer)".into()];
    };
    let mut wrong: Vec<String> = held.into_iter().filter(|key| !keys.contains(key)).collect();
    for ((id, name, version), value) in rows.iter().zip(cached) {
        let expected = json!({ "id": id, "name": name, "version": version });
        if value.as_deref().and_then(|v| serde_json::from_str::<Value>(v).ok()) != Some(expected) {
            wrong.push(format!("{prefix}:{id}"));
        }
    }
    wrong
}

/// A runtime over `<schema>.item` fed by a Redis Streams source `events` on the
/// shared Redis, caching in `cache_url` (`cache_lines` added to its section):
/// the config written in `dir`, its HTTP port, the stream and the key prefix.
pub fn stream_fed_config(
    dir: &Path,
    schema: &str,
    cache_url: &str,
    cache_lines: &str,
) -> (PathBuf, u16, String, String) {
    let stream = format!("{schema}.{schema}.item");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .line("stuck_after = \"1s\"")
        .database("db", SHARED_PG)
        .cache("main", cache_url)
        .line(cache_lines)
        .redis_stream("events", SHARED_REDIS, std::slice::from_ref(&stream), "c1");
    let prefix = format!("{schema}:item");
    let config = write_config(dir, runtime, &[("items", testkit_pipeline("events", schema, &prefix, "", ""))]);
    (config, port, stream, prefix)
}

/// Waits until `stream` (on the shared Redis) is drained and every key in the
/// cache at `cache_url` equals the database.
pub async fn drained_and_equal(pg: &PgPool, cache_url: &str, schema: &str, stream: &str, what: &str) -> Duration {
    let (streams, cache) = (connect(SHARED_REDIS).await, connect(cache_url).await);
    let prefix = format!("{schema}:item");
    wait_until(what, Duration::from_secs(90), || {
        let (pg, mut streams, mut cache, prefix) = (pg.clone(), streams.clone(), cache.clone(), prefix.clone());
        async move {
            backlog(&mut streams, stream).await == (0, 0)
                && mismatches(&pg, &mut cache, schema, &prefix).await.is_empty()
        }
    })
    .await
}
