//! The `[admin]` section: the admin API's address, token and limits.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// The admin HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/livez`, `/readyz`, `/health` and `/api/v1/...`.
    pub address: SocketAddr,
    /// When set, `/api/v1/...` requires `Authorization: Bearer <token>` (health
    /// endpoints stay open for probes).
    pub api_token: Option<String>,
    /// Most open connections; the last few places serve only health probes, further
    /// connections are closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's head or body, and may stay idle between
    /// requests, before its connection is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: ([0, 0, 0, 0], 8081).into(),
            api_token: None,
            max_connections: 128,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

impl AdminConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if self.max_connections < 8 {
            return Err(invalid("admin.max_connections", "must be at least 8"));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("admin.idle_timeout", "must be greater than zero"));
        }
        if self.api_token.as_deref() == Some("") {
            return Err(invalid("admin.api_token", "must not be empty when set"));
        }
        Ok(())
    }
}
