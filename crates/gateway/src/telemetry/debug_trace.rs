//! Per-charge-point debug traces: every frame of one charge point logged in full for a
//! few minutes (credentials redacted), switched on through the admin API. A trace
//! belongs to the charge point id, so it survives reconnects, and ends by itself.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::info;

/// Fields whose values never appear in a debug trace.
const REDACTED_KEYS: [&str; 8] = [
    "idTag",
    "parentIdTag",
    "idToken",
    "groupIdToken",
    "password",
    "basicAuthPassword",
    "authorizationKey",
    "certificate",
];

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
        let mut traces = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if traces.insert(charge_point_id.to_owned(), until).is_none() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        until
    }

    /// Ends the trace of `charge_point_id`; `false` when there was none.
    pub fn stop(&self, charge_point_id: &str) -> bool {
        let removed = self
            .until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(charge_point_id)
            .is_some();
        if removed {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Every active trace and its end.
    pub fn list(&self) -> Vec<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let mut traces: Vec<_> = self
            .until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        let mut traces = self.until.lock().unwrap_or_else(|e| e.into_inner());
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
            for (key, child) in map.iter_mut() {
                if REDACTED_KEYS.contains(&key.as_str()) && !child.is_object() {
                    *child = Value::String("***".to_owned());
                } else if REDACTED_KEYS.contains(&key.as_str()) {
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
