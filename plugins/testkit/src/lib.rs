//! A configurable plugin for the runtime's end-to-end tests: caches
//! `<schema>.<table>(id, name, version)` rows as `<key_prefix>:<id>`, and can be
//! told to fail (`fail_ids`), trap (`panic_ids`), sleep in `keys` (`sleep_ids`,
//! a WASI sleep of an hour) or run a query that sleeps in `recompute`
//! (`slow_query_ids`, `pg_sleep(3600)`) on chosen rows, or pause for half a
//! second after reading a row whose name is `slow_name` (to hold a read open
//! while the row changes). `dialect = "mysql"`
//! reads MySQL or MariaDB (`?` placeholders, the ids bound as a JSON array).

use std::collections::HashMap;

use evercache_plugin_sdk::{Config, Event, Outcome, Plugin, PluginError, export_plugin, query};
use serde_json::json;

struct Testkit {
    key_prefix: String,
    sql: String,
    fail_ids: Vec<i64>,
    panic_ids: Vec<i64>,
    sleep_ids: Vec<i64>,
    slow_query_ids: Vec<i64>,
    sleep_sql: &'static str,
    slow_name: Option<String>,
    pause_sql: &'static str,
    ttl_seconds: Option<u32>,
    hash: bool,
}

impl Plugin for Testkit {
    fn init(config: &Config) -> Result<Self, PluginError> {
        let schema = config.identifier("schema", "public")?;
        let table = config.identifier("table", "item")?;
        let mysql = config.get_or("dialect", "postgres") == "mysql";
        let sql = if mysql {
            format!(
                "select id, name, version from {schema}.{table} \
                 where id in (select v from json_table(?, '$[*]' columns (v bigint path '$')) ids)"
            )
        } else {
            format!("select id, name, version from {schema}.{table} where id = any($1)")
        };
        Ok(Self {
            key_prefix: config.require("key_prefix")?.to_owned(),
            sql,
            sleep_sql: if mysql { "select sleep(3600)" } else { "select pg_sleep(3600)" },
            slow_name: config.get("slow_name").map(str::to_owned),
            pause_sql: if mysql { "select sleep(0.5)" } else { "select pg_sleep(0.5)" },
            fail_ids: config.list("fail_ids")?,
            panic_ids: config.list("panic_ids")?,
            sleep_ids: config.list("sleep_ids")?,
            slow_query_ids: config.list("slow_query_ids")?,
            ttl_seconds: config.parse("ttl_seconds")?,
            hash: config.get_or("mode", "json") == "hash",
        })
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
        let id: i64 = event.row_field("id")?;
        if self.fail_ids.contains(&id) {
            return Err(PluginError::other(format!("testkit: configured failure for id {id}")));
        }
        assert!(!self.panic_ids.contains(&id), "testkit: configured panic for id {id}");
        if self.sleep_ids.contains(&id) {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        Ok(vec![format!("{}:{id}", self.key_prefix)])
    }

    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        let ids = keys
            .iter()
            .map(|k| k.rsplit(':').next().and_then(|id| id.parse::<i64>().ok()))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| PluginError::bad_event("testkit: key without a numeric id"))?;
        if ids.iter().any(|id| self.slow_query_ids.contains(id)) {
            query!(self.sleep_sql)?;
        }
        let mut found = HashMap::new();
        let mut pause = false;
        for row in query!(&self.sql, ids)?.iter() {
            let (id, name, version) =
                (row.get::<i64>("id")?, row.get::<Option<String>>("name")?, row.get::<Option<i64>>("version")?);
            pause |= name.is_some() && name == self.slow_name;
            let outcome = if self.hash {
                let fields = [
                    ("id", id.to_string()),
                    ("name", name.unwrap_or_default()),
                    ("version", version.unwrap_or(0).to_string()),
                ];
                Outcome::hash(fields)
            } else {
                Outcome::json(&json!({ "id": id, "name": name, "version": version }))?
            };
            found.insert(id, outcome);
        }
        if pause {
            query!(self.pause_sql)?;
        }
        Ok(ids
            .iter()
            .map(|id| match (found.remove(id), self.ttl_seconds) {
                (Some(outcome), Some(ttl)) => outcome.with_ttl(ttl),
                (Some(outcome), None) => outcome,
                (None, _) => Outcome::delete(),
            })
            .collect())
    }
}

export_plugin!(Testkit);
