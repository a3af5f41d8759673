//! What the MariaDB failover suites share: Debezium MariaDB-connector
//! envelopes for a table `item(id, name, version)`, built from one the real
//! connector wrote (tests/fixtures/debezium/real/mariadb_update.json) with the
//! binlog place a test names; the testkit pipeline over that table; and the
//! rows as the database and the cache hold them; writers that go on through a
//! switch; where a stream's entries came from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

use crate::{TestEnv, repo_root, wait_until};

/// Where a change is in a server's binlog, as the connector's `source` block says.
#[derive(Debug, Clone, Copy)]
pub struct BinlogPlace<'a> {
    pub server_id: u32,
    /// `domain-server-seq`.
    pub gtid: &'a str,
    pub file: &'a str,
    pub pos: u64,
}

/// The `item` table the suites use, with rows `ids`, each `('row', 1)`.
pub fn item_table_sql(database: &str, ids: std::ops::RangeInclusive<i64>) -> String {
    let rows: Vec<String> = ids.map(|id| format!("({id}, 'row', 1)")).collect();
    format!(
        "CREATE DATABASE `{database}`; \
         CREATE TABLE `{database}`.item (id bigint primary key, name text, version bigint); \
         INSERT INTO `{database}`.item VALUES {}",
        rows.join(", ")
    )
}

/// The testkit pipeline on MariaDB table `<prefix>.item` fed by `source`, keys `<prefix>:item:<id>`.
pub fn item_pipeline(env: &TestEnv, source: &str) -> String {
    format!(
        r#"source = "{source}"
database = "db"
cache = "main"
plugin = "testkit"
tables = ["{p}.item"]

[config]
dialect = "mysql"
schema = "{p}"
table = "item"
key_prefix = "{p}:item"
"#,
        p = env.prefix
    )
}

/// An `item` row as the testkit plugin caches it.
pub fn item(id: i64, name: &str, version: i64) -> Value {
    json!({"id": id, "name": name, "version": version})
}

/// The (key, value) of a Debezium Server compact entry for a change of
/// `database.item` (topic prefix = database) at `place`: an update, an insert
/// (no `before`) or a delete (no `after`).
pub fn item_envelope(
    database: &str,
    before: Option<Value>,
    after: Option<Value>,
    place: BinlogPlace,
) -> Result<(String, String)> {
    let path = repo_root().join("tests/fixtures/debezium/real/mariadb_update.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let [key, value] = [0, 1].map(|i| fixture["fields"][0][i].as_str().map(serde_json::from_str::<Value>));
    let (mut key, mut value) = (key.context("the fixture's key")??, value.context("the fixture's value")??);
    let id = after.as_ref().or(before.as_ref()).and_then(|row| row["id"].as_i64()).context("a row with an id")?;
    let topic = format!("{database}.{database}.item");

    key["schema"]["name"] = json!(format!("{topic}.Key"));
    key["payload"] = json!({"id": id});
    // The row structs' schemas describe `item`'s columns; the `source` struct's stay as the connector wrote them.
    let columns = json!([
        {"type": "int64", "optional": false, "field": "id"},
        {"type": "string", "optional": true, "field": "name"},
        {"type": "int64", "optional": true, "field": "version"},
    ]);
    let schema = &mut value["schema"];
    schema["name"] = json!(format!("{topic}.Envelope"));
    for image in schema["fields"].as_array_mut().context("the envelope's fields")?.iter_mut().take(2) {
        image["fields"] = columns.clone();
        image["name"] = json!(format!("{topic}.Value"));
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let (ms, us, ns) = (now.as_millis() as u64, now.as_micros() as u64, now.as_nanos() as u64);
    let payload = &mut value["payload"];
    let op = match (&before, &after) {
        (Some(_), Some(_)) => "u",
        (None, Some(_)) => "c",
        _ => "d",
    };
    let source = payload["source"].as_object_mut().context("the fixture's source block")?;
    let commit_ms = ms / 1000 * 1000;
    for (field, set) in [
        ("name", json!(database)),
        ("db", json!(database)),
        ("table", json!("item")),
        ("ts_ms", json!(commit_ms)),
        ("ts_us", json!(commit_ms * 1000)),
        ("ts_ns", json!(commit_ms * 1_000_000)),
        ("server_id", json!(place.server_id)),
        ("gtid", json!(place.gtid)),
        ("file", json!(place.file)),
        ("pos", json!(place.pos)),
        ("row", json!(0)),
    ] {
        ensure!(source.contains_key(field), "the real connector's source block has no `{field}`");
        source.insert(field.to_owned(), set);
    }
    for (field, set) in [
        ("before", before.unwrap_or(Value::Null)),
        ("after", after.unwrap_or(Value::Null)),
        ("op", json!(op)),
        ("ts_ms", json!(ms)),
        ("ts_us", json!(us)),
        ("ts_ns", json!(ns)),
    ] {
        ensure!(payload.get(field).is_some(), "the real connector's payload has no `{field}`");
        payload[field] = set;
    }
    Ok((key.to_string(), value.to_string()))
}

/// Options that keep a connection on `url`'s address: by default mysql_async
/// reopens a loopback connection on the server's Unix socket, which would go
/// around the proxy and stay on the old primary after a switch.
pub fn through(url: &str) -> Result<mysql_async::Opts> {
    Ok(mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(url)?).prefer_socket(false).into())
}

/// Every `item` row of `database` on the server at `url`, on a connection of its own.
pub async fn database_items(url: &str, database: &str) -> Result<BTreeMap<i64, Value>> {
    let mut conn = mysql_async::Conn::new(through(url)?).await?;
    let rows: Vec<(i64, Option<String>, Option<i64>)> =
        conn.query(format!("SELECT id, name, version FROM `{database}`.item")).await?;
    conn.disconnect().await?;
    Ok(rows.into_iter().map(|(id, name, version)| (id, json!({"id": id, "name": name, "version": version}))).collect())
}

/// Every `<prefix>:item:<id>` key of `ids` that exists, parsed.
pub async fn cached_items(env: &TestEnv, ids: std::ops::RangeInclusive<i64>) -> Result<BTreeMap<i64, Value>> {
    let mut redis = env.redis.clone();
    let mut found = BTreeMap::new();
    for id in ids {
        let text: Option<String> =
            redis::cmd("GET").arg(format!("{}:item:{id}", env.prefix)).query_async(&mut redis).await?;
        if let Some(text) = text {
            found.insert(id, serde_json::from_str(&text)?);
        }
    }
    Ok(found)
}

/// Waits until every `item` key equals its row in the database behind `url`
/// (a database that does not answer, as during a switch, is asked again);
/// fails naming the keys that differ.
pub async fn wait_items_equal(
    env: &TestEnv,
    url: &str,
    ids: std::ops::RangeInclusive<i64>,
    timeout: Duration,
) -> Result<Duration> {
    let differences = || async {
        let database = database_items(url, &env.prefix).await;
        let cache = cached_items(env, ids.clone()).await?;
        Ok::<_, anyhow::Error>(match database {
            Ok(database) => ids
                .clone()
                .filter(|id| database.get(id) != cache.get(id))
                .map(|id| format!("{id}: cache {:?}, database {:?}", cache.get(&id), database.get(&id)))
                .collect::<Vec<_>>(),
            Err(e) => vec![format!("the database did not answer: {e}")],
        })
    };
    match wait_until("every item key equal to the database", timeout, || async { Ok(differences().await?.is_empty()) })
        .await
    {
        Ok(took) => Ok(took),
        Err(e) => bail!("{e}:\n{}", differences().await?.join("\n")),
    }
}

/// Where the change entries of `stream` came from: how many each
/// (`source.server_id`, binlog basename, GTID `domain-server`) has.
pub async fn stream_origins(env: &TestEnv, stream: &str) -> Result<BTreeMap<(u64, String, String), usize>> {
    let mut redis = env.redis.clone();
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut redis).await?;
    let mut counts = BTreeMap::new();
    for value in reply.ids.into_iter().flat_map(|entry| entry.map.into_values()) {
        // Tombstones' values are `default`, not JSON.
        let Ok(value) = serde_json::from_str::<Value>(&redis::from_redis_value::<String>(value)?) else { continue };
        let source = &value["payload"]["source"];
        let text = |field: &str| source[field].as_str().unwrap_or_default().to_owned();
        let basename = text("file").split('.').next().unwrap_or_default().to_owned();
        let gtid = text("gtid").rsplit_once('-').map(|(origin, _)| origin.to_owned()).unwrap_or_default();
        *counts.entry((source["server_id"].as_u64().unwrap_or(0), basename, gtid)).or_default() += 1;
    }
    Ok(counts)
}

/// Updates rows of `ids` round-robin through `url` (its database the one
/// holding `item`) a few milliseconds apart until `stop`, connecting again
/// after an error (a switch cuts connections); counts commits in `commits`
/// and returns the errors it went on through.
pub async fn update_rows_until(
    url: String,
    ids: std::ops::RangeInclusive<i64>,
    first: i64,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
) -> Vec<String> {
    let (mut conn, mut errors, mut n) = (None, Vec::new(), first);
    let span = ids.end() - ids.start() + 1;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            match through(&url) {
                Ok(opts) => match mysql_async::Conn::new(opts).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        errors.push(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Err(e) => return vec![format!("{url}: {e}")],
            }
            continue;
        };
        let sql = "UPDATE item SET name = ?, version = version + 1 WHERE id = ?";
        match c.exec_drop(sql, (format!("w{n}"), ids.start() + n % span)).await {
            Ok(()) => {
                commits.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            Err(e) => {
                errors.push(format!("update: {e}"));
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    errors
}

/// The change version (`pos`) the guard keeps for `key`.
pub async fn key_position(env: &TestEnv, key: &str) -> Result<Option<String>> {
    let mut redis = env.redis.clone();
    Ok(redis::cmd("HGET").arg(format!("{{{key}}}:meta")).arg("pos").query_async(&mut redis).await?)
}
