//! The built-in row mapper (`[mapper]` in a pipeline file): one table row
//! under one key, declared instead of written as a plugin. It runs in the
//! host with the plugin contract: `keys` renders the key template over the
//! event's row images, and `recompute` reads the keys' current rows from the
//! database (never trusting the event's image) and stores their columns.

mod config;
mod row_query;
mod template;
mod value;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

pub use config::{MapperConfig, MapperType};
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
}

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
        match first_error {
            Some(message) if keys.is_empty() => Err(self.failed("keys", format!("bad-event: {message}"))),
            _ => Ok(keys),
        }
    }

    async fn recompute_keys(&self, keys: &[String]) -> Result<Vec<Outcome>, CallError> {
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
