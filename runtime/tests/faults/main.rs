//! The fault suite: the delivery guarantees under crashes, server restarts,
//! outages, reordering and several instances, and the healing from routine
//! operational events (database and Redis restarts, lost groups, hanging
//! plugins, a cache refusing writes, black-holed connections), against real
//! processes. Each scenario prints what it did and what it checked. Run it with
//! `cargo test -p evercache --test faults -- --nocapture --test-threads=1`.

mod black_hole;
mod cache_down;
mod cache_rollback;
mod cache_rollback_sources;
mod capture_read_ahead;
mod durability;
mod event_gaps;
mod harness;
#[cfg(feature = "kafka")]
mod kafka;
mod mariadb_items;
mod mariadb_restarts;
mod poison;
mod postgres_restarts;
mod proxy;
mod redis_failures;
mod repair_resume;
mod rollback_at_start;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evercache::contract::{CacheValue, Entry};
use evercache::event::position;
use evercache::sink::{
    CacheConfig, KeyAction, KeyVersion, KeyWrite, RedisWriter, VersionKind, WriteSettings, read_meta,
};
use harness::*;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

const CONVERGE: Duration = Duration::from_secs(180);

/// Positions increase across the whole test process, so later events sort later.
fn next_lsn() -> u64 {
    static LSN: AtomicU64 = AtomicU64::new(0x2000_0000);
    LSN.fetch_add(0x100, Ordering::SeqCst)
}

/// Commits one transaction updating rows `ids` and appends one change event
/// per id, retrying the appends while Redis is unreachable (as Debezium Server
/// would; a repeated append is a harmless duplicate).
async fn write_changes(pg: &PgPool, redis: &mut ConnectionManager, schema: &str, stream: &str, ids: &[i64]) {
    let tag = next_lsn();
    sqlx::query(&format!("update {schema}.item set version = version + 1, name = $2 where id = any($1)"))
        .bind(ids)
        .bind(format!("n{tag}"))
        .execute(pg)
        .await
        .unwrap();
    let mut append = redis::pipe();
    for &id in ids {
        let (key, value) = item_event(schema, "u", id, next_lsn());
        append.cmd("XADD").arg(stream).arg("*").arg(key).arg(value).ignore();
    }
    let start = Instant::now();
    while append.query_async::<()>(redis).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "Redis never came back for the writer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` random row ids out of `rows`.
fn random_ids(rng: &mut Rng, rows: i64, count: usize) -> Vec<i64> {
    (0..count).map(|_| rng.below(rows as u64) as i64 + 1).collect()
}

async fn manager(url: &str) -> ConnectionManager {
    redis::Client::open(url).unwrap().get_connection_manager().await.unwrap()
}

/// Waits until the group has nothing pending or undelivered and every key equals the database.
async fn converge(pg: &PgPool, redis_url: &str, schema: &str, streams: &[String], prefix: &str) {
    let mut redis = connect(redis_url).await;
    wait_until("every entry acknowledged and every key equal to the database", CONVERGE, || {
        let (pg, mut redis) = (pg.clone(), redis.clone());
        async move {
            for stream in streams {
                if backlog(&mut redis, stream).await != (0, 0) {
                    return false;
                }
            }
            mismatches(&pg, &mut redis, schema, prefix).await.is_empty()
        }
    })
    .await;
    for stream in streams {
        assert_eq!(backlog(&mut redis, stream).await, (0, 0), "XPENDING empty and nothing undelivered");
        assert_eq!(dead_letters(&mut redis, stream).await, 0, "nothing was dead-lettered");
    }
}

async fn cleanup(pg: &PgPool, name: &str) {
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sigkill_at_random_moments_loses_nothing() {
    let name = format!("fault_crash_{}", std::process::id());
    let (rows, updates) = (2_000, 20_000);
    let pg = PgPool::connect(SHARED_PG).await.expect("Postgres not reachable; run bash scripts/dev-services.sh");
    cleanup(&pg, &name).await;
    create_items(&pg, &name, rows).await;
    let stream = format!("{name}.{name}.item");
    let dir = scratch(&name);
    let streams = [stream.clone()];
    let setup = Setup {
        dir: &dir,
        redis_url: SHARED_REDIS,
        pg_url: SHARED_PG,
        schema: &name,
        streams: &streams,
        consumer: "c1",
        source_extra: "",
    };
    let config = setup.write(&format!("{name}:item"));
    let mut rng = Rng::new("crash");
    let mut runtime = RuntimeProcess::start(&config, &dir.join("runtime.log"));

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pg, name, stream, done) = (pg.clone(), name.clone(), stream.clone(), done.clone());
        let mut rng = Rng::new("crash-writer");
        tokio::spawn(async move {
            let mut redis = manager(SHARED_REDIS).await;
            for _ in 0..updates / 20 {
                write_changes(&pg, &mut redis, &name, &stream, &random_ids(&mut rng, rows, 20)).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let started = Instant::now();
    let mut kills = 0;
    while !done.load(Ordering::SeqCst) || kills < 5 {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1_200))).await;
        runtime.restart();
        kills += 1;
    }
    writer.await.unwrap();
    let writing = started.elapsed();
    let settle = Instant::now();
    converge(&pg, SHARED_REDIS, &name, &streams, &format!("{name}:item")).await;
    println!(
        "[crash] {updates} row changes (transactions of 20) over {rows} keys in {writing:.1?}, runtime SIGKILLed {kills} times and restarted; \
         converged {:.1?} after the last write: every key equals the database, XPENDING empty, 0 dead letters",
        settle.elapsed()
    );
    runtime.stop();
    cleanup(&pg, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_loses_nothing_and_reconnects() {
    let name = format!("fault_redis_{}", std::process::id());
    let (rows, updates) = (300, 4_000);
    let dir = scratch(&name);
    let mut server = RedisServer::start(&dir);
    let redis_url = server.url();
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    cleanup(&pg, &name).await;
    create_items(&pg, &name, rows).await;
    let stream = format!("{name}.{name}.item");
    let streams = [stream.clone()];
    let setup = Setup {
        dir: &dir,
        redis_url: &redis_url,
        pg_url: SHARED_PG,
        schema: &name,
        streams: &streams,
        consumer: "c1",
        source_extra: "",
    };
    let mut runtime = RuntimeProcess::start(&setup.write(&format!("{name}:item")), &dir.join("runtime.log"));
    let mut rng = Rng::new("redis");
    let mut redis = manager(&redis_url).await;
    let started = Instant::now();
    let mut down_for = Duration::ZERO;
    for i in 0..updates / 10 {
        if i == updates / 20 {
            let down = Instant::now();
            server.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            server.restart();
            down_for = down.elapsed();
        }
        write_changes(&pg, &mut redis, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
    }
    let settle = Instant::now();
    converge(&pg, &redis_url, &name, &streams, &format!("{name}:item")).await;
    println!(
        "[redis restart] {updates} updates over {rows} keys in {:.1?}; the stream+cache server was SIGKILLed mid-run and \
         restarted from its AOF after {down_for:.1?}; the runtime reconnected by itself and converged {:.1?} after the \
         last write: every key equals the database, XPENDING empty, 0 dead letters",
        settle.duration_since(started),
        settle.elapsed()
    );
    runtime.stop();
    cleanup(&pg, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_waited_out_without_acks_or_dead_letters() {
    let name = format!("fault_pg_{}", std::process::id());
    let rows = 300;
    let dir = scratch(&name);
    let cluster = PgCluster::start(&dir);
    let pg_url = cluster.url();
    let pg = PgPool::connect(&pg_url).await.unwrap();
    create_items(&pg, &name, rows).await;
    let shared_pg = PgPool::connect(SHARED_PG).await.unwrap();
    cleanup(&shared_pg, &name).await;
    let stream = format!("{name}.{name}.item");
    let streams = [stream.clone()];
    let setup = Setup {
        dir: &dir,
        redis_url: SHARED_REDIS,
        pg_url: &pg_url,
        schema: &name,
        streams: &streams,
        consumer: "c1",
        source_extra: "",
    };
    let mut runtime = RuntimeProcess::start(&setup.write(&format!("{name}:item")), &dir.join("runtime.log"));
    let mut redis = manager(SHARED_REDIS).await;
    let mut rng = Rng::new("postgres");
    for _ in 0..100 {
        write_changes(&pg, &mut redis, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
    }
    // Changes committed just before the outage; their events reach the runtime during it.
    let late: Vec<(String, String)> = {
        let mut events = Vec::new();
        for id in 1..=100 {
            let lsn = next_lsn();
            sqlx::query(&format!("update {name}.item set version = version + 1, name = $2 where id = $1"))
                .bind(id)
                .bind(format!("n{lsn}"))
                .execute(&pg)
                .await
                .unwrap();
            events.push(item_event(&name, "u", id, lsn));
        }
        events
    };
    pg.close().await;
    let outage = Instant::now();
    cluster.stop_server();
    // One round trip, so the runtime reads them as one batch it cannot finish.
    let mut append = redis::pipe();
    for (key, value) in &late {
        append.cmd("XADD").arg(&stream).arg("*").arg(key).arg(value).ignore();
    }
    let _: () = append.query_async(&mut redis).await.unwrap();
    let mut conn = connect(SHARED_REDIS).await;
    let mut held = (0, 0);
    while outage.elapsed() < Duration::from_secs(5) {
        let (pending, undelivered) = backlog(&mut conn, &stream).await;
        held = held.max((pending, undelivered));
        assert_eq!(dead_letters(&mut conn, &stream).await, 0, "an outage never dead-letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pending, _) = backlog(&mut conn, &stream).await;
    assert!(pending > 0, "the entries read during the outage stay pending (not acked): {pending}");
    cluster.start_server();
    let down_for = outage.elapsed();
    let pg = PgPool::connect(&pg_url).await.unwrap();
    let settle = Instant::now();
    converge(&pg, SHARED_REDIS, &name, &streams, &format!("{name}:item")).await;
    println!(
        "[postgres outage] 1100 updates over {rows} keys; Postgres down for {down_for:.1?} while 100 events arrived: \
         {pending} entries stayed pending (max pending/undelivered seen {held:?}), 0 dead letters; converged {:.1?} after \
         it returned: every key equals the database, XPENDING empty",
        settle.elapsed()
    );
    runtime.stop();
    cleanup(&shared_pg, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_duplicated_delivery_gives_the_same_cache() {
    let name = format!("fault_order_{}", std::process::id());
    let rows = 200;
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    cleanup(&pg, &name).await;
    create_items(&pg, &name, rows).await;
    let (ordered, shuffled) = (format!("{name}.{name}.item"), format!("{name}.{name}.shuffled"));
    let mut runtimes = Vec::new();
    for (stream, prefix) in [(&ordered, "a"), (&shuffled, "b")] {
        let dir = scratch(&format!("{name}_{prefix}"));
        let streams = [stream.clone()];
        let setup = Setup {
            dir: &dir,
            redis_url: SHARED_REDIS,
            pg_url: SHARED_PG,
            schema: &name,
            streams: &streams,
            consumer: prefix,
            source_extra: "",
        };
        runtimes.push(RuntimeProcess::start(&setup.write(&format!("{name}:{prefix}")), &dir.join("runtime.log")));
    }
    let mut rng = Rng::new("reorder");
    let mut redis = manager(SHARED_REDIS).await;
    let (mut events, mut delivered) = (0, 0);
    for _round in 0..4 {
        let mut batch = Vec::new();
        for _ in 0..500 {
            let (id, lsn) = (rng.below(rows as u64) as i64 + 1, next_lsn());
            sqlx::query(&format!("update {name}.item set version = version + 1, name = $2 where id = $1"))
                .bind(id)
                .bind(format!("n{lsn}"))
                .execute(&pg)
                .await
                .unwrap();
            batch.push(item_event(&name, "u", id, lsn));
        }
        let mut mixed = batch.clone();
        for i in 0..batch.len() / 3 {
            mixed.push(batch[(i * 7) % batch.len()].clone());
        }
        for i in (1..mixed.len()).rev() {
            mixed.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (key, value) in &batch {
            let _: String =
                redis::cmd("XADD").arg(&ordered).arg("*").arg(key).arg(value).query_async(&mut redis).await.unwrap();
        }
        for (key, value) in &mixed {
            let _: String =
                redis::cmd("XADD").arg(&shuffled).arg("*").arg(key).arg(value).query_async(&mut redis).await.unwrap();
        }
        events += batch.len();
        delivered += mixed.len();
    }
    converge(&pg, SHARED_REDIS, &name, std::slice::from_ref(&ordered), &format!("{name}:a")).await;
    converge(&pg, SHARED_REDIS, &name, std::slice::from_ref(&shuffled), &format!("{name}:b")).await;
    let mut conn = connect(SHARED_REDIS).await;
    for id in 1..=rows {
        let (a, b) = (format!("{name}:a:{id}"), format!("{name}:b:{id}"));
        let values: (Option<String>, Option<String>) =
            redis::cmd("MGET").arg(&a).arg(&b).query_async(&mut conn).await.unwrap();
        assert_eq!(values.0, values.1, "row {id}: the same value whatever the delivery order");
        let (meta_a, meta_b) = (read_meta(&mut conn, &a).await.unwrap(), read_meta(&mut conn, &b).await.unwrap());
        assert_eq!(meta_a.map(|m| m.position), meta_b.map(|m| m.position), "row {id}: the same version");
    }
    println!(
        "[reorder] {events} changes over {rows} keys delivered in order to one runtime and shuffled with duplicates \
         ({delivered} entries) to another: identical values and versions for all {rows} keys, both equal to the database"
    );
    for mut runtime in runtimes {
        runtime.stop();
    }
    cleanup(&pg, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survivors_claim_a_killed_instances_entries() {
    let name = format!("fault_group_{}", std::process::id());
    let (rows, updates) = (500, 6_000);
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    cleanup(&pg, &name).await;
    create_items(&pg, &name, rows).await;
    let stream = format!("{name}.{name}.item");
    let streams = [stream.clone()];
    let dir = scratch(&name);
    let mut instances: Vec<RuntimeProcess> = ["c1", "c2", "c3"]
        .iter()
        .map(|consumer| {
            let setup = Setup {
                dir: &dir,
                redis_url: SHARED_REDIS,
                pg_url: SHARED_PG,
                schema: &name,
                streams: &streams,
                consumer,
                source_extra: "batch_size = 20\nclaim_idle = \"1s\"",
            };
            RuntimeProcess::start(&setup.write(&format!("{name}:item")), &dir.join(format!("{consumer}.log")))
        })
        .collect();
    let mut rng = Rng::new("group");
    let mut redis = manager(SHARED_REDIS).await;
    let mut conn = connect(SHARED_REDIS).await;
    let mut orphaned = 0;
    for i in 0..updates / 10 {
        write_changes(&pg, &mut redis, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
        // Kill c2 while it holds unacknowledged entries: frozen, it cannot ack
        // them between the look and the kill.
        if i >= updates / 30 && orphaned == 0 {
            instances[1].freeze(true);
            orphaned = consumer_pending(&mut conn, &stream, "c2").await;
            if orphaned > 0 {
                instances[1].kill();
            } else {
                instances[1].freeze(false);
            }
        }
    }
    assert!(orphaned > 0, "c2 was killed while it held pending entries");
    let settle = Instant::now();
    converge(&pg, SHARED_REDIS, &name, &streams, &format!("{name}:item")).await;
    assert_eq!(consumer_pending(&mut conn, &stream, "c2").await, 0, "the survivors claimed c2's entries");
    println!(
        "[three instances] {updates} updates over {rows} keys consumed by 3 instances in one group; c2 SIGKILLed holding \
         {orphaned} unacknowledged entries, which the survivors claimed (claim_idle 1s); converged {:.1?} after the last \
         write: every key equals the database, XPENDING empty, 0 dead letters",
        settle.elapsed()
    );
    for instance in &mut instances {
        instance.stop();
    }
    cleanup(&pg, &name).await;
}

async fn consumer_pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str, consumer: &str) -> u64 {
    let entries: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("evercache")
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(consumer)
        .query_async(conn)
        .await
        .unwrap_or_default();
    entries.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_stale_recompute_never_resurrects_a_deleted_key() {
    let name = format!("fault_delete_{}", std::process::id());
    let keys = 500;
    let cache = CacheConfig {
        url: SHARED_REDIS.into(),
        password_file: None,
        cluster: false,
        unsafe_eviction: Default::default(),
        tls: None,
        tombstone_ttl: Duration::from_secs(600),
        response_timeout: Duration::from_secs(10),
        durability: None,
    }
    .build("faults")
    .await
    .unwrap();
    let writer =
        Arc::new(RedisWriter::new(cache, WriteSettings { pipeline: name.clone(), safety_ttl: None, ttl_jitter: None }));
    let mut rng = Rng::new("delete");
    let version = |lsn: u64| KeyVersion {
        position: position::postgres(lsn, lsn),
        kind: VersionKind::Change,
        committed_at_ms: 1,
        read_at_ms: 2,
    };
    let (stale, deleted) = (next_lsn(), next_lsn());
    let mut tasks = Vec::new();
    for id in 0..keys {
        let key = format!("{name}:item:{id}");
        let put = KeyWrite {
            key: key.clone(),
            action: KeyAction::Put(CacheValue { entry: Entry::Text("stale".into()), ttl_seconds: None }),
            version: version(stale),
        };
        let delete = KeyWrite { key, action: KeyAction::Delete, version: version(deleted) };
        // The stale recompute and the delete race, each delivered twice, in a random order.
        let mut writes = vec![put.clone(), delete.clone(), put, delete];
        for i in (1..writes.len()).rev() {
            writes.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for write in writes {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move { writer.write("faults@test", &[write]).await.unwrap() }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    // And one more stale recompute arriving long after the delete.
    let mut late = Vec::new();
    for id in 0..keys {
        late.push(KeyWrite {
            key: format!("{name}:item:{id}"),
            action: KeyAction::Put(CacheValue { entry: Entry::Text("late".into()), ttl_seconds: None }),
            version: version(stale),
        });
    }
    let report = writer.write("faults@test", &late).await.unwrap();
    assert_eq!(report.stale, keys, "every late write is rejected as stale");
    let mut conn = connect(SHARED_REDIS).await;
    for id in 0..keys {
        let key = format!("{name}:item:{id}");
        let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
        assert_eq!(value, None, "{key} stays deleted");
        let meta = read_meta(&mut conn, &key).await.unwrap().expect("tombstone version kept");
        assert!(meta.deleted && meta.position == position::postgres(deleted, deleted), "{key}: {meta:?}");
    }
    println!(
        "[delete race] {keys} keys: a stale recompute and the newer delete written concurrently, each twice, in random \
         order, then a late stale write: all {keys} keys stay deleted with the delete's tombstone version"
    );
    clear_prefix(&mut conn, &name).await;
}
