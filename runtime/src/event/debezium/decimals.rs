//! Debezium's decimals made plain. With the JsonConverter's schemas on, a
//! `Decimal` column arrives as base64 of its unscaled integer (the scale is in
//! the schema only) and a Postgres `numeric` without a scale as
//! `{"scale":…,"value":…}`; plugins get the decimal string instead, as the
//! built-in captures and Debezium's `decimal.handling.mode=string` give it, so
//! one plugin reads every path the same way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::rc::Rc;

use base64::Engine;
use num_bigint::BigInt;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Kafka Connect's logical type for a decimal of fixed scale.
const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
/// Debezium's logical type for a decimal whose scale travels with the value.
const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";
/// What Debezium writes for an unchanged TOASTed value; in a bytes column its UTF-8 bytes.
const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Why a decimal could not be read.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {reason}")]
pub struct DecimalError {
    column: String,
    reason: String,
}

/// How one column's decimals are encoded.
#[derive(Debug, Clone, PartialEq)]
enum Encoding {
    /// Base64 unscaled integer; the scale from the schema.
    Fixed(u32),
    /// `{"scale":…,"value":…}`.
    VariableScale,
    /// An array whose items are encoded so.
    Array(Box<Encoding>),
}

/// The decimal columns of one row schema, by name.
#[derive(Debug, Default, PartialEq)]
pub(super) struct RowDecimals(HashMap<String, Encoding>);

impl RowDecimals {
    /// The decimal columns of a record's schema text (the JsonConverter's `schema`);
    /// `None` when it has none, found without parsing when the names are absent.
    /// `row` picks the row schema: the key's struct itself, or an envelope's `after`.
    pub(super) fn of(schema: &str, row: RowSchema) -> Option<Rc<RowDecimals>> {
        if !schema.contains(DECIMAL) && !schema.contains(VARIABLE_SCALE_DECIMAL) {
            return None;
        }
        // A topic's records share their schema text, so the last one parsed is kept.
        thread_local! {
            static LAST: RefCell<Option<(String, RowSchema, Rc<RowDecimals>)>> = const { RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| {
            if let Some((text, kind, decimals)) = last.as_ref()
                && text == schema
                && *kind == row
            {
                return Some(decimals.clone());
            }
            let decimals = Rc::new(parse(schema, row));
            *last = Some((schema.to_owned(), row, decimals.clone()));
            Some(decimals)
        })
        .filter(|decimals| !decimals.0.is_empty())
    }

    /// `row` (a JSON object) with each decimal column as a decimal string.
    pub(super) fn rewrite(&self, row: &str) -> Result<String, DecimalError> {
        let fields = serde_json::from_str::<Fields<'_>>(row)
            .map_err(|e| DecimalError { column: String::new(), reason: format!("row is not an object: {e}") })?;
        let mut out = String::with_capacity(row.len());
        out.push('{');
        for (index, (name, value)) in fields.0.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(name).unwrap_or_default());
            out.push(':');
            match self.0.get(name.as_ref()) {
                Some(encoding) => {
                    let value: serde_json::Value = serde_json::from_str(value.get())
                        .map_err(|e| DecimalError { column: name.to_string(), reason: e.to_string() })?;
                    let plain =
                        plain(&value, encoding).map_err(|reason| DecimalError { column: name.to_string(), reason })?;
                    out.push_str(&plain.to_string());
                }
                None => out.push_str(value.get()),
            }
        }
        out.push('}');
        Ok(out)
    }
}

/// Which struct of a schema describes the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowSchema {
    /// A record key: the schema is the row's struct.
    Key,
    /// An envelope: the row's struct is its `after` (or `before`) field.
    Envelope,
}

/// A Kafka Connect schema as the JsonConverter writes it; other keys are ignored.
#[derive(Deserialize)]
struct Schema {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    fields: Vec<Schema>,
    #[serde(default)]
    items: Option<Box<Schema>>,
    #[serde(default)]
    parameters: HashMap<String, String>,
}

impl Schema {
    fn encoding(&self) -> Option<Encoding> {
        match self.name.as_deref() {
            Some(DECIMAL) => Some(Encoding::Fixed(self.parameters.get("scale")?.parse().ok()?)),
            Some(VARIABLE_SCALE_DECIMAL) => Some(Encoding::VariableScale),
            _ => Some(Encoding::Array(Box::new(self.items.as_ref()?.encoding()?))),
        }
    }
}

/// The decimal columns the schema declares; none when it does not parse (the
/// row is then passed on as it came).
fn parse(schema: &str, row: RowSchema) -> RowDecimals {
    let Ok(schema) = serde_json::from_str::<Schema>(schema) else { return RowDecimals::default() };
    let columns = match row {
        RowSchema::Key => Some(&schema.fields),
        RowSchema::Envelope => ["after", "before"]
            .iter()
            .find_map(|image| schema.fields.iter().find(|f| f.field.as_deref() == Some(*image)))
            .map(|image| &image.fields),
    };
    let columns = columns.into_iter().flatten();
    RowDecimals(columns.filter_map(|c| Some((c.field.clone()?, c.encoding()?))).collect())
}

/// One value, decoded: a decimal string, `null`, or an array of them.
fn plain(value: &serde_json::Value, encoding: &Encoding) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    match (value, encoding) {
        (Value::Null, _) => Ok(Value::Null),
        (Value::String(base64), Encoding::Fixed(scale)) => decimal(base64, *scale).map(Value::String),
        (Value::Object(parts), Encoding::VariableScale) => {
            let scale = parts.get("scale").and_then(Value::as_u64).ok_or("a variable-scale decimal without `scale`")?;
            let base64 =
                parts.get("value").and_then(Value::as_str).ok_or("a variable-scale decimal without `value`")?;
            decimal(base64, u32::try_from(scale).map_err(|_| format!("scale {scale}"))?).map(Value::String)
        }
        (Value::Array(items), Encoding::Array(item)) => {
            items.iter().map(|value| plain(value, item)).collect::<Result<_, _>>().map(Value::Array)
        }
        (other, _) => Err(format!("`{other}` is not a decimal as its schema declares ({encoding:?})")),
    }
}

/// Base64 of a big-endian two's-complement unscaled integer → `"-12.34"`.
fn decimal(base64: &str, scale: u32) -> Result<String, String> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(base64).map_err(|e| format!("base64 `{base64}`: {e}"))?;
    if bytes == UNAVAILABLE.as_bytes() {
        return Ok(UNAVAILABLE.to_owned());
    }
    let unscaled = BigInt::from_signed_bytes_be(&bytes).to_string();
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", unscaled.as_str()),
    };
    let scale = scale as usize;
    if scale == 0 {
        return Ok(unscaled);
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let mut out = String::with_capacity(digits.len() + 2);
    let _ = write!(out, "{sign}{whole}.{fraction}");
    Ok(out)
}

/// An object's members in their order, values left as text.
struct Fields<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Fields(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
#[path = "decimals_tests.rs"]
mod tests;
