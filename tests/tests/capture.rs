//! The built-in Postgres capture: committed SQL writes reach the cache with no
//! Debezium in between, the slot is confirmed only after the writes, and the
//! events are the ones Debezium would have produced.

use std::time::Duration;

use anyhow::Result;
use evercache::event::debezium::{Decoded, decode_record, decode_stream_entry};
use evercache::source::SourceConfig;
use evercache_e2e::debezium::{expected_snapshot_marks, snapshot_marks};
use evercache_e2e::{PG_URL, REDIS_URL, Running, RuntimeToml, TestEnv, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn capture_source(env: &TestEnv, tables: &[&str]) -> String {
    let tables: Vec<String> = tables.iter().map(|t| format!("{}.{t}", env.prefix)).collect();
    format!(
        r#"[sources.events]
type = "postgres"
url = "{PG_URL}"
tables = {tables}
publication = "{p}"
slot = "{p}"
topic_prefix = "{p}"
dead_letter_url = "{REDIS_URL}"
"#,
        tables = serde_json::to_string(&tables).unwrap_or_default(),
        p = env.prefix
    )
}

fn runtime_toml(env: &TestEnv, tables: &[&str]) -> String {
    RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .line(&capture_source(env, tables))
        .build()
}

async fn wait_json(env: &TestEnv, key: &str, expected: Option<Value>) -> Result<()> {
    evercache_e2e::wait_json(&env.redis, key, expected, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_reach_the_cache_and_the_slot_is_confirmed_after_them() -> Result<()> {
    let env = TestEnv::new("capture").await?;
    env.drop_capture().await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let config = env.config(&runtime_toml(&env, &["item"]), &[("items", &env.testkit_pipeline(""))])?;
    assert!(matches!(config.runtime.sources["events"], SourceConfig::Postgres(_)));
    let running = Running::start(config).await?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);

    env.sql("insert into item values (1, 'one', 1), (2, 'two', 1)").await?;
    wait_json(&env, &key(1), Some(json!({"id": 1, "name": "one", "version": 1}))).await?;
    wait_json(&env, &key(2), Some(json!({"id": 2, "name": "two", "version": 1}))).await?;
    env.sql("update item set name = 'uno', version = 2 where id = 1").await?;
    wait_json(&env, &key(1), Some(json!({"id": 1, "name": "uno", "version": 2}))).await?;
    env.sql("delete from item where id = 2").await?;
    wait_json(&env, &key(2), None).await?;
    // One transaction touching many rows arrives whole.
    env.sql("begin; insert into item select g, 'bulk', 1 from generate_series(10, 1200) g; commit;").await?;
    wait_json(&env, &key(1200), Some(json!({"id": 1200, "name": "bulk", "version": 1}))).await?;

    let last_commit: String = sqlx::query_scalar("select pg_current_wal_lsn()::text").fetch_one(&env.pg).await?;
    let slot = env.prefix.clone();
    wait_until("slot confirmed past the last commit", WAIT, || {
        let pg = env.pg.clone();
        let (slot, last_commit) = (slot.clone(), last_commit.clone());
        async move {
            let confirmed: bool = sqlx::query_scalar(
                "select confirmed_flush_lsn >= $2::pg_lsn from pg_replication_slots where slot_name = $1",
            )
            .bind(&slot)
            .bind(&last_commit)
            .fetch_one(&pg)
            .await?;
            Ok(confirmed)
        }
    })
    .await?;
    let meta = env.clone_redis_hash(&format!("{{{}}}:meta", key(1))).await?;
    assert!(meta["pos"].as_str().unwrap_or("").starts_with("pg:"), "{meta}");
    running.stop().await?;
    env.drop_capture().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_events_match_what_debezium_emits() -> Result<()> {
    let env = TestEnv::new("capture_same").await?;
    env.drop_capture().await?;
    env.sql("create table customers (id int primary key, first_name text not null, last_name text not null, email text not null)")
        .await?;
    // Capture to a stream-free pipeline is not needed: read the records straight from the source.
    let runtime =
        runtime_toml(&env, &["customers"]).replace("type = \"postgres\"", "type = \"postgres\"\nsnapshot = \"never\"");
    let config = env.config(&runtime, &[])?;
    let SourceConfig::Postgres(capture) = &config.runtime.sources["events"] else { unreachable!() };
    let mut source = capture.build("events").await?;
    env.sql("insert into customers values (1, 'Anne', 'Kretchmar', 'annek@noanswer.org')").await?;
    let mut records = Vec::new();
    while records.is_empty() {
        records = source.next_batch().await?;
    }
    source.settled(records.len());
    source.shutdown().await;
    env.drop_capture().await?;

    assert_eq!(records.len(), 1);
    assert_eq!(records[0].stream, format!("{0}.{0}.customers", env.prefix));
    let Decoded::Change(captured) = decode_stream_entry(&records[0].stream, &records[0].fields())? else {
        panic!("not a change: {records:?}")
    };
    let fixture = include_str!("../../runtime/tests/fixtures/debezium/pg_insert_with_schema.json");
    let Decoded::Change(debezium) = decode_record("dbserver1.inventory.customers", Some(r#"{"id":1}"#), Some(fixture))?
    else {
        panic!("fixture is a change")
    };
    assert_eq!(captured.op, debezium.op);
    assert_eq!(captured.table, debezium.table);
    assert_eq!(captured.key, debezium.key.replace(' ', ""));
    assert_eq!(captured.before, debezium.before);
    let parse = |s: &Option<String>| serde_json::from_str::<Value>(s.as_deref().unwrap_or("null")).unwrap();
    assert_eq!(parse(&captured.after), parse(&debezium.after), "same row, same encoding");
    assert_eq!(captured.schema.as_deref(), Some(env.prefix.as_str()));
    assert!(captured.position.starts_with("pg:") && captured.committed_at_ms > 1_700_000_000_000, "{captured:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_snapshot_warms_the_cache_before_streaming() -> Result<()> {
    let env = TestEnv::new("capture_snap").await?;
    env.drop_capture().await?;
    let mut redis = env.redis.clone();
    redis::cmd("DEL").arg(format!("evercache:snapshot:test:{}", env.prefix)).query_async::<()>(&mut redis).await?;
    env.sql("create table item (id bigint primary key, name text, version bigint); insert into item select g, 'old', 1 from generate_series(1, 1234) g;")
        .await?;
    let pipeline = format!("key_patterns = [\"{}:item:*\"]\n{}", env.prefix, env.testkit_pipeline(""));
    let config = env.config(&runtime_toml(&env, &["item"]), &[("items", &pipeline)])?;
    let running = Running::start(config).await?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);
    wait_json(&env, &key(1), Some(json!({"id": 1, "name": "old", "version": 1}))).await?;
    wait_json(&env, &key(1234), Some(json!({"id": 1234, "name": "old", "version": 1}))).await?;
    env.sql("update item set name = 'new', version = 2 where id = 7").await?;
    wait_json(&env, &key(7), Some(json!({"id": 7, "name": "new", "version": 2}))).await?;
    // A truncate names no row: the pipeline owns `item:*`, so every cached key is recomputed.
    env.sql("truncate item").await?;
    for id in [1, 7, 1234] {
        wait_json(&env, &key(id), None).await?;
    }
    let marker: bool =
        redis::cmd("EXISTS").arg(format!("evercache:snapshot:test:{}", env.prefix)).query_async(&mut redis).await?;
    assert!(marker, "the finished snapshot is recorded so a restart does not repeat it");
    running.stop().await?;
    env.drop_capture().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_to_redis_stream_writes_what_debezium_consumers_read() -> Result<()> {
    use evercache::source::forward::{DebeziumStreamWriter, forward};
    let env = TestEnv::new("capture_fwd").await?;
    env.drop_capture().await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let runtime =
        runtime_toml(&env, &["item"]).replace("type = \"postgres\"", "type = \"postgres\"\nsnapshot = \"never\"");
    let config = env.config(&runtime, &[])?;
    let mut capture = config.runtime.sources["events"].build("events").await?;
    let mut writer = DebeziumStreamWriter::connect(REDIS_URL.as_str(), true).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { forward(&mut capture, &mut writer, &stop).await });

    env.sql("insert into item values (1, 'one', 1); update item set name = 'uno' where id = 1; delete from item where id = 1;")
        .await?;
    env.sql("truncate item").await?;
    let stream = format!("{0}.{0}.item", env.prefix);
    let mut redis = env.redis.clone();
    wait_until("four entries in the stream", WAIT, || {
        let mut redis = redis.clone();
        let stream = stream.clone();
        async move { Ok(redis::cmd("XLEN").arg(&stream).query_async::<u64>(&mut redis).await? == 4) }
    })
    .await?;
    shutdown.cancel();
    let written = task.await?;
    env.drop_capture().await?;
    assert_eq!(written, 4);

    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut redis).await?;
    let mut ops = Vec::new();
    for entry in reply.ids {
        let fields: Vec<(String, String)> =
            entry.map.into_iter().map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default())).collect();
        assert_eq!(fields.len(), 1, "compact layout: one field, named by the key");
        let key = &fields[0].0;
        assert!(
            key.starts_with("{\"schema\":") || key == "default",
            "schemas on, null key as Debezium writes it: {key}"
        );
        assert!(fields[0].1.starts_with("{\"schema\":"), "schemas on: {}", fields[0].1);
        let Decoded::Change(event) = decode_stream_entry(&stream, &fields)? else { panic!("not a change") };
        ops.push((event.op, event.key));
    }
    use evercache::event::Op;
    let key = r#"{"id":1}"#.to_owned();
    assert_eq!(
        ops,
        [(Op::Create, key.clone()), (Op::Update, key.clone()), (Op::Delete, key), (Op::Truncate, "null".to_owned())]
    );
    redis::cmd("DEL").arg(&stream).query_async::<()>(&mut redis).await?;
    Ok(())
}

/// Reads `count` records from the capture, settling each batch, and gives back their envelopes.
async fn envelopes(source: &mut evercache::source::PostgresCapture, count: usize) -> Result<Vec<Value>> {
    let mut envelopes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while envelopes.len() < count {
            let records = source.next_batch().await?;
            source.settled(records.len());
            for record in &records {
                envelopes.push(serde_json::from_str(&record.fields()[0].1)?);
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("{count} records within {WAIT:?}, got {envelopes:?}"))??;
    Ok(envelopes)
}

/// The capture of `tables` starting with a fresh slot and, unless `extra` says otherwise, an initial snapshot.
async fn snapshotting_capture(
    env: &TestEnv,
    tables: &[&str],
    extra: &str,
) -> Result<evercache::source::PostgresCapture> {
    env.drop_capture().await?;
    let mut redis = env.redis.clone();
    redis::cmd("DEL").arg(format!("evercache:snapshot:test:{}", env.prefix)).query_async::<()>(&mut redis).await?;
    let runtime = runtime_toml(env, tables).replace("type = \"postgres\"", &format!("type = \"postgres\"\n{extra}"));
    let config = env.config(&runtime, &[])?;
    let SourceConfig::Postgres(capture) = &config.runtime.sources["events"] else { unreachable!() };
    Ok(capture.build("events").await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_are_marked_first_and_last_as_debezium_marks_them() -> Result<()> {
    let env = TestEnv::new("capture_marks").await?;
    // Tables b and e are empty; batches of 2 make the marks cross page ends.
    env.sql(
        "create table a (id int primary key); insert into a values (1), (2), (3);
         create table b (id int primary key);
         create table c (id int primary key); insert into c values (1);
         create table d (id int primary key); insert into d values (1), (2);
         create table e (id int primary key);",
    )
    .await?;
    let mut source = snapshotting_capture(&env, &["a", "b", "c", "d", "e"], "batch_size = 2").await?;
    let read = envelopes(&mut source, 6).await?;
    assert_eq!(snapshot_marks(&read), expected_snapshot_marks());
    env.sql("insert into a values (4)").await?;
    let streamed = envelopes(&mut source, 1).await?;
    assert_eq!((streamed[0]["op"].as_str(), streamed[0]["source"]["snapshot"].as_str()), (Some("c"), Some("false")));
    source.shutdown().await;
    env.drop_capture().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_day_times_and_timestamptz_fractions_read_as_debezium_writes_them() -> Result<()> {
    let env = TestEnv::new("capture_times").await?;
    let row = "'24:00:00', '24:00:00', '0001-01-01 00:00:00+00', '2024-02-29 13:45:30.12+00', \
               '2024-02-29 13:14:15.1+02', '2024-02-29 13:14:15+00'";
    env.sql(&format!(
        "create table v (id int primary key, c_time time, c_time3 time(3), c_tz timestamptz, c_tz6 timestamptz(6),
                         c_tz3 timestamptz(3), c_tz0 timestamptz(0));
         insert into v values (1, {row});"
    ))
    .await?;
    let mut source = snapshotting_capture(&env, &["v"], "").await?;
    let snapshot = envelopes(&mut source, 1).await?;
    env.sql(&format!("insert into v values (2, {row})")).await?;
    let streamed = envelopes(&mut source, 1).await?;
    source.shutdown().await;
    env.drop_capture().await?;

    // What Debezium 3.6 sends: µs for time, ms for time(3), and as many fraction digits as the column's precision.
    let expected = |id: i64| {
        json!({
            "id": id, "c_time": 86_400_000_000i64, "c_time3": 86_400_000,
            "c_tz": "0001-01-01T00:00:00.000000Z", "c_tz6": "2024-02-29T13:45:30.120000Z",
            "c_tz3": "2024-02-29T11:14:15.100Z", "c_tz0": "2024-02-29T13:14:15Z",
        })
    };
    assert_eq!((snapshot[0]["op"].as_str(), &snapshot[0]["after"]), (Some("r"), &expected(1)), "snapshot read");
    assert_eq!((streamed[0]["op"].as_str(), &streamed[0]["after"]), (Some("c"), &expected(2)), "streamed insert");
    Ok(())
}
