//! Postgres text-format values → the JSON Debezium's Postgres connector emits
//! with its defaults (`time.precision.mode=adaptive`, `binary.handling.mode=bytes`),
//! except numerics, which use `decimal.handling.mode=string` so they stay exact
//! without a schema.

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde_json::Value;

const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const INT2_ARRAY: u32 = 1005;
const INT4_ARRAY: u32 = 1007;
const INT8_ARRAY: u32 = 1016;
const TEXT_ARRAY: u32 = 1009;
const VARCHAR_ARRAY: u32 = 1015;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;

/// Microseconds in a day: Postgres' `time '24:00:00'`, which chrono cannot hold.
const DAY_MICROS: i64 = 86_400_000_000;

/// The epoch as a date, for Debezium's days-since-epoch dates.
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// Converts one text-format value of type `oid` (modifier `typmod`).
pub fn debezium_value(oid: u32, typmod: i32, text: String) -> Value {
    let converted = match oid {
        // pgoutput sends `t`/`f`; a snapshot's `col::text` gives `true`/`false`.
        BOOL => Some(Value::Bool(text == "t" || text == "true")),
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().ok().map(Value::from),
        FLOAT4 | FLOAT8 => text.parse::<f64>().ok().and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
        BYTEA => text
            .strip_prefix("\\x")
            .and_then(hex_bytes)
            .map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b))),
        DATE => NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok().map(|d| Value::from((d - epoch()).num_days())),
        TIME => time_micros(&text)
            .map(|micros| if precision(typmod) <= 3 { Value::from(micros / 1000) } else { Value::from(micros) }),
        TIMESTAMP => NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| {
            let micros = t.and_utc().timestamp_micros();
            if precision(typmod) <= 3 { Value::from(micros.div_euclid(1000)) } else { Value::from(micros) }
        }),
        TIMESTAMPTZ => parse_timestamptz(&text).map(|t| Value::String(zoned_timestamp(t, precision(typmod)))),
        INT2_ARRAY | INT4_ARRAY | INT8_ARRAY => parse_array(&text).map(|items| {
            Value::Array(
                items
                    .into_iter()
                    .map(|i| i.and_then(|s| s.parse::<i64>().ok()).map_or(Value::Null, Value::from))
                    .collect(),
            )
        }),
        TEXT_ARRAY | VARCHAR_ARRAY => parse_array(&text)
            .map(|items| Value::Array(items.into_iter().map(|i| i.map_or(Value::Null, Value::String)).collect())),
        _ => None,
    };
    converted.unwrap_or(Value::String(text))
}

/// Fractional-second digits of a time type; unspecified means 6.
fn precision(typmod: i32) -> i32 {
    if typmod < 0 { 6 } else { typmod }
}

/// Microseconds since midnight; Postgres allows `24:00:00`, the end of the day.
fn time_micros(text: &str) -> Option<i64> {
    let end_of_day = text.strip_prefix("24:00:00").is_some_and(|fraction| {
        fraction.is_empty() || fraction.strip_prefix('.').is_some_and(|digits| digits.bytes().all(|b| b == b'0'))
    });
    if end_of_day {
        return Some(DAY_MICROS);
    }
    let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok()?;
    Some(i64::from(t.num_seconds_from_midnight()) * 1_000_000 + i64::from(t.nanosecond() / 1000))
}

/// Debezium's ZonedTimestamp text (`ZonedTimestamp.toIsoString` with the
/// column's precision as width): exactly `width` fraction digits for a width
/// of 1 to 9, else Java's ISO form, which drops a zero fraction and trailing zeros.
fn zoned_timestamp(at: DateTime<Utc>, width: i32) -> String {
    let nanos = format!("{:09}", at.nanosecond() % 1_000_000_000);
    let fraction = match usize::try_from(width) {
        Ok(width @ 1..=9) => format!(".{}", &nanos[..width]),
        _ if nanos.trim_end_matches('0').is_empty() => String::new(),
        _ => format!(".{}", nanos.trim_end_matches('0')),
    };
    format!("{}{fraction}Z", at.format("%Y-%m-%dT%H:%M:%S"))
}

fn parse_timestamptz(text: &str) -> Option<DateTime<Utc>> {
    // Postgres prints offsets as +HH, +HH:MM or +HH:MM:SS.
    let normalized = match text.rfind(['+', '-']) {
        Some(at) if at > 10 && text[at + 1..].len() == 2 => format!("{text}:00"),
        _ => text.to_owned(),
    };
    DateTime::parse_from_str(&normalized, "%Y-%m-%d %H:%M:%S%.f%:z").ok().map(|t| t.with_timezone(&Utc))
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// A one-dimensional array literal: `{1,2}`, `{"a b",NULL,c}`.
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let item = if chars.peek() == Some(&'"') {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => s.push(chars.next()?),
                    '"' => break,
                    c => s.push(c),
                }
            }
            Some(s)
        } else {
            let s: String = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            if s == "NULL" { None } else { Some(s) }
        };
        items.push(item);
        match chars.next() {
            Some(',') => continue,
            None => return Some(items),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(oid: u32, typmod: i32, text: &str) -> Value {
        debezium_value(oid, typmod, text.to_owned())
    }

    #[test]
    fn scalar_encodings_match_debezium_defaults() {
        assert_eq!(v(BOOL, -1, "t"), json!(true));
        assert_eq!(v(BOOL, -1, "true"), json!(true), "the snapshot's bool::text");
        assert_eq!(v(BOOL, -1, "false"), json!(false));
        assert_eq!(v(INT8, -1, "-42"), json!(-42));
        assert_eq!(v(FLOAT8, -1, "2.5"), json!(2.5));
        assert_eq!(v(1700, -1, "29.99"), json!("29.99"));
        assert_eq!(v(25, -1, "x"), json!("x"));
        assert_eq!(v(BYTEA, -1, "\\x0102"), json!("AQI="));
        assert_eq!(v(DATE, -1, "2024-02-29"), json!(19782));
        assert_eq!(v(TIME, -1, "13:14:15.5"), json!(47_655_500_000i64));
        assert_eq!(v(TIME, 3, "13:14:15.5"), json!(47_655_500));
        assert_eq!(v(TIMESTAMP, -1, "2019-05-28 08:58:24.863123"), json!(1_559_033_904_863_123i64));
        assert_eq!(v(TIMESTAMP, 3, "2019-05-28 08:58:24.863"), json!(1_559_033_904_863i64));
        assert_eq!(v(TIMESTAMPTZ, -1, "2024-02-29 13:14:15+02"), json!("2024-02-29T11:14:15.000000Z"));
        assert_eq!(v(3802, -1, "{\"a\": 1}"), json!("{\"a\": 1}"));
        assert_eq!(v(INT4_ARRAY, -1, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(v(TEXT_ARRAY, -1, "{a,\"b c\",\"d\\\"e\"}"), json!(["a", "b c", "d\"e"]));
        assert_eq!(v(TEXT_ARRAY, -1, "{}"), json!([]));
        assert_eq!(v(TIMESTAMP, -1, "infinity"), json!("infinity"), "unparseable values stay text");
    }

    #[test]
    fn time_24_00_00_is_the_whole_day() {
        assert_eq!(v(TIME, -1, "24:00:00"), json!(86_400_000_000i64), "unqualified time: MicroTime");
        assert_eq!(v(TIME, 6, "24:00:00"), json!(86_400_000_000i64));
        assert_eq!(v(TIME, 4, "24:00:00.0000"), json!(86_400_000_000i64));
        assert_eq!(v(TIME, 3, "24:00:00"), json!(86_400_000), "time(3): Time in ms");
        assert_eq!(v(TIME, 0, "24:00:00"), json!(86_400_000));
        assert_eq!(v(TIME, -1, "23:59:59.999999"), json!(86_399_999_999i64));
        assert_eq!(v(TIME, -1, "24:00:01"), json!("24:00:01"), "past the day stays text");
    }

    #[test]
    fn timestamptz_has_exactly_the_column_precision_in_fraction_digits() {
        // Debezium 3.6 pads to the precision: `ZonedTimestamp.toIsoString(…, column.length())`.
        assert_eq!(v(TIMESTAMPTZ, -1, "0001-01-01 00:00:00+00"), json!("0001-01-01T00:00:00.000000Z"));
        assert_eq!(v(TIMESTAMPTZ, -1, "2024-02-29 13:45:30.123456+02"), json!("2024-02-29T11:45:30.123456Z"));
        assert_eq!(v(TIMESTAMPTZ, -1, "2024-02-29 13:14:15.12+00"), json!("2024-02-29T13:14:15.120000Z"));
        assert_eq!(v(TIMESTAMPTZ, 6, "2024-02-29 13:14:15.25+00"), json!("2024-02-29T13:14:15.250000Z"));
        assert_eq!(v(TIMESTAMPTZ, 3, "2024-02-29 13:14:15.1+00"), json!("2024-02-29T13:14:15.100Z"));
        assert_eq!(v(TIMESTAMPTZ, 3, "2024-02-29 13:14:15-05:30"), json!("2024-02-29T18:44:15.000Z"));
        assert_eq!(v(TIMESTAMPTZ, 1, "2024-02-29 13:14:15+00"), json!("2024-02-29T13:14:15.0Z"));
        // Precision 0: Java's ISO formatter, no fraction when it is zero.
        assert_eq!(v(TIMESTAMPTZ, 0, "2024-02-29 13:14:15+00"), json!("2024-02-29T13:14:15Z"));
        assert_eq!(v(TIMESTAMPTZ, -1, "infinity"), json!("infinity"));
    }

    #[test]
    fn a_zoned_timestamp_without_a_width_keeps_only_the_digits_it_needs() {
        let at = |nanos| DateTime::from_timestamp(1_709_212_455, nanos).unwrap();
        assert_eq!(zoned_timestamp(at(0), 0), "2024-02-29T13:14:15Z");
        assert_eq!(zoned_timestamp(at(120_000_000), 0), "2024-02-29T13:14:15.12Z");
        assert_eq!(zoned_timestamp(at(123_456_789), 0), "2024-02-29T13:14:15.123456789Z");
        assert_eq!(zoned_timestamp(at(120_000_000), 10), "2024-02-29T13:14:15.12Z", "past 9 is no width");
        assert_eq!(zoned_timestamp(at(123_456_789), 9), "2024-02-29T13:14:15.123456789Z");
        assert_eq!(
            zoned_timestamp(at(123_456_789), 2),
            "2024-02-29T13:14:15.12Z",
            "cut, as Java's appendFraction does"
        );
    }
}
