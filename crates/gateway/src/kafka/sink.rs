//! Events to Kafka: key = charge point id (order per charge point), value = the
//! CloudEvent, delivered when the brokers acknowledged it (`acks=all`).

use std::sync::Arc;

use futures_util::{future::BoxFuture, FutureExt};

use super::{KafkaBus, CLOUDEVENTS_CONTENT_TYPE};
use crate::{
    event::Event,
    sink::{ComponentHealth, Delivery, EventSink, SinkError},
};

/// The Kafka event sink.
pub struct KafkaSink {
    bus: Arc<KafkaBus>,
}

impl KafkaSink {
    /// A sink over `bus`.
    pub fn new(bus: Arc<KafkaBus>) -> KafkaSink {
        KafkaSink { bus }
    }
}

impl EventSink for KafkaSink {
    fn submit(&self, event: Arc<Event>) -> BoxFuture<'_, Result<Delivery, SinkError>> {
        async move {
            let value = serde_json::to_vec(event.as_ref())
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
            let topic = &self.bus.config().topics.events;
            let acked = self
                .bus
                .produce(
                    topic,
                    event.charge_point_id(),
                    value,
                    CLOUDEVENTS_CONTENT_TYPE,
                    event.event_type,
                )
                .await?;
            Ok(Delivery::new(acked))
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async move { self.bus.flush(self.bus.config().delivery_timeout).await }.boxed()
    }

    fn health(&self) -> ComponentHealth {
        match self.bus.readiness() {
            Ok(()) => ComponentHealth {
                status: "up",
                detail: None,
            },
            Err(reason) => ComponentHealth {
                status: "down",
                detail: Some(reason),
            },
        }
    }
}
