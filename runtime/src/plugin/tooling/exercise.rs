//! `evercache plugin test PLUGIN --events FILE --database URL`: runs a
//! component's `init`, `keys` and `recompute` against a real database, without
//! Redis, and prints per event the keys and outcomes as JSON lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::contract::{CacheValue, Entry, Op, Outcome};
use crate::event::debezium::{Decoded, decode_record};
use crate::plugin::{PluginEngine, PluginInstance, SandboxConfig, load_file};
use crate::query::DatabaseConfig;

/// What to run.
pub struct ExerciseOptions {
    /// The `.wasm` component.
    pub plugin: PathBuf,
    /// Debezium change events, one JSON envelope per line (`#` comments allowed).
    pub events: PathBuf,
    /// Postgres URL the plugin's queries run on (read-only, as in production).
    pub database: String,
    /// The pipeline `[config]` handed to `init`.
    pub config: Vec<(String, String)>,
    /// Limits the calls run under.
    pub sandbox: SandboxConfig,
}

/// Runs every event; returns how many failed (each failure is printed as JSON
/// with the plugin, the call and the plugin's own message).
pub async fn exercise(options: &ExerciseOptions, out: &mut impl Write) -> Result<usize> {
    let events = std::fs::read_to_string(&options.events)
        .with_context(|| format!("reading events file {}", options.events.display()))?;
    let engine = PluginEngine::new(options.sandbox.clone()).map_err(|e| anyhow::anyhow!("plugin engine: {e:#}"))?;
    let plugin = load_file(&engine, &options.plugin).await?;
    let database = DatabaseConfig::deserialize(toml::Value::Table(toml::Table::from_iter([(
        "url".to_owned(),
        toml::Value::String(options.database.clone()),
    )])))
    .context("database options")?
    .build("plugin-test")?;
    database
        .ping(std::time::Duration::from_secs(5))
        .await
        .with_context(|| format!("database {} is not reachable", redacted(&options.database)))?;
    let mut instance =
        PluginInstance::new(&engine, plugin.clone(), "plugin-test", Some(database), options.config.clone());
    instance.init().await?;
    let mut failed = 0;
    for (index, line) in events.lines().enumerate() {
        let line_no = index + 1;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let event = match decode_record("fixture", None, Some(text)) {
            Ok(Decoded::Change(event)) => event,
            Ok(Decoded::Skip(reason)) => {
                writeln!(out, "{}", json!({ "line": line_no, "skipped": reason.as_str() }))?;
                continue;
            }
            Err(e) => bail!("{}:{line_no}: not a Debezium change event: {e}", options.events.display()),
        };
        let table = format!("{}.{}", event.schema.as_deref().unwrap_or_default(), event.table);
        let mut report = json!({ "line": line_no, "op": op_name(event.op), "table": table });
        let result = match instance.keys(&event).await {
            Ok(keys) => {
                report["keys"] = json!(keys);
                instance.recompute(&keys).await.map(|outcomes| {
                    report["outcomes"] =
                        keys.iter().zip(outcomes).map(|(key, outcome)| outcome_json(key, outcome)).collect();
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            failed += 1;
            report["error"] = json!(e.to_string());
        }
        writeln!(out, "{report}")?;
    }
    Ok(failed)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::SnapshotRead => "snapshot-read",
        Op::Truncate => "truncate",
    }
}

fn outcome_json(key: &str, outcome: Outcome) -> Value {
    match outcome {
        Outcome::Put(CacheValue { entry, ttl_seconds }) => {
            let entry = match entry {
                Entry::Text(text) => json!({ "text": text }),
                Entry::Json(text) => {
                    json!({ "json": serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)) })
                }
                Entry::Hash(fields) => {
                    json!({ "hash": fields.into_iter().collect::<std::collections::BTreeMap<_, _>>() })
                }
                Entry::Set(members) => json!({ "set": members }),
                Entry::SortedSet(members) => json!({ "sorted_set": members }),
            };
            json!({ "key": key, "outcome": "put", "entry": entry, "ttl_seconds": ttl_seconds })
        }
        Outcome::Delete => json!({ "key": key, "outcome": "delete" }),
        Outcome::Keep => json!({ "key": key, "outcome": "keep" }),
    }
}

fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_owned(),
    }
}
