//! The MySQL binlog capture under SIGKILLs of evercache and restarts and
//! crashes of MariaDB, all under a write burst: the stored position and the
//! binlog connection bring it back, `/ready` says so meanwhile, and every key
//! ends equal to the database with nothing dead-lettered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::harness::*;
use crate::mariadb_items::{create_items, mismatches};
use evercache_test_kit::mariadb_server::MariaDbServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarts_and_evercache_kills_under_binlog_load_lose_nothing() {
    let name = format!("fault_myrestart_{}", std::process::id());
    let rows = 500;
    let dir = scratch(&name);
    let mut server = MariaDbServer::start(&dir);
    let url = server.url();
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&url).unwrap());
    create_items(&pool, &name, rows).await;
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, &name).await;
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .line("stuck_after = \"2s\"")
        .database("db", &format!("{url}/{name}"))
        .cache("main", SHARED_REDIS)
        .section("sources.capture")
        .line(&format!(
            "type = \"mysql\"\nurl = \"{url}\"\ntables = [\"{name}.item\"]\nserver_id = 4242\nsnapshot = \"never\"\n\
             topic_prefix = \"{name}\"\nposition_key = \"{name}:binlog\"\ndead_letter_url = \"{SHARED_REDIS}\""
        ));
    let prefix = format!("{name}:item");
    let pipeline = testkit_pipeline("capture", &name, &prefix, "", "dialect = \"mysql\"");
    let config = write_config(&dir, runtime, &[("items", pipeline)]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;

    let done = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pool, name, done, commits) = (pool.clone(), name.clone(), done.clone(), commits.clone());
        let mut rng = Rng::new("mariadb-restart-writer");
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let ids: Vec<String> = (0..10).map(|_| (rng.below(rows) + 1).to_string()).collect();
                let update = async {
                    let mut conn = pool.get_conn().await?;
                    conn.query_drop(format!(
                        "update `{name}`.item set version = version + 1, name = concat('n', version) where id in ({})",
                        ids.join(",")
                    ))
                    .await
                };
                match tokio::time::timeout(Duration::from_secs(5), update).await {
                    Ok(Ok(())) => {
                        commits.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // The server is restarting: a legacy writer retries too.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    let mut report = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        process.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        process.restart();
        let (ready_after, _) = wait_ready(port, true, Duration::from_secs(60)).await;
        report.push(format!("SIGKILL of evercache: ready again after {ready_after:.1?}"));
    }
    for crash in [false, true] {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        if crash {
            server.kill_server();
        } else {
            server.stop_server();
        }
        let stopped = Instant::now();
        wait_reason(port, "source 'capture'", Duration::from_secs(30)).await;
        let unready_after = stopped.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.start_server();
        let (ready_after, _) = wait_ready(port, true, Duration::from_secs(60)).await;
        report.push(format!(
            "MariaDB {}: /ready false {unready_after:.1?} after, true again {ready_after:.1?} after the start",
            if crash { "SIGKILLed" } else { "stopped cleanly" }
        ));
    }
    done.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let settle = Instant::now();
    wait_until("every key equal to the database", Duration::from_secs(120), || {
        let (pool, mut redis, name, prefix) = (pool.clone(), redis.clone(), name.clone(), prefix.clone());
        async move { mismatches(&pool, &mut redis, &name, &prefix).await == 0 }
    })
    .await;
    let reconnects = metric(port, "evercache_capture_reconnects_total", &[("source", "capture")]).await;
    assert_eq!(dead_letters(&mut redis, &format!("{name}.{name}.item")).await, 0, "nothing dead-lettered");
    assert!(reconnects >= 2.0, "the capture reconnected after each MariaDB restart: {reconnects}");
    // A stored position the server no longer has (its binlog purged) halts
    // the source with the position and what to do, never skipping ahead.
    process.stop();
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("flush binary logs").await.unwrap();
    let (file, _): (String, u64) = conn
        .query_first::<mysql_async::Row, _>("show master status")
        .await
        .unwrap()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
        .unwrap();
    conn.query_drop(format!("purge binary logs to '{file}'")).await.unwrap();
    drop(conn);
    redis::cmd("SET")
        .arg(format!("{name}:binlog"))
        .arg(r#"{"position":{"file":"mariadb-bin.000001","pos":4},"snapshot_done":true}"#)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    process.restart();
    let halted = wait_reason(port, "cannot send the binlog from mariadb-bin.000001:4", Duration::from_secs(60)).await;
    println!(
        "[mariadb restarts] {} commits of 10 row updates over {rows} rows under the binlog capture; {}; the capture \
         reconnected {reconnects} times and the cache converged {:.1?} after the last write: every key equals the \
         database, 0 dead letters; then its stored position was purged from the server: /ready says \"{halted}\"",
        commits.load(Ordering::SeqCst),
        report.join("; "),
        settle.elapsed()
    );
    process.stop();
    // Connections the server's crash broke can keep a pool's disconnect waiting.
    let _ = tokio::time::timeout(Duration::from_secs(5), pool.disconnect()).await;
    clear_prefix(&mut redis, &name).await;
    redis::cmd("DEL").arg(format!("{name}:binlog")).query_async::<()>(&mut redis).await.unwrap();
}
