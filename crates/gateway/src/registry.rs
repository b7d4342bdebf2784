//! Which charge points are connected to this instance, by id.
//!
//! In a cluster, the shared registry (`cluster/`) records which node owns each charge
//! point; this local registry stays the source of truth for the sessions this process
//! holds, and [`Ownership`] is how the listener tells the shared one.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::future::BoxFuture;
use parking_lot::RwLock;

use crate::session::{ConnectionInfo, SessionHandle};

/// Claims and releases charge points in a registry shared with other instances.
pub trait Ownership: Send + Sync {
    /// Claims the charge point of a connection that has just been registered here (and
    /// records the claim's epoch in `info`). Never fails: a claim the shared registry
    /// cannot take now is retried later.
    fn claim(&self, info: Arc<ConnectionInfo>) -> BoxFuture<'_, ()>;

    /// Releases the claim of a connection that has ended (and is unregistered here), if
    /// it is still this connection's.
    fn release(&self, info: Arc<ConnectionInfo>) -> BoxFuture<'_, ()>;
}

/// The live sessions of this instance, ordered by charge point id.
#[derive(Default)]
pub struct Registry {
    sessions: RwLock<BTreeMap<String, SessionHandle>>,
}

impl Registry {
    /// Registers `handle`, returning the session it replaces for the same charge point.
    pub fn insert(&self, handle: SessionHandle) -> Option<SessionHandle> {
        self.sessions
            .write()
            .insert(handle.info.charge_point_id.clone(), handle)
    }

    /// Removes the session of `charge_point_id` only if it is still `connection_id`
    /// (a replaced session must not remove its successor).
    pub fn remove(&self, charge_point_id: &str, connection_id: &str) -> bool {
        let mut sessions = self.sessions.write();
        let current = sessions
            .get(charge_point_id)
            .is_some_and(|h| h.info.connection_id == connection_id);
        if current {
            sessions.remove(charge_point_id);
        }
        current
    }

    /// The session of `charge_point_id`, if connected here.
    pub fn get(&self, charge_point_id: &str) -> Option<SessionHandle> {
        self.sessions.read().get(charge_point_id).cloned()
    }

    /// Up to `limit` sessions with ids after `after`, in id order.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<SessionHandle> {
        use std::ops::Bound;
        let sessions = self.sessions.read();
        let start = match after {
            Some(after) => Bound::Excluded(after.to_owned()),
            None => Bound::Unbounded,
        };
        sessions
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Every session.
    pub fn all(&self) -> Vec<SessionHandle> {
        self.sessions.read().values().cloned().collect()
    }

    /// How many charge points are connected.
    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    /// Whether no charge point is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ConnectionInfo, SessionHandle};
    use ocpp::OcppVersion;
    use std::sync::Arc;

    fn handle(id: &str) -> SessionHandle {
        let info = Arc::new(ConnectionInfo::new(
            id.into(),
            OcppVersion::V16,
            ([127, 0, 0, 1], 1).into(),
        ));
        SessionHandle::new(info, 1).0
    }

    #[test]
    fn replacement_and_conditional_removal() {
        let registry = Registry::default();
        let old = handle("CP-1");
        assert!(registry.insert(old.clone()).is_none());
        let new = handle("CP-1");
        let replaced = registry.insert(new.clone()).expect("old one replaced");
        assert_eq!(replaced.info.connection_id, old.info.connection_id);
        assert!(!registry.remove("CP-1", &old.info.connection_id));
        assert_eq!(registry.len(), 1);
        assert!(registry.remove("CP-1", &new.info.connection_id));
        assert!(registry.is_empty());
    }

    #[test]
    fn pages_in_id_order() {
        let registry = Registry::default();
        for id in ["c", "a", "b", "d"] {
            registry.insert(handle(id));
        }
        let ids = |page: Vec<SessionHandle>| {
            page.iter()
                .map(|h| h.info.charge_point_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(registry.page(None, 2)), ["a", "b"]);
        assert_eq!(ids(registry.page(Some("b"), 2)), ["c", "d"]);
        assert!(registry.page(Some("d"), 2).is_empty());
    }
}
