//! The built-in Postgres capture and a commit that is decoded but not yet
//! visible: a private cluster waits for a synchronous standby that never
//! connects (`synchronous_standby_names = 'nobody'`), so a writer with
//! `synchronous_commit = on` has its commit flushed and streamed while it is
//! still invisible to new snapshots, until the test cancels its wait. With
//! the visibility gate the capture holds the batch as long as that lasts, says
//! why on `/ready`, and the key ends equal to the row; with `visibility = "off"`
//! the recompute reads the row from before the change and the key stays stale.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use evercache_e2e::held_commit::{HeldCommit, sync_standby_cluster};
use evercache_e2e::http::{get, sample};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, wait_json, wait_until};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

const WAIT: Duration = Duration::from_secs(20);
/// How long the gated run keeps the commit invisible: past the first report
/// (2 s) and past the old capture's 5 s give-up.
const HELD_FOR: Duration = Duration::from_secs(6);

/// The runtime with a capture source named `source` on the private cluster
/// (its own slot, publication and key prefix) and the testkit plugin over
/// `<prefix>.item`, keys `<prefix>:<source>:item:<id>`.
async fn start(env: &TestEnv, url: &str, source: &str, extra: &str) -> Result<(Running, std::net::SocketAddr)> {
    let p = &env.prefix;
    let slot = format!("{p}_{source}");
    let runtime = RuntimeToml::new()
        .database("db", url)
        .cache("main", REDIS_URL.as_str())
        .postgres_capture(source, url, &[format!("{p}.item")], &slot, REDIS_URL.as_str())
        .line(&format!("snapshot = \"never\"\ntopic_prefix = \"{slot}\"\n{extra}"))
        .http(0)
        .line("probe_interval = \"100ms\"\nstuck_after = \"1s\"")
        .build();
    let pipeline = format!(
        r#"source = "{source}"
database = "db"
cache = "main"
plugin = "testkit"
tables = ["{p}.item"]

[config]
schema = "{p}"
table = "item"
key_prefix = "{p}:{source}:item"
"#
    );
    // One file name for both runs, so the second does not load the first's pipeline.
    let config = env.config(&runtime, &[(&format!("{p}_items"), &pipeline)])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no [http] listener")?;
    Ok((running, addr))
}

async fn row(pg: &PgPool, prefix: &str) -> Result<Value> {
    let (id, name, version): (i64, String, i64) =
        sqlx::query_as(&format!("select id, name, version from {prefix}.item where id = 1")).fetch_one(pg).await?;
    Ok(json!({"id": id, "name": name, "version": version}))
}

async fn metric(addr: std::net::SocketAddr, name: &str, source: &str) -> Result<Option<f64>> {
    let (_, page) = get(addr, "/metrics").await?;
    Ok(sample(&page, name, &[("source", source)]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_not_yet_visible_is_waited_for_and_unchecked_leaves_the_key_stale() -> Result<()> {
    let mut env = TestEnv::new("visibility_pg").await?;
    let (cluster, pg) = sync_standby_cluster(&env).await?;
    let url = cluster.url();
    let p = env.prefix.clone();
    let old = json!({"id": 1, "name": "old", "version": 1});
    let new = json!({"id": 1, "name": "new", "version": 2});
    let newer = json!({"id": 1, "name": "newer", "version": 3});

    // With the gate (the default): held, reported, and written once visible.
    let run = Instant::now();
    let (running, addr) = start(&env, &url, "gated", "").await?;
    let key = format!("{p}:gated:item:1");
    let update = format!("update {p}.item set name = 'new', version = 2 where id = 1");
    let held = HeldCommit::begin(PgConnection::connect(&url).await?, &pg, &update).await?;
    let xid = held.xid.to_string();
    let reported = wait_until("/ready names the transaction held", WAIT, || {
        let xid = xid.clone();
        async move {
            let (code, body) = get(addr, "/ready").await?;
            let ready: Value = serde_json::from_str(&body)?;
            let error = ready["sources"]["gated"]["last_error"].as_str().unwrap_or("");
            Ok(code == 503 && error.contains("not visible") && error.contains(&format!(" {xid} ")))
        }
    })
    .await?;
    println!("gated: /ready named transaction {xid} as not visible {reported:.1?} after the wait began");
    let (_, ready) = get(addr, "/ready").await?;
    assert!(ready.contains("failing for"), "the held source counts as failing: {ready}");
    tokio::time::sleep(HELD_FOR.saturating_sub(held.started.elapsed())).await;
    assert_eq!(env.get(&key).await?, None, "nothing is written while the batch is held ({HELD_FOR:?})");
    assert_eq!(row(&pg, &p).await?, old, "the commit is still invisible");
    let held_for = held.started.elapsed();
    let writer = held.release(&pg).await?;
    assert_eq!(row(&pg, &p).await?, new, "visible once the wait is cancelled");
    let visible = Instant::now();
    wait_json(&env.redis, &key, Some(new.clone()), WAIT).await?;
    let written = visible.elapsed();
    println!("gated: held {held_for:.1?}; the key was written {written:.2?} after the commit became visible");
    wait_until("/ready turns true", WAIT, || async move { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
    let stalls = metric(addr, "evercache_visibility_stalls_total", "gated").await?;
    assert_eq!(stalls, Some(1.0), "one held batch is one stall, however often it was reported");
    let (_, page) = get(addr, "/metrics").await?;
    let reports = sample(&page, "evercache_source_errors_total", &[("source", "gated"), ("kind", "not_visible")]);
    assert!(reports.is_some_and(|n| n >= 2.0), "reported every 2 s while held: {reports:?}");
    let waited = metric(addr, "evercache_source_visibility_wait_seconds_sum", "gated").await?.unwrap_or(0.0);
    assert!(waited >= HELD_FOR.as_secs_f64() - 0.5, "the whole wait is recorded when handed on: {waited}s");
    let reconnects = metric(addr, "evercache_capture_reconnects_total", "gated").await?;
    assert_eq!(reconnects, None, "the batch stayed in the capture: no reconnect, no replay from the slot");
    running.stop().await?;
    println!("gated run: {:.1?}", run.elapsed());

    // Unchecked: the change is recomputed from the row before it, and the key stays stale.
    let run = Instant::now();
    let (running, addr) = start(&env, &url, "ungated", "visibility = \"off\"").await?;
    let key = format!("{p}:ungated:item:1");
    let update = format!("update {p}.item set name = 'newer', version = 3 where id = 1");
    let held = HeldCommit::begin(writer, &pg, &update).await?;
    wait_json(&env.redis, &key, Some(new.clone()), WAIT).await?;
    held.release(&pg).await?;
    assert_eq!(row(&pg, &p).await?, newer, "the change is visible");
    assert_eq!(env.get_json(&key).await?, Some(new.clone()), "stale after the commit is visible");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.get_json(&key).await?, Some(new), "and it stays stale: no later event fixes it");
    assert_eq!(metric(addr, "evercache_visibility_stalls_total", "ungated").await?, None);
    assert_eq!(metric(addr, "evercache_source_visibility_wait_seconds_count", "ungated").await?, None, "no check");
    running.stop().await?;
    println!("ungated run: {:.1?}", run.elapsed());
    env.clear_redis().await?;
    Ok(())
}
