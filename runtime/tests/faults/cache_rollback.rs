//! A cache Redis that comes back older than evercache's writes: restarted from
//! an RDB snapshot taken before the last changes, or a replica promoted before
//! it caught up. The source was already told those writes were done, so only
//! the watermark can tell; the runtime must repair every key from the database
//! with no further change to any row.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evercache_test_kit::tcp_proxy::TcpProxy;
use redis::aio::{ConnectionManager, MultiplexedConnection};

use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::proxy::Proxy;
use crate::{next_lsn, write_changes};

/// How long a repair may take to bring every key back to the database.
const REPAIRED: Duration = Duration::from_secs(60);
/// Rows at the start; the rows inserted later come after them.
const ROWS: i64 = 300;
const DELETED: RangeInclusive<i64> = 1..=10;
const INSERTED: RangeInclusive<i64> = ROWS + 1..=ROWS + 10;

/// Keys of `<schema>:item` that differ from the rows now (see [`strict_differences`]).
async fn differences(pg: &PgPool, cache: &mut MultiplexedConnection, schema: &str) -> Vec<String> {
    let rows: Vec<ItemRow> = sqlx::query_as(&format!("select id, name, version from {schema}.item order by id"))
        .fetch_all(pg)
        .await
        .unwrap();
    strict_differences(&rows, cache, &format!("{schema}:item")).await
}

/// Waits until every key in the cache at `cache_url` equals the database;
/// on timeout, names the keys that still differ.
async fn cache_equals_db(pg: &PgPool, cache_url: &str, schema: &str, what: &str) {
    let cache = connect(cache_url).await;
    let waited = evercache_test_kit::wait_until(what, REPAIRED, || {
        let (pg, mut cache) = (pg.clone(), cache.clone());
        async move { Ok(differences(&pg, &mut cache, schema).await.is_empty()) }
    })
    .await;
    if let Err(e) = waited {
        panic!("{e}; still differing: {:?}", differences(pg, &mut cache.clone(), schema).await);
    }
}

/// Deletes rows [`DELETED`] and inserts rows [`INSERTED`], returning the events
/// a connector would stream for them.
async fn delete_and_insert(pg: &PgPool, schema: &str) -> Vec<(String, String)> {
    sqlx::raw_sql(&format!(
        "delete from {schema}.item where id between {} and {};
         insert into {schema}.item select g, 'inserted', 1 from generate_series({}, {}) g;",
        DELETED.start(),
        DELETED.end(),
        INSERTED.start(),
        INSERTED.end()
    ))
    .execute(pg)
    .await
    .unwrap();
    let deletes = DELETED.map(|id| item_event(schema, "d", id, next_lsn()));
    deletes.chain(INSERTED.map(|id| item_event(schema, "c", id, next_lsn()))).collect()
}

/// The testkit pipeline over `<schema>.item`, owning its keys: the repair
/// finds a deleted row's key (back with the older cache) only by its pattern.
fn owning_pipeline(source: &str, schema: &str) -> String {
    let prefix = format!("{schema}:item");
    testkit_pipeline(source, schema, &prefix, &format!("key_patterns = [\"{prefix}:*\"]"), "")
}

/// The watch looks at the cache every 2 s; it must have seen the server once
/// to tell that it restarted.
async fn let_the_watch_look() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Polls `/ready` until it names a repair; aborted if the repair was too quick to see.
fn watch_repairing(port: u16) -> JoinHandle<Option<String>> {
    tokio::spawn(async move {
        loop {
            if let Some((false, reasons)) = readiness(port).await
                && let Some(reason) = reasons.into_iter().find(|r| r.contains("repairing pipeline"))
            {
                return Some(reason);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// After the cache lost writes at `lost_at`: every key equals the database
/// within [`REPAIRED`], the loss was counted and repaired (by replaying the
/// source when `replayed`, else by recomputing), the log says so. What was
/// measured, for the scenario's line.
#[allow(clippy::too_many_arguments)]
async fn assert_repaired(
    pg: &PgPool,
    cache_url: &str,
    schema: &str,
    port: u16,
    log: &Path,
    lost_at: Instant,
    watch: JoinHandle<Option<String>>,
    replayed: bool,
) -> String {
    let what = "every key equal to the database after the cache came back older, with no change to any row";
    cache_equals_db(pg, cache_url, schema, what).await;
    let converged = lost_at.elapsed();
    let (counter, labels): (&str, &[(&str, &str)]) = if replayed {
        ("evercache_loss_replays_total", &[])
    } else {
        ("evercache_loss_repairs_total", &[("pipeline", "items"), ("outcome", "done")])
    };
    wait_until("a repair done", REPAIRED, || async { metric(port, counter, labels).await >= 1.0 }).await;
    let repaired = lost_at.elapsed();
    if replayed {
        let recomputed = metric(port, "evercache_loss_repairs_total", &[("pipeline", "items")]).await;
        assert_eq!(recomputed, 0.0, "a loss the stream could deliver again is replayed, not recomputed");
    }
    let mut cache = connect(cache_url).await;
    let left = differences(pg, &mut cache, schema).await;
    assert!(left.is_empty(), "the repair's table scan left keys unequal to the database: {left:?}");
    let rollbacks = metric(port, "evercache_cache_rollbacks_total", &[("cache", "main")]).await;
    assert!(rollbacks >= 1.0, "the rollback was counted: {rollbacks}");
    let restarts = metric(port, "evercache_cache_restarts_total", &[("cache", "main")]).await;
    assert!(restarts >= 1.0, "the cache's new run_id was noticed: {restarts}");
    let failed = metric(port, "evercache_loss_repairs_total", &[("outcome", "failed")]).await;
    let keys = metric(port, "evercache_loss_repaired_keys_total", &[("pipeline", "items")]).await;
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("came back older"), "the runtime's log names the rollback");
    let seen = if watch.is_finished() {
        watch.await.unwrap()
    } else {
        watch.abort();
        None
    };
    format!(
        "every key equal to the database {converged:.1?} after the fault, {} {repaired:.1?} after it \
         ({} keys recomputed, {} failed attempts); rollbacks {rollbacks}, restarts seen {restarts}; \
         /ready during the repair: {}",
        if replayed { "the lost batches delivered again (no recompute)" } else { "repair done" },
        keys as u64,
        failed as u64,
        seen.as_deref().unwrap_or("(too quick to see)")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_cache_restarted_from_an_older_snapshot_is_repaired() {
    let name = format!("fault_rollback_pg_{}", std::process::id());
    let dir = scratch(&name);
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, ROWS).await;
    let mut shared = connect(SHARED_REDIS).await;
    clear_prefix(&mut shared, &name).await;
    let mut cache = RedisServer::start_snapshotting(&dir, "cache");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .database("db", SHARED_PG)
        .cache("main", &cache.url())
        .postgres_capture("capture", SHARED_PG, &[format!("{name}.item")], &name, SHARED_REDIS)
        .line(&format!("topic_prefix = \"{name}\""));
    let config = write_config(&dir, runtime, &[("items", owning_pipeline("capture", &name))]);
    let log = dir.join("runtime.log");
    let mut process = RuntimeProcess::start(&config, &log);
    cache_equals_db(&pg, &cache.url(), &name, "the capture's snapshot cached").await;

    let update = |ids: RangeInclusive<i64>| {
        let sql = format!(
            "update {name}.item set version = version + 1, name = 'n' || (version + 1) where id between {} and {}",
            ids.start(),
            ids.end()
        );
        let pg = pg.clone();
        async move { sqlx::raw_sql(&sql).execute(&pg).await.unwrap() }
    };
    update(1..=100).await;
    cache_equals_db(&pg, &cache.url(), &name, "the first changes cached").await;
    cache.save();
    update(101..=200).await;
    delete_and_insert(&pg, &name).await;
    cache_equals_db(&pg, &cache.url(), &name, "the changes after the snapshot cached").await;

    let_the_watch_look().await;
    let watch = watch_repairing(port);
    cache.kill();
    cache.restart();
    let lost_at = Instant::now();
    let report = assert_repaired(&pg, &cache.url(), &name, port, &log, lost_at, watch, false).await;
    let stream = format!("{name}.{name}.item");
    assert_eq!(dead_letters(&mut shared, &stream).await, 0, "nothing was dead-lettered");
    println!(
        "[cache rollback, capture] {ROWS} rows snapshotted by the built-in capture, 100 updated, RDB saved, then 100 \
         updated, 10 deleted and 10 inserted and cached; the cache SIGKILLed and restarted from the older RDB: \
         {report}; 0 dead letters"
    );
    process.stop();
    evercache_test_kit::drop_released_slot(&name);
    let _ = sqlx::raw_sql(&format!("drop publication if exists {name}; drop schema if exists {name} cascade"))
        .execute(&pg)
        .await;
    clear_prefix(&mut shared, &name).await;
}

/// A Redis Streams source on the shared Redis feeding one testkit pipeline
/// that caches into `cache_url`.
struct StreamRig {
    pg: PgPool,
    name: String,
    stream: String,
    port: u16,
    log: PathBuf,
    writer: ConnectionManager,
    process: RuntimeProcess,
}

impl StreamRig {
    async fn start(name: &str, dir: &Path, cache_url: &str) -> Self {
        let pg = PgPool::connect(SHARED_PG).await.unwrap();
        create_items(&pg, name, ROWS).await;
        clear_prefix(&mut connect(SHARED_REDIS).await, name).await;
        let stream = format!("{name}.{name}.item");
        let port = free_port();
        let runtime = RuntimeToml::new().http(port).database("db", SHARED_PG).cache("main", cache_url).redis_stream(
            "events",
            SHARED_REDIS,
            std::slice::from_ref(&stream),
            "c1",
        );
        let config = write_config(dir, runtime, &[("items", owning_pipeline("events", name))]);
        let log = dir.join("runtime.log");
        let process = RuntimeProcess::start(&config, &log);
        wait_ready(port, true, Duration::from_secs(60)).await;
        let writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
        Self { pg, name: name.to_owned(), stream, port, log, writer, process }
    }

    async fn update(&mut self, ids: RangeInclusive<i64>) {
        let ids: Vec<i64> = ids.collect();
        for chunk in ids.chunks(100) {
            write_changes(&self.pg, &mut self.writer, &self.name, &self.stream, chunk).await;
        }
    }

    async fn delete_and_insert(&mut self) {
        let mut append = redis::pipe();
        for (key, value) in delete_and_insert(&self.pg, &self.name).await {
            append.cmd("XADD").arg(&self.stream).arg("*").arg(key).arg(value).ignore();
        }
        let () = append.query_async(&mut self.writer).await.unwrap();
    }

    /// Waits until the stream is drained and every key in `cache_url` equals the database.
    async fn settled(&self, cache_url: &str, what: &str) {
        let shared = connect(SHARED_REDIS).await;
        wait_until(&format!("{what}: the stream drained"), REPAIRED, || {
            let mut shared = shared.clone();
            async move { backlog(&mut shared, &self.stream).await == (0, 0) }
        })
        .await;
        cache_equals_db(&self.pg, cache_url, &self.name, what).await;
    }

    async fn assert_repaired(&self, cache_url: &str, lost_at: Instant, watch: JoinHandle<Option<String>>) -> String {
        let report = assert_repaired(&self.pg, cache_url, &self.name, self.port, &self.log, lost_at, watch, true).await;
        let mut shared = connect(SHARED_REDIS).await;
        // Entries delivered again are acknowledged once their batch settles, a moment after their writes.
        wait_until("XPENDING empty and nothing undelivered", Duration::from_secs(30), || {
            let (mut shared, stream) = (shared.clone(), self.stream.clone());
            async move { backlog(&mut shared, &stream).await == (0, 0) }
        })
        .await;
        assert_eq!(dead_letters(&mut shared, &self.stream).await, 0, "nothing was dead-lettered");
        report
    }

    async fn finish(mut self) {
        self.process.stop();
        clear_prefix(&mut connect(SHARED_REDIS).await, &self.name).await;
        let _ = sqlx::query(&format!("drop schema if exists {} cascade", self.name)).execute(&self.pg).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_cache_restarted_from_an_older_snapshot_is_repaired() {
    let name = format!("fault_rollback_xs_{}", std::process::id());
    let dir = scratch(&name);
    let mut cache = RedisServer::start_snapshotting(&dir, "cache");
    let mut rig = StreamRig::start(&name, &dir, &cache.url()).await;
    rig.update(1..=ROWS).await;
    rig.settled(&cache.url(), "every row cached").await;
    cache.save();
    rig.update(101..=200).await;
    rig.delete_and_insert().await;
    rig.settled(&cache.url(), "the changes after the snapshot cached").await;

    let_the_watch_look().await;
    let watch = watch_repairing(rig.port);
    cache.kill();
    cache.restart();
    let lost_at = Instant::now();
    let report = rig.assert_repaired(&cache.url(), lost_at, watch).await;
    println!(
        "[cache rollback, streams] {ROWS} rows cached from a Redis stream, RDB saved, then 100 updated, 10 deleted \
         and 10 inserted and cached; the cache SIGKILLed and restarted from the older RDB: {report}; XPENDING \
         empty, 0 dead letters"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_before_it_caught_up_is_repaired() {
    let name = format!("fault_rollback_promote_{}", std::process::id());
    let dir = scratch(&name);
    let mut primary = RedisServer::start_volatile(&dir, "primary");
    // The replica replicates through a proxy that can cut it off: a frozen
    // (SIGSTOP) replica still gets what its kernel buffers, and catches up.
    let link = Proxy::start(([127, 0, 0, 1], primary.port).into()).await;
    let mut replica = RedisServer::start_replica(&dir, "replica", link.port);
    // The runtime keeps one address while the server behind it changes, as with a virtual IP.
    let proxy = TcpProxy::start(primary.port).await;
    let mut rig = StreamRig::start(&name, &dir, &proxy.url(&primary.url())).await;
    rig.update(1..=ROWS).await;
    rig.settled(&primary.url(), "every row cached").await;
    // WAIT counts the replicas that acknowledged this client's last write, and
    // so everything the primary applied before it.
    let mut admin = connect(&primary.url()).await;
    admin.set_response_timeout(Duration::from_secs(15));
    let () = redis::cmd("SET").arg(format!("{name}:marker")).arg(1).query_async(&mut admin).await.unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query_async(&mut admin).await.unwrap();
    assert_eq!(acked, 1, "the replica caught up before it was cut off");

    link.black_hole(true);
    rig.update(101..=200).await;
    rig.delete_and_insert().await;
    rig.settled(&primary.url(), "the changes the cut-off replica misses cached").await;

    let_the_watch_look().await;
    let watch = watch_repairing(rig.port);
    primary.kill();
    replica.promote();
    proxy.switch_to(replica.port);
    let lost_at = Instant::now();
    let report = rig.assert_repaired(&replica.url(), lost_at, watch).await;
    println!(
        "[cache rollback, promotion] {ROWS} rows cached from a Redis stream through a proxy to the primary and \
         replicated; the replica cut off, then 100 rows updated, 10 deleted and 10 inserted and cached on the \
         primary; the primary SIGKILLed, the replica promoted and the proxy switched to it: {report}; XPENDING \
         empty, 0 dead letters"
    );
    rig.finish().await;
}
