//! The Kafka source against Apache Kafka (the suite's shared broker; a private
//! one for the restart): multi-partition topics, per-key order, commits only
//! after writes, restart from committed offsets, a group rebalance between two
//! instances, tombstones, the dead-letter topic, and a broker restart under load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use evercache::source::KafkaConfig;
use evercache::source::lag::{LagProbe, SourceLag};
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::kafka::{
    Broker, WAIT, exists, field, item, item_env, kafka_runtime_toml, partition_offset, produce_item, read_records,
    source_config, wait_committed, wait_json,
};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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
            // As the runtime's runner does, a failing read (a join refused while
            // the group settles under load) is retried, not the end of the reader.
            let batch = match source.next_batch().await {
                Ok(batch) => batch,
                Err(e) => {
                    eprintln!("reader {owner}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
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
