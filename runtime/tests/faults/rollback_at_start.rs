//! A cache that lost writes while no evercache watched it: the runtime
//! crashes, then the cache's Redis restarts from a snapshot older than the
//! writes the source already confirmed. The next start finds the newest
//! watermark is not a clean stop and the Redis started after it, and repairs;
//! after a clean stop the same restart (nothing lost) is left alone.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::harness::*;
use crate::{random_ids, write_changes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_restored_older_while_the_runtime_was_down_is_repaired_at_start() {
    let name = format!("fault_startroll_{}", std::process::id());
    let rows = 200;
    let dir = scratch(&name);
    let mut cache = RedisServer::start_snapshotting(&dir, "cache");
    let cache_url = cache.url();
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let (config, port, stream, prefix) = stream_fed_config(&dir, &name, &cache_url, "");
    let log = dir.join("runtime.log");
    let mut process = RuntimeProcess::start(&config, &log);
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let mut rng = Rng::new("startroll");
    // Every row cached, as a repair (which reads the whole table) leaves them.
    let every: Vec<i64> = (1..=rows).collect();
    for ids in every.chunks(50) {
        write_changes(&pg, &mut writer, &name, &stream, ids).await;
    }
    for _ in 0..20 {
        write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
    }
    drained_and_equal(&pg, &cache_url, &name, &stream, "before the snapshot").await;
    cache.save();

    // Cached and confirmed after the snapshot: the restart below takes these writes back.
    for _ in 0..20 {
        write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
    }
    drained_and_equal(&pg, &cache_url, &name, &stream, "after the snapshot").await;
    process.kill();
    cache.restart();
    let mut admin = connect(&cache_url).await;
    let stale = mismatches(&pg, &mut admin, &name, &prefix).await.len();
    assert!(stale > 0, "the restored snapshot is older than the database");

    let restarted = Instant::now();
    process.restart();
    drained_and_equal(&pg, &cache_url, &name, &stream, "repaired after the start").await;
    let repaired = restarted.elapsed();
    let rollbacks = metric(port, "evercache_cache_rollbacks_total", &[("source", "events")]).await;
    assert!(rollbacks >= 1.0, "the loss was counted: {rollbacks}");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("may have lost writes"), "the log says what was found");
    assert_eq!(dead_letters(&mut connect(SHARED_REDIS).await, &stream).await, 0, "nothing was dead-lettered");

    // A clean stop leaves a last watermark: a restart that loses nothing after it is not a loss.
    process.stop();
    cache.save();
    cache.restart();
    process.restart();
    wait_ready(port, true, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_clean_stop = metric(port, "evercache_cache_rollbacks_total", &[("source", "events")]).await;
    assert_eq!(after_clean_stop, 0.0, "a restart after a clean stop lost nothing");
    println!(
        "[rollback while down] runtime SIGKILLed, then the cache restarted from a snapshot older than the \
         confirmed writes ({stale} keys stale): every key equal {repaired:.1?} after the start, \
         rollbacks counted {rollbacks}; after a clean stop and a lossless restart: no repair"
    );
    process.stop();
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
