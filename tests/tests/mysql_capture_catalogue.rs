//! The binlog capture on a server whose table maps name no columns
//! (`binlog_row_metadata = MINIMAL`, MySQL's default; MariaDB's NO_LOG is the
//! same without signedness): names come from the catalogue where the capture
//! starts, follow the DDL read from the binlog (columns added in the middle,
//! renamed, dropped), are stored with the position so a restart behind DDL
//! names old rows right, and a row that cannot be named is reported instead of
//! misnamed; the stored position is not used on another server. A MariaDB
//! of the test's own, since the setting is global.

use std::time::Duration;

use anyhow::Result;
use evercache::config::Config;
use evercache::event::debezium::{Decoded, decode_stream_entry};
use evercache::source::forward::{DebeziumStreamWriter, forward};
use evercache_e2e::mariadb::MariaDb;
use evercache_e2e::{REDIS_URL, RuntimeToml, TestEnv, wait_until};
use evercache_test_kit::mariadb_server::MariaDbServer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// Forwards the capture's records into Redis streams until stopped.
struct Forwarding {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl Forwarding {
    async fn start(config: &Config) -> Result<Self> {
        let mut capture = config.runtime.sources["events"].build("events").await?;
        let mut writer = DebeziumStreamWriter::connect(REDIS_URL.as_str(), false).await?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move { forward(&mut capture, &mut writer, &token).await });
        Ok(Self { stop, task })
    }

    async fn stop(self) -> Result<u64> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

/// The stream's entries from `from` (exclusive) on: (entry id, fields).
async fn entries(env: &TestEnv, stream: &str, count: usize) -> Result<Vec<Vec<(String, String)>>> {
    let mut redis = env.redis.clone();
    wait_until(&format!("{count} entries in {stream}"), WAIT, || {
        let mut redis = redis.clone();
        async move { Ok(redis::cmd("XLEN").arg(stream).query_async::<usize>(&mut redis).await? >= count) }
    })
    .await?;
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut redis).await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|entry| {
            entry.map.into_iter().map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default())).collect()
        })
        .collect())
}

/// The after (or, for a delete, before) image of each change entry.
fn images(stream: &str, entries: &[Vec<(String, String)>]) -> Result<Vec<Value>> {
    let mut images = Vec::new();
    for fields in entries {
        let Decoded::Change(event) = decode_stream_entry(stream, fields)? else { panic!("not a change: {fields:?}") };
        let image = event.after.or(event.before).unwrap_or_else(|| "null".to_owned());
        images.push(serde_json::from_str(&image)?);
    }
    Ok(images)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_names_come_from_the_catalogue_through_ddl_restarts_and_a_change_it_cannot_name() -> Result<()> {
    let env = TestEnv::new("my_catalogue").await?;
    let dir = std::env::temp_dir().join("evercache-e2e").join(&env.prefix);
    let _ = std::fs::remove_dir_all(&dir);
    let server = MariaDbServer::start_with(&dir, &["--binlog-row-metadata=MINIMAL", "--server-id=2"]);
    let maria = MariaDb::on(&server.url(), &env.prefix).await?;
    maria
        .sql("create table item (id bigint primary key, kind enum('small','large'), qty int unsigned, name text)")
        .await?;
    let runtime = RuntimeToml::new()
        .cache("main", REDIS_URL.as_str())
        .section("sources.events")
        .line(&format!(
            "type = \"mysql\"\nurl = \"{}\"\ntables = [\"{}.item\"]\nserver_id = 77\nsnapshot = \"never\"\n\
             topic_prefix = \"{}\"\nposition_key = \"{}:binlog\"\ndead_letter_url = \"{REDIS_URL}\"",
            server.url(),
            env.prefix,
            env.prefix,
            env.prefix
        ))
        .build();
    let config = env.config(&runtime, &[])?;
    let stream = format!("{0}.{0}.item", env.prefix);

    let forwarding = Forwarding::start(&config).await?;
    maria.sql("insert into item values (1, 'large', 4294967295, 'one')").await?;
    // A column added mid-stream, in the middle: the next rows are named by the new layout.
    maria.sql("alter table item add column price decimal(10,2) default 9.50 after id").await?;
    maria.sql("update item set name = 'uno' where id = 1").await?;
    // A column renamed mid-stream.
    maria.sql("alter table item change name title text").await?;
    maria.sql("update item set title = 'eins' where id = 1").await?;
    let got = images(&stream, &entries(&env, &stream, 3).await?)?;
    assert_eq!(
        got,
        [
            json!({"id": 1, "kind": "large", "qty": 4_294_967_295_u32, "name": "one"}),
            json!({"id": 1, "price": "9.50", "kind": "large", "qty": 4_294_967_295_u32, "name": "uno"}),
            json!({"id": 1, "price": "9.50", "kind": "large", "qty": 4_294_967_295_u32, "title": "eins"}),
        ]
    );
    forwarding.stop().await?;

    // While the capture is down, a row is written and then a column added at
    // the end: on restart the older row is named by the catalogue's first columns.
    maria.sql("insert into item (id, kind, qty, title) values (2, 'small', 7, 'two')").await?;
    maria.sql("alter table item add column note text").await?;
    maria.sql("insert into item values (3, 1.25, 'small', 8, 'three', 'noted')").await?;
    let forwarding = Forwarding::start(&config).await?;
    let got = images(&stream, &entries(&env, &stream, 5).await?)?;
    assert_eq!(
        got[3..],
        [
            json!({"id": 2, "price": "9.50", "kind": "small", "qty": 7, "title": "two"}),
            json!({"id": 3, "price": "1.25", "kind": "small", "qty": 8, "title": "three", "note": "noted"}),
        ]
    );
    forwarding.stop().await?;

    // A column dropped from the middle while the capture is down: the row
    // written before it is named by the schema stored with the position.
    maria.sql("update item set qty = 9 where id = 3").await?;
    maria.sql("alter table item drop column price").await?;
    maria.sql("update item set qty = 10 where id = 3").await?;
    let forwarding = Forwarding::start(&config).await?;
    let got = images(&stream, &entries(&env, &stream, 7).await?)?;
    assert_eq!(
        got[5..],
        [
            json!({"id": 3, "price": "1.25", "kind": "small", "qty": 9, "title": "three", "note": "noted"}),
            json!({"id": 3, "kind": "small", "qty": 10, "title": "three", "note": "noted"}),
        ]
    );
    forwarding.stop().await?;

    // Without a stored schema (as an older evercache stored the position), the
    // catalogue answers for now: a row from before a later change of its
    // table cannot be named by position, and is reported instead of misnamed.
    let mut redis = env.redis.clone();
    let position_key = format!("{}:binlog", env.prefix);
    let mut state: Value =
        serde_json::from_str(&redis::cmd("GET").arg(&position_key).query_async::<String>(&mut redis).await?)?;
    assert!(state["tables"][0]["columns"].is_array(), "the schema is stored with the position: {state}");
    state.as_object_mut().unwrap().remove("tables");
    redis::cmd("SET").arg(&position_key).arg(state.to_string()).query_async::<()>(&mut redis).await?;
    maria.sql("update item set qty = 11 where id = 3").await?;
    maria.sql("alter table item drop column note").await?;
    maria.sql("update item set qty = 12 where id = 3").await?;
    let forwarding = Forwarding::start(&config).await?;
    let reported = entries(&env, &format!("{}.binlog", env.prefix), 1).await?;
    let error = &reported[0].iter().find(|(k, _)| k.contains("error")).expect("an error field").1;
    assert!(error.contains("table map has 5 columns but the catalogue has 4"), "{error}");
    let got = images(&stream, &entries(&env, &stream, 8).await?)?;
    assert_eq!(got[7], json!({"id": 3, "kind": "small", "qty": 12, "title": "three"}));
    forwarding.stop().await?;

    // The same position key with another server behind the URL that is not
    // a replica of this one: the capture tries to follow by GTID, the server
    // has no such position, and the capture halts and says why.
    let elsewhere = runtime.replace(&server.url(), evercache_test_kit::MYSQL_URL);
    let config = env.config(&elsewhere, &[])?;
    let mut capture = config.runtime.sources["events"].build("events").await?;
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(30), capture.next_batch()).await? {
            Err(e) if e.to_string().contains("halted") => break e.to_string(),
            _ => {}
        }
    };
    assert!(refused.contains("cannot send the binlog from the GTID position"), "{refused}");

    redis::cmd("DEL").arg(&stream).arg(format!("{}.binlog", env.prefix)).query_async::<()>(&mut redis).await?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
