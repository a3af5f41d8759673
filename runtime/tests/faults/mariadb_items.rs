//! `<db>`.item(id, name, version) on a MariaDB of a scenario's own, and how
//! far the cache is from it.

use mysql_async::prelude::Queryable;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

/// Creates database `db` with `item` rows 1..=`rows`, each `'v0'` at version 0.
pub async fn create_items(pool: &mysql_async::Pool, db: &str, rows: u64) {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(format!(
        "create database `{db}`; create table `{db}`.item (id bigint primary key, name text, version bigint not null);
         insert into `{db}`.item select seq, 'v0', 0 from `{db}`.seq_1_to_{rows}"
    ))
    .await
    .unwrap();
}

/// Keys whose cached JSON differs from the database's row (a row never
/// updated, version 0, must have no key).
pub async fn mismatches(pool: &mysql_async::Pool, redis: &mut MultiplexedConnection, db: &str, prefix: &str) -> usize {
    let Ok(mut conn) = pool.get_conn().await else { return usize::MAX };
    let Ok(rows) = conn
        .query::<(i64, Option<String>, i64), _>(format!("select id, name, version from `{db}`.item order by id"))
        .await
    else {
        return usize::MAX;
    };
    let keys: Vec<String> = rows.iter().map(|(id, _, _)| format!("{prefix}:{id}")).collect();
    let cached: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(redis).await.unwrap_or_default();
    rows.iter()
        .zip(cached)
        .filter(|((id, name, version), value)| {
            let expected = (*version > 0).then(|| json!({ "id": id, "name": name, "version": version }));
            value.as_deref().and_then(|v| serde_json::from_str::<Value>(v).ok()) != expected
        })
        .count()
}
