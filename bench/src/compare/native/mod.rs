//! The benchmark plugins' logic compiled into the host, to measure what the
//! Wasm sandbox costs: each mirrors a plugin of `plugins/` line for line.

mod shop;
mod testkit;

use evercache::contract::DbValue;
use evercache::event::ChangeEvent;
use evercache::plugin::{CallError, NativeContext};
use evercache::query::QueryRunner;

pub use shop::factory as shop_product;
pub use testkit::factory as testkit;

/// What both benchmark plugins are configured with, as their Wasm twins are.
struct Settings {
    schema: String,
    key_prefix: String,
    database: QueryRunner,
}

impl Settings {
    fn from(context: NativeContext) -> Result<Self, String> {
        let get = |name: &str| {
            context.config.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).ok_or(format!("{name} is required"))
        };
        Ok(Self {
            schema: get("schema")?,
            key_prefix: get("key_prefix")?,
            database: context.database.ok_or("a database is required")?,
        })
    }
}

fn failed(plugin: &str, call: &'static str, message: String) -> CallError {
    CallError::Plugin { plugin: format!("{plugin}@0"), call, message }
}

/// The row's `id` from the event's after (or before) image.
fn id_of(event: &ChangeEvent) -> Option<i64> {
    let image = event.after.as_deref().or(event.before.as_deref())?;
    serde_json::from_str::<serde_json::Value>(image).ok()?.get("id")?.as_i64()
}

/// The ids at the end of `keys` (`<prefix>:<id>`).
fn ids_of(keys: &[String]) -> Option<Vec<i64>> {
    keys.iter().map(|k| k.rsplit(':').next().and_then(|id| id.parse::<i64>().ok())).collect()
}

fn text(value: &DbValue) -> Option<&str> {
    match value {
        DbValue::Text(t) => Some(t),
        _ => None,
    }
}
