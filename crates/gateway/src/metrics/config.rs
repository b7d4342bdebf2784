//! The `[metrics]` section: the Prometheus endpoint's address and limits.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// The Prometheus metrics endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Address of the metrics listener.
    pub address: SocketAddr,
    /// Most open connections; further ones are closed at once.
    pub max_connections: usize,
    /// Time a scraper has to send a request, and may stay idle between requests.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: ([0, 0, 0, 0], 9090).into(),
            max_connections: 32,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl MetricsConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if self.max_connections == 0 {
            return Err(invalid("metrics.max_connections", "must be at least 1"));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("metrics.idle_timeout", "must be greater than zero"));
        }
        Ok(())
    }
}
