//! Security events: CloudEvents `chargepointgateway.security.{kind}` through the event
//! sink, each counted in `ocppgw_security_events_total{kind}`.
//!
//! Publishing is bounded by a rate (`auth.max_security_events_per_second`): a flood of
//! failed attempts is counted in full but cannot flood the event stream or the sink.
//! Nothing in an event is a secret: no password, hash or header.

use std::{net::IpAddr, sync::Arc};

use parking_lot::Mutex;

use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    event::{EventData, SecurityData},
    labels::{AuthResult, SecurityEventKind, SecurityProfile},
    metrics::{KindLabels, MetricsRegistry},
    sink::publisher::Publisher,
    token_bucket::TokenBucket,
};

/// CloudEvents types of security events, by kind: [`crate::event::SECURITY_PREFIX`] and
/// the kind.
pub fn event_type(kind: SecurityEventKind) -> &'static str {
    match kind {
        SecurityEventKind::AuthFailed => "chargepointgateway.security.auth_failed",
        SecurityEventKind::DowngradeAttempt => "chargepointgateway.security.downgrade_attempt",
        SecurityEventKind::CertificateRefused => "chargepointgateway.security.certificate_refused",
        SecurityEventKind::LimitHit => "chargepointgateway.security.limit_hit",
        SecurityEventKind::CredentialsRotated => "chargepointgateway.security.credentials_rotated",
    }
}

/// Counts and publishes security events.
pub struct SecurityEvents {
    publisher: Option<Arc<Publisher>>,
    rate: Mutex<TokenBucket>,
    counted: Family<KindLabels, Counter>,
}

impl SecurityEvents {
    /// Events through `publisher` (`None`: counted only), at most `per_second` a second;
    /// `ocppgw_security_events_total` is registered in `registry`, every kind at 0.
    pub fn new(
        publisher: Option<Arc<Publisher>>,
        per_second: u32,
        registry: &mut MetricsRegistry,
    ) -> SecurityEvents {
        let counted = Family::<KindLabels, Counter>::default();
        registry.add(
            "ocppgw_security_events",
            "Security events by kind (all counted; published up to auth.max_security_events_per_second)",
            counted.clone(),
        );
        for kind in SecurityEventKind::ALL {
            let _ = counted.get_or_create(&KindLabels {
                kind: kind.as_str(),
            });
        }
        SecurityEvents {
            publisher,
            rate: Mutex::new(TokenBucket::new(per_second.max(1))),
            counted,
        }
    }

    /// Counts an event of `kind` about charge point `id`, and publishes it unless over the
    /// rate. Publishing runs in the background: the caller (a handshake) never waits for
    /// the sink.
    pub fn report(
        &self,
        kind: SecurityEventKind,
        id: &str,
        address: impl Into<Option<IpAddr>>,
        result: impl Into<Outcome>,
        required_profile: Option<SecurityProfile>,
    ) {
        self.counted
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
        let Some(publisher) = &self.publisher else {
            return;
        };
        if !self.rate.lock().try_take() {
            return;
        }
        let data = SecurityData {
            kind: kind.as_str(),
            result: result.into().0,
            required_profile: required_profile.map(|p| p as u8),
            peer_address: address.into(),
            gateway_node: publisher.node_id().to_owned(),
        };
        let (publisher, id) = (publisher.clone(), id.to_owned());
        tokio::spawn(async move {
            publisher
                .publish_quietly(event_type(kind), &id, EventData::Security(data))
                .await;
        });
    }
}

/// The `result` of a security event.
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);

impl From<AuthResult> for Outcome {
    fn from(result: AuthResult) -> Outcome {
        Outcome(result.as_str())
    }
}

impl From<&'static str> for Outcome {
    fn from(result: &'static str) -> Outcome {
        Outcome(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_prefix_and_its_label_as_type() {
        for kind in SecurityEventKind::ALL {
            assert_eq!(
                event_type(*kind),
                format!("{}{}", crate::event::SECURITY_PREFIX, kind.as_str())
            );
        }
    }
}
