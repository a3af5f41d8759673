//! A cache Redis restarted from an RDB snapshot older than evercache's writes,
//! under the built-in MariaDB binlog capture and under a Kafka topic of
//! Debezium events. Both sources were already told the lost writes were done
//! (a stored binlog position, committed offsets), so only the watermark can
//! tell; every key must come back equal to the database with no further change
//! to any row.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use redis::aio::MultiplexedConnection;

use sqlx::PgPool;

use crate::harness::*;

/// How long a repair may take to bring every key back to the database.
const REPAIRED: Duration = Duration::from_secs(60);
const ROWS: i64 = 300;
/// Cached before the snapshot: the deletes after it remove keys the snapshot still holds.
const DELETED: RangeInclusive<i64> = 1..=10;
const INSERTED: RangeInclusive<i64> = ROWS + 1..=ROWS + 10;

type Row = ItemRow;

/// Where a scenario's `<schema>.item` rows live.
enum Db {
    Postgres(PgPool),
    MariaDb(mysql_async::Pool),
}

impl Db {
    async fn execute(&self, sql: &str) {
        match self {
            Db::Postgres(pg) => drop(sqlx::raw_sql(sql).execute(pg).await.unwrap()),
            Db::MariaDb(pool) => pool.get_conn().await.unwrap().query_drop(sql).await.unwrap(),
        }
    }

    /// The rows by id, or None while the database does not answer.
    async fn rows(&self, schema: &str) -> Option<Vec<Row>> {
        let sql = format!("select id, name, version from {schema}.item order by id");
        match self {
            Db::Postgres(pg) => sqlx::query_as(&sql).fetch_all(pg).await.ok(),
            Db::MariaDb(pool) => pool.get_conn().await.ok()?.query(sql).await.ok(),
        }
    }

    /// Updates rows `ids`; the (op, id) changes made.
    async fn update(&self, schema: &str, ids: RangeInclusive<i64>) -> Vec<(&'static str, i64)> {
        let (first, last) = (ids.start(), ids.end());
        let sql = format!(
            "update {schema}.item set version = version + 1, name = concat('n', version) \
             where id between {first} and {last}"
        );
        self.execute(&sql).await;
        ids.map(|id| ("u", id)).collect()
    }

    /// Deletes rows [`DELETED`] and inserts rows [`INSERTED`]; the (op, id) changes made.
    async fn delete_and_insert(&self, schema: &str) -> Vec<(&'static str, i64)> {
        let (first, last) = (DELETED.start(), DELETED.end());
        self.execute(&format!("delete from {schema}.item where id between {first} and {last}")).await;
        let values: Vec<String> = INSERTED.map(|id| format!("({id}, 'inserted', 1)")).collect();
        self.execute(&format!("insert into {schema}.item (id, name, version) values {}", values.join(", "))).await;
        DELETED.map(|id| ("d", id)).chain(INSERTED.map(|id| ("c", id))).collect()
    }
}

/// Keys under `prefix` that differ from the rows now (see [`strict_differences`]).
async fn differences(db: &Db, cache: &mut MultiplexedConnection, schema: &str, prefix: &str) -> Vec<String> {
    let Some(rows) = db.rows(schema).await else { return vec!["(the database does not answer)".into()] };
    strict_differences(&rows, cache, prefix).await
}

/// Waits until every key in the cache at `cache_url` equals the database; how
/// long that took. A timeout names the keys still different.
async fn cache_equals_db(db: &Db, cache_url: &str, schema: &str, prefix: &str, what: &str) -> Duration {
    let mut cache = connect(cache_url).await;
    let start = Instant::now();
    loop {
        let wrong = differences(db, &mut cache, schema, prefix).await;
        if wrong.is_empty() {
            return start.elapsed();
        }
        let first: Vec<&String> = wrong.iter().take(20).collect();
        assert!(start.elapsed() < REPAIRED, "{what}: {} keys still differ after {REPAIRED:?}: {first:?}", wrong.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pipeline's `key_patterns`: only keys it owns are found in the cache, so a
/// key whose row was deleted after the snapshot can go.
fn owns(prefix: &str) -> String {
    format!("key_patterns = [\"{prefix}:*\"]")
}

/// What a scenario asserts about: its rows, the rolled-back cache, the runtime.
struct Rollback<'a> {
    db: &'a Db,
    schema: &'a str,
    prefix: &'a str,
    port: u16,
    log: &'a Path,
}

impl Rollback<'_> {
    /// SIGKILLs the cache and restarts it from its older RDB while the runtime
    /// is frozen, checks the cache lost the writes after the snapshot, then
    /// resumes the runtime and asserts every key equals the database within
    /// [`REPAIRED`] with no change to any row, the loss counted and repaired,
    /// the log naming it and nothing dead-lettered. What was measured, for the
    /// scenario's line.
    async fn roll_back_and_check(&self, cache: &mut RedisServer, process: &mut RuntimeProcess) -> String {
        let (db, schema, prefix, port) = (self.db, self.schema, self.prefix, self.port);
        // Frozen meanwhile, the runtime cannot repair before the stale keys are counted.
        process.freeze(true);
        cache.kill();
        cache.restart();
        let stale = differences(db, &mut connect(&cache.url()).await, schema, prefix).await.len();
        let lost = 100 + DELETED.count() + INSERTED.count();
        assert_eq!(stale, lost, "the restarted cache lacks the writes after the snapshot");
        let watch = tokio::spawn(wait_reason(port, "repairing pipeline", REPAIRED));
        process.freeze(false);
        let lost_at = Instant::now();
        let what = "every key equal to the database after the cache came back older, with no change to any row";
        cache_equals_db(db, &cache.url(), schema, prefix, what).await;
        let converged = lost_at.elapsed();
        let done = [("pipeline", "items"), ("outcome", "done")];
        wait_until("a repair done", REPAIRED, || async {
            metric(port, "evercache_loss_repairs_total", &done).await >= 1.0
        })
        .await;
        let repaired = lost_at.elapsed();
        let (ready_after, _) = wait_ready(port, true, REPAIRED).await;
        // The repair's table scan ran after the first look; it must not have undone anything.
        let left = differences(db, &mut connect(&cache.url()).await, schema, prefix).await;
        assert!(left.is_empty(), "after the repair, keys unequal to the database: {left:?}");
        let rollbacks = metric(port, "evercache_cache_rollbacks_total", &[("cache", "main")]).await;
        assert!(rollbacks >= 1.0, "the rollback was counted: {rollbacks}");
        let dead = metric(port, "evercache_dead_letters_total", &[]).await;
        assert_eq!(dead, 0.0, "nothing was dead-lettered");
        let keys = metric(port, "evercache_loss_repaired_keys_total", &[("pipeline", "items")]).await as u64;
        let failed = metric(port, "evercache_loss_repairs_total", &[("outcome", "failed")]).await as u64;
        let text = std::fs::read_to_string(self.log).unwrap();
        assert!(text.contains("came back older"), "the runtime's log names the rollback");
        let seen = if watch.is_finished() {
            watch.await.ok()
        } else {
            watch.abort();
            None
        };
        format!(
            "{stale} keys stale after the restart; every key equal to the database {converged:.1?} after the \
             runtime resumed, repair done {repaired:.1?} after it ({keys} keys recomputed, {failed} failed \
             attempts), ready again {ready_after:.1?} later; rollbacks {rollbacks}, 0 dead letters; /ready during \
             the repair: {}",
            seen.as_deref().unwrap_or("(too quick to see)")
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binlog_capture_cache_restarted_from_an_older_snapshot_is_repaired() {
    let name = format!("fault_rbmaria_{}", std::process::id());
    let dir = scratch(&name);
    let url = evercache_test_kit::MYSQL_URL;
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(url).unwrap());
    let db = Db::MariaDb(pool.clone());
    db.execute(&format!("drop database if exists {name}")).await;
    crate::mariadb_items::create_items(&pool, &name, ROWS as u64).await;
    // The stored binlog position and dead letters live on the shared Redis, which keeps them.
    let mut shared = connect(SHARED_REDIS).await;
    clear_prefix(&mut shared, &name).await;
    let mut cache = RedisServer::start_snapshotting(&dir, "cache");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .database("db", &format!("{url}/{name}"))
        .cache("main", &cache.url())
        .mysql_capture(
            "capture",
            &[format!("{name}.item")],
            7_000_000 + std::process::id() % 1_000_000,
            &name,
            SHARED_REDIS,
        );
    let prefix = format!("{name}:item");
    let pipeline = testkit_pipeline("capture", &name, &prefix, &owns(&prefix), "dialect = \"mysql\"");
    let config = write_config(&dir, runtime, &[("items", pipeline)]);
    let log = dir.join("runtime.log");
    let mut process = RuntimeProcess::start(&config, &log);
    cache_equals_db(&db, &cache.url(), &name, &prefix, "the capture's snapshot cached").await;
    db.update(&name, 1..=100).await;
    cache_equals_db(&db, &cache.url(), &name, &prefix, "the first changes cached").await;
    cache.save();
    db.update(&name, 101..=200).await;
    db.delete_and_insert(&name).await;
    cache_equals_db(&db, &cache.url(), &name, &prefix, "the changes after the snapshot cached").await;

    let rollback = Rollback { db: &db, schema: &name, prefix: &prefix, port, log: &log };
    let report = rollback.roll_back_and_check(&mut cache, &mut process).await;
    let stream = format!("{name}.{name}.item");
    assert_eq!(dead_letters(&mut shared, &stream).await, 0, "nothing in the dead-letter stream");
    println!(
        "[cache rollback, binlog capture] {ROWS} rows snapshotted by the MariaDB capture, 100 updated, RDB saved, \
         then 100 updated, 10 cached rows deleted and 10 inserted and cached; the cache SIGKILLed and restarted from \
         the older RDB: {report}"
    );
    process.stop();
    db.execute(&format!("drop database if exists {name}")).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), pool.disconnect()).await;
    clear_prefix(&mut shared, &name).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_fed_cache_restarted_from_an_older_snapshot_is_repaired() {
    use evercache::source::kafka::client::{Cluster, Settings, admin};
    use evercache_test_kit::kafka_broker::KafkaBroker;
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    const PARTITIONS: i32 = 2;
    let name = format!("fault_rbkafka_{}", std::process::id());
    let dir = scratch(&name);
    let brokers = KafkaBroker::shared().expect("the suite's Kafka broker").address();
    let topic = format!("{name}.{name}.item");
    let mut cluster =
        Cluster::new(&brokers, std::sync::Arc::new(Settings::from_properties(&Default::default(), None).unwrap()));
    admin::create_topic(&mut cluster, &topic, PARTITIONS, &[]).await.expect("create topic");
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, ROWS).await;
    let db = Db::Postgres(pg.clone());
    let mut cache = RedisServer::start_snapshotting(&dir, "cache");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .database("db", SHARED_PG)
        .cache("main", &cache.url())
        .section("sources.events")
        .line(&format!("type = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup = \"{name}\""))
        .line("block = \"200ms\"");
    let prefix = format!("{name}:item");
    let config =
        write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, &owns(&prefix), ""))]);
    let log = dir.join("runtime.log");
    let mut process = RuntimeProcess::start(&config, &log);
    wait_ready(port, true, REPAIRED).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("message.timeout.ms", "10000").create().unwrap();
    // As Debezium would: each committed change as an event keyed by row, so one row's events stay in order.
    let produce = |changes: Vec<(&'static str, i64)>| {
        let (producer, name, topic) = (producer.clone(), name.clone(), topic.clone());
        async move {
            for (op, id) in changes {
                let (key, value) = item_event(&name, op, id, crate::next_lsn());
                let record =
                    FutureRecord::to(&topic).partition((id % PARTITIONS as i64) as i32).key(&key).payload(&value);
                producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
            }
        }
    };
    produce((1..=ROWS).map(|id| ("c", id)).collect()).await;
    cache_equals_db(&db, &cache.url(), &name, &prefix, "every row cached").await;
    produce(db.update(&name, 1..=100).await).await;
    cache_equals_db(&db, &cache.url(), &name, &prefix, "the first changes cached").await;
    cache.save();
    produce(db.update(&name, 101..=200).await).await;
    produce(db.delete_and_insert(&name).await).await;
    cache_equals_db(&db, &cache.url(), &name, &prefix, "the changes after the snapshot cached").await;

    let rollback = Rollback { db: &db, schema: &name, prefix: &prefix, port, log: &log };
    let report = rollback.roll_back_and_check(&mut cache, &mut process).await;
    println!(
        "[cache rollback, kafka] {ROWS} rows cached from Debezium events on {PARTITIONS} Kafka partitions, 100 \
         updated, RDB saved, then 100 updated, 10 cached rows deleted and 10 inserted and cached; the cache SIGKILLed \
         and restarted from the older RDB: {report}"
    );
    process.stop();
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
