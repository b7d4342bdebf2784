//! What happens to one CALL from a charge point: validate, record, answer.

use std::sync::Arc;

use ocpp::{catalogue, frame, ErrorCode, MessageType, OcppVersion, PayloadKind, Violation};
use serde_json::{json, value::RawValue, Value};
use tracing::{debug, warn};

use crate::{
    config::ReplyFallback,
    event::{Event, EventData, MessageData, MESSAGE_RECEIVED},
    gateway::Shared,
    kafka::replies::Reply,
    metrics::{action_label, ActionLabels, VersionLabels},
    session::ConnectionInfo,
};

/// Most violations listed in a CALLERROR's details.
const MAX_VIOLATIONS_IN_DETAILS: usize = 10;

/// A CALL read from the socket, waiting to be processed.
pub struct InboundCall {
    /// The charge point's message id.
    pub message_id: String,
    /// The action.
    pub action: String,
    /// The payload exactly as received.
    pub payload: Box<RawValue>,
    /// When the frame was read.
    pub received: std::time::Instant,
}

/// The reply frame to send and whether the CALL counted as a bad message.
pub struct CallReply {
    /// The CALLRESULT or CALLERROR text frame.
    pub frame: String,
    /// Whether the CALL was malformed or invalid (counts toward the bad-message limit).
    pub bad_message: bool,
    /// The code, when the frame is a CALLERROR.
    pub error: Option<ErrorCode>,
}

impl CallReply {
    /// An answer to a well-formed CALL the gateway cannot serve (not the sender's fault
    /// in a way that should count toward closing the connection).
    fn refusal(
        message_id: &str,
        version: OcppVersion,
        code: ErrorCode,
        description: &str,
    ) -> CallReply {
        CallReply {
            frame: frame::encode_call_error(message_id, code, version, description, &json!({})),
            bad_message: false,
            error: Some(code),
        }
    }

    fn error(
        message_id: &str,
        version: OcppVersion,
        code: ErrorCode,
        description: &str,
        details: &Value,
    ) -> CallReply {
        CallReply {
            frame: frame::encode_call_error(message_id, code, version, description, details),
            bad_message: true,
            error: Some(code),
        }
    }
}

/// Processes one CALL and returns the frame that answers it.
pub async fn handle_call(
    shared: Arc<Shared>,
    info: Arc<ConnectionInfo>,
    call: InboundCall,
) -> CallReply {
    let version = info.version;
    let InboundCall {
        message_id,
        action,
        payload,
        received,
    } = call;
    match catalogue::initiator(version, &action) {
        None => {
            debug!(%message_id, %action, "unknown action");
            return CallReply::refusal(
                &message_id,
                version,
                ErrorCode::NotImplemented,
                &format!("action {action} is not defined in {version}"),
            );
        }
        Some(initiator) if !initiator.charge_point_may_send() => {
            return CallReply::refusal(
                &message_id,
                version,
                ErrorCode::NotSupported,
                &format!("{action} is sent by the CSMS, not by charge points"),
            );
        }
        Some(_) if catalogue::is_send_only(version, &action) => {
            return CallReply::refusal(
                &message_id,
                version,
                ErrorCode::NotSupported,
                &format!("{action} is sent as a SEND (message type 6), not as a CALL"),
            );
        }
        Some(_) => {}
    }

    let request: Value = match serde_json::from_str(payload.get()) {
        Ok(value) => value,
        Err(e) => {
            return CallReply::error(
                &message_id,
                version,
                ErrorCode::FormatViolation,
                &e.to_string(),
                &json!({}),
            )
        }
    };
    match shared
        .schemas
        .validate(version, &action, PayloadKind::Request, &request)
    {
        Some(Ok(validated)) => {
            if validated.timestamps_without_zone > 0 {
                shared
                    .metrics
                    .timestamps_without_zone
                    .get_or_create(&VersionLabels {
                        ocpp_version: version.subprotocol(),
                    })
                    .inc_by(u64::from(validated.timestamps_without_zone));
            }
        }
        Some(Err(violation)) => {
            crate::warn_limited!(%message_id, %action, error = %violation, "CALL payload failed validation");
            return CallReply::error(
                &message_id,
                version,
                violation.code,
                &violation.description,
                &violation_details(&violation),
            );
        }
        None => {
            return CallReply::refusal(
                &message_id,
                version,
                ErrorCode::NotImplemented,
                &format!("action {action} has no schema in {version}"),
            )
        }
    }

    // Registered before the event is published, so that a fast reply cannot be missed.
    let reply_wait = shared
        .is_backend_answered(&action)
        .then(|| shared.replies.expect(&info.charge_point_id, &message_id));

    let mut data = MessageData::new(
        version,
        MessageType::Call,
        &message_id,
        Some(action.clone()),
        &info.connection_id,
        &shared.config.node_id,
    );
    data.payload = Some(payload);
    let event = Event::new(
        &shared.config.node_id,
        MESSAGE_RECEIVED,
        &info.charge_point_id,
        EventData::Message(data),
    );
    let durable = shared.is_durable(&action);
    // The backend can only answer what reached it: a backend-answered CALL waits too.
    let must_land = durable || reply_wait.is_some();
    let delivered = match shared.publish(event).await {
        Ok(delivery) if must_land => delivery.await.inspect(|()| {
            shared
                .metrics
                .ingest_duration
                .get_or_create(&ActionLabels {
                    action: action_label(version, &action),
                })
                .observe(
                    received.elapsed().as_secs_f64(),
                    crate::telemetry::traces::trace_id(&tracing::Span::current())
                        .map(|trace_id| crate::metrics::TraceLabels { trace_id }),
                    None,
                );
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = &delivered {
        crate::warn_limited!(%message_id, %action, error = %e, durable, "event not stored");
        if durable {
            return CallReply::refusal(
                &message_id,
                version,
                ErrorCode::InternalError,
                "the event could not be stored; retry later",
            );
        }
    }

    if let Some(wait) = reply_wait {
        let reply = match delivered {
            Ok(()) => wait.wait(shared.config.backend.reply_timeout).await,
            Err(_) => None,
        };
        match backend_answer(&shared, version, &action, &message_id, reply) {
            Some(reply) => return reply,
            None => {
                if shared.config.backend.fallback_for(&action) == ReplyFallback::Error {
                    return CallReply::refusal(
                        &message_id,
                        version,
                        ErrorCode::InternalError,
                        "the backend did not answer in time; retry later",
                    );
                }
                debug!(%message_id, %action, "backend did not answer; local answer instead");
            }
        }
    }
    local_answer(&shared, version, &action, &message_id, &request)
}

fn local_answer(
    shared: &Shared,
    version: OcppVersion,
    action: &str,
    message_id: &str,
    request: &Value,
) -> CallReply {
    match shared.responder.answer(version, action, request) {
        Ok(response) => result_reply(message_id, version, &response),
        Err(refusal) => CallReply::refusal(message_id, version, refusal.code, &refusal.description),
    }
}

fn result_reply(message_id: &str, version: OcppVersion, response: &Value) -> CallReply {
    // Serialised straight into the frame: `[3, id, payload]` is what encode_call_result
    // writes, without a round trip through a RawValue (which parses its input again).
    match serde_json::to_string(&(MessageType::CallResult.number(), message_id, response)) {
        Ok(frame) => CallReply {
            frame,
            bad_message: false,
            error: None,
        },
        Err(e) => CallReply::refusal(
            message_id,
            version,
            ErrorCode::InternalError,
            &e.to_string(),
        ),
    }
}

/// The CALLRESULT or CALLERROR for a backend reply; `None` when there is no usable one
/// (none arrived in time, or its payload fails the response schema).
fn backend_answer(
    shared: &Shared,
    version: OcppVersion,
    action: &str,
    message_id: &str,
    reply: Option<Reply>,
) -> Option<CallReply> {
    match reply? {
        Reply::Payload(payload) => {
            match shared
                .schemas
                .validate(version, action, PayloadKind::Response, &payload)
            {
                Some(Ok(_)) => Some(result_reply(message_id, version, &payload)),
                Some(Err(violation)) => {
                    warn!(%message_id, %action, error = %violation, "backend reply fails the response schema; not sent");
                    None
                }
                None => None,
            }
        }
        Reply::Error {
            code,
            description,
            details,
        } => {
            let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::GenericError);
            Some(CallReply {
                frame: frame::encode_call_error(message_id, code, version, &description, &details),
                bad_message: false,
                error: Some(code),
            })
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
