//! The cross-instance fill lock: one process at a time recomputes a missing
//! key; the lock expires by itself, so a holder that died frees the key.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::redis_conn::RedisConn;
use crate::sink::{SinkError, companion_key};

/// Deletes `KEYS[1]` only while it holds `ARGV[1]`, the holder's token.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

/// A held fill lock on one key.
pub struct FillLock {
    conn: RedisConn,
    lock_key: String,
    token: String,
}

/// A value no other holder has: std's per-process random hash keys, and a count.
fn token() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
    static COUNT: AtomicU64 = AtomicU64::new(0);
    format!("{:016x}:{}", *PROCESS, COUNT.fetch_add(1, Ordering::Relaxed))
}

/// The lock key of `key`, in its cluster slot.
pub fn lock_key(key: &str) -> Result<String, SinkError> {
    companion_key(key, "fill")
}

impl FillLock {
    /// Takes the lock for `ttl`, or `None` when another holder has it.
    pub async fn try_acquire(conn: &RedisConn, key: &str, ttl: Duration) -> Result<Option<FillLock>, SinkError> {
        let lock_key = lock_key(key)?;
        let token = token();
        let mut conn = conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lock_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await
            .map_err(SinkError::redis)?;
        Ok(taken.map(|_| FillLock { conn, lock_key, token }))
    }

    /// Is `key`'s lock held by anyone?
    pub async fn held(conn: &RedisConn, key: &str) -> Result<bool, SinkError> {
        let mut conn = conn.clone();
        redis::cmd("EXISTS").arg(lock_key(key)?).query_async(&mut conn).await.map_err(SinkError::redis)
    }

    /// Lets the lock go if it is still this holder's; a failure only leaves it to expire.
    pub async fn release(mut self) {
        let released: Result<i64, _> = RELEASE.key(&self.lock_key).arg(&self.token).invoke_async(&mut self.conn).await;
        if let Err(e) = released {
            tracing::debug!(lock = %self.lock_key, error = %e, "fill lock left to expire");
        }
    }
}
