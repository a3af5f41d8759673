//! The Kafka source against Apache Kafka (the suite's shared broker; a private
//! one for the restart): multi-partition topics, per-key order, commits only
//! after writes, restart from committed offsets, a group rebalance between two
//! instances, tombstones, the dead-letter topic, and a broker restart under load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use evercache::source::KafkaConfig;
use evercache::source::kafka::lag::consumer_lag;
use evercache::source::lag::{LagProbe, SourceLag};
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key, with_schema};
use evercache_e2e::kafka::{Broker, field, kafka_runtime_toml, partition_offset, read_records, source_config};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn item(id: i64, name: &str, version: i64) -> Value {
    json!({ "id": id, "name": name, "version": version })
}

async fn item_env(name: &str) -> Result<TestEnv> {
    let env = TestEnv::new(name).await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    Ok(env)
}

async fn exists(env: &TestEnv, key: &str) -> Result<bool> {
    Ok(redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut env.redis.clone()).await? == 1)
}

async fn wait_json(env: &TestEnv, key: &str, expected: Option<&Value>) -> Result<()> {
    let what = format!("{key} == {expected:?}");
    wait_until(&what, WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.to_owned();
        let expected = expected.cloned();
        async move {
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            Ok(value.and_then(|v| serde_json::from_str::<Value>(&v).ok()) == expected)
        }
    })
    .await
    .map(drop)
}

/// Waits until the group committed every partition up to its end.
async fn wait_committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Result<()> {
    wait_until(&format!("{topic} fully committed by {group}"), WAIT, || {
        let offsets = broker.committed_and_end(group, topic, partitions);
        async move { Ok(offsets?.iter().all(|(committed, end)| committed == end)) }
    })
    .await
    .map(drop)
}

/// Produces a Debezium change of `item` keyed by id to partition `id % partitions`.
async fn produce_item(
    broker: &Broker,
    env: &TestEnv,
    topic: &str,
    partitions: i32,
    op: &str,
    row: Value,
) -> Result<()> {
    let id = row["id"].as_i64().context("row id")?;
    let (before, after) = if op == "d" { (Some(json!({ "id": id })), None) } else { (None, Some(row)) };
    let change = with_schema(pg_change(op, &env.prefix, "item", before, after, next_lsn()));
    let key = with_schema(json!({ "id": id })).to_string();
    broker.produce(topic, (id % partitions as i64) as i32, Some(&key), Some(&change.to_string()), &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_partition_topic_tombstones_and_restart_from_committed_offsets() -> Result<()> {
    let env = item_env("kafka_resume").await?;
    let broker = Broker::shared()?;
    let topic = env.stream("item");
    broker.create_topic(&topic, 3).await?;
    let runtime_toml = kafka_runtime_toml(&env, &broker, std::slice::from_ref(&topic), "");
    let config = env.config(&runtime_toml, &[("items", &env.testkit_pipeline(""))])?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);

    env.sql("insert into item select g, 'v1', 1 from generate_series(1, 6) g").await?;
    for id in 1..=6 {
        produce_item(&broker, &env, &topic, 3, "c", item(id, "v1", 1)).await?;
    }
    let running = Running::start(config.clone()).await?;
    for id in 1..=6 {
        wait_json(&env, &key(id), Some(&item(id, "v1", 1))).await?;
    }

    // A delete and its tombstone (null value) on the key's partition.
    env.sql("delete from item where id = 2").await?;
    produce_item(&broker, &env, &topic, 3, "d", json!({ "id": 2 })).await?;
    broker.produce(&topic, 2, Some(&pg_key(2)), None, &[]).await?;
    wait_json(&env, &key(2), None).await?;
    wait_committed(&broker, &env.prefix, &topic, 3).await?;
    running.stop().await?;

    // Changes made while no instance runs stay uncommitted until applied.
    env.sql("update item set name = 'v2', version = 2 where id in (1, 4, 5)").await?;
    for id in [1, 4] {
        produce_item(&broker, &env, &topic, 3, "u", item(id, "v2", 2)).await?;
    }
    // Without the JsonConverter schema wrapper (schemas.enable=false).
    let plain = pg_change("u", &env.prefix, "item", None, Some(item(5, "v2", 2)), next_lsn());
    broker.produce(&topic, 2, Some(&pg_key(5)), Some(&plain.to_string()), &[]).await?;
    let offsets = broker.committed_and_end(&env.prefix, &topic, 3)?;
    ensure!(offsets.iter().any(|(committed, end)| committed < end), "nothing is committed while stopped: {offsets:?}");
    // The consumer-group lag the metrics and `evercache status` show.
    let mut probe = LagProbe::new("events", &config.runtime.sources["events"])?;
    let lag = |lags: Vec<SourceLag>| lags.iter().find(|l| l.stream == topic).and_then(|l| l.lag_entries);
    assert_eq!(lag(probe.probe().await?), Some(3), "three changes wait while no instance runs");

    let running = Running::start(config).await?;
    for id in [1, 4, 5] {
        wait_json(&env, &key(id), Some(&item(id, "v2", 2))).await?;
    }
    wait_committed(&broker, &env.prefix, &topic, 3).await?;
    assert_eq!(lag(probe.probe().await?), Some(0), "no lag once everything is committed");
    for id in [3, 6] {
        wait_json(&env, &key(id), Some(&item(id, "v1", 1))).await?;
    }
    assert!(!exists(&env, &key(2)).await?, "the deleted row stays deleted");
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partition_order_and_headers_reach_the_decoder() -> Result<()> {
    evercache_e2e::init_logging();
    let broker = Broker::shared()?;
    let topic = format!("t{}_order.public.item", std::process::id());
    broker.create_topic(&topic, 3).await?;
    for seq in 0..40 {
        for key in 0..6 {
            let value = json!({ "key": key, "seq": seq }).to_string();
            let headers = [("__debezium.oldkey", "{\"id\":0}")];
            broker.produce(&topic, key % 3, Some(&format!("{{\"id\":{key}}}")), Some(&value), &headers).await?;
        }
    }
    // A regular expression subscription, and batches far smaller than the backlog.
    let pattern = format!("^{}$", topic.replace('.', "\\."));
    let group = format!("order{}", std::process::id());
    let config = source_config(&broker, &[pattern], &group, 7)?;
    let records = read_records(&config, "order", 240).await?;
    assert_eq!(records.len(), 240, "every record once");

    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_seq: BTreeMap<i64, i64> = BTreeMap::new();
    for record in &records {
        let (partition, offset) = partition_offset(record);
        assert!(last_offset.get(&partition).is_none_or(|last| *last < offset), "partition {partition} in offset order");
        last_offset.insert(partition, offset);
        let value: Value = serde_json::from_str(field(record, "value").context("value field")?)?;
        let (key, seq) = (value["key"].as_i64().unwrap_or(-1), value["seq"].as_i64().unwrap_or(-1));
        assert_eq!(last_seq.get(&key).map_or(0, |last| last + 1), seq, "key {key} in produce order");
        last_seq.insert(key, seq);
        assert_eq!(field(record, "__debezium.oldkey"), Some("{\"id\":0}"), "headers reach the decoder");
    }
    assert_eq!(last_offset.len(), 3, "all partitions read");
    for (committed, end) in broker.committed_and_end(&group, &topic, 3)? {
        assert_eq!(committed, end, "committed up to the end after the acks");
    }
    Ok(())
}

/// `(instance, partition, offset)` of every record read, across instances.
type Seen = Arc<Mutex<Vec<(&'static str, i32, i64)>>>;

/// Runs a source in a task: every batch is recorded as `(owner, partition, offset)` and acked.
fn spawn_reader(
    config: KafkaConfig,
    owner: &'static str,
    seen: Seen,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut source = config.build(owner).await?;
        while !stop.is_cancelled() {
            let batch = source.next_batch().await?;
            seen.lock().unwrap().extend(batch.iter().map(|r| {
                let (partition, offset) = partition_offset(r);
                (owner, partition, offset)
            }));
            source.ack(&batch).await?;
        }
        source.shutdown().await;
        Ok(())
    })
}

async fn produce_round(broker: &Broker, topic: &str, round: i64) -> Result<()> {
    for partition in 0..4 {
        for n in 0..10 {
            let value = json!({ "round": round, "n": n }).to_string();
            broker.produce(topic, partition, Some(&format!("{{\"id\":{n}}}")), Some(&value), &[]).await?;
        }
    }
    Ok(())
}

async fn wait_seen(seen: &Seen, count: usize, what: &str) -> Result<()> {
    wait_until(what, WAIT, || {
        let distinct = seen.lock().unwrap().iter().map(|(_, p, o)| (*p, *o)).collect::<BTreeSet<_>>().len();
        async move { Ok(distinct >= count) }
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_instances_loses_nothing() -> Result<()> {
    evercache_e2e::init_logging();
    let broker = Broker::shared()?;
    let topic = format!("t{}_rebalance.public.item", std::process::id());
    broker.create_topic(&topic, 4).await?;
    let group = format!("rebalance{}", std::process::id());
    let config = source_config(&broker, std::slice::from_ref(&topic), &group, 5)?;
    let seen = Arc::new(Mutex::new(Vec::new()));

    let stop_a = CancellationToken::new();
    let a = spawn_reader(config.clone(), "a", seen.clone(), stop_a.clone());
    produce_round(&broker, &topic, 0).await?;
    wait_seen(&seen, 40, "instance a reads round 0").await?;

    // B joins: the partitions are split, A commits what it finished before giving any up.
    let stop_b = CancellationToken::new();
    let b = spawn_reader(config.clone(), "b", seen.clone(), stop_b.clone());
    // Keep producing until B got partitions; the group needs A to rejoin first.
    let mut round = 1;
    let start = std::time::Instant::now();
    while !seen.lock().unwrap().iter().any(|(owner, _, _)| *owner == "b") {
        ensure!(start.elapsed() < WAIT, "instance b never got partitions");
        produce_round(&broker, &topic, round).await?;
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let produced = 40 * round as usize;
    wait_seen(&seen, produced, "both instances read everything").await?;

    // A leaves: B takes over its partitions from A's committed offsets.
    stop_a.cancel();
    a.await??;
    produce_round(&broker, &topic, round).await?;
    wait_seen(&seen, produced + 40, "instance b reads everything after a left").await?;
    wait_committed(&broker, &group, &topic, 4).await?;
    stop_b.cancel();
    b.await??;

    let seen = seen.lock().unwrap().clone();
    let distinct: BTreeSet<(i32, i64)> = seen.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(distinct.len(), produced + 40, "no record lost");
    let b_partitions: BTreeSet<i32> = seen.iter().filter(|(owner, _, _)| *owner == "b").map(|(_, p, _)| *p).collect();
    assert_eq!(b_partitions.len(), 4, "b owns every partition after a left: {b_partitions:?}");
    let duplicates = seen.len() - distinct.len();
    assert_eq!(duplicates, 0, "finished work was committed before partitions moved");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_with_the_reason() -> Result<()> {
    let env = item_env("kafka_dlq").await?;
    let broker = Broker::shared()?;
    let topic = env.stream("item");
    let dead_letters = format!("{topic}.dlq");
    broker.create_topic(&topic, 2).await?;
    broker.create_topic(&dead_letters, 1).await?;
    let runtime_toml = kafka_runtime_toml(&env, &broker, std::slice::from_ref(&topic), "");
    let config = env.config(&runtime_toml, &[("items", &env.testkit_pipeline("fail_ids = \"13\""))])?;

    env.sql("insert into item values (1, 'one', 1), (13, 'thirteen', 1)").await?;
    let context = [("__debezium.context.taskId", "0")];
    broker.produce(&topic, 0, Some(&pg_key(1)), Some("{not json"), &context).await?;
    let unknown_op = pg_change("x", &env.prefix, "item", None, Some(item(1, "one", 1)), next_lsn());
    broker.produce(&topic, 1, Some(&pg_key(1)), Some(&unknown_op.to_string()), &[]).await?;
    produce_item(&broker, &env, &topic, 2, "c", item(13, "thirteen", 1)).await?;
    // What a connector configured with another converter writes: Avro in the
    // Confluent wire format (magic 0, schema id 42), and a StringConverter key.
    broker.produce_bytes(&topic, 0, Some(br#"{"id":1}"#), Some(&[0, 0, 0, 0, 42, 2, 6, 0xfe, 0xff]), &[]).await?;
    let good = pg_change("c", &env.prefix, "item", None, Some(item(1, "one", 1)), next_lsn()).to_string();
    broker.produce(&topic, 1, Some("Struct{id=1}"), Some(&good), &[]).await?;
    produce_item(&broker, &env, &topic, 2, "c", item(1, "one", 1)).await?;
    let running = Running::start(config).await?;

    wait_json(&env, &format!("{}:item:1", env.prefix), Some(&item(1, "one", 1))).await?;
    wait_committed(&broker, &env.prefix, &topic, 2).await?;
    let letters = broker.read_all(&dead_letters, 1, 5)?;
    assert_eq!(letters.len(), 5, "{letters:?}");
    let errors: Vec<String> = (0..5)
        .map(|i| {
            letters[i]
                .headers
                .iter()
                .find(|(n, _)| n == "__evercache.error")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    let avro = errors.iter().find(|e| e.contains("Confluent wire format")).context("Avro letter")?;
    assert!(avro.contains("schema id 42") && avro.contains("JsonConverter"), "{avro}");
    let string_key = errors.iter().find(|e| e.contains("StringConverter")).context("string-key letter")?;
    assert!(string_key.starts_with("key was written by another converter"), "{string_key}");
    let letters: Vec<_> = letters
        .into_iter()
        .filter(|l| {
            let error = l.headers.iter().find(|(n, _)| n == "__evercache.error").map(|(_, v)| v.as_str()).unwrap_or("");
            !error.contains("another converter")
        })
        .collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    let header = |i: usize, name: &str| {
        letters[i].headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let bad_json = letters.iter().position(|l| l.value.as_deref() == Some("{not json")).context("bad JSON letter")?;
    assert_eq!(letters[bad_json].key.as_deref(), Some(pg_key(1).as_str()), "the original key is kept");
    assert_eq!(header(bad_json, "__evercache.topic"), topic);
    assert_eq!(header(bad_json, "__evercache.id"), "0:0");
    assert_eq!(header(bad_json, "__debezium.context.taskId"), "0", "original headers are kept");
    assert!(header(bad_json, "__evercache.error").contains("value"), "reason names the part");
    let failed = (0..3).find(|&i| header(i, "__evercache.pipeline") == "items").context("plugin failure letter")?;
    assert!(header(failed, "__evercache.error").contains("configured failure for id 13"));
    assert!(!exists(&env, &format!("{}:item:13", env.prefix)).await?);
    running.stop().await
}

#[test]
fn the_kafka_example_configuration_loads() -> Result<()> {
    let path = evercache_e2e::repo_root().join("examples/shop/evercache-kafka.toml");
    let config = evercache::config::Config::load(&path)?;
    assert!(matches!(config.runtime.sources.get("debezium"), Some(evercache::source::SourceConfig::Kafka(_))));
    Ok(())
}

/// Writes `name`/`version` for ids 1..=20 to the database and produces their updates.
async fn update_all(broker: &Broker, env: &TestEnv, topic: &str, name: &str, version: i64) -> Result<()> {
    env.sql(&format!("update item set name = '{name}', version = {version}")).await?;
    for id in 1..=20 {
        produce_item(broker, env, topic, 4, "u", item(id, name, version)).await?;
    }
    Ok(())
}

async fn wait_all(env: &TestEnv, name: &str, version: i64) -> Result<()> {
    for id in 1..=20 {
        wait_json(env, &format!("{}:item:{id}", env.prefix), Some(&item(id, name, version))).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtime_instances_share_the_partitions_and_hand_them_over() -> Result<()> {
    let env = item_env("kafka_group").await?;
    let broker = Broker::shared()?;
    let topic = env.stream("item");
    broker.create_topic(&topic, 4).await?;
    let runtime_toml = kafka_runtime_toml(&env, &broker, std::slice::from_ref(&topic), "");
    let config = env.config(&runtime_toml, &[("items", &env.testkit_pipeline(""))])?;
    env.sql("insert into item select g, 'v0', 0 from generate_series(1, 20) g").await?;

    let first = Running::start(config.clone()).await?;
    update_all(&broker, &env, &topic, "v1", 1).await?;
    wait_all(&env, "v1", 1).await?;

    // A second instance joins: the group rebalances while changes keep coming.
    let second = Running::start(config).await?;
    for version in 2..=4 {
        update_all(&broker, &env, &topic, &format!("v{version}"), version).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_all(&env, "v4", 4).await?;
    wait_committed(&broker, &env.prefix, &topic, 4).await?;

    // The first leaves: the second takes all partitions from the committed offsets.
    first.stop().await?;
    update_all(&broker, &env, &topic, "v5", 5).await?;
    wait_all(&env, "v5", 5).await?;
    wait_committed(&broker, &env.prefix, &topic, 4).await?;
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_topic_blocks_the_commit_until_it_exists() -> Result<()> {
    let env = item_env("kafka_dlq_wait").await?;
    // Topics are not created on first use here, as on many production clusters.
    let broker = Broker::private(&["auto.create.topics.enable=false"])?;
    let topic = env.stream("item");
    let dead_letters = format!("{topic}.dlq");
    broker.create_topic(&topic, 1).await?;
    let runtime_toml = kafka_runtime_toml(&env, &broker, std::slice::from_ref(&topic), "");
    let config = env.config(&runtime_toml, &[("items", &env.testkit_pipeline(""))])?;
    env.sql("insert into item values (1, 'one', 1)").await?;
    broker.produce(&topic, 0, Some(&pg_key(1)), Some("{not json"), &[]).await?;
    produce_item(&broker, &env, &topic, 1, "c", item(1, "one", 1)).await?;
    let running = Running::start(config).await?;

    // The batch's cache write may happen, but nothing is committed while the
    // dead letter cannot be written: a restart would read both records again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let offsets = broker.committed_and_end(&env.prefix, &topic, 1)?;
    ensure!(offsets[0].0 < offsets[0].1, "committed while the dead letter was not written: {offsets:?}");

    broker.create_topic(&dead_letters, 1).await?;
    wait_committed(&broker, &env.prefix, &topic, 1).await?;
    let letters = broker.read_all(&dead_letters, 1, 1)?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].value.as_deref(), Some("{not json"));
    wait_json(&env, &format!("{}:item:1", env.prefix), Some(&item(1, "one", 1))).await?;
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_rides_out_a_broker_restart() -> Result<()> {
    let env = item_env("kafka_broker_restart").await?;
    // A broker of the test's own: its log keeps topics, records and group offsets across the restart.
    let mut broker = Broker::private(&[])?;
    let topic = env.stream("item");
    broker.create_topic(&topic, 2).await?;
    let runtime_toml = kafka_runtime_toml(&env, &broker, std::slice::from_ref(&topic), "");
    let config = env.config(&runtime_toml, &[("items", &env.testkit_pipeline(""))])?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);

    env.sql("insert into item select g, 'v1', 1 from generate_series(1, 4) g").await?;
    for id in 1..=4 {
        produce_item(&broker, &env, &topic, 2, "c", item(id, "v1", 1)).await?;
    }
    let running = Running::start(config).await?;
    for id in 1..=4 {
        wait_json(&env, &key(id), Some(&item(id, "v1", 1))).await?;
    }
    wait_no_lag(&broker, &env.prefix, &topic).await?;

    // Writers keep changing rows while the broker is SIGKILLed and down for
    // longer than a heartbeat interval; their producer (acks=all) buffers and
    // retries, as Kafka Connect's does, until the broker is back.
    let producer = broker.producer();
    let writer = {
        let (env_pg, topic, prefix) = (env.pg.clone(), topic.clone(), env.prefix.clone());
        tokio::spawn(async move {
            for version in 2..=40i64 {
                sqlx::query(&format!("update {prefix}.item set name = 'v{version}', version = {version}"))
                    .execute(&env_pg)
                    .await?;
                for id in 1..=4i64 {
                    let after = item(id, &format!("v{version}"), version);
                    let change =
                        with_schema(pg_change("u", &prefix, "item", None, Some(after), next_lsn())).to_string();
                    let key = with_schema(json!({ "id": id })).to_string();
                    let record = rdkafka::producer::FutureRecord::to(&topic)
                        .partition((id % 2) as i32)
                        .key(&key)
                        .payload(&change);
                    producer.send(record, Duration::from_secs(60)).await.map_err(|(e, _)| e)?;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| broker.restart(Duration::from_secs(4)))?;
    writer.await??;
    for id in 1..=4 {
        wait_json(&env, &key(id), Some(&item(id, "v40", 40))).await?;
    }
    wait_no_lag(&broker, &env.prefix, &topic).await?;
    running.stop().await
}

/// Waits until the group's lag, as evercache's own probe reads it, is zero.
async fn wait_no_lag(broker: &Broker, group: &str, topic: &str) -> Result<()> {
    let config = source_config(broker, &[topic.to_owned()], group, 100)?;
    wait_until(&format!("{topic} fully committed by {group}"), WAIT, || {
        let config = config.clone();
        async move { Ok(consumer_lag(&config).await.map_err(anyhow::Error::msg)?.iter().all(|(_, lag)| *lag == 0)) }
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_with_offset_gaps_is_read_to_its_end() -> Result<()> {
    let env = item_env("kafka_compact").await?;
    let broker = Broker::shared()?;
    let topic = env.stream("item");
    // Segments roll and are cleaned within a second, as `cleanup.policy=compact` topics are in production, only faster.
    let compact = [
        ("cleanup.policy", "compact"),
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("min.compaction.lag.ms", "0"),
        ("delete.retention.ms", "100"),
    ];
    broker.create_topic_with(&topic, 1, &compact).await?;
    let runtime_toml = kafka_runtime_toml(&env, &broker, std::slice::from_ref(&topic), "");
    let config = env.config(&runtime_toml, &[("items", &env.testkit_pipeline(""))])?;

    env.sql("insert into item select g, 'v3', 3 from generate_series(1, 10) g").await?;
    for version in 1..=3 {
        for id in 1..=10 {
            produce_item(&broker, &env, &topic, 1, "u", item(id, &format!("v{version}"), version)).await?;
        }
        // A new segment per round, so the older rounds can be compacted away.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.sql("delete from item where id = 10").await?;
    produce_item(&broker, &env, &topic, 1, "d", json!({ "id": 10 })).await?;
    broker.produce(&topic, 0, Some(&evercache_e2e::debezium::pg_key(10)), None, &[]).await?;
    let produced = 32;
    let (shared, name) = (&broker, &topic);
    let compacted = wait_until("the topic compacted", WAIT, || async move {
        let read = shared.read_all(name, 1, produced)?.len();
        if read >= produced {
            // Roll the active segment so the cleaner gets to it.
            shared.produce(name, 0, Some("{\"id\":0}"), None, &[]).await?;
        }
        Ok(read < produced)
    })
    .await;
    ensure!(compacted.is_ok(), "the broker never compacted the topic: {compacted:?}");

    let running = Running::start(config).await?;
    for id in 1..=9 {
        wait_json(&env, &format!("{}:item:{id}", env.prefix), Some(&item(id, "v3", 3))).await?;
    }
    wait_json(&env, &format!("{}:item:10", env.prefix), None).await?;
    wait_no_lag(&broker, &env.prefix, &topic).await?;
    running.stop().await
}
