//! Backend replies: the answers to charge point CALLs the backend decides.
//!
//! Every instance reads every partition of the replies topic (no consumer group), from
//! the end, and keeps the replies whose (charge point, message id) it is waiting for: in
//! a cluster, the instance holding the charge point's connection is the one waiting.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message, Offset, TopicPartitionList,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client_config;
use crate::config::KafkaConfig;

/// How long to wait before retrying to set up the consumer.
const RETRY: Duration = Duration::from_secs(2);

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
    next_wait: std::sync::atomic::AtomicU64,
    // Replies produced before the consumer is positioned would be missed.
    assigned: std::sync::atomic::AtomicBool,
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
        let number = self
            .next_wait
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiting.lock().insert(key.clone(), (number, sender));
        ReplyWait {
            router: self.clone(),
            key,
            number,
            receiver,
        }
    }

    /// Whether the consumer reads the replies topic (a readiness condition while
    /// backend-answered actions are configured).
    pub fn is_assigned(&self) -> bool {
        self.assigned.load(std::sync::atomic::Ordering::Relaxed)
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

    /// Reads the replies topic until `stop`.
    pub async fn consume(self: Arc<Self>, config: KafkaConfig, stop: CancellationToken) {
        loop {
            match self.consume_once(&config, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, topic = %config.topics.replies, "reply consumer not running; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    async fn consume_once(
        &self,
        config: &KafkaConfig,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let mut client = client_config(config, &config.consumer);
        client
            // Never joins or commits: the group id only satisfies librdkafka.
            .set(
                "group.id",
                format!("charge-point-gateway-replies-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = client.create().map_err(|e| e.to_string())?;
        let topic = config.topics.replies.clone();
        // Start at each partition's current end, read from the high watermark: only
        // replies to CALLs from now on matter. (Some Kafka-compatible brokers resolve the
        // logical `Offset::End` wrongly; the watermark is answered correctly everywhere.)
        let (consumer, assignment) = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(3);
            let partitions = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| e.to_string())?
                .topics()
                .first()
                .map(|t| t.partitions().len() as i32)
                .unwrap_or(0);
            if partitions == 0 {
                return Err("topic has no partitions (does it exist?)".to_owned());
            }
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(|e| e.to_string())?;
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(high))
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((consumer, assignment))
        })
        .await
        .map_err(|e| e.to_string())??;
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        self.assigned
            .store(true, std::sync::atomic::Ordering::Relaxed);
        info!(topic = %config.topics.replies, partitions = assignment.count(), "reply consumer assigned");
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                message = consumer.recv() => message,
            };
            match message {
                Ok(message) => match self.deliver(message.payload().unwrap_or_default()) {
                    Ok(true) => {}
                    Ok(false) => debug!(
                        offset = message.offset(),
                        "reply for a CALL not waiting here"
                    ),
                    Err(e) => {
                        crate::warn_limited!(error = %e, offset = message.offset(), partition = message.partition(), "malformed reply record")
                    }
                },
                Err(e) => warn!(error = %e, "reply consumer error"),
            }
        }
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
