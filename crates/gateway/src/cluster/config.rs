//! The `[cluster]` section: the shared registry in Redis and the internal API between
//! instances. Off while no Redis address is configured; one instance then owns what it
//! holds, as before.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// Shortest internal token accepted: it lets a caller command every charge point.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// Several gateway instances sharing one registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis addresses (`redis://host:port/db`, `rediss://` for TLS). One address is a
    /// single Redis (or a primary behind a failover proxy); several are the seed nodes
    /// of a Redis Cluster. Empty: clustering is off.
    pub redis_urls: Vec<String>,
    /// Prefix of every key the gateway writes, so that several deployments can share a
    /// Redis.
    pub key_prefix: String,
    /// How long a node's lease lives without renewal. A node that stops renewing (killed,
    /// cut off) is taken for gone after this; its charge points are then free for others
    /// and commands to them answer `notConnected`. Renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub lease_time: Duration,
    /// Longest wait for one Redis operation before it counts as failed (the registry is
    /// then degraded: see docs/cluster.md).
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Address of the internal API, which other instances call to forward commands and
    /// announce takeovers. Not for clients: bind it to the cluster's network.
    pub internal_address: SocketAddr,
    /// The base URL other instances reach the internal API at (`http://10.0.0.5:9400`).
    /// Unset: `http://` and `internal_address`, which must then be a specific address.
    pub advertise_url: Option<String>,
    /// The bearer token every instance presents to the others' internal API (the same on
    /// every node; at least 16 characters). Required when clustering is on.
    pub internal_token: Option<String>,
    /// Longest wait for a forwarded command's answer beyond the command's own timeout.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// How long a Kafka command id is remembered across nodes, so that a command re-read
    /// after a rebalance or a crash is neither sent twice nor left without a result.
    #[serde(with = "humantime_serde")]
    pub command_id_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_urls: Vec::new(),
            key_prefix: "cpgw".to_owned(),
            lease_time: Duration::from_secs(6),
            redis_timeout: Duration::from_secs(1),
            internal_address: ([127, 0, 0, 1], 9400).into(),
            advertise_url: None,
            internal_token: None,
            forward_timeout: Duration::from_secs(5),
            command_id_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl ClusterConfig {
    /// Whether clustering is on.
    pub fn enabled(&self) -> bool {
        !self.redis_urls.is_empty()
    }

    /// The URL other nodes call this one at.
    pub fn advertised_url(&self, bound: SocketAddr) -> String {
        match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{bound}"),
        }
    }

    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if !self.enabled() {
            return Ok(());
        }
        for url in &self.redis_urls {
            if redis::Client::open(url.as_str()).is_err() {
                return Err(InvalidOption::new(
                    "cluster.redis_urls",
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                ));
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(InvalidOption::new(
                "cluster.key_prefix",
                "must be non-empty and without braces (they select Redis Cluster slots)",
            ));
        }
        if self.lease_time < Duration::from_secs(2) {
            return Err(InvalidOption::new(
                "cluster.lease_time",
                "must be at least 2s",
            ));
        }
        if self.redis_timeout.is_zero() || self.redis_timeout * 2 > self.lease_time {
            return Err(InvalidOption::new(
                "cluster.redis_timeout",
                "must be greater than zero and at most half of cluster.lease_time",
            ));
        }
        match &self.internal_token {
            Some(token) if token.chars().count() >= MIN_TOKEN_LENGTH => {}
            _ => {
                return Err(InvalidOption::new(
                    "cluster.internal_token",
                    format!(
                        "required when clustering is on, at least {MIN_TOKEN_LENGTH} characters"
                    ),
                ))
            }
        }
        match &self.advertise_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(InvalidOption::new(
                    "cluster.advertise_url",
                    "must start with http:// or https://",
                ))
            }
            None if self.internal_address.ip().is_unspecified() => {
                return Err(InvalidOption::new(
                    "cluster.advertise_url",
                    "required when cluster.internal_address is a wildcard address",
                ))
            }
            _ => {}
        }
        if self.forward_timeout.is_zero() {
            return Err(InvalidOption::new(
                "cluster.forward_timeout",
                "must be greater than zero",
            ));
        }
        if self.command_id_ttl < Duration::from_secs(60) {
            return Err(InvalidOption::new(
                "cluster.command_id_ttl",
                "must be at least 60s",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ClusterConfig {
        ClusterConfig {
            redis_urls: vec!["redis://127.0.0.1:6379".into()],
            internal_token: Some("0123456789abcdef".into()),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_valid() {
        assert!(!ClusterConfig::default().enabled());
        ClusterConfig::default().validate().unwrap();
        on().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_option() {
        let option = |config: ClusterConfig| config.validate().unwrap_err().option;
        assert_eq!(
            option(ClusterConfig {
                internal_token: None,
                ..on()
            }),
            "cluster.internal_token"
        );
        assert_eq!(
            option(ClusterConfig {
                internal_token: Some("short".into()),
                ..on()
            }),
            "cluster.internal_token"
        );
        assert_eq!(
            option(ClusterConfig {
                redis_urls: vec!["localhost:6379".into()],
                ..on()
            }),
            "cluster.redis_urls"
        );
        assert_eq!(
            option(ClusterConfig {
                internal_address: ([0, 0, 0, 0], 9400).into(),
                ..on()
            }),
            "cluster.advertise_url"
        );
        assert_eq!(
            option(ClusterConfig {
                redis_timeout: Duration::from_secs(4),
                ..on()
            }),
            "cluster.redis_timeout"
        );
    }
}
