//! Hostile plugins against the sandbox: each misbehaviour becomes a plugin error
//! for its batch (retried, then dead-lettered) while the other pipelines keep serving.

use std::time::Duration;

use anyhow::Result;
use evercache::runtime::Runtime;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::http::{get, samples};
use evercache_e2e::{PG_URL, REDIS_URL, RuntimeToml, TestEnv, wait_until};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// (mode, what the dead letter's error must say).
const MODES: &[(&str, &str)] = &[
    ("loop", "`keys` timed out after 300ms"),
    ("sleep", "`keys` timed out after 300ms (call_timeout)"),
    ("pg_sleep", "`recompute` timed out after 300ms (call_timeout) while a host query ran"),
    ("alloc", "`keys` trapped"),
    ("stack", "`keys` trapped"),
    ("panic", "`keys` trapped"),
    ("file", "opening /etc/passwd failed"),
    ("socket", "connecting to 127.0.0.1:6379 failed"),
    ("many_keys", "returned 1000000 keys for one event; the limit is 10000"),
    ("ddl", "only SELECT, WITH, VALUES or TABLE statements may run, not CREATE"),
    ("dml", "read-only transaction (SQLSTATE 25006)"),
    ("terminate", "pg_terminate_backend acts outside the query's read-only transaction"),
    ("cancel", "pg_cancel_backend acts outside the query's read-only transaction"),
    ("advisory", "took session advisory lock 424242"),
];

fn source(env: &TestEnv, name: &str) -> String {
    format!(
        "[sources.{name}]\ntype = \"redis-stream\"\nurl = \"{REDIS_URL}\"\nstreams = [\"{stream}\"]\ngroup = \"evercache\"\nconsumer = \"{prefix}\"\nblock = \"200ms\"\n",
        stream = env.stream(name),
        prefix = env.prefix
    )
}

fn hostile_pipeline(env: &TestEnv, mode: &str) -> String {
    format!(
        r#"source = "{mode}"
database = "db"
cache = "main"
plugin = "hostile"
tables = ["{p}.{mode}"]
max_attempts = 2
retry_backoff = "10ms"
{timeout}

[config]
mode = "{mode}"
schema = "{p}"
key_prefix = "{p}:{mode}"
"#,
        p = env.prefix,
        // Only the endless loop and the sleepers need a short deadline; the rest fail on their own.
        timeout = if matches!(mode, "loop" | "sleep" | "pg_sleep") { "call_timeout = \"300ms\"" } else { "" },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_their_own_batch_and_nothing_else() -> Result<()> {
    let mut env = TestEnv::new("sandbox").await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    env.sql("insert into item values (1, 'kept', 1)").await?;
    let mut runtime = RuntimeToml::new().http(0).database("db", PG_URL).cache("main", REDIS_URL.as_str()).build();
    let mut pipelines = Vec::new();
    for (mode, _) in MODES {
        runtime.push_str(&source(&env, mode));
        pipelines.push((mode.to_string(), hostile_pipeline(&env, mode)));
    }
    runtime.push_str(&source(&env, "item"));
    let healthy = env.testkit_pipeline("").replace("source = \"events\"", "source = \"item\"");
    pipelines.push(("healthy".to_owned(), healthy));
    let refs: Vec<(&str, &str)> = pipelines.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let config = env.config(&runtime, &refs)?;
    let mut runtime = Runtime::build(config).await?;
    let addr = runtime.bind_http().await?.expect("[http] is set");
    let shutdown = CancellationToken::new();
    let mut tasks = runtime.start(shutdown.clone()).await?;

    for (mode, _) in MODES {
        let change = pg_change("c", &env.prefix, mode, None, Some(json!({"id": 7})), next_lsn());
        env.xadd_compact(&env.stream(mode), &pg_key(7), &change.to_string()).await?;
    }
    // The healthy pipeline is served while the hostile ones are still retrying.
    let change = pg_change("c", &env.prefix, "item", None, Some(json!({"id": 1})), next_lsn());
    env.xadd_compact(&env.stream("item"), &pg_key(1), &change.to_string()).await?;
    let key = format!("{}:item:1", env.prefix);
    wait_until("healthy pipeline wrote item 1", WAIT, || {
        let mut redis = env.redis.clone();
        let key = key.clone();
        async move { Ok(redis::cmd("GET").arg(&key).query_async::<Option<String>>(&mut redis).await?.is_some()) }
    })
    .await?;

    for (mode, expected) in MODES {
        let stream = env.stream(mode);
        let dlq = format!("{stream}:dlq");
        wait_until(&format!("{mode} dead-lettered"), WAIT, || {
            let mut redis = env.redis.clone();
            let dlq = dlq.clone();
            async move { Ok(redis::cmd("XLEN").arg(&dlq).query_async::<u64>(&mut redis).await? == 1) }
        })
        .await?;
        let letters = env.dead_letters(&stream).await?;
        let error = &letters[0]["__evercache.error"];
        assert!(error.contains("plugin hostile@"), "{mode}: the error names the plugin: {error}");
        assert!(error.contains(expected), "{mode}: expected `{expected}` in: {error}");
        assert_eq!(letters[0]["__evercache.pipeline"], *mode);
        assert_eq!(letters[0]["__evercache.attempts"], "2", "{mode}: retried once before dead-lettering");
        let (_, page) = get(addr, "/metrics").await?;
        let counted: f64 = samples(&page, "evercache_plugin_errors_total", &[("pipeline", mode)]).iter().sum();
        assert!(counted >= 2.0, "{mode}: both failed attempts are counted in evercache_plugin_errors_total: {counted}");
        wait_until(&format!("{mode} acked"), WAIT, || {
            let mut redis = env.redis.clone();
            let stream = stream.clone();
            async move {
                let pending: Vec<redis::Value> =
                    redis::cmd("XPENDING").arg(&stream).arg("evercache").query_async(&mut redis).await?;
                Ok(matches!(pending.first(), Some(redis::Value::Int(0))))
            }
        })
        .await?;
    }
    let rows: i64 = sqlx::query_scalar(&format!("select count(*) from {}.item", env.prefix)).fetch_one(&env.pg).await?;
    assert_eq!(rows, 1, "the DML plugin deleted nothing");
    let made: Option<String> = sqlx::query_scalar(&format!("select to_regclass('{}.hostile_made')::text", env.prefix))
        .fetch_one(&env.pg)
        .await?;
    assert_eq!(made, None, "the DDL plugin created nothing");
    let locks: i64 = sqlx::query_scalar("select count(*) from pg_locks where locktype = 'advisory' and objid = 424242")
        .fetch_one(&env.pg)
        .await?;
    assert_eq!(locks, 0, "no session advisory lock is left on a pooled connection");
    // The server's statement_timeout is the call's remaining time, so it fires
    // within moments of the host's deadline, not necessarily before the
    // dead letter is written: a query left to run would take an hour.
    wait_until("the query cut off at the call's deadline cancelled on the server", Duration::from_secs(3), || {
        let pg = env.pg.clone();
        async move {
            let sleeping: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where state = 'active' and query like '%pg_sleep(3600)%' and pid <> pg_backend_pid()",
            )
            .fetch_one(&pg)
            .await?;
            Ok(sleeping == 0)
        }
    })
    .await?;
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    Ok(())
}
