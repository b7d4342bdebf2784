//! Where events go: the recent-events ring, then the sink.

use std::sync::Arc;

use crate::{
    event::{Event, EventData},
    sink::{ring::EventRing, Delivery, EventSink, SinkError},
};

/// Builds events as this gateway instance and hands them on.
pub struct Publisher {
    node_id: Arc<str>,
    source: Arc<str>,
    sink: Arc<dyn EventSink>,
    ring: Arc<EventRing>,
}

impl Publisher {
    /// Events from instance `node_id`, recorded in `ring` and submitted to `sink`.
    pub fn new(node_id: String, sink: Arc<dyn EventSink>, ring: Arc<EventRing>) -> Publisher {
        Publisher {
            source: Event::source_of(&node_id),
            node_id: Arc::from(node_id),
            sink,
            ring,
        }
    }

    /// This instance's name (the `gatewayNode` of events).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This instance's name, shared.
    pub fn node(&self) -> Arc<str> {
        self.node_id.clone()
    }

    /// Publishes an event of `event_type` about `subject`, waiting for room in the sink;
    /// the delivery resolves once the sink has made it durable.
    pub async fn publish(
        &self,
        event_type: &'static str,
        subject: &str,
        data: EventData,
    ) -> Result<Delivery, SinkError> {
        let event = Arc::new(Event::new(self.source.clone(), event_type, subject, data));
        self.ring.push(event.clone());
        self.sink.submit(event).await
    }

    /// Publishes an event nobody waits on; a failure is logged.
    pub async fn publish_quietly(&self, event_type: &'static str, subject: &str, data: EventData) {
        if let Err(e) = self.publish(event_type, subject, data).await {
            crate::warn_limited!(error = %e, "event not stored");
        }
    }
}
