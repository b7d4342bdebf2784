//! The per-connection message rate: a token bucket the session consults before it reads
//! the socket. A charge point over its rate is read later, never buffered or refused:
//! TCP slows it down.

use std::time::Duration;

use tokio::time::Instant;

/// `per_second` messages per second on average, in bursts of one second's worth; `0`
/// for no limit.
#[derive(Debug)]
pub struct MessageRate {
    per_second: f32,
    tokens: f32,
    refilled: Instant,
}

impl MessageRate {
    /// A full bucket of `per_second` messages.
    pub fn new(per_second: u32) -> MessageRate {
        MessageRate {
            per_second: per_second as f32,
            tokens: per_second as f32,
            refilled: Instant::now(),
        }
    }

    /// `None` when a message may be read now; otherwise when the next one may.
    pub fn ready_at(&mut self) -> Option<Instant> {
        if self.per_second == 0.0 || self.tokens >= 1.0 {
            return None;
        }
        let now = Instant::now();
        self.refill(now);
        if self.tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - self.tokens) / self.per_second;
        Some(now + Duration::from_secs_f32(wait))
    }

    /// Counts one message read.
    pub fn take(&mut self) {
        if self.per_second == 0.0 {
            return;
        }
        self.refill(Instant::now());
        self.tokens -= 1.0;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.refilled).as_secs_f32();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_message_per_interval() {
        let mut rate = MessageRate::new(4);
        for _ in 0..4 {
            assert_eq!(rate.ready_at(), None);
            rate.take();
        }
        let next = rate.ready_at().expect("the burst is spent");
        assert_eq!(next - Instant::now(), Duration::from_millis(250));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(rate.ready_at(), None);
        rate.take();
        assert!(rate.ready_at().is_some());
        // A long quiet spell refills one second's worth, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..4 {
            assert_eq!(rate.ready_at(), None);
            rate.take();
        }
        assert!(rate.ready_at().is_some());
    }

    #[test]
    fn no_limit_never_waits() {
        let mut rate = MessageRate::new(0);
        for _ in 0..10_000 {
            assert_eq!(rate.ready_at(), None);
            rate.take();
        }
    }
}
