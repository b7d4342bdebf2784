//! The `[auth]` section: who may connect as which charge point.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// What a charge point id without a credential record gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownChargePoints {
    /// Refused with `401`, like a wrong password.
    Refuse,
    /// Let in without authentication (profile 0): for a lab or a migration.
    Unsecured,
}

/// Where credential records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsStore {
    /// `auth.credentials_file`, per node.
    File,
    /// Redis (`cluster.redis_urls`), shared by the nodes of a cluster; a
    /// `credentials_file`, when set, is imported into it at start.
    Redis,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The credentials file (JSON lines, see docs/security.md). Unset: no charge point is
    /// authenticated (every one is profile 0), and the gateway says so at start.
    pub credentials_file: Option<PathBuf>,
    /// Where the records live: `file` (the default) or `redis` (shared by a cluster;
    /// needs `cluster.redis_urls`).
    pub credentials_store: CredentialsStore,
    /// What an id without a record gets: `refuse` (the default) or `unsecured`.
    pub unknown_charge_points: UnknownChargePoints,
    /// How often the credentials file is checked for changes made by others (it is also
    /// read again on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Password verifications at once (each takes tens of milliseconds of a core and
    /// 19 MiB); more wait, within the handshake deadline.
    pub max_concurrent_verifications: usize,
    /// How long a verified password is remembered, so that a reconnecting charge point is
    /// not hashed again (`0s`: always hash). Kept in memory only, as a keyed hash.
    #[serde(with = "humantime_serde")]
    pub verified_cache_ttl: Duration,
    /// The wait after a first failed attempt; each further failure doubles it.
    #[serde(with = "humantime_serde")]
    pub failure_backoff_initial: Duration,
    /// The longest wait after failed attempts.
    #[serde(with = "humantime_serde")]
    pub failure_backoff_max: Duration,
    /// Failed attempts in a row from one address, whatever the ids, before the address
    /// itself backs off.
    pub address_failure_threshold: u32,
    /// How long the previous password stays valid after a rotation, unless the charge
    /// point connects with the new one first.
    #[serde(with = "humantime_serde")]
    pub rotation_grace_period: Duration,
    /// Security events published per second at most (all are counted in
    /// `ocppgw_security_events_total`); the rest are dropped, so that a flood of failed
    /// attempts does not flood the event stream.
    pub max_security_events_per_second: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            credentials_file: None,
            credentials_store: CredentialsStore::File,
            unknown_charge_points: UnknownChargePoints::Refuse,
            reload_interval: Duration::from_secs(5),
            max_concurrent_verifications: std::thread::available_parallelism()
                .map_or(2, |n| n.get()),
            verified_cache_ttl: Duration::from_secs(24 * 3600),
            failure_backoff_initial: Duration::from_secs(1),
            failure_backoff_max: Duration::from_secs(60),
            address_failure_threshold: 20,
            rotation_grace_period: Duration::from_secs(7 * 24 * 3600),
            max_security_events_per_second: 100,
        }
    }
}

impl AuthConfig {
    /// Checks the values that parse but cannot be used.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        if self.max_concurrent_verifications == 0 {
            return Err(InvalidOption::new(
                "auth.max_concurrent_verifications",
                "must be at least 1",
            ));
        }
        if self.reload_interval.is_zero() {
            return Err(InvalidOption::new(
                "auth.reload_interval",
                "must be more than 0s",
            ));
        }
        if self.failure_backoff_initial > self.failure_backoff_max {
            return Err(InvalidOption::new(
                "auth.failure_backoff_initial",
                "must not be longer than auth.failure_backoff_max",
            ));
        }
        if self.address_failure_threshold == 0 {
            return Err(InvalidOption::new(
                "auth.address_failure_threshold",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
