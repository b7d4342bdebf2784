//! The Kafka bus's metrics (`ocppgw_kafka_*`, `ocppgw_commands_consumed_total`),
//! registered only while Kafka is on, so that a gateway without Kafka never looks like
//! one whose broker is down.

use std::sync::Arc;

use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};

use super::config::TopicsConfig;
use crate::metrics::{
    ActionLabels, BrokerLabels, MetricsRegistry, PartitionLabels, TopicLabels, TopicOutcomeLabels,
    LATENCY_BUCKETS,
};

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The topic names as metric labels: leaked once, four small strings for the process's
/// lifetime, since label values must be `'static`.
#[derive(Debug, Clone, Copy)]
pub struct TopicNames {
    /// `kafka.topics.events`.
    pub events: &'static str,
    /// `kafka.topics.commands`.
    pub commands: &'static str,
    /// `kafka.topics.command_results`.
    pub command_results: &'static str,
    /// `kafka.topics.replies`.
    pub replies: &'static str,
}

impl TopicNames {
    fn leak(topics: &TopicsConfig) -> TopicNames {
        let leak = |name: &String| &*Box::leak(name.clone().into_boxed_str());
        TopicNames {
            events: leak(&topics.events),
            commands: leak(&topics.commands),
            command_results: leak(&topics.command_results),
            replies: leak(&topics.replies),
        }
    }

    /// The label of `topic`: its name when it is one of the four, else `_OTHER`.
    pub fn label_of(&self, topic: &str) -> &'static str {
        [
            self.events,
            self.commands,
            self.command_results,
            self.replies,
        ]
        .into_iter()
        .find(|name| *name == topic)
        .unwrap_or(crate::metrics::OTHER)
    }
}

/// Every metric of the Kafka bus.
#[allow(missing_docs)]
pub struct KafkaMetrics {
    pub topics: TopicNames,
    pub produce: Family<TopicOutcomeLabels, Counter>,
    pub produce_duration: HistogramFamily<TopicLabels>,
    pub in_flight: Gauge,
    pub in_flight_limit: Gauge,
    pub connected: Gauge,
    pub broker_up: Family<BrokerLabels, Gauge>,
    pub broker_rtt: Family<BrokerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub broker_errors: Family<BrokerLabels, Counter>,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub record_age: HistogramFamily<TopicLabels>,
    pub commands_consumed: Family<ActionLabels, Counter>,
}

impl KafkaMetrics {
    /// Registers the bus's metrics in `r`; the produce outcomes of the topics the gateway
    /// writes start at 0.
    pub fn register(r: &mut MetricsRegistry, topics: &TopicsConfig) -> Arc<KafkaMetrics> {
        let m = KafkaMetrics {
            topics: TopicNames::leak(topics),
            produce: Family::default(),
            produce_duration: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
            in_flight_limit: Gauge::default(),
            connected: Gauge::default(),
            broker_up: Family::default(),
            broker_rtt: Family::default(),
            broker_errors: Family::default(),
            consumer_lag: Family::default(),
            record_age: Family::new_with_constructor(latency_histogram),
            commands_consumed: Family::default(),
        };
        r.add(
            "ocppgw_commands_consumed",
            "Command records read from Kafka",
            m.commands_consumed.clone(),
        );
        r.add(
            "ocppgw_kafka_produce",
            "Records produced by acknowledgement outcome",
            m.produce.clone(),
        );
        r.add(
            "ocppgw_kafka_produce_duration_seconds",
            "From produce to broker acknowledgement",
            m.produce_duration.clone(),
        );
        r.add(
            "ocppgw_kafka_in_flight_records",
            "Records not yet acknowledged",
            m.in_flight.clone(),
        );
        r.add(
            "ocppgw_kafka_in_flight_records_limit",
            "kafka.max_in_flight",
            m.in_flight_limit.clone(),
        );
        r.add(
            "ocppgw_kafka_connected",
            "1 while the brokers answer",
            m.connected.clone(),
        );
        r.add(
            "ocppgw_kafka_broker_up",
            "1 when the connection to the broker is up",
            m.broker_up.clone(),
        );
        r.add(
            "ocppgw_kafka_broker_rtt_seconds",
            "Average request round trip to the broker",
            m.broker_rtt.clone(),
        );
        r.add(
            "ocppgw_kafka_broker_errors",
            "Errors and request timeouts toward the broker",
            m.broker_errors.clone(),
        );
        r.add(
            "ocppgw_kafka_consumer_lag",
            "Records behind the partition end (commands)",
            m.consumer_lag.clone(),
        );
        r.add(
            "ocppgw_kafka_record_age_seconds",
            "Age of consumed command records when read",
            m.record_age.clone(),
        );
        for topic in [m.topics.events, m.topics.command_results] {
            for outcome in ["ok", "error"] {
                let _ = m
                    .produce
                    .get_or_create(&TopicOutcomeLabels { topic, outcome });
            }
        }
        Arc::new(m)
    }
}
