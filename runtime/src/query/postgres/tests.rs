//! The host query against the real Postgres at 127.0.0.1:5432, one schema per test.

use std::time::Duration;

use sqlx::PgPool;

use crate::contract::DbValue;
use crate::query::{DatabaseConfig, QueryError, SqlCode};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

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

/// Creates schema `q_<test>_<pid>` with `setup` run inside it.
async fn schema(test: &str, setup: &str) -> String {
    let name = format!("q_{test}_{}", std::process::id());
    let pool =
        PgPool::connect(URL).await.expect("Postgres at 127.0.0.1:5432; start it with: bash scripts/dev-services.sh");
    sqlx::raw_sql(&format!(
        "drop schema if exists {name} cascade; create schema {name}; set search_path to {name}; {setup}"
    ))
    .execute(&pool)
    .await
    .unwrap();
    name
}

#[tokio::test]
async fn maps_every_common_type() {
    let s = schema(
        "types",
        "create type mood as enum ('happy', 'sad');
         create table t (i2 smallint, i4 int, i8 bigint, f4 real, f8 double precision, n numeric(12,2), nn numeric,
           b boolean, t text, v varchar(5), c char(3), u uuid, d date, tm time, ts timestamp, tz timestamptz,
           j json, jb jsonb, by bytea, ia int[], ba bigint[], ta text[], m mood, z int);
         insert into t values (1, 2, 3, 1.5, 2.25, 29.99, 1.000, true, 'x', 'vv', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '2024-02-29', '13:14:15.5', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15+02',
           '{\"a\": 1}', '{\"b\": [1, 2]}', '\\x0102', '{1,2}', '{3}', '{p,q}', 'sad', null);",
    )
    .await;
    let runner = config(URL).build("db").unwrap();
    let rows = runner.query(&format!("select * from {s}.t"), &[]).await.unwrap();
    assert_eq!(rows.columns.len(), 24);
    assert_eq!(rows.columns[0], "i2");
    use DbValue::*;
    let expected = vec![
        Int(1),
        Int(2),
        Int(3),
        Float(1.5),
        Float(2.25),
        Text("29.99".into()),
        Text("1.000".into()),
        Boolean(true),
        Text("x".into()),
        Text("vv".into()),
        Text("ab ".into()),
        Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        Text("2024-02-29".into()),
        Text("13:14:15.500".into()),
        Text("2024-02-29T13:14:15.123456".into()),
        Text("2024-02-29T11:14:15Z".into()),
        Text(r#"{"a":1}"#.into()),
        Text(r#"{"b":[1,2]}"#.into()),
        Bytes(vec![1, 2]),
        IntList(vec![1, 2]),
        IntList(vec![3]),
        TextList(vec!["p".into(), "q".into()]),
        Text("sad".into()),
        Null,
    ];
    assert_eq!(rows.values, vec![expected]);
    let numbers = runner
        .query("select 0::numeric, -12345.6789::numeric(12,4), 0.00012::numeric, 10000::numeric, 'NaN'::numeric, 123456789012345678901234567890.5::numeric", &[])
        .await
        .unwrap();
    let texts: Vec<DbValue> = ["0", "-12345.6789", "0.00012", "10000", "NaN", "123456789012345678901234567890.5"]
        .iter()
        .map(|t| Text((*t).into()))
        .collect();
    assert_eq!(numbers.values[0], texts);
}

#[tokio::test]
async fn binds_parameters_including_lists_and_untyped_null() {
    let s = schema(
        "params",
        "create table t (id bigint primary key, name text); insert into t values (1, 'a'), (2, 'b'), (3, null);",
    )
    .await;
    let runner = config(URL).build("db").unwrap();
    let ids = runner
        .query(&format!("select id from {s}.t where id = any($1) order by id"), &[DbValue::IntList(vec![1, 3])])
        .await
        .unwrap();
    assert_eq!(ids.values, vec![vec![DbValue::Int(1)], vec![DbValue::Int(3)]]);
    let names = runner
        .query(&format!("select id from {s}.t where name = any($1)"), &[DbValue::TextList(vec!["b".into()])])
        .await
        .unwrap();
    assert_eq!(names.values, vec![vec![DbValue::Int(2)]]);
    let null = runner
        .query(&format!("select count(*) from {s}.t where id = $1 or $1 is null"), &[DbValue::Null])
        .await
        .unwrap();
    assert_eq!(null.values, vec![vec![DbValue::Int(3)]]);
    let mixed = runner
        .query(
            "select $1::int + 1, $2 || '!', $3, $4",
            &[DbValue::Int(41), DbValue::Text("hi".into()), DbValue::Boolean(false), DbValue::Float(0.5)],
        )
        .await
        .unwrap();
    assert_eq!(
        mixed.values[0],
        vec![DbValue::Int(42), DbValue::Text("hi!".into()), DbValue::Boolean(false), DbValue::Float(0.5)]
    );
    let empty = runner.query(&format!("select id from {s}.t where false"), &[]).await.unwrap();
    assert!(empty.values.is_empty());
}

#[tokio::test]
async fn only_reads_run() {
    let s = schema("readonly", "create table t (id bigint primary key); insert into t values (1);").await;
    let runner = config(URL).build("db").unwrap();
    for sql in [
        format!("update {s}.t set id = 2"),
        format!("delete from {s}.t"),
        "set default_transaction_read_only = off".to_owned(),
        "commit".to_owned(),
        format!("create table {s}.u (id int)"),
        "".to_owned(),
    ] {
        let err = runner.query(&sql, &[]).await.unwrap_err();
        assert!(matches!(err, QueryError::Rejected { .. }), "{sql}: {err}");
    }
    let err =
        runner.query(&format!("with x as (delete from {s}.t returning *) select * from x"), &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { code: Some(SqlCode::SqlState(ref c)), .. } if c == "25006"), "{err}");
    assert!(!err.is_transient());
    let err = runner.query("select set_config('transaction_read_only', 'off', true)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { .. }), "{err}");
    let still = runner.query(&format!("/* comment */ ( select count(*) from {s}.t )"), &[]).await.unwrap();
    assert_eq!(still.values, vec![vec![DbValue::Int(1)]], "nothing was deleted");
}

#[tokio::test]
async fn statement_timeout_then_the_connection_is_clean() {
    let mut cfg = config(URL);
    cfg.statement_timeout = Duration::from_millis(100);
    cfg.max_connections = 1;
    let runner = cfg.build("db").unwrap();
    let err = runner.query("select pg_sleep(1)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Sql { code: Some(SqlCode::SqlState(ref c)), .. } if c == "57014"), "{err}");
    for _ in 0..3 {
        let rows = runner.query("select current_setting('transaction_read_only')", &[]).await.unwrap();
        assert_eq!(rows.values, vec![vec![DbValue::Text("on".into())]]);
    }
    let err = runner.query("select 1/0", &[]).await.unwrap_err();
    assert!(err.to_string().contains("22012"), "{err}");
    assert_eq!(runner.query("select 1", &[]).await.unwrap().values, vec![vec![DbValue::Int(1)]]);
}

#[tokio::test]
async fn row_and_byte_caps_are_errors_not_truncations() {
    let runner = config(URL).build("db").unwrap();
    let err = runner.query("select generate_series(1, 101)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::TooManyRows { limit: 100, .. }), "{err}");
    assert_eq!(runner.query("select generate_series(1, 100)", &[]).await.unwrap().values.len(), 100);
    let err = runner.query("select repeat('x', 2000000)", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::ResultTooLarge { .. }), "{err}");
    let err = runner.query("select point(1, 2) as p", &[]).await.unwrap_err();
    assert!(err.to_string().contains("p::text"), "{err}");
}

#[tokio::test]
async fn unreachable_database_is_transient_and_never_shows_the_password() {
    let mut cfg = config("postgres://evercache:s3cret-pw@127.0.0.1:1/test");
    cfg.acquire_timeout = Duration::from_millis(500);
    let runner = cfg.build("down").unwrap();
    let err = runner.query("select 1", &[]).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret-pw"), "{err:?}");
    assert!(runner.ping(Duration::from_secs(2)).await.is_err());
    let bad = config("postgres://u:s3cret-pw@127.0.0.1:5432/test?sslmode=bogus").build("bad");
    if let Err(e) = bad {
        assert!(!e.to_string().contains("s3cret-pw"), "{e}");
    }
}
