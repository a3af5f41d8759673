//! Decoding `pgoutput` (protocol version 1) messages into row changes with
//! Debezium's value encodings, so plugins cannot tell capture from Debezium.
//!
//! Begin and Commit are handled by the replication client; this module sees
//! Relation, Type, Origin, Insert, Update, Delete and Truncate.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::values::debezium_value;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PgOutputError {
    /// The message ended early or has an unknown tag.
    #[error("malformed pgoutput message: {0}")]
    Malformed(String),
    /// A change for a relation whose Relation message was never seen.
    #[error("change for unknown relation {0}")]
    UnknownRelation(u32),
}

/// A table as its last Relation message described it.
#[derive(Debug, Clone)]
pub struct Relation {
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Columns in order.
    pub columns: Vec<Column>,
}

/// One column of a relation.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (e.g. numeric precision and scale).
    pub type_modifier: i32,
    /// Part of the replica identity (the key).
    pub key: bool,
}

/// One row change, with row images in Debezium's JSON encodings.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// Debezium's op: 'c', 'u', 'd' or 't'.
    pub op: char,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The replica identity columns, or `Value::Null` (truncate, no key).
    pub key: Value,
    /// The row before (key columns only unless REPLICA IDENTITY FULL).
    pub before: Option<Value>,
    /// The row after.
    pub after: Option<Value>,
}

/// The per-connection state: relations by OID.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
}

impl Decoder {
    /// The relation with `oid`, if seen.
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// Decodes one pgoutput message: row changes (one, or one per table for a
    /// truncate), or none for metadata (Relation, Type, Origin).
    pub fn decode(&mut self, data: &[u8]) -> Result<Vec<RowChange>, PgOutputError> {
        let mut r = Reader { data, at: 0 };
        match r.u8()? {
            b'R' => {
                let oid = r.u32()?;
                let schema = r.cstr()?;
                let table = r.cstr()?;
                let _replica_identity = r.u8()?;
                let count = r.u16()?;
                let mut columns = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let flags = r.u8()?;
                    columns.push(Column {
                        name: r.cstr()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                        key: flags & 1 == 1,
                    });
                }
                self.relations.insert(oid, Relation { schema, table, columns });
                Ok(Vec::new())
            }
            b'Y' | b'O' => Ok(Vec::new()),
            b'I' => {
                let relation = self.lookup(r.u32()?)?;
                r.expect(b'N')?;
                let after = r.tuple(relation)?;
                Ok(vec![change(relation, 'c', None, Some(after))])
            }
            b'U' => {
                let relation = self.lookup(r.u32()?)?;
                let mut before = None;
                let mut tag = r.u8()?;
                if tag == b'K' || tag == b'O' {
                    before = Some(r.tuple(relation)?);
                    tag = r.u8()?;
                }
                if tag != b'N' {
                    return Err(PgOutputError::Malformed(format!("update without new tuple (tag {tag})")));
                }
                let after = r.tuple(relation)?;
                Ok(vec![change(relation, 'u', before, Some(after))])
            }
            b'D' => {
                let relation = self.lookup(r.u32()?)?;
                let tag = r.u8()?;
                if tag != b'K' && tag != b'O' {
                    return Err(PgOutputError::Malformed(format!("delete without old tuple (tag {tag})")));
                }
                let before = r.tuple(relation)?;
                Ok(vec![change(relation, 'd', Some(before), None)])
            }
            b'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                let mut changes = Vec::new();
                for _ in 0..count {
                    let relation = self.lookup(r.u32()?)?;
                    changes.push(RowChange {
                        op: 't',
                        schema: relation.schema.clone(),
                        table: relation.table.clone(),
                        key: Value::Null,
                        before: None,
                        after: None,
                    });
                }
                Ok(changes)
            }
            other => Err(PgOutputError::Malformed(format!("unexpected message tag {:?}", other as char))),
        }
    }

    /// The relation a row message (Insert, Update, Delete) is about, if known:
    /// names the stream an undecodable change is dead-lettered to.
    pub fn relation_of(&self, data: &[u8]) -> Option<&Relation> {
        match data {
            [b'I' | b'U' | b'D', a, b, c, d, ..] => self.relations.get(&u32::from_be_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    fn lookup(&self, oid: u32) -> Result<&Relation, PgOutputError> {
        self.relations.get(&oid).ok_or(PgOutputError::UnknownRelation(oid))
    }
}

fn change(
    relation: &Relation,
    op: char,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
) -> RowChange {
    // The key is the replica identity columns of the newest image, as Debezium's is.
    let mut key = Map::new();
    if let Some(image) = after.as_ref().or(before.as_ref()) {
        for column in relation.columns.iter().filter(|c| c.key) {
            if let Some(value) = image.get(&column.name) {
                key.insert(column.name.clone(), value.clone());
            }
        }
    }
    RowChange {
        op,
        schema: relation.schema.clone(),
        table: relation.table.clone(),
        key: if key.is_empty() { Value::Null } else { Value::Object(key) },
        before: before.map(Value::Object),
        after: after.map(Value::Object),
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PgOutputError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len());
        let end = end.ok_or_else(|| PgOutputError::Malformed(format!("message ends at byte {}", self.data.len())))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, PgOutputError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PgOutputError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PgOutputError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, PgOutputError> {
        Ok(self.u32()? as i32)
    }
    fn expect(&mut self, tag: u8) -> Result<(), PgOutputError> {
        match self.u8()? {
            t if t == tag => Ok(()),
            t => Err(PgOutputError::Malformed(format!("expected {:?}, found {:?}", tag as char, t as char))),
        }
    }
    fn cstr(&mut self) -> Result<String, PgOutputError> {
        let rest = &self.data[self.at..];
        let len =
            rest.iter().position(|b| *b == 0).ok_or_else(|| PgOutputError::Malformed("unterminated string".into()))?;
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.at += len + 1;
        Ok(text)
    }
    /// TupleData in text format, converted to Debezium's JSON encodings.
    fn tuple(&mut self, relation: &Relation) -> Result<Map<String, Value>, PgOutputError> {
        let count = usize::from(self.u16()?);
        let mut row = Map::new();
        for index in 0..count {
            let column = relation
                .columns
                .get(index)
                .ok_or_else(|| PgOutputError::Malformed(format!("tuple has more columns than {}", relation.table)))?;
            let value = match self.u8()? {
                b'n' => Value::Null,
                // Unchanged TOASTed value: Debezium's placeholder.
                b'u' => Value::String("__debezium_unavailable_value".to_owned()),
                b't' => {
                    let len = self.u32()? as usize;
                    let text = String::from_utf8_lossy(self.take(len)?).into_owned();
                    debezium_value(column.type_oid, column.type_modifier, text)
                }
                other => return Err(PgOutputError::Malformed(format!("tuple value kind {:?}", other as char))),
            };
            row.insert(column.name.clone(), value);
        }
        Ok(row)
    }
}
