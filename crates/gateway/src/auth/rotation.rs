//! Password rotation: a new random password sent to the charge point, stored so that no
//! outcome of the exchange can lock the charge point out.
//!
//! The order is what makes it safe:
//! 1. *Prepare*: the new password's hash becomes the record's password, and the old one
//!    its previous password, valid for `auth.rotation_grace_period`. From here on either
//!    password lets the charge point in, so a crash at any later point leaves it able to
//!    connect.
//! 2. *Send*: 1.6 `ChangeConfiguration` of `AuthorizationKey` (hex-encoded), 2.x
//!    `SetVariables` of `SecurityCtrlr.BasicAuthPassword`.
//! 3. *Settle*:
//!    - accepted (1.6 `Accepted` or `RebootRequired`, 2.x `Accepted` or
//!      `RebootRequired`): kept; the old password stops working when the charge point
//!      connects with the new one, or at the end of the grace period;
//!    - refused (another status, a CALLERROR, or never sent): the record is put back as
//!      it was;
//!    - unanswered (timeout, or the charge point left before answering): the charge point
//!      may or may not have taken the new password, so the old one is put back in force
//!      and the new one stays valid for the grace period as well.
//!
//! The password is never in a log, an event, a metric or a response; only the charge
//! point and the stored hash ever hold it.

use chrono::{DateTime, Utc};
use ocpp::OcppVersion;
use serde_json::{json, Value};

use super::{
    password,
    store::{Change, CredentialRecord, StoreError},
    Authenticator,
};
use crate::{
    backend::{CommandRejected, CommandRequest, Commander},
    labels::SecurityEventKind,
    registry::Registry,
    session::{CallOutcome, QueueMode},
};

/// How a rotation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// The charge point accepted the new password.
    Accepted {
        /// The status it answered (`Accepted` or `RebootRequired`).
        status: String,
        /// Until when the old password is still accepted, unless the charge point
        /// connects with the new one first.
        previous_valid_until: DateTime<Utc>,
    },
    /// The charge point refused it, or it was never sent; the old password stays.
    Refused {
        /// Why: the charge point's status or error, or why it was not sent.
        reason: String,
    },
    /// No answer; the old password stays in force, and the new one is accepted too
    /// until the grace period ends.
    Unanswered {
        /// Until when the new password is accepted.
        new_valid_until: DateTime<Utc>,
    },
}

/// Why a rotation could not start.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Authentication is off (no credentials file).
    #[error("authentication is off: set auth.credentials_file to keep credentials")]
    AuthOff,
    /// No record for the id.
    #[error("charge point {0} has no credential record")]
    NoRecord(String),
    /// The record's profile does not use a password.
    #[error("charge point {id} uses security profile {profile}, which has no password")]
    NoPassword {
        /// The charge point.
        id: String,
        /// Its profile.
        profile: u8,
    },
    /// The charge point is not connected here: the password can only be sent to it.
    #[error("charge point {0} is not connected to this gateway")]
    NotConnected(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing the new password failed (internal).
    #[error("hashing the new password failed: {0}")]
    Hashing(String),
}

/// Rotates the password of charge point `id`.
pub async fn rotate(
    auth: &Authenticator,
    commander: &Commander,
    sessions: &Registry,
    id: &str,
) -> Result<Rotated, RotationError> {
    let store = auth.store().ok_or(RotationError::AuthOff)?.clone();
    let record = store
        .get(id)
        .ok_or_else(|| RotationError::NoRecord(id.to_owned()))?;
    if !record.profile.uses_password() {
        return Err(RotationError::NoPassword {
            id: id.to_owned(),
            profile: record.profile as u8,
        });
    }
    let version = sessions
        .get(id)
        .map(|session| session.info.version)
        .ok_or_else(|| RotationError::NotConnected(id.to_owned()))?;
    let new_password = password::generate(version);
    let new_hash = auth
        .hash_password(new_password.as_bytes())
        .await
        .map_err(|e| RotationError::Hashing(e.to_string()))?;
    let grace_ends = Utc::now()
        + chrono::Duration::from_std(auth.config().rotation_grace_period)
            .unwrap_or(chrono::Duration::days(7));

    let sent_hash = new_hash.clone();

    // 1. Prepare: both passwords work from here on.
    let before = (*record).clone();
    let prepared = CredentialRecord {
        password: Some(new_hash.clone()),
        previous_password: before.password.clone().map(|old| (old, grace_ends)),
        ..before.clone()
    };
    let expected = before.clone();
    store
        .update(
            id.to_owned(),
            Box::new(move |now| match now {
                Some(now) if *now == expected => Change::Set(prepared),
                // Changed meanwhile (an admin edit, a reload): prepare on what is there.
                Some(now) => Change::Set(CredentialRecord {
                    password: Some(new_hash),
                    previous_password: now.password.clone().map(|old| (old, grace_ends)),
                    ..now.clone()
                }),
                None => Change::Keep,
            }),
        )
        .await?;
    auth.forget(id);

    // 2. Send.
    let outcome = match rotation_command(version, &new_password) {
        Ok(request) => commander.send(id, &request, QueueMode::FailFast).await,
        Err(rejected) => Err(rejected),
    };
    drop(new_password);

    // 3. Settle.
    let rotated = settle(outcome, grace_ends);
    let restore: Option<CredentialRecord> = match &rotated {
        Rotated::Accepted { .. } => None,
        Rotated::Refused { .. } => Some(before.clone()),
        Rotated::Unanswered { .. } => Some(CredentialRecord {
            password: before.password.clone(),
            previous_password: Some((sent_hash.clone(), grace_ends)),
            ..before.clone()
        }),
    };
    if let Some(restored) = restore {
        store
            .update(
                id.to_owned(),
                Box::new(move |now| match now {
                    // Only if nobody changed the record meanwhile.
                    Some(now) if now.password.as_ref() == Some(&sent_hash) => Change::Set(restored),
                    _ => Change::Keep,
                }),
            )
            .await?;
        auth.forget(id);
    }
    let result = match &rotated {
        Rotated::Accepted { .. } => "accepted",
        Rotated::Refused { .. } => "refused",
        Rotated::Unanswered { .. } => "unanswered",
    };
    auth.events().report(
        SecurityEventKind::CredentialsRotated,
        id,
        None,
        result,
        Some(record.profile),
    );
    tracing::info!(charge_point_id = %id, result, "password rotation");
    Ok(rotated)
}

/// The command that sets the password of a charge point of `version`.
fn rotation_command(
    version: OcppVersion,
    new_password: &str,
) -> Result<CommandRequest, CommandRejected> {
    let (action, payload) = match version {
        OcppVersion::V16 => (
            "ChangeConfiguration",
            json!({
                "key": "AuthorizationKey",
                "value": password::hex_encode(new_password.as_bytes()),
            }),
        ),
        OcppVersion::V201 | OcppVersion::V21 => (
            "SetVariables",
            json!({
                "setVariableData": [{
                    "attributeType": "Actual",
                    "attributeValue": new_password,
                    "component": { "name": "SecurityCtrlr" },
                    "variable": { "name": "BasicAuthPassword" },
                }]
            }),
        ),
    };
    CommandRequest::new(action.to_owned(), payload, None)
}

fn settle(outcome: Result<CallOutcome, CommandRejected>, grace_ends: DateTime<Utc>) -> Rotated {
    let refused = |reason: String| Rotated::Refused { reason };
    match outcome {
        Err(rejected) => refused(format!("not sent: {rejected}")),
        Ok(CallOutcome::QueueFull) => {
            refused("not sent: the charge point's command queue is full".into())
        }
        Ok(CallOutcome::CallError(info)) => refused(format!("{}: {}", info.code, info.description)),
        Ok(CallOutcome::Timeout | CallOutcome::NotConnected | CallOutcome::Unroutable(_)) => {
            Rotated::Unanswered {
                new_valid_until: grace_ends,
            }
        }
        Ok(CallOutcome::Completed(response)) => {
            let response: Value = serde_json::from_str(response.get()).unwrap_or(Value::Null);
            // 1.6: {"status": ...}; 2.x: {"setVariableResult": [{"attributeStatus": ...}]}.
            let status = response["status"]
                .as_str()
                .or_else(|| response["setVariableResult"][0]["attributeStatus"].as_str())
                .unwrap_or("")
                .to_owned();
            if status == "Accepted" || status == "RebootRequired" {
                Rotated::Accepted {
                    status,
                    previous_valid_until: grace_ends,
                }
            } else {
                refused(format!("the charge point answered {status:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn completed(json: &str) -> Result<CallOutcome, CommandRejected> {
        Ok(CallOutcome::Completed(
            RawValue::from_string(json.to_owned()).unwrap(),
        ))
    }

    #[test]
    fn accepted_and_reboot_required_keep_the_new_password_in_either_version() {
        let grace = Utc::now();
        for json in [
            r#"{"status":"Accepted"}"#,
            r#"{"status":"RebootRequired"}"#,
            r#"{"setVariableResult":[{"attributeStatus":"Accepted","component":{"name":"SecurityCtrlr"},"variable":{"name":"BasicAuthPassword"}}]}"#,
        ] {
            assert!(
                matches!(settle(completed(json), grace), Rotated::Accepted { .. }),
                "{json}"
            );
        }
    }

    #[test]
    fn anything_else_answered_puts_the_old_password_back() {
        let grace = Utc::now();
        for json in [
            r#"{"status":"Rejected"}"#,
            r#"{"status":"NotSupported"}"#,
            r#"{}"#,
        ] {
            assert!(
                matches!(settle(completed(json), grace), Rotated::Refused { .. }),
                "{json}"
            );
        }
        assert!(matches!(
            settle(Ok(CallOutcome::QueueFull), grace),
            Rotated::Refused { .. }
        ));
    }

    #[test]
    fn no_answer_is_unanswered_not_refused() {
        let grace = Utc::now();
        for outcome in [CallOutcome::Timeout, CallOutcome::NotConnected] {
            assert_eq!(
                settle(Ok(outcome), grace),
                Rotated::Unanswered {
                    new_valid_until: grace
                }
            );
        }
    }

    #[test]
    fn the_commands_carry_the_password_as_each_version_expects() {
        let request = rotation_command(OcppVersion::V16, "AZaz09AZaz09AZaz09AZ").unwrap();
        assert_eq!(request.action, "ChangeConfiguration");
        assert_eq!(request.payload["key"], "AuthorizationKey");
        assert_eq!(
            request.payload["value"],
            password::hex_encode(b"AZaz09AZaz09AZaz09AZ")
        );
        let request = rotation_command(OcppVersion::V201, "p").unwrap();
        assert_eq!(request.action, "SetVariables");
        assert_eq!(request.payload["setVariableData"][0]["attributeValue"], "p");
        assert_eq!(
            request.payload["setVariableData"][0]["variable"]["name"],
            "BasicAuthPassword"
        );
    }
}
