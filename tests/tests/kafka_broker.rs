//! What the broker itself does to the Kafka source, against Apache Kafka: a
//! dead-letter topic that does not exist where topics are not created on first
//! use, a broker SIGKILLed and restarted under load, and a compacted topic read
//! across its offset gaps.

use std::time::Duration;

use anyhow::{Result, ensure};
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key, with_schema};
use evercache_e2e::kafka::{
    Broker, WAIT, item, item_env, kafka_runtime_toml, produce_item, wait_committed, wait_json, wait_no_lag,
};
use evercache_e2e::{Running, wait_until};
use serde_json::json;

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
