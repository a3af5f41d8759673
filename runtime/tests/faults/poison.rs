//! Plugins that hang: a WASI sleep in `keys` and a `pg_sleep` query in
//! `recompute` end at `call_timeout`, their records are isolated by bisection
//! and dead-lettered, and a healthy pipeline on the same source is not held
//! back by the failing one's retries.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::harness::*;
use crate::write_changes;

/// Starts a runtime with a healthy and a poisoned testkit pipeline over one
/// stream of `<name>.item`; returns the process and the `[http]` port.
fn start(dir: &std::path::Path, name: &str, stream: &str, poison: &str) -> (RuntimeProcess, u16) {
    let port = free_port();
    let runtime = RuntimeToml::new().http(port).database("db", SHARED_PG).cache("main", SHARED_REDIS).redis_stream(
        "events",
        SHARED_REDIS,
        &[stream.to_owned()],
        "c1",
    );
    let healthy = testkit_pipeline("events", name, &format!("{name}:healthy"), "", "");
    let poisoned = testkit_pipeline(
        "events",
        name,
        &format!("{name}:poisoned"),
        "call_timeout = \"1s\"\nmax_attempts = 2",
        poison,
    );
    let config = write_config(dir, runtime, &[("healthy", healthy), ("poisoned", poisoned)]);
    (RuntimeProcess::start(&config, &dir.join("runtime.log")), port)
}

/// A fresh `<name>.item` with `rows` rows, no keys of `name` in Redis, and the stream's name.
async fn prepare(name: &str, rows: i64) -> (PgPool, redis::aio::MultiplexedConnection, String) {
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, name, rows).await;
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, name).await;
    (pg, redis, format!("{name}.{name}.item"))
}

/// Waits until the keys of `prefix` equal the database except `poisoned` ids,
/// which must have no key at all.
async fn wait_keys(pg: &PgPool, schema: &str, prefix: &str, poisoned: &[i64]) -> Duration {
    let redis = connect(SHARED_REDIS).await;
    let expected: Vec<String> = poisoned.iter().map(|id| format!("{prefix}:{id}")).collect();
    wait_until(&format!("{prefix}: every key but {poisoned:?} equal to the database"), Duration::from_secs(240), || {
        let (pg, mut redis, expected) = (pg.clone(), redis.clone(), expected.clone());
        async move { mismatches(&pg, &mut redis, schema, prefix).await == expected }
    })
    .await
}

async fn letters(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(format!("{stream}:dlq")).arg("-").arg("+").query_async(redis).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry.map.into_iter().map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default())).collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_plugin_and_a_sleeping_query_end_at_call_timeout_and_are_dead_lettered() {
    let name = format!("fault_sleep_{}", std::process::id());
    let rows = 200;
    let dir = scratch(&name);
    let (pg, mut redis, stream) = prepare(&name, rows).await;
    let (mut process, port) = start(&dir, &name, &stream, "sleep_ids = \"17\"\nslow_query_ids = \"42\"");
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let started = Instant::now();
    let ids: Vec<i64> = (1..=rows).collect();
    for chunk in ids.chunks(50) {
        write_changes(&pg, &mut writer, &name, &stream, chunk).await;
    }
    let healthy = wait_keys(&pg, &name, &format!("{name}:healthy"), &[]).await;
    let poisoned = wait_keys(&pg, &name, &format!("{name}:poisoned"), &[17, 42]).await;
    wait_until("both poison records dead-lettered and everything acknowledged", Duration::from_secs(120), || {
        let mut redis = redis.clone();
        let stream = stream.clone();
        async move { dead_letters(&mut redis, &stream).await == 2 && backlog(&mut redis, &stream).await == (0, 0) }
    })
    .await;
    let dead = started.elapsed();
    let letters = letters(&mut redis, &stream).await;
    let error_of = |id: i64| {
        letters
            .iter()
            .find(|l| l.values().any(|v| v.contains(&format!("\"id\":{id}"))))
            .map(|l| l["__evercache.error"].clone())
            .unwrap_or_default()
    };
    assert!(error_of(17).contains("`keys` timed out after 1s (call_timeout)"), "{}", error_of(17));
    assert!(
        error_of(42).contains("`recompute` timed out after 1s (call_timeout) while a host query ran"),
        "{}",
        error_of(42)
    );
    let sleeping: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where state = 'active' and query like '%pg_sleep(3600)%' and pid <> pg_backend_pid()",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(sleeping, 0, "the sleeping query was cancelled on the server at the deadline");
    println!(
        "[plugin sleeps] {rows} changes; the poisoned pipeline's plugin sleeps (WASI) on id 17 and its query runs \
         pg_sleep(3600) on id 42, call_timeout 1s: the healthy pipeline on the same source converged in {healthy:.1?}, \
         the poisoned one's other {} keys in {poisoned:.1?}, both poison records were dead-lettered as timed out \
         {dead:.1?} after the writes, no pg_sleep left running",
        rows - 2
    );
    process.stop();
    clear_prefix(&mut redis, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pipeline_does_not_hold_back_a_healthy_one_on_a_backlog() {
    let name = format!("fault_backlog_{}", std::process::id());
    let rows = 5_000;
    let dir = scratch(&name);
    let (pg, mut redis, stream) = prepare(&name, rows).await;
    // The backlog is there before the runtime starts.
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let ids: Vec<i64> = (1..=rows).collect();
    for chunk in ids.chunks(500) {
        write_changes(&pg, &mut writer, &name, &stream, chunk).await;
    }
    let started = Instant::now();
    let (mut process, port) = start(&dir, &name, &stream, "sleep_ids = \"1234,4321\"");
    let healthy = wait_keys(&pg, &name, &format!("{name}:healthy"), &[]).await;
    let poisoned = wait_keys(&pg, &name, &format!("{name}:poisoned"), &[1234, 4321]).await;
    wait_until("both poison records dead-lettered and everything acknowledged", Duration::from_secs(240), || {
        let mut redis = redis.clone();
        let stream = stream.clone();
        async move { dead_letters(&mut redis, &stream).await == 2 && backlog(&mut redis, &stream).await == (0, 0) }
    })
    .await;
    let isolated = started.elapsed();
    let attempts: Vec<String> =
        letters(&mut redis, &stream).await.iter().map(|l| l["__evercache.attempts"].clone()).collect();
    assert!(
        healthy + Duration::from_secs(5) < isolated,
        "the healthy pipeline ({healthy:.1?}) finished well before the failing one's isolation ({isolated:.1?})"
    );
    let errors = metric(port, "evercache_plugin_errors_total", &[("pipeline", "poisoned"), ("kind", "timeout")]).await;
    println!(
        "[poison in a backlog] {rows} entries waiting when the runtime started, read as batches of up to 5000: the \
         healthy pipeline converged {healthy:.1?} after start; the poisoned one (WASI sleep on 2 records, \
         call_timeout 1s) wrote its other {} keys by {poisoned:.1?} and dead-lettered both poison records by \
         {isolated:.1?} after {errors} timed-out calls (bisection; attempts per dead letter {attempts:?})",
        rows - 2
    );
    process.stop();
    clear_prefix(&mut redis, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
