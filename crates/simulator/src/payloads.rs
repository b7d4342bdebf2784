//! What a simulated charge point says, in each version's vocabulary.
//!
//! Every payload here is valid against the OCA schemas of its version; the simulator's
//! tests run them through a real gateway, which validates what it receives.

use ocpp::OcppVersion;
use serde_json::{json, Value};

/// Identity a simulated charge point reports in its BootNotification.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Vendor name.
    pub vendor: String,
    /// Model name.
    pub model: String,
    /// Firmware version.
    pub firmware: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            vendor: "Simulator".into(),
            model: "SIM-22".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// A connector's state, as far as the simulator models it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorStatus {
    /// Free.
    Available,
    /// A vehicle is plugged in (1.6 `Preparing`/`Charging`, 2.x `Occupied`).
    Occupied,
    /// Charging.
    Charging,
}

/// The current time as OCPP writes it.
pub fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `BootNotification`.
pub fn boot_notification(
    version: OcppVersion,
    identity: &Identity,
    serial: &str,
    reason: &str,
) -> Value {
    if version.is_2x() {
        json!({
            "reason": reason,
            "chargingStation": {
                "model": identity.model,
                "vendorName": identity.vendor,
                "serialNumber": serial,
                "firmwareVersion": identity.firmware,
            }
        })
    } else {
        json!({
            "chargePointVendor": identity.vendor,
            "chargePointModel": identity.model,
            "chargePointSerialNumber": serial,
            "firmwareVersion": identity.firmware,
        })
    }
}

/// `Heartbeat`.
pub fn heartbeat() -> Value {
    json!({})
}

/// `StatusNotification` for one connector (EVSE `connector` with connector 1 in 2.x).
pub fn status_notification(version: OcppVersion, connector: u32, status: ConnectorStatus) -> Value {
    if version.is_2x() {
        let status = match status {
            ConnectorStatus::Available => "Available",
            ConnectorStatus::Occupied | ConnectorStatus::Charging => "Occupied",
        };
        json!({
            "timestamp": now(),
            "connectorStatus": status,
            "evseId": connector,
            "connectorId": 1,
        })
    } else {
        let status = match status {
            ConnectorStatus::Available => "Available",
            ConnectorStatus::Occupied => "Preparing",
            ConnectorStatus::Charging => "Charging",
        };
        json!({
            "connectorId": connector,
            "errorCode": "NoError",
            "status": status,
            "timestamp": now(),
        })
    }
}

/// `Authorize` for an RFID tag.
pub fn authorize(version: OcppVersion, id_tag: &str) -> Value {
    if version.is_2x() {
        json!({ "idToken": { "idToken": id_tag, "type": "ISO14443" } })
    } else {
        json!({ "idTag": id_tag })
    }
}

/// `MeterValues` with the energy register (Wh) and the power being drawn (W).
pub fn meter_values(
    version: OcppVersion,
    connector: u32,
    transaction_id: Option<&str>,
    energy_wh: u64,
    power_w: u32,
) -> Value {
    let timestamp = now();
    if version.is_2x() {
        json!({
            "evseId": connector,
            "meterValue": [sampled_2x(&timestamp, energy_wh, power_w)],
        })
    } else {
        let mut payload = json!({
            "connectorId": connector,
            "meterValue": [{
                "timestamp": timestamp,
                "sampledValue": [
                    { "value": energy_wh.to_string(), "measurand": "Energy.Active.Import.Register", "unit": "Wh" },
                    { "value": power_w.to_string(), "measurand": "Power.Active.Import", "unit": "W" },
                ],
            }],
        });
        if let Some(id) = transaction_id.and_then(|id| id.parse::<i64>().ok()) {
            payload["transactionId"] = json!(id);
        }
        payload
    }
}

fn sampled_2x(timestamp: &str, energy_wh: u64, power_w: u32) -> Value {
    json!({
        "timestamp": timestamp,
        "sampledValue": [
            { "value": energy_wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": { "unit": "Wh" } },
            { "value": power_w, "measurand": "Power.Active.Import", "unitOfMeasure": { "unit": "W" } },
        ],
    })
}

/// How a transaction starts, continues and ends, per version: 1.6 has separate actions,
/// 2.x one `TransactionEvent` with a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionPhase {
    /// The transaction begins (1.6 `StartTransaction`, 2.x `TransactionEvent` Started).
    Started,
    /// A periodic meter reading during it (1.6 `MeterValues`, 2.x `TransactionEvent` Updated).
    Updated,
    /// It ends (1.6 `StopTransaction`, 2.x `TransactionEvent` Ended).
    Ended,
}

/// What a transaction message needs to know.
#[derive(Debug, Clone)]
pub struct TransactionContext<'a> {
    /// The connector (1.6) or EVSE (2.x).
    pub connector: u32,
    /// The id tag that authorised it.
    pub id_tag: &'a str,
    /// 1.6: the id the CSMS gave in StartTransaction's answer; 2.x: the charge point's own.
    pub transaction_id: Option<&'a str>,
    /// 2.x `seqNo`, counting from 0 for each transaction.
    pub seq_no: u32,
    /// Energy register at this moment, Wh.
    pub energy_wh: u64,
    /// Power drawn, W.
    pub power_w: u32,
}

/// The action and payload of one transaction message.
pub fn transaction(
    version: OcppVersion,
    phase: TransactionPhase,
    tx: &TransactionContext<'_>,
) -> (&'static str, Value) {
    if version.is_2x() {
        let (event_type, trigger) = match phase {
            TransactionPhase::Started => ("Started", "Authorized"),
            TransactionPhase::Updated => ("Updated", "MeterValuePeriodic"),
            TransactionPhase::Ended => ("Ended", "StopAuthorized"),
        };
        let timestamp = now();
        let mut info = json!({ "transactionId": tx.transaction_id.unwrap_or("unknown") });
        if phase == TransactionPhase::Ended {
            info["stoppedReason"] = json!("Local");
        }
        let mut payload = json!({
            "eventType": event_type,
            "timestamp": timestamp,
            "triggerReason": trigger,
            "seqNo": tx.seq_no,
            "transactionInfo": info,
            "meterValue": [sampled_2x(&timestamp, tx.energy_wh, tx.power_w)],
        });
        if phase == TransactionPhase::Started {
            payload["evse"] = json!({ "id": tx.connector, "connectorId": 1 });
            payload["idToken"] = json!({ "idToken": tx.id_tag, "type": "ISO14443" });
        }
        ("TransactionEvent", payload)
    } else {
        match phase {
            TransactionPhase::Started => (
                "StartTransaction",
                json!({
                    "connectorId": tx.connector,
                    "idTag": tx.id_tag,
                    "meterStart": tx.energy_wh,
                    "timestamp": now(),
                }),
            ),
            TransactionPhase::Updated => (
                "MeterValues",
                meter_values(
                    version,
                    tx.connector,
                    tx.transaction_id,
                    tx.energy_wh,
                    tx.power_w,
                ),
            ),
            TransactionPhase::Ended => {
                let id = tx
                    .transaction_id
                    .and_then(|id| id.parse::<i64>().ok())
                    .unwrap_or(0);
                (
                    "StopTransaction",
                    json!({
                        "transactionId": id,
                        "idTag": tx.id_tag,
                        "meterStop": tx.energy_wh,
                        "timestamp": now(),
                        "reason": "Local",
                    }),
                )
            }
        }
    }
}

/// Whether an `Authorize`/`StartTransaction`/`TransactionEvent` answer accepted the id tag.
///
/// An answer without `idTagInfo`/`idTokenInfo` (2.x Updated/Ended events) accepts.
pub fn id_tag_accepted(answer: &Value) -> bool {
    let info = answer
        .get("idTagInfo")
        .or_else(|| answer.get("idTokenInfo"));
    match info {
        Some(info) => info.get("status").and_then(Value::as_str) == Some("Accepted"),
        None => true,
    }
}

/// The transaction id in a 1.6 `StartTransaction` answer.
pub fn transaction_id_of(answer: &Value) -> Option<String> {
    answer.get("transactionId").map(|id| match id {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    })
}

/// The `interval` and `status` of a `BootNotification` answer.
pub fn boot_answer(answer: &Value) -> (Option<u64>, Option<&str>) {
    (
        answer.get("interval").and_then(Value::as_u64),
        answer.get("status").and_then(Value::as_str),
    )
}
