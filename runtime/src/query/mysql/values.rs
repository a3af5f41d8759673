//! MySQL and MariaDB values ↔ the WIT `db-value`, by column type: parameters
//! as their natural MySQL types, result cells exactly (DECIMAL as its text,
//! unsigned BIGINT beyond i64 as text, binary strings as bytes).

use mysql_async::Column;
use mysql_async::Value;
use mysql_async::consts::{ColumnFlags, ColumnType};

use crate::contract::DbValue;

/// The `binary` character set: the column holds bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// Binds one parameter: int → BIGINT, float → DOUBLE, text → string, bytes →
/// binary string, bool → 1/0, null → NULL; lists (MySQL has no arrays) → a
/// JSON array text, for `JSON_TABLE(?, '$[*]' …)` or `JSON_CONTAINS`.
pub(super) fn param(value: &DbValue) -> Value {
    match value {
        DbValue::Null => Value::NULL,
        DbValue::Boolean(b) => Value::Int(i64::from(*b)),
        DbValue::Int(i) => Value::Int(*i),
        DbValue::Float(f) => Value::Double(*f),
        DbValue::Text(s) => Value::Bytes(s.clone().into_bytes()),
        DbValue::Bytes(b) => Value::Bytes(b.clone()),
        DbValue::IntList(l) => Value::Bytes(serde_json::to_vec(l).expect("integers serialise")),
        DbValue::TextList(l) => Value::Bytes(serde_json::to_vec(l).expect("strings serialise")),
    }
}

/// Reads one cell as a `db-value`, by its column's type.
pub(super) fn cell(value: Value, column: &Column) -> Result<DbValue, String> {
    let kind = column.column_type();
    let name = || column.name_str().into_owned();
    Ok(match value {
        Value::NULL => DbValue::Null,
        Value::Int(i) => DbValue::Int(i),
        Value::UInt(u) => i64::try_from(u).map(DbValue::Int).unwrap_or_else(|_| DbValue::Text(u.to_string())),
        // FLOAT is single precision: widen through its shortest decimal form,
        // so 0.1 stays 0.1 rather than 0.10000000149011612.
        Value::Float(f) => DbValue::Float(f.to_string().parse().unwrap_or(f64::from(f))),
        Value::Double(d) => DbValue::Float(d),
        Value::Date(0, 0, 0, 0, 0, 0, 0) => DbValue::Null,
        Value::Date(y, mo, d, h, mi, s, us) => DbValue::Text(match kind {
            ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => format!("{y:04}-{mo:02}-{d:02}"),
            ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2 => {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z", fraction(us, column.decimals()))
            }
            _ => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}", fraction(us, column.decimals())),
        }),
        Value::Time(negative, days, h, mi, s, us) => DbValue::Text(format!(
            "{}{:02}:{mi:02}:{s:02}{}",
            if negative { "-" } else { "" },
            days * 24 + u32::from(h),
            fraction(us, column.decimals())
        )),
        Value::Bytes(bytes) => match kind {
            ColumnType::MYSQL_TYPE_BIT => bit(&bytes),
            ColumnType::MYSQL_TYPE_GEOMETRY | ColumnType::MYSQL_TYPE_VECTOR => DbValue::Bytes(bytes),
            ColumnType::MYSQL_TYPE_DECIMAL
            | ColumnType::MYSQL_TYPE_NEWDECIMAL
            | ColumnType::MYSQL_TYPE_JSON
            | ColumnType::MYSQL_TYPE_ENUM
            | ColumnType::MYSQL_TYPE_SET => DbValue::Text(text(bytes, &name)?),
            _ if column.character_set() == BINARY_CHARSET
                && !column.flags().intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG) =>
            {
                DbValue::Bytes(bytes)
            }
            _ => DbValue::Text(text(bytes, &name)?),
        },
    })
}

/// `.ffffff` cut to the column's fractional digits; nothing for whole seconds.
fn fraction(micros: u32, decimals: u8) -> String {
    let digits = usize::from(decimals.min(6));
    if digits == 0 {
        return String::new();
    }
    let mut text = format!(".{micros:06}");
    text.truncate(digits + 1);
    text
}

/// BIT(n) arrives big-endian; it fits an int unless all 64 bits are used.
fn bit(bytes: &[u8]) -> DbValue {
    let value = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    i64::try_from(value).map(DbValue::Int).unwrap_or_else(|_| DbValue::Text(value.to_string()))
}

fn text(bytes: Vec<u8>, column: &dyn Fn() -> String) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| format!("column '{}' is not valid UTF-8 text", column()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_follow_the_column_precision() {
        assert_eq!(fraction(123_456, 0), "");
        assert_eq!(fraction(123_456, 3), ".123");
        assert_eq!(fraction(5, 6), ".000005");
    }

    #[test]
    fn bits_and_lists() {
        assert_eq!(bit(&[0x01, 0x02]), DbValue::Int(258));
        assert_eq!(bit(&[0xff; 8]), DbValue::Text(u64::MAX.to_string()));
        assert_eq!(param(&DbValue::IntList(vec![1, 2])), Value::Bytes(b"[1,2]".to_vec()));
        assert_eq!(param(&DbValue::TextList(vec!["a\"".into()])), Value::Bytes(br#"["a\""]"#.to_vec()));
    }
}
