//! How a simulated charge point answers the CALLs its central system sends.
//!
//! The answer is what a well-behaved charge point would say; some commands also ask the
//! charge point to do something afterwards (start charging, reboot, send a message),
//! returned as a [`FollowUp`] for the session to carry out once the answer is sent.

use std::collections::BTreeMap;

use ocpp::{ErrorCode, OcppVersion};
use serde_json::{json, Value};

/// What to send back for a CALL.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A CALLRESULT with this payload.
    Result(Value),
    /// A CALLERROR with this code (spelled for the connection's version) and description.
    Error(ErrorCode, String),
}

/// Something the charge point does after answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    /// Start a transaction with this id tag (remote start).
    StartTransaction {
        /// The tag to start with.
        id_tag: String,
    },
    /// Stop the transaction in progress (remote stop).
    StopTransaction,
    /// Close the connection and boot again (reset).
    Reboot,
    /// Send this charge-point-initiated action now (trigger message).
    Send(Trigger),
}

/// Messages a TriggerMessage can ask for that the simulator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `BootNotification`.
    BootNotification,
    /// `Heartbeat`.
    Heartbeat,
    /// `StatusNotification`.
    StatusNotification,
    /// `MeterValues`.
    MeterValues,
}

/// The charge point's configuration: 1.6 keys, or 2.x `Component/Variable` pairs.
#[derive(Debug, Clone)]
pub struct Configuration {
    values: BTreeMap<String, (String, bool)>,
}

impl Configuration {
    /// The configuration a freshly booted simulated charge point has.
    pub fn new(version: OcppVersion, connectors: u32) -> Self {
        let mut values = BTreeMap::new();
        let mut set = |key: &str, value: String, readonly: bool| {
            values.insert(key.to_owned(), (value, readonly));
        };
        if version.is_2x() {
            set("OCPPCommCtrlr/HeartbeatInterval", "300".into(), false);
            set("SampledDataCtrlr/TxUpdatedInterval", "60".into(), false);
            set("AuthCtrlr/AuthorizeRemoteStart", "false".into(), false);
            set("SecurityCtrlr/Identity", String::new(), true);
            set(
                "ChargingStation/AvailabilityState",
                "Available".into(),
                true,
            );
        } else {
            set("HeartbeatInterval", "300".into(), false);
            set("MeterValueSampleInterval", "60".into(), false);
            set("AuthorizeRemoteTxRequests", "false".into(), false);
            set("NumberOfConnectors", connectors.to_string(), true);
            set(
                "SupportedFeatureProfiles",
                "Core,RemoteTrigger".into(),
                true,
            );
        }
        Configuration { values }
    }

    /// A value by key (1.6) or `Component/Variable` (2.x).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(value, _)| value.as_str())
    }

    /// Sets a writable value: `Some(true)` when stored, `Some(false)` when read-only,
    /// `None` when the key is unknown.
    fn set(&mut self, key: &str, value: &str) -> Option<bool> {
        self.values.get_mut(key).map(|(stored, readonly)| {
            if !*readonly {
                *stored = value.to_owned();
            }
            !*readonly
        })
    }
}

/// Answers a CALL from the central system.
pub fn answer(
    version: OcppVersion,
    action: &str,
    payload: &Value,
    configuration: &mut Configuration,
) -> (Answer, Option<FollowUp>) {
    let accepted = || Answer::Result(json!({ "status": "Accepted" }));
    match (action, version.is_2x()) {
        ("RemoteStartTransaction", false) | ("RequestStartTransaction", true) => {
            let id_tag = if version.is_2x() {
                payload.pointer("/idToken/idToken")
            } else {
                payload.get("idTag")
            }
            .and_then(Value::as_str)
            .unwrap_or("REMOTE")
            .to_owned();
            (accepted(), Some(FollowUp::StartTransaction { id_tag }))
        }
        ("RemoteStopTransaction", false) | ("RequestStopTransaction", true) => {
            (accepted(), Some(FollowUp::StopTransaction))
        }
        ("Reset", _) => (accepted(), Some(FollowUp::Reboot)),
        ("ChangeAvailability", _) | ("ClearCache", _) => (accepted(), None),
        ("UnlockConnector", _) => (Answer::Result(json!({ "status": "Unlocked" })), None),
        ("DataTransfer", _) => (Answer::Result(json!({ "status": "UnknownVendorId" })), None),
        ("ChangeConfiguration", false) => (change_configuration(payload, configuration), None),
        ("GetConfiguration", false) => (get_configuration(payload, configuration), None),
        ("SetVariables", true) => (set_variables(payload, configuration), None),
        ("GetVariables", true) => (get_variables(payload, configuration), None),
        ("TriggerMessage", _) => trigger_message(payload),
        _ => (
            Answer::Error(
                ErrorCode::NotImplemented,
                format!("the simulator does not implement {action}"),
            ),
            None,
        ),
    }
}

fn change_configuration(payload: &Value, configuration: &mut Configuration) -> Answer {
    let key = payload
        .get("key")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = payload
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let status = match configuration.set(key, value) {
        Some(true) => "Accepted",
        Some(false) => "Rejected",
        None => "NotSupported",
    };
    Answer::Result(json!({ "status": status }))
}

fn get_configuration(payload: &Value, configuration: &Configuration) -> Answer {
    let asked: Option<Vec<&str>> = payload
        .get("key")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_str).collect());
    let entry = |key: &str, (value, readonly): &(String, bool)| json!({ "key": key, "readonly": readonly, "value": value });
    match asked.filter(|keys| !keys.is_empty()) {
        None => Answer::Result(json!({
            "configurationKey": configuration
                .values
                .iter()
                .map(|(key, value)| entry(key, value))
                .collect::<Vec<_>>(),
        })),
        Some(keys) => {
            let (known, unknown): (Vec<&str>, Vec<&str>) = keys
                .into_iter()
                .partition(|key| configuration.values.contains_key(*key));
            let mut answer = json!({
                "configurationKey": known
                    .iter()
                    .map(|key| entry(key, &configuration.values[*key]))
                    .collect::<Vec<_>>(),
            });
            if !unknown.is_empty() {
                answer["unknownKey"] = json!(unknown);
            }
            Answer::Result(answer)
        }
    }
}

fn device_model_key(item: &Value) -> String {
    let component = item
        .pointer("/component/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let variable = item
        .pointer("/variable/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{component}/{variable}")
}

fn set_variables(payload: &Value, configuration: &mut Configuration) -> Answer {
    let items = payload
        .get("setVariableData")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let results: Vec<Value> = items
        .iter()
        .map(|item| {
            let key = device_model_key(item);
            let value = item
                .get("attributeValue")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let status = match configuration.set(&key, value) {
                Some(true) => "Accepted",
                Some(false) => "Rejected",
                None => "UnknownVariable",
            };
            json!({
                "attributeStatus": status,
                "component": item.get("component").cloned().unwrap_or(json!({})),
                "variable": item.get("variable").cloned().unwrap_or(json!({})),
            })
        })
        .collect();
    Answer::Result(json!({ "setVariableResult": results }))
}

fn get_variables(payload: &Value, configuration: &Configuration) -> Answer {
    let items = payload
        .get("getVariableData")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let results: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut result = json!({
                "attributeStatus": "UnknownVariable",
                "component": item.get("component").cloned().unwrap_or(json!({})),
                "variable": item.get("variable").cloned().unwrap_or(json!({})),
            });
            if let Some(value) = configuration.get(&device_model_key(item)) {
                result["attributeStatus"] = json!("Accepted");
                result["attributeValue"] = json!(value);
            }
            result
        })
        .collect();
    Answer::Result(json!({ "getVariableResult": results }))
}

fn trigger_message(payload: &Value) -> (Answer, Option<FollowUp>) {
    let requested = payload
        .get("requestedMessage")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let trigger = match requested {
        "BootNotification" => Some(Trigger::BootNotification),
        "Heartbeat" => Some(Trigger::Heartbeat),
        "StatusNotification" => Some(Trigger::StatusNotification),
        "MeterValues" => Some(Trigger::MeterValues),
        _ => None,
    };
    // Both versions' TriggerMessage answers know `NotImplemented`.
    let status = if trigger.is_some() {
        "Accepted"
    } else {
        "NotImplemented"
    };
    (
        Answer::Result(json!({ "status": status })),
        trigger.map(FollowUp::Send),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_configuration_respects_readonly_and_unknown_keys() {
        let mut configuration = Configuration::new(OcppVersion::V16, 2);
        let (answer, _) = answer(
            OcppVersion::V16,
            "ChangeConfiguration",
            &json!({"key": "HeartbeatInterval", "value": "60"}),
            &mut configuration,
        );
        assert_eq!(answer, Answer::Result(json!({"status": "Accepted"})));
        assert_eq!(configuration.get("HeartbeatInterval"), Some("60"));
        let (readonly, _) = super::answer(
            OcppVersion::V16,
            "ChangeConfiguration",
            &json!({"key": "NumberOfConnectors", "value": "9"}),
            &mut configuration,
        );
        assert_eq!(readonly, Answer::Result(json!({"status": "Rejected"})));
        let (unknown, _) = super::answer(
            OcppVersion::V16,
            "GetConfiguration",
            &json!({"key": ["HeartbeatInterval", "Nope"]}),
            &mut configuration,
        );
        let Answer::Result(unknown) = unknown else {
            panic!("GetConfiguration answers with a result")
        };
        assert_eq!(unknown["unknownKey"], json!(["Nope"]));
        assert_eq!(unknown["configurationKey"][0]["value"], json!("60"));
    }

    #[test]
    fn get_variables_reports_unknown_variables() {
        let mut configuration = Configuration::new(OcppVersion::V201, 1);
        let (answer, _) = answer(
            OcppVersion::V201,
            "GetVariables",
            &json!({"getVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                {"component": {"name": "Nope"}, "variable": {"name": "Nope"}}
            ]}),
            &mut configuration,
        );
        let Answer::Result(answer) = answer else {
            panic!("GetVariables answers with a result")
        };
        assert_eq!(
            answer["getVariableResult"][0]["attributeValue"],
            json!("300")
        );
        assert_eq!(
            answer["getVariableResult"][1]["attributeStatus"],
            json!("UnknownVariable")
        );
    }

    #[test]
    fn unknown_actions_are_not_implemented_and_triggers_follow_up() {
        let mut configuration = Configuration::new(OcppVersion::V21, 1);
        let (answer, follow_up) = answer(
            OcppVersion::V21,
            "InstallCertificate",
            &json!({}),
            &mut configuration,
        );
        assert!(matches!(
            answer,
            Answer::Error(ErrorCode::NotImplemented, _)
        ));
        assert_eq!(follow_up, None);
        let (_, follow_up) = super::answer(
            OcppVersion::V21,
            "TriggerMessage",
            &json!({"requestedMessage": "Heartbeat"}),
            &mut configuration,
        );
        assert_eq!(follow_up, Some(FollowUp::Send(Trigger::Heartbeat)));
    }
}
