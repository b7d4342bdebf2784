//! Backoff after failed authentication, so that guessing costs the guesser time and the
//! gateway no hashing.
//!
//! Two kinds of key back off independently:
//! - a charge point id *from one address*: a wrong password from elsewhere cannot lock
//!   the real charge point out (the classic lockout attack);
//! - an address, after `address_threshold` failures in a row, whatever the ids: one
//!   source spraying many ids. The threshold leaves room for a site behind one NAT address
//!   where one misconfigured station keeps failing while its neighbours connect.
//!
//! Each failure doubles the wait, from `initial` up to `max`; a success clears the key;
//! a key quiet for `max` after its wait is forgotten. The table is bounded: when full,
//! expired keys are dropped, and if it is still full a new key is not tracked (the
//! verification pool's bound still caps what guessing costs).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tokio::time::Instant;

/// Most keys tracked at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    IdFrom(String, IpAddr),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    until: Instant,
}

/// The backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Failures in a row from one address before the address itself backs off.
    pub address_threshold: u32,
}

/// Failure counts and waits by id-and-address and by address.
#[derive(Debug)]
pub struct FailureBackoff {
    policy: BackoffPolicy,
    keys: HashMap<Key, Failures>,
    /// When a full table was last swept of expired keys: at most once a second, so that a
    /// flood of failures against a full table does not scan it on every one.
    last_sweep: Option<Instant>,
}

impl FailureBackoff {
    /// An empty table with `policy`.
    pub fn new(policy: BackoffPolicy) -> FailureBackoff {
        FailureBackoff {
            policy,
            keys: HashMap::new(),
            last_sweep: None,
        }
    }

    /// How long charge point `id` from `address` must still wait, if at all.
    pub fn wait(&self, id: &str, address: IpAddr, now: Instant) -> Option<Duration> {
        let remaining = |key: &Key| {
            self.keys
                .get(key)
                .filter(|f| f.until > now)
                .map(|f| f.until - now)
        };
        let by_id = remaining(&Key::IdFrom(id.to_owned(), address));
        let by_address = remaining(&Key::Address(address));
        by_id.max(by_address)
    }

    /// Records a failed attempt of `id` from `address`.
    pub fn failed(&mut self, id: &str, address: IpAddr, now: Instant) {
        let policy = self.policy;
        let delay = |count: u32| {
            policy
                .initial
                .saturating_mul(1u32 << count.saturating_sub(1).min(20))
                .min(policy.max)
        };
        if let Some(failures) = self.entry(Key::IdFrom(id.to_owned(), address), now) {
            failures.count = failures.count.saturating_add(1);
            failures.until = now + delay(failures.count);
        }
        if let Some(failures) = self.entry(Key::Address(address), now) {
            failures.count = failures.count.saturating_add(1);
            if failures.count >= policy.address_threshold {
                failures.until = now + delay(failures.count - policy.address_threshold + 1);
            }
        }
    }

    /// Records a successful attempt: the id and the address start afresh.
    pub fn succeeded(&mut self, id: &str, address: IpAddr) {
        self.keys.remove(&Key::IdFrom(id.to_owned(), address));
        self.keys.remove(&Key::Address(address));
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn entry(&mut self, key: Key, now: Instant) -> Option<&mut Failures> {
        let forget_after = self.policy.max;
        if let Some(failures) = self.keys.get(&key) {
            if failures.until + forget_after <= now {
                self.keys.remove(&key);
            }
        }
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_TRACKED {
            if self
                .last_sweep
                .is_none_or(|last| now >= last + Duration::from_secs(1))
            {
                self.last_sweep = Some(now);
                self.keys.retain(|_, f| f.until + forget_after > now);
            }
            if self.keys.len() >= MAX_TRACKED {
                return None;
            }
        }
        Some(self.keys.entry(key).or_insert(Failures {
            count: 0,
            until: now,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn backoff() -> FailureBackoff {
        FailureBackoff::new(BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            address_threshold: 5,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn each_failure_doubles_the_wait_up_to_the_maximum() {
        let mut table = backoff();
        let start = Instant::now();
        assert_eq!(table.wait("CP-1", A, start), None);
        let mut waits = Vec::new();
        for _ in 0..9 {
            table.failed("CP-1", A, start);
            waits.push(table.wait("CP-1", A, start).unwrap().as_secs());
        }
        assert_eq!(waits[..4], [1, 2, 4, 8]);
        assert_eq!(*waits.last().unwrap(), 60);
        assert_eq!(table.wait("CP-1", A, start + Duration::from_secs(60)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_from_elsewhere_does_not_lock_the_charge_point_out() {
        let mut table = backoff();
        let now = Instant::now();
        table.failed("CP-1", B, now);
        assert!(table.wait("CP-1", B, now).is_some());
        assert_eq!(table.wait("CP-1", A, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_backs_off_after_the_threshold_of_failures_in_a_row() {
        let mut table = backoff();
        let now = Instant::now();
        for i in 0..4 {
            table.failed(&format!("CP-{i}"), A, now);
        }
        // Four different ids failed: a fifth id from the same address is still let in.
        assert_eq!(table.wait("CP-new", A, now), None);
        table.failed("CP-4", A, now);
        assert_eq!(table.wait("CP-new", A, now), Some(Duration::from_secs(1)));
        // A success from the address starts it afresh.
        table.succeeded("CP-ok", A);
        assert_eq!(table.wait("CP-new", A, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_and_quiet_keys_are_forgotten() {
        let mut table = backoff();
        let now = Instant::now();
        table.failed("CP-1", A, now);
        table.failed("CP-1", A, now);
        table.succeeded("CP-1", A);
        assert_eq!(table.wait("CP-1", A, now), None);
        assert!(table.is_empty());

        table.failed("CP-1", A, now);
        table.failed("CP-1", A, now);
        // Long after its wait, a new failure starts again from the initial wait.
        let later = now + Duration::from_secs(200);
        table.failed("CP-1", A, later);
        assert_eq!(table.wait("CP-1", A, later), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_stays_bounded_under_a_spray_of_ids() {
        let mut table = backoff();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED + 10) {
            table.failed(&format!("CP-{i}"), B, now);
        }
        assert!(table.len() <= MAX_TRACKED, "{}", table.len());
        // The address itself is tracked and backs off.
        assert!(table.wait("anything", B, now).is_some());
    }
}
