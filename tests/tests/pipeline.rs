//! The whole event path against real Redis and Postgres: Debezium entries in a
//! Redis Stream → Wasm plugin → host queries → guarded Redis writes → XACK.

use std::time::Duration;

use anyhow::Result;
use evercache::event::position;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key, with_schema};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn item_env(name: &str) -> Result<TestEnv> {
    let env = TestEnv::new(name).await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    Ok(env)
}

fn item(id: i64, name: &str, version: i64) -> Value {
    json!({ "id": id, "name": name, "version": version })
}

/// Waits until `key` holds `expected` as JSON.
async fn wait_json(env: &TestEnv, key: &str, expected: &Value) -> Result<()> {
    let what = format!("{key} == {expected}");
    wait_until(&what, WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.to_owned();
        let expected = expected.clone();
        async move {
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            Ok(value.and_then(|v| serde_json::from_str::<Value>(&v).ok()).as_ref() == Some(&expected))
        }
    })
    .await
    .map(drop)
}

/// Waits until every entry of `streams` was delivered and acknowledged.
async fn wait_drained(env: &TestEnv, streams: &[String]) -> Result<()> {
    for stream in streams {
        let check_env = env.redis.clone();
        let stream_name = stream.clone();
        wait_until(&format!("{stream} fully acked"), WAIT, || {
            let mut redis = check_env.clone();
            let stream = stream_name.clone();
            async move {
                let pending: Vec<redis::Value> =
                    redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
                let groups: Vec<std::collections::HashMap<String, redis::Value>> =
                    redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut redis).await?;
                let lag = groups.first().and_then(|g| match g.get("lag") {
                    Some(redis::Value::Int(n)) => Some(*n),
                    _ => None,
                });
                Ok(matches!(pending.first(), Some(redis::Value::Int(0))) && lag == Some(0))
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_follow_the_database() -> Result<()> {
    let mut env = item_env("crud").await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    let key = format!("{}:item:1", env.prefix);
    let meta_key = format!("{{{key}}}:meta");

    env.sql("insert into item values (1, 'one', 1)").await?;
    let lsn = next_lsn();
    let insert = pg_change("c", &env.prefix, "item", None, Some(item(1, "one", 1)), lsn);
    env.xadd_compact(&stream, &pg_key(1), &insert.to_string()).await?;
    wait_json(&env, &key, &item(1, "one", 1)).await?;

    let meta = env.hgetall(&meta_key).await?;
    assert_eq!(meta["pos"], json!(position::postgres(lsn - 0x10, lsn)), "meta: {meta}");
    assert_eq!(meta["pipeline"], json!("items"));
    assert_eq!(meta["deleted"], json!("0"));
    assert!(meta["plugin"].as_str().unwrap_or("").starts_with("testkit@"), "meta: {meta}");
    assert_eq!(meta["committed_at_ms"], json!(insert["source"]["ts_ms"].to_string()));
    let read_at: u64 = meta["read_at_ms"].as_str().unwrap_or("0").parse()?;
    assert!(read_at > 1_700_000_000_000, "read_at_ms is a wall-clock time: {meta}");

    env.sql("update item set name = 'uno', version = 2 where id = 1").await?;
    let update = pg_change("u", &env.prefix, "item", None, Some(item(1, "uno", 2)), next_lsn());
    env.xadd_compact(&stream, &pg_key(1), &update.to_string()).await?;
    wait_json(&env, &key, &item(1, "uno", 2)).await?;

    env.sql("delete from item where id = 1").await?;
    let delete = pg_change("d", &env.prefix, "item", Some(json!({"id": 1})), None, next_lsn());
    env.xadd_compact(&stream, &pg_key(1), &delete.to_string()).await?;
    env.xadd_compact(&stream, &pg_key(1), "default").await?;
    wait_until("key deleted", WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.clone();
        async move { Ok(redis::cmd("EXISTS").arg(&key).query_async::<i64>(&mut redis).await? == 0) }
    })
    .await?;
    let meta = env.hgetall(&meta_key).await?;
    assert_eq!(meta["deleted"], json!("1"), "delete leaves a tombstone version: {meta}");
    let ttl: i64 = redis::cmd("TTL").arg(&meta_key).query_async(&mut env.redis).await?;
    assert!(ttl > 0, "the tombstone version expires (ttl {ttl})");

    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    assert!(env.dead_letters(&stream).await?.is_empty());
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sink_layouts_with_and_without_schema_wrapper() -> Result<()> {
    let mut env = item_env("layouts").await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    env.sql("insert into item values (1, 'a', 1), (2, 'b', 1), (3, 'c', 1), (4, 'd', 1)").await?;
    let schema = env.prefix.clone();
    let change = |id: i64, name: &str| pg_change("c", &schema, "item", None, Some(item(id, name, 1)), next_lsn());
    let wrapped_key = |id: i64| with_schema(json!({"id": id})).to_string();

    env.xadd_compact(&stream, &pg_key(1), &change(1, "a").to_string()).await?;
    env.xadd_compact(&stream, &wrapped_key(2), &with_schema(change(2, "b")).to_string()).await?;
    env.xadd_extended(&stream, &pg_key(3), &change(3, "c").to_string()).await?;
    env.xadd_extended(&stream, &wrapped_key(4), &with_schema(change(4, "d")).to_string()).await?;

    for (id, name) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        wait_json(&env, &format!("{}:item:{id}", env.prefix), &item(id, name, 1)).await?;
    }
    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    assert!(env.dead_letters(&stream).await?.is_empty());
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_heartbeats_and_transaction_markers_are_acked_without_effect() -> Result<()> {
    let mut env = item_env("skips").await?;
    let stream = env.stream("item");
    let heartbeat = format!("__debezium-heartbeat.{}", env.prefix);
    let transactions = format!("{}.transaction", env.prefix);
    let streams = vec![stream.clone(), heartbeat.clone(), transactions.clone()];
    let config = env.config(&env.runtime_toml(&streams, ""), &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;

    env.xadd_compact(&stream, &pg_key(7), "default").await?;
    env.xadd_compact(&stream, &pg_key(7), r#"{"schema":null,"payload":null}"#).await?;
    env.xadd_compact(
        &heartbeat,
        &json!({"serverName": "test"}).to_string(),
        &json!({"ts_ms": 1_700_000_000_000u64}).to_string(),
    )
    .await?;
    let begin = json!({"status": "BEGIN", "id": "571:53195829", "event_count": null, "data_collections": null, "ts_ms": 1_700_000_000_000u64});
    env.xadd_compact(&transactions, &json!({"id": "571:53195829"}).to_string(), &begin.to_string()).await?;
    // A real change after them proves the batch went through.
    env.sql("insert into item values (8, 'eight', 1)").await?;
    let change = pg_change("c", &env.prefix, "item", None, Some(item(8, "eight", 1)), next_lsn());
    env.xadd_compact(&stream, &pg_key(8), &change.to_string()).await?;
    wait_json(&env, &format!("{}:item:8", env.prefix), &item(8, "eight", 1)).await?;
    wait_drained(&env, &streams).await?;

    assert_eq!(env.get(&format!("{}:item:7", env.prefix)).await?, None, "tombstones never reach the plugin");
    for stream in &streams {
        assert!(env.dead_letters(stream).await?.is_empty(), "no dead letters in {stream}");
    }
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_replays_and_duplicates_never_overwrite_a_newer_value() -> Result<()> {
    let mut env = item_env("order").await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    let key = format!("{}:item:5", env.prefix);

    let old_lsn = next_lsn();
    let new_lsn = next_lsn();
    env.sql("insert into item values (5, 'new', 2)").await?;
    let newer = pg_change("u", &env.prefix, "item", None, Some(item(5, "new", 2)), new_lsn);
    for _ in 0..3 {
        env.xadd_compact(&stream, &pg_key(5), &newer.to_string()).await?;
    }
    wait_json(&env, &key, &item(5, "new", 2)).await?;
    wait_drained(&env, std::slice::from_ref(&stream)).await?;

    // The database now answers with an outdated row, as a slow replica or a
    // recompute racing a newer commit would: the older event's write must lose.
    env.sql("update item set name = 'stale', version = 1 where id = 5").await?;
    let older = pg_change("u", &env.prefix, "item", None, Some(item(5, "old", 1)), old_lsn);
    env.xadd_compact(&stream, &pg_key(5), &older.to_string()).await?;
    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    assert_eq!(env.get_json(&key).await?, Some(item(5, "new", 2)), "an older event never overwrites a newer value");
    let meta = env.hgetall(&format!("{{{key}}}:meta")).await?;
    assert_eq!(meta["pos"], json!(position::postgres(new_lsn - 0x10, new_lsn)));

    // A genuinely newer event applies whatever the database holds now.
    let newest = pg_change("u", &env.prefix, "item", None, Some(item(5, "stale", 1)), next_lsn());
    env.xadd_compact(&stream, &pg_key(5), &newest.to_string()).await?;
    wait_json(&env, &key, &item(5, "stale", 1)).await?;
    assert!(env.dead_letters(&stream).await?.is_empty());
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_dead_lettered_and_the_rest_applied() -> Result<()> {
    let mut env = item_env("malformed").await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[("items", &env.testkit_pipeline(""))])?;
    env.sql("insert into item values (1, 'one', 1)").await?;
    // Queue everything before starting so it arrives as one batch.
    let bad_id = env.xadd_compact(&stream, &pg_key(1), "{not json").await?;
    let unknown_op = pg_change("x", &env.prefix, "item", None, Some(item(1, "one", 1)), next_lsn());
    env.xadd_compact(&stream, &pg_key(1), &unknown_op.to_string()).await?;
    let good = pg_change("c", &env.prefix, "item", None, Some(item(1, "one", 1)), next_lsn());
    env.xadd_compact(&stream, &pg_key(1), &good.to_string()).await?;
    let running = Running::start(config).await?;

    wait_json(&env, &format!("{}:item:1", env.prefix), &item(1, "one", 1)).await?;
    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    let letters = env.dead_letters(&stream).await?;
    assert_eq!(letters.len(), 2, "both bad records are dead-lettered: {letters:?}");
    let json_letter = &letters[0];
    assert_eq!(json_letter["__evercache.id"], bad_id);
    assert_eq!(json_letter["__evercache.stream"], stream);
    assert_eq!(json_letter[&pg_key(1)], "{not json", "the original fields are kept");
    assert!(json_letter["__evercache.error"].contains("value"), "reason names the part: {json_letter:?}");
    assert!(letters[1]["__evercache.error"].contains('x'), "unknown op named: {:?}", letters[1]);
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_are_retried_then_dead_lettered_without_blocking_others() -> Result<()> {
    let mut env = item_env("plugin_error").await?;
    let stream = env.stream("item");
    let config = env.config(
        &env.runtime_toml(std::slice::from_ref(&stream), ""),
        &[("items", &env.testkit_pipeline("fail_ids = \"13\"\npanic_ids = \"14\""))],
    )?;
    env.sql("insert into item values (12, 'twelve', 1), (13, 'thirteen', 1), (14, 'fourteen', 1), (15, 'fifteen', 1)")
        .await?;
    for (id, name) in [(12, "twelve"), (13, "thirteen"), (14, "fourteen"), (15, "fifteen")] {
        let change = pg_change("c", &env.prefix, "item", None, Some(item(id, name, 1)), next_lsn());
        env.xadd_compact(&stream, &pg_key(id), &change.to_string()).await?;
    }
    let running = Running::start(config).await?;

    wait_json(&env, &format!("{}:item:12", env.prefix), &item(12, "twelve", 1)).await?;
    wait_json(&env, &format!("{}:item:15", env.prefix), &item(15, "fifteen", 1)).await?;
    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    let letters = env.dead_letters(&stream).await?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let failed = &letters[0];
    assert_eq!(failed["__evercache.pipeline"], "items");
    assert!(failed["__evercache.error"].contains("configured failure for id 13"), "{failed:?}");
    // Every attempt that included it: 2 of the whole batch, 1 of its half {12, 13}, 1 alone.
    assert_eq!(failed["__evercache.attempts"], "4", "2 batch attempts + 1 in its half + 1 alone");
    assert!(letters[1]["__evercache.error"].contains("trapped"), "a panic is a trap: {:?}", letters[1]);
    assert_eq!(env.get(&format!("{}:item:13", env.prefix)).await?, None);
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_waited_out_never_dead_lettered() -> Result<()> {
    let mut env = item_env("db_down").await?;
    let stream = env.stream("item");
    // Nothing listens on port 1: every host query fails as "unavailable".
    let runtime = env
        .runtime_toml(std::slice::from_ref(&stream), "")
        .replace("postgres://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1:1/test");
    let config = env.config(&runtime, &[("items", &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    let change = pg_change("c", &env.prefix, "item", None, Some(item(1, "one", 1)), next_lsn());
    env.xadd_compact(&stream, &pg_key(1), &change.to_string()).await?;

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.pending(&stream).await?, 1, "the entry stays pending while the database is down");
    assert!(env.dead_letters(&stream).await?.is_empty(), "transient failures are never dead-lettered");
    running.stop().await?;
    assert_eq!(env.pending(&stream).await?, 1, "shutdown does not ack unfinished work");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_always_times_out_is_waited_out_then_dead_lettered_while_the_database_answers() -> Result<()> {
    let mut env = item_env("transient_bound").await?;
    let stream = env.stream("item");
    // Every statement for row 2 sleeps past the database's statement timeout: a
    // "transient" error that the healthy database says is the batch's own.
    let runtime = env.runtime_toml(std::slice::from_ref(&stream), "").replace(
        "url = \"postgres://postgres@127.0.0.1:5432/test\"",
        "url = \"postgres://postgres@127.0.0.1:5432/test\"\nstatement_timeout = \"200ms\"",
    );
    let pipeline = env
        .testkit_pipeline("slow_query_ids = \"2\"")
        .replace("max_attempts = 2", "max_attempts = 2\nmax_transient_wait = \"1500ms\"\ncall_timeout = \"10s\"");
    let config = env.config(&runtime, &[("items", &pipeline)])?;
    env.sql("insert into item values (1, 'one', 1), (2, 'two', 1)").await?;
    for (id, name) in [(1, "one"), (2, "two")] {
        let change = pg_change("c", &env.prefix, "item", None, Some(item(id, name, 1)), next_lsn());
        env.xadd_compact(&stream, &pg_key(id), &change.to_string()).await?;
    }
    let started = std::time::Instant::now();
    let running = Running::start(config).await?;
    wait_json(&env, &format!("{}:item:1", env.prefix), &item(1, "one", 1)).await?;
    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    let took = started.elapsed();
    let letters = env.dead_letters(&stream).await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = &letters[0]["__evercache.error"];
    assert!(error.contains("SQLSTATE 57014"), "the statement timeout is named: {error}");
    assert!(took >= Duration::from_millis(1500), "waited out for max_transient_wait first: {took:?}");
    assert_eq!(env.get(&format!("{}:item:2", env.prefix)).await?, None);
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_mode_deletes_touched_keys() -> Result<()> {
    let mut env = item_env("invalidate").await?;
    let stream = env.stream("item");
    let pipeline = env.testkit_pipeline("").replace("max_attempts = 2", "max_attempts = 2\non_change = \"invalidate\"");
    let config = env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[("items", &pipeline)])?;
    let key = format!("{}:item:3", env.prefix);
    redis::cmd("SET").arg(&key).arg("cached by the application").query_async::<()>(&mut env.redis).await?;
    let running = Running::start(config).await?;
    let change = pg_change("u", &env.prefix, "item", None, Some(item(3, "three", 2)), next_lsn());
    env.xadd_compact(&stream, &pg_key(3), &change.to_string()).await?;
    // Wait for the outcome itself; the group's drained state alone raced it
    // once in about six parallel runs (cause not found yet).
    wait_until("the key is deleted, not recomputed", WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.clone();
        async move { Ok(redis::cmd("EXISTS").arg(&key).query_async::<i64>(&mut redis).await? == 0) }
    })
    .await?;
    wait_drained(&env, std::slice::from_ref(&stream)).await?;
    assert_eq!(env.get(&key).await?, None, "the key is deleted, not recomputed");
    let meta = env.hgetall(&format!("{{{key}}}:meta")).await?;
    assert_eq!(meta["deleted"], json!("1"));
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_ttl_wins_over_the_pipeline_safety_ttl() -> Result<()> {
    let mut env = item_env("ttl").await?;
    let streams = vec![env.stream("item")];
    let plugin_ttl =
        env.testkit_pipeline("ttl_seconds = \"30\"").replace("max_attempts = 2", "max_attempts = 2\nttl = \"1h\"");
    let safety_only = env
        .testkit_pipeline("")
        .replace("max_attempts = 2", "max_attempts = 2\nttl = \"1h\"")
        .replace(&format!("key_prefix = \"{}:item\"", env.prefix), &format!("key_prefix = \"{}:safe\"", env.prefix));
    let config = env.config(&env.runtime_toml(&streams, ""), &[("own", &plugin_ttl), ("safe", &safety_only)])?;
    env.sql("insert into item values (1, 'one', 1)").await?;
    let running = Running::start(config).await?;
    let change = pg_change("c", &env.prefix, "item", None, Some(item(1, "one", 1)), next_lsn());
    env.xadd_compact(&streams[0], &pg_key(1), &change.to_string()).await?;
    wait_json(&env, &format!("{}:item:1", env.prefix), &item(1, "one", 1)).await?;
    wait_json(&env, &format!("{}:safe:1", env.prefix), &item(1, "one", 1)).await?;
    let own: i64 = redis::cmd("TTL").arg(format!("{}:item:1", env.prefix)).query_async(&mut env.redis).await?;
    let safe: i64 = redis::cmd("TTL").arg(format!("{}:safe:1", env.prefix)).query_async(&mut env.redis).await?;
    assert!((1..=30).contains(&own), "plugin TTL: {own}");
    assert!((31..=3600).contains(&safe), "pipeline safety TTL: {safe}");
    running.stop().await
}
