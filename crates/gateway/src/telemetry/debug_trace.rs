//! Per-charge-point debug traces: every frame of one charge point logged in full for a
//! few minutes (credentials redacted), switched on through the admin API. A trace
//! belongs to the charge point id, so it survives reconnects, and ends by itself.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use parking_lot::Mutex;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::info;

/// Fields whose values never appear in a debug trace (besides any field whose name
/// contains `password` or `secret`).
const REDACTED_KEYS: [&str; 8] = [
    "idTag",
    "parentIdTag",
    "idToken",
    "groupIdToken",
    "additionalIdToken",
    "authorizationKey",
    "certificate",
    "key",
];

/// Configuration names whose values are secrets (1.6 ChangeConfiguration `key`/`value`,
/// 2.x SetVariables `variable.name`/`attributeValue`).
const SECRET_SETTINGS: [&str; 3] = ["password", "authorizationkey", "secret"];

fn is_secret_field(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    REDACTED_KEYS.contains(&key) || lower.contains("password") || lower.contains("secret")
}

fn names_a_secret(name: Option<&str>) -> bool {
    name.is_some_and(|name| {
        let lower = name.to_ascii_lowercase();
        SECRET_SETTINGS.iter().any(|secret| lower.contains(secret))
    })
}

/// Active debug traces by charge point id.
#[derive(Default)]
pub struct DebugTraces {
    // Lets the per-frame check skip the lock while no trace is on (the usual case).
    active: AtomicUsize,
    until: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl DebugTraces {
    /// Traces `charge_point_id` for `duration`; returns when the trace ends.
    pub fn start(&self, charge_point_id: &str, duration: Duration) -> DateTime<Utc> {
        let until = Utc::now() + chrono::Duration::from_std(duration).unwrap_or_default();
        let mut traces = self.until.lock();
        if traces.insert(charge_point_id.to_owned(), until).is_none() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        until
    }

    /// Ends the trace of `charge_point_id`; `false` when there was none (or it had
    /// already run out).
    pub fn stop(&self, charge_point_id: &str) -> bool {
        let removed = self.until.lock().remove(charge_point_id);
        if removed.is_some() {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        removed.is_some_and(|until| until > Utc::now())
    }

    /// Every active trace and its end.
    pub fn list(&self) -> Vec<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let mut traces: Vec<_> = self
            .until
            .lock()
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, until)| (id.clone(), *until))
            .collect();
        traces.sort();
        traces
    }

    /// Whether `charge_point_id` is traced now; an expired trace is removed here.
    pub fn is_on(&self, charge_point_id: &str) -> bool {
        if self.active.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut traces = self.until.lock();
        match traces.get(charge_point_id) {
            None => false,
            Some(until) if *until > Utc::now() => true,
            Some(_) => {
                traces.remove(charge_point_id);
                self.active.fetch_sub(1, Ordering::Relaxed);
                info!(charge_point_id, "debug trace ended");
                false
            }
        }
    }
}

/// The frame with every credential-like value replaced by `"***"`.
pub fn redact(frame: &str) -> String {
    match serde_json::from_str::<Value>(frame) {
        Ok(mut value) => {
            redact_value(&mut value);
            value.to_string()
        }
        Err(_) => format!("<not JSON, {} bytes>", frame.len()),
    }
}

fn redact_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // A setting that holds a secret: its name may show, its value may not.
            let config_pair =
                matches!(map.get("key"), Some(Value::String(_))) && map.contains_key("value");
            let setting_name = if config_pair {
                map.get("key").and_then(Value::as_str)
            } else {
                map.get("variable")
                    .and_then(|v| v.get("name"))
                    .and_then(Value::as_str)
            };
            let secret_setting = names_a_secret(setting_name);
            if secret_setting {
                for field in ["value", "attributeValue"] {
                    if let Some(secret) = map.get_mut(field) {
                        *secret = Value::String("***".to_owned());
                    }
                }
            }
            for (key, child) in map.iter_mut() {
                // The 1.6 configuration key is the setting's name: it stays readable.
                if config_pair && (key == "key" || key == "value") {
                    continue;
                }
                if secret_setting && key == "attributeValue" {
                    continue;
                }
                if is_secret_field(key) && !child.is_object() {
                    *child = Value::String("***".to_owned());
                } else if is_secret_field(key) {
                    // 2.x idToken is an object: hide its token, keep its type.
                    if let Some(token) = child.get_mut("idToken") {
                        *token = Value::String("***".to_owned());
                    }
                    redact_value(child);
                } else {
                    redact_value(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_at_any_depth() {
        let frame = r#"[2,"1","StartTransaction",{"idTag":"SECRET","meterStart":5}]"#;
        assert_eq!(
            redact(frame),
            r#"[2,"1","StartTransaction",{"idTag":"***","meterStart":5}]"#
        );
        let frame = r#"[2,"1","TransactionEvent",{"idToken":{"idToken":"SECRET","type":"ISO14443"},"x":[{"password":"p"}]}]"#;
        let redacted = redact(frame);
        assert!(
            !redacted.contains("SECRET") && !redacted.contains("\"p\""),
            "{redacted}"
        );
        assert!(redacted.contains("ISO14443"));
        assert_eq!(redact("garbage"), "<not JSON, 7 bytes>");
    }

    #[test]
    fn secret_settings_and_credentials_elsewhere_are_redacted() {
        for (frame, secret) in [
            (
                r#"[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"S3CRET"}]"#,
                "S3CRET",
            ),
            (
                r#"[2,"1","SetVariables",{"setVariableData":[{"attributeValue":"S3CRET","component":{"name":"SecurityCtrlr"},"variable":{"name":"BasicAuthPassword"}}]}]"#,
                "S3CRET",
            ),
            (
                r#"[2,"1","Authorize",{"idToken":{"idToken":"T","type":"Central","additionalInfo":[{"additionalIdToken":"S3CRET","type":"x"}]}}]"#,
                "S3CRET",
            ),
            (
                r#"[2,"1","SetNetworkProfile",{"configurationSlot":1,"connectionData":{"apn":{"apn":"a","apnPassword":"S3CRET"},"vpn":{"server":"s","user":"u","password":"P4SS","key":"S3CRET","type":"IPSec"}}}]"#,
                "S3CRET",
            ),
        ] {
            let redacted = redact(frame);
            assert!(
                !redacted.contains(secret) && !redacted.contains("P4SS"),
                "{redacted}"
            );
        }
        let kept =
            redact(r#"[2,"1","ChangeConfiguration",{"key":"HeartbeatInterval","value":"300"}]"#);
        assert!(
            kept.contains("HeartbeatInterval") && kept.contains("300"),
            "{kept}"
        );
        let named =
            redact(r#"[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"S3CRET"}]"#);
        assert!(
            named.contains("AuthorizationKey"),
            "the setting's name stays readable: {named}"
        );
    }

    #[test]
    fn traces_end_by_themselves() {
        let traces = DebugTraces::default();
        assert!(!traces.is_on("CP"));
        traces.start("CP", Duration::from_secs(60));
        assert!(traces.is_on("CP"));
        assert_eq!(traces.list().len(), 1);
        traces.start("OLD", Duration::ZERO);
        assert!(!traces.is_on("OLD"), "an expired trace is off");
        assert!(traces.stop("CP"));
        assert!(!traces.is_on("CP"));
        assert_eq!(traces.active.load(Ordering::Relaxed), 0);
    }
}
