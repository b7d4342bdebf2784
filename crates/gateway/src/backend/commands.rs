//! Commands: CSMS-initiated CALLs a backend sends to one charge point. The admin API and
//! the Kafka command consumer are two adapters over this one path: [`CommandRequest::new`]
//! checks what both accept, [`Commander::send`] finds the session, validates and calls,
//! and [`CommandReport`] says how it ended in the terms both answer with.
//!
//! In a cluster, [`Commander::send`] asks [`Owners`] where the charge point is: here, it
//! delivers; on another node, it forwards there (the owner refuses a stale epoch, and
//! the commander then looks once more); nowhere, `notConnected`.

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

use ocpp::{OcppVersion, ViolationDetail};
use serde_json::{json, value::RawValue, Value};
use tracing::Instrument;

use crate::{
    labels::CommandStatus,
    registry::Registry,
    session::{CallErrorInfo, CallOutcome, QueueMode},
    validation::{CommandProblem, Validator},
};

/// Longest `timeoutSeconds` a command may ask for, from either source.
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;

/// A command's action, payload and timeout, checked as far as possible without knowing
/// the charge point.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// The OCPP action.
    pub action: String,
    /// The request payload (a JSON object).
    pub payload: Value,
    /// How long to wait for the answer; `None` means `session.call_timeout`.
    pub timeout: Option<Duration>,
}

impl CommandRequest {
    /// Checks the fields every source of commands has: the payload is an object and
    /// `timeoutSeconds`, when given, is between 1 and [`MAX_TIMEOUT_SECONDS`].
    pub fn new(
        action: String,
        payload: Value,
        timeout_seconds: Option<u64>,
    ) -> Result<CommandRequest, CommandRejected> {
        if !payload.is_object() {
            return Err(CommandRejected::Malformed(
                "payload must be an object".to_owned(),
            ));
        }
        let timeout = match timeout_seconds {
            None => None,
            Some(seconds) if (1..=MAX_TIMEOUT_SECONDS).contains(&seconds) => {
                Some(Duration::from_secs(seconds))
            }
            Some(_) => {
                return Err(CommandRejected::Malformed(format!(
                    "timeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
                )))
            }
        };
        Ok(CommandRequest {
            action,
            payload,
            timeout,
        })
    }
}

/// A command refused before anything was sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandRejected {
    /// The request itself is not usable (its body, its payload's type, its timeout).
    #[error("{0}")]
    Malformed(String),
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

impl CommandRejected {
    /// The schema violations, as the `violations` of an answer; `None` for a malformed
    /// request, which has none to list.
    pub fn violations(&self) -> Option<Value> {
        match self {
            CommandRejected::Malformed(_) => None,
            CommandRejected::UnknownAction { .. } => Some(json!([])),
            CommandRejected::InvalidPayload { violations, .. } => Some(json!(violations)),
        }
    }
}

/// Where a charge point's session is, as the cluster registry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this node (or the registry is out of reach and it is connected here).
    Here,
    /// On another live node.
    Elsewhere(RemoteOwner),
    /// Not connected anywhere; why, when there is more to say than that.
    Nowhere(Option<String>),
}

/// The node that holds a charge point, per the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOwner {
    /// Its node id.
    pub node: String,
    /// Its internal API.
    pub url: String,
    /// The epoch of its claim.
    pub epoch: u64,
    /// The charge point's OCPP version.
    pub version: OcppVersion,
}

/// How a forwarded command ended.
#[derive(Debug)]
pub enum Forwarded {
    /// The owner sent it (or refused it): its outcome.
    Outcome(CallOutcome),
    /// The owner no longer holds the charge point under that epoch.
    StaleEpoch,
    /// The owner could not be reached or did not answer in time: why.
    Failed(String),
}

/// The cluster, as the commander sees it.
pub trait Owners: Send + Sync {
    /// Where `charge_point_id` is connected.
    fn locate<'a>(&'a self, charge_point_id: &'a str) -> BoxFuture<'a, Location>;

    /// Sends `request` to `owner`, which delivers it if it still holds the charge point
    /// under `owner.epoch`.
    fn forward<'a>(
        &'a self,
        charge_point_id: &'a str,
        owner: &'a RemoteOwner,
        request: &'a CommandRequest,
        mode: QueueMode,
    ) -> BoxFuture<'a, Forwarded>;
}

/// What the owner did with a forwarded command.
#[derive(Debug)]
pub enum Delivery {
    /// Sent (or refused before sending).
    Done(Result<CallOutcome, CommandRejected>),
    /// Its session here has another epoch than the forwarder read (or there is none).
    StaleEpoch,
}

/// Sends commands to charge points: those connected here, and through [`Owners`] those
/// connected to other nodes.
pub struct Commander {
    sessions: Arc<Registry>,
    validator: Arc<Validator>,
    default_timeout: Duration,
    owners: Option<Arc<dyn Owners>>,
}

impl Commander {
    /// Commands to the sessions in `sessions`, waiting `default_timeout` for an answer
    /// when the request names no timeout.
    pub fn new(
        sessions: Arc<Registry>,
        validator: Arc<Validator>,
        default_timeout: Duration,
    ) -> Commander {
        Commander {
            sessions,
            validator,
            default_timeout,
            owners: None,
        }
    }

    /// The same commander, reaching charge points on other nodes through `owners`.
    pub fn with_owners(mut self, owners: Arc<dyn Owners>) -> Commander {
        self.owners = Some(owners);
        self
    }

    /// The timeout a request gets.
    pub fn timeout_of(&self, request: &CommandRequest) -> Duration {
        request.timeout.unwrap_or(self.default_timeout)
    }

    /// Validates `request` for the charge point's version and sends it, here or (in a
    /// cluster) through the node that holds the charge point.
    ///
    /// `Ok(CallOutcome::NotConnected)` when the charge point is not connected anywhere.
    pub async fn send(
        &self,
        charge_point_id: &str,
        request: &CommandRequest,
        mode: QueueMode,
    ) -> Result<CallOutcome, CommandRejected> {
        let Some(owners) = &self.owners else {
            return self.send_here(charge_point_id, request, mode).await;
        };
        let request = CommandRequest {
            timeout: Some(self.timeout_of(request)),
            ..request.clone()
        };
        // A stale epoch means the charge point moved between the lookup and the
        // forward: one more lookup finds where it went.
        for _ in 0..2 {
            match owners.locate(charge_point_id).await {
                Location::Here => return self.send_here(charge_point_id, &request, mode).await,
                Location::Nowhere(None) => return Ok(CallOutcome::NotConnected),
                Location::Nowhere(Some(reason)) => return Ok(CallOutcome::Unroutable(reason)),
                Location::Elsewhere(owner) => {
                    self.check(owner.version, &request)?;
                    match owners
                        .forward(charge_point_id, &owner, &request, mode)
                        .await
                    {
                        Forwarded::Outcome(outcome) => return Ok(outcome),
                        Forwarded::Failed(reason) => {
                            return Ok(CallOutcome::Unroutable(format!(
                                "charge point {charge_point_id} is held by node {}, which did not answer: {reason}",
                                owner.node
                            )))
                        }
                        Forwarded::StaleEpoch => continue,
                    }
                }
            }
        }
        Ok(CallOutcome::Unroutable(format!(
            "charge point {charge_point_id} moved between nodes while the command was routed"
        )))
    }

    /// Delivers a command another node forwarded, if the session here still has
    /// `epoch`.
    pub async fn deliver_forwarded(
        &self,
        charge_point_id: &str,
        epoch: u64,
        request: &CommandRequest,
        mode: QueueMode,
    ) -> Delivery {
        match self.sessions.get(charge_point_id) {
            Some(session) if session.info.epoch() == epoch => {
                Delivery::Done(self.send_here(charge_point_id, request, mode).await)
            }
            _ => Delivery::StaleEpoch,
        }
    }

    /// Checks `request` against the schemas of `version`.
    fn check(&self, version: OcppVersion, request: &CommandRequest) -> Result<(), CommandRejected> {
        let action = request.action.as_str();
        match self.validator.command(version, action, &request.payload) {
            Ok(()) => Ok(()),
            Err(CommandProblem::UnknownAction(reason)) => Err(CommandRejected::UnknownAction {
                action: action.to_owned(),
                version,
                reason,
            }),
            Err(CommandProblem::InvalidPayload(violations)) => {
                Err(CommandRejected::InvalidPayload {
                    action: action.to_owned(),
                    version,
                    violations,
                })
            }
        }
    }

    /// Validates and sends `request` to the session here.
    async fn send_here(
        &self,
        charge_point_id: &str,
        request: &CommandRequest,
        mode: QueueMode,
    ) -> Result<CallOutcome, CommandRejected> {
        let Some(session) = self.sessions.get(charge_point_id) else {
            return Ok(CallOutcome::NotConnected);
        };
        let version = session.info.version;
        let action = request.action.as_str();
        self.check(version, request)?;
        let raw = RawValue::from_string(request.payload.to_string()).map_err(|_| {
            CommandRejected::InvalidPayload {
                action: action.to_owned(),
                version,
                violations: Vec::new(),
            }
        })?;
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
            .call(action, raw, self.timeout_of(request), mode)
            .instrument(span.clone())
            .await;
        span.record("ocpp.outcome", outcome.status());
        Ok(outcome)
    }
}

/// What went wrong with a command, for its answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandError {
    /// The charge point's CALLERROR, or the gateway's objection to its CALLRESULT.
    Call(CallErrorInfo),
    /// Refused before sending: why, and the schema violations when there are any.
    Rejected {
        /// What was wrong.
        description: String,
        /// The violations, when the payload failed its schema.
        violations: Option<Value>,
    },
    /// Anything else, in words.
    Described(String),
}

impl CommandError {
    /// The error as an object: `{"description": ...}` (with `violations` for a rejected
    /// payload), or the call error's fields.
    pub fn to_object(&self) -> Value {
        match self {
            CommandError::Call(info) => serde_json::to_value(info).unwrap_or(Value::Null),
            CommandError::Rejected {
                description,
                violations: Some(violations),
            } => json!({ "description": description, "violations": violations }),
            CommandError::Rejected { description, .. } | CommandError::Described(description) => {
                json!({ "description": description })
            }
        }
    }
}

/// How a command ended: its status, the charge point's response, or what went wrong.
#[derive(Debug, Clone)]
pub struct CommandReport {
    /// The outcome.
    pub status: CommandStatus,
    /// The CALLRESULT payload (`completed`).
    pub response: Option<Box<RawValue>>,
    /// What went wrong (every other status).
    pub error: Option<CommandError>,
}

impl CommandReport {
    /// The report of a command to `charge_point_id` that ended with `outcome`.
    pub fn of(
        charge_point_id: &str,
        outcome: Result<CallOutcome, CommandRejected>,
    ) -> CommandReport {
        let failed = |status, error| CommandReport {
            status,
            response: None,
            error: Some(error),
        };
        match outcome {
            Err(rejected) => CommandReport::rejected(&rejected),
            Ok(CallOutcome::Completed(response)) => CommandReport {
                status: CommandStatus::Completed,
                response: Some(response),
                error: None,
            },
            Ok(CallOutcome::CallError(info)) => {
                failed(CommandStatus::CallError, CommandError::Call(info))
            }
            Ok(CallOutcome::Timeout) => failed(
                CommandStatus::Timeout,
                CommandError::Described("the charge point did not answer in time".to_owned()),
            ),
            Ok(CallOutcome::NotConnected) => failed(
                CommandStatus::NotConnected,
                CommandError::Described(format!(
                    "charge point {charge_point_id} is not connected to this gateway"
                )),
            ),
            Ok(CallOutcome::Unroutable(reason)) => {
                failed(CommandStatus::NotConnected, CommandError::Described(reason))
            }
            Ok(CallOutcome::QueueFull) => failed(
                CommandStatus::QueueFull,
                CommandError::Described(
                    "too many commands waiting for this charge point; retry later".to_owned(),
                ),
            ),
        }
    }

    /// The report of a command refused before anything was sent.
    pub fn rejected(rejected: &CommandRejected) -> CommandReport {
        CommandReport {
            status: CommandStatus::Invalid,
            response: None,
            error: Some(CommandError::Rejected {
                description: rejected.to_string(),
                violations: rejected.violations(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sources_accept_the_same_timeouts() {
        let request = |timeout| CommandRequest::new("Reset".into(), json!({}), timeout);
        assert_eq!(request(None).map(|r| r.timeout), Ok(None));
        assert_eq!(
            request(Some(MAX_TIMEOUT_SECONDS)).map(|r| r.timeout),
            Ok(Some(Duration::from_secs(MAX_TIMEOUT_SECONDS)))
        );
        for bad in [0, MAX_TIMEOUT_SECONDS + 1, u64::MAX] {
            assert!(matches!(
                request(Some(bad)),
                Err(CommandRejected::Malformed(_))
            ));
        }
        assert!(matches!(
            CommandRequest::new("Reset".into(), json!([]), None),
            Err(CommandRejected::Malformed(_))
        ));
    }

    #[test]
    fn reports_name_the_outcome_and_what_went_wrong() {
        let timeout = CommandReport::of("CP", Ok(CallOutcome::Timeout));
        assert_eq!(timeout.status, CommandStatus::Timeout);
        assert_eq!(
            timeout.error.map(|e| e.to_object()),
            Some(json!({"description": "the charge point did not answer in time"}))
        );
        let malformed = CommandReport::of(
            "CP",
            Err(CommandRejected::Malformed(
                "payload must be an object".into(),
            )),
        );
        assert_eq!(malformed.status, CommandStatus::Invalid);
        assert_eq!(
            malformed.error.map(|e| e.to_object()),
            Some(json!({"description": "payload must be an object"}))
        );
        let unknown = CommandReport::of(
            "CP",
            Err(CommandRejected::UnknownAction {
                action: "X".into(),
                version: OcppVersion::V16,
                reason: "no such action in this version",
            }),
        );
        assert_eq!(
            unknown
                .error
                .map(|e| e.to_object())
                .and_then(|o| o.get("violations").cloned()),
            Some(json!([]))
        );
    }
}
