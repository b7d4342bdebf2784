//! Event records: CloudEvents 1.0 (structured JSON mode) describing what charge points
//! say and when they connect or disconnect. See docs/events.md.

use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};
use ocpp::{MessageType, OcppVersion};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

/// CloudEvents `type` of an inbound OCPP message.
pub const MESSAGE_RECEIVED: &str = "chargepointgateway.message.received";
/// CloudEvents `type` of a charge point connecting.
pub const CONNECTION_OPENED: &str = "chargepointgateway.connection.opened";
/// CloudEvents `type` of a charge point disconnecting.
pub const CONNECTION_CLOSED: &str = "chargepointgateway.connection.closed";
/// CloudEvents `type` of a command's result.
pub const COMMAND_RESULT: &str = "chargepointgateway.command.result";
/// What the CloudEvents `type` of every security event starts with (the kind follows).
pub const SECURITY_PREFIX: &str = "chargepointgateway.security.";

/// One event record, serialised as a CloudEvents 1.0 JSON object.
#[derive(Debug, Serialize)]
pub struct Event {
    /// Always `1.0`.
    pub specversion: &'static str,
    /// Unique id of this event (UUIDv7, time-ordered).
    pub id: Uuid,
    /// `/charge-point-gateway/{node_id}` (see [`Event::source_of`]), shared by every event
    /// of the instance.
    pub source: Arc<str>,
    /// One of [`MESSAGE_RECEIVED`], [`CONNECTION_OPENED`], [`CONNECTION_CLOSED`].
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The charge point id (also the Kafka key).
    pub subject: String,
    /// When the gateway observed what the event describes.
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// Always `application/json`.
    pub datacontenttype: &'static str,
    /// The event body.
    pub data: EventData,
}

/// The `data` of an event, by type.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EventData {
    /// An OCPP message received from the charge point.
    Message(MessageData),
    /// The charge point connected.
    Opened(OpenedData),
    /// The charge point disconnected.
    Closed(ClosedData),
    /// The result of a backend command.
    CommandResult(Box<CommandResult>),
    /// A security event (`chargepointgateway.security.*`).
    Security(SecurityData),
}

/// An OCPP message received from a charge point.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageData {
    /// The connection's OCPP version.
    pub ocpp_version: OcppVersion,
    /// `call`, `callResult`, `callError`, `callResultError` or `send`.
    pub message_type: &'static str,
    /// The message id as the charge point sent it.
    pub message_id: String,
    /// The OCPP action; for responses, the action of the gateway's CALL they answer
    /// (`null` for a response to no known CALL).
    pub action: Option<String>,
    /// The payload exactly as received (CALL, CALLRESULT, SEND).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// Error code (CALLERROR, CALLRESULTERROR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Error description (CALLERROR, CALLRESULTERROR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// Error details exactly as received (CALLERROR, CALLRESULTERROR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_details: Option<Box<RawValue>>,
    /// When the frame was read.
    #[serde(serialize_with = "rfc3339")]
    pub received_at: DateTime<Utc>,
    /// The connection the message arrived on.
    pub connection_id: String,
    /// The gateway instance that received it.
    pub gateway_node: Arc<str>,
}

/// A charge point connected.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenedData {
    /// The negotiated OCPP version.
    pub ocpp_version: OcppVersion,
    /// Whether the version came from the fallback because no subprotocol was offered.
    pub subprotocol_fallback: bool,
    /// The peer's address.
    pub peer_address: SocketAddr,
    /// The new connection's id.
    pub connection_id: String,
    /// The gateway instance that holds the connection.
    pub gateway_node: String,
    /// The epoch of the connection's claim in the cluster registry (absent without a
    /// cluster, or while the registry is out of reach): of two events about the same
    /// charge point, the one with the higher epoch is about the newer connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A charge point disconnected.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedData {
    /// The connection's OCPP version.
    pub ocpp_version: OcppVersion,
    /// Why the connection ended (closed set, see docs/events.md).
    pub reason: &'static str,
    /// The WebSocket close code sent or received, if any.
    pub close_code: Option<u16>,
    /// How long the connection lasted, in seconds.
    pub duration_seconds: f64,
    /// The connection's id.
    pub connection_id: String,
    /// The gateway instance that held the connection.
    pub gateway_node: String,
    /// The epoch of the connection's claim (see [`OpenedData::epoch`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The result of a backend command: exactly one per command.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// The command's id.
    pub command_id: String,
    /// The target charge point (`null` when the record did not name one).
    pub charge_point_id: Option<String>,
    /// The command's action (`null` when the record did not name one).
    pub action: Option<String>,
    /// `completed`, `callError`, `timeout`, `notConnected`, `expired` or `invalid`.
    pub status: &'static str,
    /// The charge point's CALLRESULT payload (`completed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<RawValue>>,
    /// What went wrong (every other status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// When the gateway read the command.
    #[serde(serialize_with = "rfc3339")]
    pub received_at: DateTime<Utc>,
    /// When the outcome was known.
    #[serde(serialize_with = "rfc3339")]
    pub completed_at: DateTime<Utc>,
    /// The gateway instance that handled it.
    pub gateway_node: String,
}

/// The `data` of a security event (`chargepointgateway.security.*`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityData {
    /// The kind, as in the event's type.
    pub kind: &'static str,
    /// The authentication result (`auth_failed`, `downgrade_attempt`, `limit_hit`), or
    /// the rotation's outcome.
    pub result: &'static str,
    /// The profile the charge point's record requires, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_profile: Option<u8>,
    /// The client's address (for a rotation: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<IpAddr>,
    /// The gateway instance.
    pub gateway_node: String,
}

impl Event {
    /// The `source` of the events of instance `node_id`.
    pub fn source_of(node_id: &str) -> Arc<str> {
        Arc::from(format!("/charge-point-gateway/{node_id}"))
    }

    /// A new event of `event_type` about charge point `subject`, from `source`
    /// ([`Event::source_of`]).
    pub fn new(
        source: Arc<str>,
        event_type: &'static str,
        subject: &str,
        data: EventData,
    ) -> Event {
        Event {
            specversion: "1.0",
            id: Uuid::now_v7(),
            source,
            event_type,
            subject: subject.to_owned(),
            time: Utc::now(),
            datacontenttype: "application/json",
            data,
        }
    }

    /// The charge point the event is about.
    pub fn charge_point_id(&self) -> &str {
        &self.subject
    }
}

impl MessageData {
    /// Data for a message of `message_type` with the given fields; error fields unset.
    pub fn new(
        version: OcppVersion,
        message_type: MessageType,
        message_id: &str,
        action: Option<String>,
        connection_id: &str,
        gateway_node: Arc<str>,
    ) -> MessageData {
        MessageData {
            ocpp_version: version,
            message_type: message_type.as_str(),
            message_id: message_id.to_owned(),
            action,
            payload: None,
            error_code: None,
            error_description: None,
            error_details: None,
            received_at: Utc::now(),
            connection_id: connection_id.to_owned(),
            gateway_node,
        }
    }
}

/// Writes `time` exactly as chrono's `Serialize` does (RFC 3339 in UTC with `Z`, and 0,
/// 3, 6 or 9 fraction digits, as few as hold it), without the formatting machinery, which
/// wrote it a character at a time: the two timestamps of every event were 3.7% of the
/// gateway's CPU in a closed-loop profile.
fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = [0u8; 30];
    let formatted = format_rfc3339(time, &mut text)
        .and_then(|length| std::str::from_utf8(&text[..length]).ok());
    match formatted {
        Some(text) => serializer.serialize_str(text),
        None => time.serialize(serializer),
    }
}

/// The length of `time` written into `out`; `None` outside years 0 to 9999 or on a leap
/// second, which chrono's own formatting handles.
fn format_rfc3339(time: &DateTime<Utc>, out: &mut [u8; 30]) -> Option<usize> {
    let year = u32::try_from(time.year())
        .ok()
        .filter(|year| *year <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let digits = |out: &mut [u8; 30], at: usize, mut value: u32, count: usize| {
        for place in (at..at + count).rev() {
            out[place] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(out, 0, year, 4);
    out[4] = b'-';
    digits(out, 5, time.month(), 2);
    out[7] = b'-';
    digits(out, 8, time.day(), 2);
    out[10] = b'T';
    digits(out, 11, time.hour(), 2);
    out[13] = b':';
    digits(out, 14, time.minute(), 2);
    out[16] = b':';
    digits(out, 17, time.second(), 2);
    let mut length = 19;
    let (count, fraction) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    if count > 0 {
        out[length] = b'.';
        digits(out, length + 1, fraction, count);
        length += 1 + count;
    }
    out[length] = b'Z';
    Some(length + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[derive(Serialize)]
    struct Fast(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let seconds = [
            -62_167_219_200, // 0000-01-01
            0,
            1,
            951_782_400, // 2000-02-29
            1_764_480_000,
            4_102_444_799,
            253_402_300_799, // 9999-12-31T23:59:59
        ];
        let nanos = [
            0,
            1,
            7_000,
            120_000_000,
            123_456_000,
            123_456_789,
            999_999_999,
        ];
        for second in seconds {
            for nano in nanos {
                let time = Utc.timestamp_opt(second, nano).unwrap();
                assert!(format_rfc3339(&time, &mut [0; 30]).is_some());
                assert_eq!(
                    serde_json::to_string(&Fast(time)).unwrap(),
                    serde_json::to_string(&time).unwrap(),
                    "{second} s {nano} ns"
                );
            }
        }
        // Beyond year 9999 and before year 0, chrono writes it.
        for second in [253_402_300_800, -62_167_219_201] {
            let time = Utc.timestamp_opt(second, 5).unwrap();
            assert!(format_rfc3339(&time, &mut [0; 30]).is_none());
            assert_eq!(
                serde_json::to_string(&Fast(time)).unwrap(),
                serde_json::to_string(&time).unwrap()
            );
        }
    }
}
