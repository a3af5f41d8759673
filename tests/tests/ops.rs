//! Operations against a running pipeline: every Prometheus metric at `/metrics`,
//! `/health` and `/ready`, the status page in headless Chromium, the lag probes
//! and `evercache status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use evercache::clock::now_ms;
use evercache::runtime::Runtime;
use evercache::source::SourceConfig;
use evercache::source::lag::LagProbe;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::http::{get, sample};
use evercache_e2e::{PG_URL, REDIS_URL, RuntimeToml, TestEnv, repo_root, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A stream entry whose commit time is now, so the end-to-end delay is real.
fn change_now(env: &TestEnv, op: &str, id: i64, name: &str) -> String {
    let mut change =
        pg_change(op, &env.prefix, "item", None, Some(json!({"id": id, "name": name, "version": 1})), next_lsn());
    change["source"]["ts_ms"] = json!(now_ms());
    change.to_string()
}

async fn start(config: evercache::config::Config) -> Result<(SocketAddr, CancellationToken, tokio::task::JoinSet<()>)> {
    let mut runtime = Runtime::build(config).await?;
    let addr = runtime.bind_http().await?.context("no [http] listener")?;
    let shutdown = CancellationToken::new();
    let tasks = runtime.start(shutdown.clone()).await?;
    Ok((addr, shutdown, tasks))
}

async fn stop(shutdown: CancellationToken, mut tasks: tokio::task::JoinSet<()>) -> Result<()> {
    shutdown.cancel();
    tokio::time::timeout(WAIT, async {
        while let Some(joined) = tasks.join_next().await {
            joined?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await?
}

/// Waits until `/metrics` has `name{labels}` == `expected`.
async fn wait_sample(addr: SocketAddr, name: &str, labels: &[(&str, &str)], expected: f64) -> Result<()> {
    wait_until(&format!("{name}{labels:?} == {expected}"), WAIT, || async move {
        let (_, page) = get(addr, "/metrics").await?;
        Ok(sample(&page, name, labels) == Some(expected))
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_page_and_status_follow_a_running_pipeline() -> Result<()> {
    let mut env = TestEnv::new("ops").await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    env.sql("insert into item values (1, 'one', 1), (2, 'two', 1), (3, 'three', 1), (13, 'thirteen', 1)").await?;
    let stream = env.stream("item");
    let pipeline = format!("{}_items", env.prefix);
    let http = "[http]\nlisten = \"127.0.0.1:0\"\nprobe_interval = \"100ms\"\n";
    let config = env.config(
        &env.runtime_toml(std::slice::from_ref(&stream), http),
        &[(&pipeline, &env.testkit_pipeline("fail_ids = \"13\""))],
    )?;
    for (op, id, name) in [("c", 1, "one"), ("u", 1, "one"), ("c", 2, "two"), ("c", 3, "three"), ("c", 13, "thirteen")]
    {
        let change = change_now(&env, op, id, name);
        env.xadd_compact(&stream, &pg_key(id), &change).await?;
    }
    let (addr, shutdown, tasks) = start(config.clone()).await?;
    let p = pipeline.as_str();
    wait_sample(addr, "evercache_dead_letters_total", &[("source", "events"), ("pipeline", p)], 1.0).await?;
    // Two changes to row 2 in one batch (one atomic XADD round) coalesce into one key.
    let mut batch = redis::pipe();
    batch.atomic();
    for id in [2, 2, 3] {
        batch.cmd("XADD").arg(&stream).arg("*").arg(pg_key(id)).arg(change_now(&env, "u", id, "again")).ignore();
    }
    batch.query_async::<()>(&mut env.redis).await?;
    wait_sample(addr, "evercache_events_total", &[("pipeline", p), ("op", "u"), ("outcome", "written")], 4.0).await?;
    wait_sample(addr, "evercache_source_pending_entries", &[("source", "events"), ("stream", &stream)], 0.0).await?;
    wait_sample(addr, "evercache_source_lag_entries", &[("source", "events"), ("stream", &stream)], 0.0).await?;

    let (code, page) = get(addr, "/metrics").await?;
    assert_eq!(code, 200);
    let at = |name: &str, labels: &[(&str, &str)]| {
        sample(&page, name, labels).with_context(|| format!("{name}{labels:?} missing from:\n{page}"))
    };
    let pl = ("pipeline", p);
    assert_eq!(at("evercache_events_total", &[pl, ("op", "c"), ("outcome", "written")])?, 3.0);
    assert_eq!(at("evercache_events_total", &[pl, ("op", "c"), ("outcome", "dead_lettered")])?, 1.0);
    assert!(at("evercache_batch_events_count", &[pl])? >= 1.0);
    assert_eq!(at("evercache_batch_events_bucket", &[pl, ("le", "5")])?, at("evercache_batch_events_count", &[pl])?);
    // 3 keys named, 2 distinct in the second batch: the ratio 1.5 was recorded.
    assert!(at("evercache_keys_planned_total", &[pl])? > at("evercache_keys_recomputed_total", &[pl])?);
    assert!(at("evercache_coalescing_ratio_sum", &[pl])? > at("evercache_coalescing_ratio_count", &[pl])?);
    assert!(at("evercache_recompute_duration_seconds_count", &[pl])? >= 1.0);
    assert!(at("evercache_host_query_duration_seconds_count", &[pl, ("plugin", "testkit")])? >= 1.0);
    // The failing first batch was isolated by bisection: halves {1, 1} and then {2}
    // and {3} were written (3 writes) before 13 failed alone; the second coalesced (2).
    assert_eq!(at("evercache_writes_total", &[pl, ("outcome", "applied")])?, 5.0);
    assert_eq!(at("evercache_writes_total", &[pl, ("outcome", "stale")])?, 0.0);
    assert_eq!(at("evercache_writes_total", &[pl, ("outcome", "deleted")])?, 0.0);
    assert_eq!(at("evercache_end_to_end_delay_seconds_count", &[pl])?, 7.0);
    let delay = at("evercache_end_to_end_delay_seconds_sum", &[pl])?;
    assert!(delay > 0.0 && delay < 7.0 * 20.0, "delay sum {delay}s");
    assert!(at("evercache_plugin_errors_total", &[pl, ("plugin", "testkit"), ("kind", "plugin")])? >= 2.0);
    assert_eq!(at("evercache_plugin_reloads_total", &[("plugin", "testkit"), ("outcome", "ok")])?, 0.0);
    assert!(at("evercache_plugin_loaded_timestamp_seconds", &[pl, ("plugin", "testkit")])? > 1.7e9);
    assert_eq!(at("evercache_source_up", &[("source", "events")])?, 1.0);
    assert!(at("evercache_redis_used_memory_bytes", &[("cache", "main")])? > 0.0);

    let (code, body) = get(addr, "/health").await?;
    assert_eq!((code, serde_json::from_str::<Value>(&body)?), (200, json!({"status": "ok"})));
    let (code, body) = get(addr, "/ready").await?;
    let ready: Value = serde_json::from_str(&body)?;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["sources"]["events"]["connected"], true);
    assert!(ready["plugins"][p].as_str().is_some_and(|l| l.starts_with("testkit@")), "{ready}");

    let (_, body) = get(addr, "/api/status").await?;
    let status: Value = serde_json::from_str(&body)?;
    let row = &status["pipelines"][0];
    assert_eq!((row["events"].as_u64(), row["dead_letters"].as_u64()), (Some(7), Some(1)), "{row}");
    assert!(row["errors"][0]["message"].as_str().is_some_and(|m| m.contains("configured failure for id 13")));

    browse_status_page(addr, p).await?;

    let report = evercache::status::report(&config).await?;
    println!("{report}");
    let line = report.lines().find(|l| l.starts_with(p)).context("no pipeline row")?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[..7], [p, "events", cells[2], "7", "1", "0", "0"], "{report}");
    assert!(line.ends_with("running"), "{report}");
    assert!(report.contains("cache main: used_memory"), "{report}");
    assert!(report.contains("% (") && report.contains(" hits, "), "Redis's own hit ratio: {report}");
    stop(shutdown, tasks).await?;
    let report = evercache::status::report(&config).await?;
    assert!(report.lines().any(|l| l.starts_with(p) && l.contains(" 7 ") && l.contains("stopped")), "{report}");
    Ok(())
}

/// Loads the page in headless Chromium after its script ran, checks the numbers
/// in the DOM and saves a screenshot to `target/artifacts/status-page.png`.
async fn browse_status_page(addr: SocketAddr, pipeline: &str) -> Result<()> {
    let status = Command::new("bash").arg(repo_root().join("scripts/browser.sh")).status()?;
    if !status.success() {
        bail!("no chromium; run `bash scripts/browser.sh`");
    }
    let url = format!("http://{addr}/");
    let profile = std::env::temp_dir().join(format!("evercache-chromium-{}", std::process::id()));
    let chromium = |extra: &[&str]| -> Result<String> {
        let output = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=3000",
            ])
            .args(extra)
            .arg(&url)
            .output()?;
        if !output.status.success() {
            bail!("chromium failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let dom = tokio::task::block_in_place(|| chromium(&["--dump-dom"]))?;
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(&format!("data-pipeline=\"{pipeline}\"")))
        .with_context(|| format!("no row for {pipeline} in:\n{dom}"))?;
    let cell = |class: &str| -> Option<String> {
        let rest = row.split(&format!("class=\"{class}\">")).nth(1)?;
        Some(rest.split('<').next()?.to_owned())
    };
    assert_eq!(cell("n events").as_deref(), Some("7"), "{row}");
    assert_eq!(cell("n dead-letters").as_deref(), Some("1"), "{row}");
    assert_eq!(cell("n lag").as_deref(), Some("0"), "{row}");
    assert_eq!(cell("n pending").as_deref(), Some("0"), "{row}");
    assert!(cell("plugin").is_some_and(|p| p.starts_with("testkit@")), "{row}");
    assert!(row.contains("configured failure for id 13"), "{row}");
    assert_eq!(row.matches("<polyline").count(), 2, "two sparklines: {row}");
    // The script replaced the server-rendered rows at least once.
    assert!(dom.contains("data-refreshes=\""), "the page's script did not run:\n{dom}");
    assert!(dom.contains(">updated "), "{dom}");

    let artifacts = repo_root().join("target/artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let png: PathBuf = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    tokio::task::block_in_place(|| chromium(&[&format!("--screenshot={}", png.display()), "--window-size=1500,420"]))?;
    let size = std::fs::metadata(&png).with_context(|| format!("no screenshot at {}", png.display()))?.len();
    assert!(size > 10_000, "screenshot is only {size} bytes");
    let _ = std::fs::remove_dir_all(&profile);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_probes_read_stream_lag_pending_dead_letters_and_slot_bytes() -> Result<()> {
    let mut env = TestEnv::new("ops_probe").await?;
    let stream = env.stream("item");
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("evercache")
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(&mut env.redis)
        .await?;
    for id in 1..=3 {
        env.xadd_compact(&stream, &pg_key(id), "{}").await?;
    }
    let source: SourceConfig = toml::from_str(&format!(
        "type = \"redis-stream\"\nurl = \"{REDIS_URL}\"\nstreams = [\"{stream}\"]\ngroup = \"evercache\""
    ))?;
    let mut probe = LagProbe::new("events", &source)?;
    let lag = &probe.probe().await?[0];
    assert_eq!((lag.lag_entries, lag.pending_entries, lag.dead_letters), (Some(3), Some(0), Some(0)));
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("evercache")
        .arg("c1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut env.redis)
        .await?;
    env.xadd_compact(&format!("{stream}:dlq"), "k", "v").await?;
    let lag = &probe.probe().await?[0];
    assert_eq!((lag.lag_entries, lag.pending_entries, lag.dead_letters), (Some(2), Some(1), Some(1)));

    let slot = env.prefix.clone();
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')").bind(&slot).execute(&env.pg).await?;
    let result = async {
        env.sql("create table item (id bigint primary key); insert into item select generate_series(1, 1000)").await?;
        let source: SourceConfig = toml::from_str(&format!(
            "type = \"postgres\"\nurl = \"{PG_URL}\"\ntables = [\"{p}.item\"]\nslot = \"{slot}\"\ntopic_prefix = \"{p}\"\ndead_letter_url = \"{REDIS_URL}\"",
            p = env.prefix
        ))?;
        let mut probe = LagProbe::new("capture", &source)?;
        let lag = &probe.probe().await?[0];
        assert_eq!(lag.stream, format!("slot {slot}"));
        assert!(lag.lag_bytes.is_some_and(|b| b > 10_000), "{lag:?}");
        // The capture names its streams like Debezium: the dead letter above is this table's.
        assert_eq!(lag.dead_letters, Some(1));
        Ok::<_, anyhow::Error>(())
    }
    .await;
    sqlx::query("select pg_drop_replication_slot($1)").bind(&slot).execute(&env.pg).await?;
    result?;
    let unreachable: SourceConfig =
        toml::from_str("type = \"redis-stream\"\nurl = \"redis://:s3cret@127.0.0.1:1\"\nstreams = [\"x\"]")?;
    let error = LagProbe::new("gone", &unreachable)?.probe().await.unwrap_err().to_string();
    assert!(error.contains("source 'gone'") && !error.contains("s3cret"), "{error}");
    for url in ["postgres://evercache:s3cret@127.0.0.1:1/test", "postgres://evercache:s3cret@127.0.0.1:5432/test"] {
        let unreachable: SourceConfig = toml::from_str(&format!(
            "type = \"postgres\"\nurl = \"{url}\"\ntables = [\"public.x\"]\ndead_letter_url = \"{REDIS_URL}\""
        ))?;
        let error = LagProbe::new("gone", &unreachable)?.probe().await.unwrap_err().to_string();
        assert!(error.contains("source 'gone'") && !error.contains("s3cret"), "{error}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_pipeline_exports_slot_lag_and_real_commit_delay() -> Result<()> {
    let env = TestEnv::new("ops_capture").await?;
    env.drop_capture().await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    let p = env.prefix.clone();
    let runtime = RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .postgres_capture("events", PG_URL, &[format!("{p}.item")], &p, REDIS_URL.as_str())
        .line(&format!("topic_prefix = \"{p}\"\nsnapshot = \"never\""))
        .http(0)
        .line("probe_interval = \"100ms\"")
        .build();
    let pipeline = format!("{p}_items");
    let config = env.config(&runtime, &[(&pipeline, &env.testkit_pipeline(""))])?;
    let (addr, shutdown, tasks) = start(config.clone()).await?;
    let result = async {
        env.sql("insert into item values (1, 'one', 1); insert into item values (2, 'two', 1)").await?;
        let pl = ("pipeline", pipeline.as_str());
        wait_sample(addr, "evercache_end_to_end_delay_seconds_count", &[pl], 2.0).await?;
        let slot_labels = [("source", "events"), ("slot", p.as_str())];
        wait_until("slot lag exported", WAIT, || async {
            let (_, page) = get(addr, "/metrics").await?;
            Ok(sample(&page, "evercache_replication_slot_lag_bytes", &slot_labels).is_some())
        })
        .await?;
        let (_, page) = get(addr, "/metrics").await?;
        assert_eq!(sample(&page, "evercache_events_total", &[pl, ("op", "c"), ("outcome", "written")]), Some(2.0));
        // Real commit times: the delay is the debug build's few milliseconds, well under 20 s.
        let delay = sample(&page, "evercache_end_to_end_delay_seconds_sum", &[pl]).unwrap_or(-1.0);
        assert!((0.0..40.0).contains(&delay), "delay sum {delay}s");
        let key = evercache::status::status_key(&pipeline);
        wait_until("the runtime saved its figures", WAIT, || async {
            let mut redis = env.redis.clone();
            let events: Option<String> = redis::cmd("HGET").arg(&key).arg("events").query_async(&mut redis).await?;
            Ok(events.as_deref() == Some("2"))
        })
        .await?;
        let report = evercache::status::report(&config).await?;
        println!("{report}");
        let line = report.lines().find(|l| l.starts_with(&pipeline)).context("no pipeline row")?;
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[3..5], ["2", "0"], "events, dead letters: {report}");
        assert!(line.contains(" B ") && line.contains(" ago ") && line.ends_with("running"), "{report}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop(shutdown, tasks).await?;
    env.drop_capture().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_never_show_passwords() -> Result<()> {
    let env = TestEnv::new("ops_secret").await?;
    let runtime = env.runtime_toml(&[env.stream("item")], "").replace(
        &format!("[caches.main]\nurl = \"{REDIS_URL}\""),
        "[caches.main]\nurl = \"redis://:s3cret@127.0.0.1:1\"",
    );
    assert!(runtime.contains("s3cret"));
    let config = env.config(&runtime, &[("items", &env.testkit_pipeline(""))])?;
    let error = match Runtime::build(config.clone()).await {
        Ok(_) => bail!("a cache on port 1 cannot be reached"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("cache 'main'") && !error.contains("s3cret"), "{error}");
    let report = evercache::status::report(&config).await?;
    assert!(report.contains("cache main: unreachable") && !report.contains("s3cret"), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_status_say_why_a_pipeline_is_stuck() -> Result<()> {
    let mut env = TestEnv::new("ops_stuck").await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    env.sql("insert into item values (1, 'one', 1)").await?;
    let stream = env.stream("item");
    let pipeline = format!("{}_items", env.prefix);
    let http = "[http]\nlisten = \"127.0.0.1:0\"\nprobe_interval = \"100ms\"\nstuck_after = \"1s\"\n";
    // Nothing listens on port 1: every host query finds the database unavailable.
    let runtime =
        env.runtime_toml(std::slice::from_ref(&stream), http).replace(PG_URL, "postgres://postgres@127.0.0.1:1/test");
    let config = env.config(&runtime, &[(&pipeline, &env.testkit_pipeline(""))])?;
    let (addr, shutdown, tasks) = start(config.clone()).await?;
    let result = async {
        wait_until("/ready turns true", WAIT, || async move { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
        env.xadd_compact(&stream, &pg_key(1), &change_now(&env, "c", 1, "one")).await?;
        let started = std::time::Instant::now();
        let reasons = loop {
            let (code, body) = get(addr, "/ready").await?;
            let body: Value = serde_json::from_str(&body)?;
            // The first attempt waits `acquire_timeout` (5s) before its error is known.
            let why = body["pipelines"][&pipeline].as_str().unwrap_or("");
            if code == 503 && why.contains("database 'db' is unavailable") {
                break body["reasons"].as_array().cloned().unwrap_or_default();
            }
            if started.elapsed() > WAIT {
                bail!("/ready never named the stuck pipeline: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let reason = reasons.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; ");
        assert!(reason.contains(&format!("pipeline '{pipeline}': one batch has been running for")), "{reason}");
        assert!(reason.contains("database 'db' is unavailable"), "the last error is named: {reason}");
        let (_, page) = get(addr, "/metrics").await?;
        assert_eq!(sample(&page, "evercache_pipeline_stuck", &[("pipeline", &pipeline)]), Some(1.0));
        let (_, status) = get(addr, "/api/status").await?;
        let status: Value = serde_json::from_str(&status)?;
        assert!(status["pipelines"][0]["stuck"].as_str().is_some_and(|s| s.contains("one batch")), "{status}");
        wait_until("evercache status says why", WAIT, || {
            let config = config.clone();
            let pipeline = pipeline.clone();
            async move {
                let report = evercache::status::report(&config).await?;
                Ok(report.contains(&format!("pipeline {pipeline}: not ready: one batch has been running")))
            }
        })
        .await?;
        assert_eq!(env.pending(&stream).await?, 1, "nothing is acked while it is stuck");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop(shutdown, tasks).await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_down_at_startup_is_waited_for_reported_and_then_read() -> Result<()> {
    let env = TestEnv::new("ops_late").await?;
    env.sql("create table item (id bigint primary key, name text, version bigint)").await?;
    env.sql("insert into item values (1, 'one', 1)").await?;
    let stream = env.stream("item");
    // The stream source's Redis does not run yet when the runtime starts.
    let port = evercache_test_kit::free_port();
    let late = format!("redis://127.0.0.1:{port}");
    let runtime = RuntimeToml::new()
        .http(0)
        .line("probe_interval = \"100ms\"\nstuck_after = \"1s\"")
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .redis_stream("events", &late, std::slice::from_ref(&stream), &env.prefix)
        .build();
    let config = env.config(&runtime, &[("items", &env.testkit_pipeline(""))])?;
    let (addr, shutdown, tasks) = start(config).await?;
    wait_until("/ready says the source is down", WAIT, || async move {
        let (code, body) = get(addr, "/ready").await?;
        Ok(code == 503 && body.contains("events") && body.contains("refused"))
    })
    .await?;

    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let result = async {
        let client = redis::Client::open(late.as_str())?;
        let mut conn = loop {
            match client.get_multiplexed_async_connection().await {
                Ok(conn) => break conn,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(pg_key(1))
            .arg(change_now(&env, "c", 1, "one"))
            .query_async::<String>(&mut conn)
            .await?;
        let key = format!("{}:item:1", env.prefix);
        evercache_e2e::wait_json(&env.redis, &key, Some(json!({"id": 1, "name": "one", "version": 1})), WAIT).await?;
        wait_until("/ready turns true", WAIT, || async move { Ok(get(addr, "/ready").await?.0 == 200) }).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    stop(shutdown, tasks).await?;
    result
}
