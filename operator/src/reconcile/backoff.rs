//! Per-object state of the frame: retry backoff of failing objects, and when live figures were
//! last written. Both are dropped when the object goes away.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Capped exponential backoff per object, jittered.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempts: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// The next retry delay of object `key`: `min`, 2 `min`, 4 `min`, ... up to `max`, plus up
    /// to 10 % jitter.
    pub(crate) fn next(&self, key: &str) -> Duration {
        let mut map = lock(&self.attempts);
        let attempts = map.entry(key.to_owned()).or_insert(0);
        let exp = (*attempts).min(20);
        *attempts = attempts.saturating_add(1);
        let delay = self.min.saturating_mul(1u32 << exp);
        jittered(delay.min(self.max), key).min(self.max + self.max / 10)
    }

    /// Forgets the failures of object `key` (it reconciled, or it is gone).
    pub(crate) fn reset(&self, key: &str) {
        lock(&self.attempts).remove(key);
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        lock(&self.attempts).len()
    }
}

/// When live figures (messages, pending, ...) of each object were last written to status.
#[derive(Debug)]
pub(crate) struct LiveFigures {
    refresh: Duration,
    written: Mutex<HashMap<String, Instant>>,
}

impl LiveFigures {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the live figures of object `key` are due for a status write.
    pub(crate) fn due(&self, key: &str) -> bool {
        lock(&self.written)
            .get(key)
            .is_none_or(|at| at.elapsed() >= self.refresh)
    }

    pub(crate) fn written(&self, key: &str) {
        lock(&self.written).insert(key.to_owned(), Instant::now());
    }

    pub(crate) fn forget(&self, key: &str) {
        lock(&self.written).remove(key);
    }
}

/// `base` plus up to 10 % of it, so that objects created together do not resync together.
pub(crate) fn jittered(base: Duration, seed: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        .hash(&mut hasher);
    let permille = hasher.finish() % 100;
    base + base * u32::try_from(permille).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for i in 0..100 {
            let d = jittered(Duration::from_secs(100), &i.to_string());
            assert!(d >= Duration::from_secs(100) && d <= Duration::from_secs(110));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_is_dropped_on_reset() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..5).map(|_| b.next("a")).collect();
        assert!(delays[0] >= Duration::from_secs(1) && delays[0] < Duration::from_secs(2));
        assert!(delays[1] >= Duration::from_secs(2) && delays[1] < Duration::from_secs(3));
        assert!(delays[2] >= Duration::from_secs(4) && delays[2] < Duration::from_secs(5));
        assert!(delays[4] >= Duration::from_secs(5) && delays[4] <= Duration::from_millis(5500));
        assert!(b.next("b") < Duration::from_secs(2), "per object");
        b.reset("a");
        b.reset("b");
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn live_figures_are_due_once_per_refresh() {
        let live = LiveFigures::new(Duration::from_secs(60));
        assert!(live.due("a"));
        live.written("a");
        assert!(!live.due("a"));
        live.forget("a");
        assert!(live.due("a"));
    }
}
