//! Redis going away or refusing writes: a restart without persistence (streams,
//! groups and cache gone), a destroyed consumer group, and a cache that is out
//! of memory, busy with a script or turned read-only. Each is waited out or
//! healed; nothing is dead-lettered and every key ends equal to the database.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::harness::*;
use crate::{random_ids, write_changes};

/// Appends one update event per id after bumping every id's row in one transaction.
async fn touch_all(pg: &PgPool, redis: &mut ConnectionManager, schema: &str, stream: &str, rows: i64) {
    let ids: Vec<i64> = (1..=rows).collect();
    for chunk in ids.chunks(100) {
        write_changes(pg, redis, schema, stream, chunk).await;
    }
}

/// Waits until the stream (on `urls.0`) is drained and every key in the cache
/// (on `urls.1`) equals the database; nothing may have been dead-lettered.
async fn converged(pg: &PgPool, urls: (&str, &str), schema: &str, stream: &str, prefix: &str, what: &str) -> Duration {
    let (streams, cache) = (connect(urls.0).await, connect(urls.1).await);
    let took = wait_until(what, Duration::from_secs(120), || {
        let (pg, mut streams, mut cache) = (pg.clone(), streams.clone(), cache.clone());
        async move {
            backlog(&mut streams, stream).await == (0, 0)
                && mismatches(&pg, &mut cache, schema, prefix).await.is_empty()
        }
    })
    .await;
    assert_eq!(dead_letters(&mut streams.clone(), stream).await, 0, "{what}: nothing was dead-lettered");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_and_a_destroyed_group_are_healed() {
    let name = format!("fault_volatile_{}", std::process::id());
    let rows = 300;
    let dir = scratch(&name);
    let mut server = RedisServer::start_volatile(&dir, "volatile");
    let redis_url = server.url();
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let stream = format!("{name}.{name}.item");
    let port = free_port();
    let runtime = RuntimeToml::new().http(port).database("db", SHARED_PG).cache("main", &redis_url).redis_stream(
        "events",
        &redis_url,
        std::slice::from_ref(&stream),
        "c1",
    );
    let prefix = format!("{name}:item");
    let config = write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, "", ""))]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(redis_url.as_str()).unwrap()).await.unwrap();
    let mut rng = Rng::new("volatile");
    for _ in 0..50 {
        write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
    }
    converged(&pg, (&redis_url, &redis_url), &name, &stream, &prefix, "before the restart").await;

    // Streams, the group, the cache and its metadata are all gone after this.
    server.kill();
    server.restart();
    let restarted = Instant::now();
    touch_all(&pg, &mut writer, &name, &stream, rows).await;
    let after_restart =
        converged(&pg, (&redis_url, &redis_url), &name, &stream, &prefix, "after a restart without persistence").await;
    let recreated = metric(port, "evercache_source_groups_recreated_total", &[("source", "events")]).await;
    assert!(recreated >= 1.0, "the missing group was counted: {recreated}");

    let mut admin = connect(&redis_url).await;
    let _: i64 =
        redis::cmd("XGROUP").arg("DESTROY").arg(&stream).arg("evercache").query_async(&mut admin).await.unwrap();
    let destroyed = Instant::now();
    for _ in 0..50 {
        write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
    }
    let reread: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut admin).await.unwrap();
    let after_destroy = converged(&pg, (&redis_url, &redis_url), &name, &stream, &prefix, "after XGROUP DESTROY").await;
    let recreated_again = metric(port, "evercache_source_groups_recreated_total", &[("source", "events")]).await;
    assert!(recreated_again > recreated, "the destroyed group was counted too: {recreated_again}");
    println!(
        "[redis restart without persistence] the stream/cache server lost everything (stream, group, keys); the \
         runtime re-created the group and converged {:.1?} after the restart (every row touched again: {rows} \
         entries), {after_restart:.1?} after the writes; [group destroyed] XGROUP DESTROY while writing: the group \
         was re-created at the stream's start ({reread} entries re-read) and converged {:.1?} after the destroy \
         ({after_destroy:.1?} after the writes); \
         groups re-created: {recreated_again}; 0 dead letters",
        restarted.elapsed(),
        destroyed.elapsed()
    );
    process.stop();
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_out_of_memory_busy_or_read_only_is_waited_out() {
    let name = format!("fault_oom_{}", std::process::id());
    let rows = 200;
    let dir = scratch(&name);
    let cache = RedisServer::start_volatile(&dir, "cache");
    let cache_url = cache.url();
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut shared = connect(SHARED_REDIS).await;
    clear_prefix(&mut shared, &name).await;
    let stream = format!("{name}.{name}.item");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .line("stuck_after = \"2s\"")
        .database("db", SHARED_PG)
        .cache("main", &cache_url)
        .line("response_timeout = \"2s\"")
        .redis_stream("events", SHARED_REDIS, std::slice::from_ref(&stream), "c1");
    let prefix = format!("{name}:item");
    let config = write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, "", ""))]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let mut admin = connect(&cache_url).await;
    let mut rng = Rng::new("oom");
    // Every key is cached once, so the cache's memory is in use before the limit.
    touch_all(&pg, &mut writer, &name, &stream, rows).await;
    converged(&pg, (SHARED_REDIS, &cache_url), &name, &stream, &prefix, "before the cache refuses writes").await;

    let mut report = Vec::new();
    for refusal in ["OOM", "BUSY", "READONLY"] {
        let mut script = None;
        match refusal {
            "OOM" => {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory-policy")
                    .arg("noeviction")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                let _: () =
                    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut admin).await.unwrap();
            }
            "BUSY" => {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("busy-reply-threshold")
                    .arg(100)
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                let port = cache.port.to_string();
                script = Some(std::thread::spawn(move || {
                    std::process::Command::new("redis-cli")
                        .args(["-p", &port, "EVAL", "while true do end", "0"])
                        .output()
                        .expect("redis-cli")
                }));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ => {
                // A replica of a master that does not answer keeps its data and refuses writes.
                let _: () =
                    redis::cmd("REPLICAOF").arg("127.0.0.1").arg(free_port()).query_async(&mut admin).await.unwrap();
            }
        }
        let refused = Instant::now();
        for _ in 0..30 {
            write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
        }
        let (_, reasons) = wait_ready(port, false, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (pending, _) = backlog(&mut shared, &stream).await;
        assert!(pending > 0, "{refusal}: the entries stay pending while the cache refuses writes");
        assert_eq!(dead_letters(&mut shared, &stream).await, 0, "{refusal}: never dead-lettered");
        match refusal {
            "OOM" => {
                let _: () =
                    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut admin).await.unwrap();
            }
            "BUSY" => {
                let killed = std::process::Command::new("redis-cli")
                    .args(["-p", &cache.port.to_string(), "SCRIPT", "KILL"])
                    .output()
                    .expect("redis-cli");
                assert!(String::from_utf8_lossy(&killed.stdout).contains("OK"), "SCRIPT KILL: {killed:?}");
                if let Some(script) = script.take() {
                    let _ = script.join();
                }
            }
            _ => {
                let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut admin).await.unwrap();
            }
        }
        let lifted = Instant::now();
        let took = converged(&pg, (SHARED_REDIS, &cache_url), &name, &stream, &prefix, refusal).await;
        wait_ready(port, true, Duration::from_secs(30)).await;
        report.push(format!(
            "{refusal} for {:.1?} (/ready false: {}), converged {took:.1?} after it lifted",
            lifted.duration_since(refused),
            reasons.first().map(String::as_str).unwrap_or("")
        ));
    }
    println!("[cache refuses writes] {}; 0 dead letters", report.join("; "));
    process.stop();
    clear_prefix(&mut shared, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
