//! Redis Cluster for the cache and the Redis Streams source, against a real
//! local cluster (three primaries with a replica each): changes keep flowing
//! while slots holding the cache's keys migrate between primaries and a
//! replica is promoted, and afterwards every key equals its row, nothing is
//! pending and nothing was dead-lettered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use evercache::redis_conn::{RedisConn, RedisTarget};
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::{PG_URL, Running, RuntimeToml, TestEnv, wait_until};
use evercache_test_kit::redis_cluster::RedisCluster;
use serde_json::json;
use sqlx::PgPool;

const ROWS: i64 = 3000;

/// The runtime's own cluster connection, for the test's writes and checks.
async fn cluster_conn(cluster: &RedisCluster) -> Result<RedisConn> {
    Ok(RedisTarget::new(&cluster.url().into(), None, true).connect(Duration::from_secs(10)).await?)
}

/// Updates random rows and appends their change events, as Debezium would,
/// until `stop`; returns how many events it appended.
async fn write_changes(
    pg: PgPool,
    mut redis: RedisConn,
    schema: String,
    stream: String,
    stop: Arc<AtomicBool>,
    appended: Arc<AtomicU64>,
) -> Result<()> {
    let mut round: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let ids: Vec<i64> = (0..20).map(|i| (round * 7919 + i * 104_729) % ROWS + 1).collect();
        let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
            "update {schema}.item set version = version + 1 where id = any($1) returning id, version"
        ))
        .bind(&ids)
        .fetch_all(&pg)
        .await?;
        let mut pipe = redis::pipe();
        for (id, version) in rows {
            let after = json!({"id": id, "name": "row", "version": version});
            let value = pg_change("u", &schema, "item", None, Some(after), next_lsn());
            pipe.cmd("XADD").arg(&stream).arg("*").arg(pg_key(id)).arg(value.to_string()).ignore();
            appended.fetch_add(1, Ordering::Relaxed);
        }
        // Like Debezium, retry an append the cluster refused: during a failover
        // it answers CLUSTERDOWN for a moment, and the rows are already updated.
        let started = std::time::Instant::now();
        while let Err(e) = pipe.query_async::<()>(&mut redis).await {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Every row's key holds its row's version; the mismatches otherwise.
async fn stale_keys(env: &TestEnv, redis: &mut RedisConn) -> Result<Vec<String>> {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as(&format!("select id, version from {}.item order by id", env.prefix)).fetch_all(&env.pg).await?;
    let keys: Vec<String> = rows.iter().map(|(id, _)| format!("{}:item:{id}", env.prefix)).collect();
    let mut stale = Vec::new();
    for (chunk, rows) in keys.chunks(500).zip(rows.chunks(500)) {
        let mut gets = redis::pipe();
        for key in chunk {
            gets.get(key);
        }
        let values: Vec<Option<String>> = gets.query_async(redis).await?;
        for ((key, (_, version)), value) in chunk.iter().zip(rows).zip(values) {
            let cached = value.and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok());
            if cached.as_ref().and_then(|c| c["version"].as_i64()) != Some(*version) {
                stale.push(format!("{key}: row version {version}, cached {cached:?}"));
            }
        }
    }
    Ok(stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_stale_through_a_resharding_and_a_replica_promotion() -> Result<()> {
    let env = TestEnv::new("cluster").await?;
    env.sql(&format!(
        "create table item (id bigint primary key, name text, version bigint);
         insert into item select g, 'row', 1 from generate_series(1, {ROWS}) g"
    ))
    .await?;
    let cluster = RedisCluster::start(&env.dir);
    println!("a cluster of {}: 3 primaries with a replica each", cluster.server());
    let mut redis = cluster_conn(&cluster).await?;
    // One hash tag for the stream, so its dead letters share its slot; the
    // cache keys carry none and spread over every slot.
    let stream = format!("{{{p}}}.{p}.item", p = env.prefix);

    let mut fill = redis::pipe();
    for id in 1..=ROWS {
        let value = pg_change("r", &env.prefix, "item", None, Some(json!({"id": id, "name": "row", "version": 1})), 0);
        fill.cmd("XADD").arg(&stream).arg("*").arg(pg_key(id)).arg(value.to_string()).ignore();
    }
    fill.query_async::<()>(&mut redis).await?;

    let runtime = RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", &cluster.url())
        .line("cluster = true")
        .redis_stream("events", &cluster.url(), std::slice::from_ref(&stream), &env.prefix)
        .line("cluster = true")
        .line("claim_idle = \"5s\"")
        .build();
    let pipeline = format!("{}_items", env.prefix);
    let config = env.config(&runtime, &[(&pipeline, &env.testkit_pipeline(""))])?;
    let mut probes = evercache::status::Probes::new(&config)?;
    let running = Running::start(config).await?;
    wait_until("the snapshot of every row is cached", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        let env = &env;
        async move { Ok(stale_keys(env, &mut redis).await?.is_empty()) }
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_changes(
        env.pg.clone(),
        redis.clone(),
        env.prefix.clone(),
        stream.clone(),
        stop.clone(),
        appended.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let started = Instant::now();
    let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    blocking(Box::new(move || c.reshard(from, to, 2000))).await?;
    println!("resharded 2000 slots 127.0.0.1:{from} -> {to} in {:?} while writing", started.elapsed());
    let replica = cluster.replica_of(to);
    let c = cluster.clone();
    let started = Instant::now();
    blocking(Box::new(move || c.failover(replica))).await?;
    println!("promoted replica 127.0.0.1:{replica} of {to} in {:?} while writing", started.elapsed());
    let c = cluster.clone();
    blocking(Box::new(move || c.reshard(replica, from, 1000))).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    println!("{} change events appended during the moves", appended.load(Ordering::Relaxed));

    let converged = wait_until("every key equals its row", Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let env = &env;
        async move { Ok(stale_keys(env, &mut redis).await?.is_empty()) }
    })
    .await;
    if converged.is_err() {
        let stale = stale_keys(&env, &mut redis).await?;
        panic!("{} stale keys, e.g. {:?}", stale.len(), &stale[..stale.len().min(5)]);
    }
    let pending: Vec<redis::Value> =
        redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
    assert!(matches!(pending.first(), Some(redis::Value::Int(0))), "all acknowledged: {pending:?}");
    let dead: u64 = redis::cmd("XLEN").arg(format!("{stream}:dlq")).query_async(&mut redis).await?;
    assert_eq!(dead, 0, "nothing dead-lettered");
    let meta: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("{{{}:item:1}}:meta", env.prefix)).query_async(&mut redis).await?;
    assert!(meta.contains_key("pos"), "the metadata moved with its key: {meta:?}");
    let facts = probes.collect().await;
    assert!(facts.sources[0].up, "the stream's lag is read from its node: {:?}", facts.sources[0]);
    let used = facts.caches[0].used_memory.expect("INFO memory of every primary");
    assert!(used > 3 * 1_000_000, "the three primaries' memory, summed: {used}");
    running.stop().await
}

#[tokio::test]
async fn a_stream_source_whose_streams_do_not_share_a_slot_is_refused() -> Result<()> {
    let config: evercache::source::RedisStreamConfig = toml::from_str(
        r#"url = "redis://127.0.0.1:1"
cluster = true
streams = ["{shop}.public.product", "shop.public.category"]"#,
    )?;
    let error = config.build("cdc").await.err().expect("refused before connecting");
    assert!(
        error.to_string().contains(
            "`{shop}.public.product` and `shop.public.category` do not: give them one hash tag \
             (e.g. Debezium's topic.prefix = \"{shop}\") or use one source per stream"
        ),
        "{error}"
    );
    let tagged: evercache::source::RedisStreamConfig = toml::from_str(
        r#"url = "redis://127.0.0.1:1"
cluster = true
streams = ["{shop}.public.product", "{shop}.public.category"]"#,
    )?;
    let error = tagged.build("cdc").await.err().expect("nothing listens on port 1");
    assert!(!error.to_string().contains("share a slot"), "{error}");
    Ok(())
}
