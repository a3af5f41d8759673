//! Seed 001 with real Debezium: the Postgres connector 3.6.1 on Kafka Connect
//! 4.4 (standalone, JsonConverter with schemas, as Debezium ships it) → Apache
//! Kafka 4.4 → evercache, on the shop schema, with the example's warm pipeline
//! (`products.toml`, recompute) and invalidate pipeline (`product-pages.toml`)
//! side by side; plus the real envelopes the connector sends, decoded, and
//! recorded in `tests/fixtures/debezium/real/` (with EVERCACHE_CAPTURE_FIXTURES=1).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use evercache::config::Config;
use evercache::pipeline::OnChange;
use evercache_e2e::kafka::ReadRecord;
use evercache_e2e::kafka_connect::{self as connect, Connector, ENVELOPES, Worker, check_envelope};
use evercache_e2e::shop::{
    PRODUCTS, WAIT, all_committed, cached, connector_topics, dlq, runtime_config, shop_env, warm_converged,
};
use evercache_e2e::{Running, TestEnv, repo_root, wait_until};
use serde_json::Value;
use sqlx::PgPool;

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Prices and stock of products 1..=45: single statements and two-row transactions.
async fn write_prices(pg: PgPool, p: String) -> Result<usize> {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let update = |set: &str| format!("update {p}.product set {set} where id = $1");
    for i in 0..100 {
        let id = 1 + (next(&mut seed) % 45) as i64;
        let value = (seed >> 24) as i64 % 10_000;
        if i % 10 == 9 {
            let mut tx = pg.begin().await?;
            sqlx::query(&update("stock = stock + 1")).bind(id).execute(&mut *tx).await?;
            sqlx::query(&update("price = price + 1")).bind(1 + value % 45).execute(&mut *tx).await?;
            tx.commit().await?;
        } else {
            let set = if i % 2 == 0 { "price = $2::numeric / 100" } else { "stock = $2" };
            sqlx::query(&update(set)).bind(id).bind(value).execute(&pg).await?;
        }
    }
    Ok(110)
}

/// Inserts products 101..=140 into categories 4..=6 and deletes 51..=60.
async fn write_rows(pg: PgPool, p: String) -> Result<usize> {
    for id in 101..=140i64 {
        let insert = format!("insert into {p}.product values ($1, $2, 'New ' || $1, 1.25, 5)");
        sqlx::query(&insert).bind(id).bind(4 + id % 3).execute(&pg).await?;
        if id % 4 == 0 {
            let delete = format!("delete from {p}.product where id = $1");
            sqlx::query(&delete).bind(51 + (id - 101) / 4).execute(&pg).await?;
        }
    }
    Ok(50)
}

/// Renames categories 1..=3 five times each (a rename fans out to every
/// product in it) and moves products 31..=45 among categories 4..=6.
async fn write_categories(pg: PgPool, p: String) -> Result<usize> {
    for round in 0..5 {
        for category in 1..=3i64 {
            let rename = format!("update {p}.category set name = $2 where id = $1");
            sqlx::query(&rename).bind(category).bind(format!("C{category} v{round}")).execute(&pg).await?;
        }
        for id in 31..=45i64 {
            if (id + round) % 5 < 2 {
                let mv = format!("update {p}.product set category_id = 4 + (category_id - 3) % 3 where id = $1");
                sqlx::query(&mv).bind(id).execute(&pg).await?;
            }
        }
    }
    Ok(15 + 30)
}

/// Commit → cache delay of `samples` single-row updates, each polled in Redis.
async fn commit_to_cache(env: &TestEnv, samples: i64) -> Result<Vec<Duration>> {
    let mut redis = env.redis.clone();
    let mut delays = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for i in 0..samples {
        // Writes at random moments, not in step with the connector's polling.
        tokio::time::sleep(Duration::from_millis(next(&mut seed) % 100)).await;
        let id = 1 + i % 30;
        let update = format!("update {}.product set stock = stock + 1 where id = $1 returning stock", env.prefix);
        let stock: i32 = sqlx::query_scalar(&update).bind(id).fetch_one(&env.pg).await?;
        let committed = Instant::now();
        let key = format!("{}:product:{id}", env.prefix);
        loop {
            let cached: Option<String> = redis::cmd("HGET").arg(&key).arg("stock").query_async(&mut redis).await?;
            if cached == Some(stock.to_string()) {
                break;
            }
            ensure!(committed.elapsed() < Duration::from_secs(20), "{key} never got stock {stock}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(committed.elapsed());
    }
    delays.sort();
    Ok(delays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_and_invalidate_pipelines_follow_real_debezium() -> Result<()> {
    let worker = Worker::shared().await?;
    let env = shop_env("dbz_shop").await?;
    let p = env.prefix.clone();
    let topics = connector_topics(&env);
    connect::create_topics(&[&topics[..], &[dlq(&env)]].concat()).await?;
    let running = Running::start(runtime_config(&env)?).await?;

    // The example connector, plus transaction markers and frequent heartbeats,
    // so both kinds reach the subscription (they must be acked, not dead-lettered).
    let overrides = [("provide.transaction.metadata", "true"), ("heartbeat.interval.ms", "1000")];
    let posted = Instant::now();
    let connector = Connector::create(&connect::example_connector(&env, &overrides)?).await?;
    connector.wait_running().await?;
    let running_after = posted.elapsed();
    let snapshot_records = PRODUCTS + 6;
    let end = connect::end_offset;
    wait_until("snapshot in Kafka", WAIT, || async { Ok(end(&topics[0])? + end(&topics[1])? >= snapshot_records) })
        .await?;
    let in_kafka = posted.elapsed();
    warm_converged(&env).await?;
    println!(
        "Connect worker: {:?} (start or reuse); connector running after {running_after:?}; \
         {snapshot_records} snapshot records in Kafka after {in_kafka:?}; warm cache full after {:?}",
        worker.started_in,
        posted.elapsed()
    );
    ensure!(connect::read_topic(&topics[1])?.iter().all(|r| r.payload()["op"] == "r"), "only snapshot reads so far");

    // The application's own pages, cached before the writers start.
    all_committed(&env, &topics[..2]).await?;
    let mut redis = env.redis.clone();
    for id in 1..=PRODUCTS {
        redis::cmd("SET").arg(format!("{p}:product-page:{id}")).arg("page").query_async::<()>(&mut redis).await?;
    }

    let started = Instant::now();
    let (prices, rows, categories) = tokio::try_join!(
        write_prices(env.pg.clone(), p.clone()),
        write_rows(env.pg.clone(), p.clone()),
        write_categories(env.pg.clone(), p.clone()),
    )?;
    let written = started.elapsed();
    let converged = warm_converged(&env).await?;
    println!(
        "{} row changes by 3 writers in {written:?}; warm cache equal to the database {converged:?} after the last",
        prices + rows + categories
    );
    // Pages of products whose row or category changed are gone; 46..=50 were never touched.
    wait_until("pages invalidated", WAIT, || async {
        Ok(cached(&env, "product-page").await?.keys().copied().collect::<BTreeSet<_>>() == (46..=50).collect())
    })
    .await?;
    // Tombstones, transaction markers, heartbeats and the heartbeat table's
    // changes (no pipeline reads that table) are acked like changes.
    all_committed(&env, &topics).await?;
    ensure!(connect::end_offset(&dlq(&env))? == 0, "nothing dead-lettered: {:?}", connect::read_topic(&dlq(&env))?);

    let delays = commit_to_cache(&env, 100).await?;
    println!("commit → cache over 100 single-row updates: p50 {:?}, p99 {:?}", delays[49], delays[98]);

    // A TRUNCATE: the warm pipeline recomputes every key it owns (all gone),
    // the invalidate pipeline deletes every page it owns; nothing is dead-lettered.
    env.sql("truncate product").await?;
    wait_until("warm keys gone", WAIT, || async { Ok(cached(&env, "product").await?.is_empty()) }).await?;
    wait_until("pages gone", WAIT, || async { Ok(cached(&env, "product-page").await?.is_empty()) }).await?;
    all_committed(&env, &topics[..2]).await?;
    ensure!(connect::end_offset(&dlq(&env))? == 0, "nothing dead-lettered: {:?}", connect::read_topic(&dlq(&env))?);

    running.stop().await?;
    connect::delete_topics(&[dlq(&env)]).await?;
    connector.delete(&env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_envelopes_decode_as_their_payload_says() -> Result<()> {
    Worker::shared().await?;
    let env = shop_env("dbz_envelopes").await?;
    let overrides = [("provide.transaction.metadata", "true"), ("heartbeat.interval.ms", "500")];
    let connector = Connector::create(&connect::example_connector(&env, &overrides)?).await?;
    connector.wait_running().await?;
    let [category, product, markers, heartbeats, heartbeat_table] = connector_topics(&env);
    wait_until("snapshot in Kafka", WAIT, || async { Ok(connect::end_offset(&product)? >= PRODUCTS) }).await?;
    // One transaction each; name 101 is ~10 kB of hex, stored out of line (TOAST).
    for statement in [
        "insert into product values (100, 1, 'Kafka on the Shore', 12.50, 4)",
        "update product set price = 11.00 where id = 100",
        "delete from product where id = 100",
        "insert into product select 101, 2, string_agg(md5(g::text), ''), 3.00, 1 from generate_series(1, 300) g",
        "update product set stock = 2 where id = 101",
        "update category set name = 'Novels' where id = 1",
        "truncate product",
    ] {
        env.sql(statement).await?;
    }
    // c, u, d, tombstone, c, u, t after the snapshot; BEGIN and END of 7 transactions.
    wait_until("every change in Kafka", WAIT, || async {
        let end = connect::end_offset;
        Ok(end(&product)? >= PRODUCTS + 7 && end(&markers)? >= 14 && end(&heartbeats)? > 0)
    })
    .await?;
    let mut records = Vec::new();
    for topic in [category, product, markers, heartbeats, heartbeat_table] {
        records.extend(connect::read_topic(&topic)?);
    }
    let find = |name: &str, test: &dyn Fn(&ReadRecord, &Value) -> bool| {
        records.iter().find(|r| test(r, &r.payload())).with_context(|| format!("no record for {name}"))
    };
    let op = |r: &ReadRecord, op: &str| r.topic.ends_with(".product") && r.payload()["op"] == op;
    let insert = find("insert", &|r, _| op(r, "c"))?;
    // The markers of the insert's transaction (`<txId>:<LSN>`; the LSN differs between the two).
    let tx = format!("{}:", insert.payload()["source"]["txId"]);
    let marker = |v: &Value, s: &str| v["status"] == s && v["id"].as_str().is_some_and(|id| id.starts_with(&tx));
    let picked = [
        find("snapshot read", &|_, v| v["op"] == "r" && v["source"]["snapshot"] == "last")?,
        insert,
        find("update", &|r, v| op(r, "u") && v["after"]["id"] == 100)?,
        find("toast", &|r, v| op(r, "u") && v["after"]["name"] == "__debezium_unavailable_value")?,
        find("category rename", &|r, v| r.topic.ends_with(".category") && v["op"] == "u")?,
        find("delete", &|r, _| op(r, "d"))?,
        find("tombstone", &|r, _| r.value.is_none())?,
        find("truncate", &|r, _| op(r, "t"))?,
        find("heartbeat", &|r, _| r.topic.starts_with("__debezium-heartbeat."))?,
        find("begin", &|_, v| marker(v, "BEGIN"))?,
        find("end", &|_, v| marker(v, "END"))?,
    ];
    // heartbeat.action.query moves the slot on while only uncaptured tables change.
    env.sql("create table unrelated as select generate_series(1, 10000) id").await?;
    let wal: String = sqlx::query_scalar("select pg_current_wal_lsn()::text").fetch_one(&env.pg).await?;
    wait_until("the slot confirmed past unrelated WAL", WAIT, || async {
        let sql = "select confirmed_flush_lsn >= $1::pg_lsn from pg_replication_slots where slot_name = $2";
        Ok(sqlx::query_scalar::<_, bool>(sql).bind(&wal).bind(&env.prefix).fetch_one(&env.pg).await?)
    })
    .await?;
    let capture = std::env::var_os("EVERCACHE_CAPTURE_FIXTURES").is_some();
    for ((name, expect), record) in ENVELOPES.iter().zip(picked) {
        check_envelope(name, *expect, &record.topic, record.key.as_deref(), record.value.as_deref())?;
        if capture {
            connect::write_fixture(name, record)?;
        }
    }
    connector.delete(&env).await
}

#[test]
fn recorded_envelopes_decode_as_their_payload_says() -> Result<()> {
    for (name, expect) in ENVELOPES {
        let record = connect::read_fixture(name)?;
        check_envelope(name, expect, &record.topic, record.key.as_deref(), record.value.as_deref())?;
    }
    Ok(())
}

/// With a slot made before the connector, a transaction open across the snapshot
/// is streamed after it with changes below the snapshot's LSN and no commit LSN;
/// ranked by that LSN, snapshot reads made its update look older (refused for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_across_the_snapshot_reaches_the_cache() -> Result<()> {
    Worker::shared().await?;
    let env = shop_env("dbz_open_tx").await?;
    let p = env.prefix.clone();
    sqlx::query(&format!("create publication {p} for table {p}.category, {p}.product, {p}.debezium_heartbeat"))
        .execute(&env.pg)
        .await?;
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')").bind(&p).execute(&env.pg).await?;
    let mut open = env.pg.begin().await?;
    sqlx::query(&format!("update {p}.product set stock = 777 where id = 1")).execute(&mut *open).await?;
    let running = Running::start(runtime_config(&env)?).await?;
    let connector = Connector::create(&connect::example_connector(&env, &[])?).await?;
    connector.wait_running().await?;
    let key = format!("{p}:product:1");
    let stock = || async { Ok::<_, anyhow::Error>(env.clone_redis_hash(&key).await?["stock"].clone()) };
    wait_until("the snapshot's product 1 cached", WAIT, || async { Ok(stock().await? == "3") }).await?;
    open.commit().await?;
    wait_until("the open transaction's stock cached", WAIT, || async { Ok(stock().await? == "777") }).await?;
    running.stop().await?;
    connector.delete(&env).await
}

#[test]
fn the_kafka_example_loads_with_its_warm_and_invalidate_pipelines() -> Result<()> {
    let config = Config::load(&repo_root().join("examples/shop/evercache-kafka.toml"))?;
    let on_change = |name: &str| config.pipelines.get(name).map(|p| p.on_change);
    ensure!(on_change("products") == Some(OnChange::Recompute), "{:?}", config.pipelines.keys());
    ensure!(on_change("product-pages") == Some(OnChange::Invalidate), "{:?}", config.pipelines.keys());
    // The Redis Streams example shares the pipelines folder.
    Config::load(&repo_root().join("examples/shop/evercache.toml"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_restarted_mid_snapshot_sends_duplicates_that_leave_no_stale_key() -> Result<()> {
    Worker::shared().await?;
    let env = shop_env("dbz_resnap").await?;
    // Enough rows that the snapshot takes a while in small batches.
    let rows = 20_000;
    env.sql(&format!(
        "insert into product select g, 1 + g % 6, 'Product ' || g, g + 0.25, g % 9 from generate_series({}, {rows}) g",
        PRODUCTS + 1
    ))
    .await?;
    let topics = connector_topics(&env);
    connect::create_topics(&[&topics[..], &[dlq(&env)]].concat()).await?;
    let running = Running::start(runtime_config(&env)?).await?;
    // Small batches and a short queue slow the snapshot down, so the restart comes well inside it.
    let overrides = [
        ("max.batch.size", "20"),
        ("max.queue.size", "100"),
        ("snapshot.fetch.size", "100"),
        ("offset.flush.interval.ms", "100"),
    ];
    let connector = Connector::create(&connect::example_connector(&env, &overrides)?).await?;
    connector.wait_running().await?;

    // Restart the connector and its task while the snapshot is under way.
    wait_until("the snapshot under way", WAIT, || async { Ok(connect::end_offset(&topics[1])? > 500) }).await?;
    let (code, body) =
        connect::rest("POST", &format!("/connectors/{}/restart?includeTasks=true", connector.name), None).await?;
    ensure!(code == 202 || code == 204 || code == 200, "restart: HTTP {code}: {body}");
    let snapshot_at_restart = connect::end_offset(&topics[1])?;
    connector.wait_running().await?;
    // Debezium redoes an initial snapshot it did not finish, from its first row.
    wait_until("the snapshot done again", WAIT, || async {
        Ok(connect::end_offset(&topics[1])? >= snapshot_at_restart + rows)
    })
    .await?;
    // Rows changed once the new snapshot is read stream in after it. (A row
    // changed between the restart and the new snapshot's start reaches the
    // cache only as a snapshot read; debezium_resnapshot.rs shows those repair.)
    env.sql(
        "update product set stock = stock + 100 where id % 500 = 0; update category set name = 'Renamed' where id = 2",
    )
    .await?;
    let records = connect::end_offset(&topics[1])?;
    let converged = warm_converged(&env).await?;
    ensure!(snapshot_at_restart < rows, "restarted before the snapshot finished ({snapshot_at_restart} of {rows})");
    ensure!(records > rows, "the restart sent rows again: {records} product records for {rows} rows");
    println!(
        "connector restarted after {snapshot_at_restart} of {rows} snapshot rows: {records} product records in \
         Kafka ({} duplicates); every warm key equal to the database {converged:?} after the second snapshot",
        records - rows
    );
    all_committed(&env, &topics[..2]).await?;
    ensure!(connect::end_offset(&dlq(&env))? == 0, "nothing dead-lettered: {:?}", connect::read_topic(&dlq(&env))?);
    running.stop().await?;
    connect::delete_topics(&[dlq(&env)]).await?;
    connector.delete(&env).await
}
