//! A network path that stops forwarding without closing (no FIN, no RST),
//! first to Postgres, then to Redis: every wait ends at its deadline, nothing
//! is dead-lettered, `/ready` says why meanwhile, and the runtime recovers
//! once the path forwards again.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::harness::*;
use crate::proxy::Proxy;
use crate::{random_ids, write_changes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_postgres_then_redis_stall_nothing_and_recover() {
    let name = format!("fault_hole_{}", std::process::id());
    let rows = 300;
    let dir = scratch(&name);
    let pg = PgPool::connect(SHARED_PG).await.unwrap();
    create_items(&pg, &name, rows).await;
    let mut redis = connect(SHARED_REDIS).await;
    clear_prefix(&mut redis, &name).await;
    let pg_proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let redis_proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let (pg_via, redis_via) = (
        format!("postgres://postgres@127.0.0.1:{}/test", pg_proxy.port),
        format!("redis://127.0.0.1:{}", redis_proxy.port),
    );
    let stream = format!("{name}.{name}.item");
    let port = free_port();
    let runtime = RuntimeToml::new()
        .http(port)
        .line("stuck_after = \"2s\"")
        .database("db", &pg_via)
        .line("statement_timeout = \"1s\"\nacquire_timeout = \"2s\"")
        .cache("main", &redis_via)
        .line("response_timeout = \"2s\"")
        .redis_stream("events", &redis_via, std::slice::from_ref(&stream), "c1");
    let prefix = format!("{name}:item");
    let pipeline = testkit_pipeline("events", &name, &prefix, "call_timeout = \"2s\"", "");
    let config = write_config(&dir, runtime, &[("items", pipeline)]);
    let mut process = RuntimeProcess::start(&config, &dir.join("runtime.log"));
    wait_ready(port, true, Duration::from_secs(60)).await;
    let mut writer = ConnectionManager::new(redis::Client::open(SHARED_REDIS).unwrap()).await.unwrap();
    let mut rng = Rng::new("black-hole");
    let mut report = Vec::new();
    for (what, proxy) in [("Postgres", &pg_proxy), ("Redis", &redis_proxy)] {
        for _ in 0..20 {
            write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
        }
        proxy.black_hole(true);
        let hole = Instant::now();
        for _ in 0..20 {
            write_changes(&pg, &mut writer, &name, &stream, &random_ids(&mut rng, rows, 10)).await;
        }
        let (unready, reasons) = wait_ready(port, false, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(dead_letters(&mut redis, &stream).await, 0, "{what} black hole: nothing dead-lettered");
        proxy.black_hole(false);
        let resumed = Instant::now();
        let converged = wait_until(
            &format!("every key equal to the database after the {what} black hole"),
            Duration::from_secs(120),
            || {
                let (pg, mut redis, name, prefix, stream) =
                    (pg.clone(), redis.clone(), name.clone(), prefix.clone(), stream.clone());
                async move {
                    backlog(&mut redis, &stream).await == (0, 0)
                        && mismatches(&pg, &mut redis, &name, &prefix).await.is_empty()
                }
            },
        )
        .await;
        let (ready, _) = wait_ready(port, true, Duration::from_secs(60)).await;
        assert_eq!(dead_letters(&mut redis, &stream).await, 0, "{what} black hole: nothing dead-lettered");
        report.push(format!(
            "{what} black-holed for {:.1?}: /ready false after {unready:.1?} ({}); converged {converged:.1?} and ready \
             {ready:.1?} after the path came back",
            resumed.duration_since(hole),
            reasons.first().map(String::as_str).unwrap_or("")
        ));
    }
    println!("[black hole] {}; 0 dead letters", report.join("; "));
    process.stop();
    clear_prefix(&mut redis, &name).await;
    let _ = sqlx::query(&format!("drop schema if exists {name} cascade")).execute(&pg).await;
}
