//! The cluster's metrics: claims, takeovers, forwards and the registry's health.

use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};

use crate::{
    labels::{ClaimResult, ForwardResult, RegistryOperation},
    metrics::{MetricsRegistry, OperationLabels, ResultLabels, LATENCY_BUCKETS},
};

/// What the cluster counts.
#[derive(Clone)]
pub struct ClusterMetrics {
    claims: Family<ResultLabels, Counter>,
    takeovers_lost: Counter,
    stale_epochs: Counter,
    forwards: Family<ResultLabels, Counter>,
    forward_duration: Histogram,
    registry_errors: Family<OperationLabels, Counter>,
    registry_up: Gauge,
    unsynced: Gauge,
    nodes: Gauge,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            claims: Family::default(),
            takeovers_lost: Counter::default(),
            stale_epochs: Counter::default(),
            forwards: Family::default(),
            forward_duration: Histogram::new(LATENCY_BUCKETS),
            registry_errors: Family::default(),
            registry_up: Gauge::default(),
            unsynced: Gauge::default(),
            nodes: Gauge::default(),
        }
    }
}

impl ClusterMetrics {
    /// Registers the metrics in `r`, every series at 0 (with clustering off too, so
    /// that dashboards and alerts see zeros, not gaps).
    pub fn register(r: &mut MetricsRegistry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        r.add(
            "ocppgw_cluster_claims",
            "Registry claims of charge points after their handshake, by result",
            m.claims.clone(),
        );
        r.add(
            "ocppgw_cluster_takeovers_lost",
            "Connections here closed because the charge point connected to another node",
            m.takeovers_lost.clone(),
        );
        r.add(
            "ocppgw_cluster_stale_epoch_refusals",
            "Forwarded commands refused here because the charge point's session here has another epoch",
            m.stale_epochs.clone(),
        );
        r.add(
            "ocppgw_cluster_forwards",
            "Commands forwarded to the node holding their charge point, by result",
            m.forwards.clone(),
        );
        r.add(
            "ocppgw_cluster_forward_duration_seconds",
            "Time from forwarding a command to the owner's answer",
            m.forward_duration.clone(),
        );
        r.add(
            "ocppgw_cluster_registry_errors",
            "Registry operations that failed or timed out, by operation",
            m.registry_errors.clone(),
        );
        r.add(
            "ocppgw_cluster_registry_up",
            "Whether the last registry operation succeeded (1), or clustering is off (1 too)",
            m.registry_up.clone(),
        );
        r.add(
            "ocppgw_cluster_unsynced_sessions",
            "Connections here whose registry claim waits for the registry to answer again",
            m.unsynced.clone(),
        );
        r.add(
            "ocppgw_cluster_nodes",
            "Live nodes in the registry, as this node last listed them",
            m.nodes.clone(),
        );
        for result in ClaimResult::ALL {
            let _ = m.claims.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
        for result in ForwardResult::ALL {
            let _ = m.forwards.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
        for operation in RegistryOperation::ALL {
            let _ = m.registry_errors.get_or_create(&OperationLabels {
                operation: operation.as_str(),
            });
        }
        m.registry_up.set(1);
        m
    }

    /// Counts one claim.
    pub fn claim(&self, result: ClaimResult) {
        self.claims
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts a connection here closed for a newer one elsewhere.
    pub fn takeover_lost(&self) {
        self.takeovers_lost.inc();
    }

    /// Counts a forwarded command refused for its epoch.
    pub fn stale_epoch_refused(&self) {
        self.stale_epochs.inc();
    }

    /// Counts one forward and its duration.
    pub fn forwarded(&self, result: ForwardResult, seconds: f64) {
        self.forwards
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        self.forward_duration.observe(seconds);
    }

    /// Records a registry operation's success or failure.
    pub fn registry(&self, operation: RegistryOperation, ok: bool) {
        if !ok {
            self.registry_errors
                .get_or_create(&OperationLabels {
                    operation: operation.as_str(),
                })
                .inc();
        }
        self.registry_up.set(i64::from(ok));
    }

    /// Sets how many connections wait for their claim.
    pub fn unsynced(&self, count: usize) {
        self.unsynced.set(count as i64);
    }

    /// Sets how many nodes are alive.
    pub fn nodes(&self, count: usize) {
        self.nodes.set(count as i64);
    }
}
