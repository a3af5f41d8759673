//! Change records lost before evercache read them: a stream trimmed past the
//! consumer group while evercache was stopped, and a Kafka partition whose
//! records were deleted below the group's committed offset. Neither can be
//! replayed, so the runtime must say what was lost and repair the pipelines
//! from the database: every key ends equal to it, nothing dead-lettered.

use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use sqlx::PgPool;

use crate::harness::*;
use crate::write_changes;

const CONVERGE: Duration = Duration::from_secs(180);

/// Bumps every row and appends its event, so every row has a key once applied
/// (a repair's full resync writes every row, untouched ones too).
async fn touch_all(pg: &PgPool, redis: &mut ConnectionManager, schema: &str, stream: &str, rows: i64) {
    let ids: Vec<i64> = (1..=rows).collect();
    for chunk in ids.chunks(100) {
        write_changes(pg, redis, schema, stream, chunk).await;
    }
}

/// The gap and a finished repair, as the runtime's /metrics counts them.
async fn gap_and_repair_counted(port: u16) -> (f64, f64) {
    let gaps = metric(port, "evercache_event_gaps_total", &[("source", "events")]).await;
    let repairs = metric(port, "evercache_loss_repairs_total", &[("outcome", "done")]).await;
    (gaps, repairs)
}

/// Waits until every key equals the database and the runtime counted a gap
/// and a finished repair; how long that took.
async fn repaired(pg: &PgPool, redis: &MultiplexedConnection, schema: &str, prefix: &str, port: u16) -> Duration {
    wait_until("every key equal to the database after a counted gap and a done repair", CONVERGE, || {
        let (pg, mut redis) = (pg.clone(), redis.clone());
        async move {
            let (gaps, repairs) = gap_and_repair_counted(port).await;
            gaps >= 1.0 && repairs >= 1.0 && mismatches(&pg, &mut redis, schema, prefix).await.is_empty()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_the_group_is_repaired_from_the_database() {
    let name = format!("fault_trimmed_{}", std::process::id());
    let (rows, changed) = (300, 60);
    let dir = scratch(&name);
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, &name).await;
    let stream = format!("{name}.{name}.item");
    let port = free_port();
    let runtime = RuntimeToml::new().http(port).database("db", SHARED_PG).cache("main", SHARED_REDIS).redis_stream(
        "events",
        SHARED_REDIS,
        std::slice::from_ref(&stream),
        "c1",
    );
    let prefix = format!("{name}:item");
    let config = write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, "", ""))]);
    let log = dir.join("runtime.log");
    let mut process = RuntimeProcess::start(&config, &log);
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    touch_all(&pg, &mut writer, &name, &stream, rows).await;
    wait_until("every row cached and every entry acknowledged", CONVERGE, || {
        let (pg, mut redis) = (pg.clone(), redis.clone());
        let (name, stream, prefix) = (name.clone(), stream.clone(), prefix.clone());
        async move {
            backlog(&mut redis, &stream).await == (0, 0) && mismatches(&pg, &mut redis, &name, &prefix).await.is_empty()
        }
    })
    .await;
    process.stop();

    // While evercache is away rows change, and their entries are trimmed before it is back.
    let mut rng = Rng::new("trimmed");
    let mut ids: Vec<i64> = (0..changed).map(|_| rng.below(rows as u64) as i64 + 1).collect();
    ids.sort_unstable();
    ids.dedup();
    for chunk in ids.chunks(10) {
        write_changes(&pg, &mut writer, &name, &stream, chunk).await;
    }
    let trimmed: i64 = redis::cmd("XTRIM").arg(&stream).arg("MAXLEN").arg(0).query_async(&mut redis).await.unwrap();
    let left: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut redis).await.unwrap();
    assert_eq!(left, 0, "every entry, the unread ones too, was trimmed");
    let stale = mismatches(&pg, &mut redis, &name, &prefix).await.len();
    assert!(stale > 0, "the changed rows' keys are stale before the restart");

    process.restart();
    let took = repaired(&pg, &redis, &name, &prefix, port).await;
    let (gaps, repairs) = gap_and_repair_counted(port).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("deleted before the consumer group read them"), "the log says what was lost:\n{said}");
    let (ready_after, _) = wait_ready(port, true, Duration::from_secs(60)).await;

    // The group was moved past the deleted entries: new ones are read as before.
    let after: Vec<i64> = (1..=10).collect();
    write_changes(&pg, &mut writer, &name, &stream, &after).await;
    let flowing = wait_until("changes after the repair applied", CONVERGE, || {
        let (pg, mut redis) = (pg.clone(), redis.clone());
        let (name, stream, prefix) = (name.clone(), stream.clone(), prefix.clone());
        async move {
            backlog(&mut redis, &stream).await == (0, 0) && mismatches(&pg, &mut redis, &name, &prefix).await.is_empty()
        }
    })
    .await;
    assert_eq!(dead_letters(&mut redis, &stream).await, 0, "nothing was dead-lettered");
    println!(
        "[trimmed stream] {rows} rows cached, runtime stopped; {} rows changed and their entries appended, then \
         XTRIM MAXLEN 0 removed all {trimmed} entries, the unread ones too, {stale} keys \
         stale; restarted: gap logged and counted ({gaps}), repairs done {repairs}, every key equal to the database \
         {took:.1?} after the restart, /ready true {ready_after:.1?} later; changes after it applied in \
         {flowing:.1?}; 0 dead letters",
        ids.len()
    );
    process.stop();
    clear_prefix(&mut redis, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Arc;
    use std::time::Duration;

    use evercache::source::kafka::client::{Cluster, Settings, admin};
    use evercache_test_kit::kafka_broker::KafkaBroker;
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use sqlx::PgPool;

    use super::{CONVERGE, gap_and_repair_counted, repaired};
    use crate::harness::*;
    use crate::next_lsn;

    /// The group's committed offset, and the log's start and end, of partition 0.
    fn offsets(address: &str, group: &str, topic: &str) -> (i64, i64, i64) {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", address)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, 0);
        let timeout = Duration::from_secs(10);
        let committed =
            match client.committed_offsets(list, timeout).unwrap().find_partition(topic, 0).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => offset,
                _ => -1,
            };
        let (start, end) = client.fetch_watermarks(topic, 0, timeout).unwrap();
        (committed, start, end)
    }

    /// Records in the dead-letter topic (none when it was never created).
    fn dead_lettered(address: &str, topic: &str) -> i64 {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", address).create().unwrap();
        let timeout = Duration::from_secs(10);
        let metadata = client.fetch_metadata(Some(topic), timeout).unwrap();
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else { return 0 };
        found.partitions().iter().map(|p| client.fetch_watermarks(topic, p.id(), timeout).unwrap().1).sum()
    }

    /// Commits an update of `ids` and produces one event per id.
    async fn change(pg: &PgPool, producer: &FutureProducer, schema: &str, topic: &str, ids: &[i64]) {
        sqlx::query(&format!(
            "update {schema}.item set version = version + 1, name = 'n' || version where id = any($1)"
        ))
        .bind(ids)
        .execute(pg)
        .await
        .unwrap();
        for &id in ids {
            let (key, value) = item_event(schema, "u", id, next_lsn());
            let record = FutureRecord::to(topic).partition(0).key(&key).payload(&value);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kafka_partition_deleted_past_the_committed_offset_is_repaired() {
        let name = format!("fault_retention_{}", std::process::id());
        let (rows, changed) = (300, 60);
        let dir = scratch(&name);
        let address = KafkaBroker::shared().expect("the suite's Kafka broker").address();
        let topic = format!("{name}.{name}.item");
        let settings = Settings::from_properties(&Default::default(), None).expect("settings");
        admin::create_topic(&mut Cluster::new(&address, Arc::new(settings)), &topic, 1, &[]).await.expect("topic");
        let pg = PgPool::connect(SHARED_PG).await.unwrap();
        create_items(&pg, &name, rows).await;
        let mut redis = connect(SHARED_REDIS).await;
        clear_prefix(&mut redis, &name).await;
        let port = free_port();
        let runtime = RuntimeToml::new()
            .http(port)
            .database("db", SHARED_PG)
            .cache("main", SHARED_REDIS)
            .section("sources.events")
            .line(&format!("type = \"kafka\"\nbrokers = \"{address}\"\ntopics = [\"{topic}\"]\ngroup = \"{name}\""))
            .line("block = \"200ms\"\nproperties = { \"session.timeout.ms\" = \"6000\" }");
        let prefix = format!("{name}:item");
        let config = write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, "", ""))]);
        let log = dir.join("runtime.log");
        let mut process = RuntimeProcess::start(&config, &log);
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", &address).set("message.timeout.ms", "10000").create().unwrap();
        let all: Vec<i64> = (1..=rows).collect();
        for chunk in all.chunks(100) {
            change(&pg, &producer, &name, &topic, chunk).await;
        }
        wait_until("every row cached and the partition committed to its end", CONVERGE, || {
            let (pg, mut redis, name, prefix) = (pg.clone(), redis.clone(), name.clone(), prefix.clone());
            let (committed, _, end) = offsets(&address, &name, &topic);
            async move { committed == end && mismatches(&pg, &mut redis, &name, &prefix).await.is_empty() }
        })
        .await;
        process.stop();

        // Rows change while evercache is away, and retention takes their records first.
        let mut rng = Rng::new("retention");
        let mut ids: Vec<i64> = (0..changed).map(|_| rng.below(rows as u64) as i64 + 1).collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(10) {
            change(&pg, &producer, &name, &topic, chunk).await;
        }
        let (committed, _, end) = offsets(&address, &name, &topic);
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &address).create().unwrap();
        let mut below = TopicPartitionList::new();
        below.add_partition_offset(&topic, 0, Offset::Offset(end)).unwrap();
        let deleted = admin.delete_records(&below, &AdminOptions::new()).await.expect("DeleteRecords");
        assert!(
            deleted.elements().iter().all(|e| e.error().is_ok()),
            "DeleteRecords failed: {:?}",
            deleted.elements().iter().map(|e| e.error()).collect::<Vec<_>>()
        );
        let (_, start, _) = offsets(&address, &name, &topic);
        assert!(committed < start, "the committed offset {committed} is below the log start {start}");
        let stale = mismatches(&pg, &mut redis, &name, &prefix).await.len();
        assert!(stale > 0, "the changed rows' keys are stale before the restart");

        process.restart();
        let took = repaired(&pg, &redis, &name, &prefix, port).await;
        let (gaps, repairs) = gap_and_repair_counted(port).await;
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(said.contains("out of range"), "the log says the offset was out of range:\n{said}");
        let (ready_after, _) = wait_ready(port, true, Duration::from_secs(60)).await;

        // Reading went on from the log start: later records are applied and committed.
        change(&pg, &producer, &name, &topic, &(1..=10).collect::<Vec<_>>()).await;
        let flowing = wait_until("changes after the repair applied and committed", CONVERGE, || {
            let (pg, mut redis, name, prefix) = (pg.clone(), redis.clone(), name.clone(), prefix.clone());
            let (committed, _, end) = offsets(&address, &name, &topic);
            async move { committed == end && mismatches(&pg, &mut redis, &name, &prefix).await.is_empty() }
        })
        .await;
        assert_eq!(dead_lettered(&address, &format!("{topic}.dlq")), 0, "nothing was dead-lettered");
        println!(
            "[kafka retention] {rows} rows cached and offset {committed} committed, runtime stopped; {} rows changed \
             and produced, then DeleteRecords moved the log start to {start} past the committed offset ({stale} keys \
             stale); restarted: out of range logged, gap counted ({gaps}), repairs done {repairs}, every key equal to \
             the database {took:.1?} after the restart, /ready true {ready_after:.1?} later; changes after it \
             applied and committed in {flowing:.1?}; 0 dead letters",
            ids.len()
        );
        process.stop();
        clear_prefix(&mut redis, &name).await;
        let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
    }
}
