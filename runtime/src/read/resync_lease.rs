//! One `resync --all` per pipeline at a time: a lease in the pipeline's cache,
//! renewed while the resync runs, that expires by itself when its holder dies.
//! Progress is saved only while no other run holds the lease, so a run that
//! stalled past its lease cannot overwrite the progress of the run that took
//! over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tokio::task::JoinHandle;

use super::fill_lock::RELEASE;
use super::resync::ResyncError;
use crate::redis_conn::RedisConn;
use crate::sink::{SinkError, companion_key};

/// How long a lease outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// Renewed this often, so two renewals can fail before the lease expires.
const RENEW_EVERY: Duration = Duration::from_secs(5);

// A lease that vanished (Redis restarted without persistence, or it lapsed
// with nobody taking it over) is taken again: only another holder stops a run.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local holder = redis.call('GET', KEYS[1])
         if holder and holder ~= ARGV[1] then return 0 end
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
         return 1",
    )
});

static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local holder = redis.call('GET', KEYS[1])
         if holder and holder ~= ARGV[1] then return 0 end
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
         redis.call('SET', KEYS[2], ARGV[3])
         return 1",
    )
});

static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local holder = redis.call('GET', KEYS[1])
         if holder and holder ~= ARGV[1] then return 0 end
         redis.call('DEL', KEYS[2])
         redis.call('DEL', KEYS[1])
         return 1",
    )
});

/// The key of the lease on `progress_key`, in its cluster slot.
pub fn lease_key(progress_key: &str) -> Result<String, SinkError> {
    companion_key(progress_key, "lease")
}

/// A held lease on one pipeline's `resync --all`.
pub struct ResyncLease {
    conn: RedisConn,
    pipeline: String,
    key: String,
    /// Who holds it, readable by whoever is refused; unique per run.
    holder: String,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
    released: bool,
}

impl ResyncLease {
    /// Takes the lease on `progress_key`, or says who holds it.
    pub async fn acquire(conn: &RedisConn, pipeline: &str, progress_key: &str) -> Result<Self, ResyncError> {
        let redis_error =
            |e: redis::RedisError| ResyncError::Progress { key: progress_key.to_owned(), source: SinkError::redis(e) };
        let key =
            lease_key(progress_key).map_err(|source| ResyncError::Progress { key: progress_key.to_owned(), source })?;
        let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let host = crate::host::name().unwrap_or_else(|| "an unnamed host".to_owned());
        let holder = format!("{host}, pid {}, started {started}", std::process::id());
        let mut conn = conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&holder)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if taken.is_none() {
            let (other, expires_in_ms): (Option<String>, i64) =
                redis::pipe().get(&key).pttl(&key).query_async(&mut conn).await.map_err(redis_error)?;
            return Err(ResyncError::Running {
                pipeline: pipeline.to_owned(),
                holder: other.unwrap_or_else(|| "a run that just finished".to_owned()),
                expires_in: Duration::from_millis(expires_in_ms.max(0) as u64),
            });
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(conn.clone(), key.clone(), holder.clone(), lost.clone()));
        Ok(Self { conn, pipeline: pipeline.to_owned(), key, holder, lost, renewer, released: false })
    }

    /// Fails once a renewal or a save found the lease taken by another run.
    pub fn check(&self) -> Result<(), ResyncError> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(self.lost_error());
        }
        Ok(())
    }

    /// Saves `progress` under `progress_key` unless another run holds the lease.
    pub async fn save(&mut self, progress_key: &str, progress: &str) -> Result<(), redis::RedisError> {
        let saved: i64 = SAVE
            .key(&self.key)
            .key(progress_key)
            .arg(&self.holder)
            .arg(LEASE_TTL.as_millis() as u64)
            .arg(progress)
            .invoke_async(&mut self.conn)
            .await?;
        if saved == 0 {
            self.lost.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The run is done: its progress and the lease are removed together.
    pub async fn finish(mut self, progress_key: &str) -> Result<(), ResyncError> {
        let done: Result<i64, _> =
            FINISH.key(&self.key).key(progress_key).arg(&self.holder).invoke_async(&mut self.conn).await;
        self.released = true;
        match done {
            Ok(0) => Err(self.lost_error()),
            Ok(_) => Ok(()),
            Err(e) => Err(ResyncError::Progress { key: progress_key.to_owned(), source: SinkError::redis(e) }),
        }
    }

    /// Lets the lease go, keeping the progress; a failure leaves it to expire.
    pub async fn release(mut self) {
        self.released = true;
        release(self.conn.clone(), self.key.clone(), self.holder.clone()).await;
    }

    fn lost_error(&self) -> ResyncError {
        ResyncError::LeaseLost { pipeline: self.pipeline.clone(), ttl: LEASE_TTL }
    }
}

impl Drop for ResyncLease {
    fn drop(&mut self) {
        self.renewer.abort();
        // A run dropped mid-page (an interruption) frees the pipeline at once
        // where a runtime is left to send the release; otherwise it expires.
        if !self.released
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release(self.conn.clone(), self.key.clone(), self.holder.clone()));
        }
    }
}

async fn renew(mut conn: RedisConn, key: String, holder: String, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let renewed: Result<i64, _> =
            RENEW.key(&key).arg(&holder).arg(LEASE_TTL.as_millis() as u64).invoke_async(&mut conn).await;
        match renewed {
            Ok(0) => {
                tracing::warn!(lease = %key, "resync: another run took the lease; stopping at the next page");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(lease = %key, error = %e, "resync: renewing the lease failed; retrying"),
        }
    }
}

async fn release(mut conn: RedisConn, key: String, holder: String) {
    let released: Result<i64, _> = RELEASE.key(&key).arg(&holder).invoke_async(&mut conn).await;
    if let Err(e) = released {
        tracing::warn!(lease = %key, error = %e, "resync: the lease is left to expire");
    }
}
