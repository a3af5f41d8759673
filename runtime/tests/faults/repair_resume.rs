//! A repair cut off by a crash is finished by the next start: the stream is
//! trimmed past the group while the runtime is down, the restarted runtime
//! records the repair it owes in the cache, moves the group past the gap and
//! begins recomputing a table too big to finish at once; it is SIGKILLed
//! mid-repair, and the start after that resumes the repair (the gap itself is
//! gone by then) until every key equals the database.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::harness::*;
use crate::write_changes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_cut_off_by_a_crash_is_finished_by_the_next_start() {
    let name = format!("fault_resume_{}", std::process::id());
    let rows: i64 = 30_000;
    let dir = scratch(&name);
    let cache = RedisServer::start_volatile(&dir, "cache");
    let cache_url = cache.url();
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    // Every row cached, as the repair (which reads the whole table) leaves them.
    sqlx::query(&format!("update {name}.item set version = 1")).execute(&pg).await.unwrap();
    let (config, port, stream, prefix) = stream_fed_config(&dir, &name, &cache_url, "");
    let log = dir.join("runtime.log");
    let mut process = RuntimeProcess::start(&config, &log);
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let mut streams = connect(SHARED_REDIS).await;
    let tail: Vec<i64> = (rows - 99..=rows).collect();
    write_changes(&pg, &mut writer, &name, &stream, &tail).await;
    wait_until("the first changes are confirmed", Duration::from_secs(60), || {
        let (mut streams, stream) = (streams.clone(), stream.clone());
        async move { backlog(&mut streams, &stream).await == (0, 0) }
    })
    .await;
    process.stop();

    // Changed while the runtime is down, and their entries trimmed before it reads them.
    write_changes(&pg, &mut writer, &name, &stream, &tail[50..]).await;
    let _: i64 = redis::cmd("XTRIM").arg(&stream).arg("MAXLEN").arg(0).query_async(&mut streams).await.unwrap();
    process.restart();
    let during = wait_reason(port, "repairing", Duration::from_secs(60)).await;
    process.kill();
    let mut cache_conn = connect(&cache_url).await;
    let owed: Option<String> =
        redis::cmd("GET").arg("evercache:repair:items").query_async(&mut cache_conn).await.unwrap();
    assert!(owed.is_some(), "the repair owed is recorded in the cache while it runs");

    let restarted = Instant::now();
    process.restart();
    let took = wait_until("every key equals the database after the resumed repair", Duration::from_secs(180), || {
        let (pg, mut cache_conn, name, prefix) = (pg.clone(), cache_conn.clone(), name.clone(), prefix.clone());
        async move { mismatches(&pg, &mut cache_conn, &name, &prefix).await.is_empty() }
    })
    .await;
    wait_ready(port, true, Duration::from_secs(60)).await;
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("a repair owed since before this start is resumed"), "the second start says it resumes");
    let cleared: Option<String> =
        redis::cmd("GET").arg("evercache:repair:items").query_async(&mut cache_conn).await.unwrap();
    assert_eq!(cleared, None, "a finished repair is no longer owed");
    assert_eq!(dead_letters(&mut streams, &stream).await, 0, "nothing was dead-lettered");
    println!(
        "[repair resumed] stream trimmed past the group while down; the restart began repairing {rows} rows \
         ({during}) and was SIGKILLed; the next start resumed it and every key equalled the database \
         {took:.1?} later ({:.1?} after the start)",
        restarted.elapsed()
    );
    process.stop();
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
