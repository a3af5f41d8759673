//! `plugins/testkit` in plain Rust: `<prefix>:<id>` = JSON of item (id, name, version).

use std::collections::HashMap;

use evercache::contract::{CacheValue, DbValue, Entry, Outcome};
use evercache::event::ChangeEvent;
use evercache::plugin::{CallError, NativeContext, NativeFactory, NativePlugin};
use evercache::query::QueryRunner;
use futures::future::BoxFuture;

use super::{Settings, failed, id_of, ids_of, text};

const NAME: &str = "native_testkit";

#[derive(Clone)]
struct NativeTestkit {
    key_prefix: String,
    sql: String,
    database: QueryRunner,
}

/// The factory registered as plugin "native_testkit".
pub fn factory() -> NativeFactory {
    std::sync::Arc::new(|context: NativeContext| {
        let Settings { schema, key_prefix, database } = Settings::from(context)?;
        let sql = format!("select id, name, version from {schema}.item where id = any($1)");
        Ok(Box::new(NativeTestkit { key_prefix, sql, database }) as Box<dyn NativePlugin>)
    })
}

impl NativePlugin for NativeTestkit {
    fn label(&self) -> String {
        format!("{NAME}@0")
    }

    fn planner(&self) -> Option<Box<dyn NativePlugin>> {
        Some(Box::new(self.clone()))
    }

    fn keys<'a>(&'a mut self, event: &'a ChangeEvent) -> BoxFuture<'a, Result<Vec<String>, CallError>> {
        Box::pin(async move {
            let id = id_of(event).ok_or_else(|| failed(NAME, "keys", "event without id".to_owned()))?;
            Ok(vec![format!("{}:{id}", self.key_prefix)])
        })
    }

    fn recompute<'a>(&'a mut self, keys: &'a [String]) -> BoxFuture<'a, Result<Vec<Outcome>, CallError>> {
        Box::pin(async move {
            let ids = ids_of(keys).ok_or_else(|| failed(NAME, "recompute", "key without id".to_owned()))?;
            let rows = self
                .database
                .query(&self.sql, &[DbValue::IntList(ids.clone())])
                .await
                .map_err(|e| failed(NAME, "recompute", e.to_string()))?;
            let mut found = HashMap::with_capacity(rows.values.len());
            for row in rows.values {
                if let [DbValue::Int(id), name, version] = row.as_slice() {
                    let version = match version {
                        DbValue::Int(v) => Some(*v),
                        _ => None,
                    };
                    let json = serde_json::json!({ "id": id, "name": text(name), "version": version }).to_string();
                    found.insert(*id, Outcome::Put(CacheValue { entry: Entry::Json(json), ttl_seconds: None }));
                }
            }
            Ok(ids.iter().map(|id| found.remove(id).unwrap_or(Outcome::Delete)).collect())
        })
    }
}
