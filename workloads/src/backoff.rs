//! The one retry policy of both workloads: exponential back-off, capped, with jitter, and a
//! retry loop that gives up only at shutdown. Used for every failure outside the process's
//! control (NATS or PostgreSQL down, a file that cannot be read): never a fixed delay, never a
//! hot loop.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::rng::Rng;

/// Retry delays: `initial * 2^n`, capped at `max`, each drawn uniformly from its upper half
/// (so retries of several processes spread out but never collapse to zero).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    /// A back-off starting at `initial` and never waiting longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
            // Random per instance, so that processes started together do not retry in lockstep.
            rng: Rng::from_entropy(),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            self.rng.next_u64() % spread
        };
        half + Duration::from_micros(jitter)
    }

    /// Number of delays handed out since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps `delay`; `true` when `shutdown` cut it short (or was already cancelled).
pub async fn sleep_unless_cancelled(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => shutdown.is_cancelled(),
        () = shutdown.cancelled() => true,
    }
}

/// Calls `attempt` until it succeeds, waiting `backoff`'s next delay after each failure (told to
/// `on_error` with that delay first); `None` when `shutdown` comes first. An attempt under way
/// is let finish: shutdown is looked at between attempts and cuts the waits short.
pub async fn retry<T, E, F, Fut>(
    shutdown: &CancellationToken,
    mut backoff: Backoff,
    mut attempt: F,
    mut on_error: impl FnMut(&E, Duration),
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                let delay = backoff.next_delay();
                on_error(&error, delay);
                if sleep_unless_cancelled(shutdown, delay).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_jittered_within_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut previous_ceiling = Duration::ZERO;
        for attempt in 0..40u32 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt.min(20)))
                .min(Duration::from_secs(2));
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempt}: {delay:?}"
            );
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
        }
        assert_eq!(backoff.attempts(), 40);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_varies_the_delay() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_backs_off_until_success_and_stops_at_shutdown() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let mut delays = Vec::new();
        let value = retry(
            &shutdown,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
            || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err(n) } else { Ok(n * 10) } }
            },
            |_: &i32, delay| delays.push(delay),
        )
        .await;
        assert_eq!(value, Some(40));
        assert_eq!(delays.len(), 3);
        assert!(delays[2] >= Duration::from_millis(200), "{delays:?}");

        shutdown.cancel();
        let never = retry(
            &shutdown,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
            || async { Err::<(), _>("down") },
            |_, _| {},
        )
        .await;
        assert_eq!(never, None);
    }
}
