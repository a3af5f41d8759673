//! The worker most teams write first: read one entry, run one query, SET, XACK.

use std::time::Duration;

use anyhow::Result;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Value};
use sqlx::PgPool;

/// Consumes `stream` with group "naive" until nothing is left for `idle`, or
/// `limit` entries were handled. Returns how many it handled.
pub async fn run(
    redis: &redis::Client,
    pg: &PgPool,
    stream: &str,
    schema: &str,
    key_prefix: &str,
    limit: usize,
    idle: Duration,
) -> Result<usize> {
    let mut conn: MultiplexedConnection = redis.get_multiplexed_async_connection().await?;
    let _: Result<(), _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("naive")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    let sql = format!("select id, name, version from {schema}.item where id = $1");
    let mut handled = 0;
    while handled < limit {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("naive")
            .arg("worker")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(idle.as_millis() as u64)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let Some((id, value)) = first_entry(reply) else { break };
        let event: serde_json::Value = serde_json::from_str(&value)?;
        let row_id = event["after"]["id"].as_i64().or_else(|| event["before"]["id"].as_i64()).unwrap_or(0);
        let key = format!("{key_prefix}:{row_id}");
        let row: Option<(i64, Option<String>, Option<i64>)> =
            sqlx::query_as(&sql).bind(row_id).fetch_optional(pg).await?;
        match row {
            Some((id, name, version)) => {
                let json = serde_json::json!({ "id": id, "name": name, "version": version }).to_string();
                conn.set::<_, _, ()>(&key, json).await?;
            }
            None => conn.del::<_, ()>(&key).await?,
        }
        redis::cmd("XACK").arg(stream).arg("naive").arg(&id).query_async::<()>(&mut conn).await?;
        handled += 1;
    }
    Ok(handled)
}

/// The entry id and value of a one-entry XREADGROUP reply (compact layout).
fn first_entry(reply: Value) -> Option<(String, String)> {
    let Value::Array(streams) = reply else { return None };
    let Value::Array(stream) = streams.into_iter().next()? else { return None };
    let Value::Array(entries) = stream.into_iter().nth(1)? else { return None };
    let Value::Array(entry) = entries.into_iter().next()? else { return None };
    let mut entry = entry.into_iter();
    let id = text(entry.next()?)?;
    let Value::Array(fields) = entry.next()? else { return None };
    let value = text(fields.into_iter().nth(1)?)?;
    Some((id, value))
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
