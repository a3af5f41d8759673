//! Debezium Server 3.6 itself (the Java distribution) reading the local
//! MariaDB's binlog with its MariaDB connector and writing Redis Streams with
//! its Redis sink, feeding evercache, with the files of
//! examples/marketplace/debezium-server on a database and stream prefix of the
//! test's own: the snapshot, inserts, updates, deletes with their tombstones,
//! DDL and a burst of status flips all end with every `specialist:{id}` equal
//! to what the database says and nothing dead-lettered. The entries Debezium
//! Server wrote, kept in tests/fixtures/debezium/real, decode as what they are.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use evercache::event::debezium::{Decoded, SkipReason, decode_stream_entry};
use evercache::event::{ChangeEvent, Op};
use evercache_e2e::debezium_server::{DebeziumServer, EXAMPLE};
use evercache_e2e::mariadb::{MariaDb, server_id};
use evercache_e2e::{REDIS_URL, Running, TestEnv, plugins_dir, repo_root, wait_until};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// Specialist ids the test ever writes; any other key would be a stray.
const IDS: std::ops::RangeInclusive<i64> = 1..=8;

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(repo_root().join(path)).with_context(|| format!("reading {path}"))
}

/// `text` with each `from` replaced by its `to`; a `from` missing means the example changed.
fn replace(mut text: String, pairs: &[(&str, String)]) -> Result<String> {
    for (from, to) in pairs {
        ensure!(text.contains(from), "the example no longer has `{from}`:\n{text}");
        text = text.replace(from, to);
    }
    Ok(text)
}

/// The example's evercache.toml, on the test's database, streams and plugins.
fn runtime_toml(env: &TestEnv, maria: &MariaDb) -> Result<String> {
    let p = &env.prefix;
    replace(
        read(&format!("{EXAMPLE}/evercache.toml"))?,
        &[
            ("plugins_dir = \"../plugins\"", format!("plugins_dir = \"{}\"", plugins_dir().display())),
            ("pipelines_dir = \"../mariadb/pipelines\"", "pipelines_dir = \"pipelines\"".to_owned()),
            ("mysql://evercache_ro@127.0.0.1:3306/marketplace", maria.url()),
            ("redis://127.0.0.1:6379", REDIS_URL.to_string()),
            ("\"marketplace.marketplace.", format!("\"{p}.{p}.")),
            ("\"marketplace\"]", format!("\"{p}\"]")),
        ],
    )
}

/// The MariaDB marketplace pipeline, on the test's database and key prefix.
fn pipeline(env: &TestEnv) -> Result<String> {
    let p = &env.prefix;
    replace(
        read("examples/marketplace/mariadb/pipelines/specialist-status.toml")?,
        &[
            ("\"marketplace.specialist\"", format!("\"{p}.specialist\"")),
            ("\"marketplace.session\"", format!("\"{p}.session\"")),
            ("schema = \"marketplace\"", format!("schema = \"{p}\"")),
            ("key_prefix = \"specialist\"", format!("key_prefix = \"{p}:specialist\"")),
            ("[\"specialist:*\"]", format!("[\"{p}:specialist:*\"]")),
        ],
    )
}

/// Every specialist's listing as the plugin defines it, straight from the database.
async fn listings(maria: &MariaDb) -> Result<BTreeMap<i64, Value>> {
    let mut conn = maria.conn().await?;
    let rows: Vec<(i64, String, i64, i64)> = conn
        .query(
            "select s.id, s.name, cast(s.online as signed), count(case when x.ended_at is null then x.id end)
             from specialist s left join session x on x.specialist_id = s.id group by s.id, s.name, s.online",
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, online, active)| {
            let status = match (online, active) {
                (0, _) => "offline",
                (_, 0) => "online",
                _ => "busy",
            };
            (id, json!({"id": id, "name": name, "status": status, "active_sessions": active}))
        })
        .collect())
}

/// Keys whose cached value differs from the database's, described.
async fn mismatches(env: &TestEnv, maria: &MariaDb) -> Result<Vec<String>> {
    let expected = listings(maria).await?;
    let mut redis = env.redis.clone();
    let mut wrong = Vec::new();
    for id in IDS {
        let key = format!("{}:specialist:{id}", env.prefix);
        let text: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
        let cached = text.map(|t| serde_json::from_str::<Value>(&t)).transpose()?;
        if cached.as_ref() != expected.get(&id) {
            wrong.push(format!("{key}: cache {cached:?}, database {:?}", expected.get(&id)));
        }
    }
    Ok(wrong)
}

async fn wait_cache_equals_database(env: &TestEnv, maria: &MariaDb, what: &str) -> Result<Duration> {
    match wait_until(what, WAIT, || async { Ok(mismatches(env, maria).await?.is_empty()) }).await {
        Ok(took) => Ok(took),
        Err(e) => bail!("{e}:\n{}", mismatches(env, maria).await?.join("\n")),
    }
}

/// Every entry of a stream as (id, fields).
async fn entries(env: &TestEnv, stream: &str) -> Result<Vec<(String, Vec<(String, String)>)>> {
    let mut redis = env.redis.clone();
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut redis).await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| {
            let fields =
                e.map.into_iter().map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default())).collect();
            (e.id, fields)
        })
        .collect())
}

/// The `payload` of a compact entry's value, `None` for a tombstone.
fn payload(fields: &[(String, String)]) -> Option<Value> {
    let value: Value = serde_json::from_str(&fields.first()?.1).ok()?;
    Some(value["payload"].clone())
}

/// Whether group "evercache" has read and acknowledged every entry of `stream`.
async fn acknowledged(env: &TestEnv, stream: &str) -> Result<bool> {
    let mut redis = env.redis.clone();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut redis).await?;
    let name = |g: &std::collections::HashMap<String, redis::Value>| {
        g.get("name").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
    };
    let group = groups.iter().find(|g| name(g).as_deref() == Some("evercache"));
    let int = |field: &str| match group.and_then(|g| g.get(field)) {
        Some(redis::Value::Int(n)) => Some(*n),
        _ => None,
    };
    Ok(int("pending") == Some(0) && int("lag") == Some(0))
}

/// `source.snapshot` of every `op: r` entry of `streams`.
async fn snapshot_reads(env: &TestEnv, streams: &[String]) -> Result<Vec<String>> {
    let mut reads = Vec::new();
    for stream in streams {
        for (_, fields) in entries(env, stream).await? {
            if let Some(payload) = payload(&fields).filter(|p| p["op"] == "r") {
                reads.push(payload["source"]["snapshot"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(reads)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_server_on_mariadb_keeps_the_marketplace_cache_equal_to_the_database() -> Result<()> {
    let mut env = TestEnv::new("dbz_server").await?;
    let p = env.prefix.clone();
    let maria = MariaDb::new(&p).await?;
    maria.sql(&read("examples/marketplace/mariadb/schema.sql")?).await?;
    maria.sql(&read("examples/marketplace/mariadb/seed.sql")?).await?;
    maria.sql(&read(&format!("{EXAMPLE}/roles.sql"))?).await?;
    let (table_streams, schema_stream) = ([format!("{p}.{p}.specialist"), format!("{p}.{p}.session")], p.clone());
    // A group that never reads keeps every entry from the example's trim_acked, for the checks below.
    for stream in table_streams.iter().chain([&schema_stream]) {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("observer")
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut env.redis)
            .await?;
    }

    let server = {
        let (prefix, replica) = (p.clone(), server_id(&p));
        tokio::task::spawn_blocking(move || {
            DebeziumServer::start_example(&prefix, &prefix, replica, REDIS_URL.as_str())
        })
        .await??
    };
    println!("Debezium Server up (health UP) in {} ms", server.started_in.as_millis());
    let config = env.config(&runtime_toml(&env, &maria)?, &[("specialist-status", &pipeline(&env)?)])?;
    let running = Running::start(config).await?;

    // The snapshot: one `op: r` per row, the very last marked `snapshot: last`.
    let took = wait_cache_equals_database(&env, &maria, "the snapshot in the cache").await?;
    println!("snapshot in the cache {} ms after evercache started", took.as_millis());
    wait_until("six snapshot reads in the streams", WAIT, || async {
        Ok(snapshot_reads(&env, &table_streams).await?.len() == 6)
    })
    .await?;
    let reads = snapshot_reads(&env, &table_streams).await?;
    assert_eq!(reads.iter().filter(|s| *s == "last").count(), 1, "{reads:?}");
    // The offsets are in Redis beside the streams, under a key named by the prefix.
    let offsets: Vec<String> =
        redis::cmd("HVALS").arg(format!("metadata:debezium:{p}:offsets")).query_async(&mut env.redis).await?;
    assert!(offsets.iter().any(|o| o.contains(r#""file":"#) && o.contains(r#""pos":"#)), "{offsets:?}");

    // The legacy application: inserts, updates, a session moving, deletes, DDL.
    let mut conn = maria.conn().await?;
    for sql in [
        "insert into specialist (id, name, online) values (5, 'Barbara Liskov', true), (6, 'Donald Knuth', false), (7, 'Frances Allen', true), (8, 'John Backus', true)",
        "insert into session (id, specialist_id) values (10, 5), (11, 7), (12, 7)",
        "update specialist set name = 'Alan M. Turing', online = true where id = 3",
        "update session set ended_at = now(3) where id = 1",
        "update session set specialist_id = 8 where id = 12",
        "alter table specialist add column bio varchar(100) null",
        "update specialist set bio = 'Notes on the Analytical Engine' where id = 1",
        "delete from session where id = 2",
        "start transaction; delete from session where specialist_id = 7; delete from specialist where id = 7; commit",
    ] {
        conn.query_drop(sql).await.with_context(|| sql.to_owned())?;
    }
    wait_cache_equals_database(&env, &maria, "the legacy writes in the cache").await?;

    // Two writers flip statuses and open and close sessions concurrently, 100 changes.
    let live = [1i64, 2, 3, 4, 5, 6, 8];
    let mut flipper = maria.conn().await?;
    let flips = tokio::spawn(async move {
        for n in 0..50usize {
            flipper.exec_drop("update specialist set online = not online where id = ?", (live[n % 7],)).await?;
        }
        Ok::<_, mysql_async::Error>(())
    });
    let mut sessions = maria.conn().await?;
    let opens = tokio::spawn(async move {
        for n in 0..50i64 {
            if n % 2 == 0 {
                let sql = "insert into session (id, specialist_id) values (?, ?)";
                sessions.exec_drop(sql, (100 + n, live[(n as usize / 2) % 7])).await?;
            } else {
                sessions.exec_drop("update session set ended_at = now(3) where id = ?", (100 + n - 1,)).await?;
            }
        }
        Ok::<_, mysql_async::Error>(())
    });
    flips.await??;
    opens.await??;
    let took = wait_cache_equals_database(&env, &maria, "the status flips in the cache").await?;
    println!("100 concurrent changes settled in the cache {} ms after the last commit", took.as_millis());

    // Commit → cache: one flip at a time, polling the key until its value changes.
    let key = format!("{p}:specialist:4");
    let mut redis = env.redis.clone();
    let mut delays = Vec::new();
    for _ in 0..50 {
        let before: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
        conn.query_drop("update specialist set online = not online where id = 4").await?;
        let committed = Instant::now();
        loop {
            let now: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            if now != before {
                delays.push(committed.elapsed());
                break;
            }
            ensure!(committed.elapsed() < WAIT, "{key} did not change after a flip; log:\n{}", server.log_tail(20));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    delays.sort();
    println!(
        "commit -> cache over {} flips: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        delays.len(),
        percentile(&delays, 0.50).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3
    );
    wait_cache_equals_database(&env, &maria, "the last flip in the cache").await?;

    // Tombstones and DDL reached the streams, were acknowledged, and nothing was dead-lettered.
    let mut tombstones = 0;
    for stream in &table_streams {
        tombstones += entries(&env, stream).await?.iter().filter(|(_, f)| payload(f).is_none()).count();
    }
    assert_eq!(tombstones, 3, "one after each delete: sessions 2 and 11, specialist 7");
    let ddl = entries(&env, &schema_stream).await?;
    assert!(
        ddl.iter()
            .any(|(_, f)| payload(f).is_some_and(|p| p["ddl"].as_str().is_some_and(|d| d.contains("add column bio")))),
        "the ALTER is in {schema_stream}"
    );
    for stream in table_streams.iter().chain([&schema_stream]) {
        wait_until(&format!("{stream} fully acknowledged"), WAIT, || acknowledged(&env, stream)).await?;
        let letters = env.dead_letters(stream).await?;
        assert!(letters.is_empty(), "{stream}:dlq holds {letters:?}");
    }
    let errors: Vec<String> = server.warnings().into_iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "Debezium Server logged errors:\n{}", errors.join("\n"));

    running.stop().await?;
    drop(server);
    // The pool's disconnect waits for every connection to come back.
    drop(conn);
    maria.drop_database().await?;
    env.clear_redis().await
}

fn fixture(name: &str) -> Result<(String, Vec<(String, String)>)> {
    let doc: Value = serde_json::from_str(&read(&format!("tests/fixtures/debezium/real/mariadb_{name}.json"))?)?;
    let fields = doc["fields"]
        .as_array()
        .context("fields")?
        .iter()
        .map(|pair| Ok((pair[0].as_str().context("name")?.to_owned(), pair[1].as_str().context("value")?.to_owned())))
        .collect::<Result<_>>()?;
    Ok((doc["stream"].as_str().context("stream")?.to_owned(), fields))
}

fn decoded(name: &str) -> Result<Decoded> {
    let (stream, fields) = fixture(name)?;
    Ok(decode_stream_entry(&stream, &fields)?)
}

fn change(name: &str) -> Result<ChangeEvent> {
    match decoded(name)? {
        Decoded::Change(event) => Ok(event),
        other => bail!("{name} decoded as {other:?}"),
    }
}

fn image(row: &Option<String>) -> Value {
    row.as_deref().map_or(Value::Null, |text| serde_json::from_str(text).unwrap_or(Value::Null))
}

#[test]
fn entries_debezium_server_wrote_for_mariadb_decode_as_the_changes_they_are() -> Result<()> {
    let first = change("snapshot_read_first")?;
    let last = change("snapshot_read_last")?;
    let insert = change("insert")?;
    let update = change("update")?;
    let delete = change("delete")?;
    for (event, op, table, key) in [
        (&first, Op::SnapshotRead, "specialist", r#"{"id":1}"#),
        (&last, Op::SnapshotRead, "session", r#"{"id":2}"#),
        (&insert, Op::Create, "session", r#"{"id":10}"#),
        (&update, Op::Update, "specialist", r#"{"id":2}"#),
        (&delete, Op::Delete, "session", r#"{"id":2}"#),
    ] {
        assert_eq!((event.op, event.table.as_str(), event.key.as_str()), (op, table, key), "{event:?}");
        assert_eq!((event.source.as_str(), event.schema.as_deref()), ("dbz_fixture", Some("dbz_fixture")));
        assert!(event.position.starts_with("my:") && event.committed_at_ms > 0, "{event:?}");
    }
    assert_eq!(image(&first.after)["name"], "Ada Lovelace");
    assert_eq!(image(&insert.after)["specialist_id"], 1, "{insert:?}");
    assert_eq!((image(&update.before)["online"].clone(), image(&update.after)["online"].clone()), (json!(1), json!(0)));
    assert_eq!((image(&delete.before)["specialist_id"].clone(), delete.after.clone()), (json!(4), None));
    // The whole snapshot is at its binlog position; streamed rows follow in binlog order.
    assert_eq!(first.position, last.position);
    let positions = [&last.position, &insert.position, &update.position, &delete.position];
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    assert_eq!(decoded("tombstone")?, Decoded::Skip(SkipReason::Tombstone));
    assert_eq!(decoded("schema_change")?, Decoded::Skip(SkipReason::SchemaChange));
    assert_eq!(decoded("heartbeat")?, Decoded::Skip(SkipReason::Heartbeat));
    Ok(())
}
