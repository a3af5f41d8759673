//! Redis Streams consumer-group mechanics against a real Redis: entries that
//! keep killing their consumers are dead-lettered by delivery count, and
//! acknowledged entries are trimmed only where every group is done with them.

use std::time::Duration;

use anyhow::Result;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn item_env(name: &str, rows: i64) -> Result<TestEnv> {
    let env = TestEnv::new(name).await?;
    env.sql(&format!(
        "create table item (id bigint primary key, name text, version bigint);
         insert into item select g, 'row', 1 from generate_series(1, {rows}) g"
    ))
    .await?;
    Ok(env)
}

async fn append_update(env: &mut TestEnv, stream: &str, id: i64) -> Result<String> {
    let value =
        pg_change("u", &env.prefix, "item", None, Some(json!({"id": id, "name": "row", "version": 1})), next_lsn());
    env.xadd_compact(stream, &pg_key(id), &value.to_string()).await
}

async fn xlen(env: &TestEnv, stream: &str) -> Result<u64> {
    let mut redis = env.redis.clone();
    Ok(redis::cmd("XLEN").arg(stream).query_async(&mut redis).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_its_consumers_keep_dying_on_is_dead_lettered_by_delivery_count() -> Result<()> {
    let mut env = item_env("deliveries", 2).await?;
    let stream = env.stream("item");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("evercache")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut env.redis)
        .await?;
    let poison = append_update(&mut env, &stream, 1).await?;
    // A consumer that reads the entry and dies, four times over.
    for id in [">", "0", "0", "0"] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("evercache")
            .arg("ghost")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&stream)
            .arg(id)
            .query_async(&mut env.redis)
            .await?;
    }
    append_update(&mut env, &stream, 2).await?;
    let extra = "max_deliveries = 3\nclaim_idle = \"100ms\"";
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), extra), &[("items", &env.testkit_pipeline(""))])?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let running = Running::start(config).await?;

    let key2 = format!("{}:item:2", env.prefix);
    wait_until("the healthy entry is applied", WAIT, || {
        let mut redis = env.redis.clone();
        let key2 = key2.clone();
        async move { Ok(redis::cmd("EXISTS").arg(&key2).query_async::<bool>(&mut redis).await?) }
    })
    .await?;
    wait_until("the poison entry is dead-lettered and nothing is pending", WAIT, || {
        let mut env_redis = env.redis.clone();
        let stream = stream.clone();
        async move {
            let dlq: u64 = redis::cmd("XLEN").arg(format!("{stream}:dlq")).query_async(&mut env_redis).await?;
            let pending: Vec<redis::Value> =
                redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut env_redis).await?;
            Ok(dlq == 1 && matches!(pending.first(), Some(redis::Value::Int(0))))
        }
    })
    .await?;
    let letters = env.dead_letters(&stream).await?;
    assert_eq!(letters[0]["__evercache.id"], poison);
    let error = &letters[0]["__evercache.error"];
    assert!(error.contains("delivered 5 times") && error.contains("max_deliveries = 3"), "{error}");
    assert_eq!(env.get(&format!("{}:item:1", env.prefix)).await?, None, "the poison entry was never applied");
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_every_entry_another_group_still_needs() -> Result<()> {
    let mut env = item_env("trim", 10).await?;
    let stream = env.stream("item");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("other")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut env.redis)
        .await?;
    let mut ids = Vec::new();
    for id in 1..=10 {
        ids.push(append_update(&mut env, &stream, id).await?);
    }
    // Another application's group has read four entries and acknowledged two.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("other")
        .arg("reader")
        .arg("COUNT")
        .arg(4)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut env.redis)
        .await?;
    let _: u64 =
        redis::cmd("XACK").arg(&stream).arg("other").arg(&ids[0]).arg(&ids[1]).query_async(&mut env.redis).await?;

    let extra = "trim_acked = true\ntrim_interval = \"100ms\"";
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), extra), &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    wait_until("entries both groups are done with are trimmed", WAIT, || {
        let (env, stream) = (&env, &stream);
        async move { Ok(xlen(env, stream).await? == 8) }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(xlen(&env, &stream).await?, 8, "the other group's pending and unread entries stay");
    let first: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").arg("COUNT").arg(1).query_async(&mut env.redis).await?;
    assert_eq!(first[0].0, ids[2], "the other group's oldest pending entry is the first kept");

    // Once the other group has read and acknowledged everything, the stream empties.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("other")
        .arg("reader")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut env.redis)
        .await?;
    let _: u64 = redis::cmd("XACK").arg(&stream).arg("other").arg(&ids[2..]).query_async(&mut env.redis).await?;
    wait_until("the stream is trimmed to nothing", WAIT, || {
        let (env, stream) = (&env, &stream);
        async move { Ok(xlen(env, stream).await? == 0) }
    })
    .await?;
    assert!(env.dead_letters(&stream).await?.is_empty());
    running.stop().await
}
