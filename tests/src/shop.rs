//! Seed 001's shop against real Debezium for the suites: the test's schema
//! with the shop's tables and seed, the topics its connector writes, a runtime
//! with the example's warm and invalidate pipelines on them, and waits for the
//! warm cache to equal the database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use evercache::config::Config;
use serde_json::Value;

use crate::kafka_connect::{self as connect, BOOTSTRAP};
use crate::{PG_URL, REDIS_URL, RuntimeToml, TestEnv, repo_root, wait_until};

/// How long a test waits for the cache.
pub const WAIT: Duration = Duration::from_secs(90);
/// Products 1..=30 are in categories 1..=3 (renamed), 31..=60 in 4..=6.
pub const PRODUCTS: i64 = 60;

/// The test's schema with the shop's tables and seed, categories 1..=6 and products 1..=60.
pub async fn shop_env(name: &str) -> Result<TestEnv> {
    let env = TestEnv::new(name).await?;
    let read = |file: &str| std::fs::read_to_string(repo_root().join("examples/shop").join(file));
    env.sql(&read("schema.sql")?).await?;
    env.sql(&read("seed.sql")?).await?;
    env.sql(&read("debezium/heartbeat.sql")?).await?;
    env.sql(&format!(
        "insert into category select g, 'Category ' || g from generate_series(3, 6) g;
         insert into product select g, case when g <= 30 then 1 + g % 3 else 4 + g % 3 end,
           'Product ' || g, g + 0.5, g % 7 from generate_series(4, {PRODUCTS}) g;"
    ))
    .await?;
    Ok(env)
}

/// Every topic the connector writes: tables, transaction markers, heartbeats.
pub fn connector_topics(env: &TestEnv) -> [String; 5] {
    let p = &env.prefix;
    let [category, product, beats] = ["category", "product", "debezium_heartbeat"].map(|t| format!("{p}.{p}.{t}"));
    [category, product, format!("{p}.transaction"), format!("__debezium-heartbeat.{p}"), beats]
}

/// Outside the `^<prefix>\.` subscription, so evercache never reads its own dead letters.
pub fn dlq(env: &TestEnv) -> String {
    format!("dlq.{}", env.prefix)
}

pub fn runtime_config(env: &TestEnv) -> Result<Config> {
    let p = &env.prefix;
    let toml = RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .section("sources.dbz")
        .line(&format!("type = \"kafka\"\nbrokers = \"{BOOTSTRAP}\"\ngroup = \"{p}\"\nblock = \"200ms\""))
        .line(&format!("topics = [\"^{p}\\\\..*\", \"__debezium-heartbeat.{p}\"]"))
        .line(&format!("dead_letter_topic = \"{}\"", dlq(env)))
        .line("properties = { \"session.timeout.ms\" = \"10000\", \"metadata.max.age.ms\" = \"1000\" }")
        .build();
    let warm = connect::example_pipeline(env, "products.toml")?;
    let invalidate = connect::example_pipeline(env, "product-pages.toml")?;
    env.config(&toml, &[("products", &warm), ("product-pages", &invalidate)])
}

/// Each product as the plugin computes it from the database.
pub async fn products_in_db(env: &TestEnv) -> Result<BTreeMap<i64, Value>> {
    let rows: Vec<(i64, Value)> = sqlx::query_as(&format!(
        "select p.id, json_build_object('name', p.name, 'category', c.name, 'price', p.price::text, 'stock', p.stock::text)
         from {p}.product p join {p}.category c on c.id = p.category_id",
        p = env.prefix
    ))
    .fetch_all(&env.pg)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Every id whose `<prefix>:<kind>:<id>` key exists, with the key's hash (or null for a string).
pub async fn cached(env: &TestEnv, kind: &str) -> Result<BTreeMap<i64, Value>> {
    let mut redis = env.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:{kind}:*", env.prefix)).query_async(&mut redis).await?;
    let mut found = BTreeMap::new();
    for key in keys {
        let id = key.rsplit(':').next().and_then(|id| id.parse().ok()).context("an id")?;
        let value = if kind == "product" { env.clone_redis_hash(&key).await? } else { Value::Null };
        found.insert(id, value);
    }
    Ok(found)
}

/// Waits until every warm key equals the database (and no other exists).
pub async fn warm_converged(env: &TestEnv) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (db, cache) = (products_in_db(env).await?, cached(env, "product").await?);
        if db == cache {
            return Ok(start.elapsed());
        }
        if start.elapsed() > WAIT {
            let wrong: Vec<_> = db.keys().chain(cache.keys()).filter(|id| db.get(id) != cache.get(id)).collect();
            bail!("warm cache differs from the database for ids {wrong:?} after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `group` committed every topic up to where it ends now.
pub async fn all_committed(env: &TestEnv, topics: &[String]) -> Result<()> {
    for topic in topics {
        let end = connect::end_offset(topic)?;
        wait_until(&format!("{topic} committed up to {end}"), WAIT, || async {
            Ok(connect::committed(&env.prefix, topic)? >= end)
        })
        .await?;
    }
    Ok(())
}
