//! Rows inserted into the local MariaDB are read back twice, from the binlog
//! and with `SELECT *`, and `render_query_row` must render them exactly as
//! `render_row` renders the inserts' after images.

use std::time::Duration;

use crate::source::mysql::query_values::render_query_row;
use crate::source::mysql::values::{RenderedRow, render_row};
use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::prelude::*;
use mysql_async::{BinlogStreamRequest, Conn, Opts, Row};
use serde_json::json;

use super::{COLUMNS, ROW_A, ROW_B, URL};

/// Zero-ish values: zeros that are not NULL, the Unix epoch, empty strings and
/// bytes, all-zero BINARY, CHAR trailing spaces, cp1252 bytes in latin1.
const ROW_C: &str = "(3, 1901, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0.00, -0.0000000001,
    'x  ', '', '', _latin1 x'80819f20', x'00000000', x'', x'',
    '1970-01-01', '1970-01-01 00:00:00', '0000-00-00 00:00:00.000', '1970-01-01 00:00:00.000001',
    '1970-01-01 00:00:01', '1970-01-01 00:00:01.0', '2024-01-01 00:00:00.000000',
    '-00:00:01', '00:00:00.000001', 'small', 'a,b,c,d', b'0', b'0',
    '[]', ST_GeomFromText('LINESTRING(0 0, 1 1)'), 1)";

/// Range ends: signed maxima, unsigned values past the signed range, the
/// largest TIME and DATETIME, the last 32-bit TIMESTAMP, a partly-zero date.
const ROW_D: &str = "(4, 2155, 127, 128, -1, 2, 32767, 32768, 8388607, 8388608,
    2147483647, 2147483648, 9223372036854775807, 9223372036854775808,
    3.4e38, 1.7976931348623157e308, -99999999.99, 99999999999999999999.9999999999,
    'abcde', 'z', 'ÿ', 'ÿ€', x'00000001', x'0000', x'00',
    '2024-02-00', '9999-12-31 23:59:59', '1000-01-01 00:00:00.001', '9999-12-31 23:59:59.999999',
    '2038-01-19 03:14:07', '2038-01-19 03:14:07.9', '1970-01-01 00:00:01.000001',
    '838:59:59', '-838:59:59.999999', 'medium', 'd,a', b'1', b'1111111111',
    '{\"z\": 1, \"a\": \"é\"}', NULL, 1)";

fn key_columns() -> Vec<String> {
    vec!["id".to_string(), "tenant".to_string()]
}

/// The after images of the first `count` inserts into `database` from `file:pos` on.
async fn read_inserts(file: String, pos: u64, database: String, server_id: u32, count: usize) -> Vec<RenderedRow> {
    let conn = Conn::new(Opts::from_url(URL).unwrap()).await.unwrap();
    let request = BinlogStreamRequest::new(server_id).with_filename(file.as_bytes()).with_pos(pos);
    let mut stream = conn.get_binlog_stream(request).await.unwrap();
    let mut inserted = Vec::new();
    while inserted.len() < count {
        let event = stream.next().await.expect("binlog stream ended").unwrap();
        let Some(EventData::RowsEvent(rows_event)) = event.read_data().unwrap() else { continue };
        let tme = stream.get_tme(rows_event.table_id()).expect("table map precedes rows");
        if tme.database_name() != database {
            continue;
        }
        assert!(
            matches!(rows_event, RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_)),
            "only inserts are made: {rows_event:?}"
        );
        for row in rows_event.rows(tme) {
            let (_, after) = row.unwrap();
            inserted.push(render_row(after.expect("an insert has an after image"), tme, None).unwrap());
        }
    }
    stream.close().await.unwrap();
    inserted
}

/// Creates the table, inserts while the binlog streams, and compares both renderings.
async fn compare(database: String, server_id: u32) {
    let mut conn = Conn::new(Opts::from_url(URL).unwrap()).await.unwrap();
    conn.query_drop("SET SESSION time_zone = '+00:00', SESSION sql_mode = ''").await.unwrap();
    conn.query_drop(format!("CREATE TABLE {database}.t ({COLUMNS})")).await.unwrap();
    let status: Row = conn.query_first("SHOW MASTER STATUS").await.unwrap().expect("binlog is on");
    let (file, pos): (String, u64) = (status.get(0).unwrap(), status.get(1).unwrap());

    let rows = [ROW_A, ROW_B, ROW_C, ROW_D];
    let reader = tokio::spawn(read_inserts(file, pos, database.clone(), server_id, rows.len()));
    conn.query_drop(format!("INSERT INTO {database}.t VALUES {ROW_A}, {ROW_B}")).await.unwrap();
    conn.query_drop(format!("INSERT INTO {database}.t VALUES {ROW_C}")).await.unwrap();
    conn.query_drop(format!("INSERT INTO {database}.t VALUES {ROW_D}")).await.unwrap();
    let from_binlog = reader.await.unwrap();

    let selected: Vec<Row> = conn.exec(format!("SELECT * FROM {database}.t ORDER BY id, tenant"), ()).await.unwrap();
    conn.disconnect().await.unwrap();
    assert_eq!(selected.len(), rows.len());
    let missing = render_query_row(selected[0].clone(), &["nope".to_string()]).unwrap_err();
    assert_eq!(missing, "primary-key column `nope` is not in the row");

    let keys = key_columns();
    let from_query: Vec<RenderedRow> = selected.into_iter().map(|row| render_query_row(row, &keys).unwrap()).collect();
    for (tenant, (query, binlog)) in (1..).zip(from_query.iter().zip(&from_binlog)) {
        assert_eq!(binlog.key, *json!({ "id": 1, "tenant": tenant }).as_object().unwrap());
        assert_eq!(binlog.image.len(), 41, "tenant {tenant}");
        for (name, value) in &binlog.image {
            assert_eq!(query.image.get(name), Some(value), "tenant {tenant}, column `{name}`");
        }
        assert_eq!(query, binlog, "tenant {tenant}");
    }

    // Spot checks that the agreed values are the intended ones, not a shared mistake.
    let (zeroish, extremes) = (&from_query[2].image, &from_query[3].image);
    assert_eq!(zeroish["bn"], json!("AAAAAA=="));
    assert_eq!(zeroish["c"], json!("x"));
    assert_eq!(zeroish["lat"], json!("€\u{81}Ÿ "));
    assert_eq!(zeroish["dt0"], json!(0));
    assert_eq!(zeroish["dt3"], json!(null));
    assert_eq!(zeroish["ts"], json!("1970-01-01T00:00:01Z"));
    assert_eq!(zeroish["ts1"], json!("1970-01-01T00:00:01.0Z"));
    assert_eq!(zeroish["ts6"], json!("2024-01-01T00:00:00.000000Z"), "padded to fsp 6, as Debezium pads");
    assert_eq!(zeroish["dec2"], json!("-0.0000000001"));
    assert_eq!(zeroish["bt10"], json!("AAA="));
    assert_eq!(extremes["bu"], json!(9_223_372_036_854_775_808_u64));
    assert_eq!(extremes["tu"], json!(128));
    assert_eq!(extremes["dt"], json!(null));
    assert_eq!(extremes["dt6"], json!(253_402_300_799_999_999_i64));
    assert_eq!(extremes["tm6"], json!(-3_020_399_999_999_i64));
    assert_eq!(extremes["ts1"], json!("2038-01-19T03:14:07.9Z"));
    assert_eq!(extremes["st"], json!("a,d"));
    assert_eq!(extremes["bt10"], json!("/wM="));
    assert_eq!(extremes["bn"], json!("AAAAAQ=="));
    assert_eq!(extremes["lat"], json!("ÿ€"));
}

#[tokio::test]
async fn query_rows_render_like_their_binlog_inserts() {
    let pid = std::process::id();
    let database = format!("qvalues_test_{pid}");
    let mut conn = Conn::new(Opts::from_url(URL).unwrap()).await.unwrap();
    conn.query_drop(format!("DROP DATABASE IF EXISTS {database}")).await.unwrap();
    conn.query_drop(format!("CREATE DATABASE {database}")).await.unwrap();
    // A separate task, so a failure or a hang still lets the database be dropped below.
    let mut run = tokio::spawn(compare(database.clone(), 19_000 + pid % 1000));
    let outcome = tokio::time::timeout(Duration::from_secs(60), &mut run).await;
    run.abort();
    conn.query_drop(format!("DROP DATABASE {database}")).await.unwrap();
    conn.disconnect().await.unwrap();
    match outcome.expect("comparison within 60s") {
        Ok(()) => {}
        Err(failure) => match failure.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(failure) => panic!("comparison task: {failure}"),
        },
    }
}
