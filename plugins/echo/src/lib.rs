//! Echoes what the SDK gives a plugin: `keys` answers one "key", the JSON of
//! the event as the SDK parsed it (`{"op","table","key","before","after"}`,
//! row images as JSON values), and `recompute` keeps every key. The format
//! conformance suite calls it directly to show that Debezium and evercache's
//! own captures hand plugins the same values; it is not meant for a pipeline.

use evercache_plugin_sdk::{Config, Event, Op, Outcome, Plugin, PluginError, export_plugin};
use serde_json::{Value, json};

struct Echo;

impl Plugin for Echo {
    fn init(_config: &Config) -> Result<Self, PluginError> {
        Ok(Echo)
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
        let op = match event.op() {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::SnapshotRead => "r",
            Op::Truncate => "t",
        };
        let echo = json!({
            "op": op,
            "table": event.qualified_table(),
            "key": event.key::<Value>()?,
            "before": event.before::<Value>()?,
            "after": event.after::<Value>()?,
        });
        Ok(vec![echo.to_string()])
    }

    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        Ok(keys.iter().map(|_| Outcome::keep()).collect())
    }
}

export_plugin!(Echo);
