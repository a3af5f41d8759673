use serde_json::json;

use super::super::debezium_json::{cp1252, fraction, ymd};
use super::*;

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn unsigned_columns_reinterpret_raw_bits() {
    assert_eq!(integer(Value::Int(-1), 8, true).unwrap(), json!(255));
    assert_eq!(integer(Value::Int(-1), 16, true).unwrap(), json!(65535));
    assert_eq!(integer(Value::Int(-1), 24, true).unwrap(), json!(16_777_215));
    assert_eq!(integer(Value::Int(-1), 32, true).unwrap(), json!(4_294_967_295_u32));
    assert_eq!(integer(Value::Int(-1), 64, true).unwrap(), json!(18_446_744_073_709_551_615_u64));
    assert_eq!(integer(Value::UInt(u64::MAX), 64, true).unwrap(), json!(u64::MAX));
    assert_eq!(integer(Value::Int(255), 8, true).unwrap(), json!(255));
}

#[test]
fn signed_columns_sign_extend_raw_bits() {
    assert_eq!(integer(Value::Int(255), 8, false).unwrap(), json!(-1));
    assert_eq!(integer(Value::Int(-128), 8, false).unwrap(), json!(-128));
    assert_eq!(integer(Value::UInt(0x80_0000), 24, false).unwrap(), json!(-8_388_608));
    assert_eq!(integer(Value::Int(i64::MIN), 64, false).unwrap(), json!(i64::MIN));
    assert_eq!(integer(Value::Int(42), 32, false).unwrap(), json!(42));
    assert!(integer(Value::Bytes(b"1".to_vec()), 32, false).is_err());
}

#[test]
fn fraction_keeps_exactly_the_column_digits() {
    assert_eq!(fraction(500_000, 0), "");
    assert_eq!(fraction(500_000, 1), ".5");
    assert_eq!(fraction(0, 1), ".0");
    assert_eq!(fraction(123_456, 3), ".123");
    assert_eq!(fraction(5, 6), ".000005");
    assert_eq!(fraction(5, 9), ".000005");
}

#[test]
fn timestamp_text_splits_and_unwraps_seconds() {
    assert_eq!(seconds_and_micros("1709212455"), Some((1_709_212_455, 0)));
    assert_eq!(seconds_and_micros("1709212455.500000"), Some((1_709_212_455, 500_000)));
    assert_eq!(seconds_and_micros("-1"), Some((4_294_967_295, 0)));
    assert_eq!(seconds_and_micros("x"), None);
    assert_eq!(seconds_and_micros("1.8388607"), None);
    assert_eq!(timestamp(1_709_212_455, 500_000, 1).unwrap(), json!("2024-02-29T13:14:15.5Z"));
    assert_eq!(timestamp(1_709_212_455, 0, 0).unwrap(), json!("2024-02-29T13:14:15Z"));
    assert_eq!(timestamp(0, 0, 3).unwrap(), Json::Null);
}

#[test]
fn timestamp_fraction_is_padded_to_the_column_fsp_as_debezium_does() {
    // Debezium's `ZonedTimestamp.toIsoString(…, fsp)`: exactly fsp digits for 1..=6, none for 0.
    assert_eq!(timestamp(1_709_212_455, 100_000, 3).unwrap(), json!("2024-02-29T13:14:15.100Z"));
    assert_eq!(timestamp(1_709_212_455, 0, 6).unwrap(), json!("2024-02-29T13:14:15.000000Z"));
    assert_eq!(timestamp(1_709_212_455, 120_000, 6).unwrap(), json!("2024-02-29T13:14:15.120000Z"));
    assert_eq!(timestamp(1, 0, 0).unwrap(), json!("1970-01-01T00:00:01Z"));
}

#[test]
fn set_bitmask_maps_to_labels_in_definition_order() {
    let abc = labels(&["a", "b", "c"]);
    assert_eq!(set_labels(&abc, &[0b101]).unwrap(), "a,c");
    assert_eq!(set_labels(&abc, &[0]).unwrap(), "");
    assert!(set_labels(&abc, &[0b1000]).unwrap_err().contains("SET bit 3"));
    let many: Vec<String> = (0..10).map(|i| format!("l{i}")).collect();
    assert_eq!(set_labels(&many, &[0b1, 0b10]).unwrap(), "l0,l9");
}

#[test]
fn enum_index_is_one_based_with_zero_as_empty() {
    let xyz = labels(&["x", "y", "z"]);
    assert_eq!(enum_label(&xyz, 1).unwrap(), "x");
    assert_eq!(enum_label(&xyz, 3).unwrap(), "z");
    assert_eq!(enum_label(&xyz, 0).unwrap(), "");
    assert!(enum_label(&xyz, 4).is_err());
    assert!(enum_label(&xyz, -1).is_err());
}

#[test]
fn bits_become_boolean_or_little_endian_bytes() {
    assert_eq!(bit(&[1], &[1, 0]), json!(true));
    assert_eq!(bit(&[0], &[1, 0]), json!(false));
    // BIT(10) b'1000000001' = 0x0201: big-endian in the binlog, little-endian for Debezium.
    assert_eq!(bit(&[0x02, 0x01], &[2, 1]), json!("AQI="));
    assert_eq!(bit(&[0xff], &[0, 1]), json!("/w=="));
}

#[test]
fn binary_is_padded_to_its_declared_length() {
    assert_eq!(pad_binary(vec![1], &[254, 4]), vec![1, 0, 0, 0]);
    assert_eq!(pad_binary(vec![1, 2, 3, 4], &[254, 4]), vec![1, 2, 3, 4]);
    // Lengths over 255 fold their high bits into the real-type byte: 0xfe ^ 0x20 for 0x2ff.
    assert_eq!(pad_binary(vec![], &[0xde, 0xff]).len(), 0x2ff);
    assert_eq!(pad_binary(vec![7], &[]), vec![7]);
}

#[test]
fn latin1_is_decoded_as_cp1252() {
    assert_eq!(cp1252(b'a'), 'a');
    assert_eq!(cp1252(0x80), '€');
    assert_eq!(cp1252(0x81), '\u{81}');
    assert_eq!(cp1252(0x9f), 'Ÿ');
    assert_eq!(cp1252(0xe9), 'é');
    assert_eq!(text(vec![0x63, 0x61, 0x66, 0xe9], 8).unwrap(), "café");
    assert_eq!(text("café".as_bytes().to_vec(), 45).unwrap(), "café");
    assert!(text(vec![0xe9], 45).unwrap_err().contains("charset 45"));
}

#[test]
fn zero_dates_and_years() {
    assert_eq!(ymd(0, 0, 0).unwrap(), None);
    assert_eq!(ymd(2024, 0, 1).unwrap(), None);
    assert!(ymd(2024, 2, 30).is_err());
    assert_eq!(year("1900").unwrap(), 0);
    assert_eq!(year("2024").unwrap(), 2024);
}
