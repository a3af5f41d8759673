//! "Who is online now": `specialist:{id}` as JSON with the specialist's name,
//! status (online, busy, offline) and active session count, recomputed from the
//! `specialist` and `session` tables whenever either changes.

use std::collections::HashMap;

use evercache_plugin_sdk::{Config, Event, Outcome, Plugin, PluginError, export_plugin, query};
use serde::Serialize;

struct SpecialistStatus {
    key_prefix: String,
    /// Recompute query for a batch of specialist ids (Postgres: `$1` = bigint[];
    /// MySQL/MariaDB: `?` = the ids as a JSON array).
    sql: String,
}

#[derive(Serialize)]
struct Listing {
    id: i64,
    name: String,
    status: &'static str,
    active_sessions: i64,
}

impl Plugin for SpecialistStatus {
    fn init(config: &Config) -> Result<Self, PluginError> {
        let schema = config.identifier("schema", "public")?;
        let ids = match config.get_or("dialect", "postgres") {
            "mysql" => "s.id in (select v from json_table(?, '$[*]' columns (v bigint path '$')) ids)",
            _ => "s.id = any($1)",
        };
        Ok(Self {
            key_prefix: config.get_or("key_prefix", "specialist").to_owned(),
            // Plain SQL both databases speak; only the id list differs.
            sql: format!(
                "select s.id, s.name, s.online, count(case when x.ended_at is null then x.id end) as active
                 from {schema}.specialist s left join {schema}.session x on x.specialist_id = s.id
                 where {ids} group by s.id, s.name, s.online"
            ),
        })
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
        let ids: Vec<i64> = match event.table() {
            "specialist" => vec![event.row_field("id")?],
            // A session that moves between specialists touches both.
            "session" => event.field_values("specialist_id")?,
            other => return Err(PluginError::bad_event(format!("unexpected table {other}"))),
        };
        Ok(ids.into_iter().map(|id| format!("{}:{id}", self.key_prefix)).collect())
    }

    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        let ids = keys.iter().map(|k| self.id_of(k)).collect::<Result<Vec<i64>, _>>()?;
        let mut listings = HashMap::new();
        for row in query!(&self.sql, ids)?.iter() {
            let (id, online, active) = (row.get::<i64>("id")?, row.get::<bool>("online")?, row.get::<i64>("active")?);
            let status = match (online, active) {
                (false, _) => "offline",
                (true, 0) => "online",
                (true, _) => "busy",
            };
            listings.insert(id, Listing { id, name: row.get("name")?, status, active_sessions: active });
        }
        ids.iter().map(|id| listings.get(id).map_or(Ok(Outcome::delete()), Outcome::json)).collect()
    }
}

impl SpecialistStatus {
    fn id_of(&self, key: &str) -> Result<i64, PluginError> {
        key.strip_prefix(&self.key_prefix)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| PluginError::bad_event(format!("not a specialist key: {key}")))
    }
}

export_plugin!(SpecialistStatus);
