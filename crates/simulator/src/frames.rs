//! OCPP-J frames as the simulator reads and writes them.

use serde_json::Value;

/// A frame from the central system.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `[2, id, action, payload]`: the central system asks something.
    Call {
        /// Message id.
        id: String,
        /// Action name.
        action: String,
        /// Payload.
        payload: Value,
    },
    /// `[3, id, payload]`: the answer to one of our CALLs.
    Result {
        /// Message id.
        id: String,
        /// Payload.
        payload: Value,
    },
    /// `[4, id, code, description, details]`: an error answer.
    Error {
        /// Message id.
        id: String,
        /// Error code.
        code: String,
        /// Description.
        description: String,
    },
}

/// A frame that is not OCPP-J; the label says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame from the central system: {0}")]
pub struct Malformed(pub &'static str);

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, Malformed> {
    let value: Value = serde_json::from_str(text).map_err(|_| Malformed("not JSON"))?;
    let Value::Array(mut items) = value else {
        return Err(Malformed("not an array"));
    };
    let text_at = |items: &[Value], index: usize, what: &'static str| {
        items
            .get(index)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(Malformed(what))
    };
    let id = text_at(&items, 1, "no message id")?;
    match items.first().and_then(Value::as_u64) {
        Some(2) => Ok(Incoming::Call {
            id,
            action: text_at(&items, 2, "no action")?,
            payload: items
                .get_mut(3)
                .map(Value::take)
                .ok_or(Malformed("no payload"))?,
        }),
        Some(3) => Ok(Incoming::Result {
            id,
            payload: items
                .get_mut(2)
                .map(Value::take)
                .ok_or(Malformed("no payload"))?,
        }),
        Some(4) => Ok(Incoming::Error {
            id,
            code: text_at(&items, 2, "no error code")?,
            description: text_at(&items, 3, "no error description").unwrap_or_default(),
        }),
        _ => Err(Malformed("unknown message type")),
    }
}

/// `[2, id, action, payload]`.
pub fn call(id: &str, action: &str, payload: &Value) -> String {
    serde_json::json!([2, id, action, payload]).to_string()
}

/// `[3, id, payload]`.
pub fn result(id: &str, payload: &Value) -> String {
    serde_json::json!([3, id, payload]).to_string()
}

/// `[4, id, code, description, {}]`.
pub fn error(id: &str, code: &str, description: &str) -> String {
    serde_json::json!([4, id, code, description, {}]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_frame_kind_and_rejects_garbage() {
        assert_eq!(
            parse(r#"[2,"7","Reset",{"type":"Soft"}]"#),
            Ok(Incoming::Call {
                id: "7".into(),
                action: "Reset".into(),
                payload: json!({"type": "Soft"})
            })
        );
        assert!(matches!(
            parse(r#"[3,"1",{}]"#),
            Ok(Incoming::Result { .. })
        ));
        assert!(matches!(
            parse(r#"[4,"1","NotImplemented","",{}]"#),
            Ok(Incoming::Error { code, .. }) if code == "NotImplemented"
        ));
        assert_eq!(parse("{}"), Err(Malformed("not an array")));
        assert_eq!(parse(r#"[9,"1"]"#), Err(Malformed("unknown message type")));
        assert_eq!(parse(r#"[3,1,{}]"#), Err(Malformed("no message id")));
    }

    #[test]
    fn writes_frames_that_parse_back() {
        let frame = call("5", "Heartbeat", &json!({}));
        assert_eq!(frame, r#"[2,"5","Heartbeat",{}]"#);
        assert_eq!(
            error("5", "NotImplemented", "no"),
            r#"[4,"5","NotImplemented","no",{}]"#
        );
        assert!(matches!(
            parse(&result("5", &json!({}))),
            Ok(Incoming::Result { .. })
        ));
    }
}
