//! Postgres values ↔ the WIT `db-value`: parameters as their natural Postgres
//! types, result cells mapped by column type.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgRow, PgTypeInfo, PgTypeKind, PgValueRef, Postgres};
use sqlx::query::Query;
use sqlx::types::{JsonValue, Uuid};
use sqlx::{Decode, Encode, Row, Type, TypeInfo, ValueRef};

use crate::contract::DbValue;

/// A NULL parameter of unspecified type, so the server infers it from context
/// (`where id = $1` with a bigint column) instead of failing on text vs bigint.
struct UntypedNull;

impl Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

/// Binds one parameter: int → int8, float → float8, text → text, bytes →
/// bytea, int-list → int8[], text-list → text[], bool → bool, null → unknown.
pub(super) fn bind<'q>(query: Query<'q, Postgres, PgArguments>, value: &DbValue) -> Query<'q, Postgres, PgArguments> {
    match value {
        DbValue::Null => query.bind(UntypedNull),
        DbValue::Boolean(b) => query.bind(*b),
        DbValue::Int(i) => query.bind(*i),
        DbValue::Float(f) => query.bind(*f),
        DbValue::Text(s) => query.bind(s.clone()),
        DbValue::Bytes(b) => query.bind(b.clone()),
        DbValue::IntList(l) => query.bind(l.clone()),
        DbValue::TextList(l) => query.bind(l.clone()),
    }
}

/// Reads cell `index` of `row` as a `db-value`, by the column's type.
pub(super) fn cell(row: &PgRow, index: usize) -> Result<DbValue, String> {
    let raw = row.try_get_raw(index).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(DbValue::Null);
    }
    let type_info = raw.type_info().into_owned();
    let name = type_info.name();
    let column = || sqlx::Column::name(&row.columns()[index]).to_owned();
    let decode_error = |e: sqlx::error::BoxDynError| format!("column '{}' ({name}): {e}", column());
    let value = match name {
        "INT2" => DbValue::Int(i64::from(decode::<i16>(raw).map_err(decode_error)?)),
        "INT4" => DbValue::Int(i64::from(decode::<i32>(raw).map_err(decode_error)?)),
        "INT8" => DbValue::Int(decode::<i64>(raw).map_err(decode_error)?),
        "OID" => DbValue::Int(i64::from(decode::<Oid>(raw).map_err(decode_error)?.0)),
        "FLOAT4" => DbValue::Float(f64::from(decode::<f32>(raw).map_err(decode_error)?)),
        "FLOAT8" => DbValue::Float(decode::<f64>(raw).map_err(decode_error)?),
        "NUMERIC" => DbValue::Text(numeric_text(raw.as_bytes().map_err(decode_error)?).map_err(decode_error)?),
        "BOOL" => DbValue::Boolean(decode::<bool>(raw).map_err(decode_error)?),
        "TEXT" | "VARCHAR" | "CHAR" | "BPCHAR" | "NAME" | "UNKNOWN" => {
            DbValue::Text(decode::<String>(raw).map_err(decode_error)?)
        }
        "UUID" => DbValue::Text(decode::<Uuid>(raw).map_err(decode_error)?.hyphenated().to_string()),
        "DATE" => DbValue::Text(decode::<NaiveDate>(raw).map_err(decode_error)?.format("%Y-%m-%d").to_string()),
        "TIME" => DbValue::Text(decode::<NaiveTime>(raw).map_err(decode_error)?.format("%H:%M:%S%.f").to_string()),
        "TIMESTAMP" => DbValue::Text(
            decode::<NaiveDateTime>(raw).map_err(decode_error)?.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
        ),
        "TIMESTAMPTZ" => DbValue::Text(
            decode::<DateTime<Utc>>(raw).map_err(decode_error)?.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        "JSON" | "JSONB" => DbValue::Text(decode::<JsonValue>(raw).map_err(decode_error)?.to_string()),
        "BYTEA" => DbValue::Bytes(decode::<Vec<u8>>(raw).map_err(decode_error)?),
        "INT2[]" => {
            DbValue::IntList(decode::<Vec<i16>>(raw).map_err(decode_error)?.into_iter().map(i64::from).collect())
        }
        "INT4[]" => {
            DbValue::IntList(decode::<Vec<i32>>(raw).map_err(decode_error)?.into_iter().map(i64::from).collect())
        }
        "INT8[]" => DbValue::IntList(decode::<Vec<i64>>(raw).map_err(decode_error)?),
        "TEXT[]" | "VARCHAR[]" | "CHAR[]" | "BPCHAR[]" | "NAME[]" => {
            DbValue::TextList(decode::<Vec<String>>(raw).map_err(decode_error)?)
        }
        "VOID" => DbValue::Null,
        // Enum labels and text-like extension types (citext) travel as UTF-8.
        _ if matches!(type_info.kind(), PgTypeKind::Enum(_)) || name.eq_ignore_ascii_case("citext") => {
            DbValue::Text(decode::<String>(raw).map_err(decode_error)?)
        }
        _ => {
            return Err(format!(
                "column '{col}' has unsupported type {name}; cast it in SQL, e.g. {col}::text",
                col = column()
            ));
        }
    };
    Ok(value)
}

/// Postgres' binary NUMERIC as exact decimal text with the column's display
/// scale (`29.99` stays `29.99`, `1.000` stays `1.000`), which sqlx's decimal
/// types do not keep.
fn numeric_text(bytes: &[u8]) -> Result<String, sqlx::error::BoxDynError> {
    let word = |i: usize| -> Result<u16, sqlx::error::BoxDynError> {
        bytes.get(i * 2..i * 2 + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "truncated numeric".into())
    };
    let (ndigits, weight, sign, dscale) = (word(0)? as usize, word(1)? as i16, word(2)?, word(3)? as usize);
    match sign {
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => {}
    }
    let digits = (0..ndigits).map(|i| word(4 + i)).collect::<Result<Vec<u16>, _>>()?;
    let group = |i: i32| -> u16 { usize::try_from(i).ok().and_then(|i| digits.get(i).copied()).unwrap_or(0) };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&group(0).to_string());
        for i in 1..=i32::from(weight) {
            text.push_str(&format!("{:04}", group(i)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut i = i32::from(weight) + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

/// Decodes without sqlx's type-compatibility check; the caller matched the type by name.
fn decode<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, sqlx::error::BoxDynError> {
    T::decode(raw)
}
