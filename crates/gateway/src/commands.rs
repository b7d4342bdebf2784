//! Sending a command (a CSMS-initiated CALL) to a charge point: the one path shared by the
//! admin API and, later, the Kafka command consumer.
//!
//! The steps are: find the session (a cluster adds "look up the owner and forward" here),
//! check the action exists for the charge point's version and may be sent by a CSMS,
//! validate the payload, then call through the session API.

use std::time::Duration;

use ocpp::{catalogue, OcppVersion, PayloadKind, ViolationDetail};
use serde_json::{value::RawValue, Value};
use tracing::Instrument;

use crate::{
    gateway::Shared,
    session::{CallOutcome, QueueMode},
};

/// A command refused before anything was sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandRejected {
    /// The action does not exist in the charge point's version, or only charge points send it.
    #[error("action {action} cannot be sent to a {version} charge point: {reason}")]
    UnknownAction {
        /// The requested action.
        action: String,
        /// The charge point's version.
        version: OcppVersion,
        /// Why.
        reason: &'static str,
    },
    /// The payload does not validate against the action's request schema.
    #[error("payload is not a valid {action} request for {version}")]
    InvalidPayload {
        /// The requested action.
        action: String,
        /// The charge point's version.
        version: OcppVersion,
        /// Every violation.
        violations: Vec<ViolationDetail>,
    },
}

/// Validates and sends `action` with `payload` to `charge_point_id`.
///
/// `Ok(CallOutcome::NotConnected)` when the charge point is not connected here.
pub async fn send_command(
    shared: &Shared,
    charge_point_id: &str,
    action: &str,
    payload: &Value,
    timeout: Option<Duration>,
    mode: QueueMode,
) -> Result<CallOutcome, CommandRejected> {
    let Some(session) = shared.registry.get(charge_point_id) else {
        return Ok(CallOutcome::NotConnected);
    };
    let version = session.info.version;
    match catalogue::initiator(version, action) {
        None => {
            return Err(CommandRejected::UnknownAction {
                action: action.to_owned(),
                version,
                reason: "no such action in this version",
            })
        }
        Some(initiator) if !initiator.csms_may_send() => {
            return Err(CommandRejected::UnknownAction {
                action: action.to_owned(),
                version,
                reason: "only charge points send it",
            })
        }
        Some(_) => {}
    }
    if let Some(Err(violation)) =
        shared
            .schemas
            .validate(version, action, PayloadKind::Request, payload)
    {
        return Err(CommandRejected::InvalidPayload {
            action: action.to_owned(),
            version,
            violations: violation.details,
        });
    }
    let raw = RawValue::from_string(payload.to_string()).map_err(|_| {
        CommandRejected::InvalidPayload {
            action: action.to_owned(),
            version,
            violations: Vec::new(),
        }
    })?;
    let timeout = timeout.unwrap_or(shared.config.session.call_timeout);
    let span = tracing::info_span!(
        "ocpp.command",
        otel.name = %format!("ocpp {action}"),
        otel.kind = "client",
        rpc.system = "ocpp",
        rpc.method = %action,
        ocpp.version = %version,
        charge_point_id = %charge_point_id,
        ocpp.outcome = tracing::field::Empty,
    );
    let outcome = session
        .call(action, raw, timeout, mode)
        .instrument(span.clone())
        .await;
    span.record("ocpp.outcome", outcome.status());
    Ok(outcome)
}
