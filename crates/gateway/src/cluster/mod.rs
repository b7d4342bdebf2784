//! Several gateway instances as one: a registry in Redis says which node holds each
//! charge point under which epoch, commands go to that node, and a charge point that
//! reconnects elsewhere is taken over safely. See docs/cluster.md.
//!
//! The contract:
//! - A connection is claimed after its handshake; every claim takes a new epoch (a
//!   fencing token that only grows). The newer claim wins; the node that held the charge
//!   point before is told to close its connection, and in any case learns it on its next
//!   registry touch.
//! - Releases and reconciliations are compare-and-set on (node, epoch): a stale owner
//!   never deletes or overwrites a newer claim.
//! - Liveness costs O(1) per node: a lease key the node renews; a record is live while
//!   its node's lease names the incarnation that wrote it.
//! - Redis out of reach: the node keeps serving and accepting; claims wait and are made
//!   when Redis answers again, closing a connection here if a newer one is elsewhere.
//! - A command is delivered on one socket at most: only the node whose session has the
//!   registry's epoch delivers it.

pub mod config;
pub mod credential_store;
pub mod internal;
pub mod metrics;
pub mod redis_registry;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{future::BoxFuture, FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::config::ClusterConfig;
pub use self::metrics::ClusterMetrics;
use self::redis_registry::{
    Claim, Claimant, NodeLease, OwnerRecord, PreviousOwner, RedisRegistry, RegistryError,
};
use crate::{
    backend::{CommandRequest, Forwarded, Location, Owners, RemoteOwner},
    labels::{ClaimResult, DisconnectReason, ForwardResult, RegistryOperation},
    registry::{Ownership, Registry},
    session::{ConnectionInfo, QueueMode, SessionHandle},
};

/// Reconciliations running at once after a registry outage (they are pipelined on one
/// Redis connection, so this bounds what is in flight, not round trips).
const RECONCILE_CONCURRENCY: usize = 512;

/// This node in the cluster.
pub struct Cluster {
    node: String,
    incarnation: String,
    url: String,
    config: ClusterConfig,
    registry: Arc<RedisRegistry>,
    sessions: Arc<Registry>,
    metrics: ClusterMetrics,
    client: reqwest::Client,
    /// Connections here whose claim could not be made (Redis out of reach): charge point
    /// id → connection id. Claimed when Redis answers again.
    unsynced: Mutex<HashMap<String, String>>,
    /// Takeovers announced while a connection's claim was still in flight: charge point
    /// id → the announced epoch. Checked when the claim completes.
    fences: Mutex<HashMap<String, u64>>,
    /// Claims this node could not release (Redis out of reach): charge point id → epoch.
    unreleased: Mutex<HashMap<String, u64>>,
    /// Whether the last registry operation succeeded.
    registry_up: AtomicBool,
    /// Whether every claim must be checked again (this node's lease was lost).
    reassert_all: AtomicBool,
    /// Live nodes and their leases, as last listed.
    nodes: Mutex<Vec<(String, NodeLease)>>,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis client rejected its configuration.
    #[error("cluster registry: {0}")]
    Registry(#[from] RegistryError),
    /// The HTTP client could not be built.
    #[error("cluster internal client: {0}")]
    Client(String),
}

impl Cluster {
    /// This node (`node`), reachable by the others at `url`, holding `sessions`.
    pub fn new(
        node: String,
        url: String,
        config: ClusterConfig,
        sessions: Arc<Registry>,
        metrics: ClusterMetrics,
    ) -> Result<Cluster, ClusterError> {
        let registry = Arc::new(RedisRegistry::new(&config)?);
        let client = reqwest::Client::builder()
            .connect_timeout(config.redis_timeout.max(Duration::from_secs(1)))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        Ok(Cluster {
            node,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            url,
            config,
            registry,
            sessions,
            metrics,
            client,
            unsynced: Mutex::default(),
            fences: Mutex::default(),
            unreleased: Mutex::default(),
            registry_up: AtomicBool::new(true),
            reassert_all: AtomicBool::new(false),
            nodes: Mutex::default(),
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The sessions held here.
    pub fn sessions(&self) -> &Arc<Registry> {
        &self.sessions
    }

    /// `cluster.internal_token`.
    pub(crate) fn token(&self) -> &str {
        self.config.internal_token.as_deref().unwrap_or_default()
    }

    /// A request to another node's internal API: with the token, and
    /// `cluster.forward_timeout` unless the caller sets another.
    fn internal_request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .bearer_auth(self.token())
            .timeout(self.config.forward_timeout)
    }

    /// The registry's state for `/health`: `up`, or `degraded` with why.
    pub fn health(&self) -> serde_json::Value {
        let up = self.registry_up.load(Ordering::Relaxed);
        let unsynced = self.unsynced.lock().len();
        serde_json::json!({
            "status": if up { "up" } else { "degraded" },
            "node": self.node,
            "incarnation": self.incarnation,
            "nodes": self.nodes.lock().iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
            "unsyncedSessions": unsynced,
            "detail": (!up).then_some("Redis does not answer: charge points connected here are served, commands for others answer notConnected, claims are made when it answers again"),
        })
    }

    /// Records the outcome of a registry operation.
    pub(crate) fn observe<T>(
        &self,
        operation: RegistryOperation,
        result: Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let ok = result.is_ok();
        self.metrics.registry(operation, ok);
        let was_up = self.registry_up.swap(ok, Ordering::Relaxed);
        match (&result, was_up) {
            (Err(e), true) => {
                warn!(operation = operation.as_str(), error = %e, "cluster registry unavailable; serving the charge points held here")
            }
            (Ok(_), false) => info!("cluster registry available again"),
            _ => {}
        }
        result
    }

    fn claimant<'a>(&'a self, info: &'a ConnectionInfo) -> Claimant<'a> {
        Claimant {
            node: &self.node,
            incarnation: &self.incarnation,
            connected_at_ms: info.connected_at.timestamp_millis(),
            version: info.version.subprotocol(),
        }
    }

    /// The session here of `info`'s charge point, if it is still `info`'s connection.
    fn session_of(&self, info: &ConnectionInfo) -> Option<SessionHandle> {
        self.sessions
            .get(&info.charge_point_id)
            .filter(|handle| handle.info.connection_id == info.connection_id)
    }

    /// Closes the connection of `handle`: a newer one of its charge point is elsewhere.
    fn lose(&self, handle: &SessionHandle, epoch: u64) {
        info!(charge_point_id = %handle.info.charge_point_id, connection_id = %handle.info.connection_id, local_epoch = handle.info.epoch(), newer_epoch = epoch, "charge point connected to another node; closing its connection here");
        self.metrics.takeover_lost();
        handle.close(DisconnectReason::ReplacedByNewConnection);
    }

    async fn claim_connection(&self, info: Arc<ConnectionInfo>) {
        let id = info.charge_point_id.as_str();
        let result = self.registry.claim(id, &self.claimant(&info), None).await;
        match self.observe(RegistryOperation::Claim, result) {
            Ok(Claim::Taken { epoch, previous }) => {
                // The epoch first: a takeover announced from now on sees it.
                info.set_epoch(epoch);
                let fence = self.fences.lock().remove(id);
                debug!(charge_point_id = %id, epoch, "claimed");
                if let Some(fenced) = fence.filter(|fenced| *fenced > epoch) {
                    if let Some(handle) = self.session_of(&info) {
                        self.lose(&handle, fenced);
                    }
                }
                self.claimed(id, epoch, previous).await;
            }
            Ok(Claim::Changed) | Err(_) => {
                self.fences.lock().remove(id);
                self.metrics.claim(ClaimResult::Failed);
                let mut unsynced = self.unsynced.lock();
                unsynced.insert(id.to_owned(), info.connection_id.clone());
                self.metrics.unsynced(unsynced.len());
            }
        }
    }

    async fn release_connection(&self, info: Arc<ConnectionInfo>) {
        let id = info.charge_point_id.as_str();
        self.synced(&info);
        let epoch = info.epoch();
        if epoch == 0 {
            return;
        }
        let result = self.registry.release(id, &self.node, epoch).await;
        if self.observe(RegistryOperation::Release, result).is_err() {
            self.unreleased.lock().insert(id.to_owned(), epoch);
        }
    }

    /// Tells the previous owner (if it is alive under the same incarnation) that `id`
    /// is now held here under `epoch`. Best effort: the previous owner also learns it on
    /// its next registry touch.
    async fn announce_takeover(&self, id: &str, epoch: u64, node: &str, incarnation: &str) {
        let lease = match self.registry.node(node).await {
            Ok(Some(lease)) if lease.incarnation == incarnation => lease,
            _ => return,
        };
        let url = format!(
            "{}/internal/v1/charge-points/{}/takeover",
            lease.url,
            internal::path_segment(id)
        );
        let sent = self
            .internal_request(reqwest::Method::POST, url)
            .json(&internal::TakeoverBody {
                epoch,
                node: self.node.clone(),
            })
            .send()
            .await;
        if let Err(e) = sent.and_then(|r| r.error_for_status()) {
            debug!(charge_point_id = %id, previous_node = %node, error = %e, "takeover not announced; the previous node learns it from the registry");
        }
    }

    /// Another node took `id` over under `epoch`: the connection here closes if it is
    /// older (or, when its claim is still in flight, once the claim completes older).
    pub fn taken_over(&self, id: &str, epoch: u64) {
        let Some(handle) = self.sessions.get(id) else {
            return;
        };
        match handle.info.epoch() {
            0 if !self.unsynced.lock().contains_key(id) => {
                let mut fences = self.fences.lock();
                let fence = fences.entry(id.to_owned()).or_default();
                *fence = (*fence).max(epoch);
            }
            // Unsynced: reconciliation compares the connection times.
            0 => {}
            local if local < epoch => self.lose(&handle, epoch),
            _ => {}
        }
    }

    /// Where `id` is, per the registry; closes a connection here that the registry shows
    /// superseded.
    async fn find(&self, id: &str) -> Location {
        let local = self.sessions.get(id);
        let unavailable = |e: RegistryError| {
            Location::Nowhere(Some(format!(
                "the cluster registry is unavailable ({e}) and charge point {id} is not connected to node {}",
                self.node
            )))
        };
        let record = match self.observe(RegistryOperation::Lookup, self.registry.owner(id).await) {
            Ok(record) => record,
            Err(e) => {
                return if local.is_some() {
                    Location::Here
                } else {
                    unavailable(e)
                }
            }
        };
        let Some(record) = record else {
            return match local {
                Some(_) => Location::Here,
                None => Location::Nowhere(None),
            };
        };
        if self.holds(&record) {
            return Location::Here;
        }
        let lease = match self.observe(
            RegistryOperation::Lookup,
            self.registry.node(&record.node).await,
        ) {
            Ok(lease) => lease.filter(|lease| lease.incarnation == record.incarnation),
            Err(e) => {
                return if local.is_some() {
                    Location::Here
                } else {
                    unavailable(e)
                }
            }
        };
        let Some(lease) = lease else {
            return match local {
                Some(_) => Location::Here,
                None => Location::Nowhere(Some(format!(
                    "charge point {id} was last held by node {}, which is gone; it has not reconnected yet",
                    record.node
                ))),
            };
        };
        if let Some(local) = local {
            match local.info.epoch() {
                // Its claim is in flight or waits for Redis: the connection here is the
                // newer one, or reconciliation will close it.
                0 => return Location::Here,
                epoch if epoch < record.epoch => self.lose(&local, record.epoch),
                _ => return Location::Here,
            }
        }
        match record.version.parse() {
            Ok(version) => Location::Elsewhere(RemoteOwner {
                node: record.node,
                url: lease.url,
                epoch: record.epoch,
                version,
            }),
            Err(_) => Location::Nowhere(Some(format!(
                "the registry record of charge point {id} names an unknown OCPP version {:?}",
                record.version
            ))),
        }
    }

    async fn forward_to(
        &self,
        id: &str,
        owner: &RemoteOwner,
        request: &CommandRequest,
        mode: QueueMode,
    ) -> Forwarded {
        let started = Instant::now();
        let forwarded = internal::forward(self, id, owner, request, mode).await;
        let result = match &forwarded {
            Forwarded::Outcome(_) => ForwardResult::Answered,
            Forwarded::StaleEpoch => ForwardResult::StaleEpoch,
            Forwarded::Failed(_) => ForwardResult::Failed,
        };
        self.metrics
            .forwarded(result, started.elapsed().as_secs_f64());
        forwarded
    }

    /// Renews this node's lease and, while Redis answers, makes the claims and releases
    /// that waited for it; until `stop`, then drops the lease.
    pub async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let lease = NodeLease {
            incarnation: self.incarnation.clone(),
            url: self.url.clone(),
        };
        let mut written = false;
        let mut last_renewal = Instant::now();
        let mut ticks = tokio::time::interval(self.config.lease_time / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let renewed = self.registry.put_lease(&self.node, &lease, written).await;
            match self.observe(RegistryOperation::Lease, renewed) {
                Ok(true) => {
                    if !written {
                        info!(node = %self.node, incarnation = %self.incarnation, url = %self.url, "cluster lease taken");
                    }
                    written = true;
                }
                Ok(false) => {
                    // Expired (this node was cut off too long) or Redis lost its data:
                    // every claim of this node is checked again.
                    warn!("cluster lease was gone; taking it again and checking every claim held here");
                    written = false;
                    self.reassert_all.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(_) => {
                    if last_renewal.elapsed() >= self.config.lease_time {
                        self.reassert_all.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
            }
            last_renewal = Instant::now();
            self.retry_releases().await;
            self.reconcile().await;
            if let Ok(nodes) = self.observe(RegistryOperation::Lookup, self.registry.nodes().await)
            {
                self.metrics.nodes(nodes.len());
                *self.nodes.lock() = nodes;
            }
        }
        if let Err(e) = self
            .registry
            .drop_lease(&self.node, &self.incarnation)
            .await
        {
            debug!(error = %e, "cluster lease not dropped at shutdown; it expires");
        }
    }

    async fn retry_releases(&self) {
        let waiting: Vec<(String, u64)> = self.unreleased.lock().drain().collect();
        for (id, epoch) in waiting {
            let released = self.registry.release(&id, &self.node, epoch).await;
            if self.observe(RegistryOperation::Release, released).is_err() {
                self.unreleased.lock().insert(id, epoch);
                return;
            }
        }
    }

    /// Claims the connections whose claim waited for Redis; after a lost lease, checks
    /// every connection here.
    async fn reconcile(&self) {
        let all = self.reassert_all.swap(false, Ordering::Relaxed);
        let handles: Vec<SessionHandle> = match all {
            true => self.sessions.all(),
            false => {
                let unsynced: Vec<(String, String)> = self
                    .unsynced
                    .lock()
                    .iter()
                    .map(|(id, connection)| (id.clone(), connection.clone()))
                    .collect();
                unsynced
                    .into_iter()
                    .filter_map(|(id, connection)| {
                        self.sessions
                            .get(&id)
                            .filter(|handle| handle.info.connection_id == connection)
                    })
                    .collect()
            }
        };
        if handles.is_empty() {
            self.unsynced.lock().clear();
            self.metrics.unsynced(0);
            return;
        }
        info!(
            connections = handles.len(),
            all, "reconciling claims with the cluster registry"
        );
        let failed = futures_util::stream::iter(handles)
            .map(|handle| async move { self.reconcile_one(&handle).await.is_err() })
            .buffer_unordered(RECONCILE_CONCURRENCY)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        if failed > 0 && all {
            self.reassert_all.store(true, Ordering::Relaxed);
        }
        self.metrics.unsynced(self.unsynced.lock().len());
    }

    /// Makes the registry agree with one connection here, or closes it when the
    /// registry shows a newer connection of its charge point on a live node.
    async fn reconcile_one(&self, handle: &SessionHandle) -> Result<(), RegistryError> {
        let info = &handle.info;
        let id = info.charge_point_id.as_str();
        let record = self.observe(RegistryOperation::Lookup, self.registry.owner(id).await)?;
        let expected = match &record {
            Some(record) if self.holds(record) && record.epoch == info.epoch() => {
                self.synced(info);
                return Ok(());
            }
            Some(record) if !self.holds(record) => {
                let alive = self
                    .observe(
                        RegistryOperation::Lookup,
                        self.registry.node(&record.node).await,
                    )?
                    .is_some_and(|lease| lease.incarnation == record.incarnation);
                if alive && record.connected_at_ms > info.connected_at.timestamp_millis() {
                    self.metrics.claim(ClaimResult::Superseded);
                    self.synced(info);
                    self.lose(handle, record.epoch);
                    return Ok(());
                }
                Some(record.epoch)
            }
            Some(record) => Some(record.epoch),
            None => None,
        };
        let claimed = self
            .registry
            .claim(id, &self.claimant(info), Some(expected))
            .await;
        match self.observe(RegistryOperation::Claim, claimed)? {
            Claim::Taken { epoch, previous } => {
                info.set_epoch(epoch);
                self.synced(info);
                self.claimed(id, epoch, previous).await;
            }
            // Changed meanwhile: looked at again on the next round.
            Claim::Changed => {}
        }
        Ok(())
    }

    /// Counts a claim taken under `epoch`; when it replaced another node's record (or
    /// this node's from an earlier start), tells that node.
    async fn claimed(&self, id: &str, epoch: u64, previous: Option<PreviousOwner>) {
        let elsewhere =
            previous.filter(|p| p.node != self.node || p.incarnation != self.incarnation);
        let Some(previous) = elsewhere else {
            self.metrics.claim(ClaimResult::Claimed);
            return;
        };
        self.metrics.claim(ClaimResult::TookOver);
        info!(charge_point_id = %id, epoch, previous_node = %previous.node, previous_epoch = previous.epoch, "took the charge point over from another node");
        self.announce_takeover(id, epoch, &previous.node, &previous.incarnation)
            .await;
    }

    fn holds(&self, record: &OwnerRecord) -> bool {
        record.node == self.node && record.incarnation == self.incarnation
    }

    /// Forgets that `info`'s claim waits for Redis (made, superseded, or the connection
    /// ended), unless a newer connection of its charge point waits now.
    fn synced(&self, info: &ConnectionInfo) {
        let mut unsynced = self.unsynced.lock();
        if unsynced.get(&info.charge_point_id) == Some(&info.connection_id) {
            unsynced.remove(&info.charge_point_id);
        }
        self.metrics.unsynced(unsynced.len());
    }

    /// The live nodes other than this one, with their internal URLs (registry order).
    pub async fn peers(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let nodes = self.observe(RegistryOperation::Lookup, self.registry.nodes().await)?;
        Ok(nodes
            .into_iter()
            .filter(|(name, _)| *name != self.node)
            .map(|(name, lease)| (name, lease.url))
            .collect())
    }

    /// The live owner of `id` other than this node, with its internal URL.
    pub async fn owner_elsewhere(
        &self,
        id: &str,
    ) -> Result<Option<(String, String)>, RegistryError> {
        let Some(record) =
            self.observe(RegistryOperation::Lookup, self.registry.owner(id).await)?
        else {
            return Ok(None);
        };
        if self.holds(&record) {
            return Ok(None);
        }
        let lease = self.observe(
            RegistryOperation::Lookup,
            self.registry.node(&record.node).await,
        )?;
        Ok(lease
            .filter(|lease| lease.incarnation == record.incarnation)
            .map(|lease| (record.node, lease.url)))
    }

    /// The shared registry (for the Kafka command ids).
    pub fn registry(&self) -> &Arc<RedisRegistry> {
        &self.registry
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// `[cluster]`.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether `node` (under `incarnation`) is alive.
    pub async fn is_alive(&self, node: &str, incarnation: &str) -> Result<bool, RegistryError> {
        let lease = self.observe(RegistryOperation::Lookup, self.registry.node(node).await)?;
        Ok(lease.is_some_and(|lease| lease.incarnation == incarnation))
    }

    /// The metrics.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }
}

impl Ownership for Cluster {
    fn claim(&self, info: Arc<ConnectionInfo>) -> BoxFuture<'_, ()> {
        self.claim_connection(info).boxed()
    }

    fn release(&self, info: Arc<ConnectionInfo>) -> BoxFuture<'_, ()> {
        self.release_connection(info).boxed()
    }
}

impl Owners for Cluster {
    fn locate<'a>(&'a self, charge_point_id: &'a str) -> BoxFuture<'a, Location> {
        self.find(charge_point_id).boxed()
    }

    fn forward<'a>(
        &'a self,
        charge_point_id: &'a str,
        owner: &'a RemoteOwner,
        request: &'a CommandRequest,
        mode: QueueMode,
    ) -> BoxFuture<'a, Forwarded> {
        self.forward_to(charge_point_id, owner, request, mode)
            .boxed()
    }
}
