//! The local responder: the embedded default answer to every charge-point-initiated action.
//!
//! With no backend deciding, a charge point must still be able to boot, authorize and run
//! transactions. Each answer is valid against the version's response schema (tested for
//! every action) and is the honest one for a gateway that has no backend behind it: for
//! example DataTransfer is `UnknownVendorId` and SignCertificate is `Rejected`.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use chrono::{SecondsFormat, Utc};
use ocpp::{ErrorCode, OcppVersion};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How the local responder answers Authorize (and idTag checks in transactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizePolicy {
    /// Every idTag / idToken is accepted.
    AcceptAll,
    /// Only tokens in `responder.allowed_id_tags` are accepted; others are `Invalid`.
    AllowList,
}

/// The local responder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponderConfig {
    /// Heartbeat interval given in BootNotification responses.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Authorize policy.
    pub authorize: AuthorizePolicy,
    /// Accepted tokens when `authorize = "allow_list"`.
    pub allowed_id_tags: Vec<String>,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(300),
            authorize: AuthorizePolicy::AcceptAll,
            allowed_id_tags: Vec::new(),
        }
    }
}

/// Answers charge-point-initiated CALLs from configuration alone.
pub struct LocalResponder {
    heartbeat_interval_seconds: i64,
    policy: AuthorizePolicy,
    allowed_id_tags: HashSet<String>,
    next_transaction_id: AtomicI32,
}

/// A CALL the responder cannot answer with a CALLRESULT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The CALLERROR code.
    pub code: ErrorCode,
    /// The CALLERROR description.
    pub description: String,
}

impl LocalResponder {
    /// A responder for `config`.
    pub fn new(config: &ResponderConfig) -> LocalResponder {
        LocalResponder {
            heartbeat_interval_seconds: config.heartbeat_interval.as_secs() as i64,
            policy: config.authorize,
            allowed_id_tags: config.allowed_id_tags.iter().cloned().collect(),
            next_transaction_id: AtomicI32::new(initial_transaction_id()),
        }
    }

    /// The answer to `action` with `request` (already schema-valid) from a charge point
    /// speaking `version`.
    pub fn answer(
        &self,
        version: OcppVersion,
        action: &str,
        request: &Value,
    ) -> Result<Value, Refusal> {
        // Formatted only for the answers that carry the time.
        let now = || Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let response = match (version, action) {
            (_, "BootNotification") => json!({
                "status": "Accepted",
                "currentTime": now(),
                "interval": self.heartbeat_interval_seconds,
            }),
            (_, "Heartbeat") => json!({ "currentTime": now() }),
            (_, "DataTransfer") => json!({ "status": "UnknownVendorId" }),
            (_, "SignCertificate") => json!({ "status": "Rejected" }),
            (OcppVersion::V16, "Authorize") => json!({
                "idTagInfo": { "status": self.authorize(request["idTag"].as_str()) },
            }),
            (OcppVersion::V16, "StartTransaction") => json!({
                "idTagInfo": { "status": self.authorize(request["idTag"].as_str()) },
                "transactionId": self.next_transaction_id.fetch_add(1, Ordering::Relaxed),
            }),
            (OcppVersion::V16, "StopTransaction") => match request["idTag"].as_str() {
                Some(tag) => json!({ "idTagInfo": { "status": self.authorize(Some(tag)) } }),
                None => json!({}),
            },
            (_, "Authorize") => json!({
                "idTokenInfo": { "status": self.authorize(request["idToken"]["idToken"].as_str()) },
            }),
            (_, "TransactionEvent") => match request["idToken"]["idToken"].as_str() {
                Some(token) => json!({ "idTokenInfo": { "status": self.authorize(Some(token)) } }),
                None => json!({}),
            },
            (_, "Get15118EVCertificate") => json!({ "status": "Failed", "exiResponse": "" }),
            (_, "GetCertificateStatus") => json!({ "status": "Failed" }),
            (_, "NotifyEVChargingNeeds") => json!({ "status": "Rejected" }),
            (_, "NotifyEVChargingSchedule") => json!({ "status": "Accepted" }),
            (OcppVersion::V21, "OpenPeriodicEventStream") => json!({ "status": "Accepted" }),
            (OcppVersion::V21, "PullDynamicScheduleUpdate") => json!({ "status": "Rejected" }),
            (OcppVersion::V21, "VatNumberValidation") => json!({
                "vatNumber": request["vatNumber"].as_str().unwrap_or_default(),
                "status": "Rejected",
            }),
            (OcppVersion::V21, "GetCertificateChainStatus") => {
                let statuses: Vec<Value> = request["certificateStatusRequests"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|item| {
                        json!({
                            "certificateHashData": item["certificateHashData"],
                            "source": item["source"],
                            "status": "Unknown",
                            "nextUpdate": now(),
                        })
                    })
                    .collect();
                json!({ "certificateStatus": statuses })
            }
            _ => match ocpp::catalogue::initiator(version, action) {
                Some(initiator) if initiator.charge_point_may_send() => json!({}),
                _ => {
                    return Err(Refusal {
                        code: ErrorCode::NotSupported,
                        description: format!("{action} is not sent by charge points in {version}"),
                    })
                }
            },
        };
        Ok(response)
    }

    fn authorize(&self, token: Option<&str>) -> &'static str {
        match (self.policy, token) {
            (AuthorizePolicy::AcceptAll, _) => "Accepted",
            (AuthorizePolicy::AllowList, Some(token)) if self.allowed_id_tags.contains(token) => {
                "Accepted"
            }
            (AuthorizePolicy::AllowList, _) => "Invalid",
        }
    }
}

/// The first transaction id this process hands out.
///
/// Seconds since 2024-01-01, so ids keep rising across restarts as long as the gateway
/// starts fewer transactions than seconds pass between restarts; a backend-answered
/// StartTransaction (Kafka mode) is the way to globally unique ids.
fn initial_transaction_id() -> i32 {
    const EPOCH_2024: i64 = 1_704_067_200;
    let seconds = Utc::now().timestamp() - EPOCH_2024;
    i32::try_from(seconds.max(1)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocpp::{catalogue, Leniency, PayloadKind, SchemaSet};

    fn sample_request(version: OcppVersion, action: &str) -> Value {
        match (version, action) {
            (OcppVersion::V16, "Authorize" | "StartTransaction" | "StopTransaction") => {
                json!({"idTag": "TAG-1"})
            }
            (_, "Authorize" | "TransactionEvent") => {
                json!({"idToken": {"idToken": "TAG-1", "type": "ISO14443"}})
            }
            (_, "VatNumberValidation") => json!({"vatNumber": "DE123", "evseId": 1}),
            (_, "GetCertificateChainStatus") => json!({"certificateStatusRequests": [{
                "certificateHashData": {"hashAlgorithm": "SHA256", "issuerNameHash": "a", "issuerKeyHash": "b", "serialNumber": "1"},
                "source": "OCSP", "urls": ["http://ocsp.invalid"]}]}),
            _ => json!({}),
        }
    }

    #[test]
    fn every_default_answer_is_schema_valid() {
        let schemas = SchemaSet::compile(Leniency::default()).unwrap();
        let responder = LocalResponder::new(&ResponderConfig::default());
        let mut checked = 0;
        for version in OcppVersion::ALL {
            for action in catalogue::actions(version) {
                let initiator = catalogue::initiator(version, action).unwrap();
                if !initiator.charge_point_may_send() || catalogue::is_send_only(version, action) {
                    continue;
                }
                let response = responder
                    .answer(version, action, &sample_request(version, action))
                    .unwrap_or_else(|r| panic!("{version} {action}: {r:?}"));
                let verdict = schemas
                    .validate(version, action, PayloadKind::Response, &response)
                    .expect("response schema exists");
                assert!(
                    verdict.is_ok(),
                    "{version} {action}: {response} -> {verdict:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 14 + 25 + 25 + 11);
    }

    #[test]
    fn csms_actions_are_not_supported() {
        let responder = LocalResponder::new(&ResponderConfig::default());
        let refusal = responder
            .answer(OcppVersion::V16, "Reset", &json!({}))
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::NotSupported);
    }

    #[test]
    fn allow_list_policy() {
        let config = ResponderConfig {
            authorize: AuthorizePolicy::AllowList,
            allowed_id_tags: vec!["GOOD".into()],
            ..ResponderConfig::default()
        };
        let responder = LocalResponder::new(&config);
        let status = |tag: &str| {
            responder
                .answer(OcppVersion::V16, "Authorize", &json!({"idTag": tag}))
                .unwrap()["idTagInfo"]["status"]
                .clone()
        };
        assert_eq!(status("GOOD"), "Accepted");
        assert_eq!(status("BAD"), "Invalid");
        let answer = responder
            .answer(
                OcppVersion::V201,
                "Authorize",
                &json!({"idToken": {"idToken": "BAD", "type": "Central"}}),
            )
            .unwrap();
        assert_eq!(answer["idTokenInfo"]["status"], "Invalid");
    }

    #[test]
    fn transaction_ids_are_unique() {
        let responder = LocalResponder::new(&ResponderConfig::default());
        let ids: HashSet<i64> = (0..100)
            .map(|_| {
                responder
                    .answer(OcppVersion::V16, "StartTransaction", &json!({"idTag": "T"}))
                    .unwrap()["transactionId"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 100);
    }
}
