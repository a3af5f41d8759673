//! The cache's Redis going away under a capture pipeline, whose source does
//! not need that Redis: `/ready` names the stuck pipeline within `stuck_after`
//! and keeps its reason current through the outage (the probes of the dead
//! cache never hold the verdict back), then turns true after a restart without
//! persistence, and every change made meanwhile reaches the new, empty cache.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_down_under_a_capture_is_reported_current_and_healed() {
    let name = format!("fault_cachedown_{}", std::process::id());
    let rows = 200;
    let dir = scratch(&name);
    let cluster = PgCluster::start(&dir);
    let pg_url = cluster.url();
    let pg = PgPool::connect(&pg_url).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut cache = RedisServer::start_volatile(&dir, "cache");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .line("stuck_after = \"2s\"\nprobe_interval = \"200ms\"")
        .database("db", &pg_url)
        .cache("main", &cache.url())
        .postgres_capture("capture", &pg_url, &[format!("{name}.item")], &name, SHARED_REDIS)
        .line(&format!("snapshot = \"never\"\ntopic_prefix = \"{name}\""));
    let prefix = format!("{name}:item");
    let config = write_config(&dir, runtime, &[("items", testkit_pipeline("capture", &name, &prefix, "", ""))]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;
    let cache_url = cache.url();
    let all_cached = |what: &'static str| {
        let (pg, url, name, prefix) = (pg.clone(), cache_url.clone(), name.clone(), prefix.clone());
        async move {
            let redis = connect(&url).await;
            wait_until(what, Duration::from_secs(120), || {
                let (pg, mut redis, name, prefix) = (pg.clone(), redis.clone(), name.clone(), prefix.clone());
                async move { mismatches(&pg, &mut redis, &name, &prefix).await.is_empty() }
            })
            .await
        }
    };
    wait_slot_active(&pg, &name).await;
    let touch_all = |label: &'static str| {
        let (pg, name) = (pg.clone(), name.clone());
        async move {
            sqlx::query(&format!("update {name}.item set version = version + 1, name = '{label}'"))
                .execute(&pg)
                .await
                .unwrap();
        }
    };
    touch_all("before").await;
    all_cached("every row is cached").await;

    cache.kill();
    let down = Instant::now();
    touch_all("while down").await;
    let first = wait_reason(port, "pipeline 'items'", Duration::from_secs(30)).await;
    let unready_after = down.elapsed();
    // The verdict is judged again every probe interval, whatever the probes wait on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = wait_reason(port, "pipeline 'items'", Duration::from_secs(30)).await;
    assert_ne!(first, later, "the reason is current, not the first verdict of the outage");

    cache.restart();
    let restarted = Instant::now();
    let (ready_after, _) = wait_ready(port, true, Duration::from_secs(60)).await;
    let took = all_cached("every change made while the cache was down is cached").await;
    let mut shared = connect(SHARED_REDIS).await;
    assert_eq!(dead_letters(&mut shared, &format!("{name}.{name}.item")).await, 0, "an outage never dead-letters");
    println!(
        "[cache down under a capture] the cache's Redis was killed with {rows} rows changed after it: /ready false \
         {unready_after:.1?} after the kill (stuck_after 2s), saying \"{first}\", then \"{later}\" 2 s later; \
         restarted without persistence {:.1?} after the kill: /ready true {ready_after:.1?} later, every row cached \
         {took:.1?} after the restart, 0 dead letters",
        restarted.duration_since(down)
    );
    process.stop();
}
