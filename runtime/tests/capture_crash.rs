//! No loss, no gap: the runtime is killed with SIGKILL repeatedly while a writer
//! commits a burst of single-row updates; after restarts every key equals the
//! database, because the slot is confirmed only after the cache writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use evercache_test_kit::{PG_URL, REDIS_URL, RuntimeToml};

const ROWS: i64 = 200;
const UPDATES: usize = 6_000;

fn write_config(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-cli-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let runtime = RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .postgres_capture("capture", PG_URL, &[format!("{name}.item")], name, REDIS_URL.as_str())
        .build();
    std::fs::write(dir.join("evercache.toml"), runtime).unwrap();
    let pipeline = format!(
        "source = \"capture\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{name}.item\"]\n[config]\nschema = \"{name}\"\nkey_prefix = \"{name}:item\"\n"
    );
    std::fs::write(dir.join("pipelines/items.toml"), pipeline).unwrap();
    dir.join("evercache.toml")
}

/// The runtime process; killed when dropped, so a failing test leaves none behind.
struct Runtime(Child);

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &Path) -> Runtime {
    Runtime(
        Command::new(env!("CARGO_BIN_EXE_evercache"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn cleanup(pg: &PgPool, name: &str) {
    // The server releases the slot a moment after the runtime exits.
    for _ in 0..100 {
        let _ = sqlx::query(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
        )
        .bind(name)
        .execute(pg)
        .await;
        let left: i64 = sqlx::query_scalar("select count(*) from pg_replication_slots where slot_name = $1")
            .bind(name)
            .fetch_one(pg)
            .await
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = sqlx::query(&format!("drop publication if exists {name}")).execute(pg).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(pg).await;
}

async fn server_clock(pg: &PgPool) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("select clock_timestamp()").fetch_one(pg).await.unwrap()
}

/// Waits until the slot is streaming to a connection opened after `since`,
/// which the runtime opens only once it is up.
async fn wait_streaming(pg: &PgPool, slot: &str, since: chrono::DateTime<chrono::Utc>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_replication_slots s join pg_stat_activity a on a.pid = s.active_pid
             where s.slot_name = $1 and a.backend_start > $2)",
        )
        .bind(slot)
        .bind(since)
        .fetch_one(pg)
        .await
        .unwrap();
        if streaming {
            return;
        }
        assert!(Instant::now() < deadline, "the last runtime never started streaming from slot {slot}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_loses_nothing() {
    let name = format!("crash_{}", std::process::id());
    let pg = PgPool::connect(PG_URL).await.expect("Postgres; run: bash scripts/dev-services.sh");
    cleanup(&pg, &name).await;
    sqlx::raw_sql(&format!(
        "create schema {name}; create table {name}.item (id bigint primary key, name text, version bigint);
         insert into {name}.item select g, 'row', 0 from generate_series(1, {ROWS}) g;"
    ))
    .execute(&pg)
    .await
    .unwrap();
    let config = write_config(&name);
    let mut child = start(&config);

    let writer = {
        let pg = pg.clone();
        let name = name.clone();
        tokio::spawn(async move {
            for i in 0..UPDATES {
                let id = (i as i64 * 7919) % ROWS + 1;
                sqlx::query(&format!("update {name}.item set version = version + 1, name = $2 where id = $1"))
                    .bind(id)
                    .bind(format!("w{i}"))
                    .execute(&pg)
                    .await
                    .unwrap();
            }
            // Each row's last change is spread over the kills: a lost final event
            // would not be healed by a later one.
            for id in 1..=ROWS {
                sqlx::query(&format!("update {name}.item set version = version + 1, name = 'final' where id = $1"))
                    .bind(id)
                    .execute(&pg)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        })
    };
    let mut kills = 0;
    let mut last_start = server_clock(&pg).await;
    let started = Instant::now();
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(250 + (kills * 137) % 300)).await;
        if writer.is_finished() {
            break;
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        kills += 1;
        last_start = server_clock(&pg).await;
        child = start(&config);
    }
    writer.await.unwrap();
    assert!(kills >= 5, "the burst outlived only {kills} kills; make it longer");

    let redis = redis::Client::open(REDIS_URL.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(i64, String, i64)> =
            sqlx::query_as(&format!("select id, name, version from {name}.item order by id"))
                .fetch_all(&pg)
                .await
                .unwrap();
        let keys: Vec<String> = rows.iter().map(|(id, _, _)| format!("{name}:item:{id}")).collect();
        let cached: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.unwrap();
        let stale = rows
            .iter()
            .zip(&cached)
            .filter(|((id, n, v), c)| {
                let expected = serde_json::json!({"id": id, "name": n, "version": v});
                c.as_deref().and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok()) != Some(expected)
            })
            .count();
        if stale == 0 {
            println!(
                "capture crash test: {UPDATES} updates over {ROWS} rows, {kills} SIGKILLs, converged {:?} after start",
                started.elapsed()
            );
            break;
        }
        assert!(Instant::now() < deadline, "{stale} of {ROWS} keys still differ from the database");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A process signalled before it installs its handlers dies of the signal,
    // and the cache can converge from the previous run within those milliseconds.
    wait_streaming(&pg, &name, last_start).await;
    Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(child.0.wait().unwrap().success(), "clean exit after SIGTERM");
    cleanup(&pg, &name).await;
}
