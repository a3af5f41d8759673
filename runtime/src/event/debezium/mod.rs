//! Debezium change records → [`ChangeEvent`]s. Accepts the Redis sink's
//! `compact` and `extended` layouts and Kafka-style key/value pairs, with or
//! without the JsonConverter `schema`/`payload` wrapper. Tombstones, heartbeats,
//! transaction markers, schema changes and logical messages are set aside.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::visibility::CommitMark;
use super::{ChangeEvent, Op};

mod converter;
mod decimals;
mod source_block;
#[cfg(test)]
mod tests;
mod wrapper;

use converter::other_converter;
use decimals::{DecimalError, RowDecimals, RowSchema};
use source_block::Source;

/// The Redis sink's stand-in for a null key or value.
const REDIS_NULL: &str = "default";
/// Debezium's heartbeat topics start with this.
const HEARTBEAT_PREFIX: &str = "__debezium-heartbeat";
/// The field of a record the built-in capture could not decode, holding why;
/// such a record is dead-lettered, never skipped.
pub const CAPTURE_ERROR_FIELD: &str = "__evercache.capture_error";

/// What a record turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A row change for the pipelines.
    Change(ChangeEvent),
    /// A record that carries no row change; acknowledged without effect.
    Skip(SkipReason),
}

/// Why a record carries no row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The null value Debezium emits after a delete (log compaction marker).
    Tombstone,
    /// A connector heartbeat.
    Heartbeat,
    /// A transaction BEGIN/END marker.
    TransactionMarker,
    /// A schema change (DDL) record.
    SchemaChange,
    /// A Postgres logical decoding message (`op: m`).
    Message,
    /// A stream entry without fields (deleted after delivery).
    Empty,
}

impl SkipReason {
    /// A short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Tombstone => "tombstone",
            SkipReason::Heartbeat => "heartbeat",
            SkipReason::TransactionMarker => "transaction-marker",
            SkipReason::SchemaChange => "schema-change",
            SkipReason::Message => "message",
            SkipReason::Empty => "empty",
        }
    }
}

/// What a dead letter for undecodable bytes tells the operator to configure.
const EXPECTED_CONVERTER: &str = "evercache reads JSON as Kafka Connect's JsonConverter writes it \
     (key.converter and value.converter = org.apache.kafka.connect.json.JsonConverter, schemas on or off) \
     or Debezium Server's `json` format";

/// Why a record could not be decoded; such records are dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The key or value is not valid JSON (or not the expected shape).
    #[error("{part} is not a valid Debezium JSON document: {source}; {EXPECTED_CONVERTER}")]
    InvalidJson {
        /// "key" or "value".
        part: &'static str,
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// The key or value was written by a converter other than JSON's.
    #[error("{part} was written by another converter: {found}; {EXPECTED_CONVERTER}")]
    OtherConverter {
        /// "key" or "value".
        part: &'static str,
        /// What the bytes look like.
        found: String,
    },
    /// A column its schema declares a decimal holds something else.
    #[error("{0}")]
    Decimal(#[from] DecimalError),
    /// An `op` this decoder does not know.
    #[error("unknown op '{0}' (expected c, u, d, r, t or m)")]
    UnknownOp(String),
    /// A field every change event needs is missing.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// The built-in capture could not decode the change (the record carries its bytes).
    #[error("{0}")]
    Capture(String),
    /// A stream entry in neither the compact nor the extended layout.
    #[error("stream entry has {fields} field(s) and no `value` field: neither compact nor extended layout")]
    UnknownLayout {
        /// How many fields it had.
        fields: usize,
    },
}

/// One Redis Stream entry written by Debezium Server's Redis sink: `compact`
/// (one field; name = key JSON, value = value JSON) or `extended` (`key`,
/// `value`, then upper-cased headers). `stream` is the Debezium topic.
pub fn decode_stream_entry(stream: &str, fields: &[(String, String)]) -> Result<Decoded, DecodeError> {
    decode_stream_entry_with_commit(stream, fields).map(|(decoded, _)| decoded)
}

/// [`decode_stream_entry`], with what the change's `source` block says of its
/// transaction (never for a snapshot read, which reads only committed rows).
pub fn decode_stream_entry_with_commit(
    stream: &str,
    fields: &[(String, String)],
) -> Result<(Decoded, Option<CommitMark>), DecodeError> {
    if let Some((field, reason)) = fields.first()
        && field == CAPTURE_ERROR_FIELD
    {
        return Err(DecodeError::Capture(reason.clone()));
    }
    let value = |name: &str| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str());
    if let Some(val) = value("value") {
        return decode(stream, value("key"), Some(val));
    }
    match fields {
        [] => Ok((Decoded::Skip(SkipReason::Empty), None)),
        [(key, val)] => decode(stream, Some(key), Some(val)),
        _ => Err(DecodeError::UnknownLayout { fields: fields.len() }),
    }
}

/// A record as Kafka delivers it: key and value text, either possibly null.
pub fn decode_record(topic: &str, key: Option<&str>, value: Option<&str>) -> Result<Decoded, DecodeError> {
    decode(topic, key, value).map(|(decoded, _)| decoded)
}

fn decode(topic: &str, key: Option<&str>, value: Option<&str>) -> Result<(Decoded, Option<CommitMark>), DecodeError> {
    let skip = |reason| Ok((Decoded::Skip(reason), None));
    if topic.starts_with(HEARTBEAT_PREFIX) {
        return skip(SkipReason::Heartbeat);
    }
    let Some(value) = value.map(str::trim).filter(|v| *v != REDIS_NULL) else {
        return skip(SkipReason::Tombstone);
    };
    if let Some(found) = other_converter(value) {
        return Err(DecodeError::OtherConverter { part: "value", found });
    }
    let Some((envelope, schema)) = parse_envelope(value)? else {
        return skip(SkipReason::Tombstone);
    };
    let Some(op) = envelope.op.as_deref() else {
        return skip(classify_opless(&envelope)?);
    };
    let op = match op {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::SnapshotRead,
        "t" => Op::Truncate,
        "m" => return skip(SkipReason::Message),
        other => return Err(DecodeError::UnknownOp(other.to_owned())),
    };
    let source = envelope.source.ok_or(DecodeError::MissingField("source"))?;
    let table = source.table.as_deref().ok_or(DecodeError::MissingField("source.table"))?;
    let (mut before, mut after) = (row(envelope.before), row(envelope.after));
    if let Some(decimals) = schema.and_then(|schema| RowDecimals::of(schema, RowSchema::Envelope)) {
        for image in [&mut before, &mut after].into_iter().flatten() {
            *image = decimals.rewrite(image)?;
        }
    }
    let event = ChangeEvent {
        op,
        source: source.name.as_deref().unwrap_or_default().to_owned(),
        schema: source.schema.as_deref().or(source.db.as_deref()).map(str::to_owned),
        table: table.to_owned(),
        key: decode_key(key)?,
        before,
        after,
        position: source.position(),
        committed_at_ms: source.ts_ms.or(envelope.ts_ms).unwrap_or(0),
    };
    let commit = if op == Op::SnapshotRead { None } else { source.commit() };
    Ok((Decoded::Change(event), commit))
}

/// The fields of an envelope this decoder reads; everything else is ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    schema: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    before: Option<&'a RawValue>,
    #[serde(default, borrow)]
    after: Option<&'a RawValue>,
    #[serde(default, borrow)]
    source: Option<Source<'a>>,
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(default)]
    ts_ms: Option<u64>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ddl: Option<&'a RawValue>,
    #[serde(default, rename = "tableChanges", borrow)]
    table_changes: Option<&'a RawValue>,
    #[serde(default, rename = "databaseName", borrow)]
    database_name: Option<&'a RawValue>,
}

/// Parses a value, unwrapping `{"schema":…,"payload":…}`; `None` for a null
/// payload. The schema's text comes along when there is one.
fn parse_envelope(text: &str) -> Result<Option<(Envelope<'_>, Option<&str>)>, DecodeError> {
    let invalid = |source| DecodeError::InvalidJson { part: "value", source };
    // What fails here (a wrapper with more keys, say) is parsed in full below.
    if let Some((schema, payload)) = wrapper::parts(text)
        && let Ok(envelope) = serde_json::from_str::<Option<Envelope<'_>>>(payload)
    {
        return Ok(envelope.map(|envelope| (envelope, Some(schema))));
    }
    let outer: Option<Envelope<'_>> = serde_json::from_str(text).map_err(invalid)?;
    let Some(outer) = outer else { return Ok(None) };
    match (outer.schema, outer.payload) {
        (Some(schema), Some(payload)) => {
            let envelope: Option<Envelope<'_>> = serde_json::from_str(payload.get()).map_err(invalid)?;
            Ok(envelope.map(|envelope| (envelope, Some(schema.get()))))
        }
        _ => Ok(Some((outer, None))),
    }
}

/// Keeps a field that is present even when it is `null`, unlike `Option`'s default.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

fn classify_opless(envelope: &Envelope<'_>) -> Result<SkipReason, DecodeError> {
    if matches!(envelope.status.as_deref(), Some("BEGIN" | "END")) {
        return Ok(SkipReason::TransactionMarker);
    }
    if envelope.ddl.is_some() || envelope.table_changes.is_some() || envelope.database_name.is_some() {
        return Ok(SkipReason::SchemaChange);
    }
    if envelope.ts_ms.is_some() && envelope.source.is_none() && envelope.before.is_none() && envelope.after.is_none() {
        return Ok(SkipReason::Heartbeat);
    }
    Err(DecodeError::MissingField("op"))
}

/// The key's payload as JSON text; `"null"` when the record has no key.
fn decode_key(key: Option<&str>) -> Result<String, DecodeError> {
    let Some(key) = key.map(str::trim).filter(|k| *k != REDIS_NULL && *k != "null") else {
        return Ok("null".to_owned());
    };
    #[derive(Deserialize)]
    struct Wrapper<'a> {
        #[serde(default, borrow)]
        schema: Option<&'a RawValue>,
        #[serde(default, borrow)]
        payload: Option<&'a RawValue>,
    }
    if let Some(found) = other_converter(key) {
        return Err(DecodeError::OtherConverter { part: "key", found });
    }
    let invalid = |source| DecodeError::InvalidJson { part: "key", source };
    if let Some((schema, payload)) = wrapper::parts(key)
        && serde_json::from_str::<&RawValue>(payload).is_ok()
    {
        return key_payload(schema, payload);
    }
    match serde_json::from_str::<Wrapper<'_>>(key) {
        Ok(Wrapper { schema: Some(schema), payload: Some(payload) }) => key_payload(schema.get(), payload.get()),
        Ok(_) => Ok(key.to_owned()),
        // A scalar key (not an object) is still a key.
        Err(_) => serde_json::from_str::<&RawValue>(key).map(|_| key.to_owned()).map_err(invalid),
    }
}

/// A key's payload, its decimals made plain when its schema declares some.
fn key_payload(schema: &str, payload: &str) -> Result<String, DecodeError> {
    match RowDecimals::of(schema, RowSchema::Key) {
        Some(decimals) if payload.trim_start().starts_with('{') => Ok(decimals.rewrite(payload)?),
        _ => Ok(payload.to_owned()),
    }
}

/// A row image as JSON text, `None` when absent or null.
fn row(raw: Option<&RawValue>) -> Option<String> {
    raw.map(RawValue::get).filter(|text| *text != "null").map(str::to_owned)
}
