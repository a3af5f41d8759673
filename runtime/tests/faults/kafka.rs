//! The Kafka source under SIGKILL: three instances share a group's partitions,
//! and one killed while it works is replaced by a rebalance; its partitions
//! resume from the committed offsets and nothing is skipped. Runs on the suite's shared
//! Apache Kafka broker (scripts/kafka.sh), on topics and a group of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use evercache::source::kafka::client::{Cluster, Settings, admin};
use evercache_test_kit::kafka_broker::KafkaBroker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::harness::*;
use crate::next_lsn;

const PARTITIONS: i32 = 3;

/// The shared broker, and the group offsets the check reads from it.
struct Broker {
    address: String,
}

impl Broker {
    fn start() -> Self {
        Self { address: KafkaBroker::shared().expect("the suite's Kafka broker").address() }
    }

    async fn create_topic(&self, topic: &str) {
        let settings = Settings::from_properties(&Default::default(), None).expect("settings");
        let mut cluster = Cluster::new(&self.address, Arc::new(settings));
        admin::create_topic(&mut cluster, topic, PARTITIONS, &[]).await.expect("create topic");
    }

    /// Per partition: committed offset of `group` and high watermark.
    fn committed_and_end(&self, group: &str, topic: &str) -> Vec<(i64, i64)> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            list.add_partition(topic, partition);
        }
        let timeout = Duration::from_secs(10);
        let committed = client.committed_offsets(list, timeout).unwrap();
        (0..PARTITIONS)
            .map(|partition| {
                let offset = match committed.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => offset,
                    _ => -1,
                };
                (offset, client.fetch_watermarks(topic, partition, timeout).unwrap().1)
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_consumer_killed_under_load_resumes_from_committed_offsets() {
    let name = format!("fault_kafka_{}", std::process::id());
    let (rows, updates) = (300, 3_000);
    let dir = scratch(&name);
    let broker = Broker::start();
    let topic = format!("{name}.{name}.item");
    broker.create_topic(&topic).await;
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, &name).await;
    let runtime = RuntimeToml::new()
        .database("db", SHARED_PG)
        .cache("main", SHARED_REDIS)
        .section("sources.events")
        .line(&format!(
            "type = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup = \"{name}\"",
            broker.address
        ))
        .line("block = \"200ms\"\nproperties = { \"session.timeout.ms\" = \"6000\" }");
    let prefix = format!("{name}:item");
    let config = write_config(&dir, runtime, &[("items", testkit_pipeline("events", &name, &prefix, "", ""))]);
    // Three instances in one group share the partitions; one of them is SIGKILLed at a time.
    let mut processes: Vec<RuntimeProcess> =
        (0..3).map(|n| RuntimeProcess::start(&config, &dir.join(format!("runtime-{n}.log")))).collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pg, name, topic, done) = (pg.clone(), name.clone(), topic.clone(), done.clone());
        let mut rng = Rng::new("kafka-writer");
        tokio::spawn(async move {
            for _ in 0..updates / 10 {
                let ids: Vec<i64> = (0..10).map(|_| rng.below(rows as u64) as i64 + 1).collect();
                sqlx::query(&format!(
                    "update {name}.item set version = version + 1, name = 'n' || version where id = any($1)"
                ))
                .bind(&ids)
                .execute(&pg)
                .await
                .unwrap();
                for id in ids {
                    let (key, value) = item_event(&name, "u", id, next_lsn());
                    // Keyed by row, as Debezium's topics are: one row's changes stay in order.
                    let record =
                        FutureRecord::to(&topic).partition((id % PARTITIONS as i64) as i32).key(&key).payload(&value);
                    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut rng = Rng::new("kafka");
    let mut kills = 0;
    while !done.load(Ordering::SeqCst) || kills < 3 {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(2_000))).await;
        processes[rng.below(3) as usize].restart();
        kills += 1;
    }
    writer.await.unwrap();
    let settle = Instant::now();
    wait_until("every key equal to the database and every partition committed", Duration::from_secs(180), || {
        let (pg, mut redis, name, prefix) = (pg.clone(), redis.clone(), name.clone(), prefix.clone());
        let offsets = broker.committed_and_end(&name, &topic);
        async move {
            offsets.iter().all(|(committed, end)| committed == end)
                && mismatches(&pg, &mut redis, &name, &prefix).await.is_empty()
        }
    })
    .await;
    println!(
        "[kafka SIGKILL] {updates} row changes over {rows} keys produced to {PARTITIONS} partitions of Apache Kafka \
         while one of three instances in one group was SIGKILLed and restarted {kills} times; they converged {:.1?} \
         after the last write from the committed offsets: every key equals the database, every partition committed \
         to its end",
        settle.elapsed()
    );
    for process in &mut processes {
        process.stop();
    }
    clear_prefix(&mut redis, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
