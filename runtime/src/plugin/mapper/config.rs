//! `[mapper]` in a pipeline file: one table row under one key, declared
//! instead of written as a plugin.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::template::KeyTemplate;

/// How the row is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapperType {
    /// A JSON object of the columns (default); a null column is `null`.
    #[default]
    Json,
    /// A Redis hash, one field per column; a null column is left out.
    Hash,
    /// A Redis string holding the one selected column's value as text; a
    /// null value deletes the key.
    String,
}

/// Where the stored row comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapperSource {
    /// The row read from the database when the key is recomputed (default):
    /// right whatever the events say, one query per batch.
    #[default]
    Database,
    /// The event's after-image, with no database round trip (a delete, or the
    /// old key of an update that moved the row, deletes). Right only while the
    /// key's value is that one row as the change log renders it: values that
    /// join other tables, or columns the log leaves out (Postgres TOAST values
    /// unchanged by an update without `REPLICA IDENTITY FULL`), go stale. Keys
    /// filled by the read path or a resync are still read from the database.
    Event,
}

/// `[mapper]`: the built-in row mapper.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapperConfig {
    /// The key, a template over the row's columns, e.g. "user:{id}" or
    /// "order:{customer_id}:{id}" (`{{`/`}}` for literal braces; two columns
    /// need text between them). Its columns must be the primary key's, unless
    /// `query` says how to find the rows.
    pub key: String,
    /// "json" (default), "hash" or "string".
    #[serde(default, rename = "type")]
    pub kind: MapperType,
    /// The columns stored, in this order; default: every column.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Columns left out of the value (with `columns` unset).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field names in the value for some columns, e.g. `{ email = "mail" }`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Safety TTL of every written key, e.g. "24h"; default: the pipeline's `ttl`.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// "database" (default): recompute from the database; "event": store the
    /// event's after-image itself.
    #[serde(default)]
    pub from: MapperSource,
    /// The query that reads the rows of a batch of keys, e.g. "select id, name
    /// from users where id = any($1)" (MySQL: `?`, expanded to the list). Each
    /// of the key's columns is a parameter, in template order: an array of the
    /// batch's values (as text; cast in Postgres, e.g. `$1::bigint[]`). Every
    /// row must hold the key's columns; a key no row renders is deleted.
    /// Default: the table's rows by the key's columns.
    #[serde(default)]
    pub query: Option<String>,
}

impl MapperConfig {
    /// Checks what can be checked without the database: the parsed template,
    /// or the `[mapper]` field at fault (`""` for the pipeline's `tables`) and what is wrong.
    pub fn validate(&self, tables: &[String]) -> Result<KeyTemplate, (&'static str, String)> {
        if tables.len() != 1 {
            return Err(("", format!("a [mapper] stores one table's rows; `tables` lists {}", tables.len())));
        }
        let template = KeyTemplate::parse(&self.key).map_err(|message| ("key", message))?;
        if self.columns.is_some() && !self.exclude.is_empty() {
            return Err(("exclude", "give `columns` or `exclude`, not both".to_owned()));
        }
        if self.kind == MapperType::String && self.columns.as_ref().is_none_or(|c| c.len() != 1) {
            return Err(("type", "type = \"string\" stores one column: name it in `columns = [\"…\"]`".to_owned()));
        }
        if let Some((column, _)) = self.rename.iter().find(|(_, to)| to.is_empty()) {
            return Err(("rename", format!("column `{column}` is renamed to an empty name")));
        }
        if self.ttl.is_some_and(|ttl| ttl.as_secs() == 0 || ttl.as_secs() > u64::from(u32::MAX)) {
            return Err(("ttl", "must be between 1s and about 136 years".to_owned()));
        }
        Ok(template)
    }

    /// True when `column` goes into the stored value.
    pub fn stores(&self, column: &str) -> bool {
        match &self.columns {
            Some(columns) => columns.iter().any(|c| c == column),
            None => !self.exclude.iter().any(|c| c == column),
        }
    }

    /// The name `column` has in the stored value.
    pub fn field<'a>(&'a self, column: &'a str) -> &'a str {
        self.rename.get(column).map_or(column, String::as_str)
    }
}
