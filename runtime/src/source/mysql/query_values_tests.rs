use serde_json::json;

use super::*;

const UTF8MB4: u16 = 45;

fn column(kind: ColumnType, flags: ColumnFlags, charset: u16) -> Column {
    Column::new(kind).with_flags(flags).with_character_set(charset)
}

#[test]
fn integers_keep_the_signedness_the_server_sent() {
    let tiny = column(ColumnType::MYSQL_TYPE_TINY, ColumnFlags::UNSIGNED_FLAG, BINARY_CHARSET);
    assert_eq!(render(&tiny, Value::Int(255)).unwrap(), json!(255));
    let big = column(ColumnType::MYSQL_TYPE_LONGLONG, ColumnFlags::UNSIGNED_FLAG, BINARY_CHARSET);
    assert_eq!(render(&big, Value::UInt(u64::MAX)).unwrap(), json!(u64::MAX));
    let year = column(ColumnType::MYSQL_TYPE_YEAR, ColumnFlags::UNSIGNED_FLAG, BINARY_CHARSET);
    assert_eq!(render(&year, Value::Int(0)).unwrap(), json!(0));
}

#[test]
fn text_protocol_values_are_refused() {
    let int = column(ColumnType::MYSQL_TYPE_LONG, ColumnFlags::empty(), BINARY_CHARSET);
    assert!(render(&int, Value::Bytes(b"1".to_vec())).unwrap_err().contains("unsupported value"));
    let date = column(ColumnType::MYSQL_TYPE_DATE, ColumnFlags::empty(), BINARY_CHARSET);
    assert!(render(&date, Value::Bytes(b"2024-02-29".to_vec())).is_err());
}

#[test]
fn timestamps_read_the_session_wall_clock_as_utc() {
    let ts1 = column(ColumnType::MYSQL_TYPE_TIMESTAMP, ColumnFlags::empty(), BINARY_CHARSET).with_decimals(1);
    assert_eq!(render(&ts1, Value::Date(2024, 2, 29, 13, 14, 15, 500_000)).unwrap(), json!("2024-02-29T13:14:15.5Z"));
    assert_eq!(render(&ts1, Value::Date(0, 0, 0, 0, 0, 0, 0)).unwrap(), Json::Null);
    // Padded to the column's fsp, as Debezium pads a ZonedTimestamp.
    let ts3 = ts1.clone().with_decimals(3);
    assert_eq!(render(&ts3, Value::Date(2024, 2, 29, 13, 14, 15, 100_000)).unwrap(), json!("2024-02-29T13:14:15.100Z"));
    let ts6 = ts1.clone().with_decimals(6);
    assert_eq!(render(&ts6, Value::Date(2024, 2, 29, 13, 14, 15, 0)).unwrap(), json!("2024-02-29T13:14:15.000000Z"));
    let ts0 = ts1.with_decimals(0);
    assert_eq!(render(&ts0, Value::Date(2024, 2, 29, 13, 14, 15, 0)).unwrap(), json!("2024-02-29T13:14:15Z"));
}

#[test]
fn datetime_precision_comes_from_the_column_decimals() {
    let at = Value::Date(2024, 2, 29, 13, 14, 15, 123_000);
    let dt3 = column(ColumnType::MYSQL_TYPE_DATETIME, ColumnFlags::empty(), BINARY_CHARSET).with_decimals(3);
    assert_eq!(render(&dt3, at.clone()).unwrap(), json!(1_709_212_455_123_i64));
    let dt6 = dt3.with_decimals(6);
    assert_eq!(render(&dt6, at).unwrap(), json!(1_709_212_455_123_000_i64));
    assert_eq!(render(&dt6, Value::Date(1969, 12, 31, 23, 59, 59, 999_999)).unwrap(), json!(-1));
}

#[test]
fn bit_width_comes_from_the_column_length() {
    let bit1 = column(ColumnType::MYSQL_TYPE_BIT, ColumnFlags::UNSIGNED_FLAG, BINARY_CHARSET).with_column_length(1);
    assert_eq!(render(&bit1, Value::Bytes(vec![1])).unwrap(), json!(true));
    let bit10 = bit1.with_column_length(10);
    assert_eq!(render(&bit10, Value::Bytes(vec![0x02, 0x01])).unwrap(), json!("AQI="));
}

#[test]
fn binary_means_the_binary_charset_not_the_binary_flag() {
    let bin_collation = column(ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::BINARY_FLAG, UTF8MB4);
    assert_eq!(render(&bin_collation, Value::Bytes(b"ab".to_vec())).unwrap(), json!("ab"));
    let varbinary = column(ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::BINARY_FLAG, BINARY_CHARSET);
    assert_eq!(render(&varbinary, Value::Bytes(b"ab".to_vec())).unwrap(), json!("YWI="));
    let binary_enum = column(ColumnType::MYSQL_TYPE_STRING, ColumnFlags::ENUM_FLAG, BINARY_CHARSET);
    assert_eq!(render(&binary_enum, Value::Bytes(b"small".to_vec())).unwrap(), json!("small"));
}

#[test]
fn mysql_json_text_is_made_compact() {
    let json = column(ColumnType::MYSQL_TYPE_JSON, ColumnFlags::BINARY_FLAG, BINARY_CHARSET);
    let text = br#"{"b": "x", "a": [1, 2.5, null]}"#.to_vec();
    assert_eq!(render(&json, Value::Bytes(text)).unwrap(), json!(r#"{"a":[1,2.5,null],"b":"x"}"#));
    assert!(render(&json, Value::Bytes(b"{".to_vec())).is_err());
}
