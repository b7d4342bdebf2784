//! The TLS listener's metrics.

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use super::TlsConfig;
use crate::{
    labels::TlsHandshakeResult,
    metrics::{MetricsRegistry, ResultLabels},
};

/// What the TLS listener counts.
#[derive(Clone, Default)]
pub struct TlsMetrics {
    handshakes: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    expiry: Gauge,
}

impl TlsMetrics {
    /// Registers the metrics in `r`, every series at 0.
    pub fn register(r: &mut MetricsRegistry) -> TlsMetrics {
        let m = TlsMetrics::default();
        r.add(
            "ocppgw_tls_handshakes",
            "TLS handshakes on the wss:// listener by result",
            m.handshakes.clone(),
        );
        r.add(
            "ocppgw_tls_reloads",
            "Rebuilds of the TLS context after its files changed, by result",
            m.reloads.clone(),
        );
        r.add(
            "ocppgw_tls_certificate_expiry_timestamp_seconds",
            "When the first of the served certificates expires (Unix time; 0 without TLS)",
            m.expiry.clone(),
        );
        for result in TlsHandshakeResult::ALL {
            let _ = m.handshakes.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
        for result in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        m
    }

    /// Counts one handshake.
    pub fn handshake(&self, result: TlsHandshakeResult) {
        self.handshakes
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts one rebuild after a change.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records the served certificates' expiry.
    pub fn certificates_loaded(&self, config: &TlsConfig) {
        if let Some(expiry) = super::earliest_expiry(config) {
            self.expiry.set(expiry);
        }
    }
}
