//! A commit the binlog capture reads before queries can see it. On a MariaDB
//! of the test's own, semi-synchronous replication waits AFTER_SYNC for a
//! replica that never acks: each commit sits synced in the binlog, streamed to
//! the capture but invisible to other sessions, until the semi-sync timeout.
//! With the visibility gate (the default) the batch is held, reported as not
//! visible, and handed on once the commit is visible, so the key ends equal to
//! the row; with `visibility = "off"` the recompute reads the row from before
//! the commit and the key stays stale.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use evercache_e2e::held_commit::{semi_sync_commit, semi_sync_server};
use evercache_e2e::http::{get, sample};
use evercache_e2e::mariadb::{MariaDb, server_id};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, wait_until};
use evercache_test_kit::mariadb_server::MariaDbServer;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn runtime_toml(env: &TestEnv, server: &MariaDbServer, maria: &MariaDb, extra: &str) -> String {
    RuntimeToml::new()
        .http(0)
        .line("probe_interval = \"100ms\"\nstuck_after = \"1s\"")
        .database("db", &maria.url())
        .cache("main", REDIS_URL.as_str())
        .section("sources.events")
        .line(&format!(
            "type = \"mysql\"\nurl = \"{}\"\ntables = [\"{p}.item\"]\nserver_id = {}\ntopic_prefix = \"{p}\"\n\
             position_key = \"{p}:binlog\"\ndead_letter_url = \"{REDIS_URL}\"\n{extra}",
            server.url(),
            server_id(&env.prefix),
            p = env.prefix,
        ))
        .build()
}

async fn key_json(env: &TestEnv, key: &str) -> Result<Option<Value>> {
    let mut redis = env.redis.clone();
    let text: Option<String> = redis::cmd("GET").arg(key).query_async(&mut redis).await?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

async fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    Ok(sample(&get(addr, "/metrics").await?.1, name, labels).unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_held_by_semi_sync_is_cached_once_visible_and_stays_stale_without_the_gate() -> Result<()> {
    let env = TestEnv::new("visibility_my").await?;
    let dir = std::env::temp_dir().join("evercache-e2e").join(&env.prefix);
    let _ = std::fs::remove_dir_all(&dir);
    let server = semi_sync_server(&dir, 3, Duration::from_secs(6));
    let maria = MariaDb::on(&server.url(), &env.prefix).await?;
    maria
        .sql(
            "create table item (id bigint primary key, name text, version bigint); \
              insert into item values (1, 'old', 1), (2, 'old', 1)",
        )
        .await?;
    let pipeline = env.testkit_pipeline("dialect = \"mysql\"");
    let key = |id: i64| format!("{}:item:{id}", env.prefix);
    let old = |id: i64| Some(json!({"id": id, "name": "old", "version": 1}));

    // The gate on (the default): the batch is held while the commit waits, and reported.
    let running =
        Running::start(env.config(&runtime_toml(&env, &server, &maria, ""), &[("items", &pipeline)])?).await?;
    let addr = running.http.context("no [http] listener")?;
    evercache_e2e::wait_json(&env.redis, &key(1), old(1), WAIT).await?;
    evercache_e2e::wait_json(&env.redis, &key(2), old(2), WAIT).await?;
    let writer = semi_sync_commit(&maria, "update item set name = 'new', version = 2 where id = 1").await?;
    let ready = wait_until("/ready says the source's batch is not visible", WAIT, || async move {
        let (code, body) = get(addr, "/ready").await?;
        let body: Value = serde_json::from_str(&body)?;
        let error = body["sources"]["events"]["last_error"].as_str().unwrap_or_default();
        // It names the held commit, with its GTID (domain 0, server 3).
        let named = error.contains("not yet visible") && error.contains("(GTID 0-3-");
        Ok(code == 503 && named && body["sources"]["events"]["failing"].is_string())
    })
    .await?;
    // Still within the commit's wait: the capture has its row event (it says
    // so), another session sees the row as before, and the key is untouched.
    assert_eq!(maria.items("item").await?[0], (1, Some("old".to_owned()), Some(1)));
    assert_eq!(key_json(&env, &key(1)).await?, old(1));
    assert!(!writer.is_finished(), "the commit was still waiting after {ready:?}");
    let took = writer.await??;
    assert!(took >= Duration::from_secs(5), "semi-sync held the commit for only {took:?}");
    evercache_e2e::wait_json(&env.redis, &key(1), Some(json!({"id": 1, "name": "new", "version": 2})), WAIT).await?;
    let events = [("source", "events")];
    let not_visible = [("source", "events"), ("kind", "not_visible")];
    assert!(metric(addr, "evercache_source_errors_total", &not_visible).await? >= 1.0);
    assert_eq!(metric(addr, "evercache_visibility_stalls_total", &events).await?, 1.0, "one batch held");
    let waited = metric(addr, "evercache_source_visibility_wait_seconds_sum", &events).await?;
    assert!(waited >= 4.0, "the held batch waited {waited}s");
    wait_until("/ready again", WAIT, || async move { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
    running.stop().await?;

    // The gate off: the recompute reads the row from before the commit, and
    // writes it under the commit's position, where it stays.
    maria.sql("SET GLOBAL rpl_semi_sync_master_timeout = 3000").await?;
    let off = runtime_toml(&env, &server, &maria, "visibility = \"off\"");
    let running = Running::start(env.config(&off, &[("items", &pipeline)])?).await?;
    let meta = format!("{{{}}}:meta", key(2));
    let before = env.clone_redis_hash(&meta).await?["pos"].clone();
    let writer = semi_sync_commit(&maria, "update item set name = 'new', version = 2 where id = 2").await?;
    let env = &env;
    let meta = &meta;
    let before = &before;
    wait_until("key 2 written under the held commit's position", WAIT, || async move {
        Ok(env.clone_redis_hash(meta).await?["pos"] != *before)
    })
    .await?;
    assert!(!writer.is_finished(), "written while the commit was invisible");
    writer.await??;
    assert_eq!(maria.items("item").await?[1], (2, Some("new".to_owned()), Some(2)));
    assert_eq!(key_json(env, &key(2)).await?, old(2), "stale: the value from before the commit");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(key_json(env, &key(2)).await?, old(2), "and it stays stale");
    running.stop().await?;

    maria.sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF").await?;
    maria.drop_database().await?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
