//! Charge point authentication: OCPP security profiles, credential records, password
//! verification, failure backoff and security events.
//!
//! The listener asks [`Authenticator::authenticate`] about every upgrade request that
//! passed the handshake policy, before answering it. The answer is the profile the
//! charge point connected with, or a refusal; every refusal of a charge point that may
//! exist looks the same from outside (`401`, same body, one argon2 verification's time),
//! so that ids cannot be enumerated. Only `ocppgw_auth_results_total{result}`, the log
//! and the security events tell the reasons apart.
//!
//! Which profile a charge point must use comes from its [`CredentialRecord`]; a listener
//! only offers some profiles ([`Transport`]), and a record that needs more than the
//! listener offers is refused there (no downgrade).

pub mod backoff;
pub mod basic;
pub mod config;
pub mod metrics;
pub mod password;
pub mod reload;
pub mod rotation;
pub mod store;
pub mod verifier;

use std::{net::IpAddr, sync::Arc, time::Duration};

use chrono::Utc;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

pub use self::config::{AuthConfig, CredentialsStore, UnknownChargePoints};
pub use self::store::{CredentialRecord, CredentialStore};
pub use crate::labels::{AuthResult, SecurityProfile};

use self::{
    backoff::{BackoffPolicy, FailureBackoff},
    basic::BasicCredentials,
    metrics::AuthMetrics,
    store::Change,
    verifier::{Matched, Verifier},
};
use crate::{
    labels::SecurityEventKind,
    security_events::SecurityEvents,
    tls::{CertificateBinding, ClientCertificate},
};

/// How the charge point reached the listener, which bounds the profiles it can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// Plain TCP (`ws://`): profiles 0 and 1.
    Plain,
    /// TLS (`wss://`): every profile, 3 with the client certificate the TLS handshake
    /// verified, if one was presented.
    Tls {
        /// The verified client certificate.
        certificate: Option<&'a ClientCertificate>,
    },
}

impl Transport<'_> {
    /// Whether a charge point that must use `profile` can use it on this transport.
    pub fn offers(self, profile: SecurityProfile) -> bool {
        match self {
            Transport::Plain => matches!(
                profile,
                SecurityProfile::Unsecured | SecurityProfile::BasicAuth
            ),
            Transport::Tls { .. } => true,
        }
    }
}

/// What a profile 3 client certificate must say (from `[tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePolicy {
    /// What binds the certificate to its charge point.
    pub binding: CertificateBinding,
    /// A name the subject's O must contain.
    pub operator_name: Option<String>,
}

impl CertificatePolicy {
    /// Whether `certificate` may be used by charge point `id`.
    pub fn allows(&self, certificate: &ClientCertificate, id: &str) -> bool {
        let bound = match self.binding {
            CertificateBinding::ChargePointId => {
                certificate.common_names.iter().any(|name| name == id)
            }
            // Checked against the BootNotification, once it arrives.
            CertificateBinding::SerialNumber | CertificateBinding::None => true,
        };
        let operator = self.operator_name.as_ref().is_none_or(|operator| {
            certificate
                .organizations
                .iter()
                .any(|organization| organization.contains(operator.as_str()))
        });
        bound && operator
    }
}

/// One upgrade request, as authentication sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The charge point id from the URL, percent-decoded.
    pub charge_point_id: &'a str,
    /// The request's `Authorization` header values (more than one is malformed).
    pub authorization: &'a [&'a [u8]],
    /// The client's address.
    pub address: IpAddr,
    /// How it connected.
    pub transport: Transport<'a>,
}

/// A refused attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// Why.
    pub result: AuthResult,
    /// When refused unchecked during a backoff: how long until the next attempt may be
    /// checked.
    pub retry_after: Option<Duration>,
}

/// Decides who may connect as which charge point.
pub struct Authenticator {
    store: Option<Arc<dyn CredentialStore>>,
    config: AuthConfig,
    certificates: CertificatePolicy,
    verifier: Verifier,
    backoff: Mutex<FailureBackoff>,
    metrics: AuthMetrics,
    events: Arc<SecurityEvents>,
}

impl Authenticator {
    /// Authentication against `store` (`None`: every charge point is profile 0).
    pub fn new(
        store: Option<Arc<dyn CredentialStore>>,
        config: AuthConfig,
        certificates: CertificatePolicy,
        metrics: AuthMetrics,
        events: Arc<SecurityEvents>,
    ) -> Authenticator {
        Authenticator {
            store,
            certificates,
            verifier: Verifier::new(
                config.max_concurrent_verifications,
                config.verified_cache_ttl,
            ),
            backoff: Mutex::new(FailureBackoff::new(BackoffPolicy {
                initial: config.failure_backoff_initial,
                max: config.failure_backoff_max,
                address_threshold: config.address_failure_threshold,
            })),
            config,
            metrics,
            events,
        }
    }

    /// The credential store, if authentication is on.
    pub fn store(&self) -> Option<&Arc<dyn CredentialStore>> {
        self.store.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Hashes a new password (set by the admin API, or made by a rotation) off the async
    /// runtime, within the bound on hashes at once.
    pub async fn hash_password(
        &self,
        password: &[u8],
    ) -> Result<password::PasswordHashString, password::HashError> {
        self.verifier.hash_new(password.to_vec()).await
    }

    /// Forgets what was verified for `id`: its record changed.
    pub fn forget(&self, id: &str) {
        self.verifier.forget(id);
    }

    /// The serial number a charge point with `certificate` must send in its
    /// BootNotification, when certificates are bound to serial numbers.
    pub fn bound_serial_number(&self, certificate: Option<&ClientCertificate>) -> Option<String> {
        match self.certificates.binding {
            CertificateBinding::SerialNumber => {
                certificate.and_then(|certificate| certificate.common_names.first().cloned())
            }
            _ => None,
        }
    }

    /// The security events publisher (rotation reports through it too).
    pub fn events(&self) -> &SecurityEvents {
        &self.events
    }

    /// Decides on `attempt`: the profile it connected with, or why not. Counted, logged
    /// and reported as a security event here.
    pub async fn authenticate(&self, attempt: Attempt<'_>) -> Result<SecurityProfile, Denied> {
        let id = attempt.charge_point_id;
        let Some(store) = &self.store else {
            self.metrics
                .result(SecurityProfile::Unsecured, AuthResult::Accepted);
            return Ok(SecurityProfile::Unsecured);
        };
        if let Some(wait) = self
            .backoff
            .lock()
            .wait(id, attempt.address, Instant::now())
        {
            self.metrics
                .result(SecurityProfile::Unsecured, AuthResult::Backoff);
            self.events.report(
                SecurityEventKind::LimitHit,
                id,
                attempt.address,
                AuthResult::Backoff,
                None,
            );
            return Err(Denied {
                result: AuthResult::Backoff,
                retry_after: Some(wait),
            });
        }
        let record = store.get(id);
        let outcome = self.check(&attempt, record.as_deref()).await;
        let profile = record
            .as_ref()
            .map_or(SecurityProfile::Unsecured, |r| r.profile);
        self.metrics.result(
            profile,
            outcome
                .as_ref()
                .map_or_else(|d| *d, |_| AuthResult::Accepted),
        );
        match outcome {
            Ok(matched) => {
                self.backoff.lock().succeeded(id, attempt.address);
                if let (Some(record), Matched::Current) = (&record, matched) {
                    if record.previous_password.is_some() {
                        self.retire_previous_password(store.clone(), record);
                    }
                }
                if matched == Matched::Previous {
                    info!(charge_point_id = %id, "charge point connected with its previous password; a rotation is not complete");
                }
                Ok(profile)
            }
            Err(result) => {
                self.backoff
                    .lock()
                    .failed(id, attempt.address, Instant::now());
                let kind = match result {
                    AuthResult::ProfileNotOffered => SecurityEventKind::DowngradeAttempt,
                    AuthResult::CertificateMismatch => SecurityEventKind::CertificateRefused,
                    _ => SecurityEventKind::AuthFailed,
                };
                crate::warn_limited!(charge_point_id = %id, address = %attempt.address, result = result.as_str(), required_profile = profile.as_str(), "charge point authentication failed");
                self.events
                    .report(kind, id, attempt.address, result, Some(profile));
                Err(Denied {
                    result,
                    retry_after: None,
                })
            }
        }
    }

    /// The checks, in an order that answers an unknown id, a wrong password and a
    /// downgrade alike: whenever credentials for the right id are present, one
    /// verification's time is spent.
    async fn check(
        &self,
        attempt: &Attempt<'_>,
        record: Option<&CredentialRecord>,
    ) -> Result<Matched, AuthResult> {
        let required = match record {
            Some(record) => record.profile,
            None if self.config.unknown_charge_points == UnknownChargePoints::Unsecured => {
                SecurityProfile::Unsecured
            }
            None => SecurityProfile::BasicAuth,
        };
        if required == SecurityProfile::Unsecured {
            return Ok(Matched::None);
        }
        let credentials = match attempt.authorization {
            [] => Err(AuthResult::MissingCredentials),
            [value] => BasicCredentials::parse(value)
                .map_err(|_| AuthResult::MalformedCredentials)
                .and_then(|credentials| {
                    if credentials.username == attempt.charge_point_id {
                        Ok(credentials)
                    } else {
                        Err(AuthResult::UsernameMismatch)
                    }
                }),
            _ => Err(AuthResult::MalformedCredentials),
        };
        let record = match record {
            Some(record) if attempt.transport.offers(record.profile) => record,
            other => {
                if let Ok(credentials) = &credentials {
                    self.verifier.decoy(&credentials.password).await;
                }
                return Err(match other {
                    Some(_) => AuthResult::ProfileNotOffered,
                    None => AuthResult::UnknownChargePoint,
                });
            }
        };
        if record.profile == SecurityProfile::TlsClientCertificate {
            // The TLS handshake verified the certificate's chain; what it says is checked
            // here.
            return match attempt.transport {
                Transport::Tls {
                    certificate: Some(certificate),
                } if self.certificates.allows(certificate, &record.id) => Ok(Matched::None),
                Transport::Tls {
                    certificate: Some(_),
                } => Err(AuthResult::CertificateMismatch),
                _ => Err(AuthResult::MissingCertificate),
            };
        }
        let credentials = credentials?;
        let Some(current) = &record.password else {
            return Err(AuthResult::WrongPassword);
        };
        let previous = record
            .previous_password
            .as_ref()
            .filter(|(_, until)| *until > Utc::now())
            .map(|(hash, _)| hash);
        match self
            .verifier
            .verify(&record.id, &credentials.password, current, previous)
            .await
        {
            Matched::None => Err(AuthResult::WrongPassword),
            matched => Ok(matched),
        }
    }

    /// The charge point authenticated with its new password: the old one stops working
    /// now rather than at the end of the grace period.
    fn retire_previous_password(&self, store: Arc<dyn CredentialStore>, record: &CredentialRecord) {
        let id = record.id.clone();
        let current = record.password.clone();
        tokio::spawn(async move {
            let retired = store
                .update(
                    id.clone(),
                    Box::new(move |now| match now {
                        Some(now) if now.password == current && now.previous_password.is_some() => {
                            Change::Set(CredentialRecord {
                                previous_password: None,
                                ..now.clone()
                            })
                        }
                        _ => Change::Keep,
                    }),
                )
                .await;
            match retired {
                Ok(true) => {
                    info!(charge_point_id = %id, "previous password retired: the charge point connected with its new one")
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(charge_point_id = %id, error = %e, "could not retire the previous password")
                }
            }
        });
    }
}
