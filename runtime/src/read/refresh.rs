//! Refresh-ahead: a key read while its TTL runs short is recomputed in the
//! background before it expires, XFetch-style (Vattani et al., "Optimal
//! Probabilistic Cache Stampede Prevention"): a read refreshes when
//! `recompute time × beta × −ln(random)` reaches the TTL left, so as expiry
//! nears one reader is ever more likely to trigger it, and readers never wait.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// Assumed recompute time before a pipeline's first is measured.
const FIRST_GUESS_MS: f64 = 10.0;

/// When to refresh ahead, and which refreshes are under way.
pub(super) struct RefreshAhead {
    beta: f64,
    /// Each pipeline's recompute time (ms), a moving average.
    recompute_ms: Mutex<HashMap<String, f64>>,
    /// Keys this process is refreshing now.
    running: Mutex<HashSet<String>>,
}

impl RefreshAhead {
    /// `beta` scales how early (0 turns refresh-ahead off).
    pub(super) fn new(beta: f64) -> Self {
        Self { beta, recompute_ms: Mutex::default(), running: Mutex::default() }
    }

    /// Should this read of a key of `pipeline` with `ttl_ms` left refresh it?
    pub(super) fn due(&self, pipeline: &str, ttl_ms: i64) -> bool {
        if self.beta <= 0.0 {
            return false;
        }
        let delta = self.lock_times().get(pipeline).copied().unwrap_or(FIRST_GUESS_MS);
        // 1 - f64() is in (0, 1], so the logarithm is finite.
        let early = -delta * self.beta * (1.0 - fastrand::f64()).ln();
        early >= ttl_ms as f64
    }

    /// A recompute for `pipeline` took `elapsed`.
    pub(super) fn measured(&self, pipeline: &str, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut times = self.lock_times();
        let average = times.entry(pipeline.to_owned()).or_insert(ms);
        *average = 0.8 * *average + 0.2 * ms;
    }

    /// Marks `key` as being refreshed; false when it already is.
    pub(super) fn start(&self, key: &str) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned())
    }

    /// The refresh of `key` is over.
    pub(super) fn finish(&self, key: &str) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn lock_times(&self) -> std::sync::MutexGuard<'_, HashMap<String, f64>> {
        self.recompute_ms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_likely_as_expiry_nears_and_never_when_off() {
        let refresh = RefreshAhead::new(1.0);
        refresh.measured("p", Duration::from_millis(100));
        let share = |ttl_ms: i64| (0..10_000).filter(|_| refresh.due("p", ttl_ms)).count() as f64 / 10_000.0;
        // P(-100 ln U >= t) = e^(-t/100).
        for (ttl_ms, expected) in [(10, 0.905), (100, 0.368), (300, 0.050)] {
            assert!((share(ttl_ms) - expected).abs() < 0.03, "ttl {ttl_ms}: {} vs {expected}", share(ttl_ms));
        }
        assert_eq!(share(100_000), 0.0);
        assert!(!RefreshAhead::new(0.0).due("p", 0));
        assert!(refresh.start("k") && !refresh.start("k"));
        refresh.finish("k");
        assert!(refresh.start("k"));
    }
}
