//! The built-in row mapper (`[mapper]` in a pipeline file): one table row
//! under one key, declared instead of written as a plugin. It runs in the
//! host with the plugin contract: `keys` renders the key template over the
//! event's row images, and `recompute` reads the keys' current rows from the
//! database (never trusting the event's image) and stores their columns. With
//! `from = "event"` it stores the newest image `keys` saw for each key instead
//! (kept aside until `recompute` takes it), and reads the database only for
//! keys no event named (read-path fills, resyncs).

mod config;
mod row_query;
mod template;
mod value;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

pub use config::{MapperConfig, MapperSource, MapperType};
pub use row_query::ColumnMistake;
pub use template::KeyTemplate;

use super::instance::CallError;
use super::native::NativePlugin;
use crate::contract::{ChangeEvent, DbValue, Op, Outcome};
use crate::query::QueryRunner;

/// The plugin name a `[mapper]` pipeline runs.
pub const MAPPER_PLUGIN: &str = "mapper";

/// A pipeline's row mapper; clones share the query built on first use.
#[derive(Clone)]
pub struct RowMapper {
    config: Arc<MapperConfig>,
    template: Arc<KeyTemplate>,
    table: Arc<str>,
    database: Option<QueryRunner>,
    call_timeout: Duration,
    query: Arc<OnceCell<String>>,
    /// `from = "event"`: each key's newest image (`None`: deleted) and its position, until recomputed.
    images: Arc<Mutex<HashMap<String, KeptImage>>>,
}

/// An event's position and its after-image (`None`: the key is deleted).
type KeptImage = (String, Option<Map<String, Value>>);

/// Images kept aside past this many (events whose batches never recompute,
/// e.g. dead-lettered) are dropped; their keys are read from the database.
const MAX_IMAGES: usize = 100_000;

/// Debezium's stand-in for a column value the change log does not carry.
const UNAVAILABLE: &str = "__debezium_unavailable_value";

impl RowMapper {
    /// The mapper of a pipeline over `table`, reading `database`, each call
    /// given up after `call_timeout`.
    pub fn new(
        config: &MapperConfig,
        table: &str,
        database: Option<QueryRunner>,
        call_timeout: Duration,
    ) -> Result<Self, String> {
        let template =
            config.validate(&[table.to_owned()]).map_err(|(field, message)| format!("mapper.{field}: {message}"))?;
        Ok(Self {
            config: Arc::new(config.clone()),
            template: Arc::new(template),
            table: Arc::from(table),
            database,
            call_timeout,
            query: Arc::new(OnceCell::new()),
            images: Arc::default(),
        })
    }

    /// Checks the template and the named columns against the table's real
    /// columns (`evercache check`), building the default query on the way.
    pub async fn check(&self) -> Result<(), ColumnMistake> {
        let Some(database) = &self.database else {
            return Err(("key", "the pipeline has no database to read its rows from".to_owned()));
        };
        let query = row_query::default_query(database, &self.table, &self.template, &self.config).await?;
        let _ = self.query.set(query);
        Ok(())
    }

    fn failed(&self, call: &'static str, message: String) -> CallError {
        CallError::Plugin { plugin: self.label(), call, message }
    }

    /// The keys of `event`'s row images (before and after: an update that
    /// changes a key column touches the old key and the new one).
    fn keys_of(&self, event: &ChangeEvent) -> Result<Vec<String>, CallError> {
        if event.op == Op::Truncate {
            return Err(self.failed(
                "keys",
                "bad-event: a TRUNCATE names no row; give the pipeline key_patterns (a recompute mapper owns its \
                 template's keys by default) so the keys it owns are recomputed"
                    .to_owned(),
            ));
        }
        let object = |text: &str| serde_json::from_str::<Value>(text).ok().and_then(|v| v.as_object().cloned());
        let key = object(&event.key).unwrap_or_default();
        let images: Vec<Map<String, Value>> =
            [&event.before, &event.after].into_iter().flatten().filter_map(|text| object(text)).collect();
        let mut keys: Vec<String> = Vec::new();
        let mut first_error = None;
        // With only the key image (a delete without its old row) the key columns may still render.
        let candidates = if images.is_empty() { vec![key.clone()] } else { images };
        for mut row in candidates {
            for (column, value) in &key {
                row.entry(column.clone()).or_insert_with(|| value.clone());
            }
            match self.template.render(&row) {
                Ok(rendered) if !keys.contains(&rendered) => keys.push(rendered),
                Ok(_) => {}
                Err(message) => first_error = first_error.or(Some(message)),
            }
        }
        if self.config.from == MapperSource::Event {
            self.keep_images(event, &keys);
        }
        match first_error {
            Some(message) if keys.is_empty() => Err(self.failed("keys", format!("bad-event: {message}"))),
            _ => Ok(keys),
        }
    }

    /// Keeps `event`'s after-image for each of its keys the image renders
    /// (the others, an update's old key or a delete's, get none: deleted).
    fn keep_images(&self, event: &ChangeEvent, keys: &[String]) {
        let after = event.after.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
        let after = after.and_then(|v| v.as_object().cloned()).filter(|_| event.op != Op::Delete);
        // An image missing a column (Postgres' unchanged TOAST value) is no value: read the row instead.
        let partial = after.as_ref().is_some_and(|row| row.values().any(|v| v.as_str() == Some(UNAVAILABLE)));
        let after_key = after.as_ref().and_then(|row| self.template.render(row).ok());
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if images.len() > MAX_IMAGES {
            tracing::warn!(plugin = %self.label(), kept = images.len(), "row images never recomputed dropped; \
                their keys are read from the database");
            images.clear();
        }
        for key in keys {
            let image = if after_key.as_ref() == Some(key) { after.clone() } else { None };
            match images.get(key) {
                Some((position, _)) if *position > event.position => {}
                _ if partial => {
                    images.remove(key);
                }
                _ => {
                    images.insert(key.clone(), (event.position.clone(), image));
                }
            }
        }
    }

    async fn recompute_keys(&self, keys: &[String]) -> Result<Vec<Outcome>, CallError> {
        if self.config.from == MapperSource::Database {
            return self.read_rows(keys).await;
        }
        let taken: Vec<Option<Option<Map<String, Value>>>> = {
            let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter().map(|key| images.remove(key).map(|(_, image)| image)).collect()
        };
        let unnamed: Vec<String> =
            keys.iter().zip(&taken).filter(|(_, image)| image.is_none()).map(|(key, _)| key.clone()).collect();
        let mut read = if unnamed.is_empty() { Vec::new() } else { self.read_rows(&unnamed).await? }.into_iter();
        Ok(taken
            .into_iter()
            .map(|image| match image {
                Some(Some(row)) => value::image_outcome(&row, &self.config),
                Some(None) => Outcome::Delete,
                None => read.next().unwrap_or(Outcome::Keep),
            })
            .collect())
    }

    async fn read_rows(&self, keys: &[String]) -> Result<Vec<Outcome>, CallError> {
        let database = self
            .database
            .as_ref()
            .ok_or_else(|| self.failed("recompute", "the pipeline has no database to read its rows from".to_owned()))?;
        let deadline = Instant::now() + self.call_timeout;
        let columns = self.template.columns();
        let mut lists: Vec<Vec<String>> = vec![Vec::new(); columns.len()];
        for key in keys {
            let values = self.template.values(key).ok_or_else(|| {
                self.failed(
                    "recompute",
                    format!("key \"{key}\" does not match the template \"{}\"", self.template.text()),
                )
            })?;
            for (list, (_, value)) in lists.iter_mut().zip(values) {
                list.push(value);
            }
        }
        let sql = match &self.config.query {
            Some(sql) => sql.as_str(),
            None => self
                .query
                .get_or_try_init(|| row_query::default_query(database, &self.table, &self.template, &self.config))
                .await
                .map_err(|(field, message)| self.failed("recompute", format!("mapper.{field}: {message}")))?,
        };
        let params: Vec<DbValue> = lists.into_iter().map(DbValue::TextList).collect();
        let rows = database.query_until(sql, &params, Some(deadline)).await.map_err(|e| {
            if e.is_transient() {
                CallError::Unavailable { plugin: self.label(), call: "recompute", message: e.to_string() }
            } else {
                self.failed("recompute", e.to_string())
            }
        })?;
        let mut found: HashMap<String, Outcome> = HashMap::with_capacity(rows.values.len());
        for row in &rows.values {
            let image: Map<String, Value> = rows.columns.iter().cloned().zip(row.iter().map(value::json_of)).collect();
            let key = self.template.render(&image).map_err(|message| {
                self.failed("recompute", format!("a row of the mapper's query cannot render its key: {message}"))
            })?;
            found.entry(key).or_insert_with(|| value::outcome(&rows.columns, row, &self.config));
        }
        Ok(keys.iter().map(|key| found.get(key).cloned().unwrap_or(Outcome::Delete)).collect())
    }
}

impl NativePlugin for RowMapper {
    fn label(&self) -> String {
        format!("{MAPPER_PLUGIN}@{}", env!("CARGO_PKG_VERSION"))
    }

    fn keys<'a>(&'a mut self, event: &'a ChangeEvent) -> BoxFuture<'a, Result<Vec<String>, CallError>> {
        Box::pin(async move { self.keys_of(event) })
    }

    fn recompute<'a>(&'a mut self, keys: &'a [String]) -> BoxFuture<'a, Result<Vec<Outcome>, CallError>> {
        Box::pin(async move { self.recompute_keys(keys).await })
    }

    fn planner(&self) -> Option<Box<dyn NativePlugin>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::CacheValue;

    fn event(op: Op, position: &str, before: Option<&str>, after: Option<&str>) -> ChangeEvent {
        ChangeEvent {
            op,
            source: "s".into(),
            schema: Some("public".into()),
            table: "users".into(),
            key: r#"{"id":1}"#.into(),
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
            position: position.into(),
            committed_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn images_from_events_newest_first_and_none_for_a_partial_row() {
        let config: MapperConfig = toml::from_str("key = \"user:{id}\"\nfrom = \"event\"").unwrap();
        let mapper = RowMapper::new(&config, "public.users", None, Duration::from_secs(1)).unwrap();
        let newer = event(Op::Update, "pg:2", None, Some(r#"{"id":1,"name":"new"}"#));
        let older = event(Op::Update, "pg:1", None, Some(r#"{"id":1,"name":"old"}"#));
        assert_eq!(mapper.keys_of(&newer).unwrap(), ["user:1"]);
        mapper.keys_of(&older).unwrap();
        let moved = event(Op::Update, "pg:3", Some(r#"{"id":2,"name":"x"}"#), Some(r#"{"id":3,"name":"x"}"#));
        assert_eq!(mapper.keys_of(&moved).unwrap(), ["user:2", "user:3"]);
        let outcomes = mapper.recompute_keys(&["user:1".into(), "user:2".into(), "user:3".into()]).await.unwrap();
        let json = |o: &Outcome| match o {
            Outcome::Put(CacheValue { entry: crate::contract::Entry::Json(text), .. }) => text.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(json(&outcomes[0]), r#"{"id":1,"name":"new"}"#, "the newest image wins");
        assert_eq!(outcomes[1], Outcome::Delete, "the row moved away from its old key");
        assert_eq!(json(&outcomes[2]), r#"{"id":3,"name":"x"}"#);

        let partial = event(Op::Update, "pg:4", None, Some(r#"{"id":1,"bio":"__debezium_unavailable_value"}"#));
        mapper.keys_of(&partial).unwrap();
        let error = mapper.recompute_keys(&["user:1".into()]).await.unwrap_err();
        assert!(error.to_string().contains("no database"), "read from the database instead: {error}");
    }
}
