//! Prometheus metrics: one registry, typed handles for every instrumentation point.
//!
//! Every metric and label is listed in docs/metrics.md (a test compares the two). Label
//! values come from closed sets only: actions outside a version's catalogue are `_OTHER`,
//! and nothing that identifies a charge point, a message or an address is ever a label.

mod process;
pub mod server;

use std::sync::Arc;

use ocpp::{catalogue, ErrorCode, MessageType, OcppVersion};

use crate::labels::{ConnectionAttempt, DisconnectReason, HttpListener, InvalidFrameKind};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

/// The label of actions a version does not define.
pub const OTHER: &str = "_OTHER";

/// Latency buckets, in seconds: sub-millisecond local answers up to broker timeouts.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Connection lifetimes, in seconds: a minute to a month.
const DURATION_BUCKETS: [f64; 9] = [
    1.0, 10.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0, 604800.0, 2592000.0,
];
/// Frame sizes, in bytes.
const SIZE_BUCKETS: [f64; 9] = [
    64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
];

macro_rules! labels {
    ($name:ident { $($field:ident),* }) => {
        #[allow(missing_docs)]
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct $name { $(pub $field: &'static str),* }
    };
}

labels!(VersionLabels { ocpp_version });
labels!(MessageLabels {
    ocpp_version,
    message_type,
    action
});
labels!(ResultLabels { result });
labels!(ReasonLabels { reason });
labels!(DirectionLabels { direction });
labels!(KindLabels { kind });
labels!(VersionActionLabels {
    ocpp_version,
    action
});
labels!(ActionLabels { action });
labels!(CallLabels {
    direction,
    action,
    outcome
});
labels!(CallErrorLabels {
    direction,
    error_code
});
labels!(EventLabels {
    event_type,
    outcome
});
labels!(CommandLabels {
    source,
    action,
    outcome
});
labels!(TopicOutcomeLabels { topic, outcome });
labels!(TopicLabels { topic });
labels!(BuildLabels { version });
labels!(ListenerLabels { listener });

/// Labels of per-broker Kafka metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// The broker's node id.
    pub broker_id: String,
}

/// Labels of per-partition Kafka metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The topic.
    pub topic: String,
    /// The partition number.
    pub partition: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn latency_histogram_with_exemplars() -> HistogramWithExemplars<TraceLabels> {
    HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter())
}

/// The exemplar label of a traced observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    /// The OpenTelemetry trace id (hex).
    pub trace_id: String,
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// Every metric of the gateway.
#[allow(missing_docs)]
pub struct Metrics {
    registry: Registry,
    names: Vec<&'static str>,
    pub ready: Gauge,
    pub connections: Family<VersionLabels, Gauge>,
    pub connection_attempts: Family<ResultLabels, Counter>,
    pub disconnects: Family<ReasonLabels, Counter>,
    pub connection_duration: Histogram,
    pub messages_received: Family<MessageLabels, Counter>,
    pub messages_sent: Family<MessageLabels, Counter>,
    pub message_size: HistogramFamily<DirectionLabels>,
    pub invalid_frames: Family<KindLabels, Counter>,
    pub message_processing_duration: HistogramFamily<VersionActionLabels>,
    pub ingest_duration: Family<
        ActionLabels,
        HistogramWithExemplars<TraceLabels>,
        fn() -> HistogramWithExemplars<TraceLabels>,
    >,
    pub call_duration: HistogramFamily<CallLabels>,
    pub call_errors: Family<CallErrorLabels, Counter>,
    pub pending_calls: Gauge,
    pub late_responses: Counter,
    pub timestamps_without_zone: Family<VersionLabels, Counter>,
    pub events_published: Family<EventLabels, Counter>,
    pub commands_consumed: Family<ActionLabels, Counter>,
    pub commands: Family<CommandLabels, Counter>,
    pub kafka_produce: Family<TopicOutcomeLabels, Counter>,
    pub kafka_produce_duration: HistogramFamily<TopicLabels>,
    pub kafka_in_flight: Gauge,
    pub kafka_in_flight_limit: Gauge,
    pub kafka_connected: Gauge,
    pub kafka_broker_up: Family<BrokerLabels, Gauge>,
    pub kafka_broker_rtt: Family<BrokerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub kafka_broker_errors: Family<BrokerLabels, Counter>,
    pub kafka_consumer_lag: Family<PartitionLabels, Gauge>,
    pub kafka_record_age: HistogramFamily<TopicLabels>,
    pub http_connections: Family<ListenerLabels, Gauge>,
    pub http_connections_refused: Family<ListenerLabels, Counter>,
}

/// Every OCPP-J error code, for `call_errors_total{error_code}`.
const ERROR_CODES: [ErrorCode; 12] = [
    ErrorCode::NotImplemented,
    ErrorCode::NotSupported,
    ErrorCode::InternalError,
    ErrorCode::ProtocolError,
    ErrorCode::SecurityError,
    ErrorCode::FormatViolation,
    ErrorCode::PropertyConstraintViolation,
    ErrorCode::OccurrenceConstraintViolation,
    ErrorCode::TypeConstraintViolation,
    ErrorCode::GenericError,
    ErrorCode::RpcFrameworkError,
    ErrorCode::MessageTypeNotSupported,
];

/// The `message_type` label of a frame type (lower case, as in the original system).
pub fn message_type_label(message_type: MessageType) -> &'static str {
    match message_type {
        MessageType::Call => "call",
        MessageType::CallResult => "callresult",
        MessageType::CallError => "callerror",
        MessageType::CallResultError => "callresulterror",
        MessageType::Send => "send",
    }
}

/// The `action` label: the catalogue's spelling, or `_OTHER`.
pub fn action_label(version: OcppVersion, action: &str) -> &'static str {
    catalogue::known_action(version, action).unwrap_or(OTHER)
}

/// The `action` label for an action of any version.
pub fn any_version_action_label(action: &str) -> &'static str {
    OcppVersion::ALL
        .into_iter()
        .find_map(|version| catalogue::known_action(version, action))
        .unwrap_or(OTHER)
}

/// The `error_code` label: the 2.x spelling of a known code, or `_OTHER`.
pub fn error_code_label(code: &str) -> &'static str {
    ErrorCode::parse(code).map_or(OTHER, |code| code.as_str(OcppVersion::V201))
}

impl Metrics {
    /// Registers every metric and starts the known series at 0. The `ocppgw_kafka_*`
    /// families exist only with Kafka on (`kafka_topics` is `Some`), so that a gateway
    /// without Kafka never looks like one whose broker is down.
    pub fn new(supported: &[OcppVersion], kafka_topics: Option<&[&str]>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            ready: Gauge::default(),
            connections: Family::default(),
            connection_attempts: Family::default(),
            disconnects: Family::default(),
            connection_duration: Histogram::new(DURATION_BUCKETS),
            messages_received: Family::default(),
            messages_sent: Family::default(),
            message_size: Family::new_with_constructor(size_histogram),
            invalid_frames: Family::default(),
            message_processing_duration: Family::new_with_constructor(latency_histogram),
            ingest_duration: Family::new_with_constructor(latency_histogram_with_exemplars),
            call_duration: Family::new_with_constructor(latency_histogram),
            call_errors: Family::default(),
            pending_calls: Gauge::default(),
            late_responses: Counter::default(),
            timestamps_without_zone: Family::default(),
            events_published: Family::default(),
            commands_consumed: Family::default(),
            commands: Family::default(),
            kafka_produce: Family::default(),
            kafka_produce_duration: Family::new_with_constructor(latency_histogram),
            kafka_in_flight: Gauge::default(),
            kafka_in_flight_limit: Gauge::default(),
            kafka_connected: Gauge::default(),
            kafka_broker_up: Family::default(),
            kafka_broker_rtt: Family::default(),
            kafka_broker_errors: Family::default(),
            kafka_consumer_lag: Family::default(),
            kafka_record_age: Family::new_with_constructor(latency_histogram),
            http_connections: Family::default(),
            http_connections_refused: Family::default(),
            registry: Registry::default(),
            names: Vec::new(),
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let mut names = Vec::new();
        let mut r = Registrar {
            registry: &mut registry,
            names: &mut names,
        };
        r.add(
            "ocppgw_build_info",
            "The gateway's version (always 1)",
            build,
        );
        r.add(
            "ocppgw_ready",
            "1 while /readyz answers 200",
            m.ready.clone(),
        );
        r.add(
            "ocppgw_connections",
            "Open charge point connections",
            m.connections.clone(),
        );
        r.add(
            "ocppgw_connection_attempts",
            "WebSocket handshakes by result",
            m.connection_attempts.clone(),
        );
        r.add(
            "ocppgw_disconnects",
            "Ended connections by reason",
            m.disconnects.clone(),
        );
        r.add(
            "ocppgw_connection_duration_seconds",
            "How long connections lasted",
            m.connection_duration.clone(),
        );
        r.add(
            "ocppgw_http_connections",
            "Open connections to the admin and metrics listeners",
            m.http_connections.clone(),
        );
        r.add(
            "ocppgw_http_connections_refused",
            "Connections to the admin and metrics listeners closed at once at the connection limit",
            m.http_connections_refused.clone(),
        );
        r.add(
            "ocppgw_messages_received",
            "Well-formed frames from charge points",
            m.messages_received.clone(),
        );
        r.add(
            "ocppgw_messages_sent",
            "Frames sent to charge points",
            m.messages_sent.clone(),
        );
        r.add(
            "ocppgw_message_size_bytes",
            "Text frame sizes",
            m.message_size.clone(),
        );
        r.add(
            "ocppgw_invalid_frames",
            "Frames rejected before dispatch",
            m.invalid_frames.clone(),
        );
        r.add(
            "ocppgw_message_processing_duration_seconds",
            "Charge point CALL from frame read to answer written",
            m.message_processing_duration.clone(),
        );
        r.add(
            "ocppgw_ingest_duration_seconds",
            "Charge point CALL from frame read to its event durable in the sink",
            m.ingest_duration.clone(),
        );
        r.add(
            "ocppgw_call_duration_seconds",
            "CALL round trips by direction and outcome",
            m.call_duration.clone(),
        );
        r.add(
            "ocppgw_call_errors",
            "CALLERRORs by direction and code",
            m.call_errors.clone(),
        );
        r.add(
            "ocppgw_pending_calls",
            "Gateway CALLs waiting for a response",
            m.pending_calls.clone(),
        );
        r.add(
            "ocppgw_late_responses",
            "Responses matching no pending gateway CALL",
            m.late_responses.clone(),
        );
        r.add(
            "ocppgw_timestamps_without_zone",
            "date-time values without a time zone, accepted as UTC",
            m.timestamps_without_zone.clone(),
        );
        r.add(
            "ocppgw_events_published",
            "Event records by type and durability outcome",
            m.events_published.clone(),
        );
        r.add(
            "ocppgw_commands_consumed",
            "Command records read from Kafka",
            m.commands_consumed.clone(),
        );
        r.add(
            "ocppgw_commands",
            "Commands by source, action and outcome",
            m.commands.clone(),
        );
        if kafka_topics.is_some() {
            r.add(
                "ocppgw_kafka_produce",
                "Records produced by acknowledgement outcome",
                m.kafka_produce.clone(),
            );
            r.add(
                "ocppgw_kafka_produce_duration_seconds",
                "From produce to broker acknowledgement",
                m.kafka_produce_duration.clone(),
            );
            r.add(
                "ocppgw_kafka_in_flight_records",
                "Records not yet acknowledged",
                m.kafka_in_flight.clone(),
            );
            r.add(
                "ocppgw_kafka_in_flight_records_limit",
                "kafka.max_in_flight",
                m.kafka_in_flight_limit.clone(),
            );
            r.add(
                "ocppgw_kafka_connected",
                "1 while the brokers answer",
                m.kafka_connected.clone(),
            );
            r.add(
                "ocppgw_kafka_broker_up",
                "1 when the connection to the broker is up",
                m.kafka_broker_up.clone(),
            );
            r.add(
                "ocppgw_kafka_broker_rtt_seconds",
                "Average request round trip to the broker",
                m.kafka_broker_rtt.clone(),
            );
            r.add(
                "ocppgw_kafka_broker_errors",
                "Errors and request timeouts toward the broker",
                m.kafka_broker_errors.clone(),
            );
            r.add(
                "ocppgw_kafka_consumer_lag",
                "Records behind the partition end (commands)",
                m.kafka_consumer_lag.clone(),
            );
            r.add(
                "ocppgw_kafka_record_age_seconds",
                "Age of consumed command records when read",
                m.kafka_record_age.clone(),
            );
        }
        registry.register_collector(Box::new(process::ProcessCollector));
        names.extend(process::NAMES);

        m.initialise(supported, kafka_topics.unwrap_or_default());
        Arc::new(Metrics {
            registry,
            names,
            ..m
        })
    }

    /// Starts the known series at 0, so rates and alerts see them from the first scrape.
    fn initialise(&self, supported: &[OcppVersion], kafka_topics: &[&str]) {
        for attempt in ConnectionAttempt::ALL {
            let _ = self.connection_attempts.get_or_create(&ResultLabels {
                result: attempt.as_str(),
            });
        }
        for reason in DisconnectReason::ALL {
            let _ = self.disconnects.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        for kind in InvalidFrameKind::ALL {
            let _ = self.invalid_frames.get_or_create(&KindLabels {
                kind: kind.as_str(),
            });
        }
        for listener in HttpListener::ALL {
            let labels = ListenerLabels {
                listener: listener.as_str(),
            };
            let _ = self.http_connections.get_or_create(&labels);
            let _ = self.http_connections_refused.get_or_create(&labels);
        }
        for direction in ["inbound", "outbound"] {
            let _ = self
                .message_size
                .get_or_create(&DirectionLabels { direction });
        }
        for version in supported {
            let ocpp_version = version.subprotocol();
            let _ = self
                .connections
                .get_or_create(&VersionLabels { ocpp_version });
            let _ = self
                .timestamps_without_zone
                .get_or_create(&VersionLabels { ocpp_version });
            for action in catalogue::actions(*version) {
                let initiator = catalogue::initiator(*version, action).expect("catalogued");
                let types: &[MessageType] = if initiator.charge_point_may_send() {
                    &[MessageType::Call]
                } else {
                    &[MessageType::CallResult, MessageType::CallError]
                };
                for message_type in types {
                    let _ = self.messages_received.get_or_create(&MessageLabels {
                        ocpp_version,
                        message_type: message_type_label(*message_type),
                        action,
                    });
                }
                // What the gateway sends is the mirror image: answers to the charge
                // point's CALLs, and its own CALLs.
                let sent: &[MessageType] = if initiator.charge_point_may_send() {
                    &[MessageType::CallResult, MessageType::CallError]
                } else {
                    &[MessageType::Call]
                };
                for message_type in sent {
                    let _ = self.messages_sent.get_or_create(&MessageLabels {
                        ocpp_version,
                        message_type: message_type_label(*message_type),
                        action,
                    });
                }
            }
        }
        for direction in ["inbound", "outbound"] {
            for code in ERROR_CODES {
                let _ = self.call_errors.get_or_create(&CallErrorLabels {
                    direction,
                    error_code: code.as_str(OcppVersion::V201),
                });
            }
        }
        for event_type in [
            "message_received",
            "connection_opened",
            "connection_closed",
            "command_result",
        ] {
            for outcome in ["ok", "error"] {
                let _ = self.events_published.get_or_create(&EventLabels {
                    event_type,
                    outcome,
                });
            }
        }
        for topic in kafka_topics {
            let topic: &'static str = Box::leak(topic.to_string().into_boxed_str());
            for outcome in ["ok", "error"] {
                let _ = self
                    .kafka_produce
                    .get_or_create(&TopicOutcomeLabels { topic, outcome });
            }
        }
    }

    /// The name of every metric family (counters without their `_total` suffix).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(64 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        text
    }

    /// Counts one frame received.
    pub fn received(
        &self,
        version: OcppVersion,
        message_type: MessageType,
        action: &'static str,
        size: usize,
    ) {
        self.count_frame(
            &self.messages_received,
            "inbound",
            version,
            message_type,
            action,
            size,
        );
    }

    /// Counts one frame sent.
    pub fn sent(
        &self,
        version: OcppVersion,
        message_type: MessageType,
        action: &'static str,
        size: usize,
    ) {
        self.count_frame(
            &self.messages_sent,
            "outbound",
            version,
            message_type,
            action,
            size,
        );
    }

    fn count_frame(
        &self,
        family: &Family<MessageLabels, Counter>,
        direction: &'static str,
        version: OcppVersion,
        message_type: MessageType,
        action: &'static str,
        size: usize,
    ) {
        family
            .get_or_create(&MessageLabels {
                ocpp_version: version.subprotocol(),
                message_type: message_type_label(message_type),
                action,
            })
            .inc();
        self.message_size
            .get_or_create(&DirectionLabels { direction })
            .observe(size as f64);
    }

    /// Counts one rejected frame.
    pub fn invalid_frame(&self, kind: InvalidFrameKind) {
        self.invalid_frames
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a WebSocket handshake's result.
    pub fn connection_attempt(&self, attempt: ConnectionAttempt) {
        self.connection_attempts
            .get_or_create(&ResultLabels {
                result: attempt.as_str(),
            })
            .inc();
    }

    /// Records a finished CALL round trip.
    pub fn call_done(
        &self,
        direction: &'static str,
        action: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        self.call_duration
            .get_or_create(&CallLabels {
                direction,
                action,
                outcome,
            })
            .observe(seconds);
    }

    /// Counts one CALLERROR.
    pub fn call_error(&self, direction: &'static str, code: &str) {
        self.call_errors
            .get_or_create(&CallErrorLabels {
                direction,
                error_code: error_code_label(code),
            })
            .inc();
    }

    /// Counts one command outcome.
    pub fn command(&self, source: &'static str, action: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels {
                source,
                action,
                outcome,
            })
            .inc();
    }

    /// Counts one event's durability outcome.
    pub fn event_published(&self, event_type: &str, ok: bool) {
        let event_type = match event_type {
            crate::event::MESSAGE_RECEIVED => "message_received",
            crate::event::CONNECTION_OPENED => "connection_opened",
            crate::event::CONNECTION_CLOSED => "connection_closed",
            _ => "command_result",
        };
        let outcome = if ok { "ok" } else { "error" };
        self.events_published
            .get_or_create(&EventLabels {
                event_type,
                outcome,
            })
            .inc();
    }
}

/// Registers metrics and remembers their names.
struct Registrar<'a> {
    registry: &'a mut Registry,
    names: &'a mut Vec<&'static str>,
}

impl Registrar<'_> {
    fn add(
        &mut self,
        name: &'static str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(name);
        self.registry.register(name, help, metric);
    }
}

/// The names of every metric family in an OpenMetrics text (for tests and docs checks).
pub fn family_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            let name = parts.next()?;
            let kind = parts.next()?;
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}
