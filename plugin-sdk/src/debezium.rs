//! Debezium's value encodings: base64 decimals, epoch-based dates and times,
//! and the placeholder for unchanged TOAST values.

use base64::Engine;
use serde::{Deserialize, Deserializer};

use crate::PluginError;

/// What Debezium writes for an unchanged TOASTed Postgres value it could not read.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// True when `value` is Debezium's "unavailable" placeholder: the column did not
/// change and its value is unknown. Never cache it; read the row instead.
pub fn is_unavailable(value: &serde_json::Value) -> bool {
    value.as_str() == Some(UNAVAILABLE)
}

/// A row field that may hold the unavailable placeholder:
/// `#[derive(Deserialize)] struct Row { bio: Field<String> }`.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    /// The value.
    Known(T),
    /// Debezium did not have the value (unchanged TOAST column).
    Unavailable,
}

impl<T> Field<T> {
    /// The value, if known.
    pub fn known(self) -> Option<T> {
        match self {
            Field::Known(v) => Some(v),
            Field::Unavailable => None,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if is_unavailable(&value) {
            return Ok(Field::Unavailable);
        }
        T::deserialize(value).map(Field::Known).map_err(serde::de::Error::custom)
    }
}

/// An exact decimal string from Debezium's `precise` decimal encoding: base64 of
/// the big-endian two's-complement unscaled integer, with the column's scale
/// (`"C7c="`, scale 2 → `"29.99"`). Only records without a schema arrive so:
/// the runtime hands plugins decimal text wherever the schema names the
/// decimals, and the built-in captures always do. Never call it on that text:
/// `"1234"` is valid base64 too.
pub fn decimal(base64: &str, scale: u32) -> Result<String, PluginError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|e| PluginError::bad_event(format!("decimal {base64:?}: {e}")))?;
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let magnitude = if negative { negate(&bytes) } else { bytes };
    let mut digits = to_decimal_digits(&magnitude);
    let scale = scale as usize;
    if digits.len() <= scale {
        digits = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
    }
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if negative && digits.chars().any(|c| c != '0') { "-" } else { "" };
    Ok(if scale == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") })
}

/// A `io.debezium.data.VariableScaleDecimal` (`{"scale": 2, "value": "C7c="}`),
/// used for Postgres NUMERIC without a declared scale.
pub fn variable_scale_decimal(value: &serde_json::Value) -> Result<String, PluginError> {
    let scale = value["scale"].as_u64().ok_or_else(|| PluginError::bad_event("decimal without scale"))?;
    let digits = value["value"].as_str().ok_or_else(|| PluginError::bad_event("decimal without value"))?;
    decimal(digits, scale as u32)
}

/// Two's complement negation of a big-endian integer.
fn negate(bytes: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = bytes.iter().map(|b| !b).collect();
    for byte in out.iter_mut().rev() {
        let (sum, overflow) = byte.overflowing_add(1);
        *byte = sum;
        if !overflow {
            break;
        }
    }
    out
}

/// Base-256 big-endian magnitude to base-10 text, by repeated division.
fn to_decimal_digits(bytes: &[u8]) -> String {
    let mut number: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut digits = Vec::new();
    while !number.is_empty() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let current = (remainder << 8) | u32::from(*byte);
            *byte = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
        let leading = number.iter().take_while(|b| **b == 0).count();
        number.drain(..leading);
    }
    if digits.is_empty() {
        return "0".to_owned();
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// `io.debezium.time.Date` (days since 1970-01-01) → `"YYYY-MM-DD"`.
pub fn date_from_days(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `io.debezium.time.MicroTimestamp` (µs since the epoch, UTC) → RFC 3339.
pub fn timestamp_from_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (date, time) = split(seconds);
    if fraction == 0 { format!("{date}T{time}Z") } else { format!("{date}T{time}.{fraction:06}Z") }
}

/// `io.debezium.time.Timestamp` (ms since the epoch, UTC) → RFC 3339.
pub fn timestamp_from_millis(millis: i64) -> String {
    timestamp_from_micros(millis.saturating_mul(1000))
}

fn split(seconds: i64) -> (String, String) {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    (date_from_days(days), format!("{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60))
}

/// Howard Hinnant's days → (year, month, day) for the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal("C7c=", 2).unwrap(), "29.99");
        assert_eq!(decimal("dzWUAA==", 4).unwrap(), "200000.0000");
        assert_eq!(decimal("AYag", 4).unwrap(), "10.0000");
        assert_eq!(decimal("/w==", 0).unwrap(), "-1");
        assert_eq!(decimal("/88=", 2).unwrap(), "-0.49");
        assert_eq!(decimal("AA==", 2).unwrap(), "0.00");
        assert_eq!(decimal("BQ==", 3).unwrap(), "0.005");
        assert_eq!(decimal("AQAAAAAAAAAA", 0).unwrap(), "18446744073709551616");
        assert!(decimal("***", 0).is_err());
        let v = serde_json::json!({"scale": 2, "value": "C7c="});
        assert_eq!(variable_scale_decimal(&v).unwrap(), "29.99");
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(date_from_days(0), "1970-01-01");
        assert_eq!(date_from_days(19_782), "2024-02-29");
        assert_eq!(date_from_days(-1), "1969-12-31");
        assert_eq!(timestamp_from_millis(1_562_630_400_000), "2019-07-09T00:00:00Z");
        assert_eq!(timestamp_from_micros(1_559_033_904_863_123), "2019-05-28T08:58:24.863123Z");
        assert_eq!(timestamp_from_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn unavailable_placeholder() {
        #[derive(Deserialize)]
        struct Row {
            bio: Field<String>,
            name: Field<String>,
        }
        let row: Row = serde_json::from_str(r#"{"bio":"__debezium_unavailable_value","name":"Ada"}"#).unwrap();
        assert_eq!(row.bio, Field::Unavailable);
        assert_eq!(row.name.known().as_deref(), Some("Ada"));
        assert!(is_unavailable(&serde_json::json!(UNAVAILABLE)));
    }
}
