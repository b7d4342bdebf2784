//! The sinks' metric: `ocppgw_events_published_total`, whichever sink is in use.

use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    event::{
        COMMAND_RESULT, CONNECTION_CLOSED, CONNECTION_OPENED, MESSAGE_RECEIVED, SECURITY_PREFIX,
    },
    metrics::{EventLabels, MetricsRegistry},
};

/// Every CloudEvents type the gateway publishes, with its `event_type` label; security
/// events (`chargepointgateway.security.*`, one type per kind) share one label.
const EVENT_TYPES: [(&str, &str); 5] = [
    (MESSAGE_RECEIVED, "message_received"),
    (CONNECTION_OPENED, "connection_opened"),
    (CONNECTION_CLOSED, "connection_closed"),
    (COMMAND_RESULT, "command_result"),
    (SECURITY_PREFIX, "security"),
];

/// What the sinks count.
#[derive(Clone, Default)]
pub struct SinkMetrics {
    published: Family<EventLabels, Counter>,
}

impl SinkMetrics {
    /// Registers the sinks' metric in `r`, every series at 0.
    pub fn register(r: &mut MetricsRegistry) -> SinkMetrics {
        let m = SinkMetrics::default();
        r.add(
            "ocppgw_events_published",
            "Event records by type and durability outcome",
            m.published.clone(),
        );
        for (_, event_type) in EVENT_TYPES {
            for outcome in ["ok", "error"] {
                let _ = m.published.get_or_create(&EventLabels {
                    event_type,
                    outcome,
                });
            }
        }
        m
    }

    /// Counts one event's durability outcome.
    pub fn published(&self, event_type: &str, ok: bool) {
        let event_type = EVENT_TYPES
            .iter()
            .find(|(cloud_event_type, _)| event_type.starts_with(cloud_event_type))
            .map_or("command_result", |(_, label)| label);
        let outcome = if ok { "ok" } else { "error" };
        self.published
            .get_or_create(&EventLabels {
                event_type,
                outcome,
            })
            .inc();
    }
}
