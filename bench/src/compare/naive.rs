//! The worker most teams write first: read one entry, run one query per key,
//! write it, XACK.

use std::time::Duration;

use anyhow::Result;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Value};
use sqlx::PgPool;

use super::runtime::Logic;

/// One consumer "worker" of group "naive" on one stream.
pub struct Naive {
    conn: MultiplexedConnection,
    pg: PgPool,
    stream: String,
    schema: String,
    key_prefix: String,
}

impl Naive {
    /// Connects and creates the group when missing.
    pub async fn new(redis: &redis::Client, pg: &PgPool, stream: &str, schema: &str, key_prefix: &str) -> Result<Self> {
        let mut conn = redis.get_multiplexed_async_connection().await?;
        let _: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("naive")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        Ok(Self {
            conn,
            pg: pg.clone(),
            stream: stream.to_owned(),
            schema: schema.to_owned(),
            key_prefix: key_prefix.to_owned(),
        })
    }

    /// Consumes until nothing is left for `idle`, or `limit` entries were
    /// handled. Returns how many it handled.
    pub async fn run(mut self, logic: Logic, limit: usize, idle: Duration) -> Result<usize> {
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
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut self.conn)
                .await?;
            let Some((id, value)) = first_entry(reply) else { break };
            let envelope: serde_json::Value = serde_json::from_str(&value)?;
            let event = envelope.get("payload").unwrap_or(&envelope);
            let row_id = event["after"]["id"].as_i64().or_else(|| event["before"]["id"].as_i64()).unwrap_or(0);
            match logic {
                Logic::Item => self.item(row_id).await?,
                Logic::Shop => {
                    // A category rename: refresh each of its products, one by one.
                    let sql = format!("select id from {}.product where category_id = $1", self.schema);
                    let products: Vec<i64> = sqlx::query_scalar(&sql).bind(row_id).fetch_all(&self.pg).await?;
                    for product in products {
                        self.product(product).await?;
                    }
                }
            }
            redis::cmd("XACK").arg(&self.stream).arg("naive").arg(&id).query_async::<()>(&mut self.conn).await?;
            handled += 1;
        }
        Ok(handled)
    }

    async fn item(&mut self, id: i64) -> Result<()> {
        let key = format!("{}:{id}", self.key_prefix);
        let sql = format!("select id, name, version from {}.item where id = $1", self.schema);
        let row: Option<(i64, Option<String>, Option<i64>)> =
            sqlx::query_as(&sql).bind(id).fetch_optional(&self.pg).await?;
        match row {
            Some((id, name, version)) => {
                let json = serde_json::json!({ "id": id, "name": name, "version": version }).to_string();
                self.conn.set::<_, _, ()>(&key, json).await?;
            }
            None => self.conn.del::<_, ()>(&key).await?,
        }
        Ok(())
    }

    async fn product(&mut self, id: i64) -> Result<()> {
        let key = format!("{}:{id}", self.key_prefix);
        let sql = format!(
            "select p.name, c.name, p.price::text, p.stock from {schema}.product p
             join {schema}.category c on c.id = p.category_id where p.id = $1",
            schema = self.schema
        );
        let row: Option<(String, String, String, i32)> = sqlx::query_as(&sql).bind(id).fetch_optional(&self.pg).await?;
        match row {
            Some((name, category, price, stock)) => {
                let fields = [("name", name), ("category", category), ("price", price), ("stock", stock.to_string())];
                self.conn.hset_multiple::<_, _, _, ()>(&key, &fields).await?;
            }
            None => self.conn.del::<_, ()>(&key).await?,
        }
        Ok(())
    }
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
