//! The built-in MySQL/MariaDB binlog capture against the local MariaDB:
//! committed writes reach the cache with no Debezium in between, the resume
//! position is stored only after the writes, a snapshot warms the cache and
//! misses nothing committed while it opens (with and without the global read
//! lock MySQL needs), DDL mid-stream keeps columns named, the records read as
//! Debezium MariaDB events (snapshot reads marked first/last as Debezium marks
//! them), and no key keeps a value older than its position under concurrent writes.

use std::time::Duration;

use anyhow::Result;
use evercache::contract::Op;
use evercache::event::debezium::{Decoded, decode_stream_entry};
use evercache::source::mysql::StoredState;
use evercache_e2e::debezium::{expected_snapshot_marks, snapshot_marks};
use evercache_e2e::mariadb::{MariaDb, server_id};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, wait_until};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn runtime_toml(env: &TestEnv, maria: &MariaDb, extra: &str) -> String {
    RuntimeToml::new()
        .database("db", &maria.url())
        .cache("main", REDIS_URL.as_str())
        .mysql_capture(
            "events",
            &[format!("{}.item", env.prefix)],
            server_id(&env.prefix),
            &env.prefix,
            REDIS_URL.as_str(),
        )
        .line(extra)
        .build()
}

fn pipeline(env: &TestEnv) -> String {
    env.testkit_pipeline("dialect = \"mysql\"")
}

async fn wait_json(env: &TestEnv, key: &str, expected: Option<Value>) -> Result<()> {
    evercache_e2e::wait_json(&env.redis, key, expected, WAIT).await
}

async fn stored(env: &TestEnv) -> Result<Option<StoredState>> {
    let mut redis = env.redis.clone();
    let text: Option<String> = redis::cmd("GET").arg(format!("{}:binlog", env.prefix)).query_async(&mut redis).await?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

async fn master_position(maria: &MariaDb) -> Result<(String, u64)> {
    let mut conn = maria.conn().await?;
    let row: Option<(String, u64, String, String)> = conn.query_first("show master status").await?;
    let (file, pos, ..) = row.expect("binlog on");
    Ok((file, pos))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_changes_reach_the_cache_and_the_position_is_stored_after_them() -> Result<()> {
    let env = TestEnv::new("my_capture").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    maria.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let config = env.config(&runtime_toml(&env, &maria, ""), &[("items", &pipeline(&env))])?;
    let running = Running::start(config).await?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);

    maria.sql("insert into item values (1, 'one', 1), (2, 'two', 1)").await?;
    wait_json(&env, &key(1), Some(json!({"id": 1, "name": "one", "version": 1}))).await?;
    wait_json(&env, &key(2), Some(json!({"id": 2, "name": "two", "version": 1}))).await?;
    maria.sql("update item set name = 'uno', version = 2 where id = 1").await?;
    wait_json(&env, &key(1), Some(json!({"id": 1, "name": "uno", "version": 2}))).await?;
    maria.sql("delete from item where id = 2").await?;
    wait_json(&env, &key(2), None).await?;
    // One transaction touching many rows arrives whole.
    maria.sql("start transaction; insert into item select seq, 'bulk', 1 from seq_10_to_1200; commit").await?;
    wait_json(&env, &key(1200), Some(json!({"id": 1200, "name": "bulk", "version": 1}))).await?;

    let (file, pos) = master_position(&maria).await?;
    wait_until("position stored past the last commit", WAIT, || async {
        Ok(stored(&env).await?.is_some_and(|s| (s.position.file.as_str(), s.position.pos) >= (file.as_str(), pos)))
    })
    .await?;
    let meta = env.clone_redis_hash(&format!("{{{}}}:meta", key(1))).await?;
    assert!(meta["pos"].as_str().unwrap_or("").starts_with("my:"), "{meta}");
    running.stop().await?;
    maria.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_snapshot_warms_the_cache_then_streaming_starts_from_its_position() -> Result<()> {
    let env = TestEnv::new("my_snapshot").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    maria.sql("create table item (id bigint primary key, name text, version bigint); insert into item select seq, 'old', 1 from seq_1_to_1234").await?;
    let config = env.config(&runtime_toml(&env, &maria, ""), &[("items", &pipeline(&env))])?;
    let running = Running::start(config).await?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);
    wait_json(&env, &key(1), Some(json!({"id": 1, "name": "old", "version": 1}))).await?;
    wait_json(&env, &key(1234), Some(json!({"id": 1234, "name": "old", "version": 1}))).await?;
    maria.sql("update item set name = 'new', version = 2 where id = 7").await?;
    wait_json(&env, &key(7), Some(json!({"id": 7, "name": "new", "version": 2}))).await?;
    wait_until("the finished snapshot is stored", WAIT, || async {
        Ok(stored(&env).await?.is_some_and(|s| s.snapshot_done))
    })
    .await?;
    running.stop().await?;

    // A restart resumes from the stored position: no second snapshot, nothing missed.
    maria.sql("update item set name = 'while down', version = 3 where id = 8").await?;
    let config = env.config(&runtime_toml(&env, &maria, ""), &[("items", &pipeline(&env))])?;
    let mut redis = env.redis.clone();
    redis::cmd("SET").arg(key(9)).arg("untouched").query_async::<()>(&mut redis).await?;
    let running = Running::start(config).await?;
    wait_json(&env, &key(8), Some(json!({"id": 8, "name": "while down", "version": 3}))).await?;
    let nine: Option<String> = redis::cmd("GET").arg(key(9)).query_async(&mut redis).await?;
    assert_eq!(nine.as_deref(), Some("untouched"), "no second snapshot");
    running.stop().await?;
    maria.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_as_debezium_mysql_events_through_ddl_and_truncate() -> Result<()> {
    use evercache::source::forward::{DebeziumStreamWriter, forward};
    let env = TestEnv::new("my_forward").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    maria.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let config = env.config(&runtime_toml(&env, &maria, ""), &[])?;
    let mut capture = config.runtime.sources["events"].build("events").await?;
    let mut writer = DebeziumStreamWriter::connect(REDIS_URL.as_str(), false).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { forward(&mut capture, &mut writer, &stop).await });

    maria.sql("insert into item values (1, 'one', 1)").await?;
    maria.sql("update item set name = 'uno' where id = 1").await?;
    // A column added mid-stream, before an existing one: names follow the new layout.
    maria.sql("alter table item add column price decimal(10,2) default 9.50 after id").await?;
    maria.sql("update item set name = 'eins' where id = 1").await?;
    maria.sql("delete from item where id = 1").await?;
    maria.sql("truncate table item").await?;
    let stream = format!("{0}.{0}.item", env.prefix);
    let mut redis = env.redis.clone();
    wait_until("five entries in the stream", WAIT, || {
        let mut redis = redis.clone();
        let stream = stream.clone();
        async move { Ok(redis::cmd("XLEN").arg(&stream).query_async::<u64>(&mut redis).await? == 5) }
    })
    .await?;
    shutdown.cancel();
    assert_eq!(task.await?, 5);

    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut redis).await?;
    let mut events = Vec::new();
    for entry in reply.ids {
        let fields: Vec<(String, String)> =
            entry.map.into_iter().map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default())).collect();
        let envelope: Value = serde_json::from_str(&fields[0].1)?;
        // The local server is MariaDB, whose Debezium connector names itself so.
        assert_eq!(envelope["source"]["connector"], "mariadb", "{envelope}");
        assert!(envelope["source"]["file"].as_str().is_some_and(|f| f.contains("bin.")), "{envelope}");
        let Decoded::Change(event) = decode_stream_entry(&stream, &fields)? else { panic!("not a change") };
        events.push(event);
    }
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Create, Op::Update, Op::Update, Op::Delete, Op::Truncate]);
    let image = |s: &Option<String>| serde_json::from_str::<Value>(s.as_deref().unwrap_or("null")).unwrap();
    assert_eq!(image(&events[0].after), json!({"id": 1, "name": "one", "version": 1}));
    assert_eq!(image(&events[1].before), json!({"id": 1, "name": "one", "version": 1}));
    assert_eq!(image(&events[2].after), json!({"id": 1, "price": "9.50", "name": "eins", "version": 1}));
    assert_eq!(events[3].key, r#"{"id":1}"#);
    assert_eq!(events[4].key, "null");
    let positions: Vec<&str> = events.iter().map(|e| e.position.as_str()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions grow: {positions:?}");
    assert!(events.iter().all(|e| e.position.starts_with("my:") && e.schema.as_deref() == Some(env.prefix.as_str())));
    redis::cmd("DEL").arg(&stream).query_async::<()>(&mut redis).await?;
    maria.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_keeps_a_value_older_than_its_position_under_concurrent_writes() -> Result<()> {
    let env = TestEnv::new("my_visible").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    maria.sql("create table item (id bigint primary key, name text, version bigint); insert into item select seq, 'v0', 0 from seq_1_to_40").await?;
    let config = env.config(&runtime_toml(&env, &maria, ""), &[("items", &pipeline(&env))])?;
    let running = Running::start(config).await?;
    let key = |id: i64| format!("{}:item:{id}", env.prefix);
    wait_json(&env, &key(40), Some(json!({"id": 40, "name": "v0", "version": 0}))).await?;

    // Four writers commit 250 small transactions each on overlapping rows, so
    // group commit puts many in flight while the capture reads them.
    let mut writers = Vec::new();
    for writer in 0..4i64 {
        let mut conn = maria.conn().await?;
        writers.push(tokio::spawn(async move {
            for n in 0..250i64 {
                let id = (n * 7 + writer * 13) % 40 + 1;
                conn.exec_drop(
                    "update item set version = version + 1, name = concat('w', ?, '-', ?) where id = ?",
                    (writer, n, id),
                )
                .await?;
            }
            Ok::<_, mysql_async::Error>(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let rows = maria.items("item").await?;
    for (id, name, version) in rows {
        wait_json(&env, &key(id), Some(json!({"id": id, "name": name, "version": version}))).await?;
    }
    running.stop().await?;
    maria.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_misses_nothing_committed_while_it_opens() -> Result<()> {
    snapshot_under_inserts("my_snapinserts", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_the_brief_global_read_lock_misses_nothing_committed_while_it_opens() -> Result<()> {
    // The MySQL way of finding the snapshot's position, taken here on MariaDB.
    snapshot_under_inserts("my_locked", "snapshot_lock = \"global-read-lock\"").await
}

async fn snapshot_under_inserts(name: &str, extra: &str) -> Result<()> {
    let env = TestEnv::new(name).await?;
    let maria = MariaDb::new(&env.prefix).await?;
    maria.sql("create table item (id bigint primary key, name text, version bigint); insert into item select seq, 'v0', 0 from seq_1_to_300").await?;
    let toml = runtime_toml(&env, &maria, extra);
    let config = env.config(&toml, &[("items", &pipeline(&env))])?;

    // Writers insert rows before, while and after the snapshot opens: a row
    // committed between the snapshot and its position would be missed for good.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..3i64 {
        let mut conn = maria.conn().await?;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = 1_000 + writer * 1_000_000 + n;
                conn.exec_drop("insert into item values (?, concat('w', ?), ?)", (id, writer, n)).await?;
                n += 1;
            }
            Ok::<_, mysql_async::Error>(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = Running::start(config).await?;
    wait_until("the finished snapshot is stored", WAIT, || async {
        Ok(stored(&env).await?.is_some_and(|s| s.snapshot_done))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut commits = 0;
    for writer in writers {
        commits += writer.await??;
    }
    assert!(commits > 30, "the writers kept committing while the snapshot opened ({commits})");
    for (id, name, version) in maria.items("item").await? {
        wait_json(
            &env,
            &format!("{}:item:{id}", env.prefix),
            Some(json!({"id": id, "name": name, "version": version})),
        )
        .await?;
    }
    running.stop().await?;
    maria.drop_database().await
}

/// Reads `count` records from the capture, settling each batch, and gives back their envelopes.
async fn envelopes(source: &mut evercache::source::MySqlCapture, count: usize) -> Result<Vec<Value>> {
    let mut envelopes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while envelopes.len() < count {
            let records = source.next_batch().await?;
            source.settled(records.len()).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_are_marked_and_timestamps_padded_as_debeziums_mariadb_connector_does() -> Result<()> {
    use evercache::source::SourceConfig;
    let env = TestEnv::new("my_marks").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    let row = "'2024-02-29 13:14:15.1', '2024-02-29 13:14:15', '2024-02-29 13:14:15'";
    // Tables b and e are empty; batches of 2 make the marks cross page ends.
    maria
        .sql(&format!(
            "set time_zone = '+00:00';
             create table a (id int primary key, ts3 timestamp(3) null, ts6 timestamp(6) null, ts0 timestamp null);
             insert into a values (1, {row}), (2, null, null, null), (3, null, null, null);
             create table b (id int primary key);
             create table c (id int primary key); insert into c values (1);
             create table d (id int primary key); insert into d values (1), (2);
             create table e (id int primary key);"
        ))
        .await?;
    let tables: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|t| format!("{}.{t}", env.prefix)).collect();
    let toml = RuntimeToml::new()
        .mysql_capture("events", &tables, server_id(&env.prefix), &env.prefix, REDIS_URL.as_str())
        .line("batch_size = 2")
        .build();
    let config = env.config(&toml, &[])?;
    let SourceConfig::MySql(capture) = &config.runtime.sources["events"] else { unreachable!() };
    let mut source = capture.build("events").await?;
    let snapshot = envelopes(&mut source, 6).await?;
    maria.sql(&format!("set time_zone = '+00:00'; insert into a values (4, {row})")).await?;
    let streamed = envelopes(&mut source, 1).await?;
    source.shutdown().await;
    maria.drop_database().await?;

    assert_eq!(snapshot_marks(&snapshot), expected_snapshot_marks());
    assert_eq!(streamed[0]["source"]["snapshot"], "false");
    for envelope in snapshot.iter().chain(&streamed) {
        assert_eq!(envelope["source"]["connector"], "mariadb", "{envelope}");
    }
    // Debezium's ZonedTimestamp has exactly the column's fsp digits, and none for fsp 0.
    let expected = |id: i64| json!({"id": id, "ts3": "2024-02-29T13:14:15.100Z", "ts6": "2024-02-29T13:14:15.000000Z", "ts0": "2024-02-29T13:14:15Z"});
    assert_eq!(snapshot[0]["after"], expected(1), "snapshot read");
    assert_eq!((streamed[0]["op"].as_str(), &streamed[0]["after"]), (Some("c"), &expected(4)), "streamed insert");
    Ok(())
}
