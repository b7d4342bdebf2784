//! Rate limits for log lines that can flood: when Kafka is down, every session would log
//! the same failure for every message. Each limited call site lets a few lines per
//! second through and reports how many it held back on the next line it lets through.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    sync::OnceLock,
    time::Instant,
};

/// Lines one call site may write per second.
pub const LINES_PER_SECOND: u32 = 10;

/// The per-call-site state behind [`warn_limited!`](crate::warn_limited).
pub struct LogLimiter {
    window: AtomicU64,
    written: AtomicU32,
    suppressed: AtomicU64,
}

fn seconds_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

impl LogLimiter {
    /// A limiter with an empty window.
    pub const fn new() -> LogLimiter {
        LogLimiter {
            window: AtomicU64::new(u64::MAX),
            written: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since
    /// the last one written; `None` when this line is held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(seconds_since_start())
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        if self.window.swap(second, Ordering::Relaxed) != second {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!`, limited to a few lines per second at this call site; the next line
/// written carries `suppressed = n` for the lines held back.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::telemetry::limit::LogLimiter = $crate::telemetry::limit::LogLimiter::new();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// `tracing::error!`, limited like [`warn_limited!`](crate::warn_limited).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::telemetry::limit::LogLimiter = $crate::telemetry::limit::LogLimiter::new();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::error!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_per_second_and_counts_the_rest() {
        let limiter = LogLimiter::new();
        let admitted: Vec<_> = (0..25).map(|_| limiter.admit_at(7)).collect();
        assert_eq!(
            admitted.iter().filter(|a| a.is_some()).count(),
            LINES_PER_SECOND as usize
        );
        assert!(admitted[..LINES_PER_SECOND as usize]
            .iter()
            .all(|a| *a == Some(0)));
        // The next second's first line reports the 15 held back.
        assert_eq!(limiter.admit_at(8), Some(15));
        assert_eq!(limiter.admit_at(8), Some(0));
    }
}
