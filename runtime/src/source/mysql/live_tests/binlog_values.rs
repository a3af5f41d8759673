//! Renders real binlog rows from the local MariaDB (127.0.0.1:3306, root, no
//! password, binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL).

use std::time::Duration;

use crate::source::mysql::schema::Catalogue;
use crate::source::mysql::values::{RenderedRow, render_row};
use futures::StreamExt;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::prelude::*;
use mysql_async::{BinlogStreamRequest, Conn, Opts};
use serde_json::{Map, Value, json};

use super::{COLUMNS, ROW_A, ROW_B, URL};

fn row_a() -> Value {
    json!({
        "tenant": 1, "ti": -128, "tu": 255, "b1": 1, "bo": 0,
        "si": -32768, "su": 65535, "mi": -8_388_608, "mu": 16_777_215,
        "i": -2_147_483_648_i64, "iu": 4_294_967_295_u32, "bi": i64::MIN, "bu": u64::MAX,
        "f": 0.1, "d": -1.5e-300, "dec1": "29.99", "dec2": "-12345678901234567890.0123456789",
        "c": "ab", "v": "héllo ☃", "tx": "long text", "lat": "café",
        "bn": "AQAAAA==", "vb": "AP8Q", "bl": "3q2+7w==",
        "dt": 19782, "dt0": 1_709_212_455_000_i64, "dt3": 1_709_212_455_123_i64, "dt6": -1,
        "ts": "2024-02-29T13:14:15Z", "ts1": "2024-02-29T13:14:15.5Z", "ts6": "2038-01-19T03:14:07.000001Z",
        "tm": -3_020_399_000_000_i64, "tm6": -1_500_000, "yr": 2024,
        "e": "large", "st": "a,c", "bt1": true, "bt10": "AQI=",
        "j": "{\"a\": [1, 2.5, null], \"b\": \"x\"}", "g": "AAAAAAEBAAAAAAAAAAAA8D8AAAAAAAAAQA==",
        "id": 1,
    })
}

fn row_b() -> Value {
    let mut row = json!({
        "tenant": 2, "dec1": "0.50", "dec2": "1.5000000000", "c": "", "dt": null, "dt0": null, "tm": 0, "yr": 0,
        "e": "", "st": "", "bt1": false, "id": 1,
    });
    for name in [
        "ti", "tu", "b1", "bo", "si", "su", "mi", "mu", "i", "iu", "bi", "bu", "f", "d", "v", "tx", "lat", "bn", "vb",
        "bl", "dt3", "dt6", "ts", "ts1", "ts6", "tm6", "bt10", "j", "g",
    ] {
        row[name] = Value::Null;
    }
    row
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn expect(image: Value, tenant: i64) -> RenderedRow {
    RenderedRow { image: object(image), key: object(json!({ "id": 1, "tenant": tenant })) }
}

/// One row of a rows event on the test table: (kind, before image, after image).
type Change = (&'static str, Option<RenderedRow>, Option<RenderedRow>);

/// The same table map as a `binlog_row_metadata=MINIMAL` server would send:
/// everything up to the null bitmap, no optional metadata (single-byte lengths suffice here).
fn without_optional_metadata(event: &Event) -> Event {
    let data = event.data();
    let mut end = 8;
    end += 1 + usize::from(data[end]) + 1;
    end += 1 + usize::from(data[end]) + 1;
    let columns = usize::from(data[end]);
    end += 1 + columns;
    end += 1 + usize::from(data[end]);
    end += columns.div_ceil(8);
    let header = event.header();
    let size = 19 + end as u32 + 4;
    let mut bytes = header.timestamp().to_le_bytes().to_vec();
    bytes.push(header.event_type_raw());
    bytes.extend(header.server_id().to_le_bytes());
    bytes.extend(size.to_le_bytes());
    bytes.extend(header.log_pos().to_le_bytes());
    bytes.extend(header.flags_raw().to_le_bytes());
    bytes.extend(&data[..end]);
    bytes.extend([0; 4]);
    Event::read(event.fde(), &bytes[..]).unwrap()
}

/// What was read: the changes rendered from FULL table maps, the error
/// rendering one without names gives, and the changes rendered from table
/// maps without metadata plus the catalogue's schema.
type Read = (Vec<Change>, String, Vec<Change>);

async fn read_changes(file: String, pos: u64, database: &str, server_id: u32) -> Read {
    let conn = Conn::new(Opts::from_url(URL).unwrap()).await.unwrap();
    let request = BinlogStreamRequest::new(server_id).with_filename(file.as_bytes()).with_pos(pos);
    let mut stream = conn.get_binlog_stream(request).await.unwrap();
    let (mut changes, mut minimal_error, mut table_map) = (Vec::<Change>::new(), String::new(), None);
    let mut from_catalogue = Vec::<Change>::new();
    let captured = [(database.to_owned(), "t".to_owned())].into_iter().collect();
    let mut catalogue = Catalogue::new(Opts::from_url(URL).unwrap(), captured, Default::default());
    while !changes.iter().any(|(kind, ..)| *kind == "delete") {
        let event = stream.next().await.expect("binlog stream ended").unwrap();
        let rows_event = match event.read_data().unwrap() {
            Some(EventData::RowsEvent(rows_event)) => rows_event,
            Some(EventData::TableMapEvent(tme)) if tme.database_name() == database => {
                table_map.get_or_insert_with(|| without_optional_metadata(&event));
                continue;
            }
            _ => continue,
        };
        let tme = stream.get_tme(rows_event.table_id()).expect("table map precedes rows");
        if tme.database_name() != database {
            continue;
        }
        let minimal: TableMapEvent<'_> = table_map.as_ref().expect("a table map").read_event().unwrap();
        if minimal_error.is_empty() {
            let (before, after) = rows_event.rows(&minimal).next().unwrap().unwrap();
            minimal_error = render_row(before.or(after).unwrap(), &minimal, None).unwrap_err();
        }
        let table = (database.to_owned(), "t".to_owned());
        let schema = catalogue.schema(&table, &minimal, (0, 0)).await.unwrap().expect("the catalogue matches");
        let kind = match rows_event {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => "insert",
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => "update",
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => "delete",
            RowsEventData::PartialUpdateRowsEvent(_) => "partial update",
        };
        for row in rows_event.rows(tme) {
            let (before, after) = row.unwrap();
            let render = |image| render_row(image, tme, None).unwrap();
            changes.push((kind, before.map(render), after.map(render)));
        }
        for row in rows_event.rows(&minimal) {
            let (before, after) = row.unwrap();
            let render = |image| render_row(image, &minimal, Some(&schema)).unwrap();
            from_catalogue.push((kind, before.map(render), after.map(render)));
        }
    }
    stream.close().await.unwrap();
    (changes, minimal_error, from_catalogue)
}

#[tokio::test]
async fn renders_every_column_type_from_mariadb_binlog() {
    let pid = std::process::id();
    let database = format!("values_test_{pid}");
    let mut conn = Conn::new(Opts::from_url(URL).unwrap()).await.unwrap();
    conn.query_drop("SET SESSION time_zone = '+00:00', SESSION sql_mode = ''").await.unwrap();
    conn.query_drop(format!("DROP DATABASE IF EXISTS {database}")).await.unwrap();
    conn.query_drop(format!("CREATE DATABASE {database}")).await.unwrap();
    conn.query_drop(format!("CREATE TABLE {database}.t ({COLUMNS})")).await.unwrap();
    let status: mysql_async::Row = conn.query_first("SHOW MASTER STATUS").await.unwrap().expect("binlog is on");
    let (file, pos): (String, u64) = (status.get(0).unwrap(), status.get(1).unwrap());

    conn.query_drop(format!("INSERT INTO {database}.t VALUES {ROW_A}, {ROW_B}")).await.unwrap();
    conn.query_drop(format!(
        "UPDATE {database}.t SET tu = 0, v = 'updated', e = 'small', st = '' WHERE id = 1 AND tenant = 1"
    ))
    .await
    .unwrap();
    conn.query_drop(format!("DELETE FROM {database}.t WHERE tenant = 2")).await.unwrap();

    let server_id = 9000 + pid % 1000;
    let db = database.clone();
    // A separate task, so a failed read still lets the database be dropped below.
    let mut reader = tokio::spawn(async move { read_changes(file, pos, &db, server_id).await });
    let outcome = tokio::time::timeout(Duration::from_secs(30), &mut reader).await;
    reader.abort();
    conn.query_drop(format!("DROP DATABASE {database}")).await.unwrap();
    conn.disconnect().await.unwrap();
    let (changes, minimal_error, from_catalogue) = outcome.expect("rows events within 30s").expect("binlog reader");
    assert_eq!(
        minimal_error,
        format!("{database}.t: the binlog carries no column names; set binlog_row_metadata=FULL on the server")
    );

    let mut updated = row_a();
    updated["tu"] = json!(0);
    updated["v"] = json!("updated");
    updated["e"] = json!("small");
    updated["st"] = json!("");
    let expected: Vec<Change> = vec![
        ("insert", None, Some(expect(row_a(), 1))),
        ("insert", None, Some(expect(row_b(), 2))),
        ("update", Some(expect(row_a(), 1)), Some(expect(updated, 1))),
        ("delete", Some(expect(row_b(), 2)), None),
    ];
    assert_eq!(changes.len(), expected.len(), "{changes:#?}");
    for (got, want) in changes.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    // A server with binlog_row_metadata NO_LOG names nothing, not even signedness
    // or character sets: the catalogue makes the same events of its rows.
    assert_eq!(from_catalogue, changes);
}
