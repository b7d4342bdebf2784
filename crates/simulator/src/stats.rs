//! What a load run counts: connections, CALLs, latencies and errors.
//!
//! Counters are atomics; latencies go into HDR histograms in a few shards, so that
//! thousands of charge point tasks on a handful of threads rarely wait on one lock.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex, MutexGuard,
    },
    time::Instant,
};

use hdrhistogram::Histogram;

/// Histogram range: 1 µs to 5 minutes, 3 significant digits.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 300_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;
const SHARDS: usize = 16;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("the histogram bounds are valid constants")
}

/// Everything a run counts. Shared by every charge point task.
pub struct Stats {
    /// Connection attempts started.
    pub connect_attempts: AtomicU64,
    /// WebSocket handshakes that succeeded.
    pub connects: AtomicU64,
    /// Connections open now.
    pub connected: AtomicU64,
    /// Charge points whose BootNotification was accepted on the current connection.
    pub booted: AtomicU64,
    /// CALLs sent by charge points.
    pub calls_sent: AtomicU64,
    /// CALLRESULTs received for them.
    pub calls_answered: AtomicU64,
    /// CALLERRORs received for them.
    pub call_errors: AtomicU64,
    /// CALLs that got no answer in time.
    pub call_timeouts: AtomicU64,
    /// CALLs the central system sent to charge points.
    pub server_calls: AtomicU64,
    /// Connections that ended without the simulator asking (closed by the server, or lost);
    /// neither storms nor Resets count.
    pub disconnects: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    shards: Vec<Mutex<Shard>>,
    /// What window start times are measured from.
    epoch: Instant,
    /// When the window opened, in nanoseconds after `epoch`; `u64::MAX` until then.
    window_start_ns: AtomicU64,
}

struct Shard {
    /// Since the last progress line.
    interval: Histogram<u64>,
    /// Since the measurement window opened.
    window: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connect_attempts: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            booted: AtomicU64::new(0),
            calls_sent: AtomicU64::new(0),
            calls_answered: AtomicU64::new(0),
            call_errors: AtomicU64::new(0),
            call_timeouts: AtomicU64::new(0),
            server_calls: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        interval: new_histogram(),
                        window: new_histogram(),
                    })
                })
                .collect(),
            epoch: Instant::now(),
            window_start_ns: AtomicU64::new(u64::MAX),
        }
    }
}

/// A point-in-time copy of the counters, for rates and the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// See [`Stats::connect_attempts`].
    pub connect_attempts: u64,
    /// See [`Stats::connects`].
    pub connects: u64,
    /// See [`Stats::connected`].
    pub connected: u64,
    /// See [`Stats::booted`].
    pub booted: u64,
    /// See [`Stats::calls_sent`].
    pub calls_sent: u64,
    /// See [`Stats::calls_answered`].
    pub calls_answered: u64,
    /// See [`Stats::call_errors`].
    pub call_errors: u64,
    /// See [`Stats::call_timeouts`].
    pub call_timeouts: u64,
    /// See [`Stats::server_calls`].
    pub server_calls: u64,
    /// See [`Stats::disconnects`].
    pub disconnects: u64,
    /// Errors of every kind together.
    pub errors: u64,
}

impl Counters {
    /// The counts that happened between `earlier` and `self` (gauges keep `self`'s value).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            connect_attempts: self.connect_attempts - earlier.connect_attempts,
            connects: self.connects - earlier.connects,
            connected: self.connected,
            booted: self.booted,
            calls_sent: self.calls_sent - earlier.calls_sent,
            calls_answered: self.calls_answered - earlier.calls_answered,
            call_errors: self.call_errors - earlier.call_errors,
            call_timeouts: self.call_timeouts - earlier.call_timeouts,
            server_calls: self.server_calls - earlier.server_calls,
            disconnects: self.disconnects - earlier.disconnects,
            errors: self.errors - earlier.errors,
        }
    }
}

impl Stats {
    /// Counts one error of `kind` (a short snake_case label).
    pub fn error(&self, kind: &str) {
        let mut errors = lock(&self.errors);
        match errors.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                errors.insert(kind.to_owned(), 1);
            }
        }
    }

    /// Errors by kind so far.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    /// Records the latency of a CALL meant to be sent at `intended` and answered now;
    /// `shard` spreads lock traffic (the charge point's index). The window's histogram only
    /// takes CALLs scheduled after the window opened, so answers to CALLs still in flight
    /// from the ramp do not count as the window's latency.
    pub fn record_latency(&self, shard: usize, intended: Instant) {
        let micros = (intended.elapsed().as_micros() as u64).clamp(LOWEST_US, HIGHEST_US);
        let scheduled_ns = intended.saturating_duration_since(self.epoch).as_nanos() as u64;
        let in_window = scheduled_ns >= self.window_start_ns.load(Relaxed);
        let mut shard = lock(&self.shards[shard % SHARDS]);
        // Both saturate at the highest trackable value; recording cannot fail after clamping.
        let _ = shard.interval.record(micros);
        if in_window {
            let _ = shard.window.record(micros);
        }
    }

    /// Latencies since the previous call, merged over the shards.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut merged = new_histogram();
        for shard in &self.shards {
            let mut shard = lock(shard);
            let _ = merged.add(&shard.interval);
            shard.interval.reset();
        }
        merged
    }

    /// Latencies since the window opened.
    pub fn window(&self) -> Histogram<u64> {
        let mut merged = new_histogram();
        for shard in &self.shards {
            let _ = merged.add(&lock(shard).window);
        }
        merged
    }

    /// The measurement window starts now: latencies of CALLs scheduled from now on count.
    pub fn open_window(&self) {
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        self.window_start_ns.store(now_ns, Relaxed);
        for shard in &self.shards {
            lock(shard).window.reset();
        }
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        Counters {
            connect_attempts: self.connect_attempts.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connected: self.connected.load(Relaxed),
            booted: self.booted.load(Relaxed),
            calls_sent: self.calls_sent.load(Relaxed),
            calls_answered: self.calls_answered.load(Relaxed),
            call_errors: self.call_errors.load(Relaxed),
            call_timeouts: self.call_timeouts.load(Relaxed),
            server_calls: self.server_calls.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            errors: lock(&self.errors).values().sum(),
        }
    }
}

/// A poisoned lock only means another task panicked mid-record; the counts are still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Summarises a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latencies_merge_across_shards_and_only_calls_scheduled_in_the_window_count() {
        let stats = Stats::default();
        let before_window = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        stats.open_window();
        let in_window = Instant::now();
        for i in 0..100 {
            stats.record_latency(i, in_window);
        }
        // Scheduled before the window opened: the progress interval sees it, the window not.
        stats.record_latency(0, before_window);
        let interval = Percentiles::of(&stats.take_interval());
        assert_eq!(interval.count, 101);
        assert!(interval.max >= 2.0, "{interval:?}");
        assert_eq!(stats.take_interval().len(), 0, "an interval is taken once");
        assert_eq!(stats.window().len(), 100);
        stats.open_window();
        assert_eq!(stats.window().len(), 0);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let stats = Stats::default();
        stats.error("timeout");
        stats.error("timeout");
        stats.error("http_503");
        assert_eq!(stats.errors()["timeout"], 2);
        assert_eq!(stats.counters().errors, 3);
    }
}
