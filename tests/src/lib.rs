//! Test harness for the end-to-end suites: real Redis and Postgres, the real
//! runtime in-process, one key/stream prefix and one Postgres schema per test.

use std::path::{Path, PathBuf};

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use evercache::config::Config;
use evercache::runtime::Runtime;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod conformance;
pub mod debezium;
pub mod debezium_server;
pub mod held_commit;
pub mod http;
pub mod kafka;
pub mod kafka_connect;
pub mod mariadb;
pub mod mariadb_failover;
pub mod shop;

use evercache_test_kit::SETUP_HINT;
pub use evercache_test_kit::{MYSQL_URL, PG_URL, REDIS_URL, RuntimeToml, plugins_dir, repo_root, wait_until};

/// Installs a log subscriber once, honouring RUST_LOG.
pub fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// One test's private corner of the shared services.
pub struct TestEnv {
    /// Unique per test and process; used as Redis key/stream prefix and Postgres schema.
    pub prefix: String,
    /// Redis connection for assertions.
    pub redis: MultiplexedConnection,
    /// Postgres pool for the test's own writes.
    pub pg: PgPool,
    /// Scratch directory for config files.
    pub dir: PathBuf,
}

impl TestEnv {
    /// Connects to Redis and Postgres and creates schema `<prefix>`.
    pub async fn new(name: &str) -> Result<Self> {
        init_logging();
        let prefix = format!("t{}_{}", std::process::id(), name);
        let client = redis::Client::open(REDIS_URL.as_str())?;
        let redis = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("Redis at {REDIS_URL} is not reachable; {SETUP_HINT}"))?;
        let pg = PgPool::connect(PG_URL)
            .await
            .with_context(|| format!("Postgres at {PG_URL} is not reachable; {SETUP_HINT}"))?;
        drop_abandoned_slots(&pg).await?;
        sqlx::query(&format!("drop schema if exists {prefix} cascade")).execute(&pg).await?;
        sqlx::query(&format!("create schema {prefix}")).execute(&pg).await?;
        let dir = std::env::temp_dir().join("evercache-tests").join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pipelines"))?;
        let mut env = Self { prefix, redis, pg, dir };
        env.clear_redis().await?;
        Ok(env)
    }

    /// A test environment whose schema has `item(id, name, version)` with rows
    /// 1..=`rows`, each `'row'` at version 1.
    pub async fn with_items(name: &str, rows: i64) -> Result<Self> {
        let env = Self::new(name).await?;
        env.sql(&format!(
            "create table item (id bigint primary key, name text, version bigint);
             insert into item select g, 'row', 1 from generate_series(1, {rows}) g"
        ))
        .await?;
        Ok(env)
    }

    /// Runs SQL statements in the test's schema.
    pub async fn sql(&self, statements: &str) -> Result<()> {
        let mut conn = self.pg.acquire().await?;
        sqlx::raw_sql(&format!("set search_path to {}; {statements}", self.prefix))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("running SQL: {statements}"))?;
        sqlx::raw_sql("reset search_path").execute(&mut *conn).await?;
        Ok(())
    }

    /// Drops the test's replication slot and publication (both named `<prefix>`),
    /// waiting for the server to release the slot after its client disconnected.
    pub async fn drop_capture(&self) -> Result<()> {
        let slot = self.prefix.clone();
        wait_until("replication slot released and dropped", Duration::from_secs(20), || {
            let (pg, slot) = (self.pg.clone(), slot.clone());
            async move {
                sqlx::query(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
                )
                .bind(&slot)
                .execute(&pg)
                .await?;
                let left: i64 = sqlx::query_scalar("select count(*) from pg_replication_slots where slot_name = $1")
                    .bind(&slot)
                    .fetch_one(&pg)
                    .await?;
                Ok(left == 0)
            }
        })
        .await?;
        sqlx::query(&format!("drop publication if exists {slot}")).execute(&self.pg).await?;
        Ok(())
    }

    /// Name of a stream owned by this test.
    pub fn stream(&self, table: &str) -> String {
        format!("{}.{}.{}", self.prefix, self.prefix, table)
    }

    /// Deletes every Redis key of this test.
    pub async fn clear_redis(&mut self) -> Result<()> {
        // Delimited, so test "a" never clears test "a_b"'s keys.
        let mut keys: Vec<String> = Vec::new();
        for pattern in [format!("*{}[.:}}]*", self.prefix), format!("*{}", self.prefix)] {
            let found: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut self.redis).await?;
            keys.extend(found);
        }
        if !keys.is_empty() {
            redis::cmd("DEL").arg(keys).query_async::<()>(&mut self.redis).await?;
        }
        Ok(())
    }

    /// Writes the runtime file and pipeline files, then loads them like `evercache run` does.
    pub fn config(&self, runtime_toml: &str, pipelines: &[(&str, &str)]) -> Result<Config> {
        let path = self.dir.join("evercache.toml");
        std::fs::write(&path, runtime_toml)?;
        for (name, text) in pipelines {
            std::fs::write(self.dir.join("pipelines").join(format!("{name}.toml")), text)?;
        }
        Ok(Config::load(&path)?)
    }

    /// A runtime file with one database, one cache and one stream source named
    /// "events" over `streams`.
    pub fn runtime_toml(&self, streams: &[String], extra: &str) -> String {
        RuntimeToml::new()
            .database("db", PG_URL)
            .cache("main", REDIS_URL.as_str())
            .redis_stream("events", REDIS_URL.as_str(), streams, &self.prefix)
            .line(extra)
            .build()
    }

    /// A pipeline file for the testkit plugin over `<prefix>.item`.
    pub fn testkit_pipeline(&self, extra_config: &str) -> String {
        format!(
            r#"source = "events"
database = "db"
cache = "main"
plugin = "testkit"
tables = ["{p}.item"]
max_attempts = 2
retry_backoff = "10ms"

[config]
schema = "{p}"
table = "item"
key_prefix = "{p}:item"
{extra_config}"#,
            p = self.prefix
        )
    }

    /// `XADD` in Debezium Server's compact layout: field = key JSON, value = value JSON.
    pub async fn xadd_compact(&mut self, stream: &str, key: &str, value: &str) -> Result<String> {
        Ok(redis::cmd("XADD").arg(stream).arg("*").arg(key).arg(value).query_async(&mut self.redis).await?)
    }

    /// `XADD` in Debezium Server's extended layout: `key`, `value`, then headers.
    pub async fn xadd_extended(&mut self, stream: &str, key: &str, value: &str) -> Result<String> {
        Ok(redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("key")
            .arg(key)
            .arg("value")
            .arg(value)
            .arg("__DEBEZIUM.CONTEXT.TASKID")
            .arg("0")
            .query_async(&mut self.redis)
            .await?)
    }

    /// Entries delivered to the group but not acknowledged.
    pub async fn pending(&mut self, stream: &str) -> Result<u64> {
        let reply: Vec<redis::Value> =
            redis::cmd("XPENDING").arg(stream).arg("evercache").query_async(&mut self.redis).await?;
        Ok(match reply.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        })
    }

    /// Entries the group has not been delivered yet (`lag`), or None when unknown.
    pub async fn undelivered(&mut self, stream: &str) -> Result<Option<u64>> {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut self.redis).await?;
        Ok(groups.iter().find_map(|g| match g.get("lag") {
            Some(redis::Value::Int(n)) => Some(*n as u64),
            _ => None,
        }))
    }

    /// The entries of a dead-letter stream as field maps.
    pub async fn dead_letters(&mut self, stream: &str) -> Result<Vec<std::collections::HashMap<String, String>>> {
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(format!("{stream}:dlq")).arg("-").arg("+").query_async(&mut self.redis).await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                entry
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                    .collect()
            })
            .collect())
    }

    /// GET a string key.
    pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
        Ok(redis::cmd("GET").arg(key).query_async(&mut self.redis).await?)
    }

    /// GET a JSON key, parsed.
    pub async fn get_json(&mut self, key: &str) -> Result<Option<Value>> {
        Ok(match self.get(key).await? {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        })
    }

    /// HGETALL through a cloned connection, for tests holding `&TestEnv`.
    pub async fn clone_redis_hash(&self, key: &str) -> Result<Value> {
        let mut redis = self.redis.clone();
        let map: std::collections::BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(key).query_async(&mut redis).await?;
        Ok(json!(map))
    }

    /// HGETALL of a key as a JSON object (handy for comparing).
    pub async fn hgetall(&mut self, key: &str) -> Result<Value> {
        let map: std::collections::BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(key).query_async(&mut self.redis).await?;
        Ok(json!(map))
    }
}

/// Drops replication slots and publications left by test processes that died
/// (a slot keeps WAL forever); ones whose process still runs are left alone.
pub async fn drop_abandoned_slots(pg: &PgPool) -> Result<()> {
    let slots: Vec<String> =
        sqlx::query_scalar("select slot_name::text from pg_replication_slots where not active").fetch_all(pg).await?;
    for slot in slots {
        let pid = slot
            .strip_prefix('t')
            .or_else(|| slot.strip_prefix("crash_"))
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
            .filter(|pid| !pid.is_empty());
        let Some(pid) = pid else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Best effort: parallel tests may be dropping the same leftovers.
        let _ = sqlx::query(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
        )
        .bind(&slot)
        .execute(pg)
        .await;
        let _ = sqlx::query(&format!("drop publication if exists {slot}")).execute(pg).await;
    }
    Ok(())
}

/// Waits until `key` holds JSON equal to `expected` (`None`: no key), for up to `timeout`.
pub async fn wait_json(
    redis: &MultiplexedConnection,
    key: &str,
    expected: Option<Value>,
    timeout: Duration,
) -> Result<()> {
    wait_until(&format!("{key} == {expected:?}"), timeout, || {
        let mut redis = redis.clone();
        let key = key.to_owned();
        let expected = expected.clone();
        async move {
            let text: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            Ok(text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) == expected)
        }
    })
    .await
    .map(drop)
}

/// A runtime running in-process until [`Running::stop`].
pub struct Running {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// The `[http]` listener's address, when the config has one.
    pub http: Option<std::net::SocketAddr>,
}

impl Running {
    /// Builds the runtime (loads plugins, inits pipelines), connects its
    /// sources (consumer groups exist when this returns) and starts it.
    pub async fn start(config: Config) -> Result<Self> {
        let mut runtime = Runtime::build(config).await?;
        let http = runtime.bind_http().await?;
        let shutdown = CancellationToken::new();
        let tasks = runtime.start(shutdown.clone()).await?;
        Ok(Self { shutdown, tasks, http })
    }

    /// Requests shutdown and waits for the drain.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(joined) = self.tasks.join_next().await {
                joined?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await??;
        Ok(())
    }
}
