//! The example plugins end to end: marketplace's "who is online now" listing
//! and the shop's category fan-out.

use std::time::Duration;

use anyhow::Result;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::{Running, TestEnv, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn pipeline(env: &TestEnv, plugin: &str, tables: &[&str], prefix: &str) -> String {
    let tables: Vec<String> = tables.iter().map(|t| format!("{}.{t}", env.prefix)).collect();
    format!(
        r#"source = "events"
database = "db"
cache = "main"
plugin = "{plugin}"
tables = {tables}

[config]
schema = "{schema}"
key_prefix = "{prefix}"
"#,
        tables = serde_json::to_string(&tables).unwrap_or_default(),
        schema = env.prefix,
    )
}

async fn wait_for<F>(env: &TestEnv, what: &str, key: &str, hash: bool, accept: F) -> Result<()>
where
    F: Fn(&Value) -> bool,
{
    wait_until(what, WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.to_owned();
        let value = async move {
            if hash {
                let map: std::collections::BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query_async(&mut redis).await?;
                Ok::<_, anyhow::Error>(if map.is_empty() { Value::Null } else { json!(map) })
            } else {
                let text: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
                Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null))
            }
        };
        async { Ok(accept(&value.await?)) }
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketplace_session_start_and_end_change_the_specialist_status() -> Result<()> {
    let mut env = TestEnv::new("marketplace").await?;
    let schema = std::fs::read_to_string(evercache_e2e::repo_root().join("examples/marketplace/schema.sql"))?;
    env.sql(&schema).await?;
    let streams = vec![env.stream("specialist"), env.stream("session")];
    let prefix = format!("{}:specialist", env.prefix);
    let config = env.config(
        &env.runtime_toml(&streams, ""),
        &[("specialists", &pipeline(&env, "specialist_status", &["specialist", "session"], &prefix))],
    )?;
    let running = Running::start(config).await?;
    let key = format!("{prefix}:1");

    env.sql("insert into specialist (id, name, online) values (1, 'Ada', true)").await?;
    let row = json!({"id": 1, "name": "Ada", "online": true});
    let change = pg_change("c", &env.prefix, "specialist", None, Some(row), next_lsn());
    env.xadd_compact(&streams[0], &pg_key(1), &change.to_string()).await?;
    wait_for(&env, "Ada online", &key, false, |v| v["status"] == "online" && v["active_sessions"] == 0).await?;

    env.sql("insert into session (id, specialist_id) values (100, 1)").await?;
    let session = json!({"id": 100, "specialist_id": 1, "started_at": "2026-11-25T10:00:00Z", "ended_at": null});
    let change = pg_change("c", &env.prefix, "session", None, Some(session), next_lsn());
    env.xadd_compact(&streams[1], &pg_key(100), &change.to_string()).await?;
    wait_for(&env, "Ada busy", &key, false, |v| {
        v["status"] == "busy" && v["active_sessions"] == 1 && v["name"] == "Ada"
    })
    .await?;

    env.sql("update session set ended_at = now() where id = 100").await?;
    let ended = json!({"id": 100, "specialist_id": 1, "started_at": "2026-11-25T10:00:00Z", "ended_at": "2026-11-25T10:30:00Z"});
    let change = pg_change("u", &env.prefix, "session", None, Some(ended), next_lsn());
    env.xadd_compact(&streams[1], &pg_key(100), &change.to_string()).await?;
    wait_for(&env, "Ada online again", &key, false, |v| v["status"] == "online" && v["active_sessions"] == 0).await?;

    env.sql("delete from session; delete from specialist where id = 1").await?;
    let change = pg_change("d", &env.prefix, "specialist", Some(json!({"id": 1})), None, next_lsn());
    env.xadd_compact(&streams[0], &pg_key(1), &change.to_string()).await?;
    wait_for(&env, "Ada gone", &key, false, Value::is_null).await?;
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_category_rename_fans_out_to_every_product() -> Result<()> {
    let mut env = TestEnv::new("shop").await?;
    let schema = std::fs::read_to_string(evercache_e2e::repo_root().join("examples/shop/schema.sql"))?;
    env.sql(&schema).await?;
    let streams = vec![env.stream("category"), env.stream("product")];
    let prefix = format!("{}:product", env.prefix);
    let config = env.config(
        &env.runtime_toml(&streams, ""),
        &[("products", &pipeline(&env, "shop_product", &["category", "product"], &prefix))],
    )?;
    env.sql(
        "insert into category (id, name) values (1, 'Books'), (2, 'Games');
         insert into product (id, category_id, name, price, stock) values
           (1, 1, 'Dune', 9.99, 3), (2, 1, 'Emma', 5.50, 0), (3, 1, 'Ulysses', 12.00, 7), (4, 2, 'Go', 30.00, 1);",
    )
    .await?;
    for id in 1..=4 {
        let change = pg_change("r", &env.prefix, "product", None, Some(json!({"id": id})), next_lsn());
        env.xadd_compact(&streams[1], &pg_key(id), &change.to_string()).await?;
    }
    let running = Running::start(config).await?;
    wait_for(&env, "product 1 cached", &format!("{prefix}:1"), true, |v| {
        v == &json!({"name": "Dune", "category": "Books", "price": "9.99", "stock": "3"})
    })
    .await?;

    env.sql("update category set name = 'Novels' where id = 1").await?;
    let rename = pg_change("u", &env.prefix, "category", None, Some(json!({"id": 1, "name": "Novels"})), next_lsn());
    env.xadd_compact(&streams[0], &pg_key(1), &rename.to_string()).await?;
    for id in 1..=3 {
        wait_for(&env, &format!("product {id} in Novels"), &format!("{prefix}:{id}"), true, |v| {
            v["category"] == "Novels"
        })
        .await?;
    }
    let untouched = env.hgetall(&format!("{prefix}:4")).await?;
    assert_eq!(untouched["category"], "Games", "other categories are not touched");
    assert_eq!(env.hgetall(&format!("{prefix}:2")).await?["price"], "5.50", "numeric keeps its scale");
    running.stop().await
}
