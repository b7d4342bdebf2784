//! The simulator's side of the `ocpp` crate's frame codec.
//!
//! Frames are decoded with [`ocpp::Frame::decode`] and written with [`ocpp::frame`]'s
//! encoders, which keep payloads as raw JSON text. The simulator builds and reads payloads
//! as [`Value`]s; these functions convert between the two.

use ocpp::{frame, OcppVersion};
use serde_json::{value::RawValue, Value};

use crate::answers::Answer;

/// `[2, id, action, payload]`: a CALL of the charge point's.
pub fn call(id: &str, action: &str, payload: &Value) -> String {
    frame::encode_call(id, action, &raw(payload))
}

/// The CALLRESULT or CALLERROR that answers the central system's CALL `id` on a `version`
/// connection (the version decides how some error codes are spelled).
pub fn answer(id: &str, answer: &Answer, version: OcppVersion) -> String {
    match answer {
        Answer::Result(payload) => frame::encode_call_result(id, &raw(payload)),
        Answer::Error(code, description) => frame::encode_call_error(
            id,
            *code,
            version,
            description,
            &Value::Object(Default::default()),
        ),
    }
}

/// A received payload or error details object as a [`Value`], for the code that reads it.
///
/// The codec has already checked that it is a JSON object, so this fails only if serde_json
/// refuses what it accepted a moment ago.
pub fn payload(raw: &RawValue) -> Result<Value, serde_json::Error> {
    serde_json::from_str(raw.get())
}

fn raw(payload: &Value) -> Box<RawValue> {
    // A Value's keys are strings and its numbers finite, so serialising it cannot fail.
    serde_json::value::to_raw_value(payload).expect("a serde_json::Value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocpp::{ErrorCode, Frame};
    use serde_json::json;

    #[test]
    fn writes_the_frames_a_charge_point_sends() {
        assert_eq!(
            call("5", "Heartbeat", &json!({})),
            r#"[2,"5","Heartbeat",{}]"#
        );
        assert_eq!(
            answer(
                "5",
                &Answer::Result(json!({"status": "Accepted"})),
                OcppVersion::V16
            ),
            r#"[3,"5",{"status":"Accepted"}]"#
        );
        assert_eq!(
            answer(
                "5",
                &Answer::Error(ErrorCode::NotImplemented, "no".into()),
                OcppVersion::V201
            ),
            r#"[4,"5","NotImplemented","no",{}]"#
        );
        // 1.6 spells this code differently; the connection's version decides.
        assert_eq!(
            answer(
                "5",
                &Answer::Error(ErrorCode::FormatViolation, "no".into()),
                OcppVersion::V16
            ),
            r#"[4,"5","FormationViolation","no",{}]"#
        );
    }

    #[test]
    fn what_it_writes_decodes_back_with_the_payload_intact() {
        let sent = json!({"connectorId": 1, "meterValue": [{"sampledValue": [{"value": "1.5"}]}]});
        let text = call("7", "MeterValues", &sent);
        let Ok(Frame::Call {
            message_id,
            action,
            payload: received,
        }) = Frame::decode(&text, OcppVersion::V16)
        else {
            panic!("{text} does not decode as a CALL");
        };
        assert_eq!((message_id.as_str(), action.as_str()), ("7", "MeterValues"));
        assert_eq!(payload(&received).ok(), Some(sent));
    }
}
