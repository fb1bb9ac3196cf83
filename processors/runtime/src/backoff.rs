//! Capped exponential backoff that gives way to shutdown: the one retry delay of every loop
//! that waits for a dependency to come back.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays of a retry loop: `initial`, doubled after each wait, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    delay: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            delay: initial,
        }
    }

    /// The delay the next [`Backoff::wait`] sleeps.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Sleeps the current delay, then doubles it (up to the cap). Returns `false`, at once,
    /// if `shutdown` fires first: the caller stops retrying.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let go_on = tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.delay) => true,
        };
        self.delay = (self.delay * 2).min(self.max);
        go_on
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.delay = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_gives_way_to_shutdown() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(b.delay());
            assert!(b.wait(&stop).await);
        }
        assert_eq!(
            seen,
            [100, 200, 350, 350].map(Duration::from_millis).to_vec()
        );
        b.reset();
        assert_eq!(b.delay(), Duration::from_millis(100));
        stop.cancel();
        let t = tokio::time::Instant::now();
        assert!(!b.wait(&stop).await, "shutdown ends the wait");
        assert_eq!(t.elapsed(), Duration::ZERO, "at once");
    }
}
