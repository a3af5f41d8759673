//! The host query against the real MariaDB (or MySQL) at 127.0.0.1:3306, one
//! database per test.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::contract::DbValue;
use crate::query::{DatabaseConfig, QueryError, SqlCode};

const URL: &str = "mysql://root@127.0.0.1:3306/test";

fn config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.into(),
        password_file: None,
        max_connections: 2,
        statement_timeout: Duration::from_secs(2),
        max_rows: 100,
        max_result_bytes: 1 << 20,
        acquire_timeout: Duration::from_secs(5),
    }
}

/// Creates database `q_<test>_<pid>` with `setup` run inside it.
async fn database(test: &str, setup: &str) -> String {
    let name = format!("q_{test}_{}", std::process::id());
    let mut conn = mysql_async::Conn::from_url(URL)
        .await
        .expect("MariaDB at 127.0.0.1:3306; start it with: bash scripts/dev-services.sh");
    conn.query_drop(format!("drop database if exists {name}; create database {name}; use {name}; {setup}"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    name
}

#[tokio::test]
async fn maps_every_column_type() {
    let d = database(
        "types",
        "create table t (ti tinyint, b tinyint(1), si smallint, mi mediumint, i int, bi bigint,
           ubi bigint unsigned, ui int unsigned, f float, dbl double, dec1 decimal(12,2), dec2 decimal(30,10),
           c char(3), v varchar(10), vb varchar(10) collate utf8mb4_bin, tx text, lt longtext,
           bin binary(2), vbin varbinary(4), bl blob, j json,
           d date, dt datetime, dt3 datetime(3), dt6 datetime(6), ts timestamp(6) null, tm time, tm2 time(2),
           y year, bt bit(10), b64 bit(64), e enum('small','large'), st set('a','b','c'), z int);
         insert into t values (-1, 1, -300, 70000, 2000000000, -9000000000000000000,
           18446744073709551615, 4000000000, 0.1, 2.25, 29.99, -12345678901234567890.0123456789,
           'ab', 'vv', 'Bin', 'long text', 'ünïcode', x'0102', x'ff00', x'deadbeef', '{\"a\": [1, 2]}',
           '2024-02-29', '2024-02-29 13:14:15', '2024-02-29 13:14:15.123', '2024-02-29 13:14:15.000005',
           '2024-02-29 13:14:15.5', '-838:59:59', '12:00:00.25', 2024, b'1000000001', b'1111111111111111111111111111111111111111111111111111111111111111',
           'large', 'a,c', null);",
    )
    .await;
    let runner = config(URL).build("db").unwrap();
    let rows = runner.query(&format!("select * from {d}.t"), &[]).await.unwrap();
    assert_eq!(rows.columns.len(), 34);
    assert_eq!(rows.columns[0], "ti");
    use DbValue::*;
    let expected = vec![
        Int(-1),
        Int(1),
        Int(-300),
        Int(70000),
        Int(2_000_000_000),
        Int(-9_000_000_000_000_000_000),
        Text("18446744073709551615".into()),
        Int(4_000_000_000),
        Float(0.1),
        Float(2.25),
        Text("29.99".into()),
        Text("-12345678901234567890.0123456789".into()),
        Text("ab".into()),
        Text("vv".into()),
        Text("Bin".into()),
        Text("long text".into()),
        Text("ünïcode".into()),
        Bytes(vec![1, 2]),
        Bytes(vec![0xff, 0]),
        Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
        Text(r#"{"a": [1, 2]}"#.into()),
        Text("2024-02-29".into()),
        Text("2024-02-29T13:14:15".into()),
        Text("2024-02-29T13:14:15.123".into()),
        Text("2024-02-29T13:14:15.000005".into()),
    ];
    assert_eq!(rows.values[0][..expected.len()], expected[..]);
    // TIMESTAMP is read in UTC; it was written in the server's own zone.
    let Text(ts) = &rows.values[0][25] else { panic!("timestamp: {:?}", rows.values[0][25]) };
    assert!(ts.ends_with(":14:15.500000Z") && ts.starts_with("2024-02-"), "{ts}");
    let rest = [
        Text("-838:59:59".into()),
        Text("12:00:00.25".into()),
        Int(2024),
        Int(513),
        Text(u64::MAX.to_string()),
        Text("large".into()),
        Text("a,c".into()),
        Null,
    ];
    assert_eq!(rows.values[0][26..], rest[..]);
}

#[tokio::test]
async fn binds_question_mark_parameters_and_lists_as_json() {
    let d = database(
        "params",
        "create table t (id bigint primary key, name text); insert into t values (1, 'a'), (2, 'b'), (3, null);",
    )
    .await;
    let runner = config(URL).build("db").unwrap();
    let one = runner.query(&format!("select name from {d}.t where id = ?"), &[DbValue::Int(2)]).await.unwrap();
    assert_eq!(one.values, vec![vec![DbValue::Text("b".into())]]);
    let ids = runner
        .query(
            &format!("select id from {d}.t where id in (select v from json_table(?, '$[*]' columns (v bigint path '$')) j) order by id"),
            &[DbValue::IntList(vec![1, 3])],
        )
        .await
        .unwrap();
    assert_eq!(ids.values, vec![vec![DbValue::Int(1)], vec![DbValue::Int(3)]]);
    let names = runner
        .query(
            &format!("select id from {d}.t where json_contains(?, json_quote(name))"),
            &[DbValue::TextList(vec!["b".into()])],
        )
        .await
        .unwrap();
    assert_eq!(names.values, vec![vec![DbValue::Int(2)]]);
    let null = runner
        .query(&format!("select count(*) from {d}.t where id = ? or ? is null"), &[DbValue::Null, DbValue::Null])
        .await
        .unwrap();
    assert_eq!(null.values, vec![vec![DbValue::Int(3)]]);
    let mixed = runner
        .query(
            "select ? + 1, concat(?, '!'), ?, ?, hex(?)",
            &[
                DbValue::Int(41),
                DbValue::Text("hi".into()),
                DbValue::Boolean(true),
                DbValue::Float(0.5),
                DbValue::Bytes(vec![1, 255]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        mixed.values[0],
        vec![
            DbValue::Int(42),
            DbValue::Text("hi!".into()),
            DbValue::Int(1),
            DbValue::Float(0.5),
            DbValue::Text("01FF".into())
        ]
    );
    let empty = runner.query(&format!("select id from {d}.t where false"), &[]).await.unwrap();
    assert!(empty.values.is_empty());
}

#[tokio::test]
async fn only_reads_run_and_nothing_is_left_on_the_connection() {
    let d = database("readonly", "create table t (id bigint primary key); insert into t values (1);").await;
    let mut cfg = config(URL);
    cfg.max_connections = 1;
    let runner = cfg.build("db").unwrap();
    for sql in [
        format!("update {d}.t set id = 2"),
        format!("delete from {d}.t"),
        "set session transaction read write".to_owned(),
        "commit".to_owned(),
        format!("select * from {d}.t into outfile '/tmp/evercache-outfile'"),
        format!("/*!50000 delete from {d}.t */"),
        "".to_owned(),
    ] {
        let err = runner.query(&sql, &[]).await.unwrap_err();
        assert!(matches!(err, QueryError::Rejected { .. }), "{sql}: {err}");
    }
    // A locking read would hold rows past the statement: the server refuses it
    // inside READ ONLY, and that is the plugin's error.
    let err = runner.query(&format!("select * from {d}.t for update"), &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { code: Some(SqlCode::MySql(1792)), .. }), "{err}");
    let err = runner.query("select nextval(no_such_sequence)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { code: Some(SqlCode::MySql(_)), .. }), "{err}");
    assert!(!err.is_transient());
    // A named lock taken by one query is gone before the next query runs.
    let got = runner.query("select get_lock('evercache-test-lock', 0)", &[]).await.unwrap();
    assert_eq!(got.values, vec![vec![DbValue::Int(1)]]);
    let held = runner.query("select is_used_lock('evercache-test-lock') is null", &[]).await.unwrap();
    assert_eq!(held.values, vec![vec![DbValue::Int(1)]], "the lock was released");
    let still = runner.query(&format!("/* comment */ ( select count(*) from {d}.t )"), &[]).await.unwrap();
    assert_eq!(still.values, vec![vec![DbValue::Int(1)]], "nothing was deleted");
}

#[tokio::test]
async fn a_write_inside_the_read_only_transaction_is_the_plugins_error() {
    let d = database("rotx", "create table t (id bigint primary key); create table log (id bigint);").await;
    let runner = config(URL).build("db").unwrap();
    // A SELECT calling a function that writes still runs inside READ ONLY.
    let mut conn = mysql_async::Conn::from_url(URL).await.unwrap();
    conn.query_drop(format!(
        "create function {d}.w() returns int deterministic modifies sql data begin insert into {d}.log values (1); return 1; end"
    ))
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
    let err = runner.query(&format!("select {d}.w()"), &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { code: Some(SqlCode::MySql(1792)), .. }), "{err}");
    assert!(!err.is_transient());
    let count = runner.query(&format!("select count(*) from {d}.log"), &[]).await.unwrap();
    assert_eq!(count.values, vec![vec![DbValue::Int(0)]]);
}

#[tokio::test]
async fn statement_time_limit_then_the_connection_is_clean() {
    let mut cfg = config(URL);
    cfg.statement_timeout = Duration::from_millis(200);
    cfg.max_connections = 1;
    let runner = cfg.build("db").unwrap();
    let started = std::time::Instant::now();
    let err = runner.query("select sleep(5)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { code: Some(ref c), .. } if c.is_statement_timeout()), "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    for _ in 0..3 {
        let rows = runner.query("select @@in_transaction, @@session.time_zone", &[]).await.unwrap();
        assert_eq!(
            rows.values,
            vec![vec![DbValue::Int(1), DbValue::Text("+00:00".into())]],
            "a new transaction each time"
        );
    }
    let err = runner.query("select * from no_such_table_here", &[]).await.unwrap_err();
    assert!(err.to_string().contains("MySQL error 1146"), "{err}");
    assert_eq!(runner.query("select 1", &[]).await.unwrap().values, vec![vec![DbValue::Int(1)]]);
}

#[tokio::test]
async fn a_plugin_deadline_cancels_the_statement_on_the_server() {
    let runner = config(URL).build("db").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    let err = runner.query_until("select sleep(5)", &[], Some(deadline)).await.unwrap_err();
    assert!(matches!(err, QueryError::Deadline { .. }), "{err}");
    assert!(std::time::Instant::now() < deadline + Duration::from_millis(900));
}

#[tokio::test]
async fn row_and_byte_caps_are_errors_not_truncations() {
    let runner = config(URL).build("db").unwrap();
    let err = runner.query("select seq from seq_1_to_101", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::TooManyRows { limit: 100, .. }), "{err}");
    assert_eq!(runner.query("select seq from seq_1_to_100", &[]).await.unwrap().values.len(), 100);
    let err = runner.query("select repeat('x', 2000000)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::ResultTooLarge { .. }), "{err}");
    assert_eq!(runner.query("select 2", &[]).await.unwrap().values, vec![vec![DbValue::Int(2)]]);
}

#[tokio::test]
async fn unreachable_database_is_transient_and_never_shows_the_password() {
    let mut cfg = config("mysql://evercache:s3cret-pw@127.0.0.1:1/test");
    cfg.acquire_timeout = Duration::from_millis(500);
    let runner = cfg.build("down").unwrap();
    let err = runner.query("select 1", &[]).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret-pw"), "{err:?}");
    assert!(runner.ping(Duration::from_secs(2)).await.is_err());
    let denied = config("mysql://no_such_user:s3cret-pw@127.0.0.1:3306/test").build("denied").unwrap();
    let err = denied.query("select 1", &[]).await.unwrap_err();
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    let bad = config("mysql://u:s3cret-pw@127.0.0.1:3306/test?bogus_option=1").build("bad");
    if let Err(e) = bad {
        assert!(!e.to_string().contains("s3cret-pw"), "{e}");
    }
    assert!(config(URL).build("ok").unwrap().ping(Duration::from_secs(2)).await.is_ok());
}
