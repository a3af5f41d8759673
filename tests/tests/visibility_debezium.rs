//! The visibility gate of pipelines fed by real Debezium: the Postgres
//! connector on Kafka Connect → Kafka, and Debezium Server's MariaDB connector
//! → Redis Streams. A private Postgres waits for a synchronous standby that
//! never connects, a private MariaDB for a semi-sync ack no replica sends, so a
//! writer's commit is in the log, and streamed by Debezium, while new queries
//! cannot see it yet. Two pipelines on the same events recompute the same row:
//! the gated one (the default) holds the batch, says why on `/ready`, and ends
//! equal to the row; the one with `visibility = "off"` recomputes in the
//! window, caches the row from before the change under the change's position,
//! and stays stale.

use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use evercache_e2e::debezium_server::{self, DebeziumServer};
use evercache_e2e::held_commit::{HeldCommit, semi_sync_commit, semi_sync_server, sync_standby_cluster};
use evercache_e2e::http::{get, sample};
use evercache_e2e::kafka_connect::{self as connect, BOOTSTRAP, Connector, Worker};
use evercache_e2e::mariadb::{MariaDb, server_id};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, repo_root, wait_json, wait_until};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const WAIT: Duration = Duration::from_secs(30);
/// How long the commit stays invisible: past the gate's first report (2 s).
const HELD_FOR: Duration = Duration::from_secs(4);

/// The example connector on the private cluster's table `<prefix>.item`.
fn connector(env: &TestEnv, port: u16) -> Result<Value> {
    let path = repo_root().join("examples/shop/debezium/postgres-connector.json");
    let mut connector: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let p = &env.prefix;
    connector["name"] = json!(format!("{p}_{}", UNIX_EPOCH.elapsed()?.as_millis()));
    let config = connector["config"].as_object_mut().context("config")?;
    // Its heartbeat query writes a table of the shop's, which this cluster has not.
    config.remove("heartbeat.action.query");
    for (key, value) in [
        ("database.port", port.to_string()),
        ("database.dbname", "postgres".to_owned()),
        ("topic.prefix", p.clone()),
        ("slot.name", p.clone()),
        ("publication.name", p.clone()),
        ("table.include.list", format!("{p}.item")),
    ] {
        config.insert(key.to_owned(), json!(value));
    }
    Ok(connector)
}

/// A testkit pipeline named `name` over `<prefix>.item`, keys
/// `<prefix>:<name>:item:<id>` (`extra`: more top-level lines, or `[config]` ones after a newline).
fn pipeline(env: &TestEnv, name: &str, extra: &str) -> String {
    let p = &env.prefix;
    format!(
        r#"source = "dbz"
database = "db"
cache = "main"
plugin = "testkit"
tables = ["{p}.item"]
{extra}

[config]
schema = "{p}"
table = "item"
key_prefix = "{p}:{name}:item"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_wait_until_their_commit_is_visible_and_unchecked_go_stale() -> Result<()> {
    Worker::shared().await?;
    let mut env = TestEnv::new("vis_dbz").await?;
    let (cluster, pg) = sync_standby_cluster(&env).await?;
    let url = cluster.url();
    let p = env.prefix.clone();
    let topic = format!("{p}.{p}.item");
    connect::create_topics(std::slice::from_ref(&topic)).await?;

    let runtime = RuntimeToml::new()
        .database("db", &url)
        .cache("main", REDIS_URL.as_str())
        .section("sources.dbz")
        .line(&format!("type = \"kafka\"\nbrokers = \"{BOOTSTRAP}\"\ngroup = \"{p}\"\nblock = \"100ms\""))
        .line(&format!("topics = [\"{topic}\"]"))
        .http(0)
        .line("probe_interval = \"100ms\"\nstuck_after = \"1s\"")
        .build();
    let gated = pipeline(&env, "gated", "");
    let unchecked = pipeline(&env, "unchecked", "visibility = \"off\"");
    let config = env.config(&runtime, &[("gated", &gated), ("unchecked", &unchecked)])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no [http] listener")?;
    let connector = Connector::create(&connector(&env, cluster.port)?).await?;
    connector.wait_running().await?;
    let old = json!({"id": 1, "name": "old", "version": 1});
    let (gated_key, unchecked_key) = (format!("{p}:gated:item:1"), format!("{p}:unchecked:item:1"));
    for key in [&gated_key, &unchecked_key] {
        wait_json(&env.redis, key, Some(old.clone()), WAIT).await?;
    }

    let writer = PgConnection::connect(&url).await?;
    let update = format!("update {p}.item set name = 'new', version = 2 where id = 1");
    let held = HeldCommit::begin(writer, &pg, &update).await?;
    // Debezium streams the change while it is invisible: the unchecked pipeline
    // recomputes now, reads the old row, and records the change's position.
    wait_change_applied(&env, &unchecked_key).await?;
    ensure!(env.get_json(&unchecked_key).await? == Some(old.clone()), "recomputed before the commit was visible");
    let xid = held.xid.to_string();
    wait_until("/ready names the held batch", WAIT, || async {
        let (code, body) = get(addr, "/ready").await?;
        Ok(code == 503 && body.contains("gated") && body.contains("to become visible") && body.contains(&xid))
    })
    .await?;
    let (_, ready) = get(addr, "/ready").await?;
    println!("while held: {ready}");
    ensure!(env.get_json(&gated_key).await? == Some(old.clone()), "the gated pipeline held its batch");
    tokio::time::sleep(HELD_FOR.saturating_sub(held.started.elapsed())).await;

    let released = Instant::now();
    held.release(&pg).await?;
    let new = json!({"id": 1, "name": "new", "version": 2});
    wait_json(&env.redis, &gated_key, Some(new.clone()), WAIT).await?;
    println!("the gated key was right {} ms after the commit became visible", released.elapsed().as_millis());
    wait_until("/ready true again", WAIT, || async { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
    let (_, metrics) = get(addr, "/metrics").await?;
    let stalls = sample(&metrics, "evercache_visibility_stalls_total", &[("pipeline", "gated")]);
    ensure!(stalls == Some(1.0), "one held batch counted: {stalls:?}");
    let waits = sample(&metrics, "evercache_pipeline_visibility_wait_seconds_count", &[("pipeline", "gated")]);
    ensure!(waits.is_some_and(|n| n >= 1.0), "waits recorded: {waits:?}");
    // Nothing will correct the unchecked key: it stays stale.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(env.get_json(&unchecked_key).await? == Some(old), "without the gate the key stays stale");

    running.stop().await?;
    let path = format!("/connectors/{}", connector.name);
    connect::rest("PUT", &format!("{path}/stop"), None).await?;
    connect::rest("DELETE", &path, None).await?;
    connect::delete_topics(&[topic]).await?;
    env.clear_redis().await
}

/// Waits until the pipeline writing `key` recorded a change's position: it
/// recomputed the key for a change (snapshot reads leave `pos` empty).
async fn wait_change_applied(env: &TestEnv, key: &str) -> Result<()> {
    let meta = format!("{{{key}}}:meta");
    wait_until("the unchecked pipeline applied the change", WAIT, || {
        let (mut redis, meta) = (env.redis.clone(), meta.clone());
        async move {
            let pos: Option<String> = redis::cmd("HGET").arg(&meta).arg("pos").query_async(&mut redis).await?;
            Ok(pos.is_some_and(|pos| !pos.is_empty()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_server_events_wait_for_a_semi_sync_commit_to_be_visible() -> Result<()> {
    let mut env = TestEnv::new("vis_dbz_my").await?;
    let p = env.prefix.clone();
    let server = semi_sync_server(&env.dir.join("mariadb"), 4, Duration::from_secs(4));
    let maria = MariaDb::on(&server.url(), &p).await?;
    maria.sql("create table item (id bigint primary key, name text, version bigint); insert into item values (1, 'old', 1)").await?;
    // The marketplace example's server, on this test's table of the private MariaDB.
    let example = std::fs::read_to_string(repo_root().join(debezium_server::EXAMPLE).join("application.properties"))?;
    let properties: Vec<String> = example
        .lines()
        .map(|line| match line.starts_with("debezium.source.table.include.list=") {
            true => "debezium.source.table.include.list=${MARKETPLACE_DATABASE}.item".to_owned(),
            false => line.to_owned(),
        })
        .collect();
    let config = env.dir.join("application.properties");
    std::fs::write(&config, properties.join("\n"))?;
    let dbz = {
        let (port, prefix, replica) = (server.port.to_string(), p.clone(), server_id(&format!("{p}_dbz")));
        tokio::task::spawn_blocking(move || {
            let env = [("MARIADB_PORT", port.as_str()), ("MARIADB_USER", "root"), ("MARKETPLACE_DATABASE", &prefix)];
            DebeziumServer::start(&config, &prefix, replica, REDIS_URL.as_str(), &env)
        })
        .await??
    };

    let stream = format!("{p}.{p}.item");
    let runtime = RuntimeToml::new()
        .database("db", &maria.url())
        .cache("main", REDIS_URL.as_str())
        .redis_stream("dbz", REDIS_URL.as_str(), std::slice::from_ref(&stream), &p)
        .http(0)
        .line("probe_interval = \"100ms\"\nstuck_after = \"1s\"")
        .build();
    let mysql = "[config]\ndialect = \"mysql\"";
    let gated = pipeline(&env, "gated", "").replace("[config]", mysql);
    let unchecked = pipeline(&env, "unchecked", "visibility = \"off\"").replace("[config]", mysql);
    let running = Running::start(env.config(&runtime, &[("gated", &gated), ("unchecked", &unchecked)])?).await?;
    let addr = running.http.context("no [http] listener")?;
    let old = json!({"id": 1, "name": "old", "version": 1});
    let (gated_key, unchecked_key) = (format!("{p}:gated:item:1"), format!("{p}:unchecked:item:1"));
    for key in [&gated_key, &unchecked_key] {
        wait_json(&env.redis, key, Some(old.clone()), WAIT).await?;
    }

    let writer = semi_sync_commit(&maria, "update item set name = 'new', version = 2 where id = 1").await?;
    wait_change_applied(&env, &unchecked_key).await?;
    ensure!(env.get_json(&unchecked_key).await? == Some(old.clone()), "recomputed before the commit was visible");
    wait_until("/ready names the held batch", WAIT, || async {
        let (code, body) = get(addr, "/ready").await?;
        Ok(code == 503 && body.contains("gated") && body.contains("to become visible") && body.contains("bin."))
    })
    .await?;
    let (_, ready) = get(addr, "/ready").await?;
    println!("while held: {ready}");
    ensure!(env.get_json(&gated_key).await? == Some(old.clone()), "the gated pipeline held its batch");
    ensure!(!writer.is_finished(), "the commit still waits for its ack");
    let took = writer.await??;
    let visible = Instant::now();
    wait_json(&env.redis, &gated_key, Some(json!({"id": 1, "name": "new", "version": 2})), WAIT).await?;
    println!(
        "the commit waited {} ms for its ack; the gated key was right {} ms after it became visible",
        took.as_millis(),
        visible.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(env.get_json(&unchecked_key).await? == Some(old), "without the gate the key stays stale");

    running.stop().await?;
    drop(dbz);
    maria.sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF").await?;
    maria.drop_database().await?;
    env.clear_redis().await
}
