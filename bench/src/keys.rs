//! Clearing what a run left in Redis.

use anyhow::Result;
use redis::aio::MultiplexedConnection;

/// Deletes every key (and metadata hash) under `prefix`, in SCAN steps: one
/// KEYS reply of many names can outlast the connection's response timeout.
pub async fn delete_prefix(conn: &mut MultiplexedConnection, prefix: &str) -> Result<()> {
    for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK").arg(keys).query_async::<()>(conn).await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}
