//! The OCPP listener's admission limits, as pure parts the accept loop uses:
//!
//! - [`SocketBudget`]: charge point sockets within the process's open-file limit;
//! - [`AddressLimit`]: sockets per source address;
//! - the accept rate, new sockets per second for the whole listener, is a
//!   [`crate::token_bucket::TokenBucket`] that the accept loop waits on (the kernel's accept
//!   backlog holds the rest) rather than refusing.
//!
//! The cap on handshakes in progress is a semaphore in the listener itself.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tracing::warn;

/// Open files the process needs besides sockets: the events file, log output, Kafka's
/// broker connections, the runtime's own descriptors.
const OTHER_FILES: u64 = 64;

/// How many charge point sockets (upgraded or still in their handshake) may be open at
/// once, so that charge points can never take the file descriptors that the admin and
/// metrics listeners, and the rest of the process, need.
#[derive(Debug, Clone)]
pub struct SocketBudget {
    open: Arc<AtomicUsize>,
    /// The most sockets at once.
    pub limit: usize,
}

/// One charge point socket counted against the budget, for as long as it is open.
pub struct SocketSlot(Arc<AtomicUsize>);

impl SocketBudget {
    /// The budget under the process's open-file limit (raised to its hard limit first),
    /// less `other_sockets` (what the admin and metrics listeners may hold) and what the
    /// rest of the process needs; `max_connections` is only compared, for a warning.
    pub fn from_open_file_limit(max_connections: usize, other_sockets: usize) -> SocketBudget {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(files) => {
                let reserve = OTHER_FILES + other_sockets as u64;
                let limit = files.saturating_sub(reserve) as usize;
                if limit < max_connections {
                    warn!(
                        open_file_limit = files,
                        reserved = reserve,
                        max_connections,
                        "the open-file limit leaves room for fewer charge point sockets than listener.max_connections; raise the limit (ulimit -n)"
                    );
                }
                limit
            }
            Err(e) => {
                warn!(error = %e, "the open-file limit cannot be read; charge point sockets are not budgeted");
                usize::MAX
            }
        };
        SocketBudget {
            open: Default::default(),
            limit,
        }
    }

    /// A slot for a newly accepted socket, or `None` when the budget is spent.
    pub fn take(&self) -> Option<SocketSlot> {
        let taken = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = SocketSlot(self.open.clone());
        (taken < self.limit).then_some(slot)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sockets per source address, at most `limit` each (`0`: no limit).
#[derive(Clone, Default)]
pub struct AddressLimit {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    limit: usize,
}

/// One socket counted against its address, for as long as it is open.
pub struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressLimit {
    /// At most `limit` sockets per address; `0` for no limit.
    pub fn new(limit: usize) -> AddressLimit {
        AddressLimit {
            open: Default::default(),
            limit,
        }
    }

    /// A slot for a socket from `address`, or `None` when it has `limit` already.
    /// Without a limit nothing is counted (and the map stays empty).
    pub fn take(&self, address: IpAddr) -> Option<Option<AddressSlot>> {
        if self.limit == 0 {
            return Some(None);
        }
        let mut open = self.open.lock();
        let count = open.entry(address).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Some(AddressSlot {
            open: self.open.clone(),
            address,
        }))
    }

    /// How many addresses hold a socket (each entry is removed with its last socket).
    pub fn addresses(&self) -> usize {
        self.open.lock().len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_limit_and_slots_free_places() {
        let limit = AddressLimit::new(2);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limit.take(a).expect("room").expect("counted");
        let _second = limit.take(a).expect("room");
        assert!(
            limit.take(a).is_none(),
            "a third socket from the same address"
        );
        assert!(
            limit.take(b).is_some(),
            "another address has its own places"
        );
        drop(first);
        assert!(limit.take(a).is_some(), "a closed socket frees its place");
    }

    #[test]
    fn without_a_limit_nothing_is_counted() {
        let limit = AddressLimit::new(0);
        for _ in 0..10 {
            assert!(matches!(limit.take([192, 0, 2, 1].into()), Some(None)));
        }
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn the_last_socket_of_an_address_removes_its_entry() {
        let limit = AddressLimit::new(5);
        let slots: Vec<_> = (0..3).map(|_| limit.take([192, 0, 2, 1].into())).collect();
        assert_eq!(limit.addresses(), 1);
        drop(slots);
        assert_eq!(limit.addresses(), 0);
    }
}
