//! Format conformance: the same SQL (`tests/fixtures/debezium/conformance/`,
//! one table of every common column type; its README goes column by column)
//! captured by real Debezium and by evercache's own capture gives plugins the
//! same values. The echo plugin (`plugins/echo`) reports what its SDK makes of
//! each change as it arrives from Debezium (Kafka Connect → Kafka for
//! Postgres, Debezium Server → Redis Streams for MariaDB, decoded as those
//! sources decode it), from the capture as a pipeline on it receives it, and
//! from the capture as `evercache capture --to redis-stream` writes it.
//! Debezium's other records (tombstones, heartbeats, transaction markers,
//! schema changes) are set aside, and the envelopes agree on the snapshot's
//! first/last marks and the connector's name.

use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use evercache::event::ChangeEvent;
use evercache::event::debezium::{Decoded, SkipReason, decode_record, decode_stream_entry};
use evercache_e2e::conformance::{
    Captured, Drain, Echo, FIXTURES, WAIT, differences, fixture, in_key_order, mariadb_phases, mysql, pg_phases, psql,
    stream_entries,
};
use evercache_e2e::debezium_server::DebeziumServer;
use evercache_e2e::kafka_connect::{self as connect, Connector, Worker};
use evercache_e2e::mariadb::{MariaDb, server_id};
use evercache_e2e::{PG_URL, REDIS_URL, RuntimeToml, TestEnv, repo_root, wait_until};
use evercache_test_kit::drop_released_slot;
use serde_json::{Value, json};

/// Decodes Debezium's records, keeping the changes and the reasons the rest were set aside.
fn split(decoded: Vec<Decoded>) -> (Vec<ChangeEvent>, Vec<SkipReason>) {
    let (mut changes, mut skipped) = (Vec::new(), Vec::new());
    for record in decoded {
        match record {
            Decoded::Change(event) => changes.push(event),
            Decoded::Skip(reason) => skipped.push(reason),
        }
    }
    (changes, skipped)
}

/// Echoes Debezium's changes and the capture's (in both forms), checks the
/// capture's two forms agree, and returns where Debezium and the capture differ.
async fn compare(debezium: &[ChangeEvent], captured: &[Captured]) -> Result<Vec<String>> {
    let mut echo = Echo::new().await?;
    let from_debezium = in_key_order(echo.echo_all(debezium).await?);
    let direct = in_key_order(echo.echo_all(captured.iter().map(|c| &c.direct)).await?);
    let rendered = in_key_order(echo.echo_all(captured.iter().map(|c| &c.rendered)).await?);
    assert_eq!(direct, rendered, "a pipeline on the capture and one on its stream see the same");
    // Guards against both sides being wrong the same way (the capture renders the decimals Debezium encodes).
    let inserted = from_debezium.iter().find(|e| e["op"] == "c").context("an insert")?;
    assert!(inserted["after"].as_object().map_or(0, |row| row.len()) >= 24, "every column: {inserted}");
    let decimal = inserted["after"]
        .as_object()
        .context("after")?
        .iter()
        .find(|(name, _)| name.contains("decimal_12_2") || name.contains("numeric_12_2"));
    assert_eq!(decimal.map(|(_, v)| v), Some(&json!("1234.56")), "{inserted}");
    Ok(differences(&from_debezium, &direct))
}

/// `source.snapshot` of each snapshot read, in order.
fn snapshot_marks<'a>(envelopes: impl IntoIterator<Item = &'a Value>) -> Vec<Value> {
    envelopes.into_iter().filter(|e| e["op"] == "r").map(|e| e["source"]["snapshot"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_debezium_and_the_capture_give_plugins_the_same_values() -> Result<()> {
    let env = TestEnv::new("conf_pg").await?;
    let p = env.prefix.clone();
    let [before_captures, while_streaming] = pg_phases(&p)?;
    psql(&before_captures).await?;

    Worker::shared().await?;
    let mut connector: Value = serde_json::from_str(&fixture("pg-connector.json")?)?;
    connector["name"] = json!(format!("{p}_{}", UNIX_EPOCH.elapsed()?.as_millis()));
    let table = format!("{p}.every_type");
    let config = connector["config"].as_object_mut().context("config")?;
    for (key, value) in [
        ("database.dbname", "test"),
        ("topic.prefix", &p),
        ("slot.name", &p),
        ("publication.name", &p),
        ("table.include.list", &table),
        ("provide.transaction.metadata", "true"),
        ("heartbeat.interval.ms", "500"),
    ] {
        config.insert(key.to_owned(), json!(value));
    }
    let connector = Connector::create(&connector).await?;
    connector.wait_running().await?;

    let slot = format!("{p}_ec");
    let runtime = RuntimeToml::new()
        .postgres_capture("capture", PG_URL, std::slice::from_ref(&table), &slot, REDIS_URL.as_str())
        .line(&format!("topic_prefix = \"{p}\"\nsnapshot = \"initial\""))
        .build();
    let config = env.config(&runtime, &[])?;
    let mut drain = Drain::start(config.runtime.sources["capture"].build("capture").await?);
    let topic = format!("{p}.{table}");
    let mut captured = drain.take(3).await?;
    wait_until("Debezium's snapshot", WAIT, || async { Ok(connect::end_offset(&topic)? >= 3) }).await?;

    psql(&while_streaming).await?;
    // Inserts of 1, 2 and 3, the update, the delete and the truncate; Debezium adds a tombstone.
    captured.extend(drain.take(6).await?);
    drain.stop().await?;
    wait_until("Debezium's truncate", WAIT, || async { Ok(connect::end_offset(&topic)? >= 10) }).await?;
    let heartbeats = format!("__debezium-heartbeat.{p}");
    wait_until("a heartbeat", WAIT, || async { Ok(connect::end_offset(&heartbeats)? >= 1) }).await?;

    let records = connect::read_topic(&topic)?;
    let decode = |topic: &str, records: &[evercache_e2e::kafka::ReadRecord]| -> Result<Vec<Decoded>> {
        records.iter().map(|r| Ok(decode_record(topic, r.key.as_deref(), r.value.as_deref())?)).collect()
    };
    let (debezium, skipped) = split(decode(&topic, &records)?);
    assert_eq!(skipped, [SkipReason::Tombstone], "the delete's tombstone");
    let (none, skipped) = split(decode(&heartbeats, &connect::read_topic(&heartbeats)?)?);
    assert!(none.is_empty() && skipped.iter().all(|s| *s == SkipReason::Heartbeat), "{skipped:?}");
    let markers = format!("{p}.transaction");
    let (none, skipped) = split(decode(&markers, &connect::read_topic(&markers)?)?);
    assert!(none.is_empty() && skipped.len() >= 12, "BEGIN and END of each of the six transactions: {skipped:?}");
    assert!(skipped.iter().all(|s| *s == SkipReason::TransactionMarker), "{skipped:?}");

    let differ = compare(&debezium, &captured).await?;
    assert!(differ.is_empty(), "Debezium and the capture differ:\n{}", differ.join("\n"));
    let payloads: Vec<Value> = records.iter().map(|r| r.payload()).collect();
    let written: Vec<&Value> = captured.iter().map(|c| &c.envelope).collect();
    assert_eq!(snapshot_marks(written.iter().copied()), snapshot_marks(&payloads));
    assert_eq!(snapshot_marks(&payloads), ["first", "true", "last"]);
    assert!(
        written
            .iter()
            .chain(&payloads.iter().filter(|p| !p.is_null()).collect::<Vec<_>>())
            .all(|e| e["source"]["connector"] == "postgresql")
    );

    connector.delete(&env).await?;
    tokio::task::spawn_blocking(move || drop_released_slot(&slot)).await?;
    sqlx::query(&format!("drop publication if exists {p}_ec")).execute(&env.pg).await?;
    sqlx::query(&format!("drop schema {p} cascade")).execute(&env.pg).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_debezium_and_the_capture_give_plugins_the_same_values() -> Result<()> {
    let mut env = TestEnv::new("conf_mdb").await?;
    let p = env.prefix.clone();
    let maria = MariaDb::new(&p).await?;
    let [before_captures, while_streaming] = mariadb_phases(&p)?;
    mysql(&before_captures).await?;

    let server = {
        let (prefix, replica) = (p.clone(), server_id(&format!("{p}_dbz")));
        let config = repo_root().join(FIXTURES).join("mariadb-application.properties");
        tokio::task::spawn_blocking(move || {
            DebeziumServer::start(&config, &prefix, replica, REDIS_URL.as_str(), &[("CONFORMANCE_DATABASE", &prefix)])
        })
        .await??
    };
    let runtime = RuntimeToml::new()
        .mysql_capture("capture", &[format!("{p}.every_type")], server_id(&p), &p, REDIS_URL.as_str())
        .line("snapshot = \"initial\"")
        .build();
    let config = env.config(&runtime, &[])?;
    let mut drain = Drain::start(config.runtime.sources["capture"].build("capture").await?);
    let stream = format!("{p}.{p}.every_type");
    let mut captured = drain.take(3).await?;
    let entries = |stream: String| {
        let redis = env.redis.clone();
        async move { stream_entries(&redis, &stream).await }
    };
    wait_until("Debezium's snapshot", WAIT, || async { Ok(entries(stream.clone()).await?.len() >= 3) }).await?;

    mysql(&while_streaming).await?;
    captured.extend(drain.take(6).await?);
    drain.stop().await?;
    wait_until("Debezium's truncate", WAIT, || async { Ok(entries(stream.clone()).await?.len() >= 10) }).await?;
    drop(server);

    let decode = |stream: &str, entries: &[Vec<(String, String)>]| -> Result<Vec<Decoded>> {
        entries.iter().map(|fields| Ok(decode_stream_entry(stream, fields)?)).collect()
    };
    let written = entries(stream.clone()).await?;
    let (debezium, skipped) = split(decode(&stream, &written)?);
    assert_eq!(skipped, [SkipReason::Tombstone], "the delete's tombstone");
    let (none, skipped) = split(decode(&p, &entries(p.clone()).await?)?);
    assert!(none.is_empty() && !skipped.is_empty(), "the snapshot's DDL: {skipped:?}");
    assert!(skipped.iter().all(|s| *s == SkipReason::SchemaChange), "{skipped:?}");
    let heartbeats = format!("__debezium-heartbeat.{p}");
    let (none, skipped) = split(decode(&heartbeats, &entries(heartbeats.clone()).await?)?);
    assert!(none.is_empty() && skipped.iter().all(|s| *s == SkipReason::Heartbeat), "{skipped:?}");

    // Deliberate: Debezium's default `bigint.unsigned.handling.mode=long` wraps
    // values of 2^63 and more; evercache hands plugins the number itself.
    let wrapped = "debezium -1 / capture 18446744073709551615";
    let expected = [
        format!(r#"r {{"id":102}} after.c_bigint_unsigned: {wrapped}"#),
        format!(r#"c {{"id":2}} after.c_bigint_unsigned: {wrapped}"#),
        format!(r#"d {{"id":2}} before.c_bigint_unsigned: {wrapped}"#),
    ];
    assert_eq!(compare(&debezium, &captured).await?, expected);
    let payloads: Vec<Value> = written
        .iter()
        .filter_map(|fields| serde_json::from_str::<Value>(&fields.first()?.1).ok())
        .map(|value| value["payload"].clone())
        .collect();
    let envelopes: Vec<&Value> = captured.iter().map(|c| &c.envelope).collect();
    assert_eq!(snapshot_marks(envelopes.iter().copied()), snapshot_marks(&payloads));
    assert_eq!(snapshot_marks(&payloads), ["first", "true", "last"]);
    let changes = payloads.iter().filter(|p| p.is_object());
    assert!(envelopes.into_iter().chain(changes).all(|e| e["source"]["connector"] == "mariadb"));

    maria.drop_database().await?;
    env.clear_redis().await
}
