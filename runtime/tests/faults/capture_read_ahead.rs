//! The built-in captures read ahead while a batch is applied and confirm a
//! position only once every batch up to it is written: with the cache down,
//! the slot (Postgres) or the stored binlog position (MariaDB) stays behind
//! every change not written, so a runtime killed then loses nothing once it
//! and the cache are back.

use std::time::{Duration, Instant};

use evercache_test_kit::mariadb_server::MariaDbServer;
use mysql_async::prelude::Queryable;
use sqlx::PgPool;

use crate::harness::*;
use crate::mariadb_items;

async fn update(pg: &PgPool, schema: &str, ids: std::ops::RangeInclusive<i64>) {
    sqlx::query(&format!(
        "update {schema}.item set version = version + 1, name = 'n' || (version + 1) where id between $1 and $2"
    ))
    .bind(ids.start())
    .bind(ids.end())
    .execute(pg)
    .await
    .unwrap();
}

async fn slot_behind(pg: &PgPool, slot: &str, lsn: &str) -> (bool, String) {
    sqlx::query_as(
        "select confirmed_flush_lsn <= $2::pg_lsn, confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
    )
    .bind(slot)
    .bind(lsn)
    .fetch_one(pg)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_reading_ahead_never_confirms_past_an_unwritten_change() {
    let name = format!("fault_readahead_{}", std::process::id());
    let rows = 400;
    let dir = scratch(&name);
    let cluster = PgCluster::start(&dir);
    let pg_url = cluster.url();
    let pg = PgPool::connect(&pg_url).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut cache = RedisServer::start(&dir);
    let runtime = RuntimeToml::new()
        .database("db", &pg_url)
        .cache("main", &cache.url())
        .postgres_capture("capture", &pg_url, &[format!("{name}.item")], &name, SHARED_REDIS)
        // Small reads, so the commits below span many batches read ahead.
        .line(&format!("snapshot = \"never\"\ntopic_prefix = \"{name}\"\nbatch_size = 20"));
    let pipeline = testkit_pipeline("capture", &name, &format!("{name}:item"), "", "");
    let config = write_config(&dir, runtime, &[("items", pipeline)]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    let redis = connect(&cache.url()).await;
    wait_slot_active(&pg, &name).await;
    update(&pg, &name, 1..=rows).await;
    wait_until("the first changes are cached", Duration::from_secs(60), || {
        let (pg, mut redis, name) = (pg.clone(), redis.clone(), name.clone());
        async move { mismatches(&pg, &mut redis, &name, &format!("{name}:item")).await.is_empty() }
    })
    .await;

    cache.kill();
    let written: String = sqlx::query_scalar("select pg_current_wal_lsn()::text").fetch_one(&pg).await.unwrap();
    for first in (1..=rows).step_by(10) {
        update(&pg, &name, first..=first + 9).await;
    }
    // Long enough to read ahead to the limit and hear several keepalives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (behind, confirmed) = slot_behind(&pg, &name, &written).await;
    assert!(behind, "the slot was confirmed to {confirmed}, past {written}, with nothing written since");

    process.kill();
    cache.restart();
    process.restart();
    let redis = connect(&cache.url()).await;
    let started = Instant::now();
    wait_until("every change is cached after the restart", Duration::from_secs(120), || {
        let (pg, mut redis, name) = (pg.clone(), redis.clone(), name.clone());
        async move { mismatches(&pg, &mut redis, &name, &format!("{name}:item")).await.is_empty() }
    })
    .await;
    println!(
        "capture read-ahead: {} commits made while the cache was down; the slot stayed at {confirmed} (≤ {written}); \
         killed, cache and runtime restarted: every row cached {:.1?} later",
        rows / 10,
        started.elapsed()
    );
    process.stop();
    drop(redis);
}

/// `(file number, offset)` of a binlog position.
fn ordinal(file: &str, pos: u64) -> (u64, u64) {
    (file.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0), pos)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binlog_capture_reading_ahead_never_stores_past_an_unwritten_change() {
    let name = format!("fault_myreadahead_{}", std::process::id());
    let rows: i64 = 400;
    let dir = scratch(&name);
    let server = MariaDbServer::start(&dir);
    let url = server.url();
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&url).unwrap());
    mariadb_items::create_items(&pool, &name, rows as u64).await;
    let mut cache = RedisServer::start(&dir);
    let mut shared = connect(SHARED_REDIS).await;
    let position_key = format!("{name}:binlog");
    redis::cmd("DEL").arg(&position_key).query_async::<()>(&mut shared).await.unwrap();
    let runtime = RuntimeToml::new().database("db", &format!("{url}/{name}")).cache("main", &cache.url()).section("sources.capture").line(
        &format!(
            "type = \"mysql\"\nurl = \"{url}\"\ntables = [\"{name}.item\"]\nserver_id = 4243\nsnapshot = \"never\"\n\
             topic_prefix = \"{name}\"\nposition_key = \"{position_key}\"\ndead_letter_url = \"{SHARED_REDIS}\"\nbatch_size = 20"
        ),
    );
    let prefix = format!("{name}:item");
    let pipeline = testkit_pipeline("capture", &name, &prefix, "", "dialect = \"mysql\"");
    let config = write_config(&dir, runtime, &[("items", pipeline)]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    let update = |first: i64, last: i64| {
        let (pool, name) = (pool.clone(), name.clone());
        async move {
            let mut conn = pool.get_conn().await.unwrap();
            conn.query_drop(format!(
                "update `{name}`.item set version = version + 1, name = concat('n', version) where id between {first} and {last}"
            ))
            .await
            .unwrap();
        }
    };
    let cached = |mut redis: redis::aio::MultiplexedConnection| {
        let (pool, name, prefix) = (pool.clone(), name.clone(), prefix.clone());
        async move { mariadb_items::mismatches(&pool, &mut redis, &name, &prefix).await == 0 }
    };
    // The capture stores its first position once it streams; changes from then on are read.
    wait_until("the capture's first stored position", Duration::from_secs(60), || {
        let mut shared = shared.clone();
        let key = position_key.clone();
        async move { redis::cmd("EXISTS").arg(&key).query_async::<bool>(&mut shared).await.unwrap_or(false) }
    })
    .await;
    update(1, rows).await;
    let redis = connect(&cache.url()).await;
    wait_until("the first changes are cached", Duration::from_secs(60), || cached(redis.clone())).await;
    // Let the position written for them be stored.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cache.kill();
    let (file, pos): (String, u64) = {
        let mut conn = pool.get_conn().await.unwrap();
        let row: mysql_async::Row = conn.query_first("show master status").await.unwrap().unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    };
    for first in (1..=rows).step_by(10) {
        update(first, first + 9).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stored: String = redis::cmd("GET").arg(&position_key).query_async(&mut shared).await.unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let at = ordinal(stored["position"]["file"].as_str().unwrap(), stored["position"]["pos"].as_u64().unwrap());
    assert!(
        at <= ordinal(&file, pos),
        "the stored position {at:?} is past {file}:{pos}, with nothing written since: {stored}"
    );

    process.kill();
    cache.restart();
    process.restart();
    let redis = connect(&cache.url()).await;
    let started = Instant::now();
    wait_until("every change is cached after the restart", Duration::from_secs(120), || cached(redis.clone())).await;
    println!(
        "binlog capture read-ahead: {} commits made while the cache was down; the stored position stayed at {at:?} \
         (≤ {file}:{pos}); killed, cache and runtime restarted: every row cached {:.1?} later",
        rows / 10,
        started.elapsed()
    );
    process.stop();
    redis::cmd("DEL").arg(&position_key).query_async::<()>(&mut shared).await.unwrap();
}
