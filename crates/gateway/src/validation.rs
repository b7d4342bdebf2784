//! Every check of an OCPP payload, in one place: a charge point's CALL, CALLRESULT and
//! SEND, a backend's reply, and a backend's command. Each check says what it found in
//! terms its caller turns straight into a frame, an event or an API answer.

use ocpp::{
    catalogue, validate::SchemaCompileError, ErrorCode, Leniency, OcppVersion, PayloadKind,
    SchemaSet, Violation, ViolationDetail,
};
use serde_json::{json, value::RawValue, Value};

/// Most violations listed in a CALLERROR's details.
const MAX_VIOLATIONS_IN_DETAILS: usize = 10;

/// The compiled OCPP schemas and the action catalogue, as checks.
pub struct Validator {
    schemas: SchemaSet,
}

/// Why a charge point's CALL is answered with a CALLERROR instead of being processed.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRejection {
    /// The CALLERROR's code.
    pub code: ErrorCode,
    /// The CALLERROR's description.
    pub description: String,
    /// The CALLERROR's details.
    pub details: Value,
    /// Whether the CALL itself was malformed or invalid (counts toward
    /// `session.bad_message_limit`), rather than well-formed but not served here.
    pub bad_message: bool,
}

impl CallRejection {
    /// A payload that is not JSON.
    fn not_json(error: serde_json::Error) -> CallRejection {
        CallRejection {
            code: ErrorCode::FormatViolation,
            description: error.to_string(),
            details: json!({}),
            bad_message: true,
        }
    }

    /// A payload that fails its schema.
    fn invalid(violation: &Violation) -> CallRejection {
        CallRejection {
            code: violation.code,
            description: violation.description.clone(),
            details: violation_details(violation),
            bad_message: true,
        }
    }
}

/// A charge point's CALL that passed every check.
#[derive(Debug)]
pub struct CheckedCall {
    /// The parsed request.
    pub request: Value,
    /// `date-time` values without a time zone that were accepted as UTC.
    pub timestamps_without_zone: u32,
}

/// Why a command cannot be sent to a charge point of some version.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandProblem {
    /// The action does not exist in the version, or only charge points send it.
    UnknownAction(&'static str),
    /// The payload does not validate against the action's request schema.
    InvalidPayload(Vec<ViolationDetail>),
}

impl Validator {
    /// Compiles the embedded schemas.
    pub fn new(leniency: Leniency) -> Result<Validator, SchemaCompileError> {
        Ok(Validator {
            schemas: SchemaSet::compile(leniency)?,
        })
    }

    /// A CALL from a charge point: an action it may send as a CALL in its version, a JSON
    /// payload, valid against the request schema.
    pub fn charge_point_call(
        &self,
        version: OcppVersion,
        action: &str,
        payload: &RawValue,
    ) -> Result<CheckedCall, CallRejection> {
        let refuse = |code, description: String| CallRejection {
            code,
            description,
            details: json!({}),
            bad_message: false,
        };
        match catalogue::initiator(version, action) {
            None => {
                return Err(refuse(
                    ErrorCode::NotImplemented,
                    format!("action {action} is not defined in {version}"),
                ))
            }
            Some(initiator) if !initiator.charge_point_may_send() => {
                return Err(refuse(
                    ErrorCode::NotSupported,
                    format!("{action} is sent by the CSMS, not by charge points"),
                ))
            }
            Some(_) if catalogue::is_send_only(version, action) => {
                return Err(refuse(
                    ErrorCode::NotSupported,
                    format!("{action} is sent as a SEND (message type 6), not as a CALL"),
                ))
            }
            Some(_) => {}
        }
        let request: Value =
            serde_json::from_str(payload.get()).map_err(CallRejection::not_json)?;
        match self
            .schemas
            .validate(version, action, PayloadKind::Request, &request)
        {
            Some(Ok(validated)) => Ok(CheckedCall {
                request,
                timestamps_without_zone: validated.timestamps_without_zone,
            }),
            Some(Err(violation)) => Err(CallRejection::invalid(&violation)),
            None => Err(refuse(
                ErrorCode::NotImplemented,
                format!("action {action} has no schema in {version}"),
            )),
        }
    }

    /// A charge point's CALLRESULT to the gateway's CALL of `action`: JSON, valid against
    /// the response schema. The rejection's code and details are those of the
    /// CALLRESULTERROR a 2.1 charge point is sent.
    pub fn charge_point_response(
        &self,
        version: OcppVersion,
        action: &str,
        payload: &RawValue,
    ) -> Result<(), CallRejection> {
        let response: Value =
            serde_json::from_str(payload.get()).map_err(CallRejection::not_json)?;
        match self
            .schemas
            .validate(version, action, PayloadKind::Response, &response)
        {
            Some(Err(violation)) => Err(CallRejection::invalid(&violation)),
            _ => Ok(()),
        }
    }

    /// A SEND (OCPP 2.1, message type 6) from a charge point: a known action, valid
    /// against its request schema. The error says why not, for the log.
    pub fn charge_point_send(
        &self,
        version: OcppVersion,
        action: &str,
        payload: &RawValue,
    ) -> Result<(), String> {
        let value: Value = serde_json::from_str(payload.get()).map_err(|e| e.to_string())?;
        match self
            .schemas
            .validate(version, action, PayloadKind::Request, &value)
        {
            Some(Ok(_)) => Ok(()),
            Some(Err(violation)) => Err(violation.to_string()),
            None => Err(format!("unknown action {action}")),
        }
    }

    /// A backend's CALLRESULT payload for a charge point's CALL of `action`.
    pub fn backend_reply(
        &self,
        version: OcppVersion,
        action: &str,
        payload: &Value,
    ) -> Result<(), String> {
        match self
            .schemas
            .validate(version, action, PayloadKind::Response, payload)
        {
            Some(Ok(_)) => Ok(()),
            Some(Err(violation)) => Err(violation.to_string()),
            None => Err(format!("no response schema for {action} in {version}")),
        }
    }

    /// A command for a charge point of `version`: an action a CSMS may send in that
    /// version, with a payload valid against its request schema.
    pub fn command(
        &self,
        version: OcppVersion,
        action: &str,
        payload: &Value,
    ) -> Result<(), CommandProblem> {
        match catalogue::initiator(version, action) {
            None => {
                return Err(CommandProblem::UnknownAction(
                    "no such action in this version",
                ))
            }
            Some(initiator) if !initiator.csms_may_send() => {
                return Err(CommandProblem::UnknownAction("only charge points send it"))
            }
            Some(_) => {}
        }
        match self
            .schemas
            .validate(version, action, PayloadKind::Request, payload)
        {
            Some(Err(violation)) => Err(CommandProblem::InvalidPayload(violation.details)),
            _ => Ok(()),
        }
    }
}

/// The `errorDetails` of a validation CALLERROR: where and what, for the first few.
pub fn violation_details(violation: &Violation) -> Value {
    let listed: Vec<_> = violation
        .details
        .iter()
        .take(MAX_VIOLATIONS_IN_DETAILS)
        .collect();
    json!({ "violations": listed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(Leniency::default()).expect("schemas compile")
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("JSON")
    }

    #[test]
    fn a_call_is_refused_or_rejected_by_what_is_wrong_with_it() {
        let v = validator();
        let unknown = v
            .charge_point_call(OcppVersion::V16, "Nope", &raw("{}"))
            .unwrap_err();
        assert_eq!(
            (unknown.code, unknown.bad_message),
            (ErrorCode::NotImplemented, false)
        );
        let wrong_direction = v
            .charge_point_call(OcppVersion::V16, "Reset", &raw("{}"))
            .unwrap_err();
        assert_eq!(wrong_direction.code, ErrorCode::NotSupported);
        let invalid = v
            .charge_point_call(OcppVersion::V16, "Authorize", &raw("{}"))
            .unwrap_err();
        assert!(invalid.bad_message);
        assert!(invalid.details["violations"].as_array().is_some());
        let checked = v
            .charge_point_call(OcppVersion::V16, "Authorize", &raw(r#"{"idTag":"T"}"#))
            .expect("valid");
        assert_eq!(checked.request["idTag"], "T");
    }

    #[test]
    fn commands_are_checked_for_direction_and_payload() {
        let v = validator();
        assert_eq!(
            v.command(OcppVersion::V16, "Authorize", &json!({"idTag": "T"})),
            Err(CommandProblem::UnknownAction("only charge points send it"))
        );
        assert!(matches!(
            v.command(OcppVersion::V16, "Reset", &json!({})),
            Err(CommandProblem::InvalidPayload(violations)) if !violations.is_empty()
        ));
        assert_eq!(
            v.command(OcppVersion::V16, "Reset", &json!({"type": "Soft"})),
            Ok(())
        );
    }
}
