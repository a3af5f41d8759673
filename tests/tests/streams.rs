//! Redis Streams consumer-group mechanics against a real Redis: entries that
//! keep killing their consumers are dead-lettered by delivery count,
//! acknowledged entries are trimmed only where every group is done with them,
//! a backlog is applied in bigger, coalescing batches, and a record failing in
//! any read of such a batch is dead-lettered as itself.

use std::time::Duration;

use anyhow::Result;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::http::{get, sample};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

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
    let mut env = TestEnv::with_items("deliveries", 2).await?;
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
    let mut env = TestEnv::with_items("trim", 10).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_applied_in_batches_bigger_than_one_read_that_coalesce_hot_rows() -> Result<()> {
    let mut env = TestEnv::with_items("backlog", 10).await?;
    let stream = env.stream("item");
    let events: u32 = 3000;
    let mut fill = redis::pipe();
    for i in 0..events {
        let id = i64::from(i % 10) + 1;
        let value =
            pg_change("u", &env.prefix, "item", None, Some(json!({"id": id, "name": "row", "version": 1})), next_lsn());
        fill.cmd("XADD").arg(&stream).arg("*").arg(pg_key(id)).arg(value.to_string()).ignore();
    }
    fill.query_async::<()>(&mut env.redis).await?;
    env.sql("update item set version = 2").await?;

    let pipeline = format!("{}_items", env.prefix);
    let extra = "batch_size = 50\nmax_batch_entries = 950\n[http]\nlisten = \"127.0.0.1:0\"";
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), extra), &[(&pipeline, &env.testkit_pipeline(""))])?;
    let running = Running::start(config).await?;
    let addr = running.http.expect("[http] is configured");
    let p = ("pipeline", pipeline.as_str());
    wait_until("every event is written and acknowledged", WAIT, || {
        let mut redis = env.redis.clone();
        let stream = stream.clone();
        async move {
            let (_, page) = get(addr, "/metrics").await?;
            let written = sample(&page, "evercache_events_total", &[p, ("op", "u"), ("outcome", "written")]);
            let pending: Vec<redis::Value> =
                redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
            Ok(written == Some(f64::from(events)) && matches!(pending.first(), Some(redis::Value::Int(0))))
        }
    })
    .await?;
    let (_, page) = get(addr, "/metrics").await?;
    let at = |name: &str, labels: &[(&str, &str)]| sample(&page, name, labels).unwrap_or(f64::NAN);
    let batches = at("evercache_batch_events_count", &[p]);
    println!("{events} events in {batches} batches, {} keys recomputed", at("evercache_keys_recomputed_total", &[p]));
    assert!(at("evercache_batch_events_bucket", &[p, ("le", "50")]) < batches, "no batch held more than one read");
    assert_eq!(at("evercache_batch_events_bucket", &[p, ("le", "1000")]), batches, "max_batch_entries bounds a batch");
    // Every batch touches all ten rows, so fewer batches than reads means fewer recomputes.
    assert!(at("evercache_keys_recomputed_total", &[p]) < f64::from(events / 50 * 10));
    for id in 1..=10 {
        let value = env.get_json(&format!("{}:item:{id}", env.prefix)).await?.expect("written");
        assert_eq!(value["version"], 2, "row {id}: {value}");
    }
    assert!(env.dead_letters(&stream).await?.is_empty());
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_anywhere_in_a_batch_of_many_reads_are_dead_lettered_as_themselves() -> Result<()> {
    let mut env = TestEnv::with_items("many_reads", 10).await?;
    let stream = env.stream("item");
    let events = 1000;
    // An undecodable record in the first read; a `keys` failure and another
    // undecodable record hundreds of entries into the backlog batch after it.
    let (undecodable, failing) = ([7, 777], 420);
    let mut fill = redis::pipe();
    for i in 0..events {
        let id = if i == failing { 11 } else { i % 10 + 1 };
        let value = if undecodable.contains(&i) {
            "{not json".to_owned()
        } else {
            pg_change("u", &env.prefix, "item", None, Some(json!({"id": id, "name": "row", "version": 1})), next_lsn())
                .to_string()
        };
        fill.cmd("XADD").arg(&stream).arg("*").arg(pg_key(id)).arg(value);
    }
    let ids: Vec<String> = fill.query_async(&mut env.redis).await?;
    env.sql("update item set version = 2").await?;

    let pipeline = format!("{}_items", env.prefix);
    let extra = "batch_size = 50\nmax_batch_entries = 950";
    let config = env.config(
        &env.runtime_toml(std::slice::from_ref(&stream), extra),
        &[(&pipeline, &env.testkit_pipeline("fail_ids = \"11\""))],
    )?;
    let running = Running::start(config).await?;
    wait_until("every entry is acknowledged and the bad ones dead-lettered", WAIT, || {
        let mut redis = env.redis.clone();
        let stream = stream.clone();
        async move {
            let pending: Vec<redis::Value> =
                redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
            let letters: u64 = redis::cmd("XLEN").arg(format!("{stream}:dlq")).query_async(&mut redis).await?;
            Ok(matches!(pending.first(), Some(redis::Value::Int(0))) && letters == 3)
        }
    })
    .await?;

    let letters = env.dead_letters(&stream).await?;
    let lettered = |i: i64| letters.iter().find(|l| l["__evercache.id"] == ids[i as usize]);
    for i in undecodable {
        let letter = lettered(i).unwrap_or_else(|| panic!("entry {i} is dead-lettered: {letters:?}"));
        assert_eq!(letter[&pg_key(i % 10 + 1)], "{not json", "its own fields: {letter:?}");
        assert_eq!(letter["__evercache.pipeline"], "");
    }
    let failed = lettered(failing).unwrap_or_else(|| panic!("entry {failing} is dead-lettered: {letters:?}"));
    assert!(failed["__evercache.error"].contains("configured failure for id 11"), "{failed:?}");
    assert_eq!(failed["__evercache.pipeline"], pipeline);
    // 2 attempts of its batch, then one per bisection step: O(log n) for a batch of up to 950.
    let attempts: u32 = failed["__evercache.attempts"].parse()?;
    assert!((3..=2 + 10).contains(&attempts), "2 batch attempts + at most log2(950) < 10 halvings: {attempts}");
    for id in 1..=10 {
        let value = env.get_json(&format!("{}:item:{id}", env.prefix)).await?.expect("written");
        assert_eq!(value["version"], 2, "row {id}: {value}");
    }
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_bounded_in_bytes_and_fan_out_keys_are_written_in_parts() -> Result<()> {
    let mut env = TestEnv::with_items("bounded", 200).await?;
    let stream = env.stream("item");
    let events: i32 = 600;
    let mut fill = redis::pipe();
    for i in 0..events {
        let id = i64::from(i % 200) + 1;
        let value =
            pg_change("u", &env.prefix, "item", None, Some(json!({"id": id, "name": "row", "version": 1})), next_lsn());
        fill.cmd("XADD").arg(&stream).arg("*").arg(pg_key(id)).arg(value.to_string()).ignore();
    }
    fill.query_async::<()>(&mut env.redis).await?;
    env.sql("update item set version = 2").await?;

    let (whole, parts) = (format!("{}_items", env.prefix), format!("{}_parts", env.prefix));
    // A read of 50 entries is about 40 KB: past max_batch_bytes, so every batch is one read
    // although max_batch_entries would let a backlog batch grow to 5000.
    let extra = "batch_size = 50\nmax_batch_entries = 5000\nmax_batch_bytes = 8000\n[http]\nlisten = \"127.0.0.1:0\"";
    let in_parts = env
        .testkit_pipeline("")
        .replace("max_attempts = 2", "max_attempts = 2\nmax_batch_keys = 7")
        .replace(&format!("key_prefix = \"{}:item\"", env.prefix), &format!("key_prefix = \"{}:parts\"", env.prefix));
    let config = env.config(
        &env.runtime_toml(std::slice::from_ref(&stream), extra),
        &[(&whole, &env.testkit_pipeline("")), (&parts, &in_parts)],
    )?;
    let running = Running::start(config).await?;
    let addr = running.http.expect("[http] is configured");
    let (w, p) = (("pipeline", whole.as_str()), ("pipeline", parts.as_str()));
    wait_until("every event is written by both pipelines and acknowledged", WAIT, || {
        let mut redis = env.redis.clone();
        let stream = stream.clone();
        async move {
            let (_, page) = get(addr, "/metrics").await?;
            let written = |p| sample(&page, "evercache_events_total", &[p, ("op", "u"), ("outcome", "written")]);
            let pending: Vec<redis::Value> =
                redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
            let all = Some(f64::from(events));
            Ok(written(w) == all && written(p) == all && matches!(pending.first(), Some(redis::Value::Int(0))))
        }
    })
    .await?;
    let (_, page) = get(addr, "/metrics").await?;
    let at = |name: &str, labels: &[(&str, &str)]| sample(&page, name, labels).unwrap_or(f64::NAN);
    let batches = at("evercache_batch_events_count", &[w]);
    assert_eq!(at("evercache_batch_events_bucket", &[w, ("le", "50")]), batches, "no batch past one read: {batches}");
    let pieces = at("evercache_batch_events_count", &[p]);
    // Each part holds at most 7 distinct keys, and no 7 consecutive events share one here.
    assert_eq!(at("evercache_batch_events_bucket", &[p, ("le", "10")]), pieces, "parts of at most max_batch_keys");
    assert!(pieces >= f64::from(events) / 7.0, "{events} events in {pieces} parts");
    for id in 1..=200 {
        for key in [format!("{}:item:{id}", env.prefix), format!("{}:parts:{id}", env.prefix)] {
            let value = env.get_json(&key).await?.expect("written");
            assert_eq!(value["version"], 2, "{key}: {value}");
        }
    }
    assert!(env.dead_letters(&stream).await?.is_empty());
    running.stop().await
}
