//! Single column values as the Debezium MySQL connector writes them, shared
//! by the binlog renderer (`values`) and the query renderer (`query_values`)
//! so a snapshot row and a binlog row of the same data render identically.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime};
use serde_json::{Number, Value as Json};

/// The `binary` character set: the column holds bytes, not text.
pub(super) const BINARY_CHARSET: u16 = 63;

/// Days from 0001-01-01 (chrono's day 1 of the common era) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

pub(super) fn float(value: f64) -> Result<Json, String> {
    Number::from_f64(value).map(Json::Number).ok_or_else(|| format!("{value} has no JSON form"))
}

/// FLOAT is single precision: widen through its shortest decimal text so 0.1 stays 0.1.
pub(super) fn single(value: f32) -> Result<Json, String> {
    float(value.to_string().parse().unwrap_or(f64::from(value)))
}

/// Bytes (binary strings, BLOB, GEOMETRY) are base64 text.
pub(super) fn base64(bytes: impl AsRef<[u8]>) -> Json {
    Json::String(BASE64.encode(bytes))
}

/// A calendar date, or `None` for MySQL's zero date and its partly-zero forms.
pub(super) fn ymd(year: u16, month: u8, day: u8) -> Result<Option<NaiveDate>, String> {
    if year == 0 || month == 0 || day == 0 {
        return Ok(None);
    }
    NaiveDate::from_ymd_opt(year.into(), month.into(), day.into())
        .map(Some)
        .ok_or_else(|| format!("{year:04}-{month:02}-{day:02} is not a calendar date"))
}

/// Debezium's Date: days since 1970-01-01; null for zero dates, which have no day number.
pub(super) fn date(year: u16, month: u8, day: u8) -> Result<Json, String> {
    Ok(match ymd(year, month, day)? {
        Some(date) => Json::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE),
        None => Json::Null,
    })
}

/// A DATETIME or TIMESTAMP as a wall-clock time, `None` for the zero date and its partly-zero forms.
pub(super) fn wall_clock(
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    micros: u32,
) -> Result<Option<NaiveDateTime>, String> {
    let Some(date) = ymd(year, month, day)? else { return Ok(None) };
    let time = date.and_hms_micro_opt(hour.into(), minute.into(), second.into(), micros);
    time.map(Some).ok_or_else(|| "invalid time of day".into())
}

/// Debezium's Timestamp (milliseconds) or, for `micros`, MicroTimestamp; the wall clock is read as UTC.
pub(super) fn datetime(wall: Option<NaiveDateTime>, micros: bool) -> Json {
    let Some(wall) = wall else { return Json::Null };
    let at = wall.and_utc().timestamp_micros();
    Json::from(if micros { at } else { at.div_euclid(1000) })
}

/// Debezium's MicroTime: signed microseconds, which TIME's range (±838 hours) always fits.
pub(super) fn time(negative: bool, days: u32, hours: u8, minutes: u8, seconds: u8, micros: u32) -> Json {
    let secs = (i64::from(days) * 24 + i64::from(hours)) * 3600 + i64::from(minutes) * 60 + i64::from(seconds);
    let micros = secs * 1_000_000 + i64::from(micros);
    Json::from(if negative { -micros } else { micros })
}

/// Debezium's ZonedTimestamp: UTC ISO-8601 with exactly `fsp` fraction digits.
pub(super) fn timestamp(secs: i64, micros: u32, fsp: u8) -> Result<Json, String> {
    if secs == 0 && micros == 0 {
        return Ok(Json::Null);
    }
    let at =
        DateTime::from_timestamp(secs, micros * 1000).ok_or_else(|| format!("{secs}.{micros:06} is out of range"))?;
    Ok(Json::String(format!("{}{}Z", at.format("%Y-%m-%dT%H:%M:%S"), fraction(micros, fsp))))
}

/// `.ffffff` cut to `fsp` digits; nothing when the column has no fraction.
pub(super) fn fraction(micros: u32, fsp: u8) -> String {
    let digits = usize::from(fsp.min(6));
    if digits == 0 { String::new() } else { format!(".{micros:06}")[..=digits].to_string() }
}

/// BIT(1) is a boolean; wider BITs are Debezium `Bits`, whose bytes are little-endian,
/// while MySQL holds them big-endian.
pub(super) fn bits(big_endian: &[u8], width: usize) -> Json {
    if width == 1 {
        return Json::Bool(big_endian.last().is_some_and(|b| b & 1 != 0));
    }
    let little_endian: Vec<u8> = big_endian.iter().rev().copied().collect();
    base64(little_endian)
}

pub(super) fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

/// Text in the column's character set: latin1 (MySQL's is cp1252) is decoded,
/// anything else is taken as UTF-8 (utf8mb3, utf8mb4 and ascii all are).
pub(super) fn text(bytes: Vec<u8>, charset: u16) -> Result<String, String> {
    if matches!(charset, 5 | 8 | 15 | 31 | 47 | 48 | 49 | 94) {
        return Ok(bytes.iter().map(|&b| cp1252(b)).collect());
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 (charset {charset}): {e}"))
}

/// One cp1252 byte; its five unassigned bytes map to the same-numbered C1 controls, as in MySQL.
pub(super) fn cp1252(byte: u8) -> char {
    const HIGH: &str = "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8d}Ž\u{8f}\u{90}‘’“”•–—˜™š›œ\u{9d}žŸ";
    match byte {
        0x80..=0x9f => HIGH.chars().nth(usize::from(byte - 0x80)).unwrap_or(char::from(byte)),
        _ => char::from(byte),
    }
}
