//! Snapshot reads that repair, with real Debezium (Postgres connector on
//! Kafka Connect → Kafka → evercache, seed 001's shop). A change the connector
//! never streams (the table left its publication for a moment, as changes are
//! missed while a connector is down past the log's retention) leaves a warm key
//! stale; Debezium re-reads the rows, and its snapshot reads, newer than the
//! key's version, repair it: once through an incremental snapshot requested on
//! the signal table, once through a new connector's initial snapshot.

use anyhow::{Context, Result, ensure};
use evercache_e2e::kafka_connect::{self as connect, Connector, Worker};
use evercache_e2e::shop::{
    WAIT, cached, connector_topics, dlq, products_in_db, runtime_config, shop_env, warm_converged,
};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::{Value, json};

/// Changes product `id`'s stock where the connector cannot see it, then shows
/// the warm key stale: a later, streamed change to product `witness` arrives
/// while product `id` keeps its old value.
async fn miss_a_change(env: &TestEnv, id: i64, witness: i64) -> Result<Value> {
    let p = &env.prefix;
    let before = cached(env, "product").await?.remove(&id).context("product cached")?;
    env.sql(&format!(
        "alter publication {p} drop table {p}.product;
         update product set stock = stock + 1000 where id = {id};
         alter publication {p} add table {p}.product;
         update product set stock = stock + 1 where id = {witness};"
    ))
    .await?;
    let expected = products_in_db(env).await?.remove(&witness).context("witness row")?;
    wait_until("the witness change in the cache", WAIT, || async {
        Ok(cached(env, "product").await?.get(&witness) == Some(&expected))
    })
    .await?;
    let now = cached(env, "product").await?.remove(&id);
    ensure!(now.as_ref() == Some(&before), "the missed change stays invisible to the cache: {now:?}");
    ensure!(products_in_db(env).await?.get(&id) != Some(&before), "the database has the change");
    Ok(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_newer_than_a_key_repair_a_change_the_connector_missed() -> Result<()> {
    Worker::shared().await?;
    let env = shop_env("dbz_repair").await?;
    let p = env.prefix.clone();
    env.sql("create table debezium_signal (id varchar(42) primary key, type varchar(32) not null, data varchar(2048))")
        .await?;
    let topics = connector_topics(&env);
    connect::create_topics(&[&topics[..], &[dlq(&env), format!("{p}.{p}.debezium_signal")]].concat()).await?;
    let running = Running::start(runtime_config(&env)?).await?;
    let mut example = connect::example_connector(&env, &[("signal.data.collection", &format!("{p}.debezium_signal"))])?;
    let tables = example["config"]["table.include.list"].as_str().context("tables")?.to_owned();
    example["config"]["table.include.list"] = json!(format!("{tables},{p}.debezium_signal"));
    let connector = Connector::create(&example).await?;
    connector.wait_running().await?;
    warm_converged(&env).await?;

    // An incremental snapshot, asked for on the signal table, reads the row again.
    miss_a_change(&env, 7, 8).await?;
    env.sql(&format!(
        r#"insert into debezium_signal values ('repair-1', 'execute-snapshot', '{{"data-collections": ["{p}.product"], "type": "incremental"}}')"#
    ))
    .await?;
    let took = warm_converged(&env).await?;
    println!("incremental snapshot repaired the missed change {} ms after the signal", took.as_millis());
    let incremental =
        connect::read_topic(&topics[1])?.iter().filter(|r| r.payload()["source"]["snapshot"] == "incremental").count();
    ensure!(incremental > 0, "the repair came as incremental snapshot reads");

    // A connector of a new name (no offsets) on a slot made afresh snapshots again.
    miss_a_change(&env, 9, 10).await?;
    let path = format!("/connectors/{}", connector.name);
    connect::rest("PUT", &format!("{path}/stop"), None).await?;
    let (code, body) = connect::rest("DELETE", &path, None).await?;
    ensure!(code == 204, "DELETE {path}: HTTP {code}: {body}");
    env.drop_capture().await?;
    let again = Connector::create(&example_renamed(&example)?).await?;
    again.wait_running().await?;
    let took = warm_converged(&env).await?;
    println!("a new connector's snapshot repaired the missed change {} ms after it started", took.as_millis());

    running.stop().await?;
    connect::delete_topics(&[dlq(&env), format!("{p}.{p}.debezium_signal")]).await?;
    again.delete(&env).await
}

/// The same connector under a new name, so Kafka Connect keeps no offsets for it.
fn example_renamed(example: &Value) -> Result<Value> {
    let mut renamed = example.clone();
    let name = example["name"].as_str().context("name")?;
    renamed["name"] = json!(format!("{name}_again"));
    Ok(renamed)
}
