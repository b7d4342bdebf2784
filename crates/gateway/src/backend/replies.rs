//! Replies: a backend's answers to charge point CALLs it decides (the backend-answered
//! actions). A CALL registers its wait before its event is published; whatever carries
//! the replies (the Kafka replies topic today) hands each record to [`ReplyRouter::deliver`],
//! which wakes the one CALL waiting for it. In a cluster, the instance holding the charge
//! point's connection is the one waiting.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

/// A backend's answer to one CALL.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The CALLRESULT payload.
    Payload(Value),
    /// A CALLERROR to send instead.
    Error {
        /// OCPP error code (either version's spelling).
        code: String,
        /// Description.
        description: String,
        /// Details object.
        details: Value,
    },
}

/// A reply record: `{chargePointId, messageId, payload}` or
/// `{chargePointId, messageId, error: {code, description?, details?}}`, either plain or
/// as the `data` of a CloudEvent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplyRecord {
    charge_point_id: String,
    message_id: String,
    payload: Option<Value>,
    error: Option<ReplyError>,
}

#[derive(Debug, Deserialize)]
struct ReplyError {
    code: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    details: Option<Value>,
}

type Key = (String, String);

/// Routes reply records to the CALLs waiting for them.
#[derive(Default)]
pub struct ReplyRouter {
    // Each wait has its own number, so that a wait that ends removes only itself (a
    // reconnected charge point may repeat a message id while the old wait still exists).
    waiting: Mutex<HashMap<Key, (u64, oneshot::Sender<Reply>)>>,
    next_wait: AtomicU64,
    // Replies produced before the consumer is positioned would be missed.
    assigned: AtomicBool,
}

/// A registered wait for one reply; unregisters itself when dropped.
pub struct ReplyWait {
    router: Arc<ReplyRouter>,
    key: Key,
    number: u64,
    receiver: oneshot::Receiver<Reply>,
}

impl ReplyWait {
    /// The reply, or `None` after `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<Reply> {
        tokio::time::timeout(timeout, &mut self.receiver)
            .await
            .ok()?
            .ok()
    }
}

impl Drop for ReplyWait {
    fn drop(&mut self) {
        let mut waiting = self.router.waiting.lock();
        if waiting
            .get(&self.key)
            .is_some_and(|(number, _)| *number == self.number)
        {
            waiting.remove(&self.key);
        }
    }
}

impl ReplyRouter {
    /// Registers interest in the reply to `message_id` of `charge_point_id`. Register
    /// before publishing the CALL's event, so a fast reply cannot be missed.
    pub fn expect(self: &Arc<Self>, charge_point_id: &str, message_id: &str) -> ReplyWait {
        let key = (charge_point_id.to_owned(), message_id.to_owned());
        let number = self.next_wait.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiting.lock().insert(key.clone(), (number, sender));
        ReplyWait {
            router: self.clone(),
            key,
            number,
            receiver,
        }
    }

    /// Whether replies are being read (a readiness condition while backend-answered
    /// actions are configured): replies produced before that would be missed.
    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Records whether replies are being read.
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }

    /// Hands a record's reply to its waiter; `false` when nobody waits for it here.
    pub fn deliver(&self, record: &[u8]) -> Result<bool, String> {
        let record = parse(record)?;
        let reply = match (record.payload, record.error) {
            (Some(payload), None) if payload.is_object() => Reply::Payload(payload),
            (None, Some(error)) => Reply::Error {
                code: error.code,
                description: error.description,
                details: error
                    .details
                    .filter(Value::is_object)
                    .unwrap_or_else(|| serde_json::json!({})),
            },
            _ => {
                return Err(
                    "a reply needs exactly one of `payload` (an object) and `error`".to_owned(),
                )
            }
        };
        let key = (record.charge_point_id, record.message_id);
        let waiter = self.waiting.lock().remove(&key);
        Ok(waiter.is_some_and(|(_, waiter)| waiter.send(reply).is_ok()))
    }
}

fn parse(record: &[u8]) -> Result<ReplyRecord, String> {
    let value: Value = serde_json::from_slice(record).map_err(|e| format!("not JSON: {e}"))?;
    let body = if value.get("specversion").is_some() {
        value.get("data").cloned().unwrap_or(Value::Null)
    } else {
        value
    };
    serde_json::from_value(body).map_err(|e| format!("not a reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_payloads_and_errors_to_their_waiters() {
        let router = Arc::new(ReplyRouter::default());
        let wait = router.expect("CP-1", "m1");
        let delivered = router
            .deliver(br#"{"chargePointId":"CP-1","messageId":"m1","payload":{"idTagInfo":{"status":"Blocked"}}}"#)
            .unwrap();
        assert!(delivered);
        assert_eq!(
            wait.wait(Duration::from_secs(1)).await,
            Some(Reply::Payload(
                serde_json::json!({"idTagInfo": {"status": "Blocked"}})
            ))
        );

        let wait = router.expect("CP-1", "m2");
        let cloud_event = br#"{"specversion":"1.0","data":{"chargePointId":"CP-1","messageId":"m2","error":{"code":"SecurityError"}}}"#;
        assert!(router.deliver(cloud_event).unwrap());
        assert!(
            matches!(wait.wait(Duration::from_secs(1)).await, Some(Reply::Error { code, .. }) if code == "SecurityError")
        );
    }

    #[tokio::test]
    async fn unknown_and_malformed_replies() {
        let router = Arc::new(ReplyRouter::default());
        assert_eq!(
            router.deliver(br#"{"chargePointId":"X","messageId":"1","payload":{}}"#),
            Ok(false)
        );
        assert!(router.deliver(b"nope").is_err());
        assert!(router
            .deliver(br#"{"chargePointId":"X","messageId":"1"}"#)
            .is_err());
        assert!(router
            .deliver(br#"{"chargePointId":"X","messageId":"1","payload":[]}"#)
            .is_err());
        let wait = router.expect("CP", "m");
        drop(wait);
        assert!(router.waiting.lock().is_empty());
        let wait = router.expect("CP", "m");
        assert_eq!(wait.wait(Duration::from_millis(10)).await, None);

        // A repeated id: the older wait ending must not unregister the newer one.
        let older = router.expect("CP", "again");
        let newer = router.expect("CP", "again");
        drop(older);
        assert_eq!(
            router.deliver(br#"{"chargePointId":"CP","messageId":"again","payload":{}}"#),
            Ok(true)
        );
        assert!(newer.wait(Duration::from_secs(1)).await.is_some());
    }
}
