//! Prometheus metrics: one registry ([`MetricsRegistry`]) that every component registers
//! its own metrics in, and the OCPP traffic metrics ([`Metrics`]) that the listener,
//! sessions, the pipeline and the command path record.
//!
//! Every metric and label is listed in docs/metrics.md (a test compares the two). Label
//! values come from closed sets only: actions outside a version's catalogue are `_OTHER`,
//! and nothing that identifies a charge point, a message or an address is ever a label.

pub mod config;
mod process;
pub mod server;

use std::{collections::HashMap, sync::Arc};

use parking_lot::RwLock;

use ocpp::{catalogue, ErrorCode, MessageType, OcppVersion};

use crate::labels::{
    CallDirection, CallEnd, CommandSource, CommandStatus, ConnectionAttempt, DisconnectReason,
    HandshakeState, InvalidFrameKind,
};
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
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
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
labels!(StateLabels { state });
labels!(ProfileResultLabels { profile, result });
labels!(OperationLabels { operation });

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
    pub ready: Gauge,
    pub connections: Family<VersionLabels, Gauge>,
    pub connection_attempts: Family<ResultLabels, Counter>,
    pub handshakes_in_progress: Family<StateLabels, Gauge>,
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
    pub message_rate_pauses: Counter,
    pub timestamps_without_zone: Family<VersionLabels, Counter>,
    pub commands: Family<CommandLabels, Counter>,
    /// The series of inbound CALLs, per version and action label (a closed set).
    inbound_calls: RwLock<HashMap<(OcppVersion, &'static str), Arc<InboundCallSeries>>>,
}

/// The series one inbound CALL of a version and action moves, looked up once and kept:
/// six label lookups per message were a few percent of the CPU per CALL.
pub struct InboundCallSeries {
    received: Counter,
    answered: Counter,
    refused: Counter,
    completed: Histogram,
    failed: Histogram,
    processing: Histogram,
    size_in: Histogram,
    size_out: Histogram,
}

impl InboundCallSeries {
    /// Counts the CALL, `size` bytes, as received.
    pub fn received(&self, size: usize) {
        self.received.inc();
        self.size_in.observe(size as f64);
    }

    /// Counts its answer, `size` bytes: a CALLRESULT, or a CALLERROR when `refused`;
    /// `seconds` after the CALL was read.
    pub fn answered(&self, refused: bool, size: usize, seconds: f64) {
        let (sent, duration) = match refused {
            false => (&self.answered, &self.completed),
            true => (&self.refused, &self.failed),
        };
        sent.inc();
        self.size_out.observe(size as f64);
        duration.observe(seconds);
        self.processing.observe(seconds);
    }
}

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
    /// The series of inbound CALLs of `action` (a label) in `version`.
    pub fn inbound_call(
        &self,
        version: OcppVersion,
        action: &'static str,
    ) -> Arc<InboundCallSeries> {
        if let Some(series) = self.inbound_calls.read().get(&(version, action)) {
            return series.clone();
        }
        let ocpp_version = version.subprotocol();
        let sent = |message_type| {
            self.messages_sent
                .get_or_create(&MessageLabels {
                    ocpp_version,
                    message_type: message_type_label(message_type),
                    action,
                })
                .clone()
        };
        let duration = |end: CallEnd| {
            self.call_duration
                .get_or_create(&CallLabels {
                    direction: CallDirection::Inbound.as_str(),
                    action,
                    outcome: end.as_str(),
                })
                .clone()
        };
        let size = |direction| {
            self.message_size
                .get_or_create(&DirectionLabels { direction })
                .clone()
        };
        let series = Arc::new(InboundCallSeries {
            received: self
                .messages_received
                .get_or_create(&MessageLabels {
                    ocpp_version,
                    message_type: message_type_label(MessageType::Call),
                    action,
                })
                .clone(),
            answered: sent(MessageType::CallResult),
            refused: sent(MessageType::CallError),
            completed: duration(CallEnd::Completed),
            failed: duration(CallEnd::CallError),
            processing: self
                .message_processing_duration
                .get_or_create(&VersionActionLabels {
                    ocpp_version,
                    action,
                })
                .clone(),
            size_in: size("inbound"),
            size_out: size("outbound"),
        });
        self.inbound_calls
            .write()
            .entry((version, action))
            .or_insert(series)
            .clone()
    }

    /// Registers the traffic metrics in `r` and starts their known series at 0.
    pub fn register(r: &mut MetricsRegistry, supported: &[OcppVersion]) -> Arc<Metrics> {
        let m = Metrics {
            ready: Gauge::default(),
            connections: Family::default(),
            connection_attempts: Family::default(),
            handshakes_in_progress: Family::default(),
            disconnects: Family::default(),
            connection_duration: Histogram::new(DURATION_BUCKETS),
            messages_received: Family::default(),
            messages_sent: Family::default(),
            inbound_calls: RwLock::default(),
            message_size: Family::new_with_constructor(size_histogram),
            invalid_frames: Family::default(),
            message_processing_duration: Family::new_with_constructor(latency_histogram),
            ingest_duration: Family::new_with_constructor(latency_histogram_with_exemplars),
            call_duration: Family::new_with_constructor(latency_histogram),
            call_errors: Family::default(),
            pending_calls: Gauge::default(),
            late_responses: Counter::default(),
            message_rate_pauses: Counter::default(),
            timestamps_without_zone: Family::default(),
            commands: Family::default(),
        };
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
            "ocppgw_handshakes",
            "WebSocket handshakes in progress (running) and waiting for a place",
            m.handshakes_in_progress.clone(),
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
            "ocppgw_message_rate_pauses",
            "Times a session stopped reading because its charge point exceeded session.max_messages_per_second",
            m.message_rate_pauses.clone(),
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
            "ocppgw_commands",
            "Commands by source, action and outcome",
            m.commands.clone(),
        );
        m.initialise(supported);
        Arc::new(m)
    }

    /// Starts the known series at 0, so rates and alerts see them from the first scrape.
    fn initialise(&self, supported: &[OcppVersion]) {
        for attempt in ConnectionAttempt::ALL {
            let _ = self.connection_attempts.get_or_create(&ResultLabels {
                result: attempt.as_str(),
            });
        }
        for state in HandshakeState::ALL {
            let _ = self.handshakes(*state);
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
        for direction in CallDirection::ALL {
            for code in ErrorCode::ALL {
                let _ = self.call_errors.get_or_create(&CallErrorLabels {
                    direction: direction.as_str(),
                    error_code: code.as_str(OcppVersion::V201),
                });
            }
        }
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

    /// The gauge of handshakes in `state`.
    pub fn handshakes(&self, state: HandshakeState) -> Gauge {
        self.handshakes_in_progress
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .clone()
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
        direction: CallDirection,
        action: &'static str,
        end: CallEnd,
        seconds: f64,
    ) {
        self.call_duration
            .get_or_create(&CallLabels {
                direction: direction.as_str(),
                action,
                outcome: end.as_str(),
            })
            .observe(seconds);
    }

    /// Counts one CALLERROR.
    pub fn call_error(&self, direction: CallDirection, code: &str) {
        self.call_errors
            .get_or_create(&CallErrorLabels {
                direction: direction.as_str(),
                error_code: error_code_label(code),
            })
            .inc();
    }

    /// Counts one command outcome.
    pub fn command(&self, source: CommandSource, action: &'static str, status: CommandStatus) {
        self.commands
            .get_or_create(&CommandLabels {
                source: source.as_str(),
                action,
                outcome: status.as_str(),
            })
            .inc();
    }
}

/// The one Prometheus registry: each component registers its own metrics here, and
/// the metrics listener encodes them all.
pub struct MetricsRegistry {
    registry: Registry,
    names: Vec<&'static str>,
}

impl MetricsRegistry {
    /// A registry holding the build information and the process's own metrics.
    pub fn new() -> MetricsRegistry {
        let mut r = MetricsRegistry {
            registry: Registry::default(),
            names: Vec::new(),
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.add(
            "ocppgw_build_info",
            "The gateway's version (always 1)",
            build,
        );
        r.registry
            .register_collector(Box::new(process::ProcessCollector));
        r.names.extend(process::NAMES);
        r
    }

    /// Registers `metric` as `name`.
    pub fn add(
        &mut self,
        name: &'static str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(name);
        self.registry.register(name, help, metric);
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
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        MetricsRegistry::new()
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
