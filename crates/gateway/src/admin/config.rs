//! The `[admin]` section: the admin API's address, token and limits.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// The admin HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/livez`, `/readyz`, `/health` and `/api/v1/...`. Loopback by default:
    /// the API can command every charge point.
    pub address: SocketAddr,
    /// When set, `/api/v1/...` requires `Authorization: Bearer <token>` (health
    /// endpoints stay open for probes). Required when `address` is not a loopback
    /// address, unless `allow_unauthenticated` is set.
    pub api_token: Option<String>,
    /// Serve `/api/v1/...` without a token on a non-loopback address (a lab, or a network
    /// that only trusted clients reach). Off by default: the gateway then refuses to start.
    pub allow_unauthenticated: bool,
    /// Most open connections; the last few places serve only health probes, further
    /// connections are closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's head or body, and may stay idle between
    /// requests, before its connection is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// PEM certificate (and intermediates) to serve the admin API over HTTPS; with
    /// `tls_key_file`. Unset: plain HTTP.
    pub tls_certificate_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_certificate_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Allow `GET /api/v1/debug/profile`, which samples the gateway's CPU for a while and
    /// answers a flame graph (docs/operations.md). Off by default.
    pub profiling: bool,
    /// The longest profile a request may ask for, in seconds.
    pub max_profile_seconds: u64,
}

/// What the profiling endpoint may do.
#[derive(Debug, Clone, Copy)]
pub struct Profiling {
    /// `admin.profiling`.
    pub enabled: bool,
    /// `admin.max_profile_seconds`.
    pub max_seconds: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: ([127, 0, 0, 1], 8081).into(),
            api_token: None,
            allow_unauthenticated: false,
            max_connections: 128,
            idle_timeout: Duration::from_secs(10),
            tls_certificate_file: None,
            tls_key_file: None,
            profiling: false,
            max_profile_seconds: 60,
        }
    }
}

impl AdminConfig {
    /// The TLS settings of the admin listener, when it serves HTTPS.
    pub fn tls(&self) -> Option<crate::tls::TlsConfig> {
        let (certificate_file, key_file) = (
            self.tls_certificate_file.clone()?,
            self.tls_key_file.clone()?,
        );
        Some(crate::tls::TlsConfig {
            certificates: vec![crate::tls::CertificateFiles {
                certificate_file,
                key_file,
            }],
            ..crate::tls::TlsConfig::default()
        })
    }

    /// What the profiling endpoint may do.
    pub fn profiling(&self) -> Profiling {
        Profiling {
            enabled: self.profiling,
            max_seconds: self.max_profile_seconds,
        }
    }

    /// Whether the API listens on a loopback address only.
    pub fn is_loopback(&self) -> bool {
        self.address.ip().is_loopback()
    }

    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if self.max_connections < 8 {
            return Err(invalid("admin.max_connections", "must be at least 8"));
        }
        if !(1..=600).contains(&self.max_profile_seconds) {
            return Err(invalid(
                "admin.max_profile_seconds",
                "must be between 1 and 600",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("admin.idle_timeout", "must be greater than zero"));
        }
        if self.tls_certificate_file.is_some() != self.tls_key_file.is_some() {
            return Err(invalid(
                "admin.tls_certificate_file",
                "admin.tls_certificate_file and admin.tls_key_file go together",
            ));
        }
        if self.api_token.as_deref() == Some("") {
            return Err(invalid("admin.api_token", "must not be empty when set"));
        }
        if self.api_token.is_none() && !self.is_loopback() && !self.allow_unauthenticated {
            return Err(InvalidOption::new(
                "admin.api_token",
                format!(
                    "is required when admin.address ({}) is not a loopback address: anyone \
                     who reaches the API can command every charge point (set \
                     admin.allow_unauthenticated = true to serve it without a token anyway)",
                    self.address
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: &str) -> AdminConfig {
        AdminConfig {
            address: address.parse().unwrap(),
            ..AdminConfig::default()
        }
    }

    #[test]
    fn beyond_loopback_the_api_needs_a_token_or_an_explicit_opt_out() {
        assert_eq!(AdminConfig::default().validate(), Ok(()));
        assert_eq!(at("[::1]:8081").validate(), Ok(()));
        for address in ["0.0.0.0:8081", "[::]:8081", "192.0.2.10:8081"] {
            let refused = at(address).validate().unwrap_err();
            assert_eq!(refused.option, "admin.api_token", "{address}");
            assert!(
                refused.reason.contains("allow_unauthenticated"),
                "{refused}"
            );
            let with_token = AdminConfig {
                api_token: Some("secret".into()),
                ..at(address)
            };
            assert_eq!(with_token.validate(), Ok(()));
            let opted_out = AdminConfig {
                allow_unauthenticated: true,
                ..at(address)
            };
            assert_eq!(opted_out.validate(), Ok(()));
        }
    }
}
