//! The hold on a real capture of the local MariaDB (127.0.0.1:3306) and Redis
//! (127.0.0.1:6379). A commit cannot be kept invisible on the shared server, so
//! the batch is held on a position the server has not reached; the live
//! test `tests/tests/visibility_mariadb.rs` holds a real one (semi-sync).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::Held;
use crate::source::mysql::visibility::{Awaited, VisibilityGate};
use crate::source::mysql::{BinlogPosition, MySqlCapture, MySqlCaptureConfig};
use crate::source::{SourceError, SourceRecord};

const SERVER: &str = "mysql://root@127.0.0.1:3306";

async fn capture(database: &str, server_id: u32, extra: &str) -> MySqlCapture {
    let mut conn = Conn::new(Opts::from_url(SERVER).unwrap()).await.expect("MariaDB at 127.0.0.1:3306");
    conn.query_drop(format!(
        "drop database if exists {database}; create database {database}; \
         create table {database}.item (id bigint primary key, name text)"
    ))
    .await
    .unwrap();
    let config: MySqlCaptureConfig = toml::from_str(&format!(
        "url = \"{SERVER}/{database}\"\ntables = [\"{database}.item\"]\nserver_id = {server_id}\n\
         snapshot = \"never\"\nposition_key = \"{database}:binlog\"\n\
         dead_letter_url = \"redis://127.0.0.1:6379\"\n{extra}"
    ))
    .unwrap();
    config.build("held").await.expect("a capture (Redis at 127.0.0.1:6379)")
}

async fn sql(statements: &str) {
    let mut conn = Conn::new(Opts::from_url(SERVER).unwrap()).await.unwrap();
    conn.query_drop(statements).await.unwrap();
}

/// Drops the test's database and its capture's position key.
async fn clean_up(mut capture: MySqlCapture, database: &str) {
    capture.shutdown().await;
    sql(&format!("drop database {database}")).await;
    let mut redis =
        redis::Client::open("redis://127.0.0.1:6379").unwrap().get_multiplexed_async_connection().await.unwrap();
    redis::cmd("DEL").arg(format!("{database}:binlog")).query_async::<()>(&mut redis).await.unwrap();
}

/// The next batch of the binlog that has records, read as the capture reads it, unchecked.
async fn read(capture: &mut MySqlCapture) -> (Vec<SourceRecord>, Option<BinlogPosition>, Awaited) {
    for _ in 0..10 {
        let (records, awaited) = capture.stream_batch(Duration::from_secs(1)).await.unwrap();
        if let Some(awaited) = awaited {
            return (records, capture.unconfirmed.take(), awaited);
        }
    }
    panic!("no change read");
}

#[tokio::test]
async fn a_held_batch_is_reported_and_kept_then_handed_on_once_without_reading_it_again() {
    let database = format!("held_{}", std::process::id());
    let mut capture = capture(&database, 30_000 + std::process::id() % 100_000, "").await;
    sql(&format!("insert into {database}.item values (1, 'one')")).await;
    let (records, position, visible) = read(&mut capture).await;
    assert_eq!(records.len(), 1);
    // Held on a commit the server has not reached, as if its engine commit waited.
    let ahead = BinlogPosition { pos: visible.last.pos + 1_000_000_000, ..visible.last.clone() };
    let commit = position.clone().expect("the batch ends at a commit").to_string();
    capture.held = Some(Held::new(records.clone(), position, Awaited::extend(None, ahead)));

    // A read ahead gives up soon with nothing, so what was gathered goes on.
    let started = Instant::now();
    assert!(capture.read_more().await.unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(1) && capture.held.is_some());

    // A read says so at REPORT_AFTER, and keeps the batch; the next waits on it again.
    for report in 1..=2 {
        let started = Instant::now();
        let error = capture.next_batch().await.unwrap_err();
        assert!(matches!(error, SourceError::NotVisible { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("not yet visible") && message.contains(&commit), "{commit} not in: {message}");
        assert!(started.elapsed() >= Duration::from_millis(if report == 1 { 1500 } else { 1900 }));
        let held = capture.held.as_ref().expect("still held");
        assert!(held.stalled && held.records == records, "the same batch, counted as stalled");
    }

    // Once visible it is handed on as it was read, and not read again.
    capture.held.as_mut().unwrap().awaited = visible;
    let started = Instant::now();
    assert_eq!(capture.next_batch().await.unwrap(), records);
    assert!(started.elapsed() < Duration::from_millis(500) && capture.held.is_none());
    assert!(capture.next_batch().await.unwrap().is_empty(), "nothing read twice");
    clean_up(capture, &database).await;
}

#[tokio::test]
async fn with_visibility_off_a_batch_is_handed_on_unchecked() {
    let database = format!("held_off_{}", std::process::id());
    let mut capture = capture(&database, 31_000 + std::process::id() % 100_000, "visibility = \"off\"").await;
    assert!(capture.visibility.is_none());
    sql(&format!("insert into {database}.item values (1, 'one')")).await;
    let mut records = Vec::new();
    for _ in 0..10 {
        records = capture.next_batch().await.unwrap();
        if !records.is_empty() {
            break;
        }
    }
    assert_eq!(records.len(), 1);
    assert!(capture.held.is_none());
    clean_up(capture, &database).await;
}

#[tokio::test]
async fn a_check_that_cannot_be_made_fails_the_read_and_the_batch_is_read_again() {
    let database = format!("held_down_{}", std::process::id());
    let mut capture = capture(&database, 32_000 + std::process::id() % 100_000, "").await;
    sql(&format!("insert into {database}.item values (1, 'one')")).await;
    let (records, position, awaited) = read(&mut capture).await;
    capture.held = Some(Held::new(records.clone(), position, awaited));
    let closed = evercache_test_kit::free_port();
    capture.visibility =
        Some(VisibilityGate::new("held", Opts::from_url(&format!("mysql://root@127.0.0.1:{closed}")).unwrap()));
    let error = capture.next_batch().await.unwrap_err();
    assert!(matches!(error, SourceError::Unavailable { operation: "visibility check", .. }), "{error}");
    assert!(capture.held.is_none(), "dropped, as when the binlog connection is lost");

    // With the server answering again, the binlog sends the batch again.
    capture.visibility = Some(VisibilityGate::new("held", Opts::from_url(SERVER).unwrap()));
    let mut again = Vec::new();
    for _ in 0..10 {
        again = capture.next_batch().await.unwrap();
        if !again.is_empty() {
            break;
        }
    }
    // Nothing was held, so this is the same change read again from the binlog.
    let ids = |records: &[SourceRecord]| records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&records));
    clean_up(capture, &database).await;
}
