//! A change event with typed access to its row images.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::{ChangeEvent, Op, PluginError};

/// One committed row change. Row images are JSON objects in Debezium's value
/// encodings (see [`crate::debezium`] for decimals, dates and unavailable values).
#[derive(Debug, Clone)]
pub struct Event {
    raw: ChangeEvent,
}

impl From<ChangeEvent> for Event {
    fn from(raw: ChangeEvent) -> Self {
        Self { raw }
    }
}

impl Event {
    /// The event as the WIT contract delivers it.
    pub fn raw(&self) -> &ChangeEvent {
        &self.raw
    }

    /// What happened to the row.
    pub fn op(&self) -> Op {
        self.raw.op
    }

    /// True for deletes.
    pub fn is_delete(&self) -> bool {
        self.raw.op == Op::Delete
    }

    /// True for snapshot reads (initial loads).
    pub fn is_snapshot(&self) -> bool {
        self.raw.op == Op::SnapshotRead
    }

    /// The table name, e.g. "session".
    pub fn table(&self) -> &str {
        &self.raw.table
    }

    /// The schema (Postgres) or database (MySQL), when known.
    pub fn schema(&self) -> Option<&str> {
        self.raw.schema.as_deref()
    }

    /// "schema.table", or just the table when the schema is unknown.
    pub fn qualified_table(&self) -> String {
        match &self.raw.schema {
            Some(schema) => format!("{schema}.{}", self.raw.table),
            None => self.raw.table.clone(),
        }
    }

    /// The comparable source position ("" when unknown).
    pub fn position(&self) -> &str {
        &self.raw.position
    }

    /// Commit time in the database, milliseconds since the epoch.
    pub fn committed_at_ms(&self) -> u64 {
        self.raw.committed_at_ms
    }

    /// The primary key columns, e.g. `#[derive(Deserialize)] struct Key { id: i64 }`.
    pub fn key<T: DeserializeOwned>(&self) -> Result<Option<T>, PluginError> {
        parse(Some(&self.raw.key))
    }

    /// The row after the change (None for deletes).
    pub fn after<T: DeserializeOwned>(&self) -> Result<Option<T>, PluginError> {
        parse(self.raw.after.as_deref())
    }

    /// The row before the change (often only the key columns, or None, unless
    /// the table has `REPLICA IDENTITY FULL`).
    pub fn before<T: DeserializeOwned>(&self) -> Result<Option<T>, PluginError> {
        parse(self.raw.before.as_deref())
    }

    /// The newest image of the row: `after`, else `before`.
    pub fn row<T: DeserializeOwned>(&self) -> Result<Option<T>, PluginError> {
        match self.after()? {
            Some(row) => Ok(Some(row)),
            None => self.before(),
        }
    }

    /// One column from `after`, else `before`, else the key; an error naming the
    /// column and table when none has it.
    pub fn row_field<T: DeserializeOwned>(&self, column: &str) -> Result<T, PluginError> {
        for image in [self.raw.after.as_deref(), self.raw.before.as_deref(), Some(self.raw.key.as_str())] {
            if let Some(value) = field(image, column)? {
                return serde_json::from_value(value).map_err(|e| {
                    PluginError::bad_event(format!("{}: column `{column}`: {e}", self.qualified_table()))
                });
            }
        }
        Err(PluginError::bad_event(format!(
            "{} {:?} event has no column `{column}`",
            self.qualified_table(),
            self.raw.op
        )))
    }

    /// The distinct values of a column across `before` and `after`: both the old
    /// and the new owner when a row moves (e.g. a session changing specialist).
    pub fn field_values<T: DeserializeOwned + PartialEq>(&self, column: &str) -> Result<Vec<T>, PluginError> {
        let mut values: Vec<T> = Vec::new();
        for image in [self.raw.before.as_deref(), self.raw.after.as_deref()] {
            if let Some(value) = field(image, column)? {
                if value.is_null() {
                    continue;
                }
                let value: T = serde_json::from_value(value)?;
                if !values.contains(&value) {
                    values.push(value);
                }
            }
        }
        Ok(values)
    }
}

fn parse<T: DeserializeOwned>(json: Option<&str>) -> Result<Option<T>, PluginError> {
    match json {
        None | Some("null") => Ok(None),
        Some(text) => Ok(Some(serde_json::from_str(text)?)),
    }
}

fn field(image: Option<&str>, column: &str) -> Result<Option<serde_json::Value>, PluginError> {
    let Some(text) = image.filter(|t| *t != "null") else { return Ok(None) };
    let mut json = serde_json::Deserializer::from_str(text);
    let value = Column(column).deserialize(&mut json)?;
    json.end()?;
    Ok(value)
}

/// Reads one column of a row image, building a value for it alone: the other
/// columns are only scanned, since `keys` runs for every event.
struct Column<'c>(&'c str);

impl<'de> DeserializeSeed<'de> for Column<'_> {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Column<'_> {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (a row image)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(NameIs(self.0))? {
            // Like a parsed object, a repeated name keeps its last value.
            if wanted {
                found = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Whether an object's member name is the wanted column, compared in place.
struct NameIs<'c>(&'c str);

impl<'de> DeserializeSeed<'de> for NameIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for NameIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<bool, E> {
        Ok(name == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(before: Option<&str>, after: Option<&str>) -> Event {
        Event::from(ChangeEvent {
            op: Op::Update,
            source: "s".into(),
            schema: Some("public".into()),
            table: "session".into(),
            key: r#"{"id":7}"#.into(),
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
            position: "pg:1".into(),
            committed_at_ms: 5,
        })
    }

    #[test]
    fn typed_images_and_fields() {
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Session {
            id: i64,
            specialist_id: i64,
        }
        let e = event(Some(r#"{"id":7,"specialist_id":1}"#), Some(r#"{"id":7,"specialist_id":2}"#));
        assert_eq!(e.after::<Session>().unwrap(), Some(Session { id: 7, specialist_id: 2 }));
        assert_eq!(e.before::<Session>().unwrap(), Some(Session { id: 7, specialist_id: 1 }));
        assert_eq!(e.row_field::<i64>("specialist_id").unwrap(), 2);
        assert_eq!(e.field_values::<i64>("specialist_id").unwrap(), vec![1, 2]);
        assert_eq!(e.qualified_table(), "public.session");
        let deleted = event(Some(r#"{"id":7}"#), None);
        assert_eq!(deleted.row_field::<i64>("id").unwrap(), 7);
        assert!(deleted.row_field::<i64>("specialist_id").is_err());
        let key_only = event(None, None);
        assert_eq!(key_only.row_field::<i64>("id").unwrap(), 7, "falls back to the key");
        assert!(key_only.row::<Session>().unwrap().is_none());
    }

    #[test]
    fn a_column_is_found_past_nested_values_and_escaped_names() {
        let image = r#"{"tags":{"id":1},"list":[{"id":2}],"na\u006de":"x","id":3,"note":"a \"quoted\" id"}"#;
        assert_eq!(field(Some(image), "id").unwrap(), Some(serde_json::json!(3)));
        assert_eq!(field(Some(image), "name").unwrap(), Some(serde_json::json!("x")), "escaped member name");
        assert_eq!(field(Some(image), "missing").unwrap(), None);
        assert_eq!(field(Some(r#"{"id":1,"id":2}"#), "id").unwrap(), Some(serde_json::json!(2)), "last one wins");
        assert_eq!(field(Some("null"), "id").unwrap(), None);
        assert!(field(Some("[1]"), "id").is_err(), "not an object");
        assert!(field(Some(r#"{"id":1} trailing"#), "id").is_err());
    }
}
