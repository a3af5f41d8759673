//! A MariaDB primary fails over to its GTID replica (issue 31) under a
//! pipeline fed by Debezium: the promoted replica writes its own binlog
//! (`replica-bin.*`, small offsets) but continues the primary's GTID sequence,
//! and changes rank by that sequence, so what the new primary writes replaces
//! what the old one wrote, and a failback's changes replace both. Clients keep
//! one address across the switch through a TCP proxy, as behind a virtual IP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use evercache::event::position;
use evercache_e2e::debezium_server::{self, DebeziumServer};
use evercache_e2e::mariadb::server_id;
use evercache_e2e::mariadb_failover::{
    BinlogPlace, item, item_envelope, item_pipeline, item_table_sql, key_position, stream_origins, update_rows_until,
    wait_items_equal,
};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, repo_root, wait_json, wait_until};
use evercache_test_kit::mariadb_replica::{MariaDbPair, PRIMARY_BINLOG, REPLICA_BINLOG};
use evercache_test_kit::mariadb_server::MariaDbServer;
use evercache_test_kit::tcp_proxy::TcpProxy;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use tokio::task::block_in_place;

const WAIT: Duration = Duration::from_secs(60);

/// The sequence number of GTID `domain-server-seq`, checking its domain and server.
fn seq(gtid: &str, server_id: u32) -> Result<u64> {
    let parsed = position::parse_mariadb_gtid(gtid).with_context(|| format!("a GTID: {gtid:?}"))?;
    ensure!((parsed.domain, parsed.server_id) == (0, server_id), "{gtid} is not server {server_id}'s in domain 0");
    Ok(parsed.seq)
}

#[test]
fn a_gtid_replica_follows_its_primary_takes_over_and_hands_back() -> Result<()> {
    let dir = std::env::temp_dir().join("evercache-tests").join(format!("t{}_mariadb_pair", std::process::id()));
    let mut pair = MariaDbPair::start(&dir)?;
    let (first, second) = (pair.primary.port, pair.replica.port);
    assert_eq!((pair.primary.server_id()?, pair.replica.server_id()?), (1, 2));
    pair.primary.sql(&item_table_sql("kit", 1..=1))?;
    let n = seq(&pair.primary.gtid_binlog_pos()?, 1)?;
    pair.replica.catch_up_with(&pair.primary, WAIT)?;
    assert_eq!(pair.replica.sql("SELECT name FROM kit.item WHERE id = 1")?, "row", "the write reached the replica");
    let replica_files = pair.replica.binlog_files()?;
    assert!(pair.primary.binlog_files()?.iter().all(|f| f.starts_with(&format!("{PRIMARY_BINLOG}."))));
    assert!(!replica_files.is_empty() && replica_files.iter().all(|f| f.starts_with(&format!("{REPLICA_BINLOG}."))));

    pair.promote()?;
    assert_eq!((pair.primary.port, pair.replica.port), (second, first));
    pair.primary.sql("UPDATE kit.item SET name = 'after failover' WHERE id = 1")?;
    assert_eq!(pair.primary.gtid_binlog_pos()?, format!("0-2-{}", n + 1), "the sequence goes on in domain 0");

    // Failback: the old primary follows the new one from what its own binlog holds, then takes over again.
    pair.replica.replicate_from(&pair.primary)?;
    pair.replica.catch_up_with(&pair.primary, WAIT)?;
    assert_eq!(pair.replica.sql("SELECT name FROM kit.item WHERE id = 1")?, "after failover");
    pair.promote()?;
    assert_eq!((pair.primary.port, pair.replica.port), (first, second));
    pair.primary.sql("UPDATE kit.item SET name = 'after failback' WHERE id = 1")?;
    assert_eq!(pair.primary.gtid_binlog_pos()?, format!("0-1-{}", n + 2));
    assert!(pair.primary.binlog_files()?.iter().all(|f| f.starts_with(&format!("{PRIMARY_BINLOG}."))));

    // Server 2 follows again; written behind replication's back it stops, and waiting for it says why at once.
    pair.replica.replicate_from(&pair.primary)?;
    pair.replica.catch_up_with(&pair.primary, WAIT)?;
    pair.replica.sql("INSERT INTO kit.item VALUES (2, 'diverged', 1)")?;
    pair.primary.sql("INSERT INTO kit.item VALUES (2, 'row', 1)")?;
    let stopped = pair.replica.catch_up_with(&pair.primary, WAIT).expect_err("a stopped replica");
    println!("{stopped}");
    assert!(stopped.to_string().contains("stopped: Last_SQL_Error: "), "{stopped}");
    Ok(())
}

/// Waits until the group "evercache" has read and acknowledged every entry of `stream`.
async fn wait_acknowledged(env: &mut TestEnv, stream: &str) -> Result<()> {
    let start = Instant::now();
    while env.pending(stream).await? != 0 || env.undelivered(stream).await? != Some(0) {
        ensure!(start.elapsed() < WAIT, "{stream} not acknowledged within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A primary and its replica (after `first` runs on the primary) behind a
/// proxy, the `item` table with row 5 on the primary, and the runtime file of
/// a Redis Stream source `dbz` whose pipeline's database is the proxy: the
/// pair, the proxy, that URL, the stream and the runtime file so far.
async fn behind_a_proxy(env: &TestEnv, first: &str) -> Result<(MariaDbPair, TcpProxy, String, String, RuntimeToml)> {
    let p = &env.prefix;
    let pair = block_in_place(|| MariaDbPair::start(&env.dir.join("pair")))?;
    if !first.is_empty() {
        pair.primary.sql(first)?;
    }
    let proxy = TcpProxy::start(pair.primary.port).await;
    pair.primary.sql(&item_table_sql(p, 5..=5))?;
    let url = proxy.url(&format!("{}/{p}", pair.primary.url()));
    let stream = env.stream("item");
    let runtime = RuntimeToml::new().database("db", &url).cache("main", REDIS_URL.as_str()).redis_stream(
        "dbz",
        REDIS_URL.as_str(),
        std::slice::from_ref(&stream),
        p,
    );
    Ok((pair, proxy, url, stream, runtime))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_a_promoted_replica_and_after_a_failback_replace_the_old_primarys() -> Result<()> {
    let mut env = TestEnv::new("failover_my").await?;
    let p = env.prefix.clone();
    let (mut pair, proxy, url, stream, runtime) = behind_a_proxy(&env, "").await?;
    let runtime = runtime.build();
    let running = Running::start(env.config(&runtime, &[("items", &item_pipeline(&env, "dbz"))])?).await?;
    let key = format!("{p}:item:5");

    // The case: row 5 changed on the old primary, far into its binlog, is cached. (These binlog
    // places are not the servers' own, so the visibility gate stands aside, and says so.)
    let update =
        |name: &str, version: i64| format!("UPDATE `{p}`.item SET name = '{name}', version = {version} WHERE id = 5");
    pair.primary.sql(&update("old primary", 2))?;
    let old_gtid = pair.primary.gtid_binlog_pos()?;
    let n = seq(&old_gtid, 1)?;
    let old_place = BinlogPlace { server_id: 1, gtid: &old_gtid, file: "mariadb-bin.000123", pos: 1000 };
    let (old_key, old_value) = item_envelope(&p, Some(item(5, "row", 1)), Some(item(5, "old primary", 2)), old_place)?;
    env.xadd_compact(&stream, &old_key, &old_value).await?;
    wait_json(&env.redis, &key, Some(item(5, "old primary", 2)), WAIT).await?;
    assert_eq!(key_position(&env, &key).await?, Some(position::mariadb(n, 1000, 0)));

    // The replica takes over; the row changes there, at the start of its own binlog.
    block_in_place(|| pair.promote())?;
    proxy.switch_to(pair.primary.port);
    pair.primary.sql(&update("new primary", 3))?;
    let new_gtid = pair.primary.gtid_binlog_pos()?;
    assert_eq!(new_gtid, format!("0-2-{}", n + 1));
    let new_place = BinlogPlace { server_id: 2, gtid: &new_gtid, file: "replica-bin.000002", pos: 400 };
    let (k, v) = item_envelope(&p, Some(item(5, "old primary", 2)), Some(item(5, "new primary", 3)), new_place)?;
    env.xadd_compact(&stream, &k, &v).await?;
    let took = wait_items_equal(&env, &url, 5..=5, WAIT).await?;
    println!("the new primary's change in the cache {} ms after it was appended", took.as_millis());
    assert_eq!(env.get_json(&key).await?, Some(item(5, "new primary", 3)));
    assert_eq!(key_position(&env, &key).await?, Some(position::mariadb(n + 1, 400, 0)));

    // The old primary's envelope once more, as a redelivery would bring it: stale, the version stays.
    env.xadd_compact(&stream, &old_key, &old_value).await?;
    wait_acknowledged(&mut env, &stream).await?;
    assert_eq!(key_position(&env, &key).await?, Some(position::mariadb(n + 1, 400, 0)));
    assert_eq!(env.get_json(&key).await?, Some(item(5, "new primary", 3)));

    // Failback: the old primary follows the new one, takes over again, and its next change applies.
    block_in_place(|| {
        pair.replica.replicate_from(&pair.primary)?;
        pair.promote()
    })?;
    proxy.switch_to(pair.primary.port);
    pair.primary.sql(&update("failback", 4))?;
    let back_gtid = pair.primary.gtid_binlog_pos()?;
    assert_eq!(back_gtid, format!("0-1-{}", n + 2));
    let back_place = BinlogPlace { server_id: 1, gtid: &back_gtid, file: "mariadb-bin.000124", pos: 200 };
    let (k, v) = item_envelope(&p, Some(item(5, "new primary", 3)), Some(item(5, "failback", 4)), back_place)?;
    env.xadd_compact(&stream, &k, &v).await?;
    wait_items_equal(&env, &url, 5..=5, WAIT).await?;
    assert_eq!(env.get_json(&key).await?, Some(item(5, "failback", 4)));
    assert_eq!(key_position(&env, &key).await?, Some(position::mariadb(n + 2, 200, 0)));
    let letters = env.dead_letters(&stream).await?;
    ensure!(letters.is_empty(), "dead letters: {letters:?}");

    running.stop().await?;
    env.clear_redis().await
}

/// The marketplace example's Debezium Server file, on this test's `item` table,
/// checking its binlog connection every 500 ms (the default is a minute) so a
/// connection the switch cut is made again at once, to the new primary.
fn debezium_properties(env: &TestEnv) -> Result<std::path::PathBuf> {
    let example = std::fs::read_to_string(repo_root().join(debezium_server::EXAMPLE).join("application.properties"))?;
    let mut lines: Vec<String> = example
        .lines()
        .map(|line| match line.starts_with("debezium.source.table.include.list=") {
            true => "debezium.source.table.include.list=${MARKETPLACE_DATABASE}.item".to_owned(),
            false => line.to_owned(),
        })
        .collect();
    lines.push("debezium.source.connect.keep.alive.interval.ms=500".to_owned());
    let path = env.dir.join("application.properties");
    std::fs::write(&path, lines.join("\n"))?;
    Ok(path)
}

/// How many entries of `stream` server `server_id` wrote to binlog `basename` with its own GTIDs.
async fn streamed(env: &TestEnv, stream: &str, server_id: u64, basename: &str) -> Result<usize> {
    let origin = (server_id, basename.to_owned(), format!("0-{server_id}"));
    Ok(stream_origins(env, stream).await?.get(&origin).copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_server_follows_a_mariadb_failover_and_the_cache_stays_equal_to_the_database() -> Result<()> {
    const IDS: std::ops::RangeInclusive<i64> = 1..=20;
    let mut env = TestEnv::new("failover_my_dbz").await?;
    let p = env.prefix.clone();
    let mut pair = block_in_place(|| MariaDbPair::start(&env.dir.join("pair")))?;
    let proxy = TcpProxy::start(pair.primary.port).await;
    pair.primary.sql(&item_table_sql(&p, IDS))?;
    let url = proxy.url(&format!("{}/{p}", pair.primary.url()));
    let stream = env.stream("item");

    let config = debezium_properties(&env)?;
    let dbz = {
        let (port, prefix, replica) = (proxy.port.to_string(), p.clone(), server_id(&format!("{p}_dbz")));
        tokio::task::spawn_blocking(move || {
            let env = [("MARIADB_PORT", port.as_str()), ("MARIADB_USER", "root"), ("MARKETPLACE_DATABASE", &prefix)];
            DebeziumServer::start(&config, &prefix, replica, REDIS_URL.as_str(), &env)
        })
        .await??
    };
    let runtime = RuntimeToml::new()
        .database("db", &url)
        .cache("main", REDIS_URL.as_str())
        .redis_stream("dbz", REDIS_URL.as_str(), std::slice::from_ref(&stream), &p)
        .build();
    let running = Running::start(env.config(&runtime, &[("items", &item_pipeline(&env, "dbz"))])?).await?;
    let took = wait_items_equal(&env, &url, IDS, WAIT).await?;
    println!(
        "Debezium Server up in {} ms; snapshot in the cache {} ms later",
        dbz.started_in.as_millis(),
        took.as_millis()
    );

    let (stop, commits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writers: Vec<_> = [0, 7]
        .into_iter()
        .map(|first| tokio::spawn(update_rows_until(url.clone(), IDS, first, stop.clone(), commits.clone())))
        .collect();
    wait_until("100 of the old primary's changes streamed", WAIT, || async {
        Ok(streamed(&env, &stream, 1, PRIMARY_BINLOG).await? >= 100)
    })
    .await?;

    // A switchover: writes fenced on the old primary, the replica caught up and promoted, the address moved.
    let mut fence = mysql_async::Conn::new(mysql_async::Opts::from_url(&pair.primary.url())?).await?;
    fence.query_drop("FLUSH TABLES WITH READ LOCK").await?;
    let switch = Instant::now();
    block_in_place(|| pair.promote())?;
    proxy.switch_to(pair.primary.port);
    // The old primary goes away, and the writes its fence held with it.
    block_in_place(|| pair.replica.kill_server());
    drop(fence);
    let at_switch = commits.load(Ordering::SeqCst);
    println!("switched over in {} ms after {at_switch} commits", switch.elapsed().as_millis());

    let followed = wait_until("Debezium streaming 100 of the new primary's changes", WAIT, || async {
        let writing = commits.load(Ordering::SeqCst) >= at_switch + 100;
        Ok(writing && streamed(&env, &stream, 2, REPLICA_BINLOG).await? >= 100)
    })
    .await;
    if let Err(e) = followed {
        let origins = stream_origins(&env, &stream).await?;
        bail!("{e}; entries by origin {origins:?}; Debezium Server's log:\n{}", dbz.log_tail(40));
    }
    println!("Debezium streamed 100 of the new primary's changes {} ms after the switch", switch.elapsed().as_millis());
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for writer in writers {
        errors.extend(writer.await?);
    }
    let took = wait_items_equal(&env, &url, IDS, WAIT).await?;
    println!("every key equal to the new primary {} ms after the last commit", took.as_millis());
    println!("{} commits; the writers went on through {errors:?}", commits.load(Ordering::SeqCst));
    println!("entries by (server_id, binlog, GTID origin): {:?}", stream_origins(&env, &stream).await?);
    for id in IDS {
        let key = format!("{p}:item:{id}");
        let pos = key_position(&env, &key).await?.unwrap_or_default();
        ensure!(pos.starts_with("my:g"), "{key} is versioned by {pos:?}, not by its GTID");
    }
    let letters = env.dead_letters(&stream).await?;
    ensure!(letters.is_empty(), "dead letters: {letters:?}");
    let warnings = dbz.warnings();
    println!("Debezium Server's warnings and errors: {warnings:#?}");
    ensure!(!warnings.iter().any(|l| l.contains(" ERROR ")), "Debezium Server logged errors");

    running.stop().await?;
    drop(dbz);
    env.clear_redis().await
}

/// The gate of a pipeline fed by Debezium decides how to check on its first
/// batch (here: binlog places of server 1, its database's own). A change the
/// old primary wrote, still in the stream when the switch comes, names a place
/// in the old primary's binlog, which the new primary's binlog cannot be
/// compared with: the transaction is there (replicated), so it must not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primarys_change_read_after_the_switch_is_not_held_by_the_visibility_gate() -> Result<()> {
    let mut env = TestEnv::new("failover_my_gate").await?;
    let p = env.prefix.clone();
    // A primary is usually some files further into its binlog than a replica started after it.
    let flush = "FLUSH BINARY LOGS; FLUSH BINARY LOGS; FLUSH BINARY LOGS";
    let (mut pair, proxy, url, stream, runtime) = behind_a_proxy(&env, flush).await?;
    let runtime = runtime.http(0).line("probe_interval = \"100ms\"\nstuck_after = \"1s\"").build();
    let running = Running::start(env.config(&runtime, &[("items", &item_pipeline(&env, "dbz"))])?).await?;
    let update =
        |name: &str, version: i64| format!("UPDATE `{p}`.item SET name = '{name}', version = {version} WHERE id = 5");
    // The envelope of the server's last transaction, at its real binlog place.
    let last_change = |server: &MariaDbServer, before: Value, after: Value| -> Result<(String, String)> {
        let gtid = server.gtid_binlog_pos()?;
        let (file, pos) = server.transaction_place(&gtid)?;
        let place = BinlogPlace { server_id: server.server_id()?, gtid: &gtid, file: &file, pos };
        item_envelope(&p, Some(before), Some(after), place)
    };

    pair.primary.sql(&update("a", 2))?;
    let (k, v) = last_change(&pair.primary, item(5, "row", 1), item(5, "a", 2))?;
    env.xadd_compact(&stream, &k, &v).await?;
    wait_json(&env.redis, &format!("{p}:item:5"), Some(item(5, "a", 2)), WAIT).await?;
    // Committed on the old primary and replicated, not yet read by evercache when the switch comes.
    pair.primary.sql(&update("b", 3))?;
    let late = last_change(&pair.primary, item(5, "a", 2), item(5, "b", 3))?;
    block_in_place(|| pair.promote())?;
    proxy.switch_to(pair.primary.port);
    pair.primary.sql(&update("c", 4))?;
    let new = last_change(&pair.primary, item(5, "b", 3), item(5, "c", 4))?;
    for (k, v) in [late, new] {
        env.xadd_compact(&stream, &k, &v).await?;
    }
    if let Err(e) = wait_items_equal(&env, &url, 5..=5, WAIT).await {
        let (_, ready) = evercache_e2e::http::get(running.http.context("no [http] listener")?, "/ready").await?;
        bail!("{e}\n/ready: {ready}");
    }
    running.stop().await?;
    env.clear_redis().await
}

/// MySQL's UUID GTIDs give no order across servers, so MySQL-connector changes
/// rank by binlog place: after a failover the new server's first change ranks
/// below the old one's and is dropped. The pipeline says so (log, metric, the
/// status page's last error) with what to run, instead of freezing the key unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_ranked_changes_from_another_server_are_reported() -> Result<()> {
    let mut env = TestEnv::new("failover_mysql_rank").await?;
    let p = env.prefix.clone();
    let mut conn = mysql_async::Conn::from_url(evercache_test_kit::MYSQL_URL).await?;
    mysql_async::prelude::Queryable::query_drop(&mut conn, item_table_sql(&p, 5..=5)).await?;
    let url = format!("{}/{p}", evercache_test_kit::MYSQL_URL);
    let stream = env.stream("item");
    let runtime = RuntimeToml::new()
        .database("db", &url)
        .cache("main", REDIS_URL.as_str())
        .redis_stream("dbz", REDIS_URL.as_str(), std::slice::from_ref(&stream), &p)
        .http(0)
        .build();
    let running = Running::start(env.config(&runtime, &[("items", &item_pipeline(&env, "dbz"))])?).await?;
    let http = running.http.context("an http listener")?;
    let uuid = |n: u64, server: u32| format!("3e11fa47-71ca-11e1-9e33-c80aa942956{server}:{n}");
    let (old_gtid, new_gtid) = (uuid(40, 1), uuid(1, 2));
    let old = BinlogPlace { server_id: 1, gtid: &old_gtid, file: "mysql-bin.000123", pos: 1000 };
    let (k, v) = item_envelope(&p, Some(item(5, "row", 1)), Some(item(5, "row", 1)), old)?;
    env.xadd_compact(&stream, &k, &v).await?;
    let new = BinlogPlace { server_id: 2, gtid: &new_gtid, file: "mysql-bin.000002", pos: 400 };
    let (k, v) = item_envelope(&p, Some(item(5, "row", 1)), Some(item(5, "row", 1)), new)?;
    env.xadd_compact(&stream, &k, &v).await?;
    wait_acknowledged(&mut env, &stream).await?;
    let (_, metrics) = evercache_e2e::http::get(http, "/metrics").await?;
    let changes =
        evercache_e2e::http::sample(&metrics, "evercache_binlog_server_changes_total", &[("pipeline", "items")]);
    ensure!(changes == Some(1.0), "one change of server counted: {changes:?}");
    running.stop().await?;
    mysql_async::prelude::Queryable::query_drop(&mut conn, format!("DROP DATABASE `{p}`")).await?;
    env.clear_redis().await
}
