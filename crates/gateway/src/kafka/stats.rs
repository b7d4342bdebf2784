//! librdkafka statistics turned into metrics: broker connections, round trips, errors,
//! and the command consumer's lag.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

use rdkafka::{client::ClientContext, consumer::ConsumerContext, Statistics};

use super::metrics::KafkaMetrics;
use crate::metrics::{BrokerLabels, PartitionLabels};

/// How often librdkafka reports statistics, in milliseconds.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// A client context that records librdkafka statistics in the gateway's metrics.
pub struct StatsContext {
    metrics: Arc<KafkaMetrics>,
    /// Last cumulative error count per broker (librdkafka reports totals; the counter
    /// grows by the difference).
    broker_errors: Mutex<HashMap<i32, u64>>,
}

impl StatsContext {
    /// A context recording into `metrics`.
    pub fn new(metrics: Arc<KafkaMetrics>) -> StatsContext {
        StatsContext {
            metrics,
            broker_errors: Mutex::new(HashMap::new()),
        }
    }
}

impl ClientContext for StatsContext {
    /// librdkafka's errors, limited per call site: while the brokers are down it reports
    /// the same error several times a second, from every client.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::warn_limited!(error = %error, %reason, "Kafka client error");
    }

    fn stats(&self, statistics: Statistics) {
        for broker in statistics.brokers.values() {
            // Bootstrap placeholders (node id -1) are not brokers.
            if broker.nodeid < 0 {
                continue;
            }
            let labels = BrokerLabels {
                broker_id: broker.nodeid.to_string(),
            };
            self.metrics
                .broker_up
                .get_or_create(&labels)
                .set(i64::from(broker.state == "UP"));
            if let Some(rtt) = &broker.rtt {
                self.metrics
                    .broker_rtt
                    .get_or_create(&labels)
                    .set(rtt.avg as f64 / 1_000_000.0);
            }
            let total = broker.txerrs + broker.rxerrs + broker.req_timeouts;
            let mut last = self.broker_errors.lock();
            let previous = last.insert(broker.nodeid, total).unwrap_or(0);
            let counter = self.metrics.broker_errors.get_or_create(&labels);
            counter.inc_by(total.saturating_sub(previous));
        }
        for (topic, details) in &statistics.topics {
            for (partition, state) in &details.partitions {
                // -1 is librdkafka's "unassigned" partition; lag -1 means unknown.
                if *partition < 0 || state.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .get_or_create(&PartitionLabels {
                        topic: topic.clone(),
                        partition: partition.to_string(),
                    })
                    .set(state.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for StatsContext {}
