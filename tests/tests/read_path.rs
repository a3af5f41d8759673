//! The read path (`GET /v1/keys/{key}`) against real Redis and Postgres: a
//! miss is recomputed once however many readers ask, across two instances; a
//! fill never wins against a change; errors are answered with their cause
//! and leave nothing written.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::http::{get, sample};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const HTTP: &str = "[http]\nlisten = \"127.0.0.1:0\"\nprobe_interval = \"200ms\"\n";

/// A pipeline over `<prefix>.item` owning `<prefix>:item:*`.
fn owning_pipeline(env: &TestEnv) -> String {
    format!("key_patterns = [\"{}:item:*\"]\n{}", env.prefix, env.testkit_pipeline(""))
}

async fn read(addr: SocketAddr, key: &str) -> Result<(u16, Value)> {
    let (code, body) = get(addr, &format!("/v1/keys/{key}")).await?;
    let body = serde_json::from_str(&body).with_context(|| format!("GET {key}: {body}"))?;
    Ok((code, body))
}

async fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let (_, page) = get(addr, "/metrics").await?;
    Ok(sample(&page, name, labels).unwrap_or(0.0))
}

/// Sequential and index scans of `<prefix>.item` so far: one per plugin query.
async fn item_scans(env: &TestEnv) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select coalesce(seq_scan, 0) + coalesce(idx_scan, 0) from pg_stat_user_tables \
         where schemaname = $1 and relname = 'item'",
    )
    .bind(&env.prefix)
    .fetch_one(&env.pg)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_recomputed_once_for_all_readers_of_two_instances() -> Result<()> {
    let env = TestEnv::with_items("reads_once", 3).await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), HTTP), &[("reads_once", &owning_pipeline(&env))])?;
    let config_for_status = config.clone();
    let (first, second) = (Running::start(config.clone()).await?, Running::start(config).await?);
    let addrs = [first.http.context("no listener")?, second.http.context("no listener")?];
    let key = format!("{}:item:1", env.prefix);
    // Scans are counted when a backend's transaction ends; let the setup's settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scans_before = item_scans(&env).await?;

    let readers: Vec<_> = (0..200)
        .map(|i| {
            let (addr, key) = (addrs[i % 2], key.clone());
            tokio::spawn(async move { read(addr, &key).await })
        })
        .collect();
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for reader in readers {
        let (code, body) = reader.await??;
        ensure!(code == 200, "{code}: {body}");
        let value: Value = serde_json::from_str(body["value"].as_str().context("a string value")?)?;
        ensure!(value == json!({"id": 1, "name": "row", "version": 1}), "{body}");
        *served.entry(body["served"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    println!("200 concurrent readers of one missing key: {served:?}");
    ensure!(served.get("filled") == Some(&1), "exactly one reader filled the key: {served:?}");
    let labels = [("pipeline", "reads_once"), ("how", "recomputed")];
    let recomputed = metric(addrs[0], "evercache_read_fills_total", &labels).await?;
    ensure!(recomputed == 1.0, "one recompute across both instances, counted {recomputed}");
    wait_until("Postgres counted the fill's query", WAIT, || async { Ok(item_scans(&env).await? > scans_before) })
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(item_scans(&env).await? == scans_before + 1, "one query reached Postgres");

    let (code, body) = read(addrs[1], &key).await?;
    ensure!(code == 200 && body["served"] == "hit", "{body}");
    ensure!(body["type"] == "string" && body["pipeline"] == "reads_once", "{body}");
    ensure!(body["meta"]["writes"] == 1 && body["meta"]["deleted"] == false, "{body}");
    ensure!(body["meta"]["plugin"].as_str().is_some_and(|p| p.starts_with("testkit@")), "{body}");

    // A row that does not exist: a tombstone is written, and answered from then on.
    let absent = format!("{}:item:999", env.prefix);
    let (code, body) = read(addrs[0], &absent).await?;
    ensure!(code == 404 && body["served"] == "filled" && body["meta"]["deleted"] == true, "{body}");
    let (code, body) = read(addrs[1], &absent).await?;
    ensure!(code == 404 && body["served"] == "hit", "{body}");

    let (code, body) = read(addrs[0], "somebody:else:1").await?;
    ensure!(code == 404, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(error.contains("no pipeline owns key \"somebody:else:1\"") && error.contains("reads_once:"), "{body}");
    let hits = metric(addrs[1], "evercache_reads_total", &[("pipeline", "reads_once"), ("result", "hit")]).await?;
    ensure!(hits >= 2.0, "hits counted: {hits}");
    let mut totals = [0u64; 3];
    for addr in addrs {
        let (_, status) = get(addr, "/api/status").await?;
        let status: Value = serde_json::from_str(&status)?;
        let counts = &status["pipelines"][0]["reads"];
        for (total, field) in totals.iter_mut().zip(["hits", "misses", "filled"]) {
            *total += counts[field].as_u64().context("a read counter")?;
        }
    }
    // 200 readers, one more of key 1, and two of the absent row: one fill each for two keys.
    ensure!(totals[0] + totals[1] == 203 && totals[2] == 2, "hits, misses, filled: {totals:?}");
    let report = || async { evercache::status::report(&config_for_status).await.map_err(anyhow::Error::from) };
    wait_until("evercache status shows the read counters", WAIT, || async {
        Ok(report().await?.contains("pipeline reads_once: reads "))
    })
    .await?;
    first.stop().await?;
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_error_is_answered_502_and_writes_nothing() -> Result<()> {
    let mut env = TestEnv::with_items("reads_error", 1).await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), HTTP), &[("reads_error", &owning_pipeline(&env))])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no listener")?;
    let key = format!("{}:item:notanumber", env.prefix);
    let (code, body) = read(addr, &key).await?;
    ensure!(code == 502, "{code}: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(error.contains("pipeline 'reads_error'") && error.contains("key without a numeric id"), "{body}");
    ensure!(env.get(&key).await?.is_none(), "no value written");
    let meta: bool = redis::cmd("EXISTS").arg(format!("{{{key}}}:meta")).query_async(&mut env.redis).await?;
    ensure!(!meta, "no metadata written");
    let lock: bool = redis::cmd("EXISTS").arg(format!("{{{key}}}:fill")).query_async(&mut env.redis).await?;
    ensure!(!lock, "the fill lock was let go");

    // Fifty cold keys and the bad one at once: recomputed in a few calls, the
    // bad key failing only its own reader.
    env.sql("insert into item select g, 'row', 1 from generate_series(2, 51) g").await?;
    let calls = || metric(addr, "evercache_recompute_duration_seconds_count", &[("pipeline", "reads_error")]);
    let calls_before = calls().await?;
    let readers: Vec<_> = (2..=51)
        .map(|id| format!("{}:item:{id}", env.prefix))
        .chain([key.clone()])
        .map(|key| tokio::spawn(async move { read(addr, &key).await.map(|(code, _)| (key, code)) }))
        .collect();
    for reader in readers {
        let (read_key, code) = reader.await??;
        ensure!(code == if read_key == key { 502 } else { 200 }, "{read_key}: {code}");
    }
    let calls = calls().await? - calls_before;
    println!("51 concurrent misses took {calls} recompute calls");
    ensure!(calls < 25.0, "misses of different keys share recompute calls: {calls}");
    running.stop().await
}

/// The race made certain: a fill reads a row, the row changes and the change
/// is written while the fill is still busy; the fill's older value is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_read_before_a_change_never_overwrites_it() -> Result<()> {
    let mut env = TestEnv::with_items("reads_late_fill", 1).await?;
    env.sql("update item set name = 'slow'").await?;
    let stream = env.stream("item");
    let pipeline =
        format!("key_patterns = [\"{}:item:*\"]\n{}", env.prefix, env.testkit_pipeline("slow_name = \"slow\""));
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), HTTP), &[("reads_late_fill", &pipeline)])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no listener")?;
    let (prefix, key) = (env.prefix.clone(), format!("{}:item:1", env.prefix));
    let change = |name: &str, version: i64| {
        let after = json!({"id": 1, "name": name, "version": version});
        pg_change("u", &prefix, "item", None, Some(after), next_lsn()).to_string()
    };
    env.xadd_compact(&stream, &pg_key(1), &change("slow", 1)).await?;
    wait_until("the change is cached", WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.clone();
        async move { Ok(redis::cmd("EXISTS").arg(&key).query_async::<bool>(&mut redis).await?) }
    })
    .await?;
    // Evicted: the value goes, its metadata (one write) stays.
    redis::cmd("DEL").arg(&key).query_async::<()>(&mut env.redis).await?;

    let fill = tokio::spawn({
        let key = key.clone();
        async move { read(addr, &key).await }
    });
    // The fill has read version 1 and pauses on the 'slow' row; the row changes now.
    tokio::time::sleep(Duration::from_millis(150)).await;
    env.sql("update item set name = 'fast', version = 2").await?;
    env.xadd_compact(&stream, &pg_key(1), &change("fast", 2)).await?;
    let (code, body) = fill.await??;
    ensure!(code == 200, "{code}: {body}");
    let answered: Value = serde_json::from_str(body["value"].as_str().context("a string value")?)?;
    ensure!(answered["version"] == 2, "the reader gets the change's value, not the fill's: {body}");
    ensure!(body["meta"]["writes"] == 2, "the change was the second write; the fill wrote nothing: {body}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cached = env.get_json(&key).await?.context("a value")?;
    ensure!(cached["version"] == 2, "cached {cached}");
    running.stop().await
}

/// A key with a 2 s TTL read every 50 ms for 5 s never misses: its readers
/// refresh it ahead of expiry. With refresh-ahead off, the same reads miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_with_a_ttl_is_refreshed_ahead_and_never_misses() -> Result<()> {
    let env = TestEnv::with_items("reads_refresh", 1).await?;
    let stream = env.stream("item");
    let pipeline = format!("key_patterns = [\"{}:item:*\"]\n{}", env.prefix, env.testkit_pipeline("ttl_seconds = 2"));
    let key = format!("{}:item:1", env.prefix);
    let mut served_by_beta = Vec::new();
    for beta in ["300", "0"] {
        let extra = format!("{HTTP}[read]\nrefresh_ahead_beta = {beta}\n");
        let runtime = env.runtime_toml(std::slice::from_ref(&stream), &extra);
        let config = env.config(&runtime, &[("reads_refresh", &pipeline)])?;
        let running = Running::start(config).await?;
        let addr = running.http.context("no listener")?;
        redis::cmd("DEL").arg(&key).query_async::<()>(&mut env.redis.clone()).await?;
        let mut served = std::collections::BTreeMap::<String, usize>::new();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let (code, body) = read(addr, &key).await?;
            ensure!(code == 200, "{code}: {body}");
            *served.entry(body["served"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refreshed = metric(addr, "evercache_read_refreshes_total", &[("pipeline", "reads_refresh")]).await?;
        println!("beta {beta}: {served:?}, {refreshed} refreshes");
        served_by_beta.push((served, refreshed));
        running.stop().await?;
    }
    let (on, refreshed) = &served_by_beta[0];
    ensure!(on.get("filled") == Some(&1) && on.len() == 2, "one fill, then only hits: {on:?}");
    ensure!(*refreshed >= 2.0, "a 2 s TTL outlived 5 s by refreshes: {refreshed}");
    let (off, _) = &served_by_beta[1];
    ensure!(off.get("filled").is_some_and(|n| *n >= 2), "without refresh-ahead the key expires and misses: {off:?}");
    Ok(())
}

/// A truncate names no row; a pipeline that owns key patterns recomputes every
/// key it owns in the cache, so the cache follows the emptied table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_recomputes_every_owned_key() -> Result<()> {
    let mut env = TestEnv::with_items("reads_truncate", 5).await?;
    let stream = env.stream("item");
    let config = env.config(
        &env.runtime_toml(std::slice::from_ref(&stream), HTTP),
        &[("reads_truncate", &owning_pipeline(&env))],
    )?;
    let running = Running::start(config).await?;
    let prefix = env.prefix.clone();
    for id in 1..=5 {
        let after = json!({"id": id, "name": "row", "version": 1});
        let change = pg_change("u", &prefix, "item", None, Some(after), next_lsn());
        env.xadd_compact(&stream, &pg_key(id), &change.to_string()).await?;
    }
    let outsider = format!("{prefix}:other:1");
    redis::cmd("SET").arg(&outsider).arg("not owned").query_async::<()>(&mut env.redis).await?;
    let redis = env.redis.clone();
    let count = move |pattern: String| {
        let mut redis = redis.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut redis).await?;
            Ok::<_, anyhow::Error>(keys.len())
        }
    };
    wait_until("five keys cached", WAIT, || async { Ok(count(format!("{prefix}:item:*")).await? == 5) }).await?;

    env.sql("truncate item").await?;
    let truncate = pg_change("t", &prefix, "item", None, None, next_lsn());
    env.xadd_compact(&stream, "null", &truncate.to_string()).await?;
    wait_until("every owned key follows the emptied table", WAIT, || async {
        Ok(count(format!("{prefix}:item:*")).await? == 0)
    })
    .await?;
    for id in 1..=5 {
        let meta: Option<String> = redis::cmd("HGET")
            .arg(format!("{{{prefix}:item:{id}}}:meta"))
            .arg("deleted")
            .query_async(&mut env.redis)
            .await?;
        ensure!(meta.as_deref() == Some("1"), "key {id} is a tombstone: {meta:?}");
    }
    ensure!(env.get(&outsider).await?.as_deref() == Some("not owned"), "keys outside the patterns are left alone");
    ensure!(env.dead_letters(&stream).await?.is_empty(), "no dead letters");
    running.stop().await
}

/// Rows keep changing while their keys are evicted and read back: whatever
/// the interleaving, every key ends at its row's last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_racing_changes_never_leave_a_stale_value() -> Result<()> {
    const ROWS: i64 = 20;
    const UPDATES: usize = 1500;
    let mut env = TestEnv::with_items("reads_race", ROWS).await?;
    let stream = env.stream("item");
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), HTTP), &[("reads_race", &owning_pipeline(&env))])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no listener")?;
    let prefix = env.prefix.clone();

    let stop = tokio_util::sync::CancellationToken::new();
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (stop, prefix, mut redis) = (stop.clone(), prefix.clone(), env.redis.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                // Each reader its own rows, so no reader evicts what another just filled.
                let mut id = r as i64 + 1;
                while !stop.is_cancelled() {
                    id = if id + 4 > ROWS { r as i64 + 1 } else { id + 4 };
                    let key = format!("{prefix}:item:{id}");
                    // An eviction: the value goes, its metadata stays.
                    redis::cmd("DEL").arg(&key).query_async::<()>(&mut redis).await?;
                    let (code, body) = read(addr, &key).await?;
                    ensure!(code == 200, "{code}: {body}");
                    reads += 1;
                }
                Ok::<_, anyhow::Error>(reads)
            })
        })
        .collect();
    for i in 0..UPDATES {
        let id = (i as i64 * 7) % ROWS + 1;
        let version: i64 = sqlx::query_scalar(&format!(
            "update {prefix}.item set version = version + 1 where id = $1 returning version"
        ))
        .bind(id)
        .fetch_one(&env.pg)
        .await?;
        let after = json!({"id": id, "name": "row", "version": version});
        let change = pg_change("u", &prefix, "item", None, Some(after), next_lsn());
        env.xadd_compact(&stream, &pg_key(id), &change.to_string()).await?;
    }
    stop.cancel();
    let mut reads = 0;
    for reader in readers {
        reads += reader.await??;
    }
    let fills =
        metric(addr, "evercache_read_fills_total", &[("pipeline", "reads_race"), ("how", "recomputed")]).await?;
    println!("{UPDATES} updates raced {reads} evict-and-read cycles ({fills} fills)");
    ensure!(fills > 100.0, "the race needs fills to race: {fills}");

    let expected: Vec<(i64, i64)> =
        sqlx::query_as(&format!("select id, version from {prefix}.item order by id")).fetch_all(&env.pg).await?;
    let took = wait_until("every key holds its row's last version", WAIT, || {
        let (mut redis, expected, prefix) = (env.redis.clone(), expected.clone(), prefix.clone());
        async move {
            for (id, version) in expected {
                let text: Option<String> =
                    redis::cmd("GET").arg(format!("{prefix}:item:{id}")).query_async(&mut redis).await?;
                let cached = text.and_then(|t| serde_json::from_str::<Value>(&t).ok());
                if cached.as_ref().and_then(|v| v["version"].as_i64()) != Some(version) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    println!("converged {took:?} after the last update");
    // Settled: nothing arrives later to change a value.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, version) in &expected {
        let cached = env.get_json(&format!("{prefix}:item:{id}")).await?.context("a value")?;
        ensure!(cached["version"] == *version, "row {id}: {cached} vs version {version}");
    }
    ensure!(env.dead_letters(&stream).await?.is_empty(), "no dead letters");
    running.stop().await
}

/// Pages the application caches itself, owned by an invalidate pipeline: a
/// truncate deletes every one of them, and the read path never fills one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_pipeline_deletes_its_keys_on_a_truncate_and_never_fills_them() -> Result<()> {
    let mut env = TestEnv::with_items("reads_invalidate", 3).await?;
    let stream = env.stream("item");
    let pipeline = format!("on_change = \"invalidate\"\n{}", owning_pipeline(&env));
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), HTTP), &[("reads_invalidate", &pipeline)])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no listener")?;
    let prefix = env.prefix.clone();
    for id in 1..=3 {
        redis::cmd("SET").arg(format!("{prefix}:item:{id}")).arg("page").query_async::<()>(&mut env.redis).await?;
    }
    let (code, body) = read(addr, &format!("{prefix}:item:1")).await?;
    ensure!(code == 404, "{body}");
    ensure!(
        body["error"].as_str().unwrap_or_default().contains("invalidates its keys and does not fill them"),
        "{body}"
    );

    env.sql("truncate item").await?;
    let truncate = pg_change("t", &prefix, "item", None, None, next_lsn());
    env.xadd_compact(&stream, "null", &truncate.to_string()).await?;
    wait_until("every owned page deleted", WAIT, || {
        let mut redis = env.redis.clone();
        let pattern = format!("{prefix}:item:*");
        async move { Ok(redis::cmd("KEYS").arg(pattern).query_async::<Vec<String>>(&mut redis).await?.is_empty()) }
    })
    .await?;
    ensure!(env.dead_letters(&stream).await?.is_empty(), "no dead letters");
    running.stop().await
}
