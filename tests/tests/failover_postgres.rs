//! The built-in Postgres capture follows a primary failover. A private
//! primary streams to a standby through a proxy; the capture, the pipeline's
//! queries and a writer reach the primary through another proxy, as through
//! a virtual IP. Replication is cut, the primary commits transactions the
//! standby never receives (lost with it, at LSNs past what the new primary
//! writes next), the primary is SIGKILLed, the standby promoted and the proxy
//! switched to it while the writer goes on. The capture finds no slot there,
//! creates it again, re-reads the tables although `snapshot = "never"`, and
//! every key ends equal to the new primary. A slot dropped by hand on the same
//! server, while running or while stopped, is followed the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use evercache_e2e::http::{get, sample};
use evercache_e2e::{PG_URL, REDIS_URL, Running, RuntimeToml, TestEnv, wait_json, wait_until};
use evercache_test_kit::pg_cluster::PgCluster;
use evercache_test_kit::tcp_proxy::TcpProxy;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::{JoinHandle, block_in_place};

const WAIT: Duration = Duration::from_secs(90);
/// Rows the writer updates: 1..=ROWS, past the ones below.
const ROWS: i64 = 300;
/// Rows 1..=LOST only the lost transactions change before the failover.
const LOST: i64 = 10;
/// Rows past ROWS that nobody changes: cached only by a re-read.
const UNTOUCHED: i64 = 20;

/// The runtime with capture source `source` on `url` (slot and publication
/// `<prefix>`, no initial snapshot) and the testkit plugin over `<prefix>.item`.
async fn start(env: &TestEnv, url: &str, source: &str) -> Result<(Running, std::net::SocketAddr)> {
    let p = &env.prefix;
    let runtime = RuntimeToml::new()
        .database("db", url)
        .cache("main", REDIS_URL.as_str())
        .postgres_capture(source, url, &[format!("{p}.item")], p, REDIS_URL.as_str())
        .line(&format!("snapshot = \"never\"\ntopic_prefix = \"{p}\""))
        .http(0)
        .line("probe_interval = \"100ms\"\nstuck_after = \"2s\"")
        .build();
    let pipeline = format!(
        "source = \"{source}\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{p}.item\"]\n\n\
         [config]\nschema = \"{p}\"\ntable = \"item\"\nkey_prefix = \"{p}:item\"\n"
    );
    let config = env.config(&runtime, &[("items", &pipeline)])?;
    let running = Running::start(config).await?;
    let addr = running.http.context("no [http] listener")?;
    Ok((running, addr))
}

async fn failovers(addr: std::net::SocketAddr, source: &str) -> Result<f64> {
    let (_, page) = get(addr, "/metrics").await?;
    Ok(sample(&page, "evercache_capture_failovers_total", &[("source", source)]).unwrap_or(0.0))
}

/// Keys of `<prefix>.item` whose cached value differs from the row in `pg`.
async fn mismatches(env: &TestEnv, pg: &PgPool) -> Result<Vec<String>> {
    let p = &env.prefix;
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as(&format!("select id, name, version from {p}.item order by id")).fetch_all(pg).await?;
    let keys: Vec<String> = rows.iter().map(|(id, ..)| format!("{p}:item:{id}")).collect();
    let mut redis = env.redis.clone();
    let cached: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?;
    Ok(rows
        .iter()
        .zip(cached)
        .filter(|((id, name, version), cached)| {
            let cached = cached.as_deref().and_then(|text| serde_json::from_str::<Value>(text).ok());
            cached != Some(json!({"id": id, "name": name, "version": version}))
        })
        .map(|((id, ..), _)| format!("{p}:item:{id}"))
        .collect())
}

async fn meta(env: &TestEnv, id: i64) -> Result<Value> {
    env.clone_redis_hash(&format!("{{{}:item:{id}}}:meta", env.prefix)).await
}

async fn lsn(pg: &PgPool, sql: &str) -> Result<u64> {
    let text: String = sqlx::query_scalar(sql).fetch_one(pg).await?;
    evercache::event::position::parse_pg_lsn(&text).context("an LSN")
}

/// Updates rows 1..=ROWS past LOST on `url` about 150 times a second,
/// going on through the failover (a failed update is retried after a pause).
struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Writer {
    fn spawn(url: &str, schema: &str) -> Result<Self> {
        let pool = PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(1)).connect_lazy(url)?;
        let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let update = format!("update {schema}.item set version = version + 1, name = 'w' || version where id = $1");
        let task = tokio::spawn({
            let (stop, commits) = (stop.clone(), commits.clone());
            async move {
                let mut i = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let id = LOST + 1 + (i * 7919) % (ROWS - LOST);
                    match sqlx::query(&update).bind(id).execute(&pool).await {
                        Ok(_) => {
                            commits.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        Ok(Self { stop, commits, task })
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    async fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?;
        Ok(self.commits.load(Ordering::SeqCst))
    }
}

/// Collects the reasons `/ready` gives that contain `needle`, while it runs.
/// The re-read may take less than one readiness round, so what it saw is
/// reported, not asserted.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<String>>,
}

impl ReadyWatch {
    fn start(addr: std::net::SocketAddr, needle: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((_, body)) = get(addr, "/ready").await
                        && let Ok(ready) = serde_json::from_str::<Value>(&body)
                    {
                        let reasons = ready["reasons"].as_array().cloned().unwrap_or_default();
                        for reason in reasons.iter().filter_map(Value::as_str).filter(|r| r.contains(needle)) {
                            if !seen.iter().any(|s| s == reason) {
                                seen.push(reason.to_owned());
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> Result<Vec<String>> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_follows_a_promoted_standby_and_lost_transactions_do_not_freeze_keys() -> Result<()> {
    let mut env = TestEnv::new("failover_pg").await?;
    let p = env.prefix.clone();
    let source = "failover";
    let primary = block_in_place(|| PgCluster::start(&env.dir.join("primary")));
    let old = PgPool::connect(&primary.url()).await?;
    sqlx::raw_sql(&format!(
        "create schema {p}; create table {p}.item (id bigint primary key, name text, version bigint);
         insert into {p}.item select g, 'row', 1 from generate_series(1, {}) g;
         create table {p}.filler (id bigint, pad text);",
        ROWS + UNTOUCHED
    ))
    .execute(&old)
    .await?;
    let replication = TcpProxy::start(primary.port).await;
    let standby = block_in_place(|| primary.standby(&env.dir.join("standby"), replication.port));
    let streaming =
        "select count(*) from pg_stat_replication where application_name = 'standby' and state = 'streaming'";
    wait_until("the standby streams", WAIT, || async {
        Ok(sqlx::query_scalar::<_, i64>(streaming).fetch_one(&old).await? == 1)
    })
    .await?;

    let app = TcpProxy::start(primary.port).await;
    let url = app.url(&primary.url());
    let (running, addr) = start(&env, &url, source).await?;
    let writer = Writer::spawn(&url, &p)?;
    wait_until("changes of timeline 1 are cached", WAIT, || async {
        Ok(meta(&env, LOST + 1).await?["pos"].as_str().is_some_and(|pos| pos.starts_with("pg:t00000001:")))
    })
    .await?;

    // Replication is cut: what the primary commits from now on is lost with it.
    replication.switch_to(evercache_test_kit::free_port());
    wait_until("the standby stopped receiving", WAIT, || async {
        let standbys = "select count(*) from pg_stat_replication where application_name = 'standby'";
        Ok(sqlx::query_scalar::<_, i64>(standbys).fetch_one(&old).await? == 0)
    })
    .await?;
    let new = PgPool::connect(&standby.url()).await?;
    let received = lsn(&new, "select pg_last_wal_receive_lsn()::text").await?;
    // WAL enough that the lost changes' LSNs stay above what the new primary writes during the test.
    sqlx::query(&format!("insert into {p}.filler select g, repeat('x', 1000) from generate_series(1, 10000) g"))
        .execute(&old)
        .await?;
    for id in 1..=LOST {
        sqlx::query(&format!("update {p}.item set name = 'lost', version = version + 1000 where id = $1"))
            .bind(id)
            .execute(&old)
            .await?;
    }
    let lost_at = lsn(&old, "select pg_current_wal_lsn()::text").await?;
    for id in 1..=LOST {
        wait_json(
            &env.redis,
            &format!("{p}:item:{id}"),
            Some(json!({"id": id, "name": "lost", "version": 1001})),
            WAIT,
        )
        .await?;
    }
    let lost_pos = meta(&env, 1).await?["pos"].as_str().unwrap_or_default().to_owned();
    ensure!(lost_at > received, "the lost commits ({lost_at:x}) are past what the standby received ({received:x})");
    let untouched = format!("{p}:item:{}", ROWS + 1);
    ensure!(env.get(&untouched).await?.is_none(), "no initial snapshot: rows nobody changed are not cached yet");

    // The failover: the primary crashes, the standby is promoted, the address moves to it.
    let said = ReadyWatch::start(addr, "following a failover");
    let before = writer.commits();
    block_in_place(|| primary.kill());
    let failover = Instant::now();
    block_in_place(|| standby.promote());
    app.switch_to(standby.port);
    let timeline: String =
        sqlx::query_scalar("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetch_one(&new).await?;
    ensure!(timeline == "00000002", "the promoted standby is on timeline 2: {timeline}");
    let lost_rows: i64 =
        sqlx::query_scalar(&format!("select count(*) from {p}.item where name = 'lost'")).fetch_one(&new).await?;
    ensure!(lost_rows == 0, "the lost transactions are not on the new primary");

    wait_until("the capture followed the failover", WAIT, || async { Ok(failovers(addr, source).await? == 1.0) })
        .await?;
    let followed = failover.elapsed();
    wait_until("changes of timeline 2 are cached", WAIT, || async {
        let pos = meta(&env, LOST + 1).await?["pos"].as_str().unwrap_or_default().to_owned();
        Ok(pos.starts_with("pg:t00000002:"))
    })
    .await?;
    // Rows the lost transactions changed change again here, at LSNs below theirs.
    for id in 1..=LOST / 2 {
        sqlx::query(&format!("update {p}.item set name = 'after' where id = $1")).bind(id).execute(&new).await?;
    }
    let after_at = lsn(&new, "select pg_current_wal_lsn()::text").await?;
    ensure!(after_at < lost_at, "the new primary's changes ({after_at:x}) rank below the lost ones by LSN alone");
    wait_until("the writer commits on the new primary", WAIT, || async { Ok(writer.commits() >= before + 300) })
        .await?;
    let commits = writer.stop().await?;

    let converged =
        wait_until("every key equals the new primary", WAIT, || async { Ok(mismatches(&env, &new).await?.is_empty()) })
            .await?;
    let ready = wait_until("/ready is true again", WAIT, || async { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
    ensure!(failovers(addr, source).await? == 1.0, "one failover followed");
    let repaired = meta(&env, LOST).await?;
    ensure!(repaired["snap"].as_str().is_some_and(|s| s.starts_with("pg:t00000002:")), "re-read: {repaired}");
    let changed = meta(&env, 1).await?;
    let changed_pos = changed["pos"].as_str().unwrap_or_default();
    ensure!(changed_pos.starts_with("pg:t00000002:") && changed_pos > lost_pos.as_str(), "{changed} vs {lost_pos}");
    let said = said.stop().await?;
    println!(
        "failover: the writer committed {commits} updates, {} after the primary was killed; {LOST} rows were \
         changed only by transactions lost with it (up to LSN {lost_at:x}; the standby had {received:x}); the \
         capture followed {followed:.1?} after the kill, every key equalled the new primary {converged:.1?} after \
         the writer stopped and /ready was true {ready:.1?} after that; /ready said meanwhile: {said:?}",
        commits - before
    );
    running.stop().await?;
    env.clear_redis().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_by_hand_is_created_again_and_what_it_missed_is_re_read() -> Result<()> {
    let mut env = TestEnv::new("failover_pg_drop").await?;
    env.drop_capture().await?;
    env.sql(&format!(
        "create table item (id bigint primary key, name text, version bigint);
         insert into item select g, 'row', 1 from generate_series(1, {ROWS}) g"
    ))
    .await?;
    let p = env.prefix.clone();
    let source = "dropped";
    let key = |id: i64| format!("{p}:item:{id}");
    let row = |id: i64, name: &str, version: i64| Some(json!({"id": id, "name": name, "version": version}));
    let drop_slot = || async {
        wait_until("the slot is dropped", WAIT, || async {
            let _ =
                sqlx::query("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1")
                    .bind(&p)
                    .execute(&env.pg)
                    .await;
            Ok(sqlx::query("select pg_drop_replication_slot($1)").bind(&p).execute(&env.pg).await.is_ok())
        })
        .await
    };

    let (running, addr) = start(&env, PG_URL, source).await?;
    env.sql("update item set name = 'one', version = 2 where id = 1").await?;
    wait_json(&env.redis, &key(1), row(1, "one", 2), WAIT).await?;
    // Dropped while running: created again on the next connection, and every row re-read.
    drop_slot().await?;
    env.sql("update item set name = 'two', version = 2 where id = 2").await?;
    wait_until("the capture followed", WAIT, || async { Ok(failovers(addr, source).await? == 1.0) }).await?;
    wait_until("every key equals the database", WAIT, || async { Ok(mismatches(&env, &env.pg).await?.is_empty()) })
        .await?;
    wait_until("/ready is true again", WAIT, || async { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
    running.stop().await?;

    // Dropped while stopped: the start finds it missing where the capture ran before.
    drop_slot().await?;
    env.sql("update item set name = 'three', version = 2 where id = 3").await?;
    let (running, addr) = start(&env, PG_URL, source).await?;
    wait_json(&env.redis, &key(3), row(3, "three", 2), WAIT).await?;
    ensure!(failovers(addr, source).await? == 2.0, "followed at the start too");
    env.sql("update item set name = 'four', version = 2 where id = 4").await?;
    wait_json(&env.redis, &key(4), row(4, "four", 2), WAIT).await?;
    ensure!(mismatches(&env, &env.pg).await?.is_empty(), "every key equals the database");
    running.stop().await?;
    env.drop_capture().await?;
    env.clear_redis().await?;
    Ok(())
}
