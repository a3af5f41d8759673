use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::{Awaited, BinlogPosition, Check, VisibilityGate, executed, visible_at};
use crate::source::SourceError;

const URL: &str = "mysql://root@127.0.0.1:3306";

fn at(pos: u64, gtid: Option<&str>) -> BinlogPosition {
    BinlogPosition { file: "mariadb-bin.000002".to_owned(), pos, gtid: gtid.map(str::to_owned), gtids: None }
}

#[test]
fn a_batch_awaits_its_last_change_and_every_mysql_gtid_it_has() {
    let mut awaited = None;
    for (pos, gtid) in [
        (10, "3e11fa47-71ca-11e1-9e33-c80aa9429562:7"),
        (20, "3e11fa47-71ca-11e1-9e33-c80aa9429562:1"),
        (30, "3e11fa47-71ca-11e1-9e33-c80aa9429562:2"),
        (35, "3e11fa47-71ca-11e1-9e33-c80aa9429562:2"),
        (40, "3e11fa47-71ca-11e1-9e33-c80aa9429562:3"),
        (50, "0a0a0a0a-0000-0000-0000-000000000000:4"),
    ] {
        awaited = Some(Awaited::extend(awaited, at(pos, Some(gtid))));
    }
    let awaited = awaited.unwrap();
    assert_eq!(awaited.last, at(50, Some("0a0a0a0a-0000-0000-0000-000000000000:4")));
    assert_eq!(awaited.gtid_set(), "0a0a0a0a-0000-0000-0000-000000000000:4,3e11fa47-71ca-11e1-9e33-c80aa9429562:1-3:7");
    // MariaDB's GTIDs are not MySQL's: its check goes by position.
    let maria = Awaited::extend(Some(Awaited::extend(None, at(5, Some("0-1-41")))), at(9, None));
    assert_eq!((maria.gtid_set(), maria.last), (String::new(), at(9, None)));
}

#[test]
fn gtid_subset_answers_visible_only_when_every_gtid_is_executed() {
    assert_eq!(executed(Some(1)), Ok(true));
    assert_eq!(executed(Some(0)), Ok(false));
    assert!(executed(None).is_err(), "a NULL answer is no answer");
}

#[test]
fn the_snapshot_position_is_read_from_the_status_rows() {
    let row = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    let status = [row("Binlog_snapshot_file", "mariadb-bin.000002"), row("Binlog_snapshot_position", "899")];
    assert_eq!(visible_at(&status), Some(at(899, None)));
    assert_eq!(visible_at(&status[..1]), None);
}

async fn master_position(conn: &mut Conn) -> BinlogPosition {
    let (file, pos): (String, u64) = conn
        .query_first("show master status")
        .await
        .unwrap()
        .map(|row: mysql_async::Row| (row.get(0).unwrap(), row.get(1).unwrap()))
        .unwrap();
    BinlogPosition { file, pos, gtid: Some("0-1-77".to_owned()), gtids: None }
}

#[tokio::test]
async fn a_commit_not_yet_visible_is_waited_for_until_the_deadline_and_the_connection_kept() {
    let opts = Opts::from_url(URL).unwrap();
    let mut conn = Conn::new(opts.clone()).await.expect("MariaDB at 127.0.0.1:3306 with its binlog on");
    let committed = master_position(&mut conn).await;
    let mut gate = VisibilityGate::new("test", opts);
    let started = Instant::now();
    let visible = gate.visible_by(&Awaited::extend(None, committed.clone()), started, started).await.unwrap();
    assert!(visible && started.elapsed() < Duration::from_secs(1), "a visible commit passes at once");
    assert_eq!(gate.check, Some(Check::SnapshotPosition));

    // A commit the server has not made visible (here: not written yet) is not
    // visible by the deadline: an answer, not an error, and the connection stays.
    let ahead = BinlogPosition { pos: committed.pos + 1_000_000_000, ..committed };
    let awaited = Awaited::extend(None, ahead.clone());
    let started = Instant::now();
    let visible = gate.visible_by(&awaited, started, started + Duration::from_millis(300)).await.unwrap();
    assert!(!visible);
    assert!(started.elapsed() >= Duration::from_millis(300), "waited until the deadline");
    assert!(gate.conn.is_some(), "the connection is kept for the next wait");
    let error = gate.not_visible(&ahead, 3, Duration::from_millis(2500));
    assert_eq!(error.kind(), "not_visible");
    let message = error.to_string();
    for part in
        [&format!("{}:{}", ahead.file, ahead.pos), "GTID 0-1-77", "2.5s", "a new snapshot stands at", "3 change"]
    {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn a_check_that_cannot_be_made_is_an_error_not_a_pass() {
    let closed = evercache_test_kit::free_port();
    let opts = Opts::from_url(&format!("mysql://root@127.0.0.1:{closed}")).unwrap();
    let mut gate = VisibilityGate::new("test", opts);
    let awaited = Awaited::extend(None, at(4, None));
    let now = Instant::now();
    let error = gate.visible_by(&awaited, now, now + Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, SourceError::Unavailable { operation: "visibility check", .. }), "{error}");

    // MySQL's check on a server without GTID_SUBSET fails the same way, and
    // the connection is dropped so the next check starts afresh.
    let mut gate = VisibilityGate::new("test", Opts::from_url(URL).unwrap());
    gate.check = Some(Check::ExecutedGtids);
    let none = Awaited::extend(None, at(4, None));
    assert!(gate.visible_by(&none, now, now).await.unwrap(), "no GTID: nothing the server can answer for");
    let mysql = Awaited::extend(None, at(4, Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:5")));
    let error = gate.visible_by(&mysql, now, now + Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, SourceError::Unavailable { .. }) && gate.conn.is_none(), "{error}");
}
