//! The `[kafka]` section: brokers, topics, delivery and the command consumer.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// The Kafka bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated (`host:port,...`); empty turns Kafka off.
    pub brokers: String,
    /// Topic names.
    pub topics: TopicsConfig,
    /// Create missing topics at start (retried until the brokers answer).
    pub create_topics: bool,
    /// Partitions of topics the gateway creates.
    pub topic_partitions: i32,
    /// Replication factor of topics the gateway creates; capped at the number of brokers
    /// the cluster has when the topics are created.
    pub topic_replication: i32,
    /// How long the producer tries to deliver an event before giving up (a durable
    /// CALL then gets a CALLERROR and the charge point retries).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Records submitted but not yet acknowledged by the brokers; when reached,
    /// sessions wait (and stop reading their sockets).
    pub max_in_flight: usize,
    /// Consumer group of the command consumer.
    pub command_group: String,
    /// Where a command group with no committed offset starts reading: `earliest` (every
    /// command still on the topic, the default: none is lost while no gateway ran) or
    /// `latest` (only commands produced from now on).
    pub command_start: CommandStart,
    /// Commands processed at the same time (each waits for its charge point).
    pub max_concurrent_commands: usize,
    /// A command id seen again within this window is not sent to the charge point again.
    #[serde(with = "humantime_serde")]
    pub command_dedup_window: Duration,
    /// The command consumer's group session timeout: how long the group waits for a
    /// member that stopped answering before its partitions go to another member.
    #[serde(with = "humantime_serde")]
    pub command_session_timeout: Duration,
    /// Join the command consumer group as a static member (`group.instance.id` =
    /// `node_id`), so that a gateway restarted under the same node id takes its partitions
    /// back at once instead of waiting for the session timeout. Node ids must then be
    /// unique among the gateways of a group.
    pub static_membership: bool,
    /// How long every delivery may keep failing while the brokers answer before the
    /// gateway reports itself not ready.
    #[serde(with = "humantime_serde")]
    pub unready_after: Duration,
    /// Extra librdkafka settings for the producer (e.g. security, batching). The
    /// delivery guarantees stay the gateway's: `acks`, `enable.idempotence`,
    /// `message.timeout.ms`, `queue.buffering.max.messages` are always set by it.
    pub producer: BTreeMap<String, String>,
    /// Extra librdkafka settings for the consumers. `group.id`, `enable.auto.commit`,
    /// `auto.offset.reset` and `enable.partition.eof` are always set by the gateway.
    pub consumer: BTreeMap<String, String>,
}

/// Kafka topic names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Events from charge points.
    pub events: String,
    /// Commands from the backend.
    pub commands: String,
    /// One result per command.
    pub command_results: String,
    /// The backend's answers to backend-answered CALLs.
    pub replies: String,
}

/// Where a new command group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStart {
    /// The oldest command still on the topic.
    Earliest,
    /// Commands produced after the group first joins.
    Latest,
}

impl CommandStart {
    /// The librdkafka `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStart::Earliest => "earliest",
            CommandStart::Latest => "latest",
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topics: TopicsConfig::default(),
            create_topics: true,
            topic_partitions: 12,
            topic_replication: 3,
            delivery_timeout: Duration::from_secs(10),
            max_in_flight: 10_000,
            command_group: "charge-point-gateway".to_owned(),
            command_start: CommandStart::Earliest,
            max_concurrent_commands: 1000,
            command_dedup_window: Duration::from_secs(600),
            command_session_timeout: Duration::from_secs(15),
            static_membership: false,
            unready_after: Duration::from_secs(5),
            producer: Default::default(),
            consumer: Default::default(),
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            events: "ocpp.events".to_owned(),
            commands: "ocpp.commands".to_owned(),
            command_results: "ocpp.command-results".to_owned(),
            replies: "ocpp.replies".to_owned(),
        }
    }
}

impl KafkaConfig {
    /// Whether Kafka is configured.
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

impl KafkaConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if !(6..=300).contains(&self.command_session_timeout.as_secs()) {
            return Err(invalid(
                "kafka.command_session_timeout",
                "must be between 6s and 300s",
            ));
        }
        if self.unready_after.is_zero() {
            return Err(invalid("kafka.unready_after", "must be greater than zero"));
        }
        let topics = [
            ("kafka.topics.events", &self.topics.events),
            ("kafka.topics.commands", &self.topics.commands),
            ("kafka.topics.command_results", &self.topics.command_results),
            ("kafka.topics.replies", &self.topics.replies),
        ];
        for (option, topic) in topics {
            let legal = !topic.is_empty()
                && topic.len() <= 249
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !legal {
                return Err(invalid(
                    option,
                    "must be 1-249 characters of letters, digits, '.', '_' and '-'",
                ));
            }
        }
        if self.topic_partitions < 1 {
            return Err(invalid("kafka.topic_partitions", "must be at least 1"));
        }
        if self.topic_replication < 1 {
            return Err(invalid("kafka.topic_replication", "must be at least 1"));
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err(invalid("kafka.delivery_timeout", "must be at least 100ms"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return Err(invalid(
                "kafka.max_in_flight",
                "must be between 1 and 1000000",
            ));
        }
        if self.max_concurrent_commands == 0 {
            return Err(invalid(
                "kafka.max_concurrent_commands",
                "must be at least 1",
            ));
        }
        if self.command_group.is_empty() {
            return Err(invalid("kafka.command_group", "must not be empty"));
        }
        Ok(())
    }
}
