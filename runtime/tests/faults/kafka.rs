//! The Kafka source under SIGKILL: a consumer killed while it works resumes
//! from the committed offsets and skips nothing. Needs the `tansu` broker
//! (scripts/kafka-deps.sh installs it).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::harness::*;
use crate::next_lsn;

const PARTITIONS: i32 = 3;

/// A `tansu` broker with in-memory storage on a free port, killed on drop.
struct Broker {
    child: Child,
    address: String,
}

/// The `tansu` binary: where `cargo install` puts it, else on the PATH.
fn tansu() -> String {
    let installed = format!("{}/.cargo/bin/tansu", std::env::var("HOME").unwrap_or_default());
    if std::path::Path::new(&installed).exists() { installed } else { "tansu".to_owned() }
}

impl Broker {
    fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu not installed; run bash scripts/kafka-deps.sh");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, address: format!("127.0.0.1:{port}") }
    }

    fn create_topic(&self, topic: &str) {
        let output = Command::new(tansu())
            .args(["topic", "create", topic, "--partitions", &PARTITIONS.to_string()])
            .args(["--broker", &format!("tcp://{}", self.address)])
            .output()
            .unwrap();
        assert!(output.status.success(), "tansu topic create: {}", String::from_utf8_lossy(&output.stderr));
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

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_consumer_killed_under_load_resumes_from_committed_offsets() {
    let name = format!("fault_kafka_{}", std::process::id());
    let (rows, updates) = (300, 3_000);
    let dir = scratch(&name);
    let broker = Broker::start();
    let topic = format!("{name}.{name}.item");
    broker.create_topic(&topic);
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
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
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
        process.restart();
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
        "[kafka SIGKILL] {updates} row changes over {rows} keys produced to {PARTITIONS} partitions while the runtime \
         was SIGKILLed {kills} times and restarted in the same group; it converged {:.1?} after the last write from \
         the committed offsets: every key equals the database, every partition committed to its end",
        settle.elapsed()
    );
    process.stop();
    clear_prefix(&mut redis, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
