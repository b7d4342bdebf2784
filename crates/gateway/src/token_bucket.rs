//! A token bucket, for rates that are limited by waiting (the accept loop) or by dropping
//! what is over (security events).

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `per_second` on average, bursts of up to one second's worth. `0` never
/// limits.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// `per_second` sockets per second (`0`: no limit), starting with a full bucket.
    pub fn new(per_second: u32) -> TokenBucket {
        TokenBucket {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            refilled: Instant::now(),
        }
    }

    /// Takes a token if one is there now (`true`), else takes none: for what is dropped
    /// rather than delayed over the rate.
    pub fn try_take(&mut self) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token for one socket: how long to wait first (zero when one is there).
    pub fn wait_for_one(&mut self) -> Duration {
        if self.per_second == 0.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // The debt is paid by the refill during the wait.
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_through_through_then_spaces_sockets_out() {
        let mut rate = TokenBucket::new(10);
        for _ in 0..10 {
            assert_eq!(rate.wait_for_one(), Duration::ZERO);
        }
        assert_eq!(rate.wait_for_one(), Duration::from_millis(100));
        assert_eq!(rate.wait_for_one(), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        // The two waits above took the tokens of these 200 ms.
        assert_eq!(rate.wait_for_one(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(10)).await;
        // A long pause refills one second's worth, no more.
        for _ in 0..10 {
            assert_eq!(rate.wait_for_one(), Duration::ZERO);
        }
        assert!(rate.wait_for_one() > Duration::ZERO);
    }

    #[test]
    fn no_rate_never_waits() {
        let mut rate = TokenBucket::new(0);
        for _ in 0..1000 {
            assert_eq!(rate.wait_for_one(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn try_take_takes_what_is_there_and_never_borrows() {
        let mut bucket = TokenBucket::new(2);
        assert!(bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
        assert!(TokenBucket::new(0).try_take());
    }
}
