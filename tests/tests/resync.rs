//! `resync --all` against real Redis, Postgres and MariaDB: every key of a
//! pipeline's tables repaired, wrong values included, while the stream keeps
//! flowing; an interrupted resync goes on from its last page; and a repair
//! never replaces a value that a change wrote after the repair's read.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use evercache::config::Config;
use evercache::read::resync::ResyncError;
use evercache::read::resync_all::{ResyncAllOptions, ResyncProgress, progress_key, resync_all};
use evercache::read::resync_lease::lease_key;
use evercache::runtime::Runtime;
use evercache_e2e::debezium::{next_lsn, pg_change, pg_key};
use evercache_e2e::mariadb::MariaDb;
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, wait_until};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `resync --all` of `pipeline` in a runtime of its own, as the CLI does;
/// with `stop_after_rows`, stops it (as a signal does) once that many rows are
/// done, and returns `None`.
async fn resync(
    config: &Config,
    pipeline: &str,
    options: ResyncAllOptions,
    stop_after_rows: Option<u64>,
) -> Result<(Option<ResyncProgress>, Vec<u64>)> {
    let runtime = Runtime::build(config.clone()).await?;
    let pipeline = runtime.pipeline(pipeline).context("the pipeline")?;
    let (pages, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let run = resync_all(&pipeline, options, &stop, move |state| {
        let _ = pages.send(state.rows);
    });
    tokio::pin!(run);
    let mut rows_per_page = Vec::new();
    loop {
        tokio::select! {
            done = &mut run => {
                while let Ok(rows) = heard.try_recv() {
                    rows_per_page.push(rows);
                }
                return match done {
                    Err(ResyncError::Stopped) if stop.is_cancelled() => Ok((None, rows_per_page)),
                    done => Ok((Some(done?), rows_per_page)),
                };
            }
            Some(rows) = heard.recv() => {
                rows_per_page.push(rows);
                if stop_after_rows.is_some_and(|stop| rows >= stop) {
                    stop.cancel();
                }
            }
        }
    }
}

async fn saved_progress(env: &TestEnv, pipeline: &str) -> Result<Option<Value>> {
    let mut redis = env.redis.clone();
    let text: Option<String> = redis::cmd("GET").arg(progress_key(pipeline)).query_async(&mut redis).await?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// Waits until every `<prefix>:item:<id>` holds its row `(id, name, version)`.
async fn wait_rows_cached(env: &TestEnv, rows: &[(i64, String, i64)]) -> Result<Duration> {
    wait_until("every key holds its row", WAIT, || {
        let (mut redis, prefix) = (env.redis.clone(), env.prefix.clone());
        async move {
            for (id, name, version) in rows {
                let text: Option<String> =
                    redis::cmd("GET").arg(format!("{prefix}:item:{id}")).query_async(&mut redis).await?;
                let cached = text.and_then(|t| serde_json::from_str::<Value>(&t).ok());
                if cached != Some(json!({"id": id, "name": name, "version": version})) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_all_repairs_every_key_while_changes_flow_and_goes_on_after_an_interruption() -> Result<()> {
    const ROWS: i64 = 3000;
    let mut env = TestEnv::with_items("resync_all", ROWS).await?;
    let (stream, prefix) = (env.stream("item"), env.prefix.clone());
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[(&prefix, &env.testkit_pipeline(""))])?;
    let running = Running::start(config.clone()).await?;
    // Wrong values of two kinds: a manual SET without metadata, and a value
    // overwritten by hand after a change wrote it (wrong at the current position).
    for id in 2901..=ROWS {
        let after = json!({"id": id, "name": "row", "version": 1});
        env.xadd_compact(
            &stream,
            &pg_key(id),
            &pg_change("u", &prefix, "item", None, Some(after), next_lsn()).to_string(),
        )
        .await?;
    }
    evercache_e2e::wait_json(
        &env.redis,
        &format!("{prefix}:item:{ROWS}"),
        Some(json!({"id": ROWS, "name": "row", "version": 1})),
        WAIT,
    )
    .await?;
    let mut redis = env.redis.clone();
    for id in (1..=200).chain(2901..=ROWS) {
        redis::cmd("SET").arg(format!("{prefix}:item:{id}")).arg("wrong").query_async::<()>(&mut redis).await?;
    }

    // Changes flow through the stream for the whole resync.
    let stop = tokio_util::sync::CancellationToken::new();
    let updater = {
        let (stop, pg, mut env_redis, stream, prefix) =
            (stop.clone(), env.pg.clone(), env.redis.clone(), stream.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut updates = 0i64;
            while !stop.is_cancelled() {
                let id = 201 + (updates * 37) % 2700;
                let (name, version): (String, i64) = sqlx::query_as(&format!(
                    "update {prefix}.item set version = version + 1, name = 'v' || (version + 1) where id = $1 returning name, version"
                ))
                .bind(id)
                .fetch_one(&pg)
                .await?;
                let after = json!({"id": id, "name": name, "version": version});
                let change = pg_change("u", &prefix, "item", None, Some(after), next_lsn());
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg(pg_key(id))
                    .arg(change.to_string())
                    .query_async::<String>(&mut env_redis)
                    .await?;
                updates += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, anyhow::Error>(updates)
        })
    };

    let options = ResyncAllOptions { page_size: 250, restart: false };
    let (interrupted, first_pages) = resync(&config, &prefix, options, Some(1000)).await?;
    ensure!(interrupted.is_none(), "the first run is interrupted");
    let saved = saved_progress(&env, &prefix).await?.context("progress is saved")?;
    let saved_rows = saved["rows"].as_u64().context("rows")?;
    ensure!(saved_rows >= 1000 && saved["table"] == 0 && saved["cursor"]["after"].is_array(), "{saved}");
    println!("interrupted after pages {first_pages:?}; saved {saved}");

    let (done, pages) = resync(&config, &prefix, options, None).await?;
    let done = done.context("the second run finishes")?;
    ensure!(done.resumed, "the second run goes on from the saved progress");
    ensure!(pages.first().is_some_and(|rows| *rows == saved_rows + 250), "it starts after the saved page: {pages:?}");
    ensure!(done.rows == ROWS as u64 && done.failed_rows == 0 && done.failed_keys == 0, "{done:?}");
    ensure!(saved_progress(&env, &prefix).await?.is_none(), "a finished resync leaves no progress behind");
    stop.cancel();
    let updates = updater.await??;
    println!("resumed run: {done:?}; {updates} updates flowed meanwhile");
    ensure!(updates > 50, "changes flowed during the resync: {updates}");

    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as(&format!("select id, name, version from {prefix}.item order by id")).fetch_all(&env.pg).await?;
    let took = wait_rows_cached(&env, &rows).await?;
    println!("every key held its row {took:?} after the last update");
    ensure!(env.dead_letters(&stream).await?.is_empty(), "no dead letters");
    running.stop().await?;
    env.clear_redis().await
}

/// The plugin pauses after reading row 2 (`slow_name`); a change applied in
/// that pause is kept, and the repair reports the key as left to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_never_replaces_a_value_a_change_wrote_after_its_read() -> Result<()> {
    let mut env = TestEnv::with_items("resync_race", 3).await?;
    let (stream, prefix) = (env.stream("item"), env.prefix.clone());
    env.sql("update item set name = 'slow' where id = 2").await?;
    let pipeline = env.testkit_pipeline("slow_name = \"slow\"");
    let config = env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[(&prefix, &pipeline)])?;
    let running = Running::start(config.clone()).await?;
    let options = ResyncAllOptions { page_size: 10, restart: true };
    let resync = {
        let (config, prefix) = (config.clone(), prefix.clone());
        tokio::spawn(async move { resync(&config, &prefix, options, None).await })
    };
    // The plugin's pause is its `pg_sleep(0.5)` query: change the row while it runs.
    wait_until("the resync's recompute paused after its read", WAIT, || async {
        let paused: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(0.5)'",
        )
        .fetch_one(&env.pg)
        .await?;
        Ok(paused > 0)
    })
    .await?;
    env.sql("update item set name = 'changed', version = 2 where id = 2").await?;
    let after = json!({"id": 2, "name": "changed", "version": 2});
    env.xadd_compact(
        &stream,
        &pg_key(2),
        &pg_change("u", &prefix, "item", None, Some(after.clone()), next_lsn()).to_string(),
    )
    .await?;
    let key = format!("{prefix}:item:2");
    evercache_e2e::wait_json(&env.redis, &key, Some(after.clone()), Duration::from_millis(400))
        .await
        .context("the change is applied while the resync's read is held open")?;
    let (done, _) = resync.await??;
    let done = done.context("finished")?;
    ensure!(done.left_to_changes == 1 && done.stored == 2, "{done:?}");
    ensure!(env.get_json(&key).await? == Some(after), "the change's value stays");
    running.stop().await?;
    env.clear_redis().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_all_reads_a_mariadb_table_and_goes_on_after_an_interruption() -> Result<()> {
    const ROWS: i64 = 1000;
    let mut env = TestEnv::new("resync_maria").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    maria
        .sql(&format!(
            "create table item (id bigint primary key, name varchar(40), version bigint);
             insert into item select seq, concat('row ', seq), seq from seq_1_to_{ROWS}"
        ))
        .await?;
    let prefix = env.prefix.clone();
    let runtime = RuntimeToml::new()
        .database("db", &maria.url())
        .cache("main", REDIS_URL.as_str())
        .redis_stream("events", REDIS_URL.as_str(), &[env.stream("item")], &prefix)
        .build();
    let config = env.config(&runtime, &[(&prefix, &env.testkit_pipeline("dialect = \"mysql\""))])?;
    let mut redis = env.redis.clone();
    for id in 1..=ROWS / 2 {
        redis::cmd("SET").arg(format!("{prefix}:item:{id}")).arg("wrong").query_async::<()>(&mut redis).await?;
    }
    let options = ResyncAllOptions { page_size: 100, restart: false };
    let (interrupted, _) = resync(&config, &prefix, options, Some(400)).await?;
    ensure!(interrupted.is_none());
    let saved = saved_progress(&env, &prefix).await?.context("progress is saved")?;
    ensure!(saved["cursor"]["after"] == json!([saved["rows"]]), "the cursor is the last id read: {saved}");
    let (done, pages) = resync(&config, &prefix, options, None).await?;
    let done = done.context("finished")?;
    ensure!(done.resumed && done.rows == ROWS as u64, "{done:?} after {pages:?}");
    let saved_rows = saved["rows"].as_u64().context("rows")?;
    ensure!(pages.first() == Some(&(saved_rows + 100)), "it starts after the saved page: {pages:?}");
    let rows: Vec<(i64, String, i64)> = maria
        .items("item")
        .await?
        .into_iter()
        .map(|(id, name, version)| (id, name.unwrap_or_default(), version.unwrap_or(0)))
        .collect();
    wait_rows_cached(&env, &rows).await?;
    env.clear_redis().await?;
    maria.drop_database().await
}

/// One `--all` per pipeline: a second run is refused with who holds the lease;
/// a stopped run frees it at once; a run whose lease was taken over stops
/// without overwriting the new holder's progress; a lease that vanished is
/// taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_resync_all_runs_per_pipeline() -> Result<()> {
    let mut env = TestEnv::with_items("resync_lease", 600).await?;
    let (stream, prefix) = (env.stream("item"), env.prefix.clone());
    let config =
        env.config(&env.runtime_toml(std::slice::from_ref(&stream), ""), &[(&prefix, &env.testkit_pipeline(""))])?;
    let runtime = Runtime::build(config.clone()).await?;
    let pipeline = runtime.pipeline(&prefix).context("the pipeline")?;
    let options = ResyncAllOptions { page_size: 50, restart: false };
    let lease = lease_key(&progress_key(&prefix))?;
    let mut redis = env.redis.clone();

    let (stop, (pages, mut heard)) = (CancellationToken::new(), tokio::sync::mpsc::unbounded_channel());
    let first = resync_all(&pipeline, options, &stop, move |state| {
        let _ = pages.send(state.rows);
    });
    tokio::pin!(first);
    tokio::select! {
        done = &mut first => anyhow::bail!("the first run ended before its first page was heard: {done:?}"),
        _ = heard.recv() => {}
    }
    let refused = resync_all(&pipeline, options, &CancellationToken::new(), |_| {}).await;
    let Err(ResyncError::Running { holder, expires_in, .. }) = &refused else {
        anyhow::bail!("a second run while the first holds the lease: {refused:?}");
    };
    ensure!(holder.contains(&format!("pid {}", std::process::id())), "the refusal names the holder: {holder}");
    ensure!(*expires_in > Duration::ZERO, "and when its lease expires");
    println!("refused: {}", refused.as_ref().unwrap_err());
    stop.cancel();
    let stopped = first.await;
    ensure!(matches!(stopped, Err(ResyncError::Stopped)), "{stopped:?}");
    let held: bool = redis::cmd("EXISTS").arg(&lease).query_async(&mut redis).await?;
    ensure!(!held, "a stopped run lets its lease go");
    let saved = saved_progress(&env, &prefix).await?.context("a stopped run keeps its progress")?;

    // Another holder takes the lease over mid-run (as after this run stalled
    // past its lease): the run stops at its next save and leaves both alone.
    let (pages, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let never = CancellationToken::new();
    let taken_over = resync_all(&pipeline, options, &never, move |state| {
        let _ = pages.send(state.rows);
    });
    tokio::pin!(taken_over);
    let resumed_at = tokio::select! {
        done = &mut taken_over => anyhow::bail!("the run ended before its first page was heard: {done:?}"),
        rows = heard.recv() => rows.context("a page")?,
    };
    ensure!(resumed_at > saved["rows"].as_u64().context("rows")?, "the run went on from the stopped one's progress");
    redis::cmd("SET").arg(&lease).arg("another run").query_async::<()>(&mut redis).await?;
    let before = saved_progress(&env, &prefix).await?;
    let lost = taken_over.await;
    ensure!(matches!(lost, Err(ResyncError::LeaseLost { .. })), "{lost:?}");
    ensure!(saved_progress(&env, &prefix).await? == before, "the progress is not overwritten");
    let holder: Option<String> = redis::cmd("GET").arg(&lease).query_async(&mut redis).await?;
    ensure!(holder.as_deref() == Some("another run"), "the new holder's lease is left alone: {holder:?}");

    // A lease that vanished (Redis restarted without persistence) is taken again.
    redis::cmd("DEL").arg(&lease).query_async::<()>(&mut redis).await?;
    let (pages, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let last = resync_all(&pipeline, options, &never, move |state| {
        let _ = pages.send(state.rows);
    });
    tokio::pin!(last);
    tokio::select! {
        done = &mut last => anyhow::bail!("the run ended before its first page was heard: {done:?}"),
        _ = heard.recv() => {}
    }
    redis::cmd("DEL").arg(&lease).query_async::<()>(&mut redis).await?;
    let done = last.await?;
    ensure!(done.resumed && done.rows == 600, "{done:?}");
    let left: i64 = redis::cmd("EXISTS").arg(&lease).arg(progress_key(&prefix)).query_async(&mut redis).await?;
    ensure!(left == 0, "a finished run removes its lease and its progress");
    env.clear_redis().await
}
