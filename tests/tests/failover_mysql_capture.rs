//! The built-in binlog capture follows a MariaDB failover by itself (issue 31):
//! writers run against a primary through a TCP proxy (the address clients
//! keep, as a virtual IP); the GTID replica is promoted and the proxy switched;
//! the capture finds another `server_id` behind its URL, resumes on the new
//! primary from the GTID position it confirmed, and every key ends equal to
//! the database. The position it stores moves to the new server's binlog, and
//! back again after a failback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use evercache::source::mysql::StoredState;
use evercache_e2e::http::{get, sample};
use evercache_e2e::mariadb_failover::{item_pipeline, item_table_sql, through, wait_items_equal};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, wait_until};
use evercache_test_kit::MYSQL_URL;
use evercache_test_kit::mariadb_replica::{MariaDbPair, PRIMARY_BINLOG, REPLICA_BINLOG};
use evercache_test_kit::tcp_proxy::TcpProxy;
use mysql_async::prelude::Queryable;
use tokio::task::block_in_place;

const WAIT: Duration = Duration::from_secs(60);
const ROWS: i64 = 50;

/// Updates random rows through `url` until `stop`, going on through errors
/// (the switch cuts connections); counts the commits.
fn writer(url: String, database: String, stop: Arc<AtomicBool>, paused: Arc<AtomicBool>, commits: Arc<AtomicU64>) {
    let opts = through(&url).expect("a MySQL URL");
    tokio::spawn(async move {
        let mut version = 10;
        while !stop.load(Ordering::Relaxed) {
            if paused.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let Ok(mut conn) = mysql_async::Conn::new(opts.clone()).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            while !stop.load(Ordering::Relaxed) && !paused.load(Ordering::Relaxed) {
                version += 1;
                let id = 1 + version % ROWS;
                let sql =
                    format!("UPDATE `{database}`.item SET name = 'w{version}', version = {version} WHERE id = {id}");
                if conn.query_drop(sql).await.is_err() {
                    break;
                }
                commits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
}

async fn stored(env: &TestEnv) -> Result<Option<StoredState>> {
    let mut redis = env.redis.clone();
    let text: Option<String> = redis::cmd("GET").arg(format!("{}:binlog", env.prefix)).query_async(&mut redis).await?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_follows_a_promoted_replica_by_gtid_and_every_key_converges() -> Result<()> {
    let env = TestEnv::new("my_cap_failover").await?;
    let p = env.prefix.clone();
    let mut pair = block_in_place(|| MariaDbPair::start(&env.dir.join("pair")))?;
    let proxy = TcpProxy::start(pair.primary.port).await;
    pair.primary.sql(&item_table_sql(&p, 1..=ROWS))?;
    let server = proxy.url(&pair.primary.url());
    let url = format!("{server}/{p}");
    let runtime = RuntimeToml::new()
        .database("db", &url)
        .cache("main", REDIS_URL.as_str())
        .mysql_capture("events", &[format!("{p}.item")], 4000 + std::process::id() % 1000, &p, REDIS_URL.as_str())
        .http(0)
        .build()
        .replace(MYSQL_URL, &server);
    let running = Running::start(env.config(&runtime, &[("items", &item_pipeline(&env, "events"))])?).await?;
    let http = running.http.expect("an http listener");
    wait_items_equal(&env, &url, 1..=ROWS, WAIT).await?;

    let (stop, paused, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::default());
    writer(url.clone(), p.clone(), stop.clone(), paused.clone(), Arc::clone(&commits));
    wait_until("writes on the old primary", WAIT, || async { Ok(commits.load(Ordering::Relaxed) >= 200) }).await?;

    // A switchover as an orchestrator runs it: writes pause, the replica catches
    // up and is promoted, the address moves, the old primary goes away.
    let switch_over = |pair: &mut MariaDbPair| -> Result<()> {
        paused.store(true, Ordering::Relaxed);
        block_in_place(|| pair.promote())?;
        proxy.switch_to(pair.primary.port);
        paused.store(false, Ordering::Relaxed);
        Ok(())
    };
    let writes_go_on = |more: u64| {
        let (commits, before) = (Arc::clone(&commits), commits.load(Ordering::Relaxed));
        wait_until("writes on the new primary", WAIT, move || {
            let commits = Arc::clone(&commits);
            async move { Ok(commits.load(Ordering::Relaxed) >= before + more) }
        })
    };
    switch_over(&mut pair)?;
    block_in_place(|| pair.replica.stop_server());
    writes_go_on(300).await?;
    wait_until("the position stored on the new primary's binlog", WAIT, || async {
        Ok(stored(&env).await?.is_some_and(|s| s.server_id == Some(2) && s.position.file.starts_with(REPLICA_BINLOG)))
    })
    .await?;

    // Failback: the old primary comes back as a replica of the new one, catches up and takes over again.
    block_in_place(|| {
        pair.replica.start_server();
        pair.replica.replicate_from(&pair.primary)?;
        pair.replica.catch_up_with(&pair.primary, WAIT)
    })?;
    switch_over(&mut pair)?;
    writes_go_on(300).await?;
    stop.store(true, Ordering::Relaxed);

    let took = wait_items_equal(&env, &url, 1..=ROWS, WAIT).await?;
    println!(
        "{} commits; every key equal to the new primary {} ms after the writers stopped",
        commits.load(Ordering::Relaxed),
        took.as_millis()
    );
    wait_until("the position stored on the first primary's binlog again", WAIT, || async {
        Ok(stored(&env).await?.is_some_and(|s| {
            s.server_id == Some(1) && s.position.file.starts_with(PRIMARY_BINLOG) && s.position.gtids.is_some()
        }))
    })
    .await?;
    let (code, page) = get(http, "/metrics").await?;
    assert_eq!(code, 200);
    assert_eq!(sample(&page, "evercache_capture_failovers_total", &[("source", "events")]), Some(2.0), "{page}");
    wait_until("/ready", WAIT, || async { Ok(get(http, "/ready").await?.0 == 200) }).await?;
    running.stop().await?;
    Ok(())
}
