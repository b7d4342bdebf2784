//! OCPP-J RPC frames: decoding text frames into typed messages and encoding replies.
//!
//! A frame is a JSON array whose first element is the message type:
//! `[2, id, action, payload]` CALL, `[3, id, payload]` CALLRESULT,
//! `[4, id, code, description, details]` CALLERROR, and in OCPP 2.1 also
//! `[5, id, code, description, details]` CALLRESULTERROR and `[6, id, action, payload]` SEND.
//! Payloads are kept as raw JSON text so that events carry them exactly as received.

use serde_json::value::RawValue;

use crate::{ErrorCode, OcppVersion};

/// The longest message id OCPP-J allows (36 characters, enough for a UUID).
pub const MAX_MESSAGE_ID_LEN: usize = 36;

/// The longest error description the gateway writes (2.x limits it to 255 characters).
pub const MAX_ERROR_DESCRIPTION_LEN: usize = 255;

/// The message id to use in a CALLERROR when the offending frame's id could not be read.
pub const UNREADABLE_MESSAGE_ID: &str = "-1";

/// The kind of an OCPP-J frame, as used in events, logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 2: a request.
    Call,
    /// 3: a successful response.
    CallResult,
    /// 4: an error response.
    CallError,
    /// 5 (2.1): an error about a received CALLRESULT.
    CallResultError,
    /// 6 (2.1): an unconfirmed message.
    Send,
}

impl MessageType {
    /// The message type number on the wire.
    pub fn number(self) -> u8 {
        match self {
            MessageType::Call => 2,
            MessageType::CallResult => 3,
            MessageType::CallError => 4,
            MessageType::CallResultError => 5,
            MessageType::Send => 6,
        }
    }

    /// A stable lower-camel name (`call`, `callResult`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Call => "call",
            MessageType::CallResult => "callResult",
            MessageType::CallError => "callError",
            MessageType::CallResultError => "callResultError",
            MessageType::Send => "send",
        }
    }

    fn from_number(number: u64, version: OcppVersion) -> Option<MessageType> {
        match number {
            2 => Some(MessageType::Call),
            3 => Some(MessageType::CallResult),
            4 => Some(MessageType::CallError),
            5 if version == OcppVersion::V21 => Some(MessageType::CallResultError),
            6 if version == OcppVersion::V21 => Some(MessageType::Send),
            _ => None,
        }
    }
}

/// A decoded OCPP-J frame. Payloads and error details are raw JSON as received.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A request expecting a CALLRESULT or CALLERROR.
    Call {
        /// The sender's message id.
        message_id: String,
        /// The OCPP action name, e.g. `BootNotification`.
        action: String,
        /// The request payload, exactly as received.
        payload: Box<RawValue>,
    },
    /// A successful response to a CALL.
    CallResult {
        /// The id of the CALL this answers.
        message_id: String,
        /// The response payload, exactly as received.
        payload: Box<RawValue>,
    },
    /// An error response to a CALL.
    CallError(RpcError),
    /// 2.1: an error about a CALLRESULT the peer received.
    CallResultError(RpcError),
    /// 2.1: a message that gets no response.
    Send {
        /// The sender's message id.
        message_id: String,
        /// The OCPP action name.
        action: String,
        /// The payload, exactly as received.
        payload: Box<RawValue>,
    },
}

/// The body of a CALLERROR or CALLRESULTERROR frame.
#[derive(Debug, Clone)]
pub struct RpcError {
    /// The id of the message this error is about.
    pub message_id: String,
    /// The error code as the peer wrote it.
    pub error_code: String,
    /// The peer's free-text description.
    pub description: String,
    /// The peer's error details object, exactly as received.
    pub details: Box<RawValue>,
}

impl Frame {
    /// The frame's message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Frame::Call { .. } => MessageType::Call,
            Frame::CallResult { .. } => MessageType::CallResult,
            Frame::CallError(_) => MessageType::CallError,
            Frame::CallResultError(_) => MessageType::CallResultError,
            Frame::Send { .. } => MessageType::Send,
        }
    }

    /// The frame's message id.
    pub fn message_id(&self) -> &str {
        match self {
            Frame::Call { message_id, .. }
            | Frame::CallResult { message_id, .. }
            | Frame::Send { message_id, .. } => message_id,
            Frame::CallError(e) | Frame::CallResultError(e) => &e.message_id,
        }
    }

    /// Decodes one text frame received on a connection speaking `version`.
    pub fn decode(text: &str, version: OcppVersion) -> Result<Frame, FrameError> {
        // A well-formed frame is read in one pass; anything else is read again element by
        // element, to say exactly what is wrong with it.
        if let Ok(WellFormed(frame)) = serde_json::from_str::<WellFormed>(text) {
            if MessageType::from_number(u64::from(frame.message_type().number()), version).is_some()
            {
                return Ok(frame);
            }
        }
        Self::decode_checking(text, version)
    }

    /// Decodes a frame element by element, naming the first thing wrong with it.
    fn decode_checking(text: &str, version: OcppVersion) -> Result<Frame, FrameError> {
        let elements: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(|e| {
            // Only on the error path: tell "not JSON at all" from "JSON, but not an array".
            let kind = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                FrameErrorKind::NotArray
            } else {
                FrameErrorKind::NotJson(e.to_string())
            };
            FrameError::new(None, None, kind)
        })?;

        let number = elements
            .first()
            .and_then(|raw| serde_json::from_str::<u64>(raw.get()).ok())
            .ok_or_else(|| FrameError::new(None, None, FrameErrorKind::BadMessageTypeId))?;
        let message_id = elements.get(1).and_then(|raw| read_message_id(raw));
        let Some(message_type) = MessageType::from_number(number, version) else {
            return Err(FrameError::new(
                None,
                message_id,
                FrameErrorKind::UnsupportedMessageType(number),
            ));
        };
        let Some(message_id) = message_id else {
            return Err(FrameError::new(
                Some(message_type),
                None,
                FrameErrorKind::BadMessageId,
            ));
        };

        let expected_len = match message_type {
            MessageType::Call | MessageType::Send => 4,
            MessageType::CallResult => 3,
            MessageType::CallError | MessageType::CallResultError => 5,
        };
        if elements.len() != expected_len {
            return Err(FrameError::new(
                Some(message_type),
                Some(message_id),
                FrameErrorKind::WrongLength {
                    expected: expected_len,
                    found: elements.len(),
                },
            ));
        }
        let mut elements = elements.into_iter().skip(2);
        let mut next = || elements.next().expect("length checked above");

        let shape_error = |field: &'static str, id: String| {
            FrameError::new(
                Some(message_type),
                Some(id),
                FrameErrorKind::BadField(field),
            )
        };
        Ok(match message_type {
            MessageType::Call | MessageType::Send => {
                let action = serde_json::from_str::<String>(next().get())
                    .ok()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| shape_error("action", message_id.clone()))?;
                let payload = next();
                if !is_object(&payload) {
                    return Err(shape_error("payload", message_id));
                }
                Frame::request(message_type, message_id, action, payload)
            }
            MessageType::CallResult => {
                let payload = next();
                if !is_object(&payload) {
                    return Err(shape_error("payload", message_id));
                }
                Frame::CallResult {
                    message_id,
                    payload,
                }
            }
            MessageType::CallError | MessageType::CallResultError => {
                let error_code = serde_json::from_str::<String>(next().get())
                    .map_err(|_| shape_error("errorCode", message_id.clone()))?;
                let description = serde_json::from_str::<String>(next().get())
                    .map_err(|_| shape_error("errorDescription", message_id.clone()))?;
                let details = next();
                if !is_object(&details) {
                    return Err(shape_error("errorDetails", message_id));
                }
                let error = RpcError {
                    message_id,
                    error_code,
                    description,
                    details,
                };
                if message_type == MessageType::CallError {
                    Frame::CallError(error)
                } else {
                    Frame::CallResultError(error)
                }
            }
        })
    }
}

/// A frame that is well formed for some version: the right elements, each of the right
/// type, read in one pass without copying any element twice. Whether its message type
/// belongs to the connection's version is checked by the caller.
struct WellFormed(Frame);

impl<'de> serde::Deserialize<'de> for WellFormed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(WellFormedVisitor)
    }
}

struct WellFormedVisitor;

impl<'de> serde::de::Visitor<'de> for WellFormedVisitor {
    type Value = WellFormed;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a well-formed OCPP-J frame")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<WellFormed, A::Error> {
        use serde::de::Error;
        let number: u64 = element(&mut seq, "messageTypeId")?;
        let message_id: String = element(&mut seq, "messageId")?;
        if message_id.is_empty() || message_id.chars().count() > MAX_MESSAGE_ID_LEN {
            return Err(A::Error::custom("bad message id"));
        }
        let frame = match number {
            2 | 6 => {
                let action: String = element(&mut seq, "action")?;
                let payload: Box<RawValue> = element(&mut seq, "payload")?;
                if action.is_empty() || !is_object(&payload) {
                    return Err(A::Error::custom("bad action or payload"));
                }
                let message_type = match number {
                    2 => MessageType::Call,
                    _ => MessageType::Send,
                };
                Frame::request(message_type, message_id, action, payload)
            }
            3 => {
                let payload: Box<RawValue> = element(&mut seq, "payload")?;
                if !is_object(&payload) {
                    return Err(A::Error::custom("bad payload"));
                }
                Frame::CallResult {
                    message_id,
                    payload,
                }
            }
            4 | 5 => {
                let error = RpcError {
                    message_id,
                    error_code: element(&mut seq, "errorCode")?,
                    description: element(&mut seq, "errorDescription")?,
                    details: element(&mut seq, "errorDetails")?,
                };
                if !is_object(&error.details) {
                    return Err(A::Error::custom("bad error details"));
                }
                if number == 4 {
                    Frame::CallError(error)
                } else {
                    Frame::CallResultError(error)
                }
            }
            _ => return Err(A::Error::custom("unknown message type")),
        };
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("too many elements"));
        }
        Ok(WellFormed(frame))
    }
}

/// The next element of a frame, which must be there.
fn element<'de, A, T>(seq: &mut A, field: &'static str) -> Result<T, A::Error>
where
    A: serde::de::SeqAccess<'de>,
    T: serde::Deserialize<'de>,
{
    seq.next_element()?
        .ok_or_else(|| <A::Error as serde::de::Error>::missing_field(field))
}

/// Whether a raw element is a JSON object.
fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

impl Frame {
    /// A CALL or a SEND, the two frames that carry a request.
    fn request(
        message_type: MessageType,
        message_id: String,
        action: String,
        payload: Box<RawValue>,
    ) -> Frame {
        if message_type == MessageType::Send {
            Frame::Send {
                message_id,
                action,
                payload,
            }
        } else {
            Frame::Call {
                message_id,
                action,
                payload,
            }
        }
    }
}

fn read_message_id(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get())
        .ok()
        .filter(|id| !id.is_empty() && id.chars().count() <= MAX_MESSAGE_ID_LEN)
}

/// Why a text frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameErrorKind {
    /// The text is not JSON.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// The JSON is not an array.
    #[error("frame is not a JSON array")]
    NotArray,
    /// The first element is missing or not a non-negative integer.
    #[error("frame has no readable message type number")]
    BadMessageTypeId,
    /// The message type number is not one this version knows.
    #[error("message type {0} is not supported by this OCPP version")]
    UnsupportedMessageType(u64),
    /// The message id is missing, not a string, empty or longer than 36 characters.
    #[error("frame has no readable message id (a string of 1 to 36 characters)")]
    BadMessageId,
    /// The array has the wrong number of elements for its message type.
    #[error("frame has {found} elements; this message type has {expected}")]
    WrongLength {
        /// Elements the message type requires.
        expected: usize,
        /// Elements received.
        found: usize,
    },
    /// An element has the wrong JSON type (e.g. a payload that is not an object).
    #[error("frame field {0} has the wrong type")]
    BadField(&'static str),
}

/// A frame that could not be decoded, with whatever could be read of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct FrameError {
    /// The message type, when it could be read and is supported.
    pub message_type: Option<MessageType>,
    /// The message id, when it could be read.
    pub message_id: Option<String>,
    /// What was wrong.
    pub kind: FrameErrorKind,
}

impl FrameError {
    fn new(
        message_type: Option<MessageType>,
        message_id: Option<String>,
        kind: FrameErrorKind,
    ) -> Self {
        Self {
            message_type,
            message_id,
            kind,
        }
    }

    /// Whether the sender expects a CALLERROR for this frame.
    ///
    /// Only requests are answered: an error about a broken CALLRESULT, CALLERROR or SEND
    /// would itself be unanswerable, so those are dropped (and counted by the caller).
    pub fn warrants_reply(&self) -> bool {
        matches!(self.message_type, None | Some(MessageType::Call))
    }

    /// The error code the version's spec prescribes for this decoding failure.
    pub fn error_code(&self) -> ErrorCode {
        match &self.kind {
            FrameErrorKind::NotJson(_) => ErrorCode::FormatViolation,
            FrameErrorKind::UnsupportedMessageType(_) => ErrorCode::MessageTypeNotSupported,
            FrameErrorKind::BadField("payload") => ErrorCode::FormatViolation,
            FrameErrorKind::NotArray
            | FrameErrorKind::BadMessageTypeId
            | FrameErrorKind::BadMessageId
            | FrameErrorKind::WrongLength { .. }
            | FrameErrorKind::BadField(_) => ErrorCode::RpcFrameworkError,
        }
    }

    /// The CALLERROR frame that answers this failure on a `version` connection.
    pub fn to_call_error(&self, version: OcppVersion) -> String {
        encode_call_error(
            self.message_id.as_deref().unwrap_or(UNREADABLE_MESSAGE_ID),
            self.error_code(),
            version,
            &self.kind.to_string(),
            &serde_json::json!({}),
        )
    }
}

/// Encodes a CALL frame.
pub fn encode_call(message_id: &str, action: &str, payload: &RawValue) -> String {
    serde_json::to_string(&(2u8, message_id, action, payload)).unwrap_or_default()
}

/// Encodes a CALLRESULT frame.
pub fn encode_call_result(message_id: &str, payload: &RawValue) -> String {
    serde_json::to_string(&(3u8, message_id, payload)).unwrap_or_default()
}

/// Encodes a CALLERROR frame with the code spelled for `version`.
pub fn encode_call_error(
    message_id: &str,
    code: ErrorCode,
    version: OcppVersion,
    description: &str,
    details: &serde_json::Value,
) -> String {
    encode_error_frame(4, message_id, code.as_str(version), description, details)
}

/// Encodes a 2.1 CALLRESULTERROR frame.
pub fn encode_call_result_error(
    message_id: &str,
    code: ErrorCode,
    description: &str,
    details: &serde_json::Value,
) -> String {
    encode_error_frame(
        5,
        message_id,
        code.as_str(OcppVersion::V21),
        description,
        details,
    )
}

fn encode_error_frame(
    number: u8,
    message_id: &str,
    code: &str,
    description: &str,
    details: &serde_json::Value,
) -> String {
    let description = truncate_chars(description, MAX_ERROR_DESCRIPTION_LEN);
    let details = if details.is_object() {
        details
    } else {
        &serde_json::Value::Object(Default::default())
    };
    serde_json::to_string(&(number, message_id, code, description, details)).unwrap_or_default()
}

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OcppVersion::*;

    /// The one-pass reading of well-formed frames decides exactly as the element-by-element
    /// one, on frames well formed or not, in every version.
    #[test]
    fn the_fast_path_agrees_with_the_checking_path() {
        let frames = [
            r#"[2,"1","Heartbeat",{}]"#,
            r#" [ 2 , "id-\u00e9" , "BootNotification" , {"a":[1,{"b":null}]} ] "#,
            r#"[3,"1",{"currentTime":"x"}]"#,
            r#"[4,"1","GenericError","why",{"k":1}]"#,
            r#"[5,"1","GenericError","why",{}]"#,
            r#"[6,"1","NotifyPeriodicEventStream",{}]"#,
            r#"[2,"1","Heartbeat",{},1]"#,
            r#"[2,"1","Heartbeat"]"#,
            r#"[2,"","Heartbeat",{}]"#,
            r#"[2,"0123456789012345678901234567890123456","Heartbeat",{}]"#,
            r#"[2,"1","",{}]"#,
            r#"[2,"1","Heartbeat",[]]"#,
            r#"[2,1,"Heartbeat",{}]"#,
            r#"[3,"1",[]]"#,
            r#"[4,"1",7,"why",{}]"#,
            r#"[7,"1",{}]"#,
            r#"[-1,"1",{}]"#,
            r#"["2","1","Heartbeat",{}]"#,
            r#"{"not":"an array"}"#,
            r#"[2,"1","Heartbeat",{}"#,
            "",
            "[]",
        ];
        for text in frames {
            for version in [V16, V201, V21] {
                let fast = format!("{:?}", Frame::decode(text, version));
                let checking = format!("{:?}", Frame::decode_checking(text, version));
                assert_eq!(fast, checking, "{text} in {version}");
            }
        }
    }

    fn decode_err(text: &str, version: OcppVersion) -> FrameError {
        Frame::decode(text, version).expect_err("frame should be rejected")
    }

    #[test]
    fn decodes_call_keeping_payload_text() {
        let frame =
            Frame::decode(r#"[2, "abc", "Heartbeat", {"b": 1,  "a": [ 1.50 ]}]"#, V16).unwrap();
        match frame {
            Frame::Call {
                message_id,
                action,
                payload,
            } => {
                assert_eq!(message_id, "abc");
                assert_eq!(action, "Heartbeat");
                assert_eq!(payload.get(), r#"{"b": 1,  "a": [ 1.50 ]}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_result_and_errors() {
        let f = Frame::decode(r#"[3,"1",{"status":"Accepted"}]"#, V201).unwrap();
        assert_eq!(f.message_type(), MessageType::CallResult);
        assert_eq!(f.message_id(), "1");
        let f = Frame::decode(r#"[4,"2","NotSupported","nope",{}]"#, V201).unwrap();
        match f {
            Frame::CallError(e) => {
                assert_eq!(e.error_code, "NotSupported");
                assert_eq!(e.description, "nope");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn types_5_and_6_only_in_21() {
        let f = Frame::decode(r#"[6,"9","NotifyPeriodicEventStream",{}]"#, V21).unwrap();
        assert_eq!(f.message_type(), MessageType::Send);
        let f = Frame::decode(r#"[5,"9","FormatViolation","bad",{}]"#, V21).unwrap();
        assert_eq!(f.message_type(), MessageType::CallResultError);

        let e = decode_err(r#"[6,"9","NotifyPeriodicEventStream",{}]"#, V201);
        assert_eq!(e.kind, FrameErrorKind::UnsupportedMessageType(6));
        assert_eq!(e.error_code().as_str(V201), "MessageTypeNotSupported");
        assert_eq!(e.message_id.as_deref(), Some("9"));
        let e = decode_err(r#"[5,"9","FormatViolation","bad",{}]"#, V16);
        assert_eq!(e.error_code().as_str(V16), "ProtocolError");
    }

    #[test]
    fn malformed_json_is_a_format_violation_per_version() {
        let e = decode_err("[2, \"1\", \"Heartbeat\", {", V16);
        assert!(matches!(e.kind, FrameErrorKind::NotJson(_)));
        assert!(e.warrants_reply());
        let reply = e.to_call_error(V16);
        assert!(
            reply.starts_with(r#"[4,"-1","FormationViolation","#),
            "{reply}"
        );
        let reply = e.to_call_error(V201);
        assert!(
            reply.starts_with(r#"[4,"-1","FormatViolation","#),
            "{reply}"
        );
    }

    #[test]
    fn wrong_shapes_are_rpc_framework_errors() {
        for text in [
            r#"{"a":1}"#,
            r#"[]"#,
            r#"["2","1","Heartbeat",{}]"#,
            r#"[2,1,"Heartbeat",{}]"#,
            r#"[2,"","Heartbeat",{}]"#,
            r#"[2,"1","Heartbeat"]"#,
            r#"[2,"1","Heartbeat",{},{}]"#,
            r#"[2,"1",7,{}]"#,
        ] {
            let e = decode_err(text, V201);
            assert_eq!(e.error_code(), ErrorCode::RpcFrameworkError, "{text}");
            assert_eq!(e.error_code().as_str(V16), "ProtocolError", "{text}");
        }
        let too_long = format!(r#"[2,"{}","Heartbeat",{{}}]"#, "x".repeat(37));
        assert_eq!(
            decode_err(&too_long, V16).kind,
            FrameErrorKind::BadMessageId
        );
    }

    #[test]
    fn payload_must_be_an_object() {
        let e = decode_err(r#"[2,"1","Heartbeat",[]]"#, V16);
        assert_eq!(e.kind, FrameErrorKind::BadField("payload"));
        assert_eq!(e.message_id.as_deref(), Some("1"));
        assert_eq!(
            e.to_call_error(V16),
            r#"[4,"1","FormationViolation","frame field payload has the wrong type",{}]"#
        );
    }

    #[test]
    fn broken_responses_get_no_reply() {
        let e = decode_err(r#"[3,"1"]"#, V16);
        assert!(!e.warrants_reply());
        let e = decode_err(r#"[4,"1","X"]"#, V16);
        assert!(!e.warrants_reply());
        let e = decode_err(r#"[7,"1"]"#, V16);
        assert!(e.warrants_reply());
    }

    #[test]
    fn encoders_write_spec_frames() {
        let payload = RawValue::from_string(r#"{"a":1}"#.to_owned()).unwrap();
        assert_eq!(
            encode_call("7", "Reset", &payload),
            r#"[2,"7","Reset",{"a":1}]"#
        );
        assert_eq!(encode_call_result("7", &payload), r#"[3,"7",{"a":1}]"#);
        let long = "é".repeat(300);
        let frame = encode_call_error(
            "7",
            ErrorCode::OccurrenceConstraintViolation,
            V16,
            &long,
            &serde_json::Value::Null,
        );
        let decoded: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(decoded[2], "OccurenceConstraintViolation");
        assert_eq!(decoded[3].as_str().unwrap().chars().count(), 255);
        assert_eq!(decoded[4], serde_json::json!({}));
        assert_eq!(
            encode_call_result_error(
                "7",
                ErrorCode::TypeConstraintViolation,
                "x",
                &serde_json::json!({})
            ),
            r#"[5,"7","TypeConstraintViolation","x",{}]"#
        );
    }
}
