//! The built-in capture under Postgres restarts: the replication connection
//! and the query pool come back by themselves, `/ready` says so meanwhile, and
//! nothing is lost or left stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_fast_and_immediate_under_capture_load_lose_nothing() {
    let name = format!("fault_pgrestart_{}", std::process::id());
    let rows = 500;
    let dir = scratch(&name);
    let cluster = PgCluster::start(&dir);
    let pg_url = cluster.url();
    // A pool that gives up quickly while the server is down and reconnects after.
    let pg = PgPoolOptions::new().acquire_timeout(Duration::from_secs(2)).connect(&pg_url).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, &name).await;
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .line("stuck_after = \"2s\"")
        .database("db", &pg_url)
        .cache("main", SHARED_REDIS)
        .postgres_capture("capture", &pg_url, &[format!("{name}.item")], &name, SHARED_REDIS)
        .line(&format!("snapshot = \"never\"\ntopic_prefix = \"{name}\""));
    let pipeline = testkit_pipeline("capture", &name, &format!("{name}:item"), "", "");
    let config = write_config(&dir, runtime, &[("items", pipeline)]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;

    let done = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pg, name, done, commits) = (pg.clone(), name.clone(), done.clone(), commits.clone());
        let mut rng = Rng::new("pg-restart-writer");
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let ids: Vec<i64> = (0..10).map(|_| rng.below(rows as u64) as i64 + 1).collect();
                let update = sqlx::query(&format!(
                    "update {name}.item set version = version + 1, name = 'n' || version where id = any($1)"
                ))
                .bind(&ids)
                .execute(&pg)
                .await;
                match update {
                    Ok(_) => {
                        commits.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // The server is restarting: a legacy writer retries too.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    let mut report = Vec::new();
    for mode in ["fast", "immediate", "fast", "immediate"] {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let down = Instant::now();
        cluster.stop_server_mode(mode);
        let stopped = Instant::now();
        // /ready names the failing capture while Postgres is down.
        wait_reason(port, "source 'capture'", Duration::from_secs(30)).await;
        let unready_after = stopped.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.start_server();
        let restarted = Instant::now();
        let (ready_after, _) = wait_ready(port, true, Duration::from_secs(60)).await;
        report.push(format!(
            "{mode}: the stop took {:.1?}, down {:.1?}, /ready false {unready_after:.1?} after it stopped, true again \
             {ready_after:.1?} after the start",
            stopped.duration_since(down),
            restarted.duration_since(down)
        ));
    }
    done.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let settle = Instant::now();
    let prefix = format!("{name}:item");
    wait_until("every key equal to the database after four restarts", Duration::from_secs(120), || {
        let (pg, mut redis, name, prefix) = (pg.clone(), redis.clone(), name.clone(), prefix.clone());
        async move { mismatches(&pg, &mut redis, &name, &prefix).await.is_empty() }
    })
    .await;
    let reconnects = metric(port, "evercache_capture_reconnects_total", &[("source", "capture")]).await;
    let stream = format!("{name}.{name}.item");
    assert_eq!(dead_letters(&mut redis, &stream).await, 0, "a restart never dead-letters");
    assert!(reconnects >= 4.0, "the capture reconnected after each restart: {reconnects}");
    // A server without the slot (dropped, or a failover to a standby without it) is
    // followed: the slot is created again and the table re-read at its consistent point.
    let admin = PgPoolOptions::new().max_connections(1).connect(&pg_url).await.unwrap();
    wait_until("the slot is dropped", Duration::from_secs(30), || {
        let (admin, name) = (admin.clone(), name.clone());
        async move {
            let _ =
                sqlx::query("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1")
                    .bind(&name)
                    .execute(&admin)
                    .await;
            sqlx::query("select pg_drop_replication_slot($1)").bind(&name).execute(&admin).await.is_ok()
        }
    })
    .await;
    let dropped = Instant::now();
    sqlx::query(&format!("update {name}.item set version = version + 1, name = 'after the drop'"))
        .execute(&pg)
        .await
        .unwrap();
    wait_until("the capture follows the dropped slot", Duration::from_secs(60), || async {
        metric(port, "evercache_capture_failovers_total", &[("source", "capture")]).await == 1.0
    })
    .await;
    wait_until("every key equal to the database after the slot was dropped", Duration::from_secs(60), || {
        let (pg, mut redis, name, prefix) = (pg.clone(), redis.clone(), name.clone(), prefix.clone());
        async move { mismatches(&pg, &mut redis, &name, &prefix).await.is_empty() }
    })
    .await;
    let followed = dropped.elapsed();
    println!(
        "[postgres restarts] {} commits of 10 row updates over {rows} rows while Postgres was stopped 4 times (fast, \
         immediate, fast, immediate) under the built-in capture; {}; the capture reconnected {reconnects} times and \
         the cache converged {:.1?} after the last write: every key equals the database, 0 dead letters; then the \
         slot was dropped under it and every row changed: the capture created it again and every key equalled the \
         database {followed:.1?} after the drop",
        commits.load(Ordering::SeqCst),
        report.join("; "),
        settle.elapsed()
    );
    process.stop();
    pg.close().await;
    clear_prefix(&mut redis, &name).await;
}
